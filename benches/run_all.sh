#!/usr/bin/env bash
# run_all.sh — run every SQL-level benchmark (benches/sql/*.sh) and write a markdown summary to
# benches/results/latest.md (and stdout); raw numbers go to benches/results/latest.tsv.
#
#   benches/run_all.sh            full mode: the benchmarks' defaults (~60 minutes on 2 cores)
#   benches/run_all.sh --quick    smoke check: small sizes, one 2-second run each (~5 minutes);
#                                 proves everything runs, the numbers are only indicative
#   --out FILE                    write the markdown somewhere else
#   --only "tpcb single_row commit_cost copy reads time_travel segments"   run a subset
#   --render FILE.tsv             no benchmarks: re-render the markdown from a results TSV
#
# Each benchmark starts and stops its own throwaway cluster; see benches/README.md for what they
# measure and how to read the ratios (throughput relative to plain heap in the same run; for
# time_travel: latency as a multiple of the same system's current-state read; for segments: per
# row, see the README).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/sql/lib.sh"
trap - EXIT

MODE=full OUT="$HERE/results/latest.md" ONLY="tpcb single_row commit_cost copy reads time_travel segments" RENDER=
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) MODE=quick; shift ;;
    --full) MODE=full; shift ;;
    --out) need_arg "$@"; OUT=$2; shift 2 ;;
    --only) need_arg "$@"; ONLY=$2; shift 2 ;;
    --render) need_arg "$@"; RENDER=$2; MODE=re-rendered; ONLY=; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option $1" ;;
  esac
done

if [ "$MODE" = quick ]; then
  TPCB=(--scale 2 --clients 2 --time 2 --runs 1 --sync-commit both)
  SINGLE=(--rows 100000 --clients 2 --time 2 --runs 1 --sync-commit both)
  COMMIT=(--rows 100000 --commits 2000 --runs 1)
  COPY=(--rows 100000 --runs 1)
  READS=(--rows 100000 --clients 2 --time 2 --runs 1)
  TT=(--rows 5000 --updates 10 --depth-factor 10 --time 2 --runs 1)
  SEG=(--rows 10000 --updates 5 --time 2 --runs 1)
else
  TPCB=(--scale 10 --clients 2 --time 20 --runs 3 --sync-commit both)
  SINGLE=(--rows 100000 --clients 2 --time 15 --runs 3 --sync-commit both)
  COMMIT=(--rows 100000 --commits 20000 --runs 9)
  COPY=(--rows 1000000 --runs 3)
  READS=(--rows 1000000 --clients 2 --time 15 --runs 3)
  TT=(--rows 100000 --updates 10 --depth-factor 10 --time 5 --runs 3)
  SEG=(--rows 100000 --updates 10 --time 10 --runs 3)
fi

mkdir -p "$(dirname "$OUT")"
TSV=$(mktemp /tmp/driftdb-bench-results.XXXXXX)
rm -f "$TSV.notes" "$TSV.plans"
if [ -n "$RENDER" ]; then
  cp "$RENDER" "$TSV"
  [ -f "$RENDER.notes" ] && cp "$RENDER.notes" "$TSV.notes"
  [ -f "$RENDER.plans" ] && cp "$RENDER.plans" "$TSV.plans"
fi
STARTED=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
BUILD_AT_START=$(driftdb_build)
git_rev=$(git -C "$HERE/.." rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$HERE/.." diff --quiet HEAD 2>/dev/null || git_rev="$git_rev + uncommitted changes"
LOAD_BEFORE=$(host_load)
T0=$SECONDS
declare -a TIMINGS=()

run() {  # run LABEL script args...
  local label=$1 t=$SECONDS; shift
  log "=== $label: $*"
  local rc=0
  "$@" --results "$TSV" || rc=$?
  if [ "$rc" != 0 ]; then
    log "!!! $label failed (exit $rc)"
    printf '%s: the benchmark script failed — see its output\n' "$label" >>"$TSV.notes"
  fi
  TIMINGS+=("$label: $((SECONDS - t))s")
}

for b in $ONLY; do
  case "$b" in
    tpcb)
      # periods cannot complete the built-in script with 2 clients (2201H, see README) → heap/driftdb
      run "tpcb builtin" "$HERE/sql/pgbench_tpcb.sh" "${TPCB[@]}" --script builtin --systems "heap driftdb"
      run "tpcb partitioned" "$HERE/sql/pgbench_tpcb.sh" "${TPCB[@]}" --script partitioned ;;
    single_row) run "single_row" "$HERE/sql/single_row.sh" "${SINGLE[@]}" ;;
    commit_cost) run "commit_cost" "$HERE/sql/commit_cost.sh" "${COMMIT[@]}" ;;
    copy)       run "copy" "$HERE/sql/copy_1m.sh" "${COPY[@]}" ;;
    reads)      run "reads" "$HERE/sql/reads.sh" "${READS[@]}" ;;
    time_travel) run "time_travel" "$HERE/sql/time_travel.sh" "${TT[@]}" ;;
    segments)   run "segments" "$HERE/sql/segments.sh" "${SEG[@]}" ;;
    *) die "unknown benchmark $b" ;;
  esac
done
TOTAL=$((SECONDS - T0))

# ---- markdown -------------------------------------------------------------------------------------
# one results table; -v grp=tt selects the time-travel rows (bench "time travel: ..."), grp=seg the
# compaction rows (bench "segments: ..."), grp=main the others
TABLE_AWK='
    function spread(csv,   n, a, i, j, t, m, q, v) {
      n = split(csv, a, ","); j = 0
      for (i = 1; i <= n; i++) if (a[i] ~ /^[0-9.]+$/) v[++j] = a[i] + 0
      if (j < 2) return "-"
      for (i = 2; i <= j; i++) { t = v[i]; for (q = i - 1; q >= 1 && v[q] > t; q--) v[q + 1] = v[q]; v[q + 1] = t }
      m = (j % 2) ? v[(j + 1) / 2] : (v[j / 2] + v[j / 2 + 1]) / 2
      return (m > 0) ? sprintf("%.0f%%", 100 * (v[j] - v[1]) / m) : "-"
    }
    function f(x) { if (x !~ /^[0-9.]+$/) return x; if (x >= 100) return sprintf("%.0f", x);
                    if (x >= 10) return sprintf("%.1f", x); return sprintf("%.3f", x) }
    { g = ($1 ~ /^time travel: /) ? "tt" : ($1 ~ /^segments: /) ? "seg" : "main"; if (g != grp) next }
    { k = $1 "\t" $2; if (!(k in seen)) { seen[k] = 1; order[++n] = k; unit[k] = $5 }
      med[k, $3] = $4; rat[k, $3] = $6; runs[k, $3] = $7 }
    END {
      for (i = 1; i <= n; i++) {
        k = order[i]; split(k, p, "\t")
        lbl = p[1]; sub(/^(time travel|segments): /, "", lbl)
        printf "| %s | %s | %s", lbl, p[2], unit[k]
        for (s = 1; s <= 3; s++) { sys = (s == 1 ? "heap" : s == 2 ? "driftdb" : "periods")
          printf " | %s", ((k, sys) in med) ? f(med[k, sys]) : "—" }
        for (s = 2; s <= 3; s++) { sys = (s == 2 ? "driftdb" : "periods")
          r = ((k, sys) in rat) ? rat[k, sys] : "—"; printf " | %s", (r ~ /^[0-9.]+$/) ? sprintf("**%.2f**", r) : r }
        sp = ""
        for (s = 1; s <= 3; s++) { sys = (s == 1 ? "heap" : s == 2 ? "driftdb" : "periods")
          sp = sp (s > 1 ? " / " : "") (((k, sys) in runs) ? spread(runs[k, sys]) : "—") }
        print " | " sp " |"
      }
    }'
{
  if [ -n "$RENDER" ]; then echo "# driftdb benchmark results (re-rendered from $RENDER)"
  else echo "# driftdb benchmark results ($MODE mode)"; fi
  echo
  if [ -n "$RENDER" ]; then
  echo "- re-rendered $STARTED from $RENDER; the run's metadata (host load, builds) is in its notes, if kept"
  else
  echo "- started: $STARTED, total $((TOTAL / 60))m$((TOTAL % 60))s"
  echo "- commit at start: $git_rev (of the working tree; what was measured is the installed driftdb.so)"
  echo "- host: $NCPU CPUs, $(free -g | awk '/^Mem:/ { print $2 " GB RAM" }'), $(uname -sr); load average before: $LOAD_BEFORE, after: $(host_load)"
  echo "- PostgreSQL: $("$PGBIN/postgres" --version | sed 's/^postgres (PostgreSQL) //'); periods $(sed -n "s/^default_version *= *'\{0,1\}\([^']*\)'\{0,1\}/\1/p" "$("$PGBIN/pg_config" --sharedir)/extension/periods.control")"
  echo "- driftdb installed at start: $BUILD_AT_START"
  echo "  (each benchmark pins the driftdb.so installed when its cluster starts; see \"driftdb measured\" in the notes)"
  echo "- cluster settings: fsync=${DRIFTDB_FSYNC:-on}, wal_level=logical, $(printf '%s, ' "${BENCH_CONF[@]}" | sed 's/ = /=/g; s/, $//')"
  fi
  echo
  if awk -F'\t' '$1 !~ /^(time travel|segments): / { f = 1 } END { exit !f }' "$TSV"; then
  echo "Each cell: median of the runs (unit in the Unit column). **Ratio = throughput relative to plain heap"
  echo "measured in the same run**: 1.00 = as fast as heap, 0.50 = half as fast, > 1 = faster (noise, or a"
  echo "real difference). Systems were interleaved run by run (heap, driftdb, periods, heap, ...)."
  echo
  echo "Spread = (max - min) / median of each system's runs: when it is larger than the gap between two"
  echo "ratios, that gap is noise."
  echo
  echo "| Benchmark | Settings | Unit | heap | driftdb | periods | driftdb / heap | periods / heap | spread heap / driftdb / periods |"
  echo "|---|---|---|---:|---:|---:|---:|---:|---:|"
  awk -F'\t' -v grp=main "$TABLE_AWK" "$TSV"
  echo
  fi
  if grep -q '^time travel: ' "$TSV"; then
  echo "## Time travel (benches/sql/time_travel.sh)"
  echo
  echo "Each cell: median **latency in ms** per query. **Ratio = × the same system's own current-state"
  echo "baseline latency, same run** (AS OF / versions lookups ÷ that system's current PK lookup; full AS OF"
  echo "reads ÷ that system's current full read): **lower is better**, 1.00 = as fast as a current read."
  echo "The heap column is a plain heap table's full read (same rows), the yardstick for \"≤ 3× a heap seq scan\"."
  echo "Settings: rows, update rounds (each row has updates+1 versions), clients, seconds per run."
  echo
  echo "| Query | Settings | Unit | heap | driftdb | periods | driftdb × own baseline | periods × own baseline | spread heap / driftdb / periods |"
  echo "|---|---|---|---:|---:|---:|---:|---:|---:|"
  awk -F'\t' -v grp=tt "$TABLE_AWK" "$TSV"
  echo
  fi
  if grep -q '^segments: ' "$TSV"; then
  echo "## History compaction (benches/sql/segments.sh)"
  echo
  echo "driftdb.compact() packs a table's events into compressed segments. The **ratio** depends on the row:"
  echo "- *history bytes per version*: bytes per row version ÷ the heap table's bytes per row (pg_table_size / rows"
  echo "  of the same table after the same updates and VACUUM) — **lower is better**; target driftdb compacted ≤ 0.3."
  echo "  \"compacted\" = driftdb.segments + driftdb.events after compact('0s'), VACUUM and REINDEX of driftdb.events;"
  echo "  \"before REINDEX\" = the same right after compact + VACUUM (the events indexes still hold their emptied pages);"
  echo "  periods = its t_history incl. index ÷ (rows × updates)."
  echo "- *compaction throughput*: compact()'s raw bytes (MB = 10^6 B) or events per second of compaction; no ratio."
  echo "- *single-row UPDATE*: TPS on the driftdb table; ratio = TPS while a compaction runs ÷ TPS alone (median of"
  echo "  per-run ratios) — **higher is better**, 1.00 = unaffected."
  echo "- *full AS OF read*: latency ÷ a plain heap table's full read (heap column) — **lower is better**, target ≤ 3."
  echo "- *AS OF PK lookup*: latency ÷ the same database's current PK lookup — lower is better (informative)."
  echo "- *..., uncompacted*: the same AS OF read on an uncompacted copy of the same history (what compaction changes)."
  echo
  echo "| Measure | Settings | Unit | heap | driftdb | periods | driftdb ratio | periods ratio | spread heap / driftdb / periods |"
  echo "|---|---|---|---:|---:|---:|---:|---:|---:|"
  awk -F'\t' -v grp=seg "$TABLE_AWK" "$TSV"
  echo
  fi
  echo "<details><summary>per-run values</summary>"
  echo
  echo "| Benchmark | Settings | System | Runs |"
  echo "|---|---|---|---|"
  awk -F'\t' '{ gsub(/,/, ", ", $7); printf "| %s | %s | %s | %s |\n", $1, $2, $3, $7 }' "$TSV"
  echo
  echo "</details>"
  echo
  echo "Notes:"
  echo
  if grep -q '^tpcb (builtin)' "$TSV"; then
  echo "- tpcb (builtin) is pgbench's unchanged TPC-B-like script, run for heap and driftdb only: periods"
  echo "  aborts it within seconds with \"invalid row version\" (SQLSTATE 2201H) whenever a transaction"
  echo "  updates a row last written by a transaction that started after it (hot pgbench_branches rows)."
  echo "  tpcb (partitioned) runs the same statements with each client on its own branch, so all three complete."
  fi
  [ ${#TIMINGS[@]} -eq 0 ] || echo "- Timings: $(printf '%s; ' "${TIMINGS[@]}" | sed 's/; $//')."
  if [ -s "$TSV.notes" ]; then sort -u "$TSV.notes" | sed 's/^/- /'; fi
  if [ -z "$RENDER" ]; then
    awk -v l="${LOAD_BEFORE%% *}" -v n="$NCPU" 'BEGIN { if (l > n * 0.5)
      printf "- The host was busy (load average %s on %d CPUs) when the run started: expect noise.\n", l, n }'
  fi
  if [ -s "$TSV.plans" ]; then
    echo
    echo "## Query plans (time_travel.sh: EXPLAIN (ANALYZE, COSTS OFF), literal middle key and middle round)"
    echo
    cat "$TSV.plans"
  fi
} >"$OUT"
if [ -z "$RENDER" ]; then
  cp "$TSV" "${OUT%.md}.tsv"
  if [ -s "$TSV.notes" ]; then sort -u "$TSV.notes" >"${OUT%.md}.tsv.notes"; else rm -f "${OUT%.md}.tsv.notes"; fi
  if [ -s "$TSV.plans" ]; then cp "$TSV.plans" "${OUT%.md}.tsv.plans"; else rm -f "${OUT%.md}.tsv.plans"; fi
fi
rm -f "$TSV" "$TSV.notes" "$TSV.plans"
cat "$OUT"
log "wrote $OUT (total ${TOTAL}s)"
