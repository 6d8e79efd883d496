#!/usr/bin/env bash
# Makes sure PostgreSQL server binaries (initdb, postgres) are on this
# machine: the tests and the demo start a throwaway cluster from them.
set -euo pipefail
for d in ${PG_BIN:-} /usr/lib/postgresql/*/bin; do
  if [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/postgres" ]; then exit 0; fi
done
if command -v initdb >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "PostgreSQL server binaries not found; installing Debian's postgresql package" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq postgresql >/dev/null
  exit 0
fi
echo "PostgreSQL server binaries (initdb, postgres) not found: install PostgreSQL 15+ or set PG_BIN" >&2
exit 1
