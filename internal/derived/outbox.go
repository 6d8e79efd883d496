package derived

import (
	"encoding/base64"
	"fmt"
	"strings"
	"unicode/utf8"

	jsonv1 "github.com/go-json-experiment/json/v1" // encoding/json's behaviour, decoding ~2.5× faster
)

// The outbox (jetproj.outbox) is written by the projector, in the read
// model's transaction, and read by the emitter: the helpers below are the
// format of its rows that both sides share.

// storedPrefix marks a string that a store holds encoded (StoredString).
const storedPrefix = "\x7fb64:"

// StoredString is how stores (jetproj.partitions, jetproj.outbox, KV
// records) keep a partition key, subject or tenant: unchanged when it is
// valid UTF-8 without NUL (PostgreSQL text and JSON strings take it as it
// is), otherwise "\x7fb64:" and its bytes in base64url, so that no byte is
// lost or changed (JSON encoders replace invalid UTF-8, PostgreSQL refuses
// it and NUL). LoadedString reverses it.
func StoredString(s string) string {
	if utf8.ValidString(s) && strings.IndexByte(s, 0) < 0 && !strings.HasPrefix(s, storedPrefix) {
		return s
	}
	return storedPrefix + base64.RawURLEncoding.EncodeToString([]byte(s))
}

// LoadedString is the string StoredString stored as s.
func LoadedString(s string) string {
	enc, ok := strings.CutPrefix(s, storedPrefix)
	if !ok {
		return s
	}
	b, err := base64.RawURLEncoding.DecodeString(enc)
	if err != nil {
		return s
	}
	return string(b)
}

// OutboxLinks are the linked streams of an outbox row from its link_to
// (rows written before schema version 6: one stream) and links (JSON)
// columns.
func OutboxLinks(linkTo, links string) ([]Link, error) {
	var out []Link
	if linkTo != "" {
		out = append(out, Link{Stream: linkTo})
	}
	if links != "" {
		var more []Link
		if err := jsonv1.Unmarshal([]byte(links), &more); err != nil {
			return nil, fmt.Errorf("projector: outbox links %q: %w", links, err)
		}
		out = append(out, more...)
	}
	return out, nil
}

// OutboxMetadata is the metadata of an outbox row from its metadata column
// (empty for rows written before schema version 6).
func OutboxMetadata(s string) (map[string]string, error) {
	if s == "" {
		return nil, nil
	}
	var md map[string]string
	if err := jsonv1.Unmarshal([]byte(s), &md); err != nil {
		return nil, fmt.Errorf("projector: outbox metadata: %w", err)
	}
	return md, nil
}
