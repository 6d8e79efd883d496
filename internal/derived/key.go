package derived

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
)

// A partition key is any byte string; headers and message IDs are not:
// nats.go turns CR and LF into spaces and trims header values, so two keys
// that differ only there would share a Nats-Msg-Id and JetStream would
// discard the second event as a duplicate. Keys therefore travel encoded.

// MaxKeyTokenLen is the longest key token KeyToken produces, in bytes: a
// key whose escaped form is longer is hashed.
const MaxKeyTokenLen = 128

// keySafe reports whether b stands for itself in an escaped key: printable
// ASCII other than space, '%' and '~'.
func keySafe(b byte) bool { return b > ' ' && b < 0x7f && b != '%' && b != '~' }

const keyHex = "0123456789ABCDEF"

// EscapeKey is the Partition header value of key: key itself when every
// byte is printable ASCII other than space, '%' and '~' ("wallet/w-1" stays
// "wallet/w-1"); otherwise every other byte (control characters, space,
// '%', '~', bytes ≥ 0x7f — so non-ASCII UTF-8 too) written as %XX with
// uppercase hex. The result survives any header handling unchanged and
// UnescapeKey gives key back.
func EscapeKey(key string) string {
	n := len(key)
	for i := 0; i < len(key); i++ {
		if !keySafe(key[i]) {
			n += 2
		}
	}
	if n == len(key) {
		return key
	}
	var b strings.Builder
	b.Grow(n)
	for i := 0; i < len(key); i++ {
		c := key[i]
		if keySafe(c) {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(keyHex[c>>4])
		b.WriteByte(keyHex[c&0x0f])
	}
	return b.String()
}

// UnescapeKey returns the key EscapeKey turned into s, or an error wrapping
// ErrInvalidKey.
func UnescapeKey(s string) (string, error) {
	if !strings.Contains(s, "%") {
		for i := 0; i < len(s); i++ {
			if !keySafe(s[i]) {
				return "", fmt.Errorf("%w: byte %#02x at %d must be escaped", ErrInvalidKey, s[i], i)
			}
		}
		return s, nil
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '%':
			if i+2 >= len(s) {
				return "", fmt.Errorf("%w: truncated escape at byte %d", ErrInvalidKey, i)
			}
			v, err := strconv.ParseUint(s[i+1:i+3], 16, 8)
			if err != nil || strings.ToUpper(s[i+1:i+3]) != s[i+1:i+3] || keySafe(byte(v)) {
				return "", fmt.Errorf("%w: escape %q at byte %d", ErrInvalidKey, s[i:i+3], i)
			}
			b.WriteByte(byte(v))
			i += 2
		case keySafe(c):
			b.WriteByte(c)
		default:
			return "", fmt.Errorf("%w: byte %#02x at %d must be escaped", ErrInvalidKey, c, i)
		}
	}
	return b.String(), nil
}

// KeyToken is the partition's part of a derived event's Nats-Msg-Id:
// EscapeKey(key) when that is at most MaxKeyTokenLen bytes, "~" for the
// empty key, and otherwise "~" followed by the first 32 lowercase hex
// digits of SHA-256(key). An escaped key never starts with '~' (it is
// escaped), so distinct keys get distinct tokens (up to a 128-bit hash
// collision between two long keys).
func KeyToken(key string) string {
	if key == "" {
		return "~"
	}
	if esc := EscapeKey(key); len(esc) <= MaxKeyTokenLen {
		return esc
	}
	sum := sha256.Sum256([]byte(key))
	return "~" + hex.EncodeToString(sum[:16])
}

// MsgID is the Nats-Msg-Id of a partition's seq-th derived event of
// generation gen: <projection>:<generation>:<KeyToken(key)>:<seq>, at most
// about 230 bytes, header-safe, and unique per (projection, generation,
// key, seq).
func MsgID(projection string, gen int, key string, seq uint64) string {
	return projection + ":" + strconv.Itoa(gen) + ":" + KeyToken(key) + ":" + strconv.FormatUint(seq, 10)
}
