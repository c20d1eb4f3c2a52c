#!/usr/bin/env bash
# commit_cost.sh — what one single-row write transaction costs inside the server: heap vs
# driftdb vs periods, with no client, network or scheduler in the measurement.
#
#   benches/sql/commit_cost.sh [--rows N] [--commits N] [--runs N] [--sync-commit on|off]
#                              [--workloads "update insert"] [--systems "heap driftdb periods"]
#                              [--results FILE]
#
# The same 100k-row table as single_row.sh (scripts/single_row_{schema,load}.sql). One procedure
# call per run (scripts/commit_cost.sql) loops N times over one single-row statement followed by
# COMMIT, so every iteration is a whole transaction with its commit-time work (driftdb's history
# write), and times the loop with clock_timestamp() on the server:
#   update  UPDATE sr SET qty = qty + 1, updated_at = now() WHERE id = <spread over the table>
#   insert  INSERT INTO sr (...) VALUES (...)   (new ids from the identity sequence)
# The unit is µs per transaction; the ratio is heap's time ÷ the system's (throughput relative
# to heap, as everywhere in benches/). With synchronous_commit = off (the default here) this is
# the CPU cost of versioning a commit, without pgbench's and the network's share, so the ratios
# are far below single_row.sh's TPS ratios: "driftdb adds X µs per transaction" is the figure
# to compare changes of the commit path by. The host's noise is not gone (runs of one system
# spread 15-50% on a shared 2-core VM: the CPU itself runs slower or faster), so take many
# short interleaved runs (--runs 9 or more) and compare medians. Runs interleave the systems;
# the update runs grow driftdb's history (and periods' history table) between runs, as a
# workload would.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
HERE=$(cd "$(dirname "$0")" && pwd)

NROWS=100000 COMMITS=20000 RUNS_N=9 SYNC=off WORKLOADS="update insert"
SYSTEMS=$ALL_SYSTEMS RESULTS_FILE=
while [ $# -gt 0 ]; do
  case "$1" in
    --rows) need_arg "$@"; NROWS=$2; shift 2 ;;
    --commits) need_arg "$@"; COMMITS=$2; shift 2 ;;
    --runs) need_arg "$@"; RUNS_N=$2; shift 2 ;;
    --sync-commit) need_arg "$@"; SYNC=$2; shift 2 ;;
    --workloads) need_arg "$@"; WORKLOADS=$2; shift 2 ;;
    --systems) need_arg "$@"; SYSTEMS=$2; shift 2 ;;
    --results) need_arg "$@"; RESULTS_FILE=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option $1" ;;
  esac
done
case "$SYNC" in on|off) ;; *) die "--sync-commit on|off" ;; esac

bench_cluster_start commit_cost
warn_if_busy; warn_if_debug_build
T0=$SECONDS

setup_table_all_systems sr single_row_schema.sql single_row_load.sql
for sys in $SYSTEMS; do psql_q -d "$(db_of "$sys")" -f "$HERE/scripts/commit_cost.sql" >/dev/null; done
set_sync_commit "$SYNC"
log "setup done in $((SECONDS - T0))s"

for wl in $WORKLOADS; do
  case "$wl" in update|insert) ;; *) die "no workload $wl (update insert)" ;; esac
  RUNS=()
  for r in $(seq 1 "$RUNS_N"); do
    for sys in $SYSTEMS; do
      checkpoint
      us=$(psql_q -d "$(db_of "$sys")" -Atc "CALL commit_cost('$wl', $COMMITS, $NROWS, NULL)")
      [[ "$us" =~ ^[0-9.]+$ ]] || die "$sys $wl: no timing from the loop ($us)"
      log "commit cost $wl run $r/$RUNS_N $sys: $us µs per transaction"
      RUNS[$sys]="${RUNS[$sys]:-} $us"
    done
  done
  report "commit cost $wl" "rows=$NROWS ${COMMITS} commits/run sync_commit=$SYNC" "µs per transaction" 1
  base=$(median ${RUNS[heap]:-})
  for sys in $SYSTEMS; do
    [ "$sys" = heap ] && continue
    # shellcheck disable=SC2086
    printf '  %-8s adds %s µs per transaction to heap'"'"'s %s\n' "$sys" \
      "$(awk -v a="$(median ${RUNS[$sys]:-})" -v b="$base" 'BEGIN { if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/) printf "%.1f", a - b; else print "NA" }')" \
      "$(fmt "$base")"
  done
done
log "total $((SECONDS - T0))s; load average now $(host_load)"
