#!/usr/bin/env bash
# setup.sh — from a fresh Debian 12 machine to a running PostgreSQL 15 with driftdb:
# installs what is missing, builds and installs the extension, starts a server on port 5433
# (data in .pgdata/, run by a non-root OS user), creates the demo database `driftdb_demo`,
# and prints how to connect. Safe to run again: every step reuses what is there.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
PORT=${DRIFTDB_PORT:-5433}

install_deps
build_and_install

DATA=$(reachable_datadir "$ROOT/.pgdata/15")
log "starting PostgreSQL 15 with driftdb on port $PORT (data: $DATA)"
if "$ROOT/scripts/pgcluster.sh" status "$DATA" >/dev/null 2>&1; then
  # a server from an earlier run: restart so it loads the freshly installed driftdb.so
  "$ROOT/scripts/pgcluster.sh" stop "$DATA"
fi
"$ROOT/scripts/pgcluster.sh" start "$DATA" "$PORT"

PSQL=("$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres)
if ! "${PSQL[@]}" -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'driftdb_demo'" | grep -q 1; then
  log "creating demo database driftdb_demo"
  "${PSQL[@]}" -d postgres -c "CREATE DATABASE driftdb_demo"
  "${PSQL[@]}" -d driftdb_demo -f "$ROOT/scripts/demo.sql"
fi

cat <<MSG

driftdb is running: PostgreSQL 15 on 127.0.0.1:$PORT, data in $DATA
Connect to the demo database:

    psql "postgresql://postgres@127.0.0.1:$PORT/driftdb_demo"

Try:   SELECT * FROM orders;
       SELECT seq, committed_at, tables FROM driftdb.transactions ORDER BY seq;   -- the history
       SELECT * FROM driftdb.verify('orders');                                    -- the doctor
       SELECT * FROM driftdb.as_of(NULL::orders, 2::bigint);                      -- orders as of seq 2
       SELECT seq_start, seq_end, (v.data).* FROM driftdb.versions(NULL::orders) v WHERE (v.data).id = 100;
       SELECT seq, operation, old_data, new_data FROM driftdb.changes(NULL::orders);
       SET driftdb.as_of = '@seq:3';  SELECT * FROM orders;  RESET driftdb.as_of;
Stop:  scripts/pgcluster.sh stop $DATA
MSG
