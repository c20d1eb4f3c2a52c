"""Time travel (issue 4, item 7): range and set predicates pushed into the history scan.

* ``driftdb.as_of(NULL::t, x) WHERE id BETWEEN a AND b`` (and ``<``, ``<=``, ``>``, ``>=``)
  on a one-column integer identity reads only the events filed under keys in the range (the
  key index, and the compacted segments whose key range overlaps);
* ``WHERE id IN (...)`` / ``id = ANY(array)`` looks each key up;
* ``driftdb.versions(NULL::t) WHERE seq_start > a AND seq_end <= b`` (SQL:2011 CONTAINED IN,
  and the time columns likewise) replays only the events of seqs (a, b].

Every expectation comes from the test's own committed writes: a dict ``id -> v`` kept after
every commit (``states[seq]``), never from driftdb's output. The history has negative keys
and keys on both sides of MessagePack's 1-, 2- and 4-byte integer forms, key changes, deletes
and re-inserts, a TRUNCATE, and is half compacted into segments with a snapshot in between,
so the reads merge the events table, the segments and the snapshot.
"""
from __future__ import annotations

import os
import random

import psycopg
import pytest

from conftest import explain, module_database

SEED = int(os.environ.get("TT_RANGE_SEED", "20261122"))
N_TX = 70

# keys near the edges of MessagePack's integer encodings, negative ones among them
EDGE_KEYS = [-70000, -129, -128, -33, -32, -1, 0, 1, 127, 128, 255, 256, 65535, 65536, 2**31 - 2, 2**31 - 1]


class History:
    """The table ``rk (id int PRIMARY KEY, v int, pad text)`` and its model after every seq."""

    def __init__(self, conn, rnd: random.Random):
        self.conn, self.rnd = conn, rnd
        self.live: dict[int, int] = {}
        self.states: dict[int, dict[int, int]] = {0: {}}
        self.at: dict[int, object] = {}
        self.seqs: list[int] = []
        self.tok = 0

    def _token(self) -> int:
        self.tok += 1
        return self.tok

    def commit(self, stmts: list, work: dict) -> None:
        c = self.conn
        c.execute("BEGIN")
        for s, p in stmts:
            c.execute(s, p)
        c.execute("COMMIT")
        seq, at = c.execute(
            "SELECT seq, committed_at FROM driftdb.transactions ORDER BY seq DESC LIMIT 1").fetchone()
        assert not self.seqs or seq > self.seqs[-1], "every test transaction changes rows: it must get a seq"
        self.live = work
        self.states[seq] = dict(work)
        self.at[seq] = at
        self.seqs.append(seq)

    def load(self) -> None:
        keys = sorted(set(range(0, 3000)) | set(range(-300, 0, 7)) | set(EDGE_KEYS))
        work = {k: self._token() for k in keys}
        self.commit([("INSERT INTO rk SELECT k, v, repeat('p', 40) FROM unnest(%s::int[], %s::int[]) AS u(k, v)",
                      (list(work), list(work.values())))], work)

    def transaction(self) -> None:
        rnd, work, stmts = self.rnd, dict(self.live), []
        for _ in range(rnd.randrange(1, 4)):
            roll = rnd.random()
            keys = sorted(work)
            if roll < 0.45 and keys:  # update a run of keys
                a = rnd.choice(keys)
                b = a + rnd.randrange(0, 30)
                t = self._token()
                stmts.append(("UPDATE rk SET v = %s WHERE id BETWEEN %s AND %s", (t, a, b)))
                for k in keys:
                    if a <= k <= b:
                        work[k] = t
            elif roll < 0.6 and keys:  # delete a few
                gone = rnd.sample(keys, min(len(keys), rnd.randrange(1, 6)))
                stmts.append(("DELETE FROM rk WHERE id = ANY(%s)", (gone,)))
                for k in gone:
                    del work[k]
            elif roll < 0.8:  # insert (or re-insert) keys, edge keys among them
                cand = [rnd.choice(EDGE_KEYS), rnd.randrange(-400, 3200), rnd.randrange(60000, 70000)]
                new = {k: self._token() for k in cand if k not in work}
                if new:
                    stmts.append(("INSERT INTO rk SELECT k, v, 'n' FROM unnest(%s::int[], %s::int[]) AS u(k, v)",
                                  (list(new), list(new.values()))))
                    work.update(new)
            elif keys:  # change a key
                old = rnd.choice(keys)
                new = rnd.choice([rnd.randrange(-400, 3200), rnd.choice(EDGE_KEYS)])
                if new not in work:
                    stmts.append(("UPDATE rk SET id = %s WHERE id = %s", (new, old)))
                    work[new] = work.pop(old)
        if not stmts or work == self.live:
            t, k = self._token(), min(work) if work else None
            if k is None:
                stmts.append(("INSERT INTO rk VALUES (1, %s, 'n')", (t,)))
                work[1] = t
            else:
                stmts.append(("UPDATE rk SET v = %s WHERE id = %s", (t, k)))
                work[k] = t
        self.commit(stmts, work)

    def truncate_and_reload(self) -> None:
        work = {k: self._token() for k in range(100, 1100)}
        self.commit([("TRUNCATE rk", None),
                     ("INSERT INTO rk SELECT k, v, 'r' FROM unnest(%s::int[], %s::int[]) AS u(k, v)",
                      (list(work), list(work.values())))], work)

    def state_at(self, n: int) -> dict:
        best = max((s for s in self.states if s <= n), default=0)
        return self.states[best]

    def versions(self) -> list:
        """[(seq_start, seq_end | None, id, v)] from the per-seq states."""
        out, prev, start = [], {}, {}
        for seq in self.seqs:
            cur = self.states[seq]
            for k in set(prev) | set(cur):
                if prev.get(k) != cur.get(k):
                    if k in prev:
                        out.append((start.pop(k), seq, k, prev[k]))
                    if k in cur:
                        start[k] = seq
            prev = cur
        out.extend((s, None, k, prev[k]) for k, s in start.items())
        return sorted(out, key=repr)


@pytest.fixture(scope="module")
def hist(pg_cluster):
    with module_database(pg_cluster, "t_tt_ranges") as conn:
        conn.execute("CREATE TABLE rk (id int PRIMARY KEY, v int NOT NULL, pad text) USING driftdb")
        h = History(conn, random.Random(SEED))
        h.load()
        for i in range(N_TX):
            h.transaction()
            if i == N_TX // 3:
                # the older half of history moves into segments; a snapshot lands in between
                conn.execute("SELECT * FROM driftdb.compact('rk', '0s')")
                conn.execute("SELECT driftdb.snapshot('rk')")
            if i == N_TX // 2:
                h.truncate_and_reload()
        conn.execute("ANALYZE rk")
        yield h


def _expected(h: History, n: int, pred) -> list:
    return sorted((k, v) for k, v in h.state_at(n).items() if pred(k))


def _ranges(h: History, rnd: random.Random) -> list:
    """(SQL condition on id, params, python predicate): narrow ranges of each form, ranges over
    negative keys and the encoding edges, and one covering the whole table."""
    keys = sorted(h.live) or [0]
    a = rnd.choice(keys)
    b = a + rnd.randrange(0, 40)
    c = rnd.randrange(-400, 3200)
    e = rnd.choice(EDGE_KEYS)
    return [
        ("id BETWEEN %s AND %s", (a, b), lambda k: a <= k <= b),
        ("id >= %s AND id < %s", (c, c + 25), lambda k: c <= k < c + 25),
        ("id > %s AND id <= %s", (c, c + 10), lambda k: c < k <= c + 10),
        ("id BETWEEN %s AND %s", (e - 3, e + 3), lambda k: e - 3 <= k <= e + 3),
        ("id BETWEEN %s AND %s", (-40, 30), lambda k: -40 <= k <= 30),
        ("id < %s", (-120,), lambda k: k < -120),
        ("id > %s", (2**31 - 100,), lambda k: k > 2**31 - 100),
        ("%s <= id AND %s >= id", (a, b), lambda k: a <= k <= b),  # the column on the right
        ("id BETWEEN %s AND %s", (b, a - 1), lambda k: False),  # empty
        ("id > %s", (-10**6,), lambda k: True),  # everything
        ("id >= %s::bigint AND id <= %s::smallint", (a, min(b, 32767)), lambda k: a <= k <= min(b, 32767)),
    ]


def _sets(h: History, rnd: random.Random) -> list:
    keys = sorted(h.live) or [0]
    ks = rnd.sample(keys, min(4, len(keys))) + [rnd.randrange(-500, 3500), rnd.choice(EDGE_KEYS)]
    return [
        ("id = ANY(%s)", (ks,), lambda k: k in ks),
        ("id IN (%s, %s, %s)", tuple(ks[:3]), lambda k: k in ks[:3]),
        ("id = ANY(%s::int[])", ([ks[0], None, ks[0]],), lambda k: k == ks[0]),
    ]


def _as_of(conn, n, cond, params, kind="seq"):
    cast = "bigint" if kind == "seq" else "timestamptz"
    return sorted(conn.execute(
        f"SELECT id, v FROM driftdb.as_of(NULL::rk, %s::{cast}) WHERE {cond}", (n, *params)).fetchall())


def test_history_is_varied(hist):
    assert len(hist.seqs) >= N_TX
    conn = hist.conn
    segs = conn.execute("SELECT count(*) FROM driftdb.segments s JOIN driftdb.tables t USING (table_id) "
                        "WHERE t.relid = 'rk'::regclass AND s.kind = 's'").fetchone()[0]
    assert segs > 0, "the history must be partly compacted for the reads to merge segments"
    assert conn.execute("SELECT count(*) FROM driftdb.changes(NULL::rk) WHERE operation = 'TRUNCATE'").fetchone()[0] == 1


def test_ranges_and_sets_at_every_seq(hist):
    rnd = random.Random(SEED + 1)
    bad = []
    for n in [0] + hist.seqs + [hist.seqs[-1] + 5]:
        for cond, params, pred in _ranges(hist, rnd) + _sets(hist, rnd):
            got = _as_of(hist.conn, n, cond, params)
            exp = _expected(hist, n, pred)
            if got != exp:
                bad.append(f"as of seq {n} WHERE {cond} {params}: expected {len(exp)} rows {exp[:6]}, got {len(got)} {got[:6]}")
    assert not bad, f"{len(bad)} mismatches:\n" + "\n".join(bad[:10])


def test_ranges_by_time_and_under_the_setting(hist):
    rnd = random.Random(SEED + 2)
    conn = hist.conn
    bad = []
    for n in hist.seqs[::7] + hist.seqs[-1:]:
        for cond, params, pred in _ranges(hist, rnd)[:5] + _sets(hist, rnd)[:1]:
            exp = _expected(hist, n, pred)
            got = _as_of(conn, hist.at[n], cond, params, "ts")
            if got != exp:
                bad.append(f"as of the time of seq {n} WHERE {cond} {params}: expected {exp[:6]}, got {got[:6]}")
            conn.execute("BEGIN")
            conn.execute(f"SET LOCAL driftdb.as_of = '@seq:{n}'")
            got = sorted(conn.execute(f"SELECT id, v FROM rk WHERE {cond}", params).fetchall())
            conn.execute("COMMIT")
            if got != exp:
                bad.append(f"SET driftdb.as_of = '@seq:{n}' WHERE {cond} {params}: expected {exp[:6]}, got {got[:6]}")
    assert not bad, "\n".join(bad[:10])


def test_prepared_generic_plans_take_new_bounds(hist):
    """One generic plan, executed with different bounds and seqs: the bounds are evaluated at
    each execution."""
    conn = hist.conn
    conn.execute("SET plan_cache_mode = force_generic_plan")
    try:
        q = "SELECT id, v FROM driftdb.as_of(NULL::rk, %s::bigint) WHERE id BETWEEN %s AND %s"
        rnd = random.Random(SEED + 3)
        for _ in range(25):
            n = rnd.choice(hist.seqs)
            a = rnd.randrange(-300, 3100)
            b = a + rnd.randrange(0, 50)
            got = sorted(conn.execute(q, (n, a, b), prepare=True).fetchall())
            assert got == _expected(hist, n, lambda k: a <= k <= b), f"seq {n} [{a}, {b}]"
        conn.execute("PREPARE rk_range(bigint, int, int) AS "
                     "SELECT id, v FROM driftdb.as_of(NULL::rk, $1) WHERE id BETWEEN $2 AND $3")
        for _ in range(5):
            n = rnd.choice(hist.seqs)
            got = sorted(conn.execute(f"EXECUTE rk_range({n}, 100, 140)").fetchall())
            assert got == _expected(hist, n, lambda k: 100 <= k <= 140), f"seq {n}"
        plan = explain(conn, "EXECUTE rk_range(1, 5, 10)")
        conn.execute("DEALLOCATE rk_range")
        assert "identity key range" in plan, plan
    finally:
        conn.execute("RESET plan_cache_mode")


def test_explain_shows_what_was_pushed_down(hist):
    conn = hist.conn
    n = hist.seqs[len(hist.seqs) // 2]
    p = explain(conn, f"SELECT * FROM driftdb.as_of(NULL::rk, {n}::bigint) WHERE id BETWEEN 10 AND 20")
    assert "DriftDB History Scan" in p and "History Lookup: identity key range: id >= pushed-down value and id <= pushed-down value" in p, p
    p = explain(conn, f"SELECT * FROM driftdb.as_of(NULL::rk, {n}::bigint) WHERE id IN (1, 2, 3)")
    assert "History Lookup: identity key (id) = ANY (pushed-down array)" in p, p
    # most of the table: the full state is cheaper than a key-by-key read
    p = explain(conn, f"SELECT * FROM driftdb.as_of(NULL::rk, {n}::bigint) WHERE id > 5")
    assert "History Lookup: full state" in p, p
    # a bound that is not computable before the scan (another column) is only filtered
    p = explain(conn, f"SELECT * FROM driftdb.as_of(NULL::rk, {n}::bigint) WHERE id BETWEEN v AND v + 1")
    assert "full state" in p, p
    rows = conn.execute(f"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) SELECT * FROM driftdb.as_of(NULL::rk, {n}::bigint) "
                        "WHERE id BETWEEN 10 AND 20").fetchall()
    text = "\n".join(r[0] for r in rows)
    exp = _expected(hist, n, lambda k: 10 <= k <= 20)
    assert f"History Read: identity key range [10, 20] (key index): {len(exp)} rows" in text, text


def test_versions_windows(hist):
    conn = hist.conn
    allv = hist.versions()
    rnd = random.Random(SEED + 4)
    seqs = hist.seqs
    bad = []
    for _ in range(30):
        a, b = sorted(rnd.sample([0] + seqs, 2))
        ta, tb = hist.at.get(a), hist.at.get(b)
        cases = [
            ("seq_start > %s AND seq_end <= %s", (a, b), lambda v: v[0] > a and v[1] is not None and v[1] <= b),
            ("seq_start >= %s", (a,), lambda v: v[0] >= a),
            ("seq_end < %s", (b,), lambda v: v[1] is not None and v[1] < b),
            ("seq_start = %s", (b,), lambda v: v[0] == b),
        ]
        if ta is not None:
            cases.append(("system_time_start > %s AND system_time_end <= %s", (ta, tb),
                          lambda v: v[0] > a and v[1] is not None and v[1] <= b))
            cases.append(("system_time_start >= %s", (ta,), lambda v: v[0] >= a))
        for cond, params, pred in cases:
            got = sorted(conn.execute(
                f"SELECT seq_start, seq_end, (v.data).id, (v.data).v FROM driftdb.versions(NULL::rk) v WHERE {cond}",
                params).fetchall(), key=repr)
            exp = [v for v in allv if pred(v)]
            if got != exp:
                bad.append(f"versions WHERE {cond} {params}: expected {len(exp)} {exp[:4]}, got {len(got)} {got[:4]}")
    assert not bad, "\n".join(bad[:10])
    p = explain(conn, "SELECT * FROM driftdb.versions(NULL::rk) v WHERE seq_start > 5 AND seq_end <= 9")
    assert "History Lookup: versions with seq_start > pushed-down value and seq_end <= pushed-down value" in p, p
    rows = conn.execute("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) SELECT * FROM driftdb.versions(NULL::rk) v "
                        "WHERE seq_start > %s AND seq_end <= %s", (seqs[-5], seqs[-2])).fetchall()
    text = "\n".join(r[0] for r in rows)
    assert f"events of seqs ({seqs[-5]}, {seqs[-2]}] replayed" in text, text
    # FROM..TO (versions that end after a point) is filtered, not pushed down
    p = explain(conn, "SELECT * FROM driftdb.versions(NULL::rk) v WHERE seq_start < 9 AND seq_end > 5")
    assert "DriftDB History Scan" not in p, p


def test_null_bounds_return_nothing(hist):
    conn = hist.conn
    n = hist.seqs[-1]
    assert conn.execute(f"SELECT count(*) FROM driftdb.as_of(NULL::rk, {n}::bigint) WHERE id BETWEEN %s AND 10",
                        (None,)).fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM driftdb.versions(NULL::rk) v WHERE seq_start > %s",
                        (None,)).fetchone()[0] == 0


def test_range_reads_without_a_unique_key_fall_back_to_the_full_state(db, conn):
    """REPLICA IDENTITY FULL: the events are filed under whole rows, so a key range cannot be
    read from the key index; the results are still right."""
    conn.execute("CREATE TABLE f (id int PRIMARY KEY, v int) USING driftdb")
    conn.execute("ALTER TABLE f REPLICA IDENTITY FULL")
    conn.execute("INSERT INTO f SELECT g, g FROM generate_series(1, 2000) g")
    s1 = conn.execute("SELECT driftdb.current_seq()").fetchone()[0]
    conn.execute("UPDATE f SET v = -v WHERE id % 2 = 0")
    conn.execute("ANALYZE f")
    got = conn.execute(f"SELECT id, v FROM driftdb.as_of(NULL::f, {s1}::bigint) WHERE id BETWEEN 10 AND 14 ORDER BY id").fetchall()
    assert got == [(i, i) for i in range(10, 15)]
    got = conn.execute("SELECT (v.data).id, seq_start FROM driftdb.versions(NULL::f) v WHERE seq_start > %s "
                       "ORDER BY 1 LIMIT 3", (s1,)).fetchall()
    assert got == [(2, s1 + 1), (4, s1 + 1), (6, s1 + 1)]


def test_row_level_security_applies_to_range_reads(db, conn, roles):
    alice = roles("alice")
    conn.execute("CREATE TABLE s (id int PRIMARY KEY, owner text) USING driftdb")
    conn.execute("INSERT INTO s SELECT g, CASE WHEN g %% 3 = 0 THEN %s ELSE 'other' END FROM generate_series(1, 3000) g",
                 (alice,))
    n = conn.execute("SELECT driftdb.current_seq()").fetchone()[0]
    conn.execute("UPDATE s SET owner = 'someone else'")
    conn.execute("ANALYZE s")
    conn.execute("ALTER TABLE s ENABLE ROW LEVEL SECURITY")
    conn.execute("CREATE POLICY mine ON s FOR SELECT USING (owner = current_user)")
    conn.execute(f'GRANT SELECT ON s TO "{alice}"')
    conn.execute(f'SET ROLE "{alice}"')
    try:
        q = f"SELECT id FROM driftdb.as_of(NULL::s, {n}::bigint) WHERE id BETWEEN 10 AND 20 ORDER BY id"
        assert [r[0] for r in conn.execute(q)] == [12, 15, 18]
        assert "identity key range" in explain(conn, q)
        q = f"SELECT id FROM driftdb.as_of(NULL::s, {n}::bigint) WHERE id IN (3, 4, 5, 6) ORDER BY id"
        assert [r[0] for r in conn.execute(q)] == [3, 6]
    finally:
        conn.execute("RESET ROLE")
