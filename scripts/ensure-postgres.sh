#!/usr/bin/env bash
# Print a PostgreSQL URL the tests may use (a role with CREATEDB), installing and starting the server
# from Debian's packages when needed. Progress goes to stderr; only the URL goes to stdout.
# Exit non-zero when PostgreSQL cannot be had (the Makefile turns that into a failure under CI=true).
set -euo pipefail
log() { echo "ensure-postgres: $*" >&2; }

if [ -n "${ARCHIPEL_TEST_PG_URL:-}" ]; then echo "$ARCHIPEL_TEST_PG_URL"; exit 0; fi

as_postgres() { if [ "$(id -u)" = 0 ]; then su postgres -c "$1"; else sudo -n -u postgres sh -c "$1"; fi; }

if ! command -v pg_lsclusters >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing PostgreSQL from Debian's packages"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >&2
  else
    log "PostgreSQL is not installed and this user cannot install it"; exit 1
  fi
fi

line="$(pg_lsclusters -h 2>/dev/null | head -n1 || true)"
if [ -z "$line" ]; then
  ver="$(ls /usr/lib/postgresql | sort -V | tail -n1)"
  log "creating cluster $ver/main"
  pg_createcluster "$ver" main >&2
  line="$(pg_lsclusters -h | head -n1)"
fi
read -r ver cluster port status _ <<<"$line"
if [ "$status" != "online" ]; then
  log "starting cluster $ver/$cluster on port $port"
  pg_ctlcluster "$ver" "$cluster" start >&2
fi
for _ in $(seq 1 50); do
  as_postgres "pg_isready -q -p $port" && break
  sleep 0.2
done

if ! as_postgres "psql -p $port -qtAc \"SELECT 1 FROM pg_roles WHERE rolname='archipel'\"" | grep -q 1; then
  as_postgres "psql -p $port -qc \"CREATE ROLE archipel LOGIN CREATEDB PASSWORD 'archipel'\"" >&2
fi
if ! as_postgres "psql -p $port -qtAc \"SELECT 1 FROM pg_database WHERE datname='archipel_test'\"" | grep -q 1; then
  as_postgres "psql -p $port -qc \"CREATE DATABASE archipel_test OWNER archipel\"" >&2
fi
echo "postgresql+psycopg://archipel:archipel@127.0.0.1:${port}/archipel_test"
