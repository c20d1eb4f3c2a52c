#!/usr/bin/env bash
# pgcluster.sh — start/stop throwaway PostgreSQL 15 clusters with driftdb preloaded.
#
#   scripts/pgcluster.sh start DATADIR PORT [extra postgresql.conf lines...]
#   scripts/pgcluster.sh stop  DATADIR
#   scripts/pgcluster.sh status DATADIR
#
# PostgreSQL refuses to run as root, so when invoked as root the server runs as the OS user
# in $DRIFTDB_OS_USER (default: postgres). The socket lives in DATADIR/sock (kept short:
# pick a short DATADIR such as /tmp/drift-xyz). `start` is idempotent: an existing, running
# cluster is left alone; an existing stopped one is started again.
set -euo pipefail
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
OSUSER=${DRIFTDB_OS_USER:-postgres}

# Servers get a clean environment for Rust: a RUST_BACKTRACE inherited from a cargo shell
# would put backtraces into every error's DETAIL.
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u "$OSUSER" -- env -u RUST_BACKTRACE -u RUST_LIB_BACKTRACE "$@"
  else env -u RUST_BACKTRACE -u RUST_LIB_BACKTRACE "$@"; fi
}

cmd=${1:?usage: pgcluster.sh start|stop|status DATADIR [PORT] [conf...]}
data=${2:?DATADIR required}
case "$cmd" in
  start)
    port=${3:?PORT required}; shift 3
    if [ ! -f "$data/PG_VERSION" ]; then
      mkdir -p "$data"
      [ "$(id -u)" = 0 ] && chown "$OSUSER" "$data"
      as_pg "$PGBIN/initdb" -D "$data" -U postgres --auth=trust --no-sync -E UTF8 --locale=C.UTF-8 >"$data.initdb.log" 2>&1 \
        || { cat "$data.initdb.log" >&2; exit 1; }
      mkdir -p "$data/sock"; [ "$(id -u)" = 0 ] && chown "$OSUSER" "$data/sock"
      {
        echo "port = $port"
        echo "listen_addresses = '127.0.0.1'"
        echo "unix_socket_directories = '$data/sock'"
        echo "shared_preload_libraries = 'driftdb'"
        echo "max_prepared_transactions = 10"
        echo "wal_level = logical"
        echo "max_wal_senders = 10"
        echo "max_replication_slots = 10"
        echo "logging_collector = off"
        echo "fsync = ${DRIFTDB_FSYNC:-on}"
        for line in "$@"; do echo "$line"; done
      } >> "$data/postgresql.conf"
    fi
    if as_pg "$PGBIN/pg_ctl" -D "$data" status >/dev/null 2>&1; then exit 0; fi
    as_pg "$PGBIN/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 start >/dev/null \
      || { tail -30 "$data/server.log" >&2; exit 1; }
    ;;
  stop)
    if [ -f "$data/PG_VERSION" ] && as_pg "$PGBIN/pg_ctl" -D "$data" status >/dev/null 2>&1; then
      as_pg "$PGBIN/pg_ctl" -D "$data" -m fast -w stop >/dev/null
    fi
    ;;
  status)
    as_pg "$PGBIN/pg_ctl" -D "$data" status
    ;;
  *) echo "unknown command $cmd" >&2; exit 2 ;;
esac
