#!/usr/bin/env bash
# reads.sh — current-state reads on the same rows: heap vs driftdb vs periods.
#
#   benches/sql/reads.sh [--rows N] [--clients N] [--time SECONDS] [--runs N]
#                        [--workloads "point scan"] [--protocol prepared|simple|extended]
#                        [--systems "heap driftdb periods"] [--results FILE]
#
# Table rd (id int PK, account, qty, price numeric, note text, updated_at), N rows (default 1M),
# identical in every system's database, VACUUM ANALYZEd and prewarmed into shared_buffers.
#   point  pgbench -S-like: SELECT ... FROM rd WHERE id = random(1, N); --clients clients
#   scan   SELECT count(*), sum(qty), sum(price) FROM rd — a full scan of the table (non-indexed
#          columns, so no index-only shortcut), one client, back to back; PostgreSQL's default
#          parallelism applies (the plan chosen for each system is printed).
# Interleaved heap, driftdb, periods, heap, ... ; unit: transactions (lookups or scans) per second.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
HERE=$(cd "$(dirname "$0")" && pwd)

NROWS=1000000 CLIENTS=2 TIME=15 RUNS_N=3 WORKLOADS="point scan" PROTOCOL=prepared
SYSTEMS=$ALL_SYSTEMS RESULTS_FILE=
while [ $# -gt 0 ]; do
  case "$1" in
    --rows) need_arg "$@"; NROWS=$2; shift 2 ;;
    --clients) need_arg "$@"; CLIENTS=$2; shift 2 ;;
    --time|--seconds) need_arg "$@"; TIME=$2; shift 2 ;;
    --runs) need_arg "$@"; RUNS_N=$2; shift 2 ;;
    --workloads) need_arg "$@"; WORKLOADS=$2; shift 2 ;;
    --protocol) need_arg "$@"; PROTOCOL=$2; shift 2 ;;
    --systems) need_arg "$@"; SYSTEMS=$2; shift 2 ;;
    --results) need_arg "$@"; RESULTS_FILE=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option $1" ;;
  esac
done

bench_cluster_start reads
warn_if_busy; warn_if_debug_build
T0=$SECONDS

setup_table_all_systems rd reads_schema.sql reads_load.sql
log "setup done in $((SECONDS - T0))s"
for sys in $SYSTEMS; do
  db=$(db_of "$sys")
  printf '  %-8s rd: %s rows, table %s, pkey %s\n' "$sys" \
    "$(psql_q -d "$db" -Atc "SELECT count(*) FROM rd")" \
    "$(psql_q -d "$db" -Atc "SELECT pg_size_pretty(pg_table_size('rd'))")" \
    "$(psql_q -d "$db" -Atc "SELECT pg_size_pretty(pg_relation_size('rd_pkey'))")" >&2
  printf '  %-8s point plan: %s\n' "$sys" \
    "$(psql_q -d "$db" -Atc "EXPLAIN (COSTS OFF) SELECT account, qty, price, note, updated_at FROM rd WHERE id = 42" | tr '\n' ' ' | tr -s ' ')" >&2
  printf '  %-8s scan plan:  %s\n' "$sys" \
    "$(psql_q -d "$db" -Atc "EXPLAIN (COSTS OFF) SELECT count(*), sum(qty), sum(price) FROM rd" | tr '\n' ' ' | tr -s ' ')" >&2
done

for wl in $WORKLOADS; do
  [ -f "$HERE/scripts/reads_$wl.pgbench" ] || die "no workload $wl"
  c=$CLIENTS; [ "$wl" = scan ] && c=1
  j=$(( c < NCPU ? c : NCPU ))
  NOTE_CONTEXT="read $wl"
  RUNS=()
  for r in $(seq 1 "$RUNS_N"); do
    for sys in $SYSTEMS; do
      tps=$(run_pgbench "$(db_of "$sys")" "$BENCH_DATA/run-$wl-$r-$sys.log" \
              -n -M "$PROTOCOL" -c "$c" -j "$j" -T "$TIME" -D nrows="$NROWS" \
              -f "$HERE/scripts/reads_$wl.pgbench")
      log "$wl run $r/$RUNS_N $sys: $tps tps"
      RUNS[$sys]="${RUNS[$sys]:-} $tps"
    done
  done
  case "$wl" in
    point) report "read: point lookup by PK" "rows=$NROWS c=$c ${TIME}s" "lookups/s" 0 ;;
    scan)  report "read: full scan count/sum" "rows=$NROWS c=1 ${TIME}s" "scans/s" 0 ;;
    *)     report "read: $wl" "rows=$NROWS c=$c ${TIME}s" tps 0 ;;
  esac
done
log "total $((SECONDS - T0))s; load average now $(host_load)"
