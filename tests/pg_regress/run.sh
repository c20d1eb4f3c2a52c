#!/usr/bin/env bash
# run.sh — the SQL golden-file tier (tests/pg_regress/{sql,expected}).
#
# The files follow `cargo pgrx regress` conventions (setup.sql runs first, then every test in
# name order), and a non-root developer can run `cargo pgrx regress pg15` on them. As root,
# cargo-pgrx starts its own server as root, which PostgreSQL refuses; so here we run the very
# same files with PostgreSQL's pg_regress against a throwaway cluster (driftdb preloaded,
# server run by the postgres OS user).
#   tests/pg_regress/run.sh            run and compare
#   tests/pg_regress/run.sh --accept   copy results over expected (review the diff first!)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PGBIN=/usr/lib/postgresql/15/bin
PG_REGRESS=/usr/lib/postgresql/15/lib/pgxs/src/test/regress/pg_regress
DATA=/tmp/driftdb-regress-$$
PORT=${DRIFTDB_REGRESS_PORT:-54329}
OUT=$(mktemp -d /tmp/driftdb-regress-out.XXXXXX)
chmod 777 "$OUT"

cleanup() { "$ROOT/scripts/pgcluster.sh" stop "$DATA" || true; rm -rf "$DATA" "$DATA.initdb.log"; }
trap cleanup EXIT
"$ROOT/scripts/pgcluster.sh" start "$DATA" "$PORT" "max_prepared_transactions = 5" "timezone = 'UTC'" "driftdb.maintenance_naptime = 0"

tests=(setup)
for f in "$HERE"/sql/*.sql; do
  n=$(basename "$f" .sql); [ "$n" = setup ] || tests+=("$n")
done
status=0
"$PG_REGRESS" --inputdir="$HERE" --outputdir="$OUT" --bindir="$PGBIN" \
  --host=127.0.0.1 --port="$PORT" --user=postgres --dbname=driftdb_regress \
  "${tests[@]}" || status=$?
if [ "${1:-}" = "--accept" ]; then
  for f in "$OUT"/results/*.out; do cp "$f" "$HERE/expected/"; done
  echo "accepted results into $HERE/expected"
elif [ $status -ne 0 ] && [ -f "$OUT/regression.diffs" ]; then
  cat "$OUT/regression.diffs"
fi
rm -rf "$OUT"
exit $status
