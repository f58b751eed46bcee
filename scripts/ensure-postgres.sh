#!/usr/bin/env bash
# Make sure the tests and the local runner can reach PostgreSQL on a fresh machine:
# DATABASE_URL, a server on 127.0.0.1:5432, or server binaries (initdb/pg_ctl) for
# a throwaway cluster. When none is there and we are root on Debian/Ubuntu, install them.
set -euo pipefail

if [ -n "${DATABASE_URL:-}" ]; then exit 0; fi
if command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h 127.0.0.1 -p 5432; then exit 0; fi
if command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then exit 0; fi

if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "PostgreSQL server binaries not found: installing them with apt-get" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  exit 0
fi
echo "PostgreSQL is needed: set DATABASE_URL, run a server on 127.0.0.1:5432, or install the server binaries" >&2
exit 1
