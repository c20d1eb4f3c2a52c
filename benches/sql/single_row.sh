#!/usr/bin/env bash
# single_row.sh — single-row write transactions on a 100k-row table: heap vs driftdb vs periods.
#
#   benches/sql/single_row.sh [--rows N] [--clients N] [--time SECONDS] [--runs N]
#                             [--sync-commit on|off|both] [--workloads "update insert"]
#                             [--protocol prepared|simple|extended]
#                             [--systems "heap driftdb periods"] [--results FILE]
#
# Table sr (id int PK, account, qty, price numeric, note text, updated_at timestamptz), N rows,
# in each system's database (scripts/single_row_{schema,load}.sql; periods versioning is set up
# before the load). Workloads (custom pgbench scripts):
#   update  UPDATE sr SET qty = qty + d, updated_at = now() WHERE id = random   (one row per xact;
#           client c only picks ids = c+1 mod clients, so clients never update the same row —
#           periods would fail with 2201H "invalid row version" on such a conflict)
#   insert  INSERT INTO sr (...) VALUES (...)                                   (one row per xact)
# Runs are interleaved heap, driftdb, periods, heap, ... with a CHECKPOINT before each. The
# insert workload grows the table (and update runs make dead tuples) identically for every system.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
HERE=$(cd "$(dirname "$0")" && pwd)

NROWS=100000 CLIENTS=2 TIME=15 RUNS_N=3 SYNC=both WORKLOADS="update insert" PROTOCOL=prepared
SYSTEMS=$ALL_SYSTEMS RESULTS_FILE=
while [ $# -gt 0 ]; do
  case "$1" in
    --rows) need_arg "$@"; NROWS=$2; shift 2 ;;
    --clients) need_arg "$@"; CLIENTS=$2; shift 2 ;;
    --time|--seconds) need_arg "$@"; TIME=$2; shift 2 ;;
    --runs) need_arg "$@"; RUNS_N=$2; shift 2 ;;
    --sync-commit) need_arg "$@"; SYNC=$2; shift 2 ;;
    --workloads) need_arg "$@"; WORKLOADS=$2; shift 2 ;;
    --protocol) need_arg "$@"; PROTOCOL=$2; shift 2 ;;
    --systems) need_arg "$@"; SYSTEMS=$2; shift 2 ;;
    --results) need_arg "$@"; RESULTS_FILE=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option $1" ;;
  esac
done
case "$SYNC" in on) MODES=on ;; off) MODES=off ;; both) MODES="on off" ;; *) die "--sync-commit on|off|both" ;; esac
JOBS=$(( CLIENTS < NCPU ? CLIENTS : NCPU ))

bench_cluster_start single_row
warn_if_busy; warn_if_debug_build
T0=$SECONDS

setup_table_all_systems sr single_row_schema.sql single_row_load.sql
log "setup done in $((SECONDS - T0))s"

for mode in $MODES; do
  set_sync_commit "$mode"
  for wl in $WORKLOADS; do
    [ -f "$HERE/scripts/single_row_$wl.pgbench" ] || die "no workload $wl"
    NOTE_CONTEXT="single-row $wl sync_commit=$mode"
    RUNS=()
    for r in $(seq 1 "$RUNS_N"); do
      for sys in $SYSTEMS; do
        checkpoint
        tps=$(run_pgbench "$(db_of "$sys")" "$BENCH_DATA/run-$mode-$wl-$r-$sys.log" \
                -n -M "$PROTOCOL" -c "$CLIENTS" -j "$JOBS" -T "$TIME" -D nrows="$NROWS" -D nclients="$CLIENTS" \
                -f "$HERE/scripts/single_row_$wl.pgbench")
        log "sync_commit=$mode $wl run $r/$RUNS_N $sys: $tps tps"
        RUNS[$sys]="${RUNS[$sys]:-} $tps"
        CPU[$sys]="${CPU[$sys]:-} $(cpu_of "$BENCH_DATA/run-$mode-$wl-$r-$sys.log")"
      done
    done
    report "single-row $wl" "rows=$NROWS c=$CLIENTS ${TIME}s sync_commit=$mode" tps 0
    report_cpu "single-row $wl" "rows=$NROWS c=$CLIENTS ${TIME}s sync_commit=$mode"
  done
done
for sys in $SYSTEMS; do
  printf '  %-8s sr: %s rows, %s incl. indexes; database %s (history included)\n' "$sys" \
    "$(psql_q -d "$(db_of "$sys")" -Atc "SELECT count(*) FROM sr")" \
    "$(psql_q -d "$(db_of "$sys")" -Atc "SELECT pg_size_pretty(pg_total_relation_size('sr'))")" \
    "$(psql_q -d "$(db_of "$sys")" -Atc "SELECT pg_size_pretty(pg_database_size(current_database()))")" >&2
done
log "total $((SECONDS - T0))s; load average now $(host_load)"
