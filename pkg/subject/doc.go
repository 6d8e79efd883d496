// Package subject maps event-store identifiers to NATS subject tokens and
// builds the subjects jetproj publishes and subscribes to.
//
// Event messages go to events.<aggregate_type>.<aggregate_id> and a
// projection's derived events to project.<name>.<suffix…>; the prefixes and
// every other name on the wire are package contract's. Aggregate types
// and ids are free text in the event store, so each one is turned into a
// single safe token by [EncodeToken]:
//
//   - a string made only of ASCII letters, digits, '-' and '_' is its own
//     token ("wallet", "123", UUIDs);
//   - every other byte ('.', '*', '>', whitespace, control bytes, '%', '~',
//     other punctuation, and each byte of a non-ASCII UTF-8 sequence) is
//     written as %XX with two uppercase hex digits;
//   - the empty string is the token "~";
//   - when the escaped form would be longer than [MaxTokenLen] bytes, the
//     token is "~" followed by the first 32 lowercase hex digits of the
//     SHA-256 of the raw string.
//
// [DecodeToken] reverses the first three forms and rejects anything
// EncodeToken cannot produce, so the mapping is a bijection on the tokens it
// accepts. The hashed form cannot be reversed from the subject:
// DecodeToken reports [ErrHashedToken] for it, and consumers read the
// original values from the Aggregate-Type and Aggregate-Id message headers,
// which jetproj always sets. docs/subjects.md describes the scheme in full.
package subject
