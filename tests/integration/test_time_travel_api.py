"""Time travel (issue 4): the SQL surface of driftdb.as_of / versions / changes and
SET driftdb.as_of — in joins, subqueries, CTEs, views, prepared statements and plpgsql (plan
caching), SET LOCAL, writes refused under the setting, garbage settings, index and index-only
scans under the setting, the edges of the contract, history across ADD/DROP/RENAME COLUMN,
and the plan node. Every expectation comes from the test's own committed writes
(tt_model.Hist), never from driftdb's output.
"""
from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from psycopg import sql

from conftest import explain, outcome
from tt_model import Hist, commit_tx, set_as_of, srt, ts_literal

# --------------------------------------------------------------------------------------------
# A small history used by most tests
# --------------------------------------------------------------------------------------------


def _history(conn) -> Hist:
    """t(id, v, n) with 8 seqs of known content; returns the Hist. Seqs are 1..8 in a fresh
    database (asserted), so views may name seq 5."""
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text, n int) USING driftdb")
    h = Hist(conn, "t", "id, v, n")
    h.commit("INSERT INTO t SELECT g, 'v' || g, g FROM generate_series(1, 6) g",
             upsert={g: (g, f"v{g}", g) for g in range(1, 7)})                       # 1
    h.commit("UPDATE t SET v = 'two' WHERE id = 2", upsert={2: (2, "two", 2)})         # 2
    h.commit("DELETE FROM t WHERE id = 3", delete=[3])                                 # 3
    h.commit("INSERT INTO t VALUES (7, 'seven', 70)", upsert={7: (7, "seven", 70)})    # 4
    h.commit("UPDATE t SET n = n * 10 WHERE id IN (1, 4)",
             upsert={1: (1, "v1", 10), 4: (4, "v4", 40)})                            # 5
    h.commit("UPDATE t SET id = 50 WHERE id = 5", delete=[5], upsert={50: (50, "v5", 5)})  # 6
    h.commit("INSERT INTO t VALUES (3, 'three again', 33)", upsert={3: (3, "three again", 33)})  # 7
    h.commit("UPDATE t SET v = NULL WHERE id = 6", upsert={6: (6, None, 6)})          # 8
    assert h.seqs == list(range(1, 9)), f"expected seqs 1..8 in a fresh database, got {h.seqs}"
    return h


@pytest.fixture
def h(conn) -> Hist:
    return _history(conn)


def _assert_rows(got, exp, what):
    got, exp = srt(got), srt(exp)
    assert got == exp, f"{what}:\n  expected {exp}\n  got      {got}"


# --------------------------------------------------------------------------------------------
# Joins, subqueries, CTEs, views
# --------------------------------------------------------------------------------------------


def test_join_of_two_as_of_shows_what_changed(conn, h):
    for a, b in [(1, 8), (2, 6), (0, 3), (5, 5), (8, 1)]:
        old, new = dict((r[0], r) for r in h.at_seq(a)), dict((r[0], r) for r in h.at_seq(b))
        exp = [(k, old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        rows = conn.execute(
            "SELECT coalesce(o.id, w.id), o.id, o.v, o.n, w.id, w.v, w.n "
            "FROM driftdb.as_of(NULL::t, %s::bigint) o FULL JOIN driftdb.as_of(NULL::t, %s::bigint) w "
            "ON w.id = o.id WHERE o IS DISTINCT FROM w ORDER BY 1", (a, b)).fetchall()
        got = [(r[0], None if r[1] is None else tuple(r[1:4]), None if r[4] is None else tuple(r[4:7])) for r in rows]
        assert got == exp, f"changes between seq {a} and seq {b}:\n  expected {exp}\n  got      {got}"


def test_join_as_of_with_the_live_table(conn, h):
    old = {r[0]: r for r in h.at_seq(2)}
    cur = {r[0]: r for r in h.current()}
    exp = sorted((k, old[k][1], cur[k][1]) for k in set(old) & set(cur))
    got = conn.execute(
        "SELECT t.id, o.v, t.v FROM t JOIN driftdb.as_of(NULL::t, 2::bigint) o USING (id) ORDER BY 1").fetchall()
    assert got == exp


def test_subqueries_and_ctes(conn, h):
    ids = lambda rows: sorted(r[0] for r in rows)  # noqa: E731
    at3, cur = h.at_seq(3), h.current()
    got = conn.execute(
        "SELECT id FROM t WHERE id IN (SELECT id FROM driftdb.as_of(NULL::t, 3::bigint)) ORDER BY id").fetchall()
    assert [r[0] for r in got] == sorted(set(ids(cur)) & set(ids(at3)))
    # correlated NOT EXISTS: rows that are new since seq 3
    got = conn.execute(
        "SELECT id FROM t WHERE NOT EXISTS (SELECT 1 FROM driftdb.as_of(NULL::t, 3::bigint) o "
        "WHERE o.id = t.id AND o.v IS NOT DISTINCT FROM t.v) ORDER BY id").fetchall()
    at3d = {r[0]: r for r in at3}
    assert [r[0] for r in got] == sorted(r[0] for r in cur if at3d.get(r[0], (None, object()))[1] != r[1])
    # scalar subquery per seq (a parameter that changes per outer row: rescans)
    got = conn.execute(
        "SELECT s, (SELECT count(*) FROM driftdb.as_of(NULL::t, s)), "
        "(SELECT sum(n) FROM driftdb.as_of(NULL::t, s)) FROM generate_series(0, 9) s ORDER BY s").fetchall()
    exp = [(s, len(h.at_seq(s)), sum(r[2] for r in h.at_seq(s)) if h.at_seq(s) else None) for s in range(10)]
    assert got == exp
    # LATERAL: every row of every seq in one query
    got = conn.execute(
        "SELECT s, x.id, x.v, x.n FROM generate_series(0, 9) s, LATERAL driftdb.as_of(NULL::t, s) x").fetchall()
    exp = [(s,) + r for s in range(10) for r in h.at_seq(s)]
    _assert_rows(got, exp, "LATERAL as_of over seqs 0..9")
    # CTEs, inlined and materialized, next to the live table
    for mat in ("", "MATERIALIZED"):
        got = conn.execute(
            f"WITH old AS {mat} (SELECT * FROM driftdb.as_of(NULL::t, 4::bigint)), "
            f"     cur AS (SELECT * FROM t) "
            f"SELECT old.id, old.n, cur.n FROM old LEFT JOIN cur USING (id) ORDER BY 1").fetchall()
        c = {r[0]: r for r in cur}
        exp = [(r[0], r[2], c[r[0]][2] if r[0] in c else None) for r in sorted(h.at_seq(4), key=lambda r: r[0])]
        assert got == exp, f"CTE {mat}: expected {exp}, got {got}"
    # aggregate over a timestamp-form call in a CTE
    if h.at[5] > h.at[4]:
        mid = h.at[4] + (h.at[5] - h.at[4]) / 2 if h.at[5] - h.at[4] >= dt.timedelta(microseconds=2) else h.at[4]
        got = conn.execute(
            "WITH x AS (SELECT * FROM driftdb.as_of(NULL::t, %s::timestamptz)) SELECT count(*), sum(n) FROM x",
            (mid,)).fetchone()
        assert got == (len(h.at_seq(4)), sum(r[2] for r in h.at_seq(4))), f"as of {mid}: {got}"


def test_view_over_as_of(conn, h):
    conn.execute("CREATE VIEW v5 AS SELECT * FROM driftdb.as_of(NULL::t, 5::bigint)")
    conn.execute("CREATE VIEW v_ids AS SELECT o.id, o.v FROM driftdb.as_of(NULL::t, 2::bigint) o JOIN t USING (id)")
    _assert_rows(conn.execute("SELECT id, v, n FROM v5").fetchall(), h.at_seq(5), "view v5")
    h.commit("UPDATE t SET v = 'later' WHERE id = 1", upsert={1: (1, "later", 10)})
    h.commit("DELETE FROM t WHERE id = 2", delete=[2])
    _assert_rows(conn.execute("SELECT id, v, n FROM v5").fetchall(), h.at_seq(5), "view v5 after more writes")
    old2 = {r[0]: r for r in h.at_seq(2)}
    _assert_rows(conn.execute("SELECT id, v FROM v_ids").fetchall(),
                 [(k, old2[k][1]) for k in old2 if k in h.rows], "view joining as_of(2) with t")
    # a view over t follows SET driftdb.as_of like the table itself
    conn.execute("CREATE VIEW vt AS SELECT id, v, n FROM t")
    set_as_of(conn, "@seq:3")
    try:
        _assert_rows(conn.execute("SELECT * FROM vt").fetchall(), h.at_seq(3), "view over t under @seq:3")
    finally:
        conn.execute("RESET driftdb.as_of")
    _assert_rows(conn.execute("SELECT * FROM vt").fetchall(), h.current(), "view over t after RESET")


def test_explicit_as_of_under_the_setting(conn, h):
    """With SET driftdb.as_of in effect, a plain read of t follows the setting and an explicit
    as_of(…, n) call still reads seq n."""
    set_as_of(conn, "@seq:5")
    try:
        got = conn.execute(
            "SELECT 'set', id, v, n FROM t UNION ALL SELECT 'fn', id, v, n FROM driftdb.as_of(NULL::t, 2::bigint)"
        ).fetchall()
    finally:
        conn.execute("RESET driftdb.as_of")
    _assert_rows(got, [("set",) + r for r in h.at_seq(5)] + [("fn",) + r for r in h.at_seq(2)],
                 "t under @seq:5 next to as_of(t, 2)")


def test_quoted_names_and_other_schema(conn):
    conn.execute('CREATE SCHEMA "s p"')
    conn.execute('CREATE TABLE "s p"."Mixed Case" ("Id" int PRIMARY KEY, "a b" text) USING driftdb')
    s1 = commit_tx(conn, """INSERT INTO "s p"."Mixed Case" VALUES (1, 'x'), (2, 'y')""")[0]
    s2 = commit_tx(conn, """UPDATE "s p"."Mixed Case" SET "a b" = 'z' WHERE "Id" = 1""")[0]
    got = conn.execute(
        'SELECT "Id", "a b" FROM driftdb.as_of(NULL::"s p"."Mixed Case", %s::bigint) ORDER BY 1', (s1,)).fetchall()
    assert got == [(1, "x"), (2, "y")]
    got = conn.execute('SELECT (v.data)."Id", v.seq_start, v.seq_end FROM driftdb.versions(NULL::"s p"."Mixed Case") v '
                       "ORDER BY 1, 2").fetchall()
    assert got == [(1, s1, s2), (1, s2, None), (2, s1, None)]


# --------------------------------------------------------------------------------------------
# Prepared statements, plan caching, SET LOCAL
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["auto", "force_generic_plan"])
def test_prepared_statement_parameters(db, h, mode):
    c = db.connect()
    c.execute(f"SET plan_cache_mode = {mode}")
    q_seq = "SELECT id, v, n FROM driftdb.as_of(NULL::t, %s::bigint)"
    order = [8, 1, 5, 3, 0, 7, 2, 6, 4, 8, 1, 9, 3]
    for n in order:
        got = srt(c.execute(q_seq, (n,), prepare=True).fetchall())
        assert got == h.at_seq(n), f"prepared as_of(t, $1) with $1 = {n} ({mode}):\n  expected {h.at_seq(n)}\n  got {got}"
    q_key = "SELECT v, n FROM driftdb.as_of(NULL::t, %s::bigint) WHERE id = %s"
    for n in order:
        for k in (2, 5, 50, 3):
            exp = [r[1:] for r in h.at_seq(n) if r[0] == k]
            got = c.execute(q_key, (n, k), prepare=True).fetchall()
            assert got == exp, f"as_of(t, {n}) WHERE id = {k} ({mode}): expected {exp}, got {got}"
    q_ts = "SELECT id, v, n FROM driftdb.as_of(NULL::t, %s::timestamptz)"
    for n in order:
        if n == 0:
            t, exp = h.at[1] - dt.timedelta(seconds=1), []
        else:
            s = min(n, 8)
            t, exp = h.at[s], h.at_seq(s)
            if s < 8 and h.at[s + 1] == t:
                continue  # two commits in one microsecond: the time names both
        got = srt(c.execute(q_ts, (t,), prepare=True).fetchall())
        assert got == exp, f"prepared as_of(t, $1::timestamptz) at {t} ({mode}): expected {exp}, got {got}"
    if mode == "force_generic_plan":
        generic = c.execute(
            "SELECT coalesce(sum(generic_plans), 0) FROM pg_prepared_statements WHERE statement LIKE '%driftdb.as_of%'"
        ).fetchone()[0]
        assert generic > 0, "the prepared statements were never run with a generic plan"


@pytest.mark.parametrize("mode", ["auto", "force_generic_plan"])
def test_prepared_plain_select_follows_the_setting(db, h, mode):
    c = db.connect()
    c.execute(f"SET plan_cache_mode = {mode}")
    c.execute("PREPARE p(int) AS SELECT v FROM t WHERE id = $1")
    c.execute("PREPARE q AS SELECT count(*), sum(n) FROM t")
    cur = {r[0]: r for r in h.current()}
    for _ in range(7):
        assert c.execute("EXECUTE p(2)").fetchall() == [(cur[2][1],)]
        assert c.execute("EXECUTE q").fetchone() == (len(cur), sum(r[2] for r in cur.values()))
    for n in (1, 3, 5):
        old = {r[0]: r for r in h.at_seq(n)}
        set_as_of(c, f"@seq:{n}")
        for k in (2, 3, 50):
            exp = [(old[k][1],)] if k in old else []
            got = c.execute(f"EXECUTE p({k})").fetchall()
            assert got == exp, f"cached plan for id = {k} under @seq:{n} ({mode}): expected {exp}, got {got}"
        assert c.execute("EXECUTE q").fetchone() == (len(old), sum(r[2] for r in old.values())), (
            f"cached count(*)/sum(n) under @seq:{n}")
    c.execute("RESET driftdb.as_of")
    assert c.execute("EXECUTE p(2)").fetchall() == [(cur[2][1],)], "after RESET the cached plan reads the current state"
    assert c.execute("EXECUTE q").fetchone() == (len(cur), sum(r[2] for r in cur.values()))
    # and the other way round: prepared and run under the setting, then RESET
    set_as_of(c, "@seq:1")
    c.execute("PREPARE r(int) AS SELECT v FROM t WHERE id = $1")
    for _ in range(7):
        assert c.execute("EXECUTE r(2)").fetchall() == [("v2",)]
    c.execute("RESET driftdb.as_of")
    assert c.execute("EXECUTE r(2)").fetchall() == [("two",)], "a plan made under the setting kept it after RESET"
    assert c.execute("EXECUTE r(5)").fetchall() == []


def test_plpgsql_cached_plans_follow_the_setting(conn, h):
    conn.execute("""
        CREATE FUNCTION v_of(k int) RETURNS text LANGUAGE plpgsql STABLE AS $$
        DECLARE r text;
        BEGIN
          SELECT v INTO r FROM t WHERE id = k;
          RETURN r;
        END $$""")
    conn.execute("""
        CREATE FUNCTION total() RETURNS bigint LANGUAGE plpgsql STABLE AS $$
        BEGIN
          RETURN (SELECT sum(n) FROM t);
        END $$""")
    conn.execute("CREATE FUNCTION sql_count() RETURNS bigint LANGUAGE sql STABLE AS 'SELECT count(*) FROM t'")
    cur = {r[0]: r for r in h.current()}
    for _ in range(8):
        assert conn.execute("SELECT v_of(2), v_of(50), total(), sql_count()").fetchone() == (
            cur[2][1], cur[50][1], sum(r[2] for r in cur.values()), len(cur))
    for n in (1, 4, 2):
        old = {r[0]: r for r in h.at_seq(n)}
        set_as_of(conn, f"@seq:{n}")
        exp = (old[2][1], old[50][1] if 50 in old else None, sum(r[2] for r in old.values()), len(old))
        got = conn.execute("SELECT v_of(2), v_of(50), total(), sql_count()").fetchone()
        assert got == exp, f"plpgsql/sql functions under @seq:{n}: expected {exp}, got {got}"
    conn.execute("RESET driftdb.as_of")
    assert conn.execute("SELECT v_of(2), v_of(50), total(), sql_count()").fetchone() == (
        cur[2][1], cur[50][1], sum(r[2] for r in cur.values()), len(cur)), "after RESET"


def test_set_local_ends_with_the_transaction(conn, h):
    conn.execute("BEGIN")
    set_as_of(conn, "@seq:1", local=True)
    assert h.read() == h.at_seq(1)
    conn.execute("COMMIT")
    assert h.read() == h.current(), "SET LOCAL driftdb.as_of outlived COMMIT"
    conn.execute("BEGIN")
    set_as_of(conn, "@seq:2", local=True)
    assert h.read() == h.at_seq(2)
    conn.execute("ROLLBACK")
    assert h.read() == h.current(), "SET LOCAL driftdb.as_of outlived ROLLBACK"
    # a session-level SET inside a transaction that rolls back is undone too
    conn.execute("BEGIN")
    set_as_of(conn, "@seq:3")
    assert h.read() == h.at_seq(3)
    conn.execute("ROLLBACK")
    assert h.read() == h.current(), "SET driftdb.as_of in a rolled-back transaction stayed"
    # SET LOCAL overrides a session setting and gives it back at COMMIT
    set_as_of(conn, "@seq:4")
    conn.execute("BEGIN")
    set_as_of(conn, "@seq:1", local=True)
    assert h.read() == h.at_seq(1)
    conn.execute("COMMIT")
    assert h.read() == h.at_seq(4)
    conn.execute("RESET driftdb.as_of")
    assert h.read() == h.current()


def test_set_to_a_timestamp(conn, h):
    for s in h.seqs:
        set_as_of(conn, ts_literal(h.at[s]))
        later = [q for q in h.seqs if h.at[q] <= h.at[s]]
        assert h.read() == h.at_seq(max(later)), f"SET driftdb.as_of = committed_at of seq {s}"
    # other spellings of the same instant, whatever the session's TimeZone
    conn.execute("SET TimeZone = 'America/New_York'")
    t4 = h.at[4]
    for lit in (t4.astimezone(dt.timezone(dt.timedelta(hours=5, minutes=30))).isoformat(),
                t4.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f UTC")):
        set_as_of(conn, lit)
        if h.at[5] != t4:
            assert h.read() == h.at_seq(4), f"SET driftdb.as_of = {lit!r}"
    set_as_of(conn, ts_literal(h.at[1] - dt.timedelta(microseconds=1)))
    assert h.read() == [], "before the first commit"
    set_as_of(conn, ts_literal(dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)))
    assert h.read() == h.current(), "a time in the future"
    conn.execute("RESET driftdb.as_of")


# --------------------------------------------------------------------------------------------
# Writes under the setting
# --------------------------------------------------------------------------------------------

WRITES = {
    "insert": "INSERT INTO t VALUES (100, 'x', 1)",
    "insert on conflict": "INSERT INTO t VALUES (1, 'x', 1) ON CONFLICT (id) DO UPDATE SET v = excluded.v",
    "update": "UPDATE t SET v = 'x' WHERE id = 1",
    "delete": "DELETE FROM t WHERE id = 1",
    "truncate": "TRUNCATE t",
    "merge": "MERGE INTO t USING (VALUES (1)) s(id) ON t.id = s.id WHEN MATCHED THEN UPDATE SET v = 'm'",
}


def _copy_in(conn):
    with conn.cursor() as cur:
        with cur.copy("COPY t (id, v, n) FROM STDIN") as cp:
            cp.write_row((101, "copied", 1))


@pytest.mark.parametrize("setting", ["@seq:3", "timestamp"])
def test_writes_refused_under_the_setting(conn, h, setting):
    conn.execute("CREATE TABLE h (id int PRIMARY KEY, v text) USING heap")
    conn.execute("INSERT INTO h VALUES (1, 'heap')")
    seq0 = conn.execute("SELECT driftdb.current_seq()").fetchone()[0]
    value = "@seq:3" if setting == "@seq:3" else ts_literal(h.at[3])
    hist = h.at_seq(3)
    set_as_of(conn, value)
    try:
        for name, stmt in WRITES.items():
            res = outcome(conn, stmt)
            assert res == ("error", "25006"), f"{name} under driftdb.as_of = {value!r}: {res}"
        try:
            _copy_in(conn)
            raise AssertionError(f"COPY FROM STDIN under driftdb.as_of = {value!r} succeeded")
        except psycopg.Error as e:
            assert e.sqlstate == "25006", f"COPY FROM STDIN: {e.sqlstate} {e}"
        # also inside an explicit transaction, and with SET LOCAL
        conn.execute("BEGIN")
        res = outcome(conn, WRITES["update"])
        conn.execute("ROLLBACK")
        assert res == ("error", "25006"), res
        # reads still work, and see the setting
        assert h.read() == hist
        # heap tables stay writable and readable, and a heap write may read t's history
        conn.execute("INSERT INTO h VALUES (2, 'heap2')")
        conn.execute("UPDATE h SET v = 'heap1' WHERE id = 1")
        conn.execute("CREATE TABLE h_copy AS SELECT id, v FROM t")
        conn.execute("INSERT INTO h SELECT id + 1000, v FROM t")
        assert conn.execute("SELECT id, v FROM h ORDER BY id").fetchall() == (
            [(1, "heap1"), (2, "heap2")] + [(r[0] + 1000, r[1]) for r in hist])
        assert srt(conn.execute("SELECT id, v FROM h_copy").fetchall()) == srt((r[0], r[1]) for r in hist)
        got = conn.execute("SELECT t.id, h.v FROM t JOIN h ON h.id = t.id ORDER BY 1").fetchall()
        assert got == [(r[0], "heap1" if r[0] == 1 else "heap2") for r in hist if r[0] in (1, 2)]
    finally:
        conn.execute("RESET driftdb.as_of")
    conn.execute("BEGIN")
    set_as_of(conn, value, local=True)
    res = outcome(conn, WRITES["delete"])
    conn.execute("ROLLBACK")
    assert res == ("error", "25006"), f"DELETE under SET LOCAL: {res}"
    # nothing was written, no seq was drawn
    assert h.read() == h.current()
    assert conn.execute("SELECT driftdb.current_seq()").fetchone()[0] == seq0
    # and after RESET the table is writable again
    assert h.commit(WRITES["update"], upsert={1: (1, "x", h.rows[1][2])}) is not None
    assert h.read() == h.current()


# --------------------------------------------------------------------------------------------
# Garbage settings
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["yesterday-ish", "@seq:abc", "@seq:-1", "@seq:", "not a time at all"])
def test_garbage_setting_rejected(conn, h, value):
    set_as_of(conn, "@seq:2")
    res = outcome(conn, sql.SQL("SET driftdb.as_of = {}").format(sql.Literal(value)))
    assert res == ("error", "22023"), f"SET driftdb.as_of = {value!r}: {res}"
    assert h.read() == h.at_seq(2), "a rejected SET changed the setting"
    res = outcome(conn, "SELECT set_config('driftdb.as_of', %s, false)", (value,))
    assert res == ("error", "22023"), f"set_config('driftdb.as_of', {value!r}): {res}"
    conn.execute("BEGIN")
    res = outcome(conn, sql.SQL("SET LOCAL driftdb.as_of = {}").format(sql.Literal(value)))
    conn.execute("ROLLBACK")
    assert res == ("error", "22023"), f"SET LOCAL driftdb.as_of = {value!r}: {res}"
    conn.execute("RESET driftdb.as_of")
    assert h.read() == h.current()


def test_garbage_setting_in_connection_options_rejected(db, h):
    with pytest.raises(psycopg.Error) as ei:
        db.connect(options="'-c driftdb.as_of=@seq:abc'")
    assert ei.value.sqlstate in (None, "22023"), ei.value  # libpq may not carry the code of a startup error
    assert "driftdb.as_of" in str(ei.value)
    c = db.connect(options="'-c driftdb.as_of=@seq:2'")
    assert h.read(c) == h.at_seq(2), "a session started with driftdb.as_of=@seq:2"


# --------------------------------------------------------------------------------------------
# Index scans under the setting
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("plan", ["indexscan", "bitmapscan", "indexonlyscan"])
def test_index_scans_read_history(conn, plan):
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text, n int NOT NULL) USING driftdb")
    conn.execute("CREATE INDEX t_n ON t (n)")
    s1 = commit_tx(conn, "INSERT INTO t SELECT g, 'v' || g, g FROM generate_series(1, 2000) g")[0]
    # move half the rows' n out of the old range, delete some, insert new ones with big n
    commit_tx(conn, "UPDATE t SET n = n + 100000 WHERE id <= 1000",
              "DELETE FROM t WHERE id BETWEEN 1500 AND 1600",
              "INSERT INTO t SELECT g, 'new' || g, 500000 + g FROM generate_series(3001, 3010) g")
    conn.execute("VACUUM ANALYZE t")  # all-visible pages: index-only scans possible for current reads
    conn.execute("SET enable_seqscan = off")
    if plan == "indexscan":
        conn.execute("SET enable_bitmapscan = off")
        conn.execute("SET enable_indexonlyscan = off")
    elif plan == "bitmapscan":
        conn.execute("SET enable_indexscan = off")
        conn.execute("SET enable_indexonlyscan = off")
    else:
        conn.execute("SET enable_bitmapscan = off")
    checks = [
        ("SELECT id FROM t WHERE n = 50", [(50,)]),
        ("SELECT id FROM t WHERE n = 100050", []),
        ("SELECT id FROM t WHERE n BETWEEN 1495 AND 1605 ORDER BY id", [(i,) for i in range(1495, 1606)]),
        ("SELECT n FROM t WHERE n BETWEEN 995 AND 1005 ORDER BY n", [(i,) for i in range(995, 1006)]),
        ("SELECT count(*) FROM t", [(2000,)]),
        ("SELECT count(*) FROM t WHERE n > 1000", [(1000,)]),
        ("SELECT min(n), max(n) FROM t", [(1, 2000)]),
        ("SELECT id FROM t ORDER BY n DESC LIMIT 3", [(2000,), (1999,), (1998,)]),
        ("SELECT v FROM t WHERE id = 1550", [("v1550",)]),
        ("SELECT v FROM t WHERE id = 3005", []),
        ("SELECT id FROM t WHERE id = ANY('{10, 1550, 3005}'::int[]) ORDER BY id", [(10,), (1550,)]),
    ]
    current = {
        "SELECT id FROM t WHERE n = 100050": [(50,)],
        "SELECT count(*) FROM t": [(2000 - 101 + 10,)],
        "SELECT min(n), max(n) FROM t": [(1001, 503010)],
    }
    for q, _exp in checks:
        if q in current:
            assert conn.execute(q).fetchall() == current[q], f"current: {q}"
    set_as_of(conn, f"@seq:{s1}")
    try:
        bad = []
        for q, exp in checks:
            got = conn.execute(q).fetchall()
            if got != exp:
                bad.append(f"  {q}\n    expected {exp[:8]}{'...' if len(exp) > 8 else ''}\n"
                           f"    got      {got[:8]}{'...' if len(got) > 8 else ''}\n    plan: "
                           + explain(conn, q).replace("\n", " | "))
        assert not bad, f"reads under driftdb.as_of = '@seq:{s1}' with {plan} preferred:\n" + "\n".join(bad)
        # the function form with the same planner settings
        got = conn.execute(f"SELECT id FROM driftdb.as_of(NULL::t, {s1}::bigint) WHERE n = 50").fetchall()
        assert got == [(50,)]
        got = conn.execute(f"SELECT count(*), min(n), max(n) FROM driftdb.as_of(NULL::t, {s1}::bigint)").fetchall()
        assert got == [(2000, 1, 2000)]
    finally:
        conn.execute("RESET driftdb.as_of")
    for q, _exp in checks:
        if q in current:
            assert conn.execute(q).fetchall() == current[q], f"current after RESET: {q}"


# --------------------------------------------------------------------------------------------
# Edges of the contract
# --------------------------------------------------------------------------------------------


def test_as_of_before_the_table_existed(conn):
    conn.execute("CREATE TABLE other (id int PRIMARY KEY) USING driftdb")
    s1, t1 = commit_tx(conn, "INSERT INTO other VALUES (1)")
    s2, t2 = commit_tx(conn, "INSERT INTO other VALUES (2)")
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text) USING driftdb")
    s3, t3 = commit_tx(conn, "INSERT INTO t VALUES (1, 'a')")
    for n in (0, s1, s2):
        assert conn.execute("SELECT * FROM driftdb.as_of(NULL::t, %s::bigint)", (n,)).fetchall() == [], n
    for t in (t1, t2, t1 - dt.timedelta(days=3650)):
        assert conn.execute("SELECT * FROM driftdb.as_of(NULL::t, %s::timestamptz)", (t,)).fetchall() == [], t
    assert conn.execute("SELECT * FROM driftdb.as_of(NULL::t, '-infinity'::timestamptz)").fetchall() == []
    assert conn.execute("SELECT * FROM driftdb.as_of(NULL::t, %s::bigint)", (s3,)).fetchall() == [(1, "a")]
    set_as_of(conn, f"@seq:{s2}")
    try:
        assert conn.execute("SELECT * FROM t").fetchall() == []
        assert conn.execute("SELECT * FROM other ORDER BY id").fetchall() == [(1,), (2,)]
    finally:
        conn.execute("RESET driftdb.as_of")


def test_as_of_beyond_now_is_current(conn, h):
    cur = h.current()
    for n in (8, 9, 1000, 2**62):
        assert h.as_of(n) == cur, f"seq {n}"
    for t in (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1), "infinity"):
        assert srt(conn.execute("SELECT id, v, n FROM driftdb.as_of(NULL::t, %s::timestamptz)", (t,)).fetchall()) == cur
    set_as_of(conn, "@seq:1000")
    try:
        assert h.read() == cur
    finally:
        conn.execute("RESET driftdb.as_of")


def test_as_of_seq_zero_is_empty(conn, h):
    assert h.as_of(0) == []


@pytest.mark.parametrize("call", [
    "SELECT * FROM driftdb.as_of(NULL::h, 1::bigint)",
    "SELECT * FROM driftdb.as_of(NULL::h, now())",
    "SELECT * FROM driftdb.versions(NULL::h)",
    "SELECT * FROM driftdb.changes(NULL::h)",
    "SELECT * FROM driftdb.as_of(NULL::hv, 1::bigint)",
    "SELECT * FROM driftdb.versions(NULL::hv)",
    "SELECT * FROM driftdb.as_of(NULL::ct, 1::bigint)",
])
def test_non_driftdb_table_refused(conn, h, call):
    conn.execute("CREATE TABLE h (id int PRIMARY KEY, v text) USING heap")
    conn.execute("INSERT INTO h VALUES (1, 'x')")
    conn.execute("CREATE VIEW hv AS SELECT * FROM t")
    conn.execute("CREATE TYPE ct AS (id int, v text)")
    assert outcome(conn, call) == ("error", "42809"), call


@pytest.mark.parametrize("call,params", [
    ("SELECT * FROM driftdb.as_of(NULL::t, NULL::bigint)", None),
    ("SELECT * FROM driftdb.as_of(NULL::t, NULL::timestamptz)", None),
    ("SELECT * FROM driftdb.as_of(NULL::t, %s::bigint)", (None,)),
    ("SELECT * FROM driftdb.as_of(NULL::t, %s::timestamptz)", (None,)),
])
def test_null_time_refused(conn, h, call, params):
    assert outcome(conn, call, params) == ("error", "22004"), call


@pytest.mark.parametrize("n", [-1, -9223372036854775808])
def test_negative_seq_refused(conn, h, n):
    assert outcome(conn, "SELECT * FROM driftdb.as_of(NULL::t, %s::bigint)", (n,)) == ("error", "22003"), n


# --------------------------------------------------------------------------------------------
# versions / changes on a hand-made history
# --------------------------------------------------------------------------------------------


def test_versions_and_changes_of_a_small_history(conn):
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text) USING driftdb")
    s1 = commit_tx(conn, "INSERT INTO t VALUES (1, 'a'), (2, 'b')")[0]
    s2 = commit_tx(conn,
                   "INSERT INTO t VALUES (3, 'c')", "UPDATE t SET v = 'c2' WHERE id = 3",  # one insert
                   "UPDATE t SET v = 'a2' WHERE id = 1", "UPDATE t SET v = 'a3' WHERE id = 1",  # one update
                   "UPDATE t SET v = 'b' WHERE id = 2")[0]  # no change
    assert commit_tx(conn, "UPDATE t SET v = v") is None, "a transaction changing nothing got a seq"
    assert commit_tx(conn, "INSERT INTO t VALUES (9, 'tmp')", "DELETE FROM t WHERE id = 9") is None
    s3 = commit_tx(conn, "DELETE FROM t WHERE id = 2", "UPDATE t SET id = 10 WHERE id = 1")[0]
    s4 = commit_tx(conn, "TRUNCATE t", "INSERT INTO t VALUES (20, 'z')")[0]
    assert [s1, s2, s3, s4] == sorted({s1, s2, s3, s4})
    at = dict(conn.execute("SELECT seq, committed_at FROM driftdb.transactions").fetchall())
    got = conn.execute(
        "SELECT (v.data).id, (v.data).v, v.seq_start, v.seq_end, v.system_time_start = c1.committed_at, "
        "CASE WHEN v.seq_end IS NULL THEN v.system_time_end = 'infinity' ELSE v.system_time_end = c2.committed_at END "
        "FROM driftdb.versions(NULL::t) v "
        "LEFT JOIN driftdb.transactions c1 ON c1.seq = v.seq_start "
        "LEFT JOIN driftdb.transactions c2 ON c2.seq = v.seq_end ORDER BY 1, 3").fetchall()
    exp = [
        (1, "a", s1, s2, True, True), (1, "a3", s2, s3, True, True),
        (2, "b", s1, s3, True, True),
        (3, "c2", s2, s4, True, True),
        (10, "a3", s3, s4, True, True),
        (20, "z", s4, None, True, True),
    ]
    assert got == exp, f"versions:\n  expected {exp}\n  got      {got}"
    # (v.data).* expands the row
    cur = conn.execute("SELECT (v.data).* FROM driftdb.versions(NULL::t) v WHERE v.seq_end IS NULL").fetchall()
    assert cur == [(20, "z")]
    got = conn.execute(
        "SELECT seq, operation, (old_data).id, (old_data).v, (new_data).id, (new_data).v, "
        "old_data IS NULL, new_data IS NULL, committed_by, committed_at FROM driftdb.changes(NULL::t)").fetchall()
    assert all(r[9] == at[r[0]] for r in got), "changes.committed_at differs from the commit's time"
    assert all(r[8] == "postgres" for r in got), [r[8] for r in got]
    got = sorted((r[:8] for r in got), key=repr)
    exp = sorted([
        (s1, "INSERT", None, None, 1, "a", True, False), (s1, "INSERT", None, None, 2, "b", True, False),
        (s2, "INSERT", None, None, 3, "c2", True, False), (s2, "UPDATE", 1, "a", 1, "a3", False, False),
        (s3, "DELETE", 2, "b", None, None, False, True), (s3, "UPDATE", 1, "a3", 10, "a3", False, False),
        (s4, "TRUNCATE", None, None, None, None, True, True), (s4, "INSERT", None, None, 20, "z", True, False),
    ], key=repr)
    assert got == exp, "changes:\n  expected " + "\n    ".join(map(repr, exp)) + "\n  got      " + "\n    ".join(map(repr, got))
    # versions and changes of an empty (never written) driftdb table
    conn.execute("CREATE TABLE e (id int PRIMARY KEY) USING driftdb")
    assert conn.execute("SELECT count(*) FROM driftdb.versions(NULL::e)").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM driftdb.changes(NULL::e)").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM driftdb.as_of(NULL::e, 1000::bigint)").fetchone() == (0,)


def test_committed_by_is_the_role_at_commit(db, conn, roles):
    w = roles("writer")
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text) USING driftdb")
    conn.execute(f'GRANT SELECT, INSERT, UPDATE ON t TO "{w}"')
    c = db.connect(user=w)
    cur_seq = lambda: conn.execute("SELECT driftdb.current_seq()").fetchone()[0]  # noqa: E731
    c.execute("INSERT INTO t VALUES (1, 'by writer')")
    s1 = cur_seq()
    conn.execute(f'SET ROLE "{w}"')
    conn.execute("UPDATE t SET v = 'set role' WHERE id = 1")
    conn.execute("RESET ROLE")
    s2 = cur_seq()
    conn.execute("INSERT INTO t VALUES (2, 'by postgres')")
    s3 = cur_seq()
    assert s1 < s2 < s3
    got = conn.execute("SELECT seq, committed_by FROM driftdb.changes(NULL::t) ORDER BY seq").fetchall()
    assert got == [(s1, w), (s2, w), (s3, "postgres")]


# --------------------------------------------------------------------------------------------
# History across ADD / DROP / RENAME COLUMN
# --------------------------------------------------------------------------------------------


def test_column_added_later_reads_its_default_in_history(conn):
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text) USING driftdb")
    s1 = commit_tx(conn, "INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c')")[0]
    s2 = commit_tx(conn, "DELETE FROM t WHERE id = 3")[0]
    conn.execute("ALTER TABLE t ADD COLUMN c int DEFAULT 7")
    s3 = commit_tx(conn, "INSERT INTO t VALUES (4, 'd', 1)", "UPDATE t SET c = 2 WHERE id = 1")[0]
    got = conn.execute("SELECT id, v, c FROM driftdb.as_of(NULL::t, %s::bigint) ORDER BY id", (s1,)).fetchall()
    assert [r[:2] for r in got] == [(1, "a"), (2, "b"), (3, "c")], got
    assert [r[2] for r in got[:2]] == [7, 7], f"rows that existed at ADD COLUMN must read c = 7 before it: {got}"
    got = conn.execute("SELECT id, v, c FROM driftdb.as_of(NULL::t, %s::bigint) ORDER BY id", (s2,)).fetchall()
    assert got == [(1, "a", 7), (2, "b", 7)]
    got = conn.execute("SELECT id, v, c FROM driftdb.as_of(NULL::t, %s::bigint) ORDER BY id", (s3,)).fetchall()
    assert got == [(1, "a", 2), (2, "b", 7), (4, "d", 1)]
    set_as_of(conn, f"@seq:{s2}")
    try:
        assert conn.execute("SELECT id, v, c FROM t ORDER BY id").fetchall() == [(1, "a", 7), (2, "b", 7)]
        assert conn.execute("SELECT id FROM t WHERE c = 7 ORDER BY id").fetchall() == [(1,), (2,)]
    finally:
        conn.execute("RESET driftdb.as_of")
    got = conn.execute("SELECT (v.data).id, (v.data).c, v.seq_start, v.seq_end FROM driftdb.versions(NULL::t) v "
                       "WHERE (v.data).id IN (1, 2) ORDER BY 1, 3").fetchall()
    assert got == [(1, 7, s1, s3), (1, 2, s3, None), (2, 7, s1, None)], (
        f"versions across ADD COLUMN (the ALTER itself is no new version): {got}")


def test_dropped_column_disappears_from_history(conn):
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, a text, b int, c text) USING driftdb")
    s1 = commit_tx(conn, "INSERT INTO t VALUES (1, 'a1', 100, 'c1'), (2, 'a2', 200, 'c2')")[0]
    s2 = commit_tx(conn, "UPDATE t SET b = 101 WHERE id = 1")[0]  # a change of the dropped column only
    conn.execute("ALTER TABLE t DROP COLUMN b")
    s3 = commit_tx(conn, "UPDATE t SET c = 'c2x' WHERE id = 2")[0]
    cols = [d.name for d in conn.execute(f"SELECT * FROM driftdb.as_of(NULL::t, {s1}::bigint)").description]
    assert cols == ["id", "a", "c"]
    for n, exp in [(s1, [(1, "a1", "c1"), (2, "a2", "c2")]), (s2, [(1, "a1", "c1"), (2, "a2", "c2")]),
                   (s3, [(1, "a1", "c1"), (2, "a2", "c2x")])]:
        got = conn.execute("SELECT * FROM driftdb.as_of(NULL::t, %s::bigint) ORDER BY id", (n,)).fetchall()
        assert got == exp, f"as of seq {n}: expected {exp}, got {got}"
    assert outcome(conn, f"SELECT b FROM driftdb.as_of(NULL::t, {s1}::bigint)")[1] == "42703"
    # a new column with the dropped one's name does not bring the old values back
    conn.execute("ALTER TABLE t ADD COLUMN b int DEFAULT 9")
    got = conn.execute("SELECT id, b FROM driftdb.as_of(NULL::t, %s::bigint) ORDER BY id", (s1,)).fetchall()
    assert got == [(1, 9), (2, 9)], f"the dropped column's values resurfaced under the new column b: {got}"
    set_as_of(conn, f"@seq:{s1}")
    try:
        assert conn.execute("SELECT * FROM t ORDER BY id").fetchall() == [(1, "a1", "c1", 9), (2, "a2", "c2", 9)]
    finally:
        conn.execute("RESET driftdb.as_of")
    got = conn.execute("SELECT (v.data).*, v.seq_start FROM driftdb.versions(NULL::t) v ORDER BY 1, 5").fetchall()
    # row 1's change of b alone may or may not stay a version boundary; the data must not show b
    assert {r[:4] for r in got} == {(1, "a1", "c1", 9), (2, "a2", "c2", 9), (2, "a2", "c2x", 9)}, got


def test_renamed_column_readable_under_the_new_name(conn):
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text) USING driftdb")
    s1 = commit_tx(conn, "INSERT INTO t VALUES (1, 'old1'), (2, 'old2')")[0]
    s2 = commit_tx(conn, "UPDATE t SET v = 'mid1' WHERE id = 1")[0]
    conn.execute("ALTER TABLE t RENAME COLUMN v TO w")
    s3 = commit_tx(conn, "UPDATE t SET w = 'new2' WHERE id = 2")[0]
    assert conn.execute("SELECT id, w FROM driftdb.as_of(NULL::t, %s::bigint) ORDER BY id", (s1,)).fetchall() == [
        (1, "old1"), (2, "old2")]
    assert conn.execute("SELECT id, w FROM driftdb.as_of(NULL::t, %s::bigint) ORDER BY id", (s3,)).fetchall() == [
        (1, "mid1"), (2, "new2")]
    set_as_of(conn, f"@seq:{s2}")
    try:
        assert conn.execute("SELECT id, w FROM t ORDER BY id").fetchall() == [(1, "mid1"), (2, "old2")]
        assert conn.execute("SELECT id FROM t WHERE w = 'old2'").fetchall() == [(2,)]
    finally:
        conn.execute("RESET driftdb.as_of")
    got = conn.execute("SELECT (v.data).w, v.seq_start FROM driftdb.versions(NULL::t) v WHERE (v.data).id = 1 "
                       "ORDER BY 2").fetchall()
    assert got == [("old1", s1), ("mid1", s2)]
    got = conn.execute("SELECT (old_data).w, (new_data).w FROM driftdb.changes(NULL::t) WHERE seq = %s", (s3,)).fetchall()
    assert got == [("old2", "new2")]


# --------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------


def test_explain_shows_the_driftdb_scan(conn, h):
    plan = explain(conn, "SELECT * FROM driftdb.as_of(NULL::t, 5::bigint) WHERE id = 3")
    assert "DriftDB" in plan, plan
    # and it runs
    assert conn.execute("SELECT * FROM driftdb.as_of(NULL::t, 5::bigint) WHERE id = 3").fetchall() == []
    assert conn.execute("SELECT v FROM driftdb.as_of(NULL::t, 2::bigint) WHERE id = 3").fetchall() == [("v3",)]
    # EXPLAIN ANALYZE executes it
    rows = conn.execute("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) "
                        "SELECT * FROM driftdb.as_of(NULL::t, 5::bigint)").fetchall()
    assert "DriftDB" in "\n".join(r[0] for r in rows)
