package pgpool

import "errors"

// ErrInvalidURL reports a connection string that does not parse.
var ErrInvalidURL = errors.New("pgpool: DATABASE_URL is not a valid PostgreSQL connection string")
