package devenv

import "errors"

// ErrNoPostgres reports that no PostgreSQL server binaries were found.
var ErrNoPostgres = errors.New("devenv: no PostgreSQL binaries found (set PG_BIN or install postgresql)")
