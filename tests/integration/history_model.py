"""Oracle helpers for driftdb's history tests (tests/integration/test_history_*.py).

There is no SQL decoder of DriftDB frames yet, so history is checked at three levels:

(a) the audit trail: which seqs exist, their order, timestamps, xids, roles and tables
    (``driftdb.transactions``);
(b) per table: the op ('i', 'u', 'd', 't') and identity key of every event of every seq
    (``driftdb.events``; ``key`` is the MessagePack encoding of the identity values, computed
    here by :func:`mp_key`);
(c) ``driftdb.verify(table)`` (history replayed to now equals the live table), plus the live
    table compared with a Python model that only the test's own committed writes update.

The model of "what a transaction did" is :func:`net_ops`: the difference between the rows
before and after, per key — an insert, an update (only when the row changed), a delete.
"""
from __future__ import annotations

import hashlib

import struct
from typing import Any, Iterable, Mapping

import psycopg

# --------------------------------------------------------------------------------------------
# MessagePack (the subset driftdb keys use for ints, text, bools, NULL, bytea, float8)
# --------------------------------------------------------------------------------------------


def mp(v: Any) -> bytes:
    """MessagePack encoding of one value, most compact form (as rmp/rmp-serde write it)."""
    if v is None:
        return b"\xc0"
    if v is True:
        return b"\xc3"
    if v is False:
        return b"\xc2"
    if isinstance(v, int):
        if 0 <= v <= 0x7F:
            return bytes([v])
        if -32 <= v < 0:
            return struct.pack(">b", v)
        if v > 0:
            if v <= 0xFF:
                return b"\xcc" + struct.pack(">B", v)
            if v <= 0xFFFF:
                return b"\xcd" + struct.pack(">H", v)
            if v <= 0xFFFFFFFF:
                return b"\xce" + struct.pack(">I", v)
            return b"\xcf" + struct.pack(">Q", v)
        if v >= -0x80:
            return b"\xd0" + struct.pack(">b", v)
        if v >= -0x8000:
            return b"\xd1" + struct.pack(">h", v)
        if v >= -0x80000000:
            return b"\xd2" + struct.pack(">i", v)
        return b"\xd3" + struct.pack(">q", v)
    if isinstance(v, float):
        return b"\xcb" + struct.pack(">d", v)
    if isinstance(v, str):
        b = v.encode()
        n = len(b)
        if n < 32:
            return bytes([0xA0 | n]) + b
        if n <= 0xFF:
            return b"\xd9" + bytes([n]) + b
        if n <= 0xFFFF:
            return b"\xda" + struct.pack(">H", n) + b
        return b"\xdb" + struct.pack(">I", n) + b
    if isinstance(v, (bytes, bytearray, memoryview)):
        b = bytes(v)
        n = len(b)
        if n <= 0xFF:
            return b"\xc4" + bytes([n]) + b
        if n <= 0xFFFF:
            return b"\xc5" + struct.pack(">H", n) + b
        return b"\xc6" + struct.pack(">I", n) + b
    if isinstance(v, (list, tuple)):
        n = len(v)
        if n < 16:
            head = bytes([0x90 | n])
        elif n <= 0xFFFF:
            head = b"\xdc" + struct.pack(">H", n)
        else:
            head = b"\xdd" + struct.pack(">I", n)
        return head + b"".join(mp(x) for x in v)
    raise TypeError(f"mp(): no encoding for {type(v).__name__}")


def mp_key(*values: Any) -> bytes:
    """The ``driftdb.events.key`` of a row whose identity values are ``values``: their
    MessagePack array, or, longer than 1024 bytes, 0xc1 and the SHA-256 of it."""
    b = mp(list(values))
    return b if len(b) <= 1024 else b"\xc1" + hashlib.sha256(b).digest()


def as_key(k: Any) -> bytes:
    """A model key (a scalar, or a tuple for a multi-column identity) as event key bytes."""
    return mp_key(*k) if isinstance(k, tuple) else mp_key(k)


# --------------------------------------------------------------------------------------------
# Reading what driftdb recorded
# --------------------------------------------------------------------------------------------


def current_seq(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT driftdb.current_seq()").fetchone()[0]


def transactions(conn: psycopg.Connection, after_seq: int = 0) -> list[dict]:
    """driftdb.transactions rows with seq > after_seq, in seq order, as dicts (tables as text)."""
    cur = conn.execute(
        'SELECT seq, committed_at, xid::text::bigint AS xid, committed_by, "session_user", '
        "application_name, tables::text[] AS tables "
        "FROM driftdb.transactions WHERE seq > %s ORDER BY seq",
        (after_seq,),
    )
    cols = [d.name for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


def seqs(conn: psycopg.Connection) -> list[int]:
    return [r[0] for r in conn.execute("SELECT seq FROM driftdb.commits ORDER BY seq")]


def _mp_uint(v: int) -> bytes:
    """MessagePack of a non-negative integer in its shortest form."""
    if v < 0x80:
        return bytes([v])
    for marker, fmt, top in ((0xCC, ">B", 0xFF), (0xCD, ">H", 0xFFFF), (0xCE, ">I", 0xFFFFFFFF)):
        if v <= top:
            return bytes([marker]) + struct.pack(fmt, v)
    return b"\xcf" + struct.pack(">Q", v)


def _mp_int(v: int) -> bytes:
    """MessagePack of a signed integer in its shortest form (rmp's write_sint)."""
    if v >= 0:
        return _mp_uint(v)
    if v >= -32:
        return struct.pack(">b", v)
    for marker, fmt, low in ((0xD0, ">b", -0x80), (0xD1, ">h", -0x8000), (0xD2, ">i", -0x80000000)):
        if v >= low:
            return bytes([marker]) + struct.pack(fmt, v)
    return b"\xd3" + struct.pack(">q", v)


def frame_from_tail(seq: int, committed_at: int, table_id: int, op: str, tail: bytes) -> bytes:
    """The DriftDB frame of an event stored as its tail (docs/architecture.md, "DriftDB frame"):
    header "DF", version 1, flags 0, CRC-32 over version, flags, length and payload, length,
    then the payload: a 9-element array whose first four elements are seq, commit time, table
    id and op code, and whose other five are the tail."""
    import zlib

    payload = b"\x99" + _mp_uint(seq) + _mp_int(committed_at) + _mp_uint(table_id) + _mp_uint("iud".index(op)) + tail
    length = struct.pack("<I", len(payload))
    crc = zlib.crc32(bytes([1, 0]) + length + payload)
    return b"DF\x01\x00" + struct.pack("<I", crc) + length + payload


def unpack(data: bytes) -> list[tuple]:
    """The entries (ord, op, key, frame) of one event pack (``driftdb.packs.data``), decoded
    here from the documented layout (docs/architecture.md, "Event packs"), independently of
    driftdb's own reader: magic "DP", version, count, CRC-32 over the rest; version 2: seq,
    commit time, table id, offsets, then per entry ord i32, op u8, flags u8, key length u16,
    key (unless flag 1: the tail opens with it), tail up to the next entry, from which the frame
    is rebuilt; version 1: offsets, then per entry ord i32, op u8, key length u16, key, frame
    length u32, frame (little-endian)."""
    import zlib

    assert data[:2] == b"DP" and data[2] in (1, 2) and data[3] == 0, data[:4]
    version = data[2]
    n, crc = struct.unpack_from("<II", data, 4)
    assert zlib.crc32(data[12:]) == crc, "pack CRC"
    if version == 1:
        header = 12
    else:
        header = 32
        seq, at, table_id = struct.unpack_from("<QqI", data, 12)
    body = header + 4 * n
    offsets = [struct.unpack_from("<I", data, header + 4 * i)[0] for i in range(n)] + [len(data) - body]
    out = []
    for i in range(n):
        p = body + offsets[i]
        end = body + offsets[i + 1]
        if version == 1:
            ord_, op, klen = struct.unpack_from("<iBH", data, p)
            p += 7
            key = bytes(data[p:p + klen])
            p += klen
            (flen,) = struct.unpack_from("<I", data, p)
            p += 4
            frame = bytes(data[p:p + flen])
            assert p + flen == end, "v1 entries are contiguous"
        else:
            ord_, op, flags, klen = struct.unpack_from("<iBBH", data, p)
            p += 8
            assert flags in (0, 1), flags
            if flags == 0:
                key = bytes(data[p:p + klen])
                p += klen
            tail = bytes(data[p:end])
            if flags == 1:
                key = tail[:klen]
            frame = frame_from_tail(seq, at, table_id, chr(op), tail)
        out.append((ord_, chr(op), key, frame))
    keys = [(k, o) for o, _, k, _ in out]
    assert keys == sorted(keys), "pack entries sorted by (key, ord)"
    return out


def events(conn: psycopg.Connection, table: str, after_seq: int = 0) -> list[tuple]:
    """(seq, ord, op, key bytes or None) of every recent event of ``table`` after ``after_seq``:
    the rows of driftdb.events and the entries of driftdb.packs (bulk transactions)."""
    rows = conn.execute(
        "SELECT e.seq, e.ord, e.op::text, e.key FROM driftdb.events e "
        "JOIN driftdb.tables t ON t.table_id = e.table_id "
        "WHERE t.relid = %s::regclass AND e.seq > %s ORDER BY e.seq, e.ord",
        (table, after_seq),
    ).fetchall()
    out = [(s, o, op, bytes(k) if k is not None else None) for s, o, op, k in rows]
    packs = conn.execute(
        "SELECT p.seq, p.data FROM driftdb.packs p JOIN driftdb.tables t ON t.table_id = p.table_id "
        "WHERE t.relid = %s::regclass AND p.seq > %s",
        (table, after_seq),
    ).fetchall()
    for s, data in packs:
        out.extend((s, o, op, k) for o, op, k, _f in unpack(bytes(data)))
    out.sort(key=lambda e: (e[0], e[1]))
    return out


def events_by_seq(conn: psycopg.Connection, table: str, after_seq: int = 0) -> dict[int, list[tuple]]:
    """seq -> [(op, key)] in ord order, for ``table``."""
    out: dict[int, list[tuple]] = {}
    for s, _o, op, k in events(conn, table, after_seq):
        out.setdefault(s, []).append((op, k))
    return out


def ops_by_seq(conn: psycopg.Connection, table: str, after_seq: int = 0,
               schema_events: bool = True) -> list[dict]:
    """One {key: op} dict per seq that touched ``table`` (seq order). Truncates (and schema
    changes, 's', unless ``schema_events`` is false) appear under key None; an update that
    changed a row's identity appears as 'u' under the new key and a moved-key marker 'm' under
    the old one. A key may have only one event per seq: history is transaction-granular."""
    res = []
    for _s, evs in sorted(events_by_seq(conn, table, after_seq).items()):
        d = {}
        for op, k in evs:
            if op == "s" and not schema_events:
                continue
            assert k not in d, f"two events for one key {k!r} in one seq: {evs}"
            d[k] = op
        if d:
            res.append(d)
    return res


def event_count(conn: psycopg.Connection, table: str | None = None) -> int:
    """Recent events (rows of driftdb.events plus packed events) of one table or of all."""
    if table is None:
        return conn.execute(
            "SELECT (SELECT count(*) FROM driftdb.events) + (SELECT COALESCE(sum(nevents), 0) FROM driftdb.packs)"
        ).fetchone()[0]
    return conn.execute(
        "SELECT (SELECT count(*) FROM driftdb.events e JOIN driftdb.tables t USING (table_id) "
        "        WHERE t.relid = %s::regclass) + "
        "       (SELECT COALESCE(sum(nevents), 0) FROM driftdb.packs p JOIN driftdb.tables t USING (table_id) "
        "        WHERE t.relid = %s::regclass)",
        (table, table),
    ).fetchone()[0]


def verify_rows(conn: psycopg.Connection, table: str) -> list[tuple]:
    return conn.execute(
        'SELECT item, ok, detail FROM driftdb.verify(%s::regclass)', (table,)
    ).fetchall()


def assert_verified(conn: psycopg.Connection, *tables: str) -> None:
    """driftdb.verify passes all its checks for every table: frames, replay, live, and chain
    once the table has compacted segments or purge/erasure records."""
    for t in tables:
        rows = verify_rows(conn, t)
        checks = [r[0] for r in rows]
        assert len(checks) == len(set(checks)) and set(checks) - {"chain"} == {"frames", "replay", "live"}, (
            f"verify({t}) returned checks {rows}")
        bad = [r for r in rows if not r[1]]
        assert not bad, f"driftdb.verify({t}) failed: {bad}"


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


def live(conn: psycopg.Connection, table: str, key: str = "id", cols: str = "*") -> dict:
    """The live table as {key: row tuple}; ``key`` is one column or a comma list (tuple keys)."""
    keycols = [c.strip() for c in key.split(",")]
    cur = conn.execute(f"SELECT {', '.join(keycols)}, {cols} FROM {table}")
    out = {}
    for r in cur.fetchall():
        n = len(keycols)
        k = r[0] if n == 1 else tuple(r[:n])
        assert k not in out, f"duplicate key {k!r} in {table}"
        out[k] = tuple(r[n:])
    return out


def net_ops(before: Mapping, after: Mapping) -> dict:
    """Expected {key bytes: op} of one transaction from the rows before and after it."""
    ops = {}
    for k in set(before) | set(after):
        if k not in before:
            ops[as_key(k)] = "i"
        elif k not in after:
            ops[as_key(k)] = "d"
        elif before[k] != after[k]:
            ops[as_key(k)] = "u"
    return ops


class Model:
    """A table's rows as the test expects them, plus the expected history (one {key: op} per
    seq that touched the table). Update it only with writes the test knows committed."""

    def __init__(self, table: str, key: str = "id", cols: str = "*"):
        self.table, self.key, self.cols = table, key, cols
        self.rows: dict = {}
        self.history: list[dict] = []

    def commit(self, new_rows: Mapping, truncate: bool = False) -> None:
        """A committed transaction left the table as ``new_rows``."""
        ops = net_ops({} if truncate else self.rows, new_rows)
        if truncate:
            ops[None] = "t"
        if ops:
            self.history.append(ops)
        self.rows = dict(new_rows)

    def apply(self, upserts: Mapping = {}, deletes: Iterable = (), truncate: bool = False) -> None:
        rows = {} if truncate else dict(self.rows)
        for k in deletes:
            rows.pop(k, None)
        rows.update(upserts)
        self.commit(rows, truncate=truncate)

    def check(self, conn: psycopg.Connection, after_seq: int = 0) -> None:
        """Live rows equal the model, the history of the table equals the expected history, and
        verify passes."""
        got = live(conn, self.table, self.key, self.cols)
        assert got == self.rows, f"live {self.table} differs from the model"
        hist = ops_by_seq(conn, self.table, after_seq)
        assert hist == self.history, (
            f"history of {self.table} differs:\n got      {hist}\n expected {self.history}"
        )
        assert_verified(conn, self.table)


def assert_commit_order(conn: psycopg.Connection) -> None:
    """Seqs strictly increase (trivially, by ORDER BY) and timestamps never go back."""
    rows = conn.execute("SELECT seq, committed_at FROM driftdb.commits ORDER BY seq").fetchall()
    for (s1, t1), (s2, t2) in zip(rows, rows[1:]):
        assert s2 > s1
        assert t2 >= t1, f"committed_at goes back: seq {s1} at {t1}, seq {s2} at {t2}"


# --------------------------------------------------------------------------------------------
# Concurrent workload with a client-side oracle (concurrency and crash tests)
# --------------------------------------------------------------------------------------------

import datetime as _dt
import random as _random
import threading as _threading
from dataclasses import dataclass, field as _field

WORKLOAD_DDL = "CREATE TABLE {t} (id int PRIMARY KEY, v text NOT NULL, n int NOT NULL) USING driftdb"


@dataclass
class Stmt:
    table: str
    key: int
    kind: str  # "upsert" | "delete"
    v: str | None
    n: int | None = None  # RETURNING n: the row's write count after an upsert / before a delete


@dataclass
class TxRecord:
    worker: int
    index: int
    stmts: list = _field(default_factory=list)
    xid: int | None = None
    # "open" (statements running), "committing" (COMMIT sent), "committed" (COMMIT returned),
    # "aborted" (certainly not committed), "unknown" (the connection died during COMMIT)
    status: str = "open"
    began: _dt.datetime | None = None  # client clock before BEGIN
    ended: _dt.datetime | None = None  # client clock after COMMIT returned
    error: str | None = None

    def net(self) -> dict:
        """What the transaction did, from the client's own results:
        {(table, key): (existed_before, final) } where final is (v, n) or None (absent)."""
        first: dict = {}
        final: dict = {}
        for s in self.stmts:
            tk = (s.table, s.key)
            if s.kind == "delete" and s.n is None:
                continue  # deleted nothing
            if tk not in first:
                first[tk] = (s.n > 1) if s.kind == "upsert" else True
            final[tk] = (s.v, s.n) if s.kind == "upsert" else None
        return {tk: (first[tk], final[tk]) for tk in first}

    def first_effective(self) -> dict:
        out = {}
        for s in self.stmts:
            if s.kind == "delete" and s.n is None:
                continue
            out.setdefault((s.table, s.key), s)
        return out

    def expected_ops(self) -> dict:
        """{(table, key bytes): op} this transaction must have recorded."""
        ops = {}
        for (t, k), (existed, final) in self.net().items():
            if not existed and final is not None:
                ops[(t, mp_key(k))] = "i"
            elif existed and final is None:
                ops[(t, mp_key(k))] = "d"
            elif existed and final is not None:
                ops[(t, mp_key(k))] = "u"  # every upsert writes a new v and n: always a change
        return ops


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def run_worker(conninfo: str, wid: int, tables: list[str], ntx: int | None, keys: int,
               records: list, stop: _threading.Event | None = None, seed: int = 0,
               hot: int = 8) -> None:
    """Random single- and multi-row READ COMMITTED transactions until ``ntx`` are done or
    ``stop`` is set or the connection dies. Every transaction is appended to ``records``
    (list.append is atomic) before it starts, so a crash leaves its state visible."""
    rnd = _random.Random(seed * 1000 + wid)
    try:
        conn = psycopg.connect(conninfo, autocommit=True)
    except psycopg.Error:
        return
    i = 0
    try:
        while (ntx is None or i < ntx) and not (stop is not None and stop.is_set()):
            rec = TxRecord(wid, i)
            records.append(rec)
            i += 1
            # 1-3 statements; keys drawn mostly from a small hot set so that transactions
            # conflict; statements sorted by (table, key) so that lock order is global (no
            # deadlocks); never delete-then-upsert of one key in one transaction.
            picks = []
            for _ in range(rnd.choice((1, 1, 1, 2, 3))):
                t = rnd.choice(tables)
                k = rnd.randrange(hot) if rnd.random() < 0.6 else rnd.randrange(keys)
                kind = "delete" if rnd.random() < 0.25 else "upsert"
                picks.append((t, k, kind))
            picks.sort(key=lambda p: (p[0], p[1], p[2] == "delete"))
            for j, (t, k, kind) in enumerate(picks):
                rec.stmts.append(Stmt(t, k, kind, f"w{wid}.{rec.index}.{j}" if kind == "upsert" else None))
            try:
                rec.began = _now()
                conn.execute("BEGIN")
                rec.xid = conn.execute("SELECT txid_current()").fetchone()[0]
                for s in rec.stmts:
                    if s.kind == "upsert":
                        row = conn.execute(
                            f"INSERT INTO {s.table} (id, v, n) VALUES (%s, %s, 1) "
                            f"ON CONFLICT (id) DO UPDATE SET v = excluded.v, n = {s.table}.n + 1 RETURNING n",
                            (s.key, s.v),
                        ).fetchone()
                    else:
                        row = conn.execute(f"DELETE FROM {s.table} WHERE id = %s RETURNING n", (s.key,)).fetchone()
                    s.n = row[0] if row else None
                if rnd.random() < 0.05:
                    conn.execute("ROLLBACK")
                    rec.status = "aborted"
                    continue
                rec.status = "committing"
                conn.execute("COMMIT")
                rec.ended = _now()
                rec.status = "committed"
            except psycopg.OperationalError as e:
                rec.error = str(e)
                rec.status = "unknown" if rec.status == "committing" else "aborted"
                return
            except psycopg.Error as e:
                rec.error = f"{e.sqlstate}: {e}"
                if rec.status == "committing":
                    rec.status = "unknown" if conn.closed or conn.broken else "aborted"
                else:
                    rec.status = "aborted"
                if conn.closed or conn.broken:
                    return
                try:
                    conn.execute("ROLLBACK")
                except psycopg.Error:
                    return
    finally:
        try:
            conn.close()
        except Exception:
            pass


def run_workload(conninfo: str, tables: list[str], workers: int, ntx: int | None, keys: int = 60,
                 stop: _threading.Event | None = None, seed: int = 0, records: list | None = None):
    """Start ``workers`` threads; returns (threads, records). Join the threads yourself."""
    records = [] if records is None else records
    threads = [
        _threading.Thread(target=run_worker, args=(conninfo, w, tables, ntx, keys, records, stop, seed),
                          daemon=True)
        for w in range(workers)
    ]
    for th in threads:
        th.start()
    return threads, records


def check_workload(conn: psycopg.Connection, tables: list[str], records: list,
                   after_seq: int = 0, allow_unknown: bool = False) -> dict:
    """Check what driftdb recorded against what the clients saw. Returns the model
    {table: {key: (v, n)}}. Raises AssertionError with a precise message on any mismatch."""
    recorded = transactions(conn, after_seq)
    by_xid: dict = {}
    for x in recorded:
        assert x["xid"] not in by_xid, f"two seqs for xid {x['xid']}"
        by_xid[x["xid"]] = x
    # After a crash PostgreSQL may hand out again the xids of transactions that left nothing
    # durable (aborted, in flight and lost, or committed without writing anything: their commit
    # record is not flushed), so an xid names the latest transaction that got it; the xid of a
    # transaction that wrote rows and committed is never reused.
    ours: dict = {}
    for r in records:
        if r.xid is not None:
            prev = ours.get(r.xid)
            wrote = prev is not None and any(s.n is not None for s in prev.stmts)
            assert not (prev is not None and prev.status == "committed" and wrote), (
                f"xid {r.xid} reused after a commit that wrote rows: {prev}, {r}")
            ours[r.xid] = r
    for x in recorded:
        r = ours.get(x["xid"])
        assert r is not None, f"seq {x['seq']} (xid {x['xid']}) is not a transaction of this test"
        assert r.status in ("committed", "unknown"), (
            f"seq {x['seq']} belongs to a transaction the client saw {r.status}: {r}; "
            f"all records with that xid: {[q for q in records if q.xid == r.xid]}")
    for r in records:
        if r.xid is not None and ours[r.xid] is not r:
            continue  # its xid was handed out again after a crash
        if r.status in ("open", "committing"):
            raise AssertionError(f"worker left a transaction {r.status}: {r}")
        if r.status == "unknown":
            assert allow_unknown, f"transaction with unknown outcome: {r}"
        if r.status == "committed":
            exp = r.expected_ops()
            if exp:
                assert r.xid in by_xid, f"committed transaction missing from history: {r}"
            else:
                assert r.xid not in by_xid, f"transaction without net changes got seq: {r}"
        elif r.status == "aborted":
            assert r.xid not in by_xid, f"aborted transaction in history: {r}"

    # events: exactly the expected ops of each recorded transaction
    rows = [(s, t, op, k) for t in tables for s, _o, op, k in events(conn, t, after_seq)]
    ev: dict = {}
    for s, t, op, k in rows:
        d = ev.setdefault(s, {})
        tk = (t, k)
        assert tk not in d, f"two events for {tk} in seq {s}"
        d[tk] = op
    seqs_recorded = {x["seq"] for x in recorded}
    assert set(ev) <= seqs_recorded, f"events for seqs not in driftdb.commits: {set(ev) - seqs_recorded}"
    for x in recorded:
        r = ours[x["xid"]]
        exp = r.expected_ops()
        got = ev.get(x["seq"], {})
        assert got == exp, f"seq {x['seq']} events differ from what the client did:\n got {got}\n exp {exp}\n {r}"
        assert sorted(x["tables"]) == sorted({t for t, _k in exp}), (x, exp)

    # seq order is the serialization order: replaying the clients' effects in seq order must
    # agree with what every client observed (the row existed or not, its write count n)
    model: dict = {t: {} for t in tables}
    for x in sorted(recorded, key=lambda x: x["seq"]):
        r = ours[x["xid"]]
        firsts = r.first_effective()
        for (t, k), (existed, final) in r.net().items():
            have = model[t].get(k)
            s = firsts[(t, k)]
            if existed:
                assert have is not None, f"seq {x['seq']}: client saw {t}.{k} existing, seq order says absent; {r}"
                want_n = s.n - 1 if s.kind == "upsert" else s.n
                assert have[1] == want_n, (
                    f"seq {x['seq']}: {t}.{k} had n={have[1]} in seq order, client saw n={want_n}: "
                    f"seq order is not the commit order; {r}")
            else:
                assert have is None, f"seq {x['seq']}: client inserted {t}.{k}, seq order says it existed; {r}"
            if final is None:
                model[t].pop(k, None)
            else:
                model[t][k] = final

    # real time: a transaction whose COMMIT returned before another began has the smaller seq
    done = sorted(((x["seq"], ours[x["xid"]]) for x in recorded if ours[x["xid"]].status == "committed"),
                  key=lambda p: p[0])
    committed_at = {x["seq"]: x["committed_at"] for x in recorded}
    min_end_after = None
    for seq, r in reversed(done):
        if min_end_after is not None:
            assert not (min_end_after[0] < r.began), (
                f"seq {seq} began at {r.began}, after seq {min_end_after[1]} had committed "
                f"({min_end_after[0]}), yet got the smaller seq")
        if min_end_after is None or r.ended < min_end_after[0]:
            min_end_after = (r.ended, seq)
        c_at = committed_at[seq]
        assert r.began <= c_at <= r.ended, f"seq {seq} committed_at {c_at} outside [{r.began}, {r.ended}]"
    assert_commit_order(conn)

    for t in tables:
        got = {k: v for k, v in live(conn, t, "id", "v, n").items()}
        assert got == model[t], f"live {t} differs from the clients' model"
    assert_verified(conn, *tables)
    return model
