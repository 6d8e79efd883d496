package subject

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/jetproj/jetproj/pkg/contract"
)

// The prefixes of event and derived-event subjects (contract.EventsPrefix,
// contract.ProjectionPrefix) and the subjects of whole streams
// (contract.AllEvents, contract.ProjectionSubjects) are package contract's.

// MaxNameLen is the longest valid projection name, in bytes.
const MaxNameLen = 64

// Event returns the subject of an event message:
// events.<EncodeToken(aggregateType)>.<EncodeToken(aggregateID)>.
func Event(aggregateType, aggregateID string) string {
	return contract.EventsPrefix + "." + EncodeToken(aggregateType) + "." + EncodeToken(aggregateID)
}

// EventWithPrefix is Event with prefix in place of "events", for feeders that
// publish into another stream's subject space. prefix must be a valid literal
// subject (see ValidPrefix); otherwise EventWithPrefix returns an error
// wrapping ErrInvalidSubject.
func EventWithPrefix(prefix, aggregateType, aggregateID string) (string, error) {
	if err := ValidPrefix(prefix); err != nil {
		return "", err
	}
	return prefix + "." + EncodeToken(aggregateType) + "." + EncodeToken(aggregateID), nil
}

// EventFilter returns the filter subject matching every event of one
// aggregate type: events.<EncodeToken(aggregateType)>.*.
func EventFilter(aggregateType string) string {
	return contract.EventsPrefix + "." + EncodeToken(aggregateType) + ".*"
}

// ParseEvent returns the aggregate type and id encoded in an event subject
// built by Event. It returns an error wrapping ErrInvalidSubject when subject
// is not events.<token>.<token>, and one wrapping ErrInvalidToken or
// ErrHashedToken when a token does not decode; in the hashed case the
// originals are in the Aggregate-Type / Aggregate-Id headers.
func ParseEvent(subject string) (aggregateType, aggregateID string, err error) {
	return ParseEventWithPrefix(contract.EventsPrefix, subject)
}

// ParseEventWithPrefix is ParseEvent for subjects built by EventWithPrefix
// with the same prefix.
func ParseEventWithPrefix(prefix, subject string) (aggregateType, aggregateID string, err error) {
	if err := ValidPrefix(prefix); err != nil {
		return "", "", err
	}
	rest, ok := strings.CutPrefix(subject, prefix+".")
	if !ok {
		return "", "", fmt.Errorf("%w: %q does not start with %q", ErrInvalidSubject, quoteShort(subject), prefix+".")
	}
	typeTok, idTok, ok := strings.Cut(rest, ".")
	if !ok || strings.Contains(idTok, ".") {
		return "", "", fmt.Errorf("%w: %q is not %s.<aggregate_type>.<aggregate_id>", ErrInvalidSubject, quoteShort(subject), prefix)
	}
	if aggregateType, err = DecodeToken(typeTok); err != nil {
		return "", "", fmt.Errorf("subject %q: aggregate type: %w", quoteShort(subject), err)
	}
	if aggregateID, err = DecodeToken(idTok); err != nil {
		return "", "", fmt.Errorf("subject %q: aggregate id: %w", quoteShort(subject), err)
	}
	return aggregateType, aggregateID, nil
}

// Projection returns the subject of a derived event of projection name:
// project.<name>.<EncodeToken(suffix[0])>.<EncodeToken(suffix[1])>…, for
// example Projection("wallet_balance", "wallet", id) is
// project.wallet_balance.wallet.<id>.
//
// Pass at least one suffix token: the projection's stream captures
// ProjectionFilter(name), project.<name>.>, which does not match
// project.<name> itself. name should satisfy ValidName (check it once, when
// the projection is defined); a valid name is its own token, and an invalid
// one is encoded like a suffix token so that the result is always a valid
// literal subject.
func Projection(name string, suffix ...string) string {
	n := len(contract.ProjectionPrefix) + 1 + len(name)
	for _, s := range suffix {
		n += 1 + len(s)
	}
	var b strings.Builder
	b.Grow(n)
	b.WriteString(contract.ProjectionPrefix)
	b.WriteByte('.')
	b.WriteString(EncodeToken(name))
	for _, s := range suffix {
		b.WriteByte('.')
		b.WriteString(EncodeToken(s))
	}
	return b.String()
}

// ProjectionFilter returns the filter subject matching every derived event of
// projection name, project.<name>.>: the subject of the projection's stream.
func ProjectionFilter(name string) string {
	return contract.ProjectionSubjects(EncodeToken(name))
}

// ParseProjection returns the projection name and decoded suffix tokens of a
// subject built by Projection. It returns an error wrapping ErrInvalidSubject
// when subject does not start with project.<name>, ErrInvalidName when the
// name is not valid, and ErrInvalidToken or ErrHashedToken when a suffix
// token does not decode.
func ParseProjection(subject string) (name string, suffix []string, err error) {
	rest, ok := strings.CutPrefix(subject, contract.ProjectionPrefix+".")
	if !ok {
		return "", nil, fmt.Errorf("%w: %q does not start with %q", ErrInvalidSubject, quoteShort(subject), contract.ProjectionPrefix+".")
	}
	name, rest, more := strings.Cut(rest, ".")
	if err := ValidName(name); err != nil {
		return "", nil, fmt.Errorf("subject %q: %w", quoteShort(subject), err)
	}
	if !more {
		return name, nil, nil
	}
	toks := strings.Split(rest, ".")
	suffix = make([]string, len(toks))
	for i, tok := range toks {
		if suffix[i], err = DecodeToken(tok); err != nil {
			return "", nil, fmt.Errorf("subject %q: suffix token %d: %w", quoteShort(subject), i, err)
		}
	}
	return name, suffix, nil
}

// ValidName returns nil when name is a valid projection name: one or more of
// a-z, 0-9 and '_', at most MaxNameLen bytes. Otherwise it returns an error
// wrapping ErrInvalidName.
func ValidName(name string) error {
	if name == "" {
		return fmt.Errorf("%w: empty", ErrInvalidName)
	}
	if len(name) > MaxNameLen {
		return fmt.Errorf("%w: %q is %d bytes, longer than %d", ErrInvalidName, quoteShort(name), len(name), MaxNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '_') {
			return fmt.Errorf("%w: %q: byte %d is %q; use only a-z, 0-9 and '_'", ErrInvalidName, name, i, c)
		}
	}
	return nil
}

// ValidPrefix returns nil when prefix can head subjects built by
// EventWithPrefix: a literal subject of one or more '.'-separated tokens,
// none of them empty, "*" or ">", with no whitespace, control bytes or
// invalid UTF-8. Otherwise it returns an error wrapping ErrInvalidSubject.
func ValidPrefix(prefix string) error {
	if prefix == "" {
		return fmt.Errorf("%w: empty prefix", ErrInvalidSubject)
	}
	if !utf8.ValidString(prefix) {
		return fmt.Errorf("%w: prefix %q is not valid UTF-8", ErrInvalidSubject, quoteShort(prefix))
	}
	for i, tok := range strings.Split(prefix, ".") {
		switch tok {
		case "":
			return fmt.Errorf("%w: prefix %q: token %d is empty", ErrInvalidSubject, quoteShort(prefix), i)
		case "*", ">":
			return fmt.Errorf("%w: prefix %q: token %d is the wildcard %q", ErrInvalidSubject, quoteShort(prefix), i, tok)
		}
		for _, r := range tok {
			if unicode.IsSpace(r) || unicode.IsControl(r) {
				return fmt.Errorf("%w: prefix %q: token %d contains %q", ErrInvalidSubject, quoteShort(prefix), i, r)
			}
		}
	}
	return nil
}
