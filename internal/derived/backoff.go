package derived

import "time"

// Pauses of a target whose derived event JetStream refused (Backoff).
const (
	BackoffFirst = 250 * time.Millisecond
	BackoffMax   = 30 * time.Second
)

// Backoff paces a target whose derived event JetStream refused — a subject
// of the emitter's, a partition of a KV-state projection's — so that it
// alone waits while the others go on: it is tried again at Until, after a
// pause that starts at BackoffFirst and doubles with every further refusal,
// up to BackoffMax. The zero Backoff has not been refused yet.
type Backoff struct {
	Until time.Time     // when the target may be tried again
	Wait  time.Duration // the last pause
}

// Refused records a refusal at now: the pause grows (BackoffFirst the first
// time) and Until becomes now plus the pause.
func (b *Backoff) Refused(now time.Time) {
	if b.Wait == 0 {
		b.Wait = BackoffFirst
	} else {
		b.Wait = min(2*b.Wait, BackoffMax)
	}
	b.Until = now.Add(b.Wait)
}
