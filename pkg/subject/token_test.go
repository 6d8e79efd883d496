package subject_test

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/jetproj/jetproj/pkg/subject"
)

func hashed(s string) string {
	sum := sha256.Sum256([]byte(s))
	return "~" + hex.EncodeToString(sum[:])[:32]
}

func TestEncodeToken(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, in, want string
	}{
		{"empty", "", "~"},
		{"word", "wallet", "wallet"},
		{"digits", "123", "123"},
		{"uuid", "3f2504e0-4f89-11d3-9a0c-0305e82c3301", "3f2504e0-4f89-11d3-9a0c-0305e82c3301"},
		{"mixed case and underscore", "Order_Line-7", "Order_Line-7"},
		{"dot", "a.b", "a%2Eb"},
		{"star", "*", "%2A"},
		{"gt", ">", "%3E"},
		{"space", "a b", "a%20b"},
		{"tab newline cr", "\t\n\r", "%09%0A%0D"},
		{"nul", "\x00", "%00"},
		{"del", "\x7f", "%7F"},
		{"percent", "%", "%25"},
		{"percent escape lookalike", "%2E", "%252E"},
		{"tilde", "~", "%7E"},
		{"tilde hash lookalike", hashed("x"), "%7E" + hashed("x")[1:]},
		{"punctuation", "a/b:c@d+e", "a%2Fb%3Ac%40d%2Be"},
		{"utf-8", "é", "%C3%A9"},
		{"invalid utf-8", "\xff\xfe", "%FF%FE"},
		{"email", "ann@example.com", "ann%40example%2Ecom"},
		{"max safe", strings.Repeat("a", subject.MaxTokenLen), strings.Repeat("a", subject.MaxTokenLen)},
		{"max escaped", "a" + strings.Repeat(".", 42) + "b", "a" + strings.Repeat("%2E", 42) + "b"},
		{"one over safe", strings.Repeat("a", subject.MaxTokenLen+1), hashed(strings.Repeat("a", subject.MaxTokenLen+1))},
		{"one over escaped", "ab" + strings.Repeat(".", 42) + "b", hashed("ab" + strings.Repeat(".", 42) + "b")},
		{"long utf-8", strings.Repeat("é", 22), hashed(strings.Repeat("é", 22))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := subject.EncodeToken(tt.in)
			if got != tt.want {
				t.Fatalf("EncodeToken(%q)\n got %q\nwant %q", tt.in, got, tt.want)
			}
			if len(got) > subject.MaxTokenLen {
				t.Errorf("EncodeToken(%q) is %d bytes, over MaxTokenLen", tt.in, len(got))
			}
			if !server.IsValidLiteralSubject("events.x." + got) {
				t.Errorf("events.x.%s is not a valid literal subject", got)
			}
			if subject.IsHashed(got) {
				return
			}
			back, err := subject.DecodeToken(got)
			if err != nil || back != tt.in {
				t.Errorf("DecodeToken(%q) = %q, %v; want %q, nil", got, back, err, tt.in)
			}
		})
	}
}

func TestDecodeTokenErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, in string
		want     error
	}{
		{"empty", "", subject.ErrInvalidToken},
		{"hashed", hashed("anything"), subject.ErrHashedToken},
		{"hashed upper hex", strings.ToUpper(hashed("anything")), subject.ErrInvalidToken},
		{"hashed too short", hashed("anything")[:32], subject.ErrInvalidToken},
		{"hashed too long", hashed("anything") + "0", subject.ErrInvalidToken},
		{"tilde then text", "~abc", subject.ErrInvalidToken},
		{"double tilde", "~~", subject.ErrInvalidToken},
		{"raw tilde inside", "a~b", subject.ErrInvalidToken},
		{"raw dot", "a.b", subject.ErrInvalidToken},
		{"raw star", "*", subject.ErrInvalidToken},
		{"raw gt", ">", subject.ErrInvalidToken},
		{"raw space", "a b", subject.ErrInvalidToken},
		{"raw nul", "\x00", subject.ErrInvalidToken},
		{"raw non-ascii", "é", subject.ErrInvalidToken},
		{"raw punctuation", "a:b", subject.ErrInvalidToken},
		{"lowercase hex", "a%2eb", subject.ErrInvalidToken},
		{"mixed case hex", "%c3%A9", subject.ErrInvalidToken},
		{"non-hex escape", "%G0", subject.ErrInvalidToken},
		{"truncated escape", "a%2", subject.ErrInvalidToken},
		{"lone percent", "%", subject.ErrInvalidToken},
		{"percent at end", "ab%", subject.ErrInvalidToken},
		{"escaped letter", "%41", subject.ErrInvalidToken},
		{"escaped digit", "%30", subject.ErrInvalidToken},
		{"escaped dash", "%2D", subject.ErrInvalidToken},
		{"escaped underscore", "%5F", subject.ErrInvalidToken},
		{"too long safe", strings.Repeat("a", subject.MaxTokenLen+1), subject.ErrInvalidToken},
		{"too long escaped", strings.Repeat("%2E", 43), subject.ErrInvalidToken},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := subject.DecodeToken(tt.in)
			if !errors.Is(err, tt.want) {
				t.Fatalf("DecodeToken(%q) = %q, %v; want error %v", tt.in, got, err, tt.want)
			}
			if got != "" {
				t.Errorf("DecodeToken(%q) returned %q with its error", tt.in, got)
			}
			other := subject.ErrHashedToken
			if errors.Is(tt.want, subject.ErrHashedToken) {
				other = subject.ErrInvalidToken
			}
			if errors.Is(err, other) {
				t.Errorf("DecodeToken(%q) error %v also matches %v", tt.in, err, other)
			}
		})
	}
}

func TestIsHashed(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want bool
	}{
		{hashed("x"), true},
		{subject.EncodeToken(strings.Repeat("x", 500)), true},
		{"~", false},
		{"", false},
		{"~" + strings.Repeat("g", 32), false},
		{"~" + strings.Repeat("A", 32), false},
		{"x" + hashed("x")[1:], false},
		{"wallet", false},
	}
	for _, tt := range tests {
		if got := subject.IsHashed(tt.in); got != tt.want {
			t.Errorf("IsHashed(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

// TestEncodeTokenEveryByte checks every single byte: the safe set stands for
// itself and everything else is escaped, and each result round-trips.
func TestEncodeTokenEveryByte(t *testing.T) {
	t.Parallel()
	const safeSet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	for b := 0; b < 256; b++ {
		in := string([]byte{byte(b)})
		got := subject.EncodeToken(in)
		want := in
		if !strings.Contains(safeSet, in) {
			want = "%" + strings.ToUpper(hex.EncodeToString([]byte{byte(b)}))
		}
		if got != want {
			t.Errorf("EncodeToken(%q) = %q, want %q", in, got, want)
		}
		if back, err := subject.DecodeToken(got); err != nil || back != in {
			t.Errorf("DecodeToken(%q) = %q, %v; want %q", got, back, err, in)
		}
	}
}

func TestEncodeTokenNoAllocForSafeTokens(t *testing.T) {
	allocs := testing.AllocsPerRun(100, func() {
		_ = subject.EncodeToken("3f2504e0-4f89-11d3-9a0c-0305e82c3301")
	})
	if allocs != 0 {
		t.Errorf("EncodeToken of a safe token allocated %v times, want 0", allocs)
	}
}
