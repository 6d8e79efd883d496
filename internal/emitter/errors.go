package emitter

import "fmt"

// StalledError reports the subjects whose derived events JetStream refused
// in a round. The round relayed every other subject's rows; the stalled
// ones wait in the outbox and are tried again after a pause that grows
// from 250 ms to 30 s.
type StalledError struct {
	Subjects []string
	Err      error // the first refusal
}

func (e *StalledError) Error() string {
	return fmt.Sprintf("emitter: derived events of %d subject(s) held back (first %s): %v", len(e.Subjects), e.Subjects[0], e.Err)
}

func (e *StalledError) Unwrap() error { return e.Err }
