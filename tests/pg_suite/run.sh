#!/usr/bin/env bash
# tests/pg_suite/run.sh — run PostgreSQL 15's own regression suite (parallel_schedule) twice:
# once plain (heap) and once with default_table_access_method = driftdb, and compare.
#
#   tests/pg_suite/run.sh
#
# See docs/pg-regress-suite.md. Environment knobs (all optional):
#   PGSUITE_PHASES   phases to run, default "heap driftdb"
#   PGSUITE_OUT      results (regression.diffs, per-test diffs, server logs, summary.txt);
#                    default /tmp/pgsuite-results (wiped at the start of each run)
#   PGSUITE_CACHE    build cache for regress.so/refint.so/autoinc.so; default /tmp/pgsuite-build
#   PGSRC_DIR        where the PostgreSQL source is fetched to; default /tmp/pgsrc
#   PGSUITE_TESTS    space-separated test names to run instead of the whole parallel_schedule
#                    (e.g. "test_setup create_index inherit"); disables the exit-status checks
#                    for tests that were not run
#   PGSUITE_REQUIRE_DRIFTDB=1  fail (instead of skipping the driftdb phase) when the driftdb
#                    extension is not installed
#   PGSUITE_PRELOAD  shared_preload_libraries for the driftdb phase; default driftdb
#   PGSUITE_SETUP_SQL  SQL run in the test database before the driftdb phase; default
#                    "CREATE EXTENSION IF NOT EXISTS driftdb". Dry run of the driftdb half without
#                    the extension (a heap clone named driftdb):
#                    PGSUITE_PRELOAD= PGSUITE_SETUP_SQL='CREATE ACCESS METHOD driftdb TYPE TABLE
#                    HANDLER heap_tableam_handler' tests/pg_suite/run.sh
#   PGSUITE_REGRESS_DIR  use this src/test/regress-like directory as is (no copy, no skew patch)
#   PGSUITE_SNAPSHOT=0  run the driftdb server from the system installation instead of a private
#                    snapshot of it (the snapshot protects a run from concurrent reinstalls)
#   PGSUITE_PHASE_TIMEOUT  seconds one pg_regress run may take before it is killed; default 900
#   PGBIN            PostgreSQL 15 binaries; default /usr/lib/postgresql/15/bin
#
# Exit status: 0 when every test passes under heap and every driftdb-only failure is listed
# in tests/pg_suite/expected-driftdb-failures.txt; 1 otherwise; 2 on setup errors.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PG_CONFIG=${PG_CONFIG:-$PGBIN/pg_config}
OSUSER=${DRIFTDB_OS_USER:-postgres}
PHASES=${PGSUITE_PHASES:-heap driftdb}
OUT=${PGSUITE_OUT:-/tmp/pgsuite-results}
CACHE=${PGSUITE_CACHE:-/tmp/pgsuite-build}
SRCROOT=${PGSRC_DIR:-/tmp/pgsrc}
PHASE_TIMEOUT=${PGSUITE_PHASE_TIMEOUT:-900}
EXPECTED_FILE=$here/expected-driftdb-failures.txt
FETCH=${FETCH_PG_SOURCE:-$repo/../shared/tools/fetch-pg-source.sh}
[ -x "$FETCH" ] || FETCH=/work/shared/tools/fetch-pg-source.sh
PORT=${PGSUITE_PORT:-54329}

log() { printf '[pg_suite %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 2; }
if [ "$(id -u)" = 0 ]; then runas=(runuser -u "$OSUSER" --); else runas=(); fi  # no servers as root
as_pg() { "${runas[@]}" "$@"; }

t_start=$(date +%s)

# ---------------------------------------------------------------- source ---------------------
[ -x "$PGBIN/postgres" ] || die "no PostgreSQL 15 server in $PGBIN (apt-get install postgresql-15 postgresql-server-dev-15)"
[ -x "$PG_CONFIG" ] || die "no pg_config at $PG_CONFIG (apt-get install postgresql-server-dev-15)"
PGXS=$("$PG_CONFIG" --pgxs)
PG_REGRESS=$(dirname "$PGXS")/../test/regress/pg_regress
[ -x "$PG_REGRESS" ] || die "no pg_regress at $PG_REGRESS (apt-get install postgresql-server-dev-15)"

log "fetching PostgreSQL source (idempotent) into $SRCROOT"
srcdir=$("$FETCH" "$SRCROOT" | tail -n1) || die "fetch-pg-source.sh failed"
srcdir=${srcdir%/}
[ -f "$srcdir/src/test/regress/parallel_schedule" ] || die "no parallel_schedule under $srcdir/src/test/regress"
src_version=$(basename "$srcdir")                  # postgresql-15.18
src_ver=${src_version#postgresql-}                 # 15.18
server_version=$("$PGBIN/postgres" --version)      # postgres (PostgreSQL) 15.20 (Debian ...)
server_ver=$(echo "$server_version" | sed -nE 's/^[^0-9]*([0-9]+\.[0-9]+).*/\1/p')
log "source: $src_version; server: $server_version"

# The suite's input files (sql/, expected/, data/, schedule) are copied into the cache. When
# the fetched source is older than the server (Debian's mirror may lack the newest source),
# tests/pg_suite/skew/postgresql-SRC-to-SERVER.patch adapts them to the server's behaviour.
skew_patch=""
if [ "$src_ver" != "$server_ver" ]; then
  skew_patch=$here/skew/postgresql-$src_ver-to-$server_ver.patch
  if [ ! -f "$skew_patch" ]; then
    log "WARNING: tests are from $src_ver but the server is $server_ver and there is no $skew_patch: expect heap failures caused by the version skew"
    skew_patch=""
  fi
fi
if [ -n "${PGSUITE_REGRESS_DIR:-}" ]; then
  REGRESS_SRC=$PGSUITE_REGRESS_DIR
else
  REGRESS_SRC=$CACHE/regress-$src_ver-for-$server_ver
  rstamp="$srcdir $( [ -z "$skew_patch" ] || cksum < "$skew_patch")"
  if [ "$(cat "$REGRESS_SRC/.stamp" 2>/dev/null)" != "$rstamp" ]; then
    log "preparing test files in $REGRESS_SRC${skew_patch:+ (applying $(basename "$skew_patch"))}"
    rm -rf "$REGRESS_SRC"; mkdir -p "$REGRESS_SRC"
    (cd "$srcdir/src/test/regress" && cp -r sql expected data parallel_schedule resultmap "$REGRESS_SRC/")
    if [ -n "$skew_patch" ]; then
      if command -v patch >/dev/null; then patch -s -p1 -d "$REGRESS_SRC" < "$skew_patch"
      else (cd "$REGRESS_SRC" && git apply -p1 "$skew_patch"); fi || die "could not apply $skew_patch"
    fi
    echo "$rstamp" > "$REGRESS_SRC/.stamp"
  fi
fi

# ---------------------------------------------------------------- build ----------------------
# regress.so (src/test/regress/regress.c) and refint.so/autoinc.so (contrib/spi), built with
# PGXS into $CACHE/lib. Rebuilt only when the sources or the server's pg_config change.
build=$CACHE/lib
mkdir -p "$build"
stamp="$($PG_CONFIG --version) $srcdir"
if [ "$(cat "$build/.stamp" 2>/dev/null)" != "$stamp" ]; then
  rm -f "$build"/*.o "$build"/*.so "$build"/*.c
fi
for f in "$srcdir/src/test/regress/regress.c" "$srcdir/contrib/spi/refint.c" "$srcdir/contrib/spi/autoinc.c"; do
  cmp -s "$f" "$build/$(basename "$f")" || cp "$f" "$build/"
done
cat > "$build/Makefile.new" <<EOF
MODULES = regress refint autoinc
PG_CPPFLAGS = -DREFINT_VERBOSE
PG_CONFIG = $PG_CONFIG
PGXS := \$(shell \$(PG_CONFIG) --pgxs)
include \$(PGXS)
EOF
if cmp -s "$build/Makefile.new" "$build/Makefile"; then rm "$build/Makefile.new"
else mv "$build/Makefile.new" "$build/Makefile"; rm -f "$build"/*.o "$build"/*.so; fi
log "building regress.so refint.so autoinc.so in $build"
make -s -C "$build" with_llvm=no >"$build/build.log" 2>&1 || { cat "$build/build.log" >&2; die "build failed"; }
echo "$stamp" > "$build/.stamp"
chmod -R a+rX "$CACHE"

# ---------------------------------------------------------------- servers --------------------
rundir=$(mktemp -d /tmp/pgsuite.XXXXXX)   # short: the unix socket lives here
chmod 755 "$rundir"
if [ "$(id -u)" = 0 ]; then chown "$OSUSER" "$rundir"; fi
running=()
regress_pid=""
SRVBIN=$PGBIN
cleanup() {
  local d
  if [ -n "$regress_pid" ]; then kill "$regress_pid" 2>/dev/null || true; fi
  for d in "${running[@]}"; do
    as_pg "$PGBIN/pg_ctl" -D "$d" -m immediate -w stop >/dev/null 2>&1 || true
  done
  rm -rf "$rundir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_server() { # name preload
  local name=$1 preload=$2 d=$rundir/$1
  as_pg mkdir -p "$d/sock"
  as_pg "$SRVBIN/initdb" -D "$d/data" -U postgres --auth=trust --no-sync -E UTF8 --locale=C.UTF-8 \
    >"$OUT/$name/initdb.log" 2>&1 || { cat "$OUT/$name/initdb.log" >&2; die "initdb failed"; }
  {
    echo "port = $PORT"
    echo "listen_addresses = ''"
    echo "unix_socket_directories = '$d/sock'"
    echo "max_prepared_transactions = 10"     # exercise two-phase commit (prepared_xacts)
    echo "fsync = off"
    echo "max_wal_size = 128MB"                # disk: checkpoints recycle WAL early (CI space)
    echo "logging_collector = off"
    echo "log_line_prefix = '%m [%p] %d/%a '"
    if [ -n "$preload" ]; then echo "shared_preload_libraries = '$preload'"; echo "driftdb.maintenance_naptime = 0"; fi
  } >> "$d/data/postgresql.conf"
  running+=("$d/data")
  # RUST_BACKTRACE=1 (set in some shells) makes pgrx append "DETAIL: <backtrace>" to every error
  # that crosses driftdb's hooks: keep the servers' output independent of the caller's shell.
  as_pg env -u RUST_BACKTRACE -u RUST_LIB_BACKTRACE "$SRVBIN/pg_ctl" -D "$d/data" -l "$d/server.log" -w -t 60 start >/dev/null \
    || { tail -30 "$d/server.log" >&2; die "server for $name did not start"; }
}

stop_server() { # name
  local d=$rundir/$1
  as_pg "$SRVBIN/pg_ctl" -D "$d/data" -m fast -w stop >/dev/null 2>&1 || true
  cp "$d/server.log" "$OUT/$1/server.log" 2>/dev/null || true
  as_pg rm -rf "$d/data"   # the results are in $OUT; the next phase gets the disk space
}

psql_pg() { # db sql...
  local db=$1; shift
  as_pg env -u PGOPTIONS "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$rundir/$CUR/sock" -p "$PORT" -U postgres -d "$db" "$@"
}

# ---------------------------------------------------------------- phases ---------------------
rm -rf "$OUT"; mkdir -p "$OUT"
if [ "$(id -u)" = 0 ]; then chown "$OSUSER" "$OUT"; fi

PKGLIBDIR=$($PG_CONFIG --pkglibdir)
SHAREDIR=$($PG_CONFIG --sharedir)
BINDIR=$($PG_CONFIG --bindir)
DRIFTDB_SO=$PKGLIBDIR/driftdb.so
driftdb_installed() { [ -f "$SHAREDIR/extension/driftdb.control" ] && [ -f "$DRIFTDB_SO" ]; }
so_fingerprint() { stat -c '%s %Y' "$DRIFTDB_SO" 2>/dev/null || echo missing; }
ext_fingerprint() { stat -c '%n %s %Y' "$DRIFTDB_SO" "$SHAREDIR"/extension/driftdb* 2>/dev/null || true; }

# Snapshot of the installation for the driftdb server, so that a concurrent `cargo pgrx install`
# / `cargo pgrx test` (which rewrite driftdb.so and the extension's SQL in place) cannot change
# or crash the server under test. PostgreSQL finds its share and lib directories relative to the
# postgres executable, so copies of bin/{postgres,pg_ctl,initdb}, the share directory and
# driftdb* under $rundir/root<same paths> (other libraries symlinked) make a private install.
snapshot_install() {
  local root=$rundir/root try fp f
  for try in 1 2 3 4 5 6 7 8 9 10 11 12; do
    fp=$(ext_fingerprint)
    rm -rf "$root"
    mkdir -p "$root$BINDIR" "$root$PKGLIBDIR" "$(dirname "$root$SHAREDIR")"
    cp -p "$BINDIR/postgres" "$BINDIR/pg_ctl" "$BINDIR/initdb" "$root$BINDIR/"
    cp -a "$SHAREDIR" "$root$SHAREDIR"
    for f in "$PKGLIBDIR"/*; do
      case $(basename "$f") in
        driftdb*) cp -a "$f" "$root$PKGLIBDIR/" ;;
        *) ln -s "$f" "$root$PKGLIBDIR/" ;;
      esac
    done
    if [ -n "$fp" ] && [ "$fp" = "$(ext_fingerprint)" ] && [ -f "$root$PKGLIBDIR/driftdb.so" ]; then
      chmod -R a+rX "$root"; SRVBIN=$root$BINDIR
      stat -c '%s bytes, modified %y' "$DRIFTDB_SO" > "$OUT/driftdb/driftdb.so.info"
      return 0
    fi
    log "driftdb files are being rewritten (an install in progress?); retrying the snapshot in 10s"
    sleep 10
  done
  die "could not take a consistent snapshot of the driftdb installation"
}

run_phase() { # heap|driftdb
  local name=$1 preload="" pgopts=""
  CUR=$name
  as_pg mkdir -p "$OUT/$name"
  if [ "$name" = driftdb ]; then
    preload=${PGSUITE_PRELOAD-driftdb}
    pgopts="-c default_table_access_method=driftdb"
  fi
  SRVBIN=$PGBIN
  if [ "$name" = driftdb ] && [ "${PGSUITE_SNAPSHOT:-1}" = 1 ] && [ -z "${PGSUITE_SETUP_SQL:-}" ]; then
    snapshot_install
    log "phase $name: using a snapshot of the installed driftdb ($(cat "$OUT/driftdb/driftdb.so.info"))"
  fi
  log "phase $name: starting server"
  start_server "$name" "$preload"
  # Create the test database exactly as pg_regress's create_database() does (we pass
  # --use-existing because PGOPTIONS=default_table_access_method=driftdb would make pg_regress's
  # own connections fail until the extension exists in the database).
  psql_pg postgres -c "CREATE DATABASE \"regression\" TEMPLATE=template0" \
    -c "ALTER DATABASE \"regression\" SET lc_messages TO 'C';
        ALTER DATABASE \"regression\" SET lc_monetary TO 'C';
        ALTER DATABASE \"regression\" SET lc_numeric TO 'C';
        ALTER DATABASE \"regression\" SET lc_time TO 'C';
        ALTER DATABASE \"regression\" SET bytea_output TO 'hex';
        ALTER DATABASE \"regression\" SET timezone_abbreviations TO 'Default';"
  if [ "$name" = driftdb ]; then
    psql_pg regression -c "${PGSUITE_SETUP_SQL:-CREATE EXTENSION IF NOT EXISTS driftdb}" >"$OUT/$name/create-extension.log" 2>&1 \
      || { cat "$OUT/$name/create-extension.log" >&2; stop_server "$name"; die "CREATE EXTENSION driftdb failed"; }
  fi
  local sched=(--schedule="$REGRESS_SRC/parallel_schedule")
  # shellcheck disable=SC2206
  [ -n "${PGSUITE_TESTS:-}" ] && sched=($PGSUITE_TESTS)
  log "phase $name: running pg_regress (${PGSUITE_TESTS:-parallel_schedule})"
  local t0 rc=0 so_before
  t0=$(date +%s)
  so_before=$(so_fingerprint)
  (cd "$OUT/$name" && PGOPTIONS="$pgopts" exec timeout -k 10 "$PHASE_TIMEOUT" \
      "${runas[@]}" "$PG_REGRESS" \
      --use-existing --dbname=regression \
      --host="$rundir/$name/sock" --port="$PORT" --user=postgres \
      --bindir="$PGBIN" --dlpath="$build" \
      --inputdir="$REGRESS_SRC" --outputdir="$OUT/$name" \
      --max-concurrent-tests=20 "${sched[@]}" >"$OUT/$name/pg_regress.log" 2>&1) &
  regress_pid=$!
  wait "$regress_pid" || rc=$?
  regress_pid=""
  echo $(( $(date +%s) - t0 )) > "$OUT/$name/seconds"
  if [ "$name" = driftdb ] && [ "$SRVBIN" = "$PGBIN" ] && [ "$(so_fingerprint)" != "$so_before" ]; then
    log "phase $name: WARNING: $DRIFTDB_SO was replaced or removed during the run: results are not trustworthy"
    echo "$DRIFTDB_SO changed during the run ($so_before -> $(so_fingerprint))" > "$OUT/$name/so_changed"
  fi
  [ "$rc" = 124 ] || [ "$rc" = 137 ] && { log "phase $name: pg_regress TIMED OUT after ${PHASE_TIMEOUT}s"; echo timeout > "$OUT/$name/timed_out"; }
  stop_server "$name"
  # pg_regress 15 result lines: "test foo   ... ok   12 ms" / "     foo   ... FAILED   3 ms"
  sed -nE 's/^(test| ) +([^ ]+) +\.\.\. (ok|FAILED|failed \(ignored\)).*/\2 \3/p' "$OUT/$name/pg_regress.log" \
    | awk '{print $1, ($2=="ok" ? "ok" : "failed")}' > "$OUT/$name/status"
  awk '$2=="failed"{print $1}' "$OUT/$name/status" | sort > "$OUT/$name/failed"
  # one diff file per failing test, for triage
  mkdir -p "$OUT/$name/diffs"
  if [ -f "$OUT/$name/regression.diffs" ]; then
    awk -v dir="$OUT/$name/diffs" '
      /^diff / { n=split($NF, p, "/"); t=p[n]; sub(/\.out$/, "", t); f=dir "/" t ".diff" }
      f { print > f }' "$OUT/$name/regression.diffs"
  fi
  grep -E 'terminated by signal|was terminated|exited with exit code [2-9]|PANIC:|TRAP:' \
    "$OUT/$name/server.log" > "$OUT/$name/crashes" 2>/dev/null || true
  log "phase $name: done in $(cat "$OUT/$name/seconds")s (pg_regress exit $rc)"
}

ran=()
for p in $PHASES; do
  case $p in
    heap) run_phase heap; ran+=(heap) ;;
    driftdb)
      if driftdb_installed || [ -n "${PGSUITE_SETUP_SQL:-}" ]; then run_phase driftdb; ran+=(driftdb)
      elif [ "${PGSUITE_REQUIRE_DRIFTDB:-0}" = 1 ]; then die "driftdb extension is not installed"
      else log "driftdb extension not installed ($($PG_CONFIG --sharedir)/extension/driftdb.control or $DRIFTDB_SO missing): skipping the driftdb phase"
      fi ;;
    *) die "unknown phase $p" ;;
  esac
done

# ---------------------------------------------------------------- report ---------------------
expected_names() { { sed -e 's/#.*//' -e 's/^[[:space:]]*//' -e 's/[[:space:]].*//' "$EXPECTED_FILE" 2>/dev/null || true; } | { grep -v '^$' || true; } | sort -u; }
expected_reason() { { grep -E "^[[:space:]]*$1([[:space:]]|#|$)" "$EXPECTED_FILE" 2>/dev/null || true; } | head -n1 | sed -n 's/^[^#]*#[[:space:]]*//p'; }

status=0
{
  echo "PostgreSQL regression suite ($src_version tests${skew_patch:+ + $(basename "$skew_patch")}, server: $server_version)"
  for p in "${ran[@]}"; do
    total=$(wc -l < "$OUT/$p/status"); nfail=$(wc -l < "$OUT/$p/failed")
    echo "$p: $((total - nfail)) passed, $nfail failed (of $total; $(cat "$OUT/$p/seconds")s)"
    [ -f "$OUT/$p/so_changed" ] && { echo "$p: WARNING: $(cat "$OUT/$p/so_changed") — rerun"; status=1; }
    [ -f "$OUT/$p/timed_out" ] && { echo "$p: pg_regress TIMED OUT — results incomplete"; status=1; }
    [ -s "$OUT/$p/crashes" ] && { echo "$p: server crashes/abnormal backend exits: $(wc -l < "$OUT/$p/crashes") (see $OUT/$p/crashes)"; sed 's/^/    /' "$OUT/$p/crashes" | head -n 10; }
  done
  if [ -d "$OUT/heap" ] && [ -s "$OUT/heap/failed" ]; then
    echo "tests failing under heap (must be fixed in the environment/script):"
    sed 's/^/    /' "$OUT/heap/failed"
    status=1
  fi
  if [ -z "${PGSUITE_TESTS:-}" ]; then
    for p in "${ran[@]}"; do
      [ "$(wc -l < "$OUT/$p/status")" -gt 0 ] || { echo "$p: no test results parsed (see $OUT/$p/pg_regress.log)"; status=1; }
    done
  fi
  if [ -d "$OUT/driftdb" ]; then
    if [ -d "$OUT/heap" ]; then heapfailed=$OUT/heap/failed; else heapfailed=/dev/null; fi
    comm -23 "$OUT/driftdb/failed" "$heapfailed" > "$OUT/driftdb-only"
    expected_names > "$OUT/expected"
    echo "tests failing only under driftdb: $(wc -l < "$OUT/driftdb-only")"
    while read -r t; do
      if grep -qx "$t" "$OUT/expected"; then echo "    $t  (expected: $(expected_reason "$t"))"
      else echo "    $t  UNEXPECTED — see $OUT/driftdb/diffs/$t.diff"; status=1; fi
    done < "$OUT/driftdb-only"
    if [ -z "${PGSUITE_TESTS:-}" ]; then
      stale=$(comm -23 "$OUT/expected" "$OUT/driftdb-only" | comm -23 - "$heapfailed" || true)
      [ -n "$stale" ] && { echo "listed in expected-driftdb-failures.txt but passing now (remove them):"; echo "$stale" | sed 's/^/    /'; }
    fi
  else
    echo "driftdb phase not run"
  fi
  echo "results: $OUT (per-test diffs in $OUT/<phase>/diffs/)"
  echo "total time: $(( $(date +%s) - t_start ))s"
  [ "$status" = 0 ] && echo "RESULT: OK" || echo "RESULT: FAILED"
} > "$OUT/summary.txt"
cat "$OUT/summary.txt"
exit "$status"
