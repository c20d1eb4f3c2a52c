#!/usr/bin/env bash
# copy_1m.sh — bulk load: COPY of 1M rows from a CSV file into an empty table with a primary key,
# heap vs driftdb vs periods; wall time of the COPY statement (server-side, includes its commit),
# median of several runs, and throughput ratio to heap (= median heap time / median system time).
#
#   benches/sql/copy_1m.sh [--rows N] [--runs N] [--sync-commit on|off]
#                          [--systems "heap driftdb periods"] [--results FILE]
#
# The input file is generated once into $BENCH_DATA_CACHE (default /tmp/driftdb-bench-data) and
# reused by later runs. Before every timed COPY the table is dropped and recreated empty in its
# own transaction (so no COPY FREEZE / WAL-skip shortcuts; wal_level is logical anyway), periods
# versioning is set up again, the database is vacuumed and a CHECKPOINT is taken. The VACUUM
# matters for driftdb only: dropping the table deletes its history, 1M rows of driftdb.events
# that would otherwise still be dead (with their index entries) when the next run's commit
# writes 1M new ones. Every system gets it, untimed.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
HERE=$(cd "$(dirname "$0")" && pwd)

NROWS=1000000 RUNS_N=3 SYNC=on SYSTEMS=$ALL_SYSTEMS RESULTS_FILE=
while [ $# -gt 0 ]; do
  case "$1" in
    --rows) need_arg "$@"; NROWS=$2; shift 2 ;;
    --runs) need_arg "$@"; RUNS_N=$2; shift 2 ;;
    --sync-commit) need_arg "$@"; SYNC=$2; shift 2 ;;
    --systems) need_arg "$@"; SYSTEMS=$2; shift 2 ;;
    --results) need_arg "$@"; RESULTS_FILE=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option $1" ;;
  esac
done
case "$SYNC" in on|off) ;; *) die "--sync-commit on|off" ;; esac

bench_cluster_start copy_1m
warn_if_busy; warn_if_debug_build
T0=$SECONDS
set_sync_commit "$SYNC"

CACHE=${BENCH_DATA_CACHE:-/tmp/driftdb-bench-data}
FILE="$CACHE/copy_${NROWS}.csv"
mkdir -p "$CACHE"
if [ ! -s "$FILE" ]; then
  log "generating $FILE ($NROWS rows, once)"
  [ "$(id -u)" = 0 ] && chown "${DRIFTDB_OS_USER:-postgres}" "$CACHE"
  psql_q -v nrows="$NROWS" -v file="$FILE.tmp" -f "$HERE/scripts/copy_gen.sql" >/dev/null
  mv "$FILE.tmp" "$FILE"
fi
log "input: $FILE ($(du -h "$FILE" | cut -f1), $(wc -l <"$FILE") rows)"

for sys in $SYSTEMS; do create_system_db "$sys"; done

RUNS=()
for r in $(seq 1 "$RUNS_N"); do
  for sys in $SYSTEMS; do
    db=$(db_of "$sys"); am=heap; [ "$sys" = driftdb ] && am=driftdb
    psql_q -d "$db" -v am="$am" -c "SET client_min_messages = warning" -f "$HERE/scripts/copy_schema.sql" >/dev/null
    [ "$sys" = periods ] && periods_version "$db" copy_t
    assert_system "$sys" copy_t
    psql_q -d "$db" -c "VACUUM"
    checkpoint
    if out=$(psql_q -d "$db" -v file="$FILE" -f "$HERE/scripts/copy_load.sql" 2>&1); then
      ms=$(sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' <<<"$out" | tail -1)
      n=$(psql_q -d "$db" -Atc "SELECT count(*) FROM copy_t")
      [ "$n" = "$NROWS" ] || die "$sys: copy_t has $n rows, expected $NROWS"
      s=$(awk -v ms="$ms" 'BEGIN { printf "%.3f", ms / 1000 }')
    else
      log "COPY failed on $sys: $out"; s=NA
    fi
    log "run $r/$RUNS_N $sys: $s s ($(awk -v s="$s" -v n="$NROWS" 'BEGIN { if (s ~ /^[0-9.]+$/ && s > 0) printf "%.0f rows/s", n / s; else print "failed" }'))"
    RUNS[$sys]="${RUNS[$sys]:-} $s"
  done
done
report "COPY $NROWS rows" "empty table + PK, sync_commit=$SYNC" "s (wall)" 1
for sys in $SYSTEMS; do
  printf '  %-8s copy_t: %s incl. indexes; database %s (history included)\n' "$sys" \
    "$(psql_q -d "$(db_of "$sys")" -Atc "SELECT pg_size_pretty(pg_total_relation_size('copy_t'))")" \
    "$(psql_q -d "$(db_of "$sys")" -Atc "SELECT pg_size_pretty(pg_database_size(current_database()))")" >&2
done
log "total $((SECONDS - T0))s; load average now $(host_load)"
