"""Row identity (issue 3, item 4): the table's REPLICA IDENTITY names a row across versions —
the primary key by default, FULL and USING INDEX too; rows may be loaded before the key exists;
UPDATE/DELETE without a usable identity fails clearly (55000 with a HINT) and changes nothing."""
from __future__ import annotations

import os
import subprocess

import psycopg
import pytest

from conftest import PGBIN
from tt_model import StatesBySeq, commit_tx
from history_model import (
    Model,
    assert_verified,
    current_seq,
    event_count,
    events,
    mp_key,
    transactions,
)


def test_default_identity_is_the_primary_key(conn):
    conn.execute(
        "CREATE TABLE t (payload text, b text, a int, note text, PRIMARY KEY (a, b)) USING driftdb"
    )
    conn.execute("INSERT INTO t VALUES ('p', 'x', 1, 'n'), ('q', 'y', 2, NULL)")
    conn.execute("UPDATE t SET payload = 'p2', note = 'n2' WHERE a = 1")
    conn.execute("DELETE FROM t WHERE a = 2")
    # key = the PK values in index column order (a, b), not the whole row
    assert [(e[2], e[3]) for e in events(conn, "t")] == [
        ("i", mp_key(1, "x")), ("i", mp_key(2, "y")), ("u", mp_key(1, "x")), ("d", mp_key(2, "y"))]
    assert_verified(conn, "t")


def test_replica_identity_full_allows_duplicates(conn):
    conn.execute("CREATE TABLE t (a int, b text) USING driftdb")
    conn.execute("ALTER TABLE t REPLICA IDENTITY FULL")
    conn.execute("INSERT INTO t VALUES (1, 'a'), (1, 'a'), (1, 'a'), (2, NULL)")
    conn.execute("UPDATE t SET b = 'z' WHERE ctid = (SELECT min(ctid) FROM t WHERE a = 1)")
    conn.execute("DELETE FROM t WHERE ctid = (SELECT max(ctid) FROM t WHERE b = 'a')")
    conn.execute("UPDATE t SET a = 3 WHERE b IS NULL")
    assert sorted(conn.execute("SELECT a, b FROM t").fetchall(), key=repr) == sorted(
        [(1, "z"), (1, "a"), (3, None)], key=repr)
    ops = ops_by_seq_multi(conn, "t")
    assert ops == [
        [("i", mp_key(1, "a"))] * 3 + [("i", mp_key(2, None))],
        # with FULL identity every update changes the key: the old row's key gets a marker
        [("m", mp_key(1, "a")), ("u", mp_key(1, "z"))],
        [("d", mp_key(1, "a"))],
        [("m", mp_key(2, None)), ("u", mp_key(3, None))],
    ]
    assert_verified(conn, "t")
    # duplicates through updates too: make every row identical, then delete them one by one
    conn.execute("UPDATE t SET a = 7, b = 'same'")
    conn.execute("DELETE FROM t WHERE ctid = (SELECT min(ctid) FROM t)")
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (2,)
    assert_verified(conn, "t")
    conn.execute("DELETE FROM t")
    assert_verified(conn, "t")


def ops_by_seq_multi(conn, table):
    """Like ops_by_seq, but a list of (op, key) per seq (keys may repeat with FULL identity)."""
    out = {}
    for s, _o, op, k in events(conn, table):
        out.setdefault(s, []).append((op, k))
    return [sorted(v) for _s, v in sorted(out.items())]


def _noise(seed: int, nbytes: int) -> str:
    """Text that does not compress: hex of a hash chain."""
    import hashlib
    out, h = [], str(seed).encode()
    while sum(map(len, out)) < nbytes:
        h = hashlib.sha256(h).digest()
        out.append(h.hex())
    return "".join(out)[:nbytes]


def test_long_keys_are_filed_under_their_digest(conn):
    """An identity key longer than 1 kB is filed (driftdb.events.key, packs) under 0xc1 and its
    SHA-256: under REPLICA IDENTITY FULL the key is the whole row, and a wide row's key would
    not fit the key index (a B-tree entry holds about 2.7 kB). Its frames keep the values."""
    conn.execute("SET driftdb.pack_min_events = 10")
    conn.execute("CREATE TABLE wide (a int, b text) USING driftdb")
    conn.execute("ALTER TABLE wide REPLICA IDENTITY FULL")
    model: dict[int, tuple] = {}
    states = []

    def commit(*stmts):
        with conn.transaction():
            for sql, params in stmts:
                conn.execute(sql, params)
        model.clear()
        model.update({r[0]: r for r in conn.execute("SELECT a, b FROM wide")})
        states.append((current_seq(conn), dict(model)))

    big = {i: _noise(i, 20_000) for i in range(1, 60)}
    commit(("INSERT INTO wide VALUES (1, %s)", (big[1],)))
    commit(("INSERT INTO wide VALUES (2, %s), (3, 'narrow')", (big[2],)))
    commit(("UPDATE wide SET b = %s WHERE a = 1", (big[4],)))
    commit(("DELETE FROM wide WHERE a = 2", None))
    # a bulk transaction: packed, wide and narrow rows alike
    commit(*[("INSERT INTO wide VALUES (%s, %s)", (i, big[i] if i % 2 else f"n{i}")) for i in range(10, 40)])
    commit(("UPDATE wide SET b = b || 'x' WHERE a BETWEEN 10 AND 19", None),
           ("DELETE FROM wide WHERE a BETWEEN 30 AND 34", None))
    keys = [bytes(e[3]) for e in events(conn, "wide")]
    assert mp_key(1, big[1]) in keys and mp_key(1, big[1])[0] == 0xC1 and len(mp_key(1, big[1])) == 33
    assert mp_key(3, "narrow") in keys and mp_key(3, "narrow")[0] != 0xC1
    assert conn.execute("SELECT count(*) FROM driftdb.packs").fetchone()[0] > 0
    def check_as_of(label):
        for seq, want in states:
            got = conn.execute("SELECT a, b FROM driftdb.as_of(NULL::wide, %s::bigint)", (seq,)).fetchall()
            assert sorted(got) == sorted(want.values()), f"AS OF {seq} ({label})"
        assert_verified(conn, "wide")

    check_as_of("event rows and packs")
    # compacted into segments, whose entries are filed under the same digests (the frames'
    # key fields, which hold the values, are then stored apart from the entry key)
    compacted = conn.execute("SELECT events FROM driftdb.compact('wide', '0s')").fetchone()[0]
    assert compacted == event_count(conn, "wide") + compacted and compacted > 0
    check_as_of("segments")
    commit(("UPDATE wide SET b = %s WHERE a = 11", (big[5],)))
    check_as_of("segments and a later event")

    # a primary key longer than 1 kB: lookups, updates, deletes and erasure find it by digest
    conn.execute("CREATE TABLE lk (k text PRIMARY KEY, v int) USING driftdb")
    long_k, other = _noise(7, 1500), _noise(8, 1500)
    conn.execute("INSERT INTO lk VALUES (%s, 1), (%s, 2)", (long_k, other))
    s1 = current_seq(conn)
    conn.execute("UPDATE lk SET v = 10 WHERE k = %s", (long_k,))
    s2 = current_seq(conn)
    assert [(e[2], bytes(e[3])) for e in events(conn, "lk")][-1] == ("u", mp_key(long_k))
    for seq, v in ((s1, 1), (s2, 10)):
        q = "SELECT v FROM driftdb.as_of(NULL::lk, %s::bigint) WHERE k = %s"
        assert conn.execute(q, (seq, long_k)).fetchall() == [(v,)]
        plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + q, (seq, long_k)))
        assert "History Lookup: identity key" in plan and "full state" not in plan, plan
    vq = "SELECT v.seq_start, (v.data).v FROM driftdb.versions(NULL::lk) v WHERE (v.data).k = %s ORDER BY 1"
    assert conn.execute(vq, (long_k,)).fetchall() == [(s1, 1), (s2, 10)]
    conn.execute("DELETE FROM lk WHERE k = %s", (long_k,))
    removed = conn.execute("SELECT events_removed FROM driftdb.erase('lk', %s)", (long_k,)).fetchone()[0]
    assert removed == 3
    assert [bytes(e[3]) for e in events(conn, "lk")] == [mp_key(other)]
    assert conn.execute("SELECT k = %s, v FROM driftdb.as_of(NULL::lk, %s::bigint)", (other, s2)).fetchall() == [(True, 2)]
    assert_verified(conn, "lk")


def test_replica_identity_using_index(conn):
    conn.execute("CREATE TABLE t (id serial, code text NOT NULL, v int) USING driftdb")
    conn.execute("CREATE UNIQUE INDEX t_code ON t (code)")
    conn.execute("ALTER TABLE t REPLICA IDENTITY USING INDEX t_code")
    m = Model("t", "code", "v")
    conn.execute("INSERT INTO t (code, v) VALUES ('a', 1), ('b', 2), ('c', 3)")
    m.apply({"a": (1,), "b": (2,), "c": (3,)})
    conn.execute("UPDATE t SET v = 20 WHERE code = 'b'")
    m.apply({"b": (20,)})
    conn.execute("DELETE FROM t WHERE code = 'c'")
    m.apply(deletes=["c"])
    m.check(conn)  # keys are mp_key(code)
    conn.execute("UPDATE t SET code = 'aa' WHERE code = 'a'")
    assert [(e[2], e[3]) for e in events(conn, "t", current_seq(conn) - 1)] == [
        ("u", mp_key("aa")), ("m", mp_key("a"))]
    assert_verified(conn, "t")


def test_identity_using_index_wins_over_primary_key(conn):
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, code int NOT NULL UNIQUE, v text) USING driftdb")
    conn.execute("ALTER TABLE t REPLICA IDENTITY USING INDEX t_code_key")
    conn.execute("INSERT INTO t VALUES (1, 100, 'a')")
    conn.execute("UPDATE t SET v = 'b'")
    assert [e[3] for e in events(conn, "t")] == [mp_key(100), mp_key(100)]
    assert_verified(conn, "t")


def test_load_before_key_exists_then_add_primary_key(conn):
    """pgbench -i / pg_restore order: create without a key, load, add the key, then write."""
    conn.execute("CREATE TABLE acc (aid int NOT NULL, bid int, abalance int, filler char(20)) USING driftdb")
    with conn.cursor() as cur:
        with cur.copy("COPY acc FROM STDIN") as cp:
            for i in range(1, 3001):
                cp.write_row((i, i % 3, 0, ""))
    conn.execute("INSERT INTO acc VALUES (3001, 0, 0, 'x')")
    assert_verified(conn, "acc")
    conn.execute("ALTER TABLE acc ADD PRIMARY KEY (aid)")
    assert_verified(conn, "acc")
    s = current_seq(conn)
    conn.execute("UPDATE acc SET abalance = abalance + 5 WHERE aid IN (1, 1500, 3001)")
    conn.execute("DELETE FROM acc WHERE aid = 2")
    conn.execute("INSERT INTO acc VALUES (5000, 1, 1, 'new')")
    assert [(e[2], e[3]) for e in events(conn, "acc", s)] == [
        ("u", mp_key(1)), ("u", mp_key(1500)), ("u", mp_key(3001)), ("d", mp_key(2)), ("i", mp_key(5000))]
    assert conn.execute("SELECT count(*), sum(abalance) FROM acc").fetchone() == (3001, 16)
    assert_verified(conn, "acc")


@pytest.mark.slow
def test_pgbench_init_and_run_on_driftdb(db):
    """pgbench -i with default_table_access_method = driftdb, then a short TPC-B-like run."""
    env = dict(os.environ, PGOPTIONS="-c default_table_access_method=driftdb")
    common = ["-h", "127.0.0.1", "-p", str(db.cluster.port), "-U", "postgres"]
    res = subprocess.run([str(PGBIN / "pgbench"), "-i", "-s", "1", "-q", *common, db.name],
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    conn = db.connect()
    tables = ["pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history"]
    assert conn.execute(
        "SELECT count(*) FROM pg_class c JOIN pg_am a ON a.oid = c.relam "
        "WHERE a.amname = 'driftdb' AND c.relname = ANY(%s)", (tables,)).fetchone() == (4,)
    s = current_seq(conn)
    res = subprocess.run([str(PGBIN / "pgbench"), "-c", "2", "-t", "100", "-n", *common, db.name],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    tx = transactions(conn, s)
    assert len(tx) == 200, "one seq per pgbench transaction"
    # every transaction changed all four tables — except one whose random delta was 0 (1 in
    # 10001): its three UPDATEs change nothing, so only the history insert is recorded
    for x in tx:
        assert sorted(x["tables"]) in (sorted(tables), ["pgbench_history"]), x
    # per transaction: update of one account, teller, branch; insert into history
    assert [e[2] for e in events(conn, "pgbench_history", s)] == ["i"] * 200
    assert len(events(conn, "pgbench_accounts", s)) <= 200  # a delta of 0 changes nothing
    assert_verified(conn, *tables)


def _assert_no_identity_error(e: psycopg.Error, table: str):
    assert e.sqlstate == "55000", e
    assert table in e.diag.message_primary, e.diag.message_primary
    assert e.diag.message_hint, "the error must carry a HINT"
    assert "PRIMARY KEY" in e.diag.message_hint.upper() or "REPLICA IDENTITY" in e.diag.message_hint.upper()


@pytest.mark.parametrize("setup", [
    "CREATE TABLE nokey (a int, b text) USING driftdb",
    "CREATE TABLE nokey (a int PRIMARY KEY, b text) USING driftdb; ALTER TABLE nokey REPLICA IDENTITY NOTHING",
    "CREATE TABLE nokey (a int UNIQUE, b text) USING driftdb",  # nullable unique: not an identity
], ids=["no_pk", "identity_nothing", "nullable_unique"])
def test_update_delete_without_identity_fail_and_change_nothing(conn, setup):
    for stmt in setup.split(";"):
        conn.execute(stmt)
    conn.execute("INSERT INTO nokey VALUES (1, 'a'), (2, 'b')")
    s, n = current_seq(conn), event_count(conn)
    for sql in ["UPDATE nokey SET b = 'z' WHERE a = 1", "DELETE FROM nokey WHERE a = 2",
                "UPDATE nokey SET b = b || '!'", "DELETE FROM nokey",
                "INSERT INTO nokey VALUES (1, 'x') ON CONFLICT (a) DO UPDATE SET b = 'y'"
                if "UNIQUE" in setup or "PRIMARY" in setup else "UPDATE nokey SET a = a + 1"]:
        with pytest.raises(psycopg.Error) as ei:
            conn.execute(sql)
        _assert_no_identity_error(ei.value, "nokey")
    # an identity error inside a transaction aborts it: the insert before it is gone too
    conn.execute("BEGIN")
    conn.execute("INSERT INTO nokey VALUES (3, 'c')")
    with pytest.raises(psycopg.Error) as ei:
        conn.execute("UPDATE nokey SET b = 'q' WHERE a = 3")
    _assert_no_identity_error(ei.value, "nokey")
    conn.execute("ROLLBACK")
    assert sorted(conn.execute("SELECT a, b FROM nokey").fetchall()) == [(1, "a"), (2, "b")]
    assert (current_seq(conn), event_count(conn)) == (s, n)
    # UPDATE/DELETE matching no row: fine either way, nothing recorded
    for sql in ["UPDATE nokey SET b = 'z' WHERE a = 99", "DELETE FROM nokey WHERE false"]:
        try:
            conn.execute(sql)
        except psycopg.Error as e:
            _assert_no_identity_error(e, "nokey")
    # TRUNCATE needs no identity
    conn.execute("TRUNCATE nokey")
    assert [e[2] for e in events(conn, "nokey", s)] == ["t"]
    assert_verified(conn, "nokey")


def test_identity_changes_over_history(conn):
    """History written under one identity stays consistent when the identity changes."""
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, code int NOT NULL, v text) USING driftdb")
    conn.execute("INSERT INTO t SELECT g, g * 10, 'a' FROM generate_series(1, 5) g")
    conn.execute("UPDATE t SET v = 'b' WHERE id = 1")
    conn.execute("ALTER TABLE t REPLICA IDENTITY FULL")
    conn.execute("UPDATE t SET v = 'c' WHERE id IN (1, 2)")
    conn.execute("DELETE FROM t WHERE id = 3")
    assert_verified(conn, "t")
    conn.execute("CREATE UNIQUE INDEX t_code ON t (code)")
    conn.execute("ALTER TABLE t REPLICA IDENTITY USING INDEX t_code")
    conn.execute("UPDATE t SET v = 'd' WHERE id IN (1, 4)")
    conn.execute("DELETE FROM t WHERE id = 5")
    assert_verified(conn, "t")
    conn.execute("ALTER TABLE t REPLICA IDENTITY DEFAULT")
    conn.execute("UPDATE t SET v = 'e'")
    assert_verified(conn, "t")
    conn.execute("ALTER TABLE t DROP CONSTRAINT t_pkey")
    with pytest.raises(psycopg.Error) as ei:
        conn.execute("UPDATE t SET v = 'f'")
    _assert_no_identity_error(ei.value, "t")
    conn.execute("INSERT INTO t VALUES (9, 90, 'n')")
    assert_verified(conn, "t")


def _plan_read(conn, q, params) -> str:
    """The History Read line of EXPLAIN ANALYZE: how the scan answered."""
    lines = [r[0] for r in conn.execute("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) " + q, params)]
    return next((ln.split(":", 1)[1].strip() for ln in lines if "History Read:" in ln), "\n".join(lines))


@pytest.mark.parametrize("compacted", [False, True], ids=["events", "segments"])
@pytest.mark.parametrize("truncate", [False, True], ids=["plain", "truncated_later"])
def test_key_lookups_after_the_key_is_added(conn, truncate, compacted):
    """Rows loaded before the primary key existed have key-less events; the key is added, then
    rows change. An AS OF key lookup from the first commit after that on reads the key index:
    a key no later event touched has its live row, a key changed later has the old image of
    its first later event (`driftdb.tables.keyed_from`). Every answer is the model's, at every
    seq, with the events after the change in `driftdb.events` or compacted into segments (the
    key-less ones are never compacted); points before the change replay. A TRUNCATE after the
    change sends lookups before it back to replay, with the same answers."""
    conn.execute("CREATE TABLE lk2 (id int NOT NULL, v text, n int) USING driftdb")
    h = StatesBySeq(conn)
    tx, states = h.tx, h.states

    def put(rows):
        return lambda m: m.update({r[0]: r for r in rows})

    first = [(i, f"v{i}", i) for i in range(1, 201)]
    tx("INSERT INTO lk2 SELECT g, 'v' || g, g FROM generate_series(1, 200) g", apply=put(first))
    # a column added before the key: older rows read its default (the schema event before the
    # identity change, which lookups after it find once per backend)
    tx("ALTER TABLE lk2 ADD COLUMN tag text NOT NULL DEFAULT 'd'", apply=lambda m: None)
    tx("INSERT INTO lk2 SELECT g, 'v' || g, g FROM generate_series(201, 250) g",
       apply=put([(i, f"v{i}", i) for i in range(201, 251)]))
    before = max(states)
    conn.execute("ALTER TABLE lk2 ADD PRIMARY KEY (id)")
    keyed = tx("UPDATE lk2 SET n = -1 WHERE id = 10", apply=put([(10, "v10", -1)]))
    assert conn.execute("SELECT key_attnums, keyed_from FROM driftdb.tables WHERE relid = 'lk2'::regclass") \
        .fetchone() == ([1], keyed)
    tx("DELETE FROM lk2 WHERE id = 20", apply=lambda m: m.pop(20))
    tx("INSERT INTO lk2 VALUES (20, 'back', 0), (300, 'new', 300)", apply=put([(20, "back", 0), (300, "new", 300)]))
    tx("UPDATE lk2 SET id = 1005 WHERE id = 5", apply=lambda m: (m.pop(5), m.update({1005: (1005, "v5", 5)})))

    def move_onto_7(m):
        m.pop(7)
        m.pop(8)
        m[7] = (7, "v8", 8)
    tx("DELETE FROM lk2 WHERE id = 7", "UPDATE lk2 SET id = 7 WHERE id = 8", apply=move_onto_7)
    tx("UPDATE lk2 SET v = 'late' WHERE id IN (30, 31)", apply=put([(30, "late", 30), (31, "late", 31)]))
    if truncate:
        tx("TRUNCATE lk2", apply=lambda m: m.clear())
        tx("INSERT INTO lk2 VALUES (30, 'after', 1), (40, 'after', 2)", apply=put([(30, "after", 1), (40, "after", 2)]))
    tx("UPDATE lk2 SET n = n + 100 WHERE id = 30", apply=lambda m: m.update({30: (30, m[30][1], m[30][2] + 100)}))

    if compacted:  # the keyed events move into segments (the key-less ones stay)
        assert conn.execute("SELECT events FROM driftdb.compact('lk2', '0s')").fetchone()[0] > 0
    keys = [1, 5, 7, 8, 10, 20, 30, 31, 40, 199, 250, 300, 1005, 9999]
    errors = []
    for s in sorted(states):
        exp = {k: r + ("d",) for k, r in states[s].items()}
        for k in keys:
            got = conn.execute("SELECT id, v, n, tag FROM driftdb.as_of(NULL::lk2, %s::bigint) WHERE id = %s", (s, k)).fetchall()
            if got != ([exp[k]] if k in exp else []):
                errors.append(f"seq {s} id {k}: {got}, expected {exp.get(k)}")
        got = sorted(conn.execute("SELECT id, v, n, tag FROM driftdb.as_of(NULL::lk2, %s::bigint) WHERE id = ANY(%s)", (s, keys)).fetchall())
        if got != sorted(exp[k] for k in keys if k in exp):
            errors.append(f"seq {s} id = ANY: {got}")
        for cond, pred in (("id BETWEEN 1 AND 40", lambda k: 1 <= k <= 40), ("id >= 195", lambda k: k >= 195),
                           ("id < 12", lambda k: k < 12)):
            got = sorted(conn.execute(f"SELECT id, v, n, tag FROM driftdb.as_of(NULL::lk2, %s::bigint) WHERE {cond}", (s,)).fetchall())
            if got != sorted(r for k, r in exp.items() if pred(k)):
                errors.append(f"seq {s} {cond}: {got}")
    assert not errors, "\n".join(errors)

    q = "SELECT * FROM driftdb.as_of(NULL::lk2, %s::bigint) WHERE id = %s"
    assert _plan_read(conn, q, (before, 1)).startswith("state at seq"), "a point before the change must replay"
    top = max(states)
    for k in (1, 30):  # untouched since the change; changed at the last seq
        assert _plan_read(conn, q, (top, k)) == "identity key lookup"
    rq = "SELECT * FROM driftdb.as_of(NULL::lk2, %s::bigint) WHERE id BETWEEN %s AND %s"
    assert _plan_read(conn, rq, (top, 1, 40)).startswith("identity key range [1, 40] (key index)")
    assert _plan_read(conn, rq, (before, 1, 40)).startswith("state at seq")
    if truncate:
        # before the TRUNCATE the rows it removed are not in the live table: replay
        assert _plan_read(conn, q, (keyed, 1)).endswith("by replay of the whole state (a TRUNCATE after the identity change)")
        assert _plan_read(conn, rq, (keyed, 1, 40)).endswith("by replay of the whole state (a TRUNCATE after the identity change)")
    else:
        assert _plan_read(conn, q, (keyed, 199)) == "identity key lookup"

    # this transaction's own uncommitted changes are not history
    conn.execute("BEGIN")
    conn.execute("UPDATE lk2 SET v = 'mine' WHERE id IN (1, 30)")
    conn.execute("DELETE FROM lk2 WHERE id = 250")
    conn.execute("INSERT INTO lk2 VALUES (7777, 'mine', 0)")
    for k in (1, 30, 250, 7777):
        got = conn.execute("SELECT id, v, n FROM driftdb.as_of(NULL::lk2, %s::bigint) WHERE id = %s", (top, k)).fetchall()
        assert got == ([states[top][k]] if k in states[top] else []), f"id {k} inside a writing transaction: {got}"
    got = sorted(conn.execute("SELECT id, v, n FROM driftdb.as_of(NULL::lk2, %s::bigint) WHERE id >= 1", (top,)).fetchall())
    assert got == sorted(states[top].values()), "a key range inside a writing transaction"
    conn.execute("ROLLBACK")
    assert_verified(conn, "lk2")


def test_key_lookups_after_the_key_is_added_while_writers_change_the_keys(db):
    """Lookups at a fixed seq after the identity change while another session updates, deletes
    and re-inserts the keys: a key moves from "untouched: its live row" to "changed later: the
    old image of its first later event" between two lookups, or in the middle of one (the
    live read's snapshot is taken before the history is read). Every answer is the model's
    row at that seq."""
    import random
    import threading
    import time

    setup = db.connect()
    setup.execute("CREATE TABLE lkc (id int NOT NULL, v int NOT NULL) USING driftdb")
    setup.execute("INSERT INTO lkc SELECT g, g FROM generate_series(1, 400) g")
    setup.execute("ALTER TABLE lkc ADD PRIMARY KEY (id)")
    at = commit_tx(setup, "UPDATE lkc SET v = -1 WHERE id = 400")[0]
    expected = {i: i for i in range(1, 400)} | {400: -1}
    stop = threading.Event()
    writes = [0]

    def writer():
        w = db.connect()
        rnd = random.Random(7)
        while not stop.is_set():
            k = rnd.randint(1, 399)
            if rnd.random() < 0.8:
                w.execute("UPDATE lkc SET v = v + 1000 WHERE id = %s", (k,))
            else:
                w.execute("BEGIN")
                w.execute("DELETE FROM lkc WHERE id = %s", (k,))
                w.execute("INSERT INTO lkc VALUES (%s, 0)", (k,))
                w.execute("COMMIT")
            writes[0] += 1

    t = threading.Thread(target=writer)
    t.start()
    reader = db.connect()
    rnd = random.Random(11)
    errors, lookups = [], 0
    try:
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline and len(errors) < 5:
            k = rnd.randint(1, 400)
            got = reader.execute("SELECT v FROM driftdb.as_of(NULL::lkc, %s::bigint) WHERE id = %s", (at, k)).fetchall()
            if got != [(expected[k],)]:
                errors.append(f"id {k} at seq {at}: {got}, expected {expected[k]}")
            lo = rnd.randint(1, 380)
            got = dict(reader.execute("SELECT id, v FROM driftdb.as_of(NULL::lkc, %s::bigint) WHERE id BETWEEN %s AND %s",
                                      (at, lo, lo + 20)).fetchall())
            if got != {i: expected[i] for i in range(lo, lo + 21)}:
                errors.append(f"ids {lo}..{lo + 20} at seq {at}: {sorted(set(got.items()) ^ {(i, expected[i]) for i in range(lo, lo + 21)})}")
            lookups += 1
    finally:
        stop.set()
        t.join()
    assert not errors, "\n".join(errors)
    assert writes[0] > 50 and lookups > 50, (writes[0], lookups)
    assert_verified(setup, "lkc")


def test_key_lookups_after_the_key_moves_to_a_column_with_the_same_values(conn):
    """The primary key moves from a to b, two integer columns holding the same set of values
    (b = 4001 - a): events before the change are filed under key bytes that now name other rows.
    Lookups, lists and ranges by b from the change on must not take them for b's events."""
    conn.execute("CREATE TABLE mv (a int PRIMARY KEY, b int NOT NULL UNIQUE, v int) USING driftdb")
    h = StatesBySeq(conn)  # the model by b
    tx, states = h.tx, h.states

    tx("INSERT INTO mv SELECT g, 4001 - g, g FROM generate_series(1, 4000) g",
       apply=lambda m: m.update({4001 - g: (g, 4001 - g, g) for g in range(1, 4001)}))
    # under key a: a = 1..5 and 10..12 change, a = 6 goes (their b are 3996..4000, 3989..3991,
    # 3995): the old events' key bytes are those of b = 1..12 now
    tx("UPDATE mv SET v = v * 100 WHERE a <= 5 OR a BETWEEN 10 AND 12",
       apply=lambda m: m.update({4001 - g: (g, 4001 - g, g * 100) for g in [1, 2, 3, 4, 5, 10, 11, 12]}))
    before = tx("DELETE FROM mv WHERE a = 6", apply=lambda m: m.pop(3995))
    conn.execute("ALTER TABLE mv DROP CONSTRAINT mv_pkey")
    conn.execute("ALTER TABLE mv ADD PRIMARY KEY (b)")
    conn.execute("ANALYZE mv")
    keyed = tx("UPDATE mv SET v = -1 WHERE b = 3", apply=lambda m: m.update({3: (3998, 3, -1)}))
    assert conn.execute("SELECT key_attnums, keyed_from FROM driftdb.tables WHERE relid = 'mv'::regclass").fetchone() == ([2], keyed)
    tx("UPDATE mv SET v = v + 1 WHERE b IN (1, 2, 11, 3999)",
       apply=lambda m: m.update({b: (m[b][0], b, m[b][2] + 1) for b in (1, 2, 11, 3999)}))
    tx("DELETE FROM mv WHERE b = 4", apply=lambda m: m.pop(4))
    probe = list(range(0, 16)) + [3990, 3991, 3995, 3996, 3999, 4000, 4001]
    errors = []
    for s in sorted(states):
        exp = states[s]
        for b in probe:
            got = conn.execute("SELECT a, b, v FROM driftdb.as_of(NULL::mv, %s::bigint) WHERE b = %s", (s, b)).fetchall()
            if got != ([exp[b]] if b in exp else []):
                errors.append(f"seq {s} b {b}: {got}, expected {exp.get(b)}")
        got = sorted(conn.execute("SELECT a, b, v FROM driftdb.as_of(NULL::mv, %s::bigint) WHERE b BETWEEN 1 AND 12", (s,)).fetchall())
        if got != sorted(r for b, r in exp.items() if 1 <= b <= 12):
            errors.append(f"seq {s} b in [1, 12]: {got}")
        got = sorted(conn.execute("SELECT a, b, v FROM driftdb.as_of(NULL::mv, %s::bigint) WHERE b = ANY('{1,5,6,3995,4000}')", (s,)).fetchall())
        if got != sorted(exp[b] for b in (1, 5, 6, 3995, 4000) if b in exp):
            errors.append(f"seq {s} b = ANY: {got}")
    assert not errors, "\n".join(errors)
    q = "SELECT * FROM driftdb.as_of(NULL::mv, %s::bigint) WHERE b BETWEEN 1 AND 12"
    assert _plan_read(conn, q, (max(states),)).startswith("identity key range [1, 12] (key index)")
    assert _plan_read(conn, q, (before,)).startswith("state at seq")
    assert_verified(conn, "mv")


def test_a_table_an_earlier_build_marked_unstable_is_keyed_again_at_its_next_write(db):
    """Builds before keyed_from marked a table whose identity changed `keys_stable = false`
    for good (its dumps restore it so). The next commit that writes the table records the
    current identity with that commit as keyed_from: from there on key lookups use the key
    index again, earlier points replay, every answer the same."""
    conn = db.connect()
    conn.execute("CREATE TABLE lkl (id int NOT NULL, v text) USING driftdb")
    loaded = commit_tx(conn, "INSERT INTO lkl SELECT g, 'v' || g FROM generate_series(1, 300) g")[0]
    conn.execute("ALTER TABLE lkl ADD PRIMARY KEY (id)")
    s1 = commit_tx(conn, "UPDATE lkl SET v = 'one' WHERE id = 1")[0]
    # what such a build left: the identity as registered (none), keys unstable, no keyed_from
    conn.execute("SET driftdb.restore_mode = on")
    conn.execute("UPDATE driftdb.tables SET key_attnums = NULL, keys_stable = false, keyed_from = 0 WHERE relid = 'lkl'::regclass")
    conn.execute("RESET driftdb.restore_mode")
    q = "SELECT id, v FROM driftdb.as_of(NULL::lkl, %s::bigint) WHERE id IN (1, 2) ORDER BY id"
    fresh = db.connect()  # a backend that never cached the registration
    assert _plan_read(fresh, q, (s1,)).startswith("state at seq")
    assert fresh.execute(q, (s1,)).fetchall() == [(1, "one"), (2, "v2")]
    s2 = commit_tx(db.connect(), "UPDATE lkl SET v = 'two' WHERE id = 2")[0]
    reader = db.connect()
    assert reader.execute("SELECT keys_stable, key_attnums, keyed_from FROM driftdb.tables WHERE relid = 'lkl'::regclass") \
        .fetchone() == (True, [1], s2)
    expected = {loaded: [(1, "v1"), (2, "v2")], s1: [(1, "one"), (2, "v2")], s2: [(1, "one"), (2, "two")]}
    for s, rows in expected.items():
        assert reader.execute(q, (s,)).fetchall() == rows, s
    assert _plan_read(reader, q, (s2,)) == "identity key lookups: 2 keys"
    assert _plan_read(reader, q, (s1,)).startswith("state at seq")
    assert_verified(reader, "lkl")
