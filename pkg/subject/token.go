package subject

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
)

// MaxTokenLen is the longest token EncodeToken produces, in bytes. A string
// whose escaped form would be longer is hashed instead.
const MaxTokenLen = 128

// hashHexLen is the number of lowercase hex digits of SHA-256 in a hashed
// token (128 bits).
const hashHexLen = 32

// marker is the first byte of the two tokens that are not escaped text: the
// empty string ("~") and a hashed over-long string ("~" + 32 hex digits). It
// never appears in an escaped token, where '~' is written %7E.
const marker = '~'

// EmptyToken is the token for the empty string.
const EmptyToken = "~"

const upperHex = "0123456789ABCDEF"

// safe reports whether b stands for itself in a token: ASCII letters,
// digits, '-' and '_'.
func safe(b byte) bool {
	return 'a' <= b && b <= 'z' || 'A' <= b && b <= 'Z' || '0' <= b && b <= '9' || b == '-' || b == '_'
}

// EncodeToken returns the subject token for s: s itself when it is non-empty,
// made only of ASCII letters, digits, '-' and '_', and at most MaxTokenLen
// bytes long; otherwise s with every other byte written as %XX (uppercase
// hex); "~" for the empty string; and "~" followed by the first 32 lowercase
// hex digits of SHA-256(s) when the escaped form would exceed MaxTokenLen.
//
// s may be any byte string, valid UTF-8 or not. The result is never empty,
// holds only ASCII letters, digits and the bytes "-_%~", and is therefore a
// valid literal NATS subject token. EncodeToken does not allocate when s is
// returned unchanged.
func EncodeToken(s string) string {
	if s == "" {
		return EmptyToken
	}
	n := len(s)
	for i := 0; i < len(s); i++ {
		if !safe(s[i]) {
			n += 2
		}
	}
	if n > MaxTokenLen {
		return hashToken(s)
	}
	if n == len(s) {
		return s
	}
	var b strings.Builder
	b.Grow(n)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if safe(c) {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(upperHex[c>>4])
		b.WriteByte(upperHex[c&0x0f])
	}
	return b.String()
}

func hashToken(s string) string {
	sum := sha256.Sum256([]byte(s))
	return string(marker) + hex.EncodeToString(sum[:hashHexLen/2])
}

// IsHashed reports whether tok is a hashed token: "~" followed by exactly 32
// lowercase hex digits. EncodeToken produces it for strings whose escaped
// form would exceed MaxTokenLen.
func IsHashed(tok string) bool {
	if len(tok) != 1+hashHexLen || tok[0] != marker {
		return false
	}
	for i := 1; i < len(tok); i++ {
		c := tok[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// DecodeToken returns the string that EncodeToken turned into tok.
//
// It returns an error wrapping ErrHashedToken when tok is a hashed token (the
// original is in the message headers), and an error wrapping ErrInvalidToken
// for anything EncodeToken cannot produce: an empty token, a '~' form other
// than "~" or a hashed token, a byte outside the token alphabet, a '%' not
// followed by two uppercase hex digits, an escaped safe byte, or a token
// longer than MaxTokenLen. For every token it accepts,
// EncodeToken(DecodeToken(tok)) == tok.
func DecodeToken(tok string) (string, error) {
	switch {
	case tok == "":
		return "", fmt.Errorf("%w: empty token (the empty string is %q)", ErrInvalidToken, EmptyToken)
	case tok[0] == marker:
		if tok == EmptyToken {
			return "", nil
		}
		if IsHashed(tok) {
			return "", fmt.Errorf("%w: %q (read the original from the Aggregate-Type / Aggregate-Id headers)", ErrHashedToken, tok)
		}
		return "", fmt.Errorf("%w: %q: '~' starts only %q or '~' + 32 lowercase hex digits", ErrInvalidToken, quoteShort(tok), EmptyToken)
	case len(tok) > MaxTokenLen:
		return "", fmt.Errorf("%w: %q: %d bytes, longer than %d", ErrInvalidToken, quoteShort(tok), len(tok), MaxTokenLen)
	}

	escapes := 0
	for i := 0; i < len(tok); i++ {
		c := tok[i]
		switch {
		case safe(c):
		case c == '%':
			if i+2 >= len(tok) {
				return "", fmt.Errorf("%w: %q: truncated escape at byte %d", ErrInvalidToken, quoteShort(tok), i)
			}
			hi, ok1 := unhex(tok[i+1])
			lo, ok2 := unhex(tok[i+2])
			if !ok1 || !ok2 {
				return "", fmt.Errorf("%w: %q: escape at byte %d is not %%XX with uppercase hex", ErrInvalidToken, quoteShort(tok), i)
			}
			if safe(hi<<4 | lo) {
				return "", fmt.Errorf("%w: %q: escape at byte %d encodes %q, which must appear unescaped", ErrInvalidToken, quoteShort(tok), i, rune(hi<<4|lo))
			}
			escapes++
			i += 2
		default:
			return "", fmt.Errorf("%w: %q: byte %#02x at %d must be escaped", ErrInvalidToken, quoteShort(tok), c, i)
		}
	}
	if escapes == 0 {
		return tok, nil
	}

	var b strings.Builder
	b.Grow(len(tok) - 2*escapes)
	for i := 0; i < len(tok); i++ {
		c := tok[i]
		if c == '%' {
			hi, _ := unhex(tok[i+1])
			lo, _ := unhex(tok[i+2])
			c = hi<<4 | lo
			i += 2
		}
		b.WriteByte(c)
	}
	return b.String(), nil
}

// unhex decodes one uppercase hex digit.
func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// quoteShort keeps error messages readable for arbitrarily long input.
func quoteShort(s string) string {
	const limit = 2 * MaxTokenLen
	if len(s) <= limit {
		return s
	}
	return s[:limit] + "…"
}
