#!/usr/bin/env bash
# time_travel.sh — time-travel reads (AS OF, versions) against each system's own current-state
# reads, driftdb vs periods, on a table whose rows were each updated U times.
#
#   benches/sql/time_travel.sh [--rows N] [--updates U] [--depth-factor F] [--clients N]
#                              [--time SECONDS] [--runs N] [--queries "pk asof_ts ..."]
#                              [--full-read columns|count] [--periods-index SPEC|none]
#                              [--driftdb-snapshots auto|off|every:K] [--statement-timeout SECONDS]
#                              [--skip-missing] [--key-after-load]
#                              [--protocol prepared|simple|extended]
#                              [--systems "heap driftdb periods"] [--results FILE]
#
# Data: table t (id int PK, v int, name text, amount numeric(12,2), updated_at timestamptz),
# N rows (default 100000) inserted in one transaction, then U (default 10) rounds of
# `UPDATE t SET v = v + 1, amount = amount + 1, updated_at = now()`, each round its own
# transaction (so every row has U+1 versions; N*(U+1) history events), a VACUUM after each round.
# The time (clock_timestamp()) and driftdb.current_seq() after the load and after every round are
# recorded, so "random past time" / "random seq" pick points inside the history.
# With --depth-factor F > 1 (default 10) the same is built again with U*F updates in separate
# databases (bench_driftdb_deep, bench_periods_deep) and measured in the same runs: "does it grow
# with history depth". Databases: bench_driftdb (t USING driftdb), bench_periods
# (periods.add_system_time_period + add_system_versioning, plus an index on t_history — default
# btree (id, system_time_end), see --periods-index; periods creates none), bench_heap (plain t,
# only the baseline of the full read). After loading: VACUUM ANALYZE, prewarm everything, and a
# correctness check of every time-travel query (at the load, a middle round and the last round:
# count = N, sum(v) = round * N; versions of a key = U+1) — wrong results or missing driftdb
# functions stop the script (exit 1) instead of measuring garbage.
#
# --key-after-load: heap's and driftdb's t get their primary key after the load (as pgbench -i
# and many bulk loads do), so the load's events carry no key; periods keeps its key from the
# start. driftdb's points from the first update round on are read through the key index from
# the identity change on (docs/architecture.md, D11): the random points are drawn from there
# (a point at the load itself replays the whole state, as it always did).
#
# Queries (pgbench custom scripts, id = random(1, N), time/seq uniform over the recorded history):
#   pk        current PK lookup            SELECT * FROM t WHERE id = :id           (baseline)
#   asof_ts   AS OF PK lookup, random time driftdb.as_of(NULL::t, ts) / periods t__as_of(ts), WHERE id = :id
#   asof_seq  AS OF PK lookup, random seq  driftdb.as_of(NULL::t, seq::bigint)     (driftdb only)
#   versions  all versions of one key      driftdb.versions(NULL::t) v WHERE (v.data).id = :id /
#                                          periods SELECT * FROM t_with_history WHERE id = :id
#   full_cur  current full read            SELECT <agg> FROM (SELECT * FROM t OFFSET 0) s  (baseline,
#                                          also on bench_heap)
#   full_ts   full AS OF read, random time SELECT <agg> FROM (SELECT * FROM <as of ts> OFFSET 0) s
#   full_seq  full AS OF read, random seq  the same by seq                          (driftdb only)
#   range_cur current read of 100 keys     SELECT count(*), sum(v) FROM t WHERE id BETWEEN :id AND :id + 99
#                                          (baseline; an index range scan)
#   range_ts  AS OF read of 100 keys, random time: the same on <as of ts>
# <agg> (--full-read): `columns` (default) = count(*), max(id), sum(v), max(amount),
# sum(length(name)), max(updated_at) — every column is read from every row in both the baseline and
# the AS OF read; `count` = count(*) only, where a heap scan never deforms a tuple (the harshest
# baseline; a set-returning function has built every row by then). OFFSET 0 keeps the subquery
# from being flattened. max_parallel_workers_per_gather = 0 in every database (a function scan is
# not parallel; the comparison is single-process on both sides).
#
# driftdb snapshots (--driftdb-snapshots; a full AS OF read starts from the newest stored snapshot
# at or below its seq and replays the events after it; a read that replays more than
# driftdb.snapshot_min_events events stores its state as a new snapshot):
#   auto     (default) the product's defaults, and before measuring one full AS OF read of every
#            round's state in seq order, so the automatic snapshots a steady workload would have
#            left exist before the first timed run (otherwise run 1 pays for storing them and the
#            runs disagree). Measures the steady state: every queried state has its snapshot.
#   off      driftdb.snapshot_min_events = 0 (ALTER DATABASE) and no snapshots: every full AS OF
#            read replays the history from the start — the worst case, grows with depth.
#   every:K  driftdb.snapshot('t') after every K update rounds during the load, automatic ones off:
#            a full AS OF read replays at most K-1 rounds after a snapshot.
# The number of stored snapshots is logged after the load, the warm-up and the measurements.
#
# Unit: latency in ms (1000 * clients / TPS, excluding connection time), median of the runs. The
# ratio is "× the same system's own current-state baseline latency, same run" (point queries ÷ pk,
# full reads ÷ full_cur) — LOWER is better, 1.00 = as fast as a current read. This differs from the
# other benchmarks' "throughput relative to heap". Runs are interleaved: for each run, each query,
# each database in turn.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
HERE=$(cd "$(dirname "$0")" && pwd)

NROWS=100000 UPDATES=10 DEPTH_FACTOR=10 CLIENTS=1 TIME=5 RUNS_N=3 PROTOCOL=prepared
QUERIES="pk asof_ts asof_seq versions full_cur full_ts full_seq range_cur range_ts" FULL_READ=columns
PERIODS_INDEX="(id, system_time_end)" SNAPSHOTS=auto STMT_TIMEOUT=120 SKIP_MISSING=0 KEY_AFTER_LOAD=0
# the random points' window starts at round FIRST_ROUND: the load (0), or with --key-after-load
# the first update round (the first commit after the key was added)
FIRST_ROUND=0
SYSTEMS=$ALL_SYSTEMS RESULTS_FILE=
while [ $# -gt 0 ]; do
  case "$1" in
    --rows) need_arg "$@"; NROWS=$2; shift 2 ;;
    --updates) need_arg "$@"; UPDATES=$2; shift 2 ;;
    --depth-factor) need_arg "$@"; DEPTH_FACTOR=$2; shift 2 ;;
    --clients) need_arg "$@"; CLIENTS=$2; shift 2 ;;
    --time|--seconds) need_arg "$@"; TIME=$2; shift 2 ;;
    --runs) need_arg "$@"; RUNS_N=$2; shift 2 ;;
    --queries) need_arg "$@"; QUERIES=$2; shift 2 ;;
    --full-read) need_arg "$@"; FULL_READ=$2; shift 2 ;;
    --periods-index) need_arg "$@"; PERIODS_INDEX=$2; shift 2 ;;
    --driftdb-snapshots) need_arg "$@"; SNAPSHOTS=$2; shift 2 ;;
    --statement-timeout) need_arg "$@"; STMT_TIMEOUT=$2; shift 2 ;;
    --skip-missing) SKIP_MISSING=1; shift ;;
    --key-after-load) KEY_AFTER_LOAD=1; FIRST_ROUND=1; shift ;;
    --protocol) need_arg "$@"; PROTOCOL=$2; shift 2 ;;
    --systems) need_arg "$@"; SYSTEMS=$2; shift 2 ;;
    --results) need_arg "$@"; RESULTS_FILE=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option $1" ;;
  esac
done
case "$SNAPSHOTS" in
  auto|off) SNAPSHOT_EVERY=0 ;;
  every:[1-9]*) SNAPSHOT_EVERY=${SNAPSHOTS#every:} ;;
  *) die "--driftdb-snapshots auto|off|every:K (K >= 1)" ;;
esac
for v in NROWS UPDATES DEPTH_FACTOR CLIENTS TIME RUNS_N SNAPSHOT_EVERY STMT_TIMEOUT; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "--$(tr '[:upper:]_' '[:lower:]-' <<<"$v") needs a non-negative integer, got '${!v}'"
done
[ "$UPDATES" -ge 2 ] || die "--updates must be >= 2 (the history needs a middle)"
[ "$NROWS" -ge 1 ] && [ "$CLIENTS" -ge 1 ] && [ "$RUNS_N" -ge 1 ] || die "--rows, --clients, --runs must be >= 1"
case "$FULL_READ" in
  columns) AGG="count(*), max(s.id), sum(s.v), max(s.amount), sum(length(s.name)), max(s.updated_at)" ;;
  count)   AGG="count(*)" ;;
  *) die "--full-read columns|count" ;;
esac
for q in $QUERIES; do
  case "$q" in pk|asof_ts|asof_seq|versions|full_cur|full_ts|full_seq|range_cur|range_ts) ;; *) die "unknown query $q" ;; esac
done
for s in $SYSTEMS; do case "$s" in heap|driftdb|periods) ;; *) die "unknown system $s" ;; esac; done
# the ratios need each system's own baseline
for q in $QUERIES; do case "$q" in asof_*|versions) [[ " $QUERIES " == *" pk "* ]] || die "--queries: $q needs pk (its baseline)" ;; esac; done
for q in $QUERIES; do case "$q" in full_ts|full_seq) [[ " $QUERIES " == *" full_cur "* ]] || die "--queries: $q needs full_cur (its baseline)" ;; esac; done
for q in $QUERIES; do case "$q" in range_ts) [[ " $QUERIES " == *" range_cur "* ]] || die "--queries: $q needs range_cur (its baseline)" ;; esac; done
JOBS=$(( CLIENTS < NCPU ? CLIENTS : NCPU ))

has() { [[ " $1 " == *" $2 "* ]]; }
# depth variants: "1" (U updates) and, with --depth-factor F > 1, "F" (U*F updates)
DEPTHS=1; [ "$DEPTH_FACTOR" -gt 1 ] && DEPTHS="1 $DEPTH_FACTOR"
updates_of() { echo $(( UPDATES * $1 )); }
dbname() { if [ "$2" = 1 ]; then echo "bench_$1"; else echo "bench_$1_deep"; fi; }  # SYS DEPTH
DRIFTDB_TT=1   # 0 = driftdb's time-travel functions are missing and --skip-missing was given
MIN_EVENTS_GUC=0   # 1 = the driftdb.snapshot_min_events setting exists

bench_cluster_start time_travel
warn_if_busy; warn_if_debug_build
T0=$SECONDS
SCRIPTS="$BENCH_DATA/scripts"; mkdir -p "$SCRIPTS"

# ---- setup -----------------------------------------------------------------------------------------

create_db() {  # SYS DB
  local sys=$1 db=$2
  psql_q -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
  case "$sys" in
    driftdb) psql_q -d "$db" -c "CREATE EXTENSION driftdb" ;;
    periods) psql_q -d "$db" -c "SET client_min_messages = warning" -c "CREATE EXTENSION periods CASCADE" ;;
  esac
  psql_q -d "$db" -c "CREATE EXTENSION IF NOT EXISTS pg_prewarm" >/dev/null 2>&1 || true
  if [ "$sys" = driftdb ] && [ "$SNAPSHOTS" != auto ] && [ "${MIN_EVENTS_GUC:-0}" = 1 ]; then
    psql_q -c "ALTER DATABASE $db SET driftdb.snapshot_min_events = 0"   # no automatic snapshots
  fi
  # function scans are never parallel: keep every plan single-process (see header)
  psql_q -c "ALTER DATABASE $db SET max_parallel_workers_per_gather = 0"
}

# fail early (before minutes of loading) when the installed driftdb has no time-travel API
check_driftdb_api() {
  local db=$1 missing=
  local f
  for f in as_of versions $([ "$SNAPSHOT_EVERY" -gt 0 ] && echo snapshot); do
    [ "$(psql_q -d "$db" -Atc "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                                WHERE n.nspname = 'driftdb' AND p.proname = '$f'")" -gt 0 ] || missing="${missing:+$missing,} driftdb.$f"
  done
  MIN_EVENTS_GUC=$(psql_q -d "$db" -Atc "SELECT count(*) FROM pg_settings WHERE name = 'driftdb.snapshot_min_events'")
  if [ -z "$missing" ] && [ "$SNAPSHOTS" != auto ] && [ "$MIN_EVENTS_GUC" != 1 ]; then
    [ "$SNAPSHOTS" = off ] && die "--driftdb-snapshots off: the installed driftdb has no driftdb.snapshot_min_events setting to turn automatic snapshots off"
    log "WARNING: no driftdb.snapshot_min_events setting: automatic snapshots (if any) stay on"
  fi
  [ -z "$missing" ] && return 0
  if [ "$SNAPSHOT_EVERY" -gt 0 ] && [[ $missing == *snapshot* ]]; then
    die "--driftdb-snapshots $SNAPSHOTS needs driftdb.snapshot(), which the installed driftdb does not have"
  fi
  if [ "$SKIP_MISSING" = 1 ]; then
    log "WARNING: the installed driftdb has no$missing — driftdb time-travel queries skipped (--skip-missing)"
    note "time travel: the measured driftdb build has no$missing; only driftdb's current-state baselines were measured"
    DRIFTDB_TT=0
  else
    die "the installed driftdb has no$missing (function does not exist): install a build with the time-travel API (notes/tt-contract.md), or pass --skip-missing to measure everything else"
  fi
}

build_db() {  # SYS DEPTH: create, load, update U*DEPTH rounds recording time/seq, vacuum, prewarm
  local sys=$1 depth=$2 db am=heap nupd k t=$SECONDS
  db=$(dbname "$sys" "$depth"); nupd=$(updates_of "$depth")
  [ "$sys" = driftdb ] && am=driftdb
  create_db "$sys" "$db"
  {
    if [ "$KEY_AFTER_LOAD" = 1 ] && [ "$sys" != periods ]; then history_table_sql "$am" nokey; else history_table_sql "$am"; fi
    echo "-- bookkeeping (plain heap): when each round had committed, and driftdb's settled seq then"
    echo "CREATE TABLE tt_rounds (round int PRIMARY KEY, ts timestamptz NOT NULL, seq bigint) USING heap;"
  } | psql_q -d "$db" >/dev/null
  if [ "$sys" = periods ]; then
    periods_version "$db" t
    if [ "$PERIODS_INDEX" != none ]; then
      psql_q -d "$db" -c "CREATE INDEX t_history_tt_idx ON t_history $PERIODS_INDEX" >/dev/null
    fi
  fi
  local seqexpr=NULL; [ "$sys" = driftdb ] && seqexpr="driftdb.current_seq()"
  {
    history_insert_sql "$NROWS"
    [ "$KEY_AFTER_LOAD" = 1 ] && [ "$sys" != periods ] && echo "ALTER TABLE t ADD PRIMARY KEY (id);"
    echo "VACUUM t;"
    echo "INSERT INTO tt_rounds VALUES (0, clock_timestamp(), $seqexpr);"
    for k in $(seq 1 "$nupd"); do
      echo "$HISTORY_UPDATE_SQL"
      if [ "$sys" = driftdb ] && [ "$SNAPSHOT_EVERY" -gt 0 ] && [ $((k % SNAPSHOT_EVERY)) = 0 ]; then
        echo "SELECT driftdb.snapshot('t');"
      fi
      echo "INSERT INTO tt_rounds VALUES ($k, clock_timestamp(), $seqexpr);"
      echo "VACUUM t;"
    done
  } | psql_q -d "$db" >/dev/null
  psql_q -d "$db" -c "VACUUM ANALYZE"
  if [ "$sys" = driftdb ]; then psql_q -d "$db" -c "VACUUM ANALYZE driftdb.events" -c "VACUUM ANALYZE driftdb.commits" 2>/dev/null || true; fi
  # prewarm the table, its history, the catalogs of driftdb, every index and TOAST table of them
  psql_q -d "$db" -Atc "SELECT count(pg_prewarm(c.oid)) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                          WHERE c.relkind IN ('r', 'i', 't', 'm')
                            AND (n.nspname IN ('public', 'driftdb')
                                 OR c.oid IN (SELECT reltoastrelid FROM pg_class x JOIN pg_namespace y ON y.oid = x.relnamespace
                                               WHERE y.nspname IN ('public', 'driftdb'))
                                 OR c.oid IN (SELECT i.indexrelid FROM pg_index i JOIN pg_class x ON x.oid = i.indrelid
                                               JOIN pg_namespace y ON y.oid = x.relnamespace WHERE y.nspname = 'pg_toast'
                                                AND x.oid IN (SELECT reltoastrelid FROM pg_class z JOIN pg_namespace w ON w.oid = z.relnamespace
                                                               WHERE w.nspname IN ('public', 'driftdb'))))" >/dev/null 2>&1 || true
  [ "$sys" = heap ] || assert_system_db "$sys" "$db"
  log "built $db: $NROWS rows x $nupd updates in $((SECONDS - t))s"
}

assert_system_db() {  # like lib.sh assert_system, for a database not named bench_<sys>
  local sys=$1 db=$2 am want=heap
  [ "$sys" = driftdb ] && want=driftdb
  am=$(psql_q -d "$db" -Atc "SELECT a.amname FROM pg_class c JOIN pg_am a ON a.oid = c.relam WHERE c.oid = 't'::regclass")
  [ "$am" = "$want" ] || die "$db.t uses access method '$am', expected '$want'"
  if [ "$sys" = periods ]; then
    psql_q -d "$db" -Atc "SELECT 1 FROM periods.system_versioning WHERE table_name = 't'::regclass" | grep -q 1 \
      || die "$db.t is not system-versioned by periods"
  fi
}

# ---- per-database parameters and correctness checks ------------------------------------------------

declare -A T0US SPANUS SEQ0 SEQN NUPD
read_params() {  # SYS DEPTH
  local sys=$1 depth=$2 db n; db=$(dbname "$sys" "$depth"); n=$(updates_of "$depth")
  NUPD[$db]=$n
  IFS='|' read -r T0US[$db] SPANUS[$db] SEQ0[$db] SEQN[$db] < <(psql_q -d "$db" -Atc "
    SELECT (extract(epoch FROM a.ts) * 1000000)::bigint, (extract(epoch FROM b.ts - a.ts) * 1000000)::bigint,
           coalesce(a.seq, 0), coalesce(b.seq, 0)
      FROM tt_rounds a, tt_rounds b WHERE a.round = $FIRST_ROUND AND b.round = $n")
  [ -n "${SPANUS[$db]}" ] && [ "${SPANUS[$db]}" -gt 0 ] || die "$db: no history span recorded"
  if [ "$sys" = driftdb ] && [ "${SEQN[$db]}" -le "${SEQ0[$db]}" ]; then
    die "$db: driftdb.current_seq() did not advance over the $n update rounds (${SEQ0[$db]} -> ${SEQN[$db]}): is history capture on?"
  fi
}

# the time-travel FROM item of each system, for a time expression / a seq expression
asof_ts_from()  { if [ "$1" = driftdb ]; then echo "driftdb.as_of(NULL::t, $2)"; else echo "t__as_of($2)"; fi; }
asof_seq_from() { echo "driftdb.as_of(NULL::t, $1::bigint)"; }
versions_sql() {  # SYS ID
  if [ "$1" = driftdb ]; then echo "SELECT * FROM driftdb.versions(NULL::t) v WHERE (v.data).id = $2"
  else echo "SELECT * FROM t_with_history WHERE id = $2"; fi
}

check_db() {  # SYS DEPTH: every time-travel query returns the right rows at rounds 0, middle, last
  local sys=$1 depth=$2 db n k got want out id
  db=$(dbname "$sys" "$depth"); n=$(updates_of "$depth")
  got=$(psql_q -d "$db" -Atc "SELECT count(*) || '/' || sum(v) FROM t")
  [ "$got" = "$NROWS/$((NROWS * n))" ] || die "$db: current state is $got (count/sum(v)), expected $NROWS/$((NROWS * n))"
  [ "$sys" = heap ] && return 0
  [ "$sys" = driftdb ] && [ "$DRIFTDB_TT" = 0 ] && return 0
  for k in 0 $((n / 2)) "$n"; do
    want="$NROWS/$((NROWS * k))"
    local froms=("$(asof_ts_from "$sys" "(SELECT ts FROM tt_rounds WHERE round = $k)")")
    [ "$sys" = driftdb ] && froms+=("$(asof_seq_from "(SELECT seq FROM tt_rounds WHERE round = $k)")")
    local f
    for f in "${froms[@]}"; do
      if ! out=$(psql_q -d "$db" -Atc "SELECT count(*) || '/' || coalesce(sum(v), 0) FROM $f" 2>&1); then
        die "$db: time-travel query failed: SELECT ... FROM $f: $out"
      fi
      [ "$out" = "$want" ] || die "$db: AS OF round $k via $f returned $out (count/sum(v)), expected $want — wrong results, not measuring"
    done
    # the point lookup form the benchmark uses
    id=$(( (NROWS + 1) / 2 ))
    out=$(psql_q -d "$db" -Atc "SELECT string_agg(v::text, ',') FROM $(asof_ts_from "$sys" "(SELECT ts FROM tt_rounds WHERE round = $k)") WHERE id = $id" 2>&1) \
      || die "$db: AS OF point lookup failed: $out"
    [ "$out" = "$k" ] || die "$db: AS OF round $k point lookup of id $id returned v=$out, expected $k"
    # the range form (100 keys, or all of a smaller table)
    local nr=$(( NROWS < 100 ? NROWS : 100 ))
    out=$(psql_q -d "$db" -Atc "SELECT count(*) || '/' || coalesce(sum(v), 0) FROM $(asof_ts_from "$sys" "(SELECT ts FROM tt_rounds WHERE round = $k)") x WHERE id BETWEEN 1 AND 100" 2>&1) \
      || die "$db: AS OF range read failed: $out"
    [ "$out" = "$nr/$((nr * k))" ] || die "$db: AS OF round $k range read of ids 1..100 returned $out (count/sum(v)), expected $nr/$((nr * k))"
  done
  id=$(( (NROWS + 1) / 2 ))
  if ! out=$(psql_q -d "$db" -Atc "SELECT count(*) FROM ($(versions_sql "$sys" "$id")) x" 2>&1); then
    die "$db: versions query failed: $out"
  fi
  [ "$out" = "$((n + 1))" ] || die "$db: id $id has $out versions, expected $((n + 1)) (1 insert + $n updates)"
}

describe_db() {  # SYS DEPTH → one line on stderr: rows, table size, history size
  local sys=$1 depth=$2 db hist; db=$(dbname "$sys" "$depth")
  case "$sys" in
    driftdb) hist=$(psql_q -d "$db" -Atc "SELECT count(*) || ' events, ' || pg_size_pretty(pg_total_relation_size('driftdb.events')) || ' incl. indexes' FROM driftdb.events" 2>/dev/null || echo '?') ;;
    periods) hist=$(psql_q -d "$db" -Atc "SELECT count(*) || ' history rows, ' || pg_size_pretty(pg_total_relation_size('t_history')) || ' incl. indexes' FROM t_history") ;;
    *) hist="no history" ;;
  esac
  printf '  %-16s t: %s rows, %s incl. indexes; history: %s; %s updates over %.1fs, seq %s..%s\n' "$db" \
    "$(psql_q -d "$db" -Atc "SELECT count(*) FROM t")" \
    "$(psql_q -d "$db" -Atc "SELECT pg_size_pretty(pg_total_relation_size('t'))")" "$hist" \
    "${NUPD[$db]}" "$(awk -v s="${SPANUS[$db]}" 'BEGIN { print s / 1e6 }')" "${SEQ0[$db]}" "${SEQN[$db]}" >&2
}

# ---- queries ---------------------------------------------------------------------------------------

applies() {  # QUERY SYS → true when that system runs that query
  local q=$1 sys=$2
  case "$sys" in
    heap) [ "$q" = full_cur ] ;;
    periods) case "$q" in asof_seq|full_seq) return 1 ;; *) return 0 ;; esac ;;
    driftdb) case "$q" in pk|full_cur|range_cur) return 0 ;; *) [ "$DRIFTDB_TT" = 1 ] ;; esac ;;
  esac
}

TSEXPR="to_timestamp(:ts_us::float8 / 1000000)"
write_script() {  # QUERY SYS → path of the pgbench script
  local q=$1 sys=$2 f="$SCRIPTS/$1-$2.pgbench"
  {
    echo "-- time_travel.sh $q on $sys (one transaction = one query)"
    echo "\\set id random(1, :nrows)"
    echo "\\set lo random(1, greatest(:nrows - 99, 1))"
    echo "\\set ts_us :t0_us + random(0, :span_us)"
    echo "\\set seq random(:seq0, :seqn)"
    case "$q" in
      pk)       echo "SELECT * FROM t WHERE id = :id;" ;;
      asof_ts)  echo "SELECT * FROM $(asof_ts_from "$sys" "$TSEXPR") WHERE id = :id;" ;;
      asof_seq) echo "SELECT * FROM $(asof_seq_from ":seq") WHERE id = :id;" ;;
      versions) echo "$(versions_sql "$sys" ":id");" ;;
      full_cur) echo "SELECT $AGG FROM (SELECT * FROM t OFFSET 0) s;" ;;
      full_ts)  echo "SELECT $AGG FROM (SELECT * FROM $(asof_ts_from "$sys" "$TSEXPR") OFFSET 0) s;" ;;
      full_seq) echo "SELECT $AGG FROM (SELECT * FROM $(asof_seq_from ":seq") OFFSET 0) s;" ;;
      range_cur) echo "SELECT count(*), sum(v) FROM t WHERE id BETWEEN :lo AND :lo + 99;" ;;
      range_ts) echo "SELECT count(*), sum(v) FROM $(asof_ts_from "$sys" "$TSEXPR") x WHERE id BETWEEN :lo AND :lo + 99;" ;;
    esac
  } >"$f"
  echo "$f"
}

label() {
  case "$1" in
    pk) echo "time travel: current PK lookup [baseline]" ;;
    asof_ts) echo "time travel: AS OF PK lookup, random time" ;;
    asof_seq) echo "time travel: AS OF PK lookup, random seq" ;;
    versions) echo "time travel: all versions of one key" ;;
    full_cur) echo "time travel: current full read [baseline]" ;;
    full_ts) echo "time travel: full AS OF read, random time" ;;
    full_seq) echo "time travel: full AS OF read, random seq" ;;
    range_cur) echo "time travel: current read of 100 keys [baseline]" ;;
    range_ts) echo "time travel: AS OF read of 100 keys, random time" ;;
  esac
}
baseline_of() { case "$1" in pk|asof_*|versions) echo pk ;; range_*) echo range_cur ;; *) echo full_cur ;; esac; }

# ---- build everything --------------------------------------------------------------------------------

if has "$SYSTEMS" driftdb; then   # before minutes of loading: is the time-travel API there?
  create_db driftdb bench_tt_probe >/dev/null
  check_driftdb_api bench_tt_probe
  psql_q -c "DROP DATABASE bench_tt_probe"
fi
BUILT=()   # "sys depth" pairs, in interleaving order (heap, driftdb, periods; then the deep ones)
for depth in $DEPTHS; do
  for sys in $SYSTEMS; do
    [ "$sys" = heap ] && [ "$depth" != 1 ] && continue
    BUILT+=("$sys $depth")
  done
done

snap_count() {  # DB → number of stored snapshots (distinct seqs) of driftdb tables, or n/a
  if [ "$(psql_q -d "$1" -Atc "SELECT to_regclass('driftdb.snapshots') IS NOT NULL")" = t ]; then
    psql_q -d "$1" -Atc "SELECT count(DISTINCT seq) FROM driftdb.snapshots"
  else echo n/a; fi
}

# prepare_db SYS DEPTH: build, check, and for driftdb (--driftdb-snapshots auto) warm up: one full
# AS OF read of every round's state, in seq order, so that the automatic snapshots a steady
# workload would have left exist before the first timed run
prepare_db() {
  local sys=$1 depth=$2 db k t before
  db=$(dbname "$sys" "$depth")
  build_db "$sys" "$depth"
  check_db "$sys" "$depth"
  [ "$sys" = driftdb ] && [ "$DRIFTDB_TT" = 1 ] || return 0
  before=$(snap_count "$db")
  if [ "$SNAPSHOTS" = auto ]; then
    t=$SECONDS
    for k in $(seq 0 "$(updates_of "$depth")"); do
      echo "SELECT count(*) FROM driftdb.as_of(NULL::t, (SELECT seq FROM tt_rounds WHERE round = $k));"
    done | psql_q -d "$db" >/dev/null
    log "$db: warm-up (one full AS OF read per round) took $((SECONDS - t))s; snapshots stored: $before after the load and checks, $(snap_count "$db") after the warm-up"
    note "time travel: $db snapshots stored: $before after the load and checks, $(snap_count "$db") after the warm-up"
  else
    log "$db: snapshots stored after the load and checks: $before"
    note "time travel: $db snapshots stored after the load and checks: $before"
  fi
}

# Loading is not measured: the longest build (periods' row triggers at the deepest history, ~3x
# driftdb's time per round) runs in a background job while the others run here, to use both CPUs.
BG= BG_PID=
if has "$SYSTEMS" periods && [ ${#BUILT[@]} -gt 1 ]; then
  BG="periods ${DEPTHS##* }"
  # shellcheck disable=SC2086
  ( prepare_db $BG ) &
  BG_PID=$!
fi
for e in "${BUILT[@]}"; do
  [ "$e" = "$BG" ] && continue
  # shellcheck disable=SC2086
  prepare_db $e
done
if [ -n "$BG_PID" ]; then
  wait "$BG_PID" || die "preparing the $BG database failed (see above)"
fi
for e in "${BUILT[@]}"; do
  read -r sys depth <<<"$e"
  read_params "$sys" "$depth"
  describe_db "$sys" "$depth"
done
log "setup done in $((SECONDS - T0))s; correctness checks passed (AS OF at rounds 0, middle, last; versions per key)"
[ "$PERIODS_INDEX" != none ] && has "$SYSTEMS" periods \
  && note "time travel: periods' history table got CREATE INDEX ON t_history $PERIODS_INDEX (periods creates none; the issue's periods figures assume one)"
[ "$PERIODS_INDEX" = none ] && has "$SYSTEMS" periods && note "time travel: periods' history table had NO index (--periods-index none)"
note "time travel: full reads = SELECT $AGG FROM (SELECT * FROM <source> OFFSET 0) s (--full-read $FULL_READ), max_parallel_workers_per_gather=0"
if has "$SYSTEMS" driftdb && [ "$DRIFTDB_TT" = 1 ]; then
  case "$SNAPSHOTS" in
    auto) note "time travel: driftdb snapshots: automatic (product defaults), warmed up by one full AS OF read of every round's state before measuring (--driftdb-snapshots auto)" ;;
    off) note "time travel: driftdb snapshots: none, automatic ones off — every full AS OF read replays from the start (--driftdb-snapshots off)" ;;
    *) note "time travel: driftdb snapshots: driftdb.snapshot('t') after every $SNAPSHOT_EVERY update rounds, automatic ones off (--driftdb-snapshots $SNAPSHOTS)" ;;
  esac
fi
log_snapshots() {  # WHEN
  local e sys depth db line=
  for e in "${BUILT[@]}"; do
    read -r sys depth <<<"$e"
    [ "$sys" = driftdb ] || continue
    db=$(dbname "$sys" "$depth"); line="$line $db: $(snap_count "$db");"
  done
  [ -n "$line" ] || return 0
  log "driftdb snapshots stored $1:$line"
  note "time travel: driftdb snapshots stored $1:$line"
}

# ---- plans ---------------------------------------------------------------------------------------------

# EXPLAIN (ANALYZE, COSTS OFF) of the time-travel queries with literal values (a middle key, the
# middle round's time/seq): printed, and kept in $RESULTS_FILE.plans for run_all.sh
explain_all() {
  local e sys depth db n ts seqm id=$(( (NROWS + 1) / 2 )) q sql out
  for e in "${BUILT[@]}"; do
    read -r sys depth <<<"$e"
    [ "$sys" = heap ] && continue
    [ "$sys" = driftdb ] && [ "$DRIFTDB_TT" = 0 ] && continue
    db=$(dbname "$sys" "$depth"); n=$(updates_of "$depth")
    ts=$(psql_q -d "$db" -Atc "SELECT ts FROM tt_rounds WHERE round = $((n / 2))")
    seqm=$(psql_q -d "$db" -Atc "SELECT seq FROM tt_rounds WHERE round = $((n / 2))")
    for q in asof_ts asof_seq versions range_ts; do
      has "$QUERIES" "$q" && applies "$q" "$sys" || continue
      case "$q" in
        asof_ts)  sql="SELECT * FROM $(asof_ts_from "$sys" "'$ts'::timestamptz") WHERE id = $id" ;;
        asof_seq) sql="SELECT * FROM $(asof_seq_from "$seqm") WHERE id = $id" ;;
        versions) sql=$(versions_sql "$sys" "$id") ;;
        range_ts) sql="SELECT count(*), sum(v) FROM $(asof_ts_from "$sys" "'$ts'::timestamptz") x WHERE id BETWEEN $id AND $id + 99" ;;
      esac
      # the query once first in the same session (catalog caches warm, as in the timed runs)
      out=$(psql_q -d "$db" -At -c '\o /dev/null' -c "$sql" -c '\o' -c "EXPLAIN (ANALYZE, COSTS OFF) $sql" 2>&1) \
        || out="EXPLAIN failed: $out"
      block=$(printf '### %s (%s), %s — rows=%s updates=%s\n\n```\n%s;\n%s\n```\n' "$sys" "$db" \
                "$(label "$q" | sed 's/^time travel: //')" "$NROWS" "$n" "$sql" "$out")
      printf '%s\n\n' "$block"
      [ -z "$RESULTS_FILE" ] || printf '%s\n\n' "$block" >>"$RESULTS_FILE.plans"
    done
  done
}
echo; echo "== time travel: EXPLAIN (ANALYZE, COSTS OFF), literal values (middle key, middle round) =="; echo
explain_all

# ---- measure -----------------------------------------------------------------------------------------

checkpoint   # the loads wrote GBs of WAL: no checkpoint from them during the measurements
declare -A LAT   # "q|sys|depth" → space-separated per-run latencies (ms), NA for a failed run
for r in $(seq 1 "$RUNS_N"); do
  for q in $QUERIES; do
    for e in "${BUILT[@]}"; do
      read -r sys depth <<<"$e"
      applies "$q" "$sys" || continue
      db=$(dbname "$sys" "$depth")
      f=$(write_script "$q" "$sys")
      NOTE_CONTEXT="time travel $q"
      tps=$(PGOPTIONS="-c statement_timeout=${STMT_TIMEOUT}s" run_pgbench "$db" "$BENCH_DATA/run-$q-$r-$db.log" \
              -n -M "$PROTOCOL" -c "$CLIENTS" -j "$JOBS" -T "$TIME" -D nrows="$NROWS" \
              -D t0_us="${T0US[$db]}" -D span_us="${SPANUS[$db]}" -D seq0="${SEQ0[$db]}" -D seqn="${SEQN[$db]}" \
              -f "$f")
      lat=$(awk -v t="$tps" -v c="$CLIENTS" 'BEGIN { if (t !~ /^[0-9.]+$/ || t == 0) print "NA"; else printf "%.4g\n", 1000 * c / t }')
      log "run $r/$RUNS_N $q $db: $tps tps = $lat ms"
      LAT["$q|$sys|$depth"]="${LAT["$q|$sys|$depth"]:-} $lat"
    done
  done
done

has "$SYSTEMS" driftdb && [ "$DRIFTDB_TT" = 1 ] && log_snapshots "after the measurements"

# ---- report ------------------------------------------------------------------------------------------

med_of() { # shellcheck disable=SC2086
  median ${LAT["$1"]:-}; }
xratio() { ratio "$1" "$2" 1; }   # latency multiple a / b (ratio() with invert: b-arg over a-arg)
for depth in $DEPTHS; do
  n=$(updates_of "$depth")
  variant="rows=$NROWS updates=$n c=$CLIENTS ${TIME}s"
  printf '\n== time travel: %s rows x %s updates (%s versions per key, %s row versions per system), c=%s, %ss x %s runs ==\n' \
    "$NROWS" "$n" "$((n + 1))" "$((NROWS * (n + 1)))" "$CLIENTS" "$TIME" "$RUNS_N"
  printf '   latency in ms (median); "x base" = multiple of the SAME system'"'"'s current-state baseline latency (pk or full_cur), lower is better\n'
  printf '%-44s %10s %8s %10s %8s %10s   %s\n' query "driftdb ms" "x base" "periods ms" "x base" "heap ms" "spread d/p/h"
  for q in $QUERIES; do
    b=$(baseline_of "$q")
    row=(); sp=()
    for sys in driftdb periods heap; do
      key="$q|$sys|$depth"
      if has "$SYSTEMS" "$sys" && applies "$q" "$sys" && { [ "$sys" != heap ] || [ "$depth" = 1 ]; }; then
        m=$(med_of "$key"); rt=$(xratio "$(med_of "$b|$sys|$depth")" "$m")
        [ "$sys" = heap ] && rt=1.000
        row+=("$(fmt "$m")" "$rt")
        # shellcheck disable=SC2086
        sp+=("$(spread ${LAT[$key]:-})")
        if [ -n "$RESULTS_FILE" ]; then
          printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(label "$q")" "$variant" "$sys" "$m" "ms" "$rt" \
            "$(tr ' ' ',' <<<"${LAT[$key]:-}" | sed 's/^,//')" >>"$RESULTS_FILE"
        fi
      else
        row+=("—" "—"); sp+=("—")
      fi
    done
    printf '%-44s %10s %8s %10s %8s %10s   %s\n' "$(label "$q" | sed 's/^time travel: //')" \
      "${row[0]}" "${row[1]}" "${row[2]}" "${row[3]}" "${row[4]}" "$(IFS=/; echo "${sp[*]}")"
  done
  # the issue's other yardsticks
  for sys in driftdb periods; do
    has "$SYSTEMS" "$sys" || continue
    for q in full_ts full_seq; do
      has "$QUERIES" "$q" && applies "$q" "$sys" && has "$SYSTEMS" heap || continue
      x=$(xratio "$(med_of "full_cur|heap|1")" "$(med_of "$q|$sys|$depth")")
      printf '   %s %s: %s x the plain heap table'"'"'s full read (bench_heap, same rows)\n' "$sys" "$(label "$q" | sed 's/^time travel: //')" "$x"
      note "time travel ($variant): $sys $(label "$q" | sed 's/^time travel: //') = ${x}× the latency of the plain heap table's full read (bench_heap)"
    done
    if has "$QUERIES" versions && applies versions "$sys"; then
      pv=$(awk -v v="$(med_of "versions|$sys|$depth")" -v p="$(med_of "pk|$sys|$depth")" -v k="$((n + 1))" \
             'BEGIN { if (v !~ /^[0-9.]+$/ || p !~ /^[0-9.]+$/) print "NA"; else printf "%.2f", 1000 * (v - p) / k }')
      printf '   %s all versions of one key: (versions - pk) / %s versions = %s us per version\n' "$sys" "$((n + 1))" "$pv"
    fi
  done
done
# per-version cost from the two depths: slope and intercept of versions latency over versions per key
if [ "$DEPTH_FACTOR" -gt 1 ] && has "$QUERIES" versions; then
  echo
  for sys in driftdb periods; do
    has "$SYSTEMS" "$sys" && applies versions "$sys" || continue
    k1=$((UPDATES + 1)) k2=$((UPDATES * DEPTH_FACTOR + 1))
    out=$(awk -v a="$(med_of "versions|$sys|1")" -v b="$(med_of "versions|$sys|$DEPTH_FACTOR")" \
              -v p="$(med_of "pk|$sys|1")" -v k1="$k1" -v k2="$k2" 'BEGIN {
      if (a !~ /^[0-9.]+$/ || b !~ /^[0-9.]+$/ || p !~ /^[0-9.]+$/ || p == 0) { print "NA"; exit }
      s = (b - a) / (k2 - k1); i = a - s * k1
      printf "%.2f us per version, fixed part %.3f ms = %.2fx the pk lookup", 1000 * s, i, i / p }')
    printf '%s versions of one key, fitted over %s and %s versions per key: %s\n' "$sys" "$k1" "$k2" "$out"
    note "time travel: $sys all versions of one key, fitted over $k1 and $k2 versions per key (rows=$NROWS): $out"
  done
fi
echo
log "total $((SECONDS - T0))s; load average now $(host_load)"
