package projector

import "time"

// BusySince reports the projection whose loop has been busy the longest
// with one step (a batch, a change of slot ownership, a consumer start, a
// partition command, a retry, a saving of watermarks when idle) and
// when that step started; zero while every loop waits for work. A liveness
// check (opsserver.NotWedged) reports the projector wedged when it is too
// old.
func (p *Projector) BusySince() (projection string, since time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, r := range p.runners {
		if s := r.busy.Since(); !s.IsZero() && (since.IsZero() || s.Before(since)) {
			projection, since = r.def.Name(), s
		}
	}
	return projection, since
}
