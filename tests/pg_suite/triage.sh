#!/usr/bin/env bash
# tests/pg_suite/triage.sh — tag each driftdb-only failure of the last tests/pg_suite/run.sh by
# the known causes found in its diff, to help keep expected-driftdb-failures.txt and
# docs/pg-regress-suite.md up to date.
#
#   tests/pg_suite/triage.sh [RESULTS_DIR]      # default: $PGSUITE_OUT or /tmp/pgsuite-results
#
# Prints one line per test: name, tags, and the earliest diff line showing one of the tags
# (or the first changed line). Tags (see docs/pg-regress-suite.md):
#   NO_ROW_IDENTITY  UPDATE/DELETE refused: "cannot update rows of driftdb table ...: it has no row identity"
#   TOAST_SNAPSHOT   "cannot fetch toast data without an active snapshot"
#   ALTER_TYPE       "cannot change the type of column ... of driftdb table"
#   ADD_COLUMN       "cannot add column ... to driftdb table ... with a per-row default"
#   PREPARE          "cannot PREPARE a transaction that changed driftdb tables"
#   ERROR_POSITION   error cursor ("LINE n: ... ^") or CONTEXT lines missing
#   BACKTRACE        pgrx backtrace in an error DETAIL
#   CRASH            server crash / lost connection
#   AM_LISTED        (a) the driftdb AM or its handler appears in a catalog listing
#   OTHER            none of the above: read the diff
set -euo pipefail
out=${1:-${PGSUITE_OUT:-/tmp/pgsuite-results}}
only=$out/driftdb-only
[ -f "$only" ] || { echo "no $only: run tests/pg_suite/run.sh first" >&2; exit 2; }

patterns=(
  'NO_ROW_IDENTITY|^\+ERROR: .*it has no row identity'
  'TOAST_SNAPSHOT|^\+ERROR: .*cannot fetch toast data without an active snapshot'
  'ALTER_TYPE|^\+ERROR: .*cannot change the type of column .* of driftdb table'
  'ADD_COLUMN|^\+ERROR: .*to driftdb table .* with a per-row default'
  'PREPARE|^\+ERROR: .*cannot PREPARE a transaction that changed driftdb tables'
  'ERROR_POSITION|^-(LINE [0-9]+:|CONTEXT: )'
  'BACKTRACE|^\+ +[0-9]+: pgrx'
  'CRASH|server closed the connection|terminated abnormally|connection to server was lost|PANIC:'
  'AM_LISTED|^\+.*(driftdb\.driftdb_am_handler|access method driftdb|^\+ driftdb +\| Table)'
)
while read -r t; do
  f=$out/driftdb/diffs/$t.diff
  [ -f "$f" ] || { printf '%-24s %-40s %s\n' "$t" "NO_DIFF" "(no diff file: crashed or timed out?)"; continue; }
  tags=""; quote=""; first=999999999
  for p in "${patterns[@]}"; do
    tag=${p%%|*}; re=${p#*|}
    if line=$(grep -n -m1 -E -- "$re" "$f"); then
      tags+="$tag "
      if [ "${line%%:*}" -lt "$first" ]; then first=${line%%:*}; quote=${line#*:}; fi
    fi
  done
  if [ -z "$tags" ]; then
    tags="OTHER"
    quote=$(grep -m1 -E '^[-+]' "$f" | grep -vE '^(---|\+\+\+) ' || true)
    [ -n "$quote" ] || quote=$(grep -E '^[-+]' "$f" | grep -vE '^(---|\+\+\+) ' | head -n1)
  fi
  printf '%-24s %-40s %s\n' "$t" "${tags% }" "$(echo "$quote" | cut -c1-160)"
done < "$only"
