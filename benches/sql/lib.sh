# benches/sql/lib.sh — shared helpers for the SQL-level benchmarks (sourced, not executed).
#
# Every benchmark script:
#   * starts its own throwaway cluster in /tmp/driftdb-bench-<name> on a free port
#     (scripts/pgcluster.sh, driftdb preloaded, fsync on unless DRIFTDB_FSYNC=off),
#   * builds one database per system under test — bench_heap, bench_driftdb, bench_periods —
#     holding the same rows, so one pgbench/SQL script can be pointed at each in turn,
#   * interleaves the systems run by run (heap, driftdb, periods, heap, driftdb, periods, ...),
#   * reports per-run values, the median per system and the ratio to heap measured in the same run,
#   * stops (and deletes) the cluster on exit.
#
# Ratios are always "throughput relative to heap": 1.00 = as fast as heap, 0.50 = half as fast,
# whatever the underlying unit (TPS, rows/s, or wall time inverted).
#
# Machine-readable results: with --results FILE each script appends TSV lines
#   bench <TAB> variant <TAB> system <TAB> median <TAB> unit <TAB> ratio_to_heap <TAB> runs(csv)
# which benches/run_all.sh turns into benches/results/latest.md.

set -euo pipefail

BENCH_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PGCLUSTER="$BENCH_ROOT/scripts/pgcluster.sh"
NCPU=$(nproc 2>/dev/null || echo 2)
ALL_SYSTEMS="heap driftdb periods"

# Settings for every bench cluster: everything cached (three copies of a scale-10 pgbench database
# plus periods' history tables must fit), checkpoints kept out of short runs (we CHECKPOINT
# explicitly before every timed run instead), JIT off so that compile time is not measured.
BENCH_CONF=(
  "shared_buffers = 1GB"
  "max_wal_size = 4GB"
  "min_wal_size = 1GB"
  "checkpoint_timeout = 30min"
  "checkpoint_completion_target = 0.9"
  "wal_buffers = 16MB"
  "jit = off"
  "max_connections = 50"
  "log_min_messages = warning"
  "log_checkpoints = on"
  "driftdb.maintenance_naptime = 0"   # no background compaction/snapshots inside a measurement
)
# Extra lines for an A/B of a setting, ';;'-separated, e.g.
#   BENCH_EXTRA_CONF="driftdb.pack_min_events = 0" benches/sql/copy_1m.sh
while IFS= read -r line; do [ -n "$line" ] && BENCH_CONF+=("$line"); done < <(printf '%s\n' "${BENCH_EXTRA_CONF:-}" | sed 's/;;/\n/g')

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---- cluster lifecycle --------------------------------------------------------------------------

free_port() {
  local p
  for p in $(seq "${1:-55410}" 55999); do
    if ! ss -Hltn "sport = :$p" 2>/dev/null | grep -q .; then echo "$p"; return 0; fi
  done
  die "no free port"
}

# bench_cluster_start NAME [extra postgresql.conf lines...]
#   Sets BENCH_DATA, PGHOST, PGPORT, PGUSER; installs an EXIT trap that stops the cluster and
#   removes the data directory (BENCH_KEEP=1 keeps it for inspection).
bench_cluster_start() {
  local name=$1; shift
  BENCH_DATA="/tmp/driftdb-bench-$name"
  # one run per benchmark at a time: a second concurrent run would clobber our data directory
  exec 9>"$BENCH_DATA.lock"
  flock -n 9 || die "another $name benchmark is running (lock $BENCH_DATA.lock)"
  if [ -e "$BENCH_DATA" ]; then           # leftover of an interrupted run: it is ours, throw it away
    "$PGCLUSTER" stop "$BENCH_DATA" >/dev/null 2>&1 || true
    rm -rf "$BENCH_DATA" "$BENCH_DATA.initdb.log" "$BENCH_DATA.lib"
  fi
  BENCH_PORT=${BENCH_PORT:-$(free_port "$((55410 + RANDOM % 400))")}
  trap bench_cluster_stop EXIT
  trap 'exit 130' INT TERM
  snapshot_driftdb_so "$BENCH_DATA.lib"
  log "starting cluster $BENCH_DATA on port $BENCH_PORT (fsync=${DRIFTDB_FSYNC:-on})"
  "$PGCLUSTER" start "$BENCH_DATA" "$BENCH_PORT" "${BENCH_CONF[@]}" \
    "dynamic_library_path = '$BENCH_DATA.lib:\$libdir'" "$@" \
    || die "cluster did not start (is driftdb installed? it must be loadable for shared_preload_libraries)"
  export PGHOST="$BENCH_DATA/sock" PGPORT="$BENCH_PORT" PGUSER=postgres PGDATABASE=postgres
  unset PGOPTIONS
  psql_q -c "SELECT 1" >/dev/null || die "cannot connect"
}

# snapshot_driftdb_so DIR: pin the installed driftdb.so for this cluster. PostgreSQL resolves the
# library name 'driftdb' (shared_preload_libraries, and module_pathname of every driftdb C function)
# through dynamic_library_path, and re-checks the file whenever a backend first calls into it: a
# teammate's `cargo pgrx install` replacing or briefly deleting $libdir/driftdb.so mid-benchmark
# would otherwise fail runs ("could not access file \"driftdb\"") or mix builds. The copy is
# byte-identical to what is installed; we wait for an install in progress to finish first.
snapshot_driftdb_so() {
  local dir=$1 so; so=${BENCH_DRIFTDB_SO:-"$("$PGBIN/pg_config" --pkglibdir)/driftdb.so"}
  local i s1 s2
  for i in $(seq 1 60); do   # settled = exists, unchanged for 3 s, a valid ELF file
    s1=$(stat -c %Y "$so" 2>/dev/null || echo 0)
    [ "$s1" -gt 0 ] && [ $(( $(date +%s) - s1 )) -ge 3 ] && readelf -h "$so" >/dev/null 2>&1 && break
    [ "$i" = 1 ] && log "waiting for $so to be (re)installed completely..."
    sleep 1
  done
  [ -f "$so" ] || die "$so is not installed"
  rm -rf "$dir"; mkdir -p "$dir"
  for i in 1 2 3; do   # a copy that raced with an install differs from the file afterwards
    cp -p "$so" "$dir/driftdb.so" && sleep 0.5 && cmp -s "$so" "$dir/driftdb.so" \
      && readelf -h "$dir/driftdb.so" >/dev/null 2>&1 && break
    [ "$i" = 3 ] && die "could not take a stable copy of $so (being reinstalled?)"
    sleep 5
  done
  chmod -R a+rX "$dir"
  DRIFTDB_SO="$dir/driftdb.so"
}

bench_cluster_stop() {
  local rc=$?
  trap - EXIT
  if [ -n "${BENCH_DATA:-}" ] && [ -e "$BENCH_DATA" ]; then
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
      log "keeping $BENCH_DATA (server stopped; log: $BENCH_DATA/server.log)"
      "$PGCLUSTER" stop "$BENCH_DATA" >/dev/null 2>&1 || true
    else
      "$PGCLUSTER" stop "$BENCH_DATA" >/dev/null 2>&1 || true
      rm -rf "$BENCH_DATA" "$BENCH_DATA.initdb.log" "$BENCH_DATA.lib"
    fi
  fi
  exit "$rc"
}

# server-wide synchronous_commit (ALTER SYSTEM + reload: applies to every new session)
set_sync_commit() {
  psql_q -c "ALTER SYSTEM SET synchronous_commit = '$1'" -c "SELECT pg_reload_conf()" >/dev/null
  sleep 0.2
  local now; now=$(psql_q -Atc "SHOW synchronous_commit")
  [ "$now" = "$1" ] || die "synchronous_commit is '$now', wanted '$1'"
}

# ---- clients --------------------------------------------------------------------------------------

psql_q() { "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }
db_of() { echo "bench_$1"; }

# create the database for one system: heap (plain), driftdb (CREATE EXTENSION driftdb),
# periods (CREATE EXTENSION periods CASCADE, pulls in btree_gist)
create_system_db() {
  local sys=$1 db; db=$(db_of "$1")
  psql_q -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
  case "$sys" in
    heap) ;;
    driftdb) psql_q -d "$db" -c "CREATE EXTENSION driftdb" ;;
    periods) psql_q -d "$db" -c "SET client_min_messages = warning" -c "CREATE EXTENSION periods CASCADE" ;;
    *) die "unknown system $sys" ;;
  esac
  psql_q -d "$db" -c "CREATE EXTENSION IF NOT EXISTS pg_prewarm" 2>/dev/null || true
}

# periods_version DB TABLE...: system-version tables with periods (adds system_time_start/end
# columns, BEFORE/AFTER row triggers, and a TABLE_history table)
periods_version() {
  local db=$1 t; shift
  for t in "$@"; do
    psql_q -d "$db" -c "SET client_min_messages = warning" \
      -c "SELECT periods.add_system_time_period('$t')" \
      -c "SELECT periods.add_system_versioning('$t')" >/dev/null
  done
}

# assert_am DB SYSTEM TABLE...: the tables really use the access method / versioning we think
assert_system() {
  local sys=$1 db; db=$(db_of "$1"); shift
  local t am want=heap
  [ "$sys" = driftdb ] && want=driftdb
  for t in "$@"; do
    am=$(psql_q -d "$db" -Atc "SELECT a.amname FROM pg_class c JOIN pg_am a ON a.oid = c.relam WHERE c.oid = '$t'::regclass")
    [ "$am" = "$want" ] || die "$db.$t uses access method '$am', expected '$want'"
    if [ "$sys" = periods ]; then
      psql_q -d "$db" -Atc "SELECT 1 FROM periods.system_versioning WHERE table_name = '$t'::regclass" | grep -q 1 \
        || die "$db.$t is not system-versioned by periods"
    fi
  done
}

prewarm() {  # prewarm DB REL... (best effort)
  local db=$1 r; shift
  for r in "$@"; do psql_q -d "$db" -Atc "SELECT pg_prewarm('$r')" >/dev/null 2>&1 || true; done
}

checkpoint() { psql_q -c "CHECKPOINT"; }

# proc_times PID → "OWN REAPED": the process's CPU ticks (user + system), and those of its
# children it has reaped (cutime + cstime); fails if the process is gone.
proc_times() {
  local line; line=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  # shellcheck disable=SC2086
  set -- ${line##*) }   # from field 3 (state) on: field N is $((N - 2))
  echo "$((${12} + ${13})) $((${14} + ${15}))"
}

# cluster_cpu_ticks: CPU ticks the benchmark cluster's server processes have used so far: the
# postmaster, its live children (backends, walwriter, checkpointer, workers), and through the
# postmaster's reaped-children time those that have exited. It moves less than throughput with
# what else the host is doing (time spent waiting for a core is not counted). A child reaped
# while the children are being read would be counted twice or not at all, so the reading is
# repeated until the postmaster's reaped-children time is the same before and after.
cluster_cpu_ticks() {
  local pm pid try own reaped own2 reaped2 kids t x
  pm=$(head -1 "$BENCH_DATA/postmaster.pid" 2>/dev/null) || { echo NA; return 0; }
  for try in 1 2 3 4 5 6 7 8 9 10; do
    read -r own reaped < <(proc_times "$pm") || { echo NA; return 0; }
    kids=0
    for pid in $(pgrep -P "$pm"); do
      read -r t x < <(proc_times "$pid") && kids=$((kids + t))
    done
    read -r own2 reaped2 < <(proc_times "$pm") || { echo NA; return 0; }
    [ "$reaped" = "$reaped2" ] && { echo $((own + reaped + kids)); return 0; }
    sleep 0.1
  done
  echo NA
}
CLK_TCK=$(getconf CLK_TCK)

# run_pgbench DB OUTFILE pgbench-args... → prints TPS (excluding connection time), or "NA", and
# writes OUTFILE.cpu: the cluster's server CPU per transaction in µs (cpu_of OUTFILE reads it).
# Fails soft: a failing system is reported as NA and the log kept, the benchmark goes on.
run_pgbench() {
  local db=$1 out=$2; shift 2
  local c0 c1 n
  c0=$(cluster_cpu_ticks)
  if ! "$PGBIN/pgbench" "$@" "$db" >"$out" 2>&1; then
    echo NA >"$out.cpu"
    local err; err=$(grep -m1 -o 'ERROR: .*' "$out" || tail -1 "$out")
    log "pgbench failed on $db, run counted as NA: $err (log: $out)"
    note "${NOTE_CONTEXT:-pgbench} on $db: run aborted — $err"
    echo NA; return 0
  fi
  local failed
  sleep 0.5   # let the run's backends exit and be reaped: they are counted either way, but not mid-exit
  c1=$(cluster_cpu_ticks)
  n=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$out")
  awk -v c0="$c0" -v c1="$c1" -v n="${n:-0}" -v hz="$CLK_TCK" 'BEGIN {
    if (c0 ~ /^[0-9]+$/ && c1 ~ /^[0-9]+$/ && n > 0) printf "%.2f\n", (c1 - c0) * 1e6 / hz / n; else print "NA" }' >"$out.cpu"
  failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$out")
  if [ -n "$failed" ] && [ "$failed" != 0 ]; then
    log "WARNING: $failed failed transactions on $db"
    note "${NOTE_CONTEXT:-pgbench} on $db: $failed failed transactions in a run"
  fi
  sed -n 's/^tps = \([0-9.]*\) (without initial connection time)/\1/p' "$out" | head -1 | grep . || echo NA
}

# ---- statistics and reporting ----------------------------------------------------------------------

median() {  # median of the numeric arguments (NA ignored); NA if none
  printf '%s\n' "$@" | { grep -E '^[0-9.]+$' || true; } | sort -g | awk '
    { v[NR] = $1 } END {
      if (NR == 0) { print "NA"; exit }
      if (NR % 2) printf "%.6g\n", v[(NR + 1) / 2]; else printf "%.6g\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# spread of the runs: (max - min) / median, in percent — how far to trust a median
spread() {
  printf '%s\n' "$@" | { grep -E '^[0-9.]+$' || true; } | sort -g | awk '
    { v[NR] = $1 } END {
      if (NR < 2) { print "-"; exit }
      m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
      if (m > 0) printf "%.0f%%\n", 100 * (v[NR] - v[1]) / m; else print "-" }'
}

# ratio A B [invert]: A/B (throughput), or B/A when invert=1 (times: lower is better)
ratio() {
  awk -v a="$1" -v b="$2" -v inv="${3:-0}" 'BEGIN {
    if (a !~ /^[0-9.]+$/ || b !~ /^[0-9.]+$/ || a == 0 || b == 0) { print "NA"; exit }
    printf "%.3f\n", inv ? b / a : a / b }'
}

fmt() {
  awk -v x="$1" 'BEGIN { if (x !~ /^[0-9.]+$/) printf "%s", x; else if (x >= 100) printf "%.0f", x;
                         else if (x >= 10) printf "%.1f", x; else printf "%.3f", x }'
}

# report BENCH VARIANT UNIT INVERT: reads RUNS_<system> arrays (space-separated strings in
# associative array RUNS), prints the per-system summary and appends TSV to $RESULTS_FILE.
#   INVERT=1 when the unit is a time (lower is better).
declare -A RUNS
report() {
  local bench=$1 variant=$2 unit=$3 inv=${4:-0}
  local sys base med r
  # shellcheck disable=SC2086
  base=$(median ${RUNS[heap]:-})
  printf '\n== %s [%s] — %s, median of %s runs; ratio = throughput relative to heap ==\n' \
    "$bench" "$variant" "$unit" "$(wc -w <<<"${RUNS[heap]:-}")"
  printf '%-8s %12s %8s %8s   %s\n' system median ratio spread runs
  for sys in $SYSTEMS; do
    # shellcheck disable=SC2086
    med=$(median ${RUNS[$sys]:-})
    r=$(ratio "$med" "$base" "$inv")
    # shellcheck disable=SC2086
    printf '%-8s %12s %8s %8s   %s\n' "$sys" "$(fmt "$med")" "$r" "$(spread ${RUNS[$sys]:-})" "${RUNS[$sys]:-}"
    if [ -n "${RESULTS_FILE:-}" ]; then
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$bench" "$variant" "$sys" "$med" "$unit" "$r" \
        "$(tr ' ' ',' <<<"${RUNS[$sys]:-}" | sed 's/^,//')" >>"$RESULTS_FILE"
    fi
  done
  echo
}

# The server CPU per transaction of each run (run_pgbench's LOG.cpu), by system, reported by
# report_cpu as a table of its own: the cost of versioning, less exposed to the host's noise.
declare -A CPU
cpu_of() { cat "$1.cpu" 2>/dev/null || echo NA; }
report_cpu() {  # report_cpu BENCH VARIANT: report the CPU runs (ratio = heap's ÷ the system's), then forget them
  local -A saved=()
  local k
  for k in "${!RUNS[@]}"; do saved[$k]=${RUNS[$k]}; done
  RUNS=(); for k in "${!CPU[@]}"; do RUNS[$k]=${CPU[$k]}; done
  report "$1, server CPU" "$2" "µs of server CPU per transaction" 1
  RUNS=(); for k in "${!saved[@]}"; do RUNS[$k]=${saved[$k]}; done
  CPU=()
}

# note TEXT: remarks for the results page (deduplicated by run_all.sh)
note() { [ -n "${RESULTS_FILE:-}" ] && printf '%s\n' "$*" >>"$RESULTS_FILE.notes"; return 0; }

host_load() { cut -d' ' -f1-3 /proc/loadavg; }
warn_if_busy() {
  local l; l=$(cut -d' ' -f1 /proc/loadavg)
  if awk -v l="$l" -v n="$NCPU" 'BEGIN { exit !(l > n * 0.5) }'; then
    log "WARNING: load average is $l on $NCPU CPUs before the run — other work on this host adds noise"
  fi
}

# common option parsing helpers
need_arg() { [ $# -ge 2 ] || die "$1 needs a value"; }

# usage: print the calling script's header comment (everything after the shebang up to the code)
usage() { awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"; }

# driftdb_build: describe the installed driftdb.so; unoptimized (debug) builds keep thousands of
# tiny generic instantiations such as `<T as Into<U>>::into` that release builds inline away.
driftdb_build() {
  local so=${DRIFTDB_SO:-$("$PGBIN/pg_config" --pkglibdir)/driftdb.so}
  [ -f "$so" ] || { echo "driftdb.so not installed"; return 0; }
  local kind=release
  local n; n=$(nm -C "$so" 2>/dev/null | grep -c 'as core::convert::Into<' || true)
  [ "${n:-0}" -gt 0 ] && kind="DEBUG (unoptimized)"
  printf '%s, %s build, %s bytes, modified %s, sha256 %s' "$so" "$kind" "$(stat -c %s "$so")" \
    "$(date -u -r "$so" '+%Y-%m-%d %H:%M:%S UTC')" "$(sha256sum "$so" | cut -c1-12)"
}
warn_if_debug_build() {
  local b; b=$(driftdb_build)
  log "driftdb measured: $b"
  note "driftdb measured: $(sed 's/^[^,]*, //' <<<"$b")"
  case "$b" in *DEBUG*)
    log "WARNING: the installed driftdb.so is an unoptimized debug build — driftdb numbers are pessimistic"
    note "installed driftdb.so is an unoptimized DEBUG build (cargo pgrx install --release / cargo pgrx package for real numbers)" ;;
  esac
}

# setup_table_all_systems TABLE SCHEMA_SQL LOAD_SQL: for every system in $SYSTEMS, create its
# database, the table (USING heap or driftdb; periods adds system versioning) from
# $HERE/scripts/SCHEMA_SQL, load $NROWS rows with LOAD_SQL, check it, analyze and prewarm it.
setup_table_all_systems() {
  local table=$1 schema=$2 load=$3 sys db am
  for sys in $SYSTEMS; do
    db=$(db_of "$sys"); create_system_db "$sys"
    am=heap; [ "$sys" = driftdb ] && am=driftdb
    psql_q -d "$db" -v am="$am" -f "$HERE/scripts/$schema" >/dev/null
    [ "$sys" = periods ] && periods_version "$db" "$table"
    psql_q -d "$db" -v nrows="$NROWS" -f "$HERE/scripts/$load" >/dev/null
    assert_system "$sys" "$table"
    psql_q -d "$db" -c "VACUUM ANALYZE $table"
    prewarm "$db" "$table" "${table}_pkey"
  done
}

# ---- the history benchmarks' table (time_travel.sh, segments.sh) ------------------------------
# t: N rows inserted in one statement, then update rounds that change every column but the key.
history_table_sql() {  # AM [nokey] → CREATE TABLE t ... USING AM (nokey: id without its primary key)
  local pk="PRIMARY KEY"; [ "${2:-}" = nokey ] && pk="NOT NULL   "
  cat <<SQL
CREATE TABLE t (
    id          int           $pk,
    v           int           NOT NULL,
    name        text          NOT NULL,
    amount      numeric(12,2) NOT NULL,
    updated_at  timestamptz   NOT NULL
) USING $1;
SQL
}
history_insert_sql() {  # N → the load of t's N rows
  echo "INSERT INTO t SELECT g, 0, 'customer ' || g || ' ' || md5(g::text), round((g % 50000) / 100.0, 2),"
  echo "       timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second' FROM generate_series(1, $1) g;"
}
HISTORY_UPDATE_SQL="UPDATE t SET v = v + 1, amount = amount + 1, updated_at = now();"
