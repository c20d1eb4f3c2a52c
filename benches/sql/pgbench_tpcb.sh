#!/usr/bin/env bash
# pgbench_tpcb.sh — pgbench's built-in TPC-B-like workload on plain heap tables vs driftdb tables
# vs periods (trigger-based system versioning), same server, same scale, interleaved run by run.
#
#   benches/sql/pgbench_tpcb.sh [--scale N] [--clients N] [--time SECONDS] [--runs N]
#                               [--sync-commit on|off|both] [--protocol simple|extended|prepared]
#                               [--script builtin|partitioned]
#                               [--systems "heap driftdb periods"] [--results FILE]
#
# --script builtin (default): pgbench -b tpcb-like, unchanged. periods cannot finish this with
#   more than one client: a transaction that updates a row last written by a transaction that
#   *started* after it fails with "invalid row version" (SQLSTATE 2201H, from periods'
#   write_history trigger; pgbench cannot retry it), which the hot pgbench_branches rows provoke
#   within seconds. Its runs are then reported as aborted (NA).
# --script partitioned: the same statements, but client N only touches branch N+1 and that
#   branch's tellers and accounts (scripts/tpcb_partitioned.pgbench): no two clients touch the
#   same row, so periods completes. Needs clients <= scale. Use this to compare with periods.
#
# Databases (one cluster):
#   bench_heap     pgbench -i (plain heap)
#   bench_driftdb  CREATE EXTENSION driftdb; PGOPTIONS='-c default_table_access_method=driftdb' pgbench -i
#                  → all four pgbench tables USING driftdb (checked)
#   bench_periods  CREATE EXTENSION periods CASCADE; pgbench -i; then per table
#                  periods.add_system_time_period + periods.add_system_versioning (checked)
# Each timed run is preceded by pgbench's usual vacuum of branches/tellers + TRUNCATE of
# pgbench_history and a CHECKPOINT.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

SCALE=10 CLIENTS=2 TIME=20 RUNS_N=3 SYNC=on PROTOCOL=prepared SCRIPT=builtin SYSTEMS=$ALL_SYSTEMS RESULTS_FILE=
while [ $# -gt 0 ]; do
  case "$1" in
    --scale) need_arg "$@"; SCALE=$2; shift 2 ;;
    --clients) need_arg "$@"; CLIENTS=$2; shift 2 ;;
    --time|--seconds) need_arg "$@"; TIME=$2; shift 2 ;;
    --runs) need_arg "$@"; RUNS_N=$2; shift 2 ;;
    --sync-commit) need_arg "$@"; SYNC=$2; shift 2 ;;
    --protocol) need_arg "$@"; PROTOCOL=$2; shift 2 ;;
    --script) need_arg "$@"; SCRIPT=$2; shift 2 ;;
    --systems) need_arg "$@"; SYSTEMS=$2; shift 2 ;;
    --results) need_arg "$@"; RESULTS_FILE=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option $1" ;;
  esac
done
case "$SYNC" in on) MODES=on ;; off) MODES=off ;; both) MODES="on off" ;; *) die "--sync-commit on|off|both" ;; esac
JOBS=$(( CLIENTS < NCPU ? CLIENTS : NCPU ))
case "$SCRIPT" in
  builtin) SCRIPT_ARGS=(-b tpcb-like) ;;
  partitioned)
    [ "$CLIENTS" -le "$SCALE" ] || die "--script partitioned needs clients ($CLIENTS) <= scale ($SCALE)"
    SCRIPT_ARGS=(-n -s "$SCALE" -f "$(cd "$(dirname "$0")" && pwd)/scripts/tpcb_partitioned.pgbench") ;;
  *) die "--script builtin|partitioned" ;;
esac
TABLES="pgbench_accounts pgbench_branches pgbench_tellers pgbench_history"

bench_cluster_start pgbench_tpcb
warn_if_busy; warn_if_debug_build
T0=$SECONDS

for sys in $SYSTEMS; do
  db=$(db_of "$sys"); create_system_db "$sys"
  log "pgbench -i -s $SCALE for $sys"
  if [ "$sys" = driftdb ]; then
    PGOPTIONS='-c default_table_access_method=driftdb' "$PGBIN/pgbench" -i -I dtgvp -s "$SCALE" -q "$db" >"$BENCH_DATA/init-$sys.log" 2>&1 \
      || { cat "$BENCH_DATA/init-$sys.log" >&2; die "pgbench -i failed for $sys"; }
  else
    "$PGBIN/pgbench" -i -I dtgvp -s "$SCALE" -q "$db" >"$BENCH_DATA/init-$sys.log" 2>&1 \
      || { cat "$BENCH_DATA/init-$sys.log" >&2; die "pgbench -i failed for $sys"; }
  fi
  [ "$sys" = periods ] && periods_version "$db" $TABLES
  # shellcheck disable=SC2086
  assert_system "$sys" $TABLES
  psql_q -d "$db" -c "VACUUM ANALYZE"
  # shellcheck disable=SC2086
  prewarm "$db" $TABLES pgbench_accounts_pkey pgbench_branches_pkey pgbench_tellers_pkey
done
log "setup done in $((SECONDS - T0))s; sizes:"
for sys in $SYSTEMS; do
  printf '  %-8s %s\n' "$sys" "$(psql_q -Atc "SELECT pg_size_pretty(pg_database_size('$(db_of "$sys")'))")" >&2
done

for mode in $MODES; do
  set_sync_commit "$mode"
  NOTE_CONTEXT="tpcb ($SCRIPT) sync_commit=$mode"
  RUNS=()
  for r in $(seq 1 "$RUNS_N"); do
    for sys in $SYSTEMS; do
      checkpoint
      if [ "$SCRIPT" = partitioned ]; then   # what pgbench does before a built-in run
        psql_q -d "$(db_of "$sys")" -c "VACUUM pgbench_branches" -c "VACUUM pgbench_tellers" -c "TRUNCATE pgbench_history"
      fi
      tps=$(run_pgbench "$(db_of "$sys")" "$BENCH_DATA/run-$mode-$r-$sys.log" \
              "${SCRIPT_ARGS[@]}" -M "$PROTOCOL" -c "$CLIENTS" -j "$JOBS" -T "$TIME")
      log "sync_commit=$mode run $r/$RUNS_N $sys: $tps tps"
      RUNS[$sys]="${RUNS[$sys]:-} $tps"
      CPU[$sys]="${CPU[$sys]:-} $(cpu_of "$BENCH_DATA/run-$mode-$r-$sys.log")"
    done
  done
  report "tpcb ($SCRIPT)" "scale=$SCALE c=$CLIENTS ${TIME}s sync_commit=$mode" tps 0
  report_cpu "tpcb ($SCRIPT)" "scale=$SCALE c=$CLIENTS ${TIME}s sync_commit=$mode"
done
log "total $((SECONDS - T0))s; load average now $(host_load)"
