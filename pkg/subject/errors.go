package subject

import "errors"

var (
	// ErrInvalidSubject reports a subject or subject prefix that does not
	// have the expected shape. Errors wrapping it say what is wrong.
	ErrInvalidSubject = errors.New("subject: invalid subject")

	// ErrInvalidName reports a projection name that is not [a-z0-9_]+ of at
	// most MaxNameLen bytes.
	ErrInvalidName = errors.New("subject: invalid projection name")
)

var (
	// ErrInvalidToken reports a token that EncodeToken cannot have produced.
	// Errors wrapping it say what is wrong and where.
	ErrInvalidToken = errors.New("subject: invalid token")

	// ErrHashedToken reports a hashed token (see IsHashed): a well-formed
	// token for an over-long string that cannot be decoded from the subject.
	// The original is carried in the Aggregate-Type / Aggregate-Id headers.
	ErrHashedToken = errors.New("subject: hashed token cannot be decoded")
)
