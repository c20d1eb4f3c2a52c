#!/usr/bin/env bash
# segments.sh — history compaction (driftdb.compact → driftdb.segments): storage per row version,
# compaction throughput, write throughput while a compaction runs, and reads of compacted history.
#
#   benches/sql/segments.sh [--rows N] [--updates U] [--runs R] [--time SECONDS] [--clients C]
#                           [--sync-commit on|off] [--protocol prepared|simple|extended]
#                           [--systems "heap driftdb periods"] [--results FILE]
#
# Data: table t (id int PK, v int, name text, amount numeric(12,2), updated_at timestamptz),
# N rows (default 100000) inserted in one transaction, then U (default 10) rounds of
# `UPDATE t SET v = v + 1, amount = amount + 1, updated_at = now()`, each round its own
# transaction, a VACUUM t after each (as time_travel.sh): N*(U+1) row versions (1.1M by default).
# driftdb.current_seq() after the load and after every round is kept in a plain table seg_rounds.
# Databases: bench_heap (plain t), bench_periods (periods.add_system_time_period +
# add_system_versioning, plus CREATE INDEX ON t_history (id, system_time_end), as time_travel.sh),
# and for driftdb the template bench_driftdb_tpl (t USING driftdb, the uncompacted history, never
# connected to after the build). Every driftdb database measured is a fresh copy of it
# (CREATE DATABASE ... TEMPLATE bench_driftdb_tpl STRATEGY FILE_COPY — an identical, uncompacted
# history in seconds instead of a reload): bench_driftdb (compacted once: storage, correctness
# checks, reads) and per run throwaway copies for the compaction and write measurements.
# Loading is timed (logged and noted); the periods build runs in the background meanwhile.
# driftdb's maintenance worker, if the build has one, is paused for the whole run
# (driftdb.maintenance_naptime = 0): it would compact and snapshot on its own schedule.
#
# 1. Storage (measured once: it is deterministic), bytes per row version; the ratio is ÷ heap
#    bytes per row — LOWER is better; issue 5 targets ≤ 0.3 for driftdb after compaction
#    (periods: ~0.85).
#      heap     pg_table_size('t') / N on bench_heap after the load and VACUUM (the same updated
#               table, so it carries the ~2x slack U rounds of full-table updates leave in a heap;
#               the densely packed size — CREATE TABLE AS copy — and the size incl. the PK index
#               are printed and noted too)
#      driftdb  compacted: after SELECT * FROM driftdb.compact('t', '0s'), VACUUM driftdb.events,
#               driftdb.segments and REINDEX TABLE driftdb.events: (pg_total_relation_size of
#               driftdb.segments + of driftdb.events) / (N*(U+1)); t is the only driftdb table in
#               the database, so driftdb.events is all t's. The REINDEX returns the index pages
#               emptied by the compaction (VACUUM cannot shrink an index file; the pages are free
#               space that later events reuse); the figure before it — what is on disk right
#               after compact + VACUUM — is reported as its own row.
#               driftdb.stats: bytes_stored / versions after the compaction (before any snapshot
#               exists: snapshots are derived data and would count in bytes_stored).
#               uncompacted: pg_total_relation_size('driftdb.events') / (N*(U+1)) on the template.
#      periods  pg_total_relation_size('t_history') / (N*U) (it holds the superseded versions;
#               heap, TOAST and its index)
# 2. Compaction throughput: per run a fresh copy, prewarmed, CHECKPOINT, then
#    `SELECT * FROM driftdb.compact('t', '0s')` timed from the statement's start to its commit
#    (clock_timestamp() in the same session): MB/s = compact()'s raw_bytes / seconds (MB = 10^6
#    bytes of segment payload before compression), events/s = its events / seconds. No ratio.
# 3. Writes while compacting (driftdb): pgbench, C clients (default 2), -T SECONDS, `UPDATE t SET
#    v = v + 1, updated_at = now() WHERE id = :id` with id = random(1, N), one row per
#    transaction, on a fresh prewarmed copy: once alone, once while compact('t', '0s') runs on
#    that copy from a separate psql started just before pgbench. If the compaction ends inside the
#    pgbench window, further compactions run back to back on spare fresh copies made beforehand
#    (1 + ceil(SECONDS / that run's quiet compaction time), at most 12), so a compaction keeps
#    running for the whole window; the coverage (share of the window with a compaction running)
#    is printed and noted. Ratio = TPS during ÷ TPS alone, per run, median of the runs — HIGHER is
#    better, 1.00 = unaffected. Alone and during alternate their order run by run.
# 4. Reads of compacted history, pgbench with 1 client, -T SECONDS, on bench_driftdb after its
#    compaction and a warm-up (one full AS OF read of every round's state in seq order, so the
#    automatic snapshots a steady read workload would leave exist — as time_travel.sh's "auto"):
#      full AS OF read  SELECT <agg> FROM (SELECT * FROM driftdb.as_of(NULL::t, :seq::bigint)
#                       OFFSET 0) s, seq = random over the load's and the last round's seqs;
#                       ratio = × bench_heap's SELECT <agg> FROM (SELECT * FROM t OFFSET 0) s —
#                       LOWER is better, issue 5 target ≤ 3
#      AS OF PK lookup  SELECT * FROM driftdb.as_of(NULL::t, :seq::bigint) WHERE id = :id; ratio
#                       = × the current PK lookup SELECT * FROM t WHERE id = :id on the same
#                       database (informative)
#    Both AS OF reads are also measured on bench_driftdb_raw, an uncompacted copy of the template
#    warmed up the same way (rows "..., uncompacted", same ratios): what compaction changes.
#    <agg> = count(*), max(id), sum(v), max(amount), sum(length(name)), max(updated_at): every
#    column of every row is read on both sides. max_parallel_workers_per_gather = 0.
# Correctness before measuring (wrong answers stop the script, exit 1): every system's current
# state (count = N, sum(v) = U*N), periods' history rows = N*U; on bench_driftdb after the
# compaction: compact() moved N*(U+1) events, driftdb.stats shows segments > 0 and N*(U+1)
# versions, driftdb.verify('t') is ok on every item, and AS OF the load's, a middle and the last
# round's seq returns count = N, sum(v) = round*N, plus a point lookup v = round. A missing
# driftdb.compact / as_of / verify / stats stops the script before loading.
# Runs are interleaved: per run the compaction, writes alone/during, then the reads (heap full,
# driftdb full AS OF compacted and uncompacted, PK, AS OF PK compacted and uncompacted). Unit per
# row as printed; median of the runs; TSV rows carry the bench prefix "segments: " (run_all.sh
# renders them in their own table); sizes, compaction seconds, compression, coverage of the write
# windows, snapshot counts and load times go to the notes.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

NROWS=100000 UPDATES=10 RUNS_N=3 TIME=10 CLIENTS=2 SYNC=on PROTOCOL=prepared
SYSTEMS=$ALL_SYSTEMS RESULTS_FILE=
STMT_TIMEOUT=${BENCH_STATEMENT_TIMEOUT:-300}
MAX_SPARES=12
while [ $# -gt 0 ]; do
  case "$1" in
    --rows) need_arg "$@"; NROWS=$2; shift 2 ;;
    --updates) need_arg "$@"; UPDATES=$2; shift 2 ;;
    --runs) need_arg "$@"; RUNS_N=$2; shift 2 ;;
    --time|--seconds) need_arg "$@"; TIME=$2; shift 2 ;;
    --clients) need_arg "$@"; CLIENTS=$2; shift 2 ;;
    --sync-commit) need_arg "$@"; SYNC=$2; shift 2 ;;
    --protocol) need_arg "$@"; PROTOCOL=$2; shift 2 ;;
    --systems) need_arg "$@"; SYSTEMS=$2; shift 2 ;;
    --results) need_arg "$@"; RESULTS_FILE=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option $1" ;;
  esac
done
for v in NROWS UPDATES RUNS_N TIME CLIENTS; do
  [[ ${!v} =~ ^[0-9]+$ ]] && [ "${!v}" -ge 1 ] || die "--$(tr '[:upper:]_' '[:lower:]-' <<<"${v%_N}") needs a positive integer, got '${!v}'"
done
[ "$UPDATES" -ge 2 ] || die "--updates must be >= 2 (the history needs a middle)"
case "$SYNC" in on|off) ;; *) die "--sync-commit on|off" ;; esac
for s in $SYSTEMS; do case "$s" in heap|driftdb|periods) ;; *) die "unknown system $s" ;; esac; done
has() { [[ " $1 " == *" $2 "* ]]; }
has "$SYSTEMS" driftdb || die "--systems must include driftdb (the system this benchmark is about)"
JOBS=$(( CLIENTS < NCPU ? CLIENTS : NCPU ))
VERSIONS=$(( NROWS * (UPDATES + 1) ))
TPL=bench_driftdb_tpl MAIN=bench_driftdb RAW=bench_driftdb_raw
AGG="count(*), max(s.id), sum(s.v), max(s.amount), sum(length(s.name)), max(s.updated_at)"

bench_cluster_start segments
warn_if_busy; warn_if_debug_build
set_sync_commit "$SYNC"

# driftdb's maintenance worker (builds that have one) would compact and store snapshots in these
# databases on its own schedule, in the middle of a measurement: pause it for the whole run
# (`driftdb.maintenance_naptime = 0` pauses the rounds; wait out one that is under way)
if [ "$(psql_q -Atc "SELECT count(*) FROM pg_settings WHERE name = 'driftdb.maintenance_naptime'")" = 1 ]; then
  psql_q -c "ALTER SYSTEM SET driftdb.maintenance_naptime = 0" -c "SELECT pg_reload_conf()" >/dev/null
  sleep 0.5
  [ "$(psql_q -Atc "SHOW driftdb.maintenance_naptime")" = 0 ] || die "could not pause driftdb's maintenance worker"
  for _ in $(seq 1 120); do
    [ "$(psql_q -Atc "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'driftdb maintenance' AND datid IS NOT NULL")" = 0 ] && break
    sleep 1
  done
  log "driftdb maintenance worker paused (driftdb.maintenance_naptime = 0)"
  note "segments: driftdb's maintenance worker was paused (driftdb.maintenance_naptime = 0): every compaction and snapshot measured is the script's own"
fi
T0=$SECONDS
SCRIPTS="$BENCH_DATA/scripts"; mkdir -p "$SCRIPTS"

# ---- setup -----------------------------------------------------------------------------------------

q1() { local db=$1; shift; psql_q -d "$db" -Atc "$*"; }   # one value

create_db() {  # SYS DB
  local sys=$1 db=$2
  psql_q -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
  case "$sys" in
    driftdb) psql_q -d "$db" -c "CREATE EXTENSION driftdb" ;;
    periods) psql_q -d "$db" -c "SET client_min_messages = warning" -c "CREATE EXTENSION periods CASCADE" ;;
  esac
  psql_q -d "$db" -c "CREATE EXTENSION IF NOT EXISTS pg_prewarm" >/dev/null 2>&1 || true
}

# fail before minutes of loading when the installed driftdb lacks what is measured
check_driftdb_api() {
  local db=bench_seg_probe missing= f
  create_db driftdb "$db" >/dev/null
  for f in compact as_of verify current_seq; do
    [ "$(q1 "$db" "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                     WHERE n.nspname = 'driftdb' AND p.proname = '$f'")" -gt 0 ] || missing="${missing:+$missing,} driftdb.$f"
  done
  [ "$(q1 "$db" "SELECT to_regclass('driftdb.stats') IS NOT NULL AND to_regclass('driftdb.segments') IS NOT NULL")" = t ] \
    || missing="${missing:+$missing,} driftdb.stats/driftdb.segments"
  psql_q -c "DROP DATABASE $db"
  [ -z "$missing" ] || die "the installed driftdb has no$missing (function does not exist): install a build with history compaction"
}

load_sql() {  # SYS → the load: insert, U update rounds, each its own transaction, seqs recorded
  local sys=$1 k seqexpr=NULL
  [ "$sys" = driftdb ] && seqexpr="driftdb.current_seq()"
  history_insert_sql "$NROWS"
  echo "VACUUM t;"
  echo "INSERT INTO seg_rounds VALUES (0, $seqexpr);"
  for k in $(seq 1 "$UPDATES"); do
    echo "$HISTORY_UPDATE_SQL"
    echo "INSERT INTO seg_rounds VALUES ($k, $seqexpr);"
    echo "VACUUM t;"
  done
}

build_db() {  # SYS DB: create, load (timed), vacuum, check the current state
  local sys=$1 db=$2 am=heap t got
  [ "$sys" = driftdb ] && am=driftdb
  create_db "$sys" "$db"
  {
    history_table_sql "$am"
    echo "-- bookkeeping (plain heap): driftdb's settled seq after the load (round 0) and every round"
    echo "CREATE TABLE seg_rounds (round int PRIMARY KEY, seq bigint) USING heap;"
  } | psql_q -d "$db" >/dev/null
  if [ "$sys" = periods ]; then
    periods_version "$db" t
    psql_q -d "$db" -c "CREATE INDEX t_history_seg_idx ON t_history (id, system_time_end)" >/dev/null
  fi
  t=$SECONDS
  load_sql "$sys" | psql_q -d "$db" >/dev/null
  local secs=$((SECONDS - t)) concurrent=
  # the periods build runs in the background: say so when it overlapped this load
  [ "$sys" != periods ] && [ -n "${BG_PID:-}" ] && kill -0 "$BG_PID" 2>/dev/null && concurrent=" (periods was being built concurrently)"
  psql_q -d "$db" -c "VACUUM ANALYZE"
  [ "$sys" = driftdb ] && psql_q -d "$db" -c "VACUUM ANALYZE driftdb.events" -c "VACUUM ANALYZE driftdb.commits"
  # the access method / versioning really is what we think
  got=$(q1 "$db" "SELECT a.amname FROM pg_class c JOIN pg_am a ON a.oid = c.relam WHERE c.oid = 't'::regclass")
  [ "$got" = "$am" ] || die "$db.t uses access method '$got', expected '$am'"
  got=$(q1 "$db" "SELECT count(*) || '/' || sum(v) FROM t")
  [ "$got" = "$NROWS/$((NROWS * UPDATES))" ] || die "$db: current state is $got (count/sum(v)), expected $NROWS/$((NROWS * UPDATES))"
  if [ "$sys" = periods ]; then
    q1 "$db" "SELECT 1 FROM periods.system_versioning WHERE table_name = 't'::regclass" | grep -q 1 \
      || die "$db.t is not system-versioned by periods"
    got=$(q1 "$db" "SELECT count(*) FROM t_history")
    [ "$got" = "$((NROWS * UPDATES))" ] || die "$db: t_history has $got rows, expected $((NROWS * UPDATES)) (rows x updates)"
  fi
  log "built $db: $NROWS rows x $UPDATES update rounds, loaded in ${secs}s$concurrent"
  note "segments: loading $db ($NROWS rows x $UPDATES update rounds, one transaction each, VACUUM after each) took ${secs}s$concurrent"
}

PREWARM_SQL="SELECT count(pg_prewarm(c.oid)) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relkind IN ('r', 'i', 't', 'm')
    AND (n.nspname IN ('public', 'driftdb')
         OR c.oid IN (SELECT reltoastrelid FROM pg_class x JOIN pg_namespace y ON y.oid = x.relnamespace
                       WHERE y.nspname IN ('public', 'driftdb'))
         OR c.oid IN (SELECT i.indexrelid FROM pg_index i JOIN pg_class x ON x.oid = i.indrelid
                       JOIN pg_namespace y ON y.oid = x.relnamespace WHERE y.nspname = 'pg_toast'
                        AND x.oid IN (SELECT reltoastrelid FROM pg_class z JOIN pg_namespace w ON w.oid = z.relnamespace
                                       WHERE w.nspname IN ('public', 'driftdb'))))"
prewarm_db() { psql_q -d "$1" -Atc "$PREWARM_SQL" >/dev/null 2>&1 || true; }

COPY_SECS=()
copy_db() {  # NAME: a fresh copy of the uncompacted driftdb template
  local s e
  s=$(date +%s.%N)
  psql_q -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $1" \
         -c "CREATE DATABASE $1 TEMPLATE $TPL STRATEGY FILE_COPY"
  e=$(date +%s.%N)
  COPY_SECS+=("$(awk -v s="$s" -v e="$e" 'BEGIN { printf "%.2f", e - s }')")
}
drop_db() { psql_q -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $1"; }

# compact_timed DB → "start_epoch end_epoch segments events raw_bytes stored_bytes": compact('0s')
# timed from the statement's start to its commit, in one session (autocommit: each statement its
# own transaction, so the end is read after the commit)
compact_timed() {
  local out
  out=$(PGOPTIONS="-c client_min_messages=warning -c statement_timeout=0" psql_q -d "$1" -At \
          -c "SELECT extract(epoch FROM clock_timestamp())" \
          -c "SELECT segments, events, raw_bytes, stored_bytes FROM driftdb.compact('t', '0s')" \
          -c "SELECT extract(epoch FROM clock_timestamp())" 2>&1) || die "driftdb.compact on $1 failed: $out"
  awk -F'|' 'NR == 1 { s = $1 } NR == 2 { r = $1 " " $2 " " $3 " " $4 } NR == 3 { print s, $1, r }' <<<"$out"
}

# ---- build -------------------------------------------------------------------------------------------

check_driftdb_api
BG_PID=
if has "$SYSTEMS" periods; then   # the slowest build (two row triggers per update) in the background
  ( build_db periods bench_periods ) &
  BG_PID=$!
fi
build_db driftdb "$TPL"
has "$SYSTEMS" heap && build_db heap bench_heap
if [ -n "$BG_PID" ]; then wait "$BG_PID" || die "building bench_periods failed (see above)"; fi
SEQ0=$(q1 "$TPL" "SELECT seq FROM seg_rounds WHERE round = 0")
SEQN=$(q1 "$TPL" "SELECT seq FROM seg_rounds WHERE round = $UPDATES")
[ "$SEQN" -gt "$SEQ0" ] || die "driftdb.current_seq() did not advance over the update rounds ($SEQ0 -> $SEQN): is history capture on?"

declare -A VAL   # "key|sys" → space-separated per-run values
add() { VAL["$1|$2"]="${VAL["$1|$2"]:-} $3"; }
dv() { awk -v a="$1" -v b="$2" 'BEGIN { if (a !~ /^[0-9.]+$/ || b !~ /^[0-9.]+$/ || b == 0) print "NA"; else printf "%.4g\n", a / b }'; }

# ---- 1. storage ----------------------------------------------------------------------------------------

# uncompacted history: the template (its last connection was the build)
EV_UNCOMPACTED=$(q1 "$TPL" "SELECT pg_total_relation_size('driftdb.events')")
EV_UNCOMPACTED_HEAP=$(q1 "$TPL" "SELECT pg_table_size('driftdb.events')")
add store_raw driftdb "$(dv "$EV_UNCOMPACTED" "$VERSIONS")"

if has "$SYSTEMS" heap; then
  HEAP_TABLE=$(q1 bench_heap "SELECT pg_table_size('t')")
  HEAP_TOTAL=$(q1 bench_heap "SELECT pg_total_relation_size('t')")
  HEAP_DENSE=$(psql_q -d bench_heap -At -c "CREATE TABLE t_dense AS SELECT * FROM t" \
                 -c "SELECT pg_table_size('t_dense')" -c "DROP TABLE t_dense")
  HEAP_ROW=$(dv "$HEAP_TABLE" "$NROWS")
  for k in store store_noreindex store_stats store_raw; do add "$k" heap "$HEAP_ROW"; done
fi
if has "$SYSTEMS" periods; then
  P_HIST=$(q1 bench_periods "SELECT pg_total_relation_size('t_history')")
  P_HIST_HEAP=$(q1 bench_periods "SELECT pg_table_size('t_history')")
  for k in store store_raw; do add "$k" periods "$(dv "$P_HIST" "$((NROWS * UPDATES))")"; done
fi

# from here on the template is only copied (a template database is also skipped by driftdb's
# maintenance worker)
psql_q -c "ALTER DATABASE $TPL IS_TEMPLATE true" >/dev/null
# bench_driftdb: a copy of the template, compacted once (not timed here: see the runs)
copy_db "$MAIN"
psql_q -c "ALTER DATABASE $MAIN SET max_parallel_workers_per_gather = 0"
t=$SECONDS
read -r _ _ C_SEGS C_EVENTS C_RAW C_STORED < <(compact_timed "$MAIN")
log "$MAIN: compact('t', '0s') packed $C_EVENTS events into $C_SEGS segments ($C_RAW bytes raw, $C_STORED stored) in $((SECONDS - t))s"
[ "$C_EVENTS" = "$VERSIONS" ] || die "$MAIN: driftdb.compact moved $C_EVENTS events, expected $VERSIONS (rows x (updates + 1))"
[ "$C_SEGS" -gt 0 ] || die "$MAIN: driftdb.compact wrote no segments"
psql_q -d "$MAIN" -c "VACUUM driftdb.events, driftdb.segments"
IFS='|' read -r SEG_TOTAL SEG_HEAP EV_NOREINDEX < <(q1 "$MAIN" "SELECT pg_total_relation_size('driftdb.segments'),
    pg_relation_size('driftdb.segments'), pg_total_relation_size('driftdb.events')")
psql_q -d "$MAIN" -c "REINDEX TABLE driftdb.events"
IFS='|' read -r EV_LEFT EV_LEFT_ROWS < <(q1 "$MAIN" "SELECT pg_total_relation_size('driftdb.events'), (SELECT count(*) FROM driftdb.events)")
IFS='|' read -r S_SEGMENTS S_VERSIONS S_STORED S_RAW S_RECENT S_SNAPS < <(q1 "$MAIN" "SELECT segments, versions, bytes_stored,
    bytes_raw, recent_events, snapshots FROM driftdb.stats WHERE table_name = 't'::regclass")
add store driftdb "$(dv "$((SEG_TOTAL + EV_LEFT))" "$VERSIONS")"
add store_noreindex driftdb "$(dv "$((SEG_TOTAL + EV_NOREINDEX))" "$VERSIONS")"
add store_stats driftdb "$(dv "$S_STORED" "$S_VERSIONS")"

# ---- correctness (before measuring anything) ------------------------------------------------------

[ "${S_SEGMENTS:-0}" -gt 0 ] || die "$MAIN: driftdb.stats shows ${S_SEGMENTS:-no} segments after compaction"
[ "$S_VERSIONS" = "$VERSIONS" ] || die "$MAIN: driftdb.stats shows $S_VERSIONS versions, expected $VERSIONS"
[ "$S_SNAPS" = 0 ] || log "WARNING: $MAIN has $S_SNAPS snapshots before any AS OF read: driftdb.stats bytes_stored includes them"
out=$(q1 "$MAIN" "SELECT string_agg(item || '=' || ok || CASE WHEN ok THEN '' ELSE ' (' || detail || ')' END, ', ' ORDER BY item)
                    FROM driftdb.verify('t')") || die "$MAIN: driftdb.verify('t') failed: $out"
[ -n "$out" ] && ! grep -q '=f' <<<"$out" || die "$MAIN: driftdb.verify('t') reports a problem: $out"
grep -q 'chain=t' <<<"$out" || die "$MAIN: driftdb.verify('t') did not check the segment chain: $out"
log "$MAIN: driftdb.verify('t'): $out"
id=$(( (NROWS + 1) / 2 ))
for k in "$UPDATES" 0 $((UPDATES / 2)); do
  got=$(q1 "$MAIN" "SELECT count(*) || '/' || coalesce(sum(v), 0) FROM driftdb.as_of(NULL::t, (SELECT seq FROM seg_rounds WHERE round = $k))" 2>&1) \
    || die "$MAIN: AS OF round $k failed: $got"
  [ "$got" = "$NROWS/$((NROWS * k))" ] || die "$MAIN: AS OF round $k on compacted history returned $got (count/sum(v)), expected $NROWS/$((NROWS * k)) — wrong results, not measuring"
  got=$(q1 "$MAIN" "SELECT string_agg(v::text, ',') FROM driftdb.as_of(NULL::t, (SELECT seq FROM seg_rounds WHERE round = $k)) WHERE id = $id" 2>&1) \
    || die "$MAIN: AS OF point lookup failed: $got"
  [ "$got" = "$k" ] || die "$MAIN: AS OF round $k point lookup of id $id returned v=$got, expected $k"
done
log "$MAIN: correctness checks passed (compact moved $VERSIONS events; stats: $S_SEGMENTS segments, $S_VERSIONS versions; verify ok; AS OF rounds $UPDATES, 0, $((UPDATES / 2)): count and sum(v), point lookup)"

# warm-up: one full AS OF read of every round's state in seq order → the automatic snapshots
warm_up() {  # DB WHAT
  local db=$1 t=$SECONDS k snaps
  for k in $(seq 0 "$UPDATES"); do
    echo "SELECT count(*) FROM driftdb.as_of(NULL::t, (SELECT seq FROM seg_rounds WHERE round = $k));"
  done | psql_q -d "$db" >/dev/null
  snaps=$(q1 "$db" "SELECT count(DISTINCT seq) FROM driftdb.snapshots")
  log "$db: warm-up (one full AS OF read per round) took $((SECONDS - t))s; snapshots stored: $snaps"
  note "segments: $db ($2) warmed up by one full AS OF read of every round's state: $snaps automatic snapshots stored for $((UPDATES + 1)) states"
}
warm_up "$MAIN" compacted
# the uncompacted control for the reads: the same history, left in driftdb.events
copy_db "$RAW"
psql_q -c "ALTER DATABASE $RAW SET max_parallel_workers_per_gather = 0"
warm_up "$RAW" uncompacted
prewarm_db "$RAW"
prewarm_db "$MAIN"
has "$SYSTEMS" heap && { psql_q -c "ALTER DATABASE bench_heap SET max_parallel_workers_per_gather = 0"; prewarm_db bench_heap; }
log "setup done in $((SECONDS - T0))s"

# ---- pgbench scripts ---------------------------------------------------------------------------------

cat >"$SCRIPTS/update.pgbench" <<'EOF'
\set id random(1, :nrows)
UPDATE t SET v = v + 1, updated_at = now() WHERE id = :id;
EOF
cat >"$SCRIPTS/full_heap.pgbench" <<EOF
SELECT $AGG FROM (SELECT * FROM t OFFSET 0) s;
EOF
cat >"$SCRIPTS/full_asof.pgbench" <<EOF
\\set seq random(:seq0, :seqn)
SELECT $AGG FROM (SELECT * FROM driftdb.as_of(NULL::t, :seq::bigint) OFFSET 0) s;
EOF
cat >"$SCRIPTS/pk.pgbench" <<'EOF'
\set id random(1, :nrows)
SELECT * FROM t WHERE id = :id;
EOF
cat >"$SCRIPTS/asof_pk.pgbench" <<'EOF'
\set id random(1, :nrows)
\set seq random(:seq0, :seqn)
SELECT * FROM driftdb.as_of(NULL::t, :seq::bigint) WHERE id = :id;
EOF

pgb() {  # DB LOGNAME CLIENTS SCRIPT → TPS
  local db=$1 name=$2 c=$3 f=$4 j
  j=$(( c < NCPU ? c : NCPU ))
  PGOPTIONS="-c statement_timeout=${STMT_TIMEOUT}s" run_pgbench "$db" "$BENCH_DATA/run-$name.log" \
    -n -M "$PROTOCOL" -c "$c" -j "$j" -T "$TIME" -D nrows="$NROWS" -D seq0="$SEQ0" -D seqn="$SEQN" -f "$SCRIPTS/$f"
}
ms() { awk -v t="$1" 'BEGIN { if (t !~ /^[0-9.]+$/ || t == 0) print "NA"; else printf "%.4g\n", 1000 / t }'; }

# ---- measure -------------------------------------------------------------------------------------------

COVERAGE=() WRATIO=() NCOMPACT=()
write_alone() {  # RUN
  local r=$1 db=bench_seg_w tps
  copy_db "$db"; prewarm_db "$db"; checkpoint
  NOTE_CONTEXT="segments: writes alone"
  tps=$(pgb "$db" "alone-$r" "$CLIENTS" update.pgbench)
  log "run $r/$RUNS_N writes alone: $tps tps"
  add w_alone driftdb "$tps"; W_ALONE=$tps
  drop_db "$db"
}
write_during() {  # RUN QUIET_SECS
  local r=$1 quiet=$2 n i dbs=() tps p0 p1 flag="$BENCH_DATA/during-$1.done" clog="$BENCH_DATA/during-$1.compactions"
  n=$(awk -v t="$TIME" -v q="$quiet" -v m="$MAX_SPARES" 'BEGIN { n = (q > 0) ? 1 + int(t / q + 0.999) : m; print (n > m) ? m : n }')
  for i in $(seq 1 "$n"); do dbs+=("bench_seg_d$i"); copy_db "bench_seg_d$i"; done
  prewarm_db bench_seg_d1; checkpoint
  rm -f "$flag" "$clog"
  (
    for db in "${dbs[@]}"; do
      [ -e "$flag" ] && break
      compact_timed "$db" >>"$clog"
    done
  ) &
  local cpid=$!
  p0=$(date +%s.%N)
  NOTE_CONTEXT="segments: writes during compaction"
  tps=$(pgb bench_seg_d1 "during-$r" "$CLIENTS" update.pgbench)
  p1=$(date +%s.%N)
  touch "$flag"
  wait "$cpid" || die "the concurrent compaction failed (run $r)"
  # share of the pgbench window with a compaction running; compactions that ran
  local cov nc
  read -r cov nc < <(awk -v p0="$p0" -v p1="$p1" '{ a = ($1 > p0) ? $1 : p0; b = ($2 < p1) ? $2 : p1; if (b > a) c += b - a; n++ }
                             END { printf "%.0f %d\n", 100 * c / (p1 - p0), n }' "$clog")
  log "run $r/$RUNS_N writes during compaction: $tps tps; compaction running ${cov}% of the ${TIME}s window ($nc compaction(s): $(awk '{ printf "%s%.1fs", (NR > 1 ? ", " : ""), $2 - $1 }' "$clog"); $n fresh copies prepared)"
  add w_during driftdb "$tps"; W_DURING=$tps
  COVERAGE+=("$cov%"); NCOMPACT+=("$nc")
  for db in "${dbs[@]}"; do drop_db "$db"; done
}

checkpoint
for r in $(seq 1 "$RUNS_N"); do
  # 2. compaction throughput on a quiet fresh copy
  copy_db bench_seg_c; prewarm_db bench_seg_c; checkpoint
  read -r s e segs evs raw stored < <(compact_timed bench_seg_c)
  secs=$(awk -v s="$s" -v e="$e" 'BEGIN { printf "%.3f", e - s }')
  mbs=$(awk -v b="$raw" -v t="$secs" 'BEGIN { printf "%.4g", b / 1e6 / t }')
  eps=$(awk -v n="$evs" -v t="$secs" 'BEGIN { printf "%.0f", n / t }')
  log "run $r/$RUNS_N compaction: $evs events, $segs segments, $raw bytes raw, $stored stored in ${secs}s = $mbs MB/s raw, $eps events/s"
  add c_mbs driftdb "$mbs"; add c_eps driftdb "$eps"; add c_secs driftdb "$secs"
  drop_db bench_seg_c
  # 3. writes alone and during a compaction (order alternates run by run)
  if [ $((r % 2)) = 1 ]; then write_alone "$r"; write_during "$r" "$secs"
  else write_during "$r" "$secs"; write_alone "$r"; fi
  WRATIO+=("$(ratio "$W_DURING" "$W_ALONE")")
  # 4. reads of the compacted history
  if has "$SYSTEMS" heap; then
    NOTE_CONTEXT="segments: heap full read"
    tps=$(pgb bench_heap "full-heap-$r" 1 full_heap.pgbench); add full heap "$(ms "$tps")"
    log "run $r/$RUNS_N heap full read: $(ms "$tps") ms"
  fi
  for q in full_asof full_asof_raw pk asof_pk asof_pk_raw; do
    NOTE_CONTEXT="segments: $q"
    case "$q" in *_raw) db=$RAW ;; *) db=$MAIN ;; esac
    tps=$(pgb "$db" "$q-$r" 1 "${q%_raw}.pgbench")
    case "$q" in full_asof) key=full ;; full_asof_raw) key=full_raw ;; *) key=$q ;; esac
    add "$key" driftdb "$(ms "$tps")"
    log "run $r/$RUNS_N driftdb $q ($db): $(ms "$tps") ms"
  done
done
log "driftdb snapshots stored after the measurements: $MAIN $(q1 "$MAIN" "SELECT count(DISTINCT seq) FROM driftdb.snapshots"), $RAW $(q1 "$RAW" "SELECT count(DISTINCT seq) FROM driftdb.snapshots")"

# ---- report --------------------------------------------------------------------------------------------

med() { # shellcheck disable=SC2086
  median ${VAL["$1|$2"]:-}; }
label() {
  case "$1" in
    store) echo "segments: history bytes per version, compacted" ;;
    store_noreindex) echo "segments: history bytes per version, compacted, before REINDEX" ;;
    store_stats) echo "segments: history bytes per version, driftdb.stats" ;;
    store_raw) echo "segments: history bytes per version, uncompacted" ;;
    c_mbs) echo "segments: compaction throughput (raw bytes)" ;;
    c_eps) echo "segments: compaction throughput (events)" ;;
    w_alone) echo "segments: single-row UPDATE, alone [baseline]" ;;
    w_during) echo "segments: single-row UPDATE, during compaction" ;;
    full) echo "segments: full AS OF read, compacted, random seq" ;;
    full_raw) echo "segments: full AS OF read, uncompacted, random seq" ;;
    pk) echo "segments: current PK lookup [baseline]" ;;
    asof_pk) echo "segments: AS OF PK lookup, compacted, random seq" ;;
    asof_pk_raw) echo "segments: AS OF PK lookup, uncompacted, random seq" ;;
  esac
}
unit_of() {
  case "$1" in
    store*) echo "B/version" ;; c_mbs) echo "MB/s" ;; c_eps) echo "events/s" ;; w_*) echo "TPS" ;; *) echo "ms" ;;
  esac
}
variant_of() {
  case "$1" in
    store*) echo "rows=$NROWS updates=$UPDATES" ;;
    c_*) echo "rows=$NROWS updates=$UPDATES" ;;
    w_*) echo "rows=$NROWS updates=$UPDATES c=$CLIENTS ${TIME}s sync=$SYNC" ;;
    *) echo "rows=$NROWS updates=$UPDATES c=1 ${TIME}s" ;;
  esac
}
# ratio of KEY SYS: storage and full read ÷ heap's, AS OF lookup ÷ driftdb's pk, writes during ÷ alone
ratio_of() {
  local k=$1 sys=$2 m; m=$(med "$k" "$sys")
  case "$k" in
    store*|full) ratio "$m" "$(med "$k" heap)" ;;
    full_raw) ratio "$m" "$(med full heap)" ;;
    asof_pk*) ratio "$m" "$(med pk driftdb)" ;;
    pk|w_alone) echo 1.000 ;;
    w_during) median "${WRATIO[@]}" ;;
    *) echo - ;;
  esac
}

printf '\n== segments: %s rows x %s updates (%s row versions), %s runs, pgbench %ss ==\n' \
  "$NROWS" "$UPDATES" "$VERSIONS" "$RUNS_N" "$TIME"
printf '   ratio: storage = / heap bytes per row (lower is better, target driftdb compacted <= 0.3); full AS OF read = x heap full read\n'
printf '   (lower is better, target <= 3); AS OF PK lookup = x current PK lookup; writes = during / alone, median of per-run ratios (higher is better)\n'
printf '%-64s %-10s %10s %10s %8s %10s %8s   %s\n' measure unit heap driftdb ratio periods ratio "spread h/d/p"
for k in store store_noreindex store_stats store_raw c_mbs c_eps w_alone w_during full full_raw pk asof_pk asof_pk_raw; do
  cells=() sp=()
  for sys in heap driftdb periods; do
    if has "$SYSTEMS" "$sys" && [ -n "${VAL["$k|$sys"]:-}" ]; then
      m=$(med "$k" "$sys"); rt=$(ratio_of "$k" "$sys")
      [ "$sys" = heap ] && rt=1.000
      cells+=("$(fmt "$m")" "$rt")
      # shellcheck disable=SC2086
      sp+=("$(spread ${VAL["$k|$sys"]})")
      if [ -n "$RESULTS_FILE" ]; then
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(label "$k")" "$(variant_of "$k")" "$sys" "$m" "$(unit_of "$k")" "$rt" \
          "$(tr ' ' ',' <<<"${VAL["$k|$sys"]}" | sed 's/^,//')" >>"$RESULTS_FILE"
      fi
    else
      cells+=("—" "—"); sp+=("—")
    fi
  done
  printf '%-64s %-10s %10s %10s %8s %10s %8s   %s\n' "$(label "$k" | sed 's/^segments: //')" "$(unit_of "$k")" \
    "${cells[0]}" "${cells[2]}" "${cells[3]}" "${cells[4]}" "${cells[5]}" "$(IFS=/; echo "${sp[*]}")"
done
echo

# the details behind the figures
mb() { awk -v b="$1" 'BEGIN { printf "%.1f MB", b / 1e6 }'; }
if has "$SYSTEMS" heap; then
  d=$(dv "$HEAP_DENSE" "$NROWS")
  line="heap t: $(fmt "$HEAP_ROW") B/row after the updates and VACUUM (pg_table_size $(mb "$HEAP_TABLE")), $(fmt "$(dv "$HEAP_TOTAL" "$NROWS")") B/row incl. the PK index, $(fmt "$d") B/row densely packed (CREATE TABLE AS copy)"
  echo "$line"; note "segments (rows=$NROWS updates=$UPDATES): $line"
  line="against the densely packed heap row ($(fmt "$d") B): driftdb compacted $(ratio "$(med store driftdb)" "$d")x"
  if has "$SYSTEMS" periods; then line="$line, periods $(ratio "$(med store periods)" "$d")x"; fi
  echo "$line"; note "segments (rows=$NROWS updates=$UPDATES): $line"
fi
line="driftdb compacted: segments $(mb "$SEG_TOTAL") incl. TOAST and index (main fork $(mb "$SEG_HEAP")), driftdb.events $(mb "$EV_LEFT") after REINDEX ($EV_LEFT_ROWS events left; $(mb "$EV_NOREINDEX") right after compact + VACUUM: emptied index pages); uncompacted: driftdb.events $(mb "$EV_UNCOMPACTED") ($(mb "$EV_UNCOMPACTED_HEAP") heap, the rest indexes)"
echo "$line"; note "segments (rows=$NROWS updates=$UPDATES): $line"
line="driftdb.stats after compaction: $S_SEGMENTS segments, $S_VERSIONS versions, $S_RECENT recent events, bytes_raw $(mb "$S_RAW"), bytes_stored $(mb "$S_STORED"); compact(): $C_EVENTS events, raw $(mb "$C_RAW"), stored $(mb "$C_STORED") (compression $(dv "$C_RAW" "$C_STORED")x)"
echo "$line"; note "segments (rows=$NROWS updates=$UPDATES): $line"
if has "$SYSTEMS" periods; then
  line="periods t_history: $((NROWS * UPDATES)) rows, $(mb "$P_HIST") incl. TOAST and index ($(mb "$P_HIST_HEAP") without the index)"
  echo "$line"; note "segments (rows=$NROWS updates=$UPDATES): $line"
fi
# shellcheck disable=SC2086
line="compaction time (quiet, fresh prewarmed copy): median $(median ${VAL["c_secs|driftdb"]})s, runs:${VAL["c_secs|driftdb"]}; template copy (CREATE DATABASE ... STRATEGY FILE_COPY): median $(median "${COPY_SECS[@]}")s"
echo "$line"; note "segments (rows=$NROWS updates=$UPDATES): $line"
line="writes during compaction: per-run TPS ratio during/alone ${WRATIO[*]}; compaction running ${COVERAGE[*]} of each ${TIME}s window ($(printf '%s ' "${NCOMPACT[@]}")compaction(s) per window; after the first, on spare fresh copies)"
echo "$line"; note "segments (rows=$NROWS updates=$UPDATES c=$CLIENTS sync=$SYNC): $line"
if has "$SYSTEMS" heap; then
  note "segments: full reads = SELECT $AGG FROM (SELECT * FROM <t or driftdb.as_of(NULL::t, seq)> OFFSET 0) s, 1 client, max_parallel_workers_per_gather=0; heap's t carries the same updates (and VACUUM) as the others"
fi
echo
log "total $((SECONDS - T0))s; load average now $(host_load)"
