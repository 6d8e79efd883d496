package config

import (
	"errors"
	"strings"
)

// ErrInvalid is matched (errors.Is) by every error that reports problems
// with the configuration's values, as opposed to a struct that cannot be
// loaded at all (a programming error).
var ErrInvalid = errors.New("invalid configuration")

// Error lists every problem found in a configuration. Each problem starts
// with the name of the variable it is about, e.g.
// "FEEDER_BATCH_SIZE: cannot parse "x" as an integer: invalid syntax".
type Error struct {
	Problems []string
}

// Error returns a header line followed by one problem per line.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(ErrInvalid.Error())
	b.WriteString(":")
	for _, p := range e.Problems {
		b.WriteString("\n  ")
		b.WriteString(p)
	}
	return b.String()
}

// Is reports whether target is ErrInvalid.
func (e *Error) Is(target error) bool { return target == ErrInvalid }
