package subject_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/jetproj/jetproj/pkg/subject"
)

// tricky is the seed corpus shared by the fuzz tests.
var tricky = []string{
	"", "~", "~~", "%", "%%", "%2E", "%2e", "%41", "%G1", "a%", "a%2",
	".", "..", "*", ">", "a.b", "a.*.>", " ", "\t", "\n", "\r\n", "\x00", "\x7f",
	"\x80", "\xff", "é", "日本語", "🙂", "\u00a0", "\u2028",
	"wallet", "Wallet_1", "123", "-", "_", "3f2504e0-4f89-11d3-9a0c-0305e82c3301",
	"ann@example.com", "a/b:c?d#e", "~0123456789abcdef0123456789abcdef",
	strings.Repeat("a", subject.MaxTokenLen), strings.Repeat("a", subject.MaxTokenLen+1),
	"a" + strings.Repeat(".", 42) + "b", "ab" + strings.Repeat(".", 42) + "b",
	strings.Repeat("%2E", 42), strings.Repeat("%2E", 43), strings.Repeat("é", 21),
	strings.Repeat("é", 22),
}

// FuzzTokenRoundTrip checks EncodeToken on arbitrary strings: the token is a
// safe, bounded, valid subject token and decodes back to the input (or is a
// deterministic hashed token).
func FuzzTokenRoundTrip(f *testing.F) {
	for _, s := range tricky {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tok := subject.EncodeToken(s)
		if tok == "" {
			t.Fatalf("EncodeToken(%q) is empty", s)
		}
		if len(tok) > subject.MaxTokenLen {
			t.Fatalf("EncodeToken(%q) = %q: %d bytes, over %d", s, tok, len(tok), subject.MaxTokenLen)
		}
		for i := 0; i < len(tok); i++ {
			c := tok[i]
			if c <= ' ' || c >= 0x7f || c == '.' || c == '*' || c == '>' {
				t.Fatalf("EncodeToken(%q) = %q: byte %#02x at %d", s, tok, c, i)
			}
		}
		if subj := "events.x." + tok; !server.IsValidLiteralSubject(subj) || !server.IsValidSubject(subj) {
			t.Fatalf("EncodeToken(%q): %q is not a valid literal subject", s, subj)
		}
		got, err := subject.DecodeToken(tok)
		if subject.IsHashed(tok) {
			if !errors.Is(err, subject.ErrHashedToken) {
				t.Fatalf("DecodeToken(%q) of hashed token: err = %v, want ErrHashedToken", tok, err)
			}
			if again := subject.EncodeToken(s); again != tok {
				t.Fatalf("EncodeToken(%q) not deterministic: %q then %q", s, tok, again)
			}
			return
		}
		if err != nil || got != s {
			t.Fatalf("DecodeToken(EncodeToken(%q)) = %q, %v", s, got, err)
		}
	})
}

// FuzzDecodeToken feeds arbitrary input to DecodeToken: it never panics,
// every error is ErrInvalidToken or ErrHashedToken, and every accepted token
// re-encodes to itself.
func FuzzDecodeToken(f *testing.F) {
	for _, s := range tricky {
		f.Add(s)
		f.Add(subject.EncodeToken(s))
	}
	f.Fuzz(func(t *testing.T, tok string) {
		s, err := subject.DecodeToken(tok)
		if err != nil {
			inv, hsh := errors.Is(err, subject.ErrInvalidToken), errors.Is(err, subject.ErrHashedToken)
			if inv == hsh {
				t.Fatalf("DecodeToken(%q) error %v: want exactly one of ErrInvalidToken, ErrHashedToken", tok, err)
			}
			if hsh != subject.IsHashed(tok) {
				t.Fatalf("DecodeToken(%q) error %v, but IsHashed = %v", tok, err, subject.IsHashed(tok))
			}
			if s != "" {
				t.Fatalf("DecodeToken(%q) = %q with error %v", tok, s, err)
			}
			return
		}
		if again := subject.EncodeToken(s); again != tok {
			t.Fatalf("EncodeToken(DecodeToken(%q)) = %q (decoded %q)", tok, again, s)
		}
	})
}
