#!/usr/bin/env bash
# run.sh — the isolation tier: PostgreSQL's isolation tester on driftdb's concurrency semantics.
#
# Specs live in tests/isolation/specs/*.spec, expected output in tests/isolation/expected/*.out.
# A throwaway cluster (driftdb preloaded, server run by the postgres OS user when we are root)
# is started for the run and removed afterwards.
#   tests/isolation/run.sh                 run every spec and compare
#   tests/isolation/run.sh NAME...         run only these specs
#   tests/isolation/run.sh --accept [NAME...]
#                                          copy results over expected/ (READ every changed file
#                                          before keeping it: an expected file that records a
#                                          bug is a defect)
# Exits non-zero (and prints regression.diffs) when any spec's output differs.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
ISO_DIR=${ISO_DIR:-/usr/lib/postgresql/15/lib/pgxs/src/test/isolation}
ISO_REGRESS=$ISO_DIR/pg_isolation_regress

accept=0
if [ "${1:-}" = "--accept" ]; then accept=1; shift; fi

if [ ! -x "$ISO_REGRESS" ] || [ ! -x "$ISO_DIR/isolationtester" ]; then
  echo "isolation: $ISO_REGRESS or isolationtester not found (Debian: postgresql-server-dev-15)" >&2
  exit 2
fi

# a free TCP port on 127.0.0.1 (nothing answers a connect there)
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
PORT=${DRIFTDB_ISOLATION_PORT:-}
if [ -z "$PORT" ]; then
  PORT=$((56000 + $$ % 1000))
  while ! port_free "$PORT"; do PORT=$((PORT + 1)); done
fi

DATA=/tmp/driftdb-iso-$$
OUT=$(mktemp -d /tmp/driftdb-iso-out.XXXXXX)
cleanup() {
  "$ROOT/scripts/pgcluster.sh" stop "$DATA" >/dev/null 2>&1 || true
  rm -rf "$DATA" "$DATA.initdb.log" "$OUT"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# max_prepared_transactions: specs/prepared.spec
"$ROOT/scripts/pgcluster.sh" start "$DATA" "$PORT" "max_prepared_transactions = 5" "timezone = 'UTC'" "driftdb.maintenance_naptime = 0"

tests=("$@")
if [ ${#tests[@]} -eq 0 ]; then
  for f in "$HERE"/specs/*.spec; do tests+=("$(basename "$f" .spec)"); done
fi
# known failures (tests/isolation/xfail): run apart; their failure does not fail the tier
mapfile -t xfail < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$HERE/xfail" 2>/dev/null | awk '{print $1}')
is_xfail() { local x; for x in "${xfail[@]}"; do [ "$x" = "$1" ] && return 0; done; return 1; }
main=(); known=()
for t in "${tests[@]}"; do if is_xfail "$t"; then known+=("$t"); else main+=("$t"); fi; done

run_group() {  # outdir test...
  local out=$1; shift
  mkdir -p "$out"
  # PGISOLATIONTIMEOUT: a step that hangs is cancelled after this many seconds (default 300)
  PGISOLATIONTIMEOUT=${PGISOLATIONTIMEOUT:-60} \
  "$ISO_REGRESS" --inputdir="$HERE" --outputdir="$out" --bindir="$PGBIN" \
    --host=127.0.0.1 --port="$PORT" --user=postgres --dbname=driftdb_isolation \
    --load-extension=driftdb "$@"
}

status=0
if [ ${#main[@]} -gt 0 ]; then
  run_group "$OUT/main" "${main[@]}" || status=$?
fi
xpass=()
if [ ${#known[@]} -gt 0 ]; then
  echo "== known failures (tests/isolation/xfail): ${known[*]}"
  run_group "$OUT/xfail" "${known[@]}" >"$OUT/xfail.log" 2>&1 || true
  [ -n "${ISO_DEBUG:-}" ] && cat "$OUT/xfail.log"
  for t in "${known[@]}"; do
    if grep -Eq "^(test|ok [0-9]+ +-) +$t +\.\.\. ok|^test $t +\.\.\. ok" "$OUT/xfail.log" 2>/dev/null; then
      xpass+=("$t")
    else
      echo "   known failure (as expected): $t; differences from the correct output:"
      awk -v t="/$t.out" '/^diff /{on = index($0, t) > 0; next} on && /^[-+][^-+]/' \
        "$OUT/xfail/regression.diffs" 2>/dev/null | head -n 20 | sed 's/^/     /' || true
    fi
  done
fi

if [ $accept = 1 ]; then
  mkdir -p "$HERE/expected"
  # expected output of known failures is written by hand (the correct behaviour): never accepted
  for f in "$OUT"/main/results/*.out; do [ -e "$f" ] && cp "$f" "$HERE/expected/"; done
  echo "accepted results into $HERE/expected — read every changed file before keeping it"
elif [ $status -ne 0 ]; then
  if [ -s "$OUT/main/regression.diffs" ]; then cat "$OUT/main/regression.diffs"; fi
  echo "isolation: FAILED (server log tail follows)" >&2
  tail -n 40 "$DATA/server.log" >&2 || true
fi
if [ ${#xpass[@]} -gt 0 ]; then
  echo "isolation: XPASS — now passing, remove from tests/isolation/xfail: ${xpass[*]}" >&2
  [ $status -ne 0 ] || status=1
fi
exit $status
