#!/usr/bin/env bash
# ceiling.sh — what each step of a driftdb commit costs, by builds that stop after that step.
#
#   benches/sql/ceiling.sh [--steps "capture encode stamp commit_row events_heap events_pkey full"] [--txns 200]
#                          [--workloads "update insert tpcb"] [--timed "single_row --sync-commit off ..."]
#                          [--out DIR]
#
# Builds driftdb once per step with DRIFTDB_CEILING=<step> (src/history/commit.rs, CEILING),
# keeps each driftdb.so in DIR (default /tmp/driftdb-ceiling), then runs instructions.sh against each build
# (BENCH_DRIFTDB_SO), and, with --timed, one timed benchmark script per build with the options
# given (for example --timed "single_row.sh --sync-commit off --systems 'heap driftdb'").
# Steps, each one including the ones before it:
#   capture     the write callbacks record the changed rows; the pre-commit drops them
#   encode      plus: the pre-commit reads the row versions back and encodes the events
#   stamp       plus: the seq and time (allocation and seq locks), table ids, the frames
#   commit_row  plus: the driftdb.commits row; no event row, no pack
#   events_heap plus: the driftdb.events rows, without index entries (single-row workloads only:
#               no packs, no moved keys)
#   events_pkey plus: their events_pkey entries (and not their events_key ones)
#   full        a normal build: plus the events rows (or packs) and their index entries
# A build other than full stores no history (or no events) and must never be installed for
# use; it exists to bound what any design that captures in the write callbacks and stamps at
# pre-commit (DESIGN-BRIEF §3) can cost. The builds share target/ with the normal one: cargo
# tracks DRIFTDB_CEILING, so the next build without it (scripts/setup.sh, build_and_install)
# compiles driftdb again, and nothing here installs a .so. Results: docs/architecture.md, "Session 15".
set -euo pipefail
. "$(dirname "$0")/lib.sh"
HERE=$(cd "$(dirname "$0")" && pwd)

STEPS="capture encode stamp commit_row events_heap events_pkey full" TXNS=200 WORKLOADS="update insert tpcb" TIMED= OUT=/tmp/driftdb-ceiling
while [ $# -gt 0 ]; do
  case "$1" in
    --steps) need_arg "$@"; STEPS=$2; shift 2 ;;
    --txns) need_arg "$@"; TXNS=$2; shift 2 ;;
    --workloads) need_arg "$@"; WORKLOADS=$2; shift 2 ;;
    --timed) need_arg "$@"; TIMED=$2; shift 2 ;;
    --out) need_arg "$@"; OUT=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option $1" ;;
  esac
done
for s in $STEPS; do
  case "$s" in capture|encode|stamp|commit_row|events_heap|events_pkey|full) ;; *) die "unknown step $s" ;; esac
done
mkdir -p "$OUT"
ROOT=$(cd "$HERE/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

for s in $STEPS; do
  log "building the $s step"
  if [ "$s" = full ]; then unset DRIFTDB_CEILING; else export DRIFTDB_CEILING=$s; fi
  (cd "$ROOT" && cargo pgrx package --pg-config "$PGBIN/pg_config" >"$OUT/build-$s.log" 2>&1) \
    || { tail -20 "$OUT/build-$s.log" >&2; die "the $s build failed"; }
  so=$(find "$TARGET/release/driftdb-pg15" -name driftdb.so | head -1)
  [ -n "$so" ] || die "no driftdb.so under $TARGET/release/driftdb-pg15"
  cp "$so" "$OUT/driftdb-$s.so"
done
unset DRIFTDB_CEILING

for s in $STEPS; do
  log "counting the $s step"
  BENCH_DRIFTDB_SO="$OUT/driftdb-$s.so" bash "$HERE/instructions.sh" --txns "$TXNS" --workloads "$WORKLOADS" \
    2>"$OUT/instructions-$s.log" | sed "s/^/$s  /" | tee "$OUT/instructions-$s.txt"
done
if [ -n "$TIMED" ]; then
  for s in $STEPS; do
    log "timing the $s step: $TIMED"
    eval "BENCH_DRIFTDB_SO=\"$OUT/driftdb-$s.so\" bash \"$HERE/\"$TIMED" 2>"$OUT/timed-$s.log" | sed "s/^/$s  /" | tee "$OUT/timed-$s.txt"
  done
fi
