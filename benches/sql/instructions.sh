#!/usr/bin/env bash
# instructions.sh — instructions a transaction costs the server, heap vs driftdb, counted exactly.
#
#   benches/sql/instructions.sh [--txns N] [--workloads "update insert tpcb"] [--keep]
#
# --keep keeps the callgrind profiles (and the pristine cluster) in /tmp/driftdb-bench-
# instructions.work, for callgrind_annotate --inclusive=yes to say where the instructions went.
#
# The timed benchmarks (single_row.sh, pgbench_tpcb.sh, commit_cost.sh) measure what users see,
# but on a shared 2-vCPU host their runs spread 10-60%, so a change worth 1-3% of a transaction
# cannot be told from the noise. This one counts instructions with valgrind's callgrind instead,
# which is deterministic: the same build on the same data gives the same count to a few parts in
# ten thousand. Use it to decide whether a change to the per-transaction path helps; use the timed
# benchmarks for the figures users see (cache misses, I/O and fsync are not counted here).
#
# How: a throwaway cluster (driftdb preloaded, fsync off) gets one database per system with the
# single_row.sh table (100k rows) and pgbench's tables at scale 1, made with driftdb as the
# default access method in bench_driftdb. The cluster is stopped and kept as a pristine copy.
# Then for each workload and system, twice — with N and with 5N transactions — the copy is
# restored and `postgres --single` runs the transactions under callgrind; the difference of the
# two totals divided by 4N is the cost of one transaction, free of start-up and shut-down.
# Statements are prepared (PREPARE once, EXECUTE per transaction), like pgbench -M prepared.
#   update  EXECUTE of UPDATE sr SET qty = qty + d, updated_at = now() WHERE id = random
#   insert  EXECUTE of INSERT INTO sr (...) VALUES (...)
#   tpcb    BEGIN; pgbench's tpcb-like statements (3 UPDATEs, a SELECT, an INSERT); COMMIT
#   copy    one COPY of 20N, then 100N rows into copy_1m.sh's empty table (counted per row: a
#           bulk load's statement and commit, streamed into packs)
# Needs valgrind (apt-get install valgrind). Prints instructions per transaction for each
# system, heap's ÷ driftdb's (read like the other benchmarks' throughput ratios), and the
# difference.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
HERE=$(cd "$(dirname "$0")" && pwd)

TXNS=500 WORKLOADS="update insert tpcb copy" KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --txns) need_arg "$@"; TXNS=$2; shift 2 ;;
    --workloads) need_arg "$@"; WORKLOADS=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option $1" ;;
  esac
done
command -v valgrind >/dev/null || die "valgrind is not installed (apt-get install valgrind)"
NROWS=100000

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

bench_cluster_start instructions "fsync = off" "synchronous_commit = off"
WORK="$BENCH_DATA.work"
rm -rf "$WORK"; mkdir -p "$WORK"; chmod 777 "$WORK"

log "loading bench_heap and bench_driftdb"
for sys in heap driftdb; do
  db=$(db_of "$sys")
  psql_q -c "CREATE DATABASE $db"
  [ "$sys" = driftdb ] && psql_q -d "$db" -c "CREATE EXTENSION driftdb"
  psql_q -d "$db" -v am="$sys" -f "$HERE/scripts/single_row_schema.sql"
  psql_q -d "$db" -v nrows="$NROWS" -f "$HERE/scripts/single_row_load.sql" >/dev/null
  opts=""; [ "$sys" = driftdb ] && opts="-c default_table_access_method=driftdb"
  PGOPTIONS="$opts" "$PGBIN/pgbench" -i -s 1 -q "$db" >/dev/null 2>&1 || die "pgbench -i failed for $db"
  psql_q -d "$db" -v am="$sys" -c "SET client_min_messages = warning" -f "$HERE/scripts/copy_schema.sql" >/dev/null
  psql_q -d "$db" -c "VACUUM ANALYZE"
done
for n in $((20 * TXNS)) $((100 * TXNS)); do
  psql_q -v nrows="$n" -v file="$WORK/copy_$n.csv" -f "$HERE/scripts/copy_gen.sql" >/dev/null
done
[ "$(psql_q -d bench_driftdb -Atc "SELECT count(*) FROM pg_class c JOIN pg_am a ON a.oid = c.relam
      WHERE a.amname = 'driftdb' AND c.relname IN ('sr', 'pgbench_accounts', 'pgbench_tellers',
      'pgbench_branches', 'pgbench_history')")" = 5 ] || die "bench_driftdb's tables are not all driftdb tables"
psql_q -c "CHECKPOINT"
"$PGCLUSTER" stop "$BENCH_DATA" >/dev/null
PRISTINE="$WORK/pristine"
cp -a "$BENCH_DATA" "$PRISTINE"

# the statements of N transactions of a workload, one per line (postgres --single reads a line
# as a statement); the same pseudo-random draws for every system and size
statements() {
  python3 - "$1" "$2" "$NROWS" "$WORK" <<'PY'
import random, sys
wl, n, nrows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
r = random.Random(42)
if wl == "update":
    print("PREPARE u(int, int) AS UPDATE sr SET qty = qty + $2, updated_at = now() WHERE id = $1;")
    for _ in range(n):
        print(f"EXECUTE u({r.randint(1, nrows)}, {r.randint(-5, 5)});")
elif wl == "insert":
    print("PREPARE i(int, int) AS INSERT INTO sr (account, qty, price, note, updated_at) "
          "VALUES ($1, $2, $2 * 1.25, 'new order for account ' || $1, now());")
    for _ in range(n):
        a = r.randint(1, 10000)
        print(f"EXECUTE i({a}, {r.randint(1, 100)});")
elif wl == "copy":
    print(f"COPY copy_t (id, customer_id, created_at, status, amount, note) FROM '{sys.argv[4]}/copy_{n}.csv' WITH (FORMAT csv);")
elif wl == "tpcb":
    print("PREPARE a(int, int) AS UPDATE pgbench_accounts SET abalance = abalance + $2 WHERE aid = $1;")
    print("PREPARE s(int) AS SELECT abalance FROM pgbench_accounts WHERE aid = $1;")
    print("PREPARE t(int, int) AS UPDATE pgbench_tellers SET tbalance = tbalance + $2 WHERE tid = $1;")
    print("PREPARE b(int, int) AS UPDATE pgbench_branches SET bbalance = bbalance + $2 WHERE bid = $1;")
    print("PREPARE h(int, int, int, int) AS INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) "
          "VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP);")
    for _ in range(n):
        aid, tid, d = r.randint(1, 100000), r.randint(1, 10), r.randint(-5000, 5000)
        print("BEGIN;")
        print(f"EXECUTE a({aid}, {d});")
        print(f"EXECUTE s({aid});")
        print(f"EXECUTE t({tid}, {d});")
        print(f"EXECUTE b(1, {d});")
        print(f"EXECUTE h({tid}, 1, {aid}, {d});")
        print("COMMIT;")
else:
    sys.exit(f"no workload {wl}")
PY
}

# instructions of one `postgres --single` run of a statement file, from a fresh pristine copy
count() {
  local sys=$1 file=$2 out="$WORK/callgrind.$1.$(basename "$2" .sql).out"
  rm -rf "$WORK/data" "$out"
  cp -a "$PRISTINE" "$WORK/data"
  as_pg valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$PGBIN/postgres" --single -D "$WORK/data" \
      "$(db_of "$sys")" \
      < "$file" > "$WORK/single.log" 2>&1 || { tail -20 "$WORK/single.log" >&2; die "postgres --single failed"; }
  if grep -q "ERROR:" "$WORK/single.log"; then
    grep -m3 "ERROR:" "$WORK/single.log" >&2; die "a statement failed ($sys, $file)"
  fi
  sed -n 's/^totals: //p' "$out"
}

printf '\n%-8s %14s %14s %10s %14s\n' workload "heap instr" "driftdb instr" "ratio" "difference"
for wl in $WORKLOADS; do
  n=$TXNS unit=transaction
  [ "$wl" = copy ] && n=$((20 * TXNS)) unit=row
  statements "$wl" "$n" > "$WORK/$wl.small.sql"
  statements "$wl" "$((5 * n))" > "$WORK/$wl.large.sql"
  declare -A per=()
  for sys in heap driftdb; do
    small=$(count "$sys" "$WORK/$wl.small.sql")
    large=$(count "$sys" "$WORK/$wl.large.sql")
    per[$sys]=$(( (large - small) / (4 * n) ))
    log "$wl $sys: $small instructions for $n ${unit}s, $large for $((5 * n)): ${per[$sys]} per $unit"
  done
  printf '%-8s %14d %14d %10.3f %+14d\n' "$wl" "${per[heap]}" "${per[driftdb]}" \
    "$(awk -v h="${per[heap]}" -v d="${per[driftdb]}" 'BEGIN { print h / d }')" "$(( per[driftdb] - per[heap] ))"
  unset per
done
[ "$KEEP" = 1 ] && log "keeping $WORK (callgrind.<system>.<workload>.<small|large>.out: callgrind_annotate reads them)" || rm -rf "$WORK"
