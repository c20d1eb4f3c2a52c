"""Event packs (docs/architecture.md D17): a transaction that changes many rows of one table
stores their history key-sorted in driftdb.packs. Every reader must see exactly the history it
would see from one events row per change: the AS OF answers below are compared with a Python
model of the table after each committed transaction, at every seq, through every read path
(point lookups, key lists, key ranges, full reads, versions, changes), before and after
compaction, purge and erasure, and after a dump/restore."""
from __future__ import annotations

import random

import psycopg
import pytest

from conftest import PGBIN
from history_model import as_key, assert_verified, current_seq, event_count, events, frame_from_tail, mp, unpack

COLS = "id, v, n, note"


def _setup(conn, min_events=40, table="t", identity="", pack_target=2032):
    """A driftdb table, and packs for transactions of `min_events` changes. The writer sizes
    packs by driftdb.packs' toast_tuple_target: at 2032 (PostgreSQL's default) they are about
    2.8 kB, so that these small transactions span many packs; None keeps driftdb's (8160,
    about 11 kB)."""
    conn.execute(f"SET driftdb.pack_min_events = {min_events}")
    if pack_target is not None:
        conn.execute(f"ALTER TABLE driftdb.packs SET (toast_tuple_target = {pack_target})")
    conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v text NOT NULL, n numeric(10,2), note text) USING driftdb")
    if identity:
        conn.execute(f"ALTER TABLE {table} REPLICA IDENTITY {identity}")


def _commit(conn, model, states, *stmts):
    """Run statements in one transaction, mirror the committed result in the model, and record
    (seq, model copy)."""
    with conn.transaction():
        for s in stmts:
            conn.execute(s)
    rows = conn.execute(f"SELECT {COLS} FROM t").fetchall()
    model.clear()
    model.update({r[0]: r for r in rows})
    states.append((current_seq(conn), dict(model)))


def _workload(conn, rnd):
    model, states = {}, []
    # bulk insert (packed), then small and bulk changes of every kind
    _commit(conn, model, states, "INSERT INTO t SELECT g, 'a' || g, g * 1.5, NULL FROM generate_series(1, 400) g")
    _commit(conn, model, states, "UPDATE t SET v = 'one' WHERE id = 7")
    _commit(conn, model, states, "UPDATE t SET v = v || '+', n = n + 1 WHERE id % 3 = 0")
    _commit(conn, model, states, "DELETE FROM t WHERE id BETWEEN 100 AND 180")
    _commit(conn, model, states, "INSERT INTO t SELECT g, 'b' || g, NULL, repeat('x', g % 50) FROM generate_series(401, 460) g",
            "UPDATE t SET note = 'touched' WHERE id BETWEEN 1 AND 60")
    # deleted and re-inserted under the same keys in one transaction (keys repeat: folded)
    _commit(conn, model, states, "DELETE FROM t WHERE id BETWEEN 200 AND 260",
            "INSERT INTO t SELECT g, 'again' || g, 0, NULL FROM generate_series(200, 240) g")
    # a key-changing bulk update stays in the events table (moved-key markers)
    _commit(conn, model, states, "UPDATE t SET id = id + 1000 WHERE id BETWEEN 300 AND 350")
    # TRUNCATE then a bulk load in one transaction: the TRUNCATE event comes first
    _commit(conn, model, states, "UPDATE t SET v = 'before truncate' WHERE id = 1")
    _commit(conn, model, states, "TRUNCATE t", "INSERT INTO t SELECT g, 'c' || g, g, NULL FROM generate_series(1, 120, 2) g")
    for _ in range(6):
        ids = rnd.sample(range(1, 130), 45)
        _commit(conn, model, states, f"UPDATE t SET v = v || '!' WHERE id = ANY(ARRAY{ids}::int[])")
        k = rnd.randrange(1, 130)
        _commit(conn, model, states, f"INSERT INTO t VALUES ({1000 + k + len(states)}, 'single', NULL, NULL)")
    _commit(conn, model, states, "DELETE FROM t WHERE id < 50")
    return states


def _rows(conn, sql, params=None):
    return sorted(conn.execute(sql, params).fetchall())


def _check_all(conn, states, rnd, label):
    """Every read path at every recorded seq against the model."""
    everyone = sorted({k for _, m in states for k in m} | {0, 99999})
    for seq, m in states:
        want = sorted(m.values())
        got = _rows(conn, f"SELECT {COLS} FROM driftdb.as_of(NULL::t, %s::bigint)", (seq,))
        assert got == want, f"{label}: full AS OF seq {seq}"
        for k in rnd.sample(everyone, 12):
            got = conn.execute(f"SELECT {COLS} FROM driftdb.as_of(NULL::t, %s::bigint) WHERE id = %s", (seq, k)).fetchall()
            assert got == ([m[k]] if k in m else []), f"{label}: key {k} AS OF seq {seq}"
        ks = rnd.sample(everyone, 8)
        got = _rows(conn, f"SELECT {COLS} FROM driftdb.as_of(NULL::t, %s::bigint) WHERE id = ANY(%s)", (seq, ks))
        assert got == sorted(m[k] for k in ks if k in m), f"{label}: key list AS OF seq {seq}"
        lo = rnd.randrange(0, 500)
        hi = lo + rnd.randrange(0, 120)
        got = _rows(conn, f"SELECT {COLS} FROM driftdb.as_of(NULL::t, %s::bigint) WHERE id BETWEEN %s AND %s", (seq, lo, hi))
        assert got == sorted(r for k, r in m.items() if lo <= k <= hi), f"{label}: range [{lo}, {hi}] AS OF seq {seq}"
    # versions of a few keys: the model's distinct consecutive values
    for k in rnd.sample(everyone, 15):
        want, prev = [], None
        for seq, m in states:
            cur = m.get(k)
            if cur != prev and cur is not None:
                want.append((seq, cur))
            prev = cur
        got = conn.execute(
            "SELECT seq_start, (v.data).id, (v.data).v, (v.data).n, (v.data).note FROM driftdb.versions(NULL::t) v "
            "WHERE (v.data).id = %s ORDER BY seq_start", (k,)).fetchall()
        # a version starts at the seq that wrote it; only seqs the model saw change it count
        assert [(s, tuple(r)) for s, *r in got] == want, f"{label}: versions of key {k}"
    # changes: one per changed row per seq
    per_seq = dict(conn.execute(
        "SELECT seq, count(*) FROM driftdb.changes(NULL::t) WHERE operation <> 'TRUNCATE' GROUP BY seq").fetchall())
    prev = {}
    for seq, m in states:
        n = sum(1 for k in set(prev) | set(m) if prev.get(k) != m.get(k))
        if seq == states[6][0]:
            n = 51  # the key-changing update: one UPDATE per moved row, not a delete and an insert
        if seq != states[8][0]:  # the TRUNCATE is one change, not one per row
            assert per_seq.get(seq, 0) == n, f"{label}: changes at seq {seq}"
        prev = m


def test_packed_history_reads_like_event_rows(conn):
    rnd = random.Random(3)
    _setup(conn)
    states = _workload(conn, rnd)
    npacks = conn.execute("SELECT count(*), sum(nevents) FROM driftdb.packs").fetchone()
    assert npacks[0] > 10, "the bulk transactions were packed"
    # a bulk transaction's row events are in packs only; its TRUNCATE is an event row
    truncate_seq = states[8][0]
    rows = conn.execute("SELECT op::text FROM driftdb.events WHERE seq = %s", (truncate_seq,)).fetchall()
    assert rows == [("t",)]
    # the key-changing update was not packed: its markers are event rows
    moved_seq = states[6][0]
    assert conn.execute("SELECT count(*) FROM driftdb.packs WHERE seq = %s", (moved_seq,)).fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM driftdb.events WHERE seq = %s AND op = 'm'", (moved_seq,)).fetchone()[0] == 51
    # single-row transactions stay event rows
    assert conn.execute("SELECT count(*) FROM driftdb.packs WHERE seq = %s", (states[1][0],)).fetchone()[0] == 0
    # the packs decode (independently, in Python) to the events the model implies
    evs = events(conn, "t")
    first = [e for e in evs if e[0] == states[0][0]]
    assert len(first) == 400 and {e[2] for e in first} == {"i"}
    assert [e[1] for e in first] == sorted(e[1] for e in first) and len({e[1] for e in first}) == 400
    assert event_count(conn, "t") == len(evs)
    _check_all(conn, states, rnd, "recent")
    assert_verified(conn, "t")

    # compaction moves packs into segments: same answers
    _compacted_reads_the_same(conn, states, rnd, "compacted")


def test_packs_under_compaction_purge_and_erase(conn):
    rnd = random.Random(5)
    _setup(conn, min_events=20)
    states = _workload(conn, rnd)
    # compact only the older half; the newer packs stay packs
    mid = states[len(states) // 2][0]
    conn.execute("SET driftdb.compact_min_age = 0")
    conn.execute("SELECT driftdb._compact('t'::regclass, (SELECT committed_at FROM driftdb.commits WHERE seq = %s))", (mid,))
    left = conn.execute("SELECT min(seq) FROM driftdb.packs").fetchone()[0]
    assert left is not None and left > mid
    _check_all(conn, states, rnd, "half compacted")
    assert_verified(conn, "t")
    # erase a deleted row's history: gone from packs, segments and events alike
    victim = 30  # deleted by the last transaction, written by bulk transactions before
    assert victim not in states[-1][1]
    conn.execute("SELECT * FROM driftdb.erase('t', %s)", (str(victim),))
    assert conn.execute("SELECT count(*) FROM driftdb.versions(NULL::t) v WHERE (v.data).id = %s", (victim,)).fetchone()[0] == 0
    assert all(k != as_key(victim) for _s, _o, _op, k in events(conn, "t"))
    assert any(k == as_key(victim + 1) for _s, _o, _op, k in events(conn, "t")), "keys are compared as stored"
    states = [(s, {k: r for k, r in m.items() if k != victim}) for s, m in states]
    _check_all(conn, states, rnd, "erased")
    assert_verified(conn, "t")
    # purge before a seq in the middle of the packed history
    horizon_seq = states[-4][0]
    at = conn.execute("SELECT committed_at FROM driftdb.commits WHERE seq = %s", (horizon_seq,)).fetchone()[0]
    conn.execute("SELECT * FROM driftdb.purge_history('t', %s)", (at,))
    kept = [(s, m) for s, m in states if s >= horizon_seq]
    for seq, m in kept:
        got = _rows(conn, f"SELECT {COLS} FROM driftdb.as_of(NULL::t, %s::bigint)", (seq,))
        assert got == sorted(m.values()), f"after purge: AS OF seq {seq}"
        for k in rnd.sample(sorted(set(m) | {5, 77}), 10):
            got = conn.execute(f"SELECT {COLS} FROM driftdb.as_of(NULL::t, %s::bigint) WHERE id = %s", (seq, k)).fetchall()
            assert got == ([m[k]] if k in m else [])
    assert_verified(conn, "t")


def test_bulk_loads_in_and_out_of_key_order(conn):
    """A one-table load of inserts in ascending key order is streamed into packs as its rows
    are read; one whose keys stop ascending (at once, or after packs were written) falls back
    to sorting. Either way the packs hold every event once, key-sorted, and read exactly."""
    _setup(conn, min_events=100)
    model = {}

    def load(ids):
        values = ", ".join(f"({i}, 'v{i}', {i}, NULL)" for i in ids)
        conn.execute(f"INSERT INTO t (id, v, n, note) SELECT * FROM (VALUES {values}) AS x")
        model.update({i: (i, f"v{i}", i, None) for i in ids})
        s = current_seq(conn)
        packs = conn.execute("SELECT ord, nevents, key_lo, key_hi, data FROM driftdb.packs WHERE seq = %s ORDER BY ord", (s,)).fetchall()
        entries = [e for *_, data in packs for e in unpack(bytes(data))]
        assert sorted(e[2] for e in entries) == sorted(as_key(i) for i in ids), "every event once"
        assert [e[2] for e in entries] == sorted(e[2] for e in entries), "packs in key order"
        assert [e[0] for e in entries] == list(range(0, 2 * len(ids), 2)), "ords follow the keys"
        assert all(n == len(unpack(bytes(d))) for _, n, _, _, d in packs)
        got = _rows(conn, f"SELECT {COLS} FROM driftdb.as_of(NULL::t, %s::bigint)", (s,))
        assert got == sorted(model.values())
        for k in (ids[0], ids[len(ids) // 2], ids[-1]):
            assert conn.execute(f"SELECT {COLS} FROM driftdb.as_of(NULL::t, %s::bigint) WHERE id = %s", (s, k)).fetchall() == [model[k]]
        return len(packs)

    def packs_deleted():
        conn.execute("SELECT pg_stat_force_next_flush()")
        conn.execute("SELECT 1")  # a transaction end reports the counts
        return conn.execute("SELECT n_tup_del FROM pg_stat_all_tables WHERE relid = 'driftdb.packs'::regclass").fetchone()[0]

    base = packs_deleted()
    assert load(list(range(1, 1001))) > 5                                   # ascending: streamed
    assert packs_deleted() == base
    assert load(list(range(1001, 1801)) + list(range(2000, 1800, -1))) > 5  # stops ascending late
    assert packs_deleted() > base, "the packs streamed before the keys stopped ascending were deleted"
    shuffled = list(range(2001, 3001))
    random.Random(7).shuffle(shuffled)
    assert load(shuffled) > 5                                               # never ascending
    # a load of one table among others, or with a schema change, goes the usual way
    with conn.transaction():
        conn.execute("INSERT INTO t SELECT g, 'w', g, NULL FROM generate_series(3001, 3200) g")
        conn.execute("CREATE TABLE other (id int PRIMARY KEY) USING driftdb")
        conn.execute("INSERT INTO other VALUES (1)")
    model.update({i: (i, "w", i, None) for i in range(3001, 3201)})
    assert _rows(conn, f"SELECT {COLS} FROM driftdb.as_of(NULL::t, %s::bigint)", (current_seq(conn),)) == sorted(model.values())
    assert_verified(conn, "t", "other")


def _version_1(entries: list[tuple]) -> bytes:
    """A pack of these (ord, op, key, frame) entries in format version 1 (sessions 7 to 10):
    whole frames, no commit fields in the header. Built here from the documented layout."""
    import struct
    import zlib

    body, offsets = b"", b""
    for ord_, op, key, frame in entries:
        offsets += struct.pack("<I", len(body))
        body += struct.pack("<iBH", ord_, ord(op), len(key)) + key + struct.pack("<I", len(frame)) + frame
    rest = offsets + body
    return b"DP\x01\x00" + struct.pack("<II", len(entries), zlib.crc32(rest)) + rest


def _compacted_reads_the_same(conn, states, rnd, label):
    """Compact all of t's history into segments; every read path still answers as the model."""
    conn.execute("SELECT * FROM driftdb.compact('t', '0 s')")
    assert conn.execute("SELECT count(*) FROM driftdb.packs").fetchone()[0] == 0
    _check_all(conn, states, rnd, label)
    assert_verified(conn, "t")


def test_packs_written_by_earlier_builds_still_read(conn):
    """Packs of format version 1, which sessions 7 to 10 wrote, read as before, and a purge or
    erasure rewrites them in the current version."""
    rnd = random.Random(11)
    _setup(conn, min_events=20)
    states = _workload(conn, rnd)
    packs = conn.execute("SELECT table_id, seq, ord, data FROM driftdb.packs").fetchall()
    assert len(packs) > 10 and all(bytes(d)[2] == 2 for *_, d in packs), "this build writes version 2"
    before = sorted(events(conn, "t"))
    with conn.transaction():
        conn.execute("SET LOCAL driftdb.restore_mode = on")
        for table_id, seq, ord_, data in packs:
            conn.execute("UPDATE driftdb.packs SET data = %s WHERE table_id = %s AND seq = %s AND ord = %s",
                         (_version_1(unpack(bytes(data))), table_id, seq, ord_))
    assert conn.execute("SELECT count(*) FROM driftdb.packs WHERE get_byte(data, 2) = 1").fetchone()[0] == len(packs)
    assert sorted(events(conn, "t")) == before
    _check_all(conn, states, rnd, "version 1 packs")
    assert_verified(conn, "t")
    # erasing a key rewrites the packs that held it, in version 2
    victim = 30
    assert victim not in states[-1][1]
    conn.execute("SELECT * FROM driftdb.erase('t', %s)", (str(victim),))
    rewritten = conn.execute("SELECT count(*) FROM driftdb.packs WHERE get_byte(data, 2) = 2").fetchone()[0]
    assert 0 < rewritten < len(packs)
    states = [(s, {k: r for k, r in m.items() if k != victim}) for s, m in states]
    _check_all(conn, states, rnd, "version 1 packs, erased")
    assert_verified(conn, "t")
    _compacted_reads_the_same(conn, states, rnd, "version 1 packs, compacted")


def test_rewriting_a_version_1_pack_with_a_damaged_frame_fails_cleanly(conn):
    """A version 1 pack keeps whole frames, each with its own CRC, under the pack's CRC. An
    erasure that rewrites one whose frame is damaged (pack CRC intact) reports corrupted
    history and changes nothing."""
    _setup(conn, min_events=10)
    conn.execute("INSERT INTO t SELECT g, 'v' || g, g, NULL FROM generate_series(1, 50) g")
    table_id, seq, ord_, data = conn.execute("SELECT table_id, seq, ord, data FROM driftdb.packs").fetchone()
    entries = unpack(bytes(data))
    ord0, op0, key0, frame0 = entries[0]
    entries[0] = (ord0, op0, key0, frame0[:-1] + bytes([frame0[-1] ^ 1]))  # the frame's CRC fails
    v1 = _version_1(entries)
    with conn.transaction():
        conn.execute("SET LOCAL driftdb.restore_mode = on")
        conn.execute("UPDATE driftdb.packs SET data = %s WHERE table_id = %s AND seq = %s AND ord = %s", (v1, table_id, seq, ord_))
    conn.execute("DELETE FROM t WHERE id = 50")  # erasure takes only rows that are gone
    with pytest.raises(psycopg.Error) as e:
        conn.execute("SELECT * FROM driftdb.erase('t', '50')")
    assert e.value.sqlstate == "XX001" and "frame" in str(e.value.diag.message_detail)
    assert conn.execute("SELECT data FROM driftdb.packs").fetchone()[0] == v1, "nothing was rewritten"
    assert conn.execute("SELECT count(*) FROM driftdb.as_of(NULL::t, %s::bigint) WHERE id = 50", (seq,)).fetchone() == (1,)


@pytest.mark.parametrize("setting,rows,packed", [(0, 500, False), (100, 99, False), (100, 100, True), (1000, 999, False)])
def test_threshold(conn, setting, rows, packed):
    _setup(conn, min_events=setting)
    conn.execute(f"INSERT INTO t SELECT g, 'v', 1, NULL FROM generate_series(1, {rows}) g")
    n = conn.execute("SELECT COALESCE(sum(nevents), 0) FROM driftdb.packs").fetchone()[0]
    assert n == (rows if packed else 0)
    assert conn.execute("SELECT count(*) FROM driftdb.events").fetchone()[0] == (0 if packed else rows)
    assert conn.execute("SELECT count(*) FROM driftdb.as_of(NULL::t, driftdb.current_seq())").fetchone()[0] == rows
    assert_verified(conn, "t")


def test_tables_without_a_key_and_identity_full(conn):
    conn.execute("SET driftdb.pack_min_events = 10")
    conn.execute("CREATE TABLE nokey (a int, b text) USING driftdb")
    conn.execute("CREATE TABLE full_ident (a int, b text) USING driftdb")
    conn.execute("ALTER TABLE full_ident REPLICA IDENTITY FULL")
    # duplicate rows: equal keys under REPLICA IDENTITY FULL
    for t in ("nokey", "full_ident"):
        conn.execute(f"INSERT INTO {t} SELECT g % 7, 'x' FROM generate_series(1, 50) g")
    assert conn.execute("SELECT count(*) FROM driftdb.packs p JOIN driftdb.tables t USING (table_id) WHERE t.relid = 'nokey'::regclass").fetchone()[0] == 0
    assert conn.execute("SELECT sum(nevents) FROM driftdb.packs p JOIN driftdb.tables t USING (table_id) WHERE t.relid = 'full_ident'::regclass").fetchone()[0] == 50
    conn.execute("UPDATE full_ident SET b = 'y' WHERE a = 3")
    conn.execute("DELETE FROM full_ident WHERE a < 3")
    seqs = [r[0] for r in conn.execute("SELECT seq FROM driftdb.commits ORDER BY seq")]
    want = {seqs[1]: [(g % 7, "x") for g in range(1, 51)]}
    want[seqs[2]] = [(a, "y" if a == 3 else b) for a, b in want[seqs[1]]]
    want[seqs[3]] = [(a, b) for a, b in want[seqs[2]] if a >= 3]
    for s, rows in want.items():
        assert _rows(conn, "SELECT a, b FROM driftdb.as_of(NULL::full_ident, %s::bigint)", (s,)) == sorted(rows)
    assert_verified(conn, "nokey", "full_ident")


def test_identity_full_wide_rows_are_packed_under_their_key_digest(conn):
    """Under REPLICA IDENTITY FULL the key is the whole row. A pack entry holds a key of at
    most 64 kB; long keys are filed under their 33-byte digest (0xc1 + SHA-256), so a bulk
    transaction with an 80 kB row is packed like any other (it used to fail its commit)."""
    conn.execute("SET driftdb.pack_min_events = 10")
    conn.execute("CREATE TABLE wide (a int, b text) USING driftdb")
    conn.execute("ALTER TABLE wide REPLICA IDENTITY FULL")
    big = "ab" * 40_000  # 80 kB
    with conn.transaction():
        conn.execute("INSERT INTO wide SELECT g, 'small' FROM generate_series(1, 30) g")
        conn.execute("INSERT INTO wide VALUES (31, %s)", (big,))
    s = current_seq(conn)
    packs = conn.execute("SELECT data FROM driftdb.packs p JOIN driftdb.tables t USING (table_id) WHERE t.relid = 'wide'::regclass").fetchall()
    keys = [e[2] for (data,) in packs for e in unpack(bytes(data))]
    assert len(keys) == 31 and event_count(conn, "wide") == 31
    assert as_key((31, big)) in keys and len(as_key((31, big))) == 33 and as_key((1, "small")) in keys
    conn.execute("DELETE FROM wide WHERE a = 31")
    got = _rows(conn, "SELECT a, length(b), md5(b) FROM driftdb.as_of(NULL::wide, %s::bigint)", (s,))
    assert (31, len(big)) in [(a, n) for a, n, _ in got] and len(got) == 31
    assert _rows(conn, "SELECT a FROM driftdb.as_of(NULL::wide, %s::bigint)", (current_seq(conn),)) == [(i,) for i in range(1, 31)]
    assert_verified(conn, "wide")


def test_copy_from_stdin_is_packed_and_exact(conn):
    _setup(conn, min_events=1000, pack_target=None)
    with conn.cursor().copy("COPY t (id, v, n, note) FROM STDIN") as cp:
        for i in range(1, 3001):
            cp.write_row((i, f"row {i}", i / 4, None if i % 5 else "five"))
    assert conn.execute("SELECT sum(nevents) FROM driftdb.packs").fetchone()[0] == 3000
    s = current_seq(conn)
    got = _rows(conn, f"SELECT {COLS} FROM driftdb.as_of(NULL::t, %s::bigint)", (s,))
    assert got == _rows(conn, f"SELECT {COLS} FROM t")
    for i in (1, 1500, 3000):
        assert conn.execute("SELECT v FROM driftdb.as_of(NULL::t, %s::bigint) WHERE id = %s", (s, i)).fetchone() == (f"row {i}",)
    # each pack fits inline (compressed) and holds a disjoint, ascending key range
    packs = conn.execute("SELECT ord, nevents, key_lo, key_hi, data FROM driftdb.packs ORDER BY ord").fetchall()
    prev_hi = None
    for ord_, n, lo, hi, data in packs:
        es = unpack(bytes(data))
        assert len(es) == n and es[0][2] == bytes(lo) and es[-1][2] == bytes(hi) and es[0][0] == ord_
        assert prev_hi is None or bytes(lo) > prev_hi
        prev_hi = bytes(hi)
    # compressed (by driftdb, ahead of TOAST, with lz4 as the column says), and inline:
    # nothing went to the packs table's TOAST relation
    stored, raw, methods = conn.execute(
        "SELECT sum(pg_column_size(data)), sum(octet_length(data)), array_agg(DISTINCT pg_column_compression(data)) "
        "FROM driftdb.packs").fetchone()
    assert stored < raw * 0.8 and methods == ["lz4"]
    toast = conn.execute("SELECT reltoastrelid::regclass::text FROM pg_class WHERE oid = 'driftdb.packs'::regclass").fetchone()[0]
    assert conn.execute(f"SELECT count(*) FROM {toast}").fetchone() == (0,)
    # sized by the table's toast_tuple_target (8160): about 11 kB of events a pack
    assert conn.execute("SELECT reloptions FROM pg_class WHERE oid = 'driftdb.packs'::regclass").fetchone()[0] == ["toast_tuple_target=8160"]
    assert 8000 < max(len(bytes(p[4])) for p in packs) <= 11220 + 1024
    # every packed event is the frame an events row would hold, built here from the model:
    # [seq, commit time, table id, op, key, old key, old row, new row, schema], a row being a
    # map of attnum to value (numeric as [6, its text])
    table_id, at = conn.execute(
        "SELECT t.table_id, (EXTRACT(EPOCH FROM c.committed_at) * 1000000)::bigint - 946684800000000 "
        "FROM driftdb.tables t, driftdb.commits c WHERE t.relid = 't'::regclass AND c.seq = %s", (s,)).fetchone()
    got = {e[2]: e[3] for (*_, data) in packs for e in unpack(bytes(data))}
    assert len(got) == 3000
    for i in range(1, 3001):
        row = b"\x84" + b"".join(mp(a) + v for a, v in (
            (1, mp(i)), (2, mp(f"row {i}")), (3, mp([6, f"{i / 4:.2f}"])), (4, mp(None if i % 5 else "five"))))
        tail = mp([i]) + b"\xc0\xc0" + row + b"\xc0"
        assert got[as_key(i)] == frame_from_tail(s, at, table_id, "i", tail), f"the frame of row {i}"
    assert_verified(conn, "t")


def test_packs_follow_the_column_compression(conn):
    """driftdb compresses packs itself only when driftdb.packs.data is an lz4 column (as
    bootstrap.sql makes it); under pglz, PostgreSQL compresses them as it would any value, and
    both read back the same."""
    _setup(conn, min_events=100, pack_target=None)
    conn.execute("ALTER TABLE driftdb.packs ALTER COLUMN data SET COMPRESSION pglz")
    model, states = {}, []
    _commit(conn, model, states, "INSERT INTO t SELECT g, 'row ' || g, g / 4.0, NULL FROM generate_series(1, 2000) g")
    conn.execute("ALTER TABLE driftdb.packs ALTER COLUMN data SET COMPRESSION lz4")
    _commit(conn, model, states, "UPDATE t SET v = v || ' again', note = 'n' || id WHERE id > 500")
    by_seq = dict(conn.execute(
        "SELECT seq, array_agg(DISTINCT pg_column_compression(data)) FROM driftdb.packs GROUP BY seq").fetchall())
    assert by_seq == {states[0][0]: ["pglz"], states[1][0]: ["lz4"]}
    for s, want in states:
        got = _rows(conn, f"SELECT {COLS} FROM driftdb.as_of(NULL::t, %s::bigint)", (s,))
        assert got == sorted(want.values())
        assert conn.execute("SELECT v FROM driftdb.as_of(NULL::t, %s::bigint) WHERE id = 1999", (s,)).fetchone() == (want[1999][1],)
    assert_verified(conn, "t")


def test_a_damaged_pack_is_reported_not_trusted(conn):
    _setup(conn, min_events=10)
    conn.execute("INSERT INTO t SELECT g, 'v' || g, g, NULL FROM generate_series(1, 100) g")
    s = current_seq(conn)
    # flip one byte of one frame inside a pack (the pack's CRC no longer matches)
    with conn.transaction():
        conn.execute("SET LOCAL driftdb.restore_mode = on")
        conn.execute("UPDATE driftdb.packs SET data = set_byte(data, length(data) - 2, get_byte(data, length(data) - 2) # 1) "
                     "WHERE ord = (SELECT max(ord) FROM driftdb.packs)")
    with pytest.raises(psycopg.Error) as e:
        conn.execute("SELECT count(*) FROM driftdb.as_of(NULL::t, %s::bigint)", (s,)).fetchone()
    assert e.value.sqlstate == "XX001" and "pack" in str(e.value)
    with pytest.raises(psycopg.Error) as e:
        conn.execute("SELECT * FROM driftdb.as_of(NULL::t, %s::bigint) WHERE id = 100", (s,)).fetchone()
    assert e.value.sqlstate == "XX001"
    # keys in undamaged packs still read
    assert conn.execute("SELECT v FROM driftdb.as_of(NULL::t, %s::bigint) WHERE id = 1", (s,)).fetchone() == ("v1",)
    # the server survived
    assert conn.execute("SELECT 1").fetchone() == (1,)


def test_concurrent_bulk_writers(db):
    a, b, obs = db.connect(), db.connect(), db.connect()
    _setup(a, min_events=30)
    b.execute("SET driftdb.pack_min_events = 30")
    a.execute("INSERT INTO t SELECT g, 'init', 0, NULL FROM generate_series(1, 600) g")
    # two sessions interleave bulk updates of disjoint halves and single-row updates
    for r in range(5):
        with a.transaction(), b.transaction():
            a.execute(f"UPDATE t SET v = 'a{r}' WHERE id <= 300")
            b.execute(f"UPDATE t SET v = 'b{r}' WHERE id > 300")
            b.execute(f"UPDATE t SET n = n + 1 WHERE id = {301 + r}")
            a.execute(f"UPDATE t SET n = n + 1 WHERE id = {1 + r}")
    states = []
    top = current_seq(obs)
    for s in range(1, top + 1):
        rows = obs.execute("SELECT id, v, n FROM driftdb.as_of(NULL::t, %s::bigint)", (s,)).fetchall()
        assert len(rows) == 600
        states.append(rows)
    final = sorted(obs.execute("SELECT id, v, n FROM t").fetchall())
    assert sorted(states[-1]) == final
    assert_verified(obs, "t")


def test_dump_and_restore_keep_packs(db, tmp_path, pg_cluster):
    import os
    import secrets
    import subprocess

    conn = db.connect()
    rnd = random.Random(9)
    _setup(conn, min_events=25)
    states = _workload(conn, rnd)
    before = conn.execute("SELECT table_id, seq, ord, nevents, nversions, key_lo, key_hi, data FROM driftdb.packs ORDER BY 1, 2, 3").fetchall()
    assert before
    dump = tmp_path / "d.dump"
    args = ["-h", "127.0.0.1", "-p", str(pg_cluster.port), "-U", "postgres"]
    env = {k: v for k, v in os.environ.items() if k != "PGOPTIONS"}
    res = subprocess.run([str(PGBIN / "pg_dump"), "-Fc", "-f", str(dump), *args, db.name], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    target = f"t_restore_{secrets.token_hex(4)}"
    with pg_cluster.connect() as c:
        c.execute(f'CREATE DATABASE "{target}" TEMPLATE template0')
    try:
        res = subprocess.run([str(PGBIN / "pg_restore"), "-j", "2", "-d", target, *args, str(dump)],
                             env={**env, "PGOPTIONS": "-c driftdb.restore_mode=on"}, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        with pg_cluster.connect(target) as c:
            after = c.execute("SELECT table_id, seq, ord, nevents, nversions, key_lo, key_hi, data FROM driftdb.packs ORDER BY 1, 2, 3").fetchall()
            assert after == before
            _check_all(c, states, rnd, "restored")
            assert_verified(c, "t")
    finally:
        with pg_cluster.connect() as c:
            c.execute(f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)')
