"""Segments (issue 5): compaction into hash-chained segments, purge_history, retention,
maintain(), erase, digest, the chain check of verify, driftdb.stats, dump/restore.

Every expectation comes from the test's own committed writes (tt_model's lineage model: the
state of every table after every seq, the versions and the net changes), never from driftdb's
output — except where the contract *is* "the same answer as before" (compaction changes no
result; a digest is unchanged by compaction and purge), where driftdb's earlier answers are
compared with its later ones as well.

Tampering "behind driftdb's back" is done as superuser with driftdb.restore_mode = on (direct
writes to driftdb.* are refused otherwise).
"""
from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
import os
import random
import secrets
import struct
import threading
import time
import zlib

import psycopg
import pytest

from conftest import PGBIN, create_database, drop_database
from history_model import assert_verified, current_seq, event_count, events, mp_key, verify_rows
from tt_model import (
    B_TEXTS,
    Mismatches,
    StatesBySeq,
    Workload,
    as_of_rows,
    commit_tx,
    diff_rows,
    net_changes,
    rkey,
    seq_of_xid,
    spec_a,
    srt,
    workload_on_three_tables,
    xid_now,
)

SEED = int(os.environ.get("SEG_SEED", "20261207"))
CHAIN_DOMAIN = b"driftdb-chain-v1"


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def chain_hash(prev: bytes, data: bytes) -> bytes:
    """core/src/segment.rs chain_hash: SHA-256(domain || prev || len(data) u64 LE || data)."""
    return hashlib.sha256(CHAIN_DOMAIN + prev + struct.pack("<Q", len(data)) + data).digest()


def error_of(conn, sql, params=None) -> psycopg.Error:
    """The error a statement raises (it must raise one)."""
    try:
        conn.execute(sql, params)
    except psycopg.Error as e:
        return e
    raise AssertionError(f"expected an error from: {sql} {params!r}")


def compact(conn, table: str, older_than: str | None = "0s") -> dict:
    cur = conn.execute("SELECT * FROM driftdb.compact(%s::regclass, %s::interval)", (table, older_than))
    return dict(zip([d.name for d in cur.description], cur.fetchone()))


def compact_before(conn, table: str, ts) -> dict:
    """compact(t, now() - (now() - ts)): compacts exactly the events committed at or before ts."""
    cur = conn.execute("SELECT * FROM driftdb.compact(%s::regclass, now() - %s::timestamptz)", (table, ts))
    return dict(zip([d.name for d in cur.description], cur.fetchone()))


def digest(conn, table: str, upto: int | None = None) -> tuple:
    return conn.execute("SELECT seq, digest FROM driftdb.digest(%s::regclass, %s::bigint)", (table, upto)).fetchone()


def stats(conn, table: str) -> dict:
    cur = conn.execute("SELECT * FROM driftdb.stats WHERE table_name = %s::regclass", (table,))
    rows = cur.fetchall()
    assert len(rows) == 1, f"driftdb.stats has {len(rows)} rows for {table}"
    return dict(zip([d.name for d in cur.description], rows[0]))


def verify_map(conn, table: str) -> dict:
    rows = verify_rows(conn, table)
    out = {}
    for item, ok, detail in rows:
        assert item not in out, f"verify({table}) returned {item!r} twice: {rows}"
        out[item] = (ok, detail)
    return out


def assert_chain_ok(conn, table: str) -> None:
    assert_verified(conn, table)
    v = verify_map(conn, table)
    assert "chain" in v, f"verify({table}) has no 'chain' item although the table has links: {v}"


def links(conn, table: str) -> list[dict]:
    cur = conn.execute(
        "SELECT s.seg_id, s.kind::text AS kind, s.seq_lo, s.seq_hi, s.nevents, s.raw_bytes, s.prev_hash, "
        "s.hash, s.data FROM driftdb.segments s JOIN driftdb.tables t USING (table_id) "
        "WHERE t.relid = %s::regclass ORDER BY s.seg_id", (table,))
    cols = [d.name for d in cur.description]
    out = []
    for r in cur.fetchall():
        d = dict(zip(cols, r))
        for k in ("prev_hash", "hash", "data"):
            d[k] = bytes(d[k])
        out.append(d)
    return out


def records(conn, table: str, kind: str) -> list[dict]:
    return [json.loads(l["data"].decode()) for l in links(conn, table) if l["kind"] == kind]


def event_ops(conn, table: str) -> list[tuple]:
    """(seq, ord, op, has key) of the table's recent events (driftdb.events rows and packs)."""
    return [(s, o, op, k is not None) for s, o, op, k in events(conn, table)]


def table_id(conn, table: str) -> int:
    return conn.execute("SELECT table_id FROM driftdb.tables WHERE relid = %s::regclass", (table,)).fetchone()[0]


def tamper_conn(db):
    """A superuser connection allowed to write driftdb's tables directly."""
    c = db.connect()
    c.execute("SET driftdb.restore_mode = on")
    return c


def text_rows(conn, sql, params=None) -> list:
    return [r[0] for r in conn.execute(sql, params).fetchall()]


class Script(Workload):
    """tt_model's Workload, driven by hand: ``with w.txn() as x: x.insert(...); x.update(...)``
    runs one transaction and records it exactly as Workload.transaction() does (seq and
    committed_at by xid, per-seq states, net changes by lineage)."""

    def spec(self, name):
        return next(s for s in self.specs if s.name == name)

    def txn(self):
        return _Txn(self)

    def lid_of(self, work: dict, spec, key: tuple):
        for lid, r in work.items():
            if spec.key_of(spec.canon_row(r)) == spec.key_of(spec.canon_row(spec.make_row(key, [None] * len(spec.rest_idx)))):
                return lid
        raise KeyError(f"{spec.name}: no row with key {key!r} in the model")

    def expected_versions_after(self, name: str, horizon: int) -> list:
        """Versions that survive a purge at ``horizon``: those alive at it (with their true
        start) and everything after."""
        return [v for v in self.expected_versions(name) if v[1] is None or v[1] > horizon]


class _Txn:
    def __init__(self, w: Script):
        self.w = w
        self.work = {s.name: dict(w.models[s.name].rows) for s in w.specs}
        self.truncated = {s.name: False for s in w.specs}
        self.seq = None

    def __enter__(self):
        self.w._x("BEGIN")
        self.xid = xid_now(self.w.conn)
        return self

    def insert(self, name, row):
        s = self.w.spec(name)
        self.w._x(s.insert_sql(), s.insert_params(row))
        self.work[name][self.w._lid()] = tuple(row)

    def update(self, name, key, row):
        s = self.w.spec(name)
        lid = self.w.lid_of(self.work[name], s, key)
        old = self.work[name][lid]
        self.w._x(s.update_sql(s.colnames), s.insert_params(row) + s.key_params(old))
        self.work[name][lid] = tuple(row)

    def delete(self, name, key):
        s = self.w.spec(name)
        lid = self.w.lid_of(self.work[name], s, key)
        self.w._x(f"DELETE FROM {name} WHERE {s.where_key()}", s.key_params(self.work[name][lid]))
        del self.work[name][lid]

    def truncate(self, name):
        self.w._x(f"TRUNCATE {name}")
        self.work[name].clear()
        self.truncated[name] = True

    def __exit__(self, et, ev, tb):
        w = self.w
        if et is not None:
            if w.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                w._x("ROLLBACK")
            return False
        w._x("COMMIT")
        got = seq_of_xid(w.conn, self.xid)
        changed = {}
        for s in w.specs:
            m = w.models[s.name]
            before = {lid: s.canon_row(r) for lid, r in m.rows.items()}
            after = {lid: s.canon_row(r) for lid, r in self.work[s.name].items()}
            ch = net_changes(s, before, after, self.truncated[s.name])
            if ch:
                changed[s.name] = ch
        assert (got is None) == (not changed), f"seq {got} for a transaction with changes {changed}"
        for s in w.specs:
            w.models[s.name].rows = self.work[s.name]
        if got is not None:
            seq, at = got
            assert not w.seqs or seq > w.seqs[-1]
            w.seqs.append(seq)
            w.at[seq] = at
            for name, ch in changed.items():
                w.models[name].changes[seq] = ch
            w.states[seq] = {name: m.state() for name, m in w.models.items()}
            self.seq = seq
        w._check_live()
        return False


def row_a(i: int, v: str, n=None) -> tuple:
    return (i, v, None if n is None else decimal.Decimal(n))


def check_from(w: Workload, spec, horizon: int, conn=None) -> None:
    """After a purge at ``horizon``: as_of at every seq >= horizon equals the model, at every
    seq below it fails (22023, naming the horizon and the purge); versions keep what was alive
    at the horizon (true start seqs) and everything after; changes are those after it."""
    conn = conn or w.conn
    cur = current_seq(conn)
    mm = Mismatches(f"{spec.name} after a purge at seq {horizon}")
    for n in range(horizon, cur + 2):
        exp = srt(w.state_at_seq(n)[spec.name].values())
        got = as_of_rows(conn, spec, n)
        if got != exp:
            mm.add(f"  as of seq {n}:\n{diff_rows(spec, exp, got)}")
    # the key lookup path, for every key the table ever had (and one it never had)
    keys = sorted({k for seq in w.seqs for k in w.states[seq][spec.name]} | {(-1,)}, key=repr)
    for n in range(horizon, cur + 2):
        st = w.state_at_seq(n)[spec.name]
        for k in keys:
            exp = [st[k]] if k in st else []
            got = srt(spec.read_canon(conn.execute(
                f"SELECT {spec.select_list('x.')} FROM driftdb.as_of(NULL::{spec.name}, %s::bigint) x "
                f"WHERE {spec.where_key()}", (n, *k)).fetchall()))
            if got != exp:
                mm.add(f"  as of seq {n} key {k}: expected {exp}, got {got}")
    for n in sorted({0, 1, horizon // 2, horizon - 1} - {horizon}):
        if n < 0 or n >= horizon:
            continue
        e = error_of(conn, f"SELECT * FROM driftdb.as_of(NULL::{spec.name}, %s::bigint)", (n,))
        if e.sqlstate != "22023" or f'history of table "{spec.name}" starts at seq {horizon}' not in str(e) \
                or "purge" not in (e.diag.message_detail or ""):
            mm.add(f"  as of seq {n} (< horizon {horizon}): {e.sqlstate} {e} / detail {e.diag.message_detail!r}")
    rows = conn.execute(
        f"SELECT v.seq_start, v.seq_end, {', '.join(f'(v.data).{c}' for c in spec.colnames)} "
        f"FROM driftdb.versions(NULL::{spec.name}) v").fetchall()
    got = sorted(((r[0], r[1], spec.canon_row(r[2:])) for r in rows), key=rkey)
    exp = sorted(w.expected_versions_after(spec.name, horizon), key=rkey)
    if got != exp:
        mm.add(f"  versions:\n    expected {[(a, b, r[0]) for a, b, r in exp]}\n    got      {[(a, b, r[0]) for a, b, r in got]}")
    for k in keys:  # versions of one key (the key path)
        rows = conn.execute(
            f"SELECT v.seq_start, v.seq_end, {', '.join(f'(v.data).{c}' for c in spec.colnames)} "
            f"FROM driftdb.versions(NULL::{spec.name}) v WHERE {spec.where_key().replace('id =', '(v.data).id =')}",
            k).fetchall()
        gk = sorted(((r[0], r[1], spec.canon_row(r[2:])) for r in rows), key=rkey)
        ek = [v for v in exp if spec.key_of(v[2]) == k]
        if gk != ek:
            mm.add(f"  versions of key {k}: expected {[(a, b) for a, b, _ in ek]}, got {[(a, b) for a, b, _ in gk]}")
    n = len(spec.cols)
    rows = conn.execute(
        f"SELECT c.seq, c.operation, c.old_data IS NULL, c.new_data IS NULL, "
        f"{', '.join(f'(c.old_data).{c}' for c in spec.colnames)}, {', '.join(f'(c.new_data).{c}' for c in spec.colnames)} "
        f"FROM driftdb.changes(NULL::{spec.name}) c").fetchall()
    got = sorted(((r[0], r[1], None if r[2] else spec.canon_row(r[4:4 + n]),
                   None if r[3] else spec.canon_row(r[4 + n:])) for r in rows), key=rkey)
    exp = [c for c in w.expected_changes(spec.name) if c[0] > horizon]
    if got != exp:
        mm.add(f"  changes:\n    expected {[(c[0], c[1]) for c in exp]}\n    got      {[(c[0], c[1]) for c in got]}")
    mm.check()


# --------------------------------------------------------------------------------------------
# 1. Compaction changes no result
# --------------------------------------------------------------------------------------------


def _key_probes(spec) -> list:
    """Identity values to look up by key (present, absent, moved away...) and their SQL."""
    if spec.name == "tt_a":
        return [((k,), "x.id = %s::int") for k in range(0, 46)]
    if spec.name == "tt_b":
        return [((a, b), "x.a = %s::int AND x.b = %s::text") for a in range(1, 6) for b in B_TEXTS]
    return []


def check_key_lookups(conn, w: Workload, rnd: random.Random, per_seq: int = 6) -> None:
    """AS OF seq with equality on the whole identity (the key lookup path) vs the model."""
    cur = current_seq(conn)
    mm = Mismatches("as_of(NULL::t, seq) key lookups vs the model")
    for s in w.specs:
        probes = _key_probes(s)
        if not probes:
            continue
        for n in range(0, cur + 2):
            st = w.state_at_seq(n)[s.name]
            for key, cond in rnd.sample(probes, min(per_seq, len(probes))):
                ck = tuple(s.canon_row(s.make_row(key, [None] * len(s.rest_idx)))[i] for i in s.key_idx)
                exp = [st[ck]] if ck in st else []
                got = srt(s.read_canon(conn.execute(
                    f"SELECT {s.select_list('x.')} FROM driftdb.as_of(NULL::{s.name}, %s::bigint) x WHERE {cond}",
                    (n, *key)).fetchall()))
                if got != exp:
                    mm.add(f"  {s.name} as of seq {n} where {cond % key}:\n{diff_rows(s, exp, got)}")
    mm.check()


def _capture(conn, w: Workload, rnd: random.Random) -> dict:
    """Everything time travel answers, in driftdb's own text form (compared before and after)."""
    cur = current_seq(conn)
    out = {"as_of": {}, "versions": {}, "changes": {}, "digest": {}}
    for s in w.specs:
        for n in range(0, cur + 2):
            out["as_of"][(s.name, n)] = text_rows(
                conn, f"SELECT x::text FROM driftdb.as_of(NULL::{s.name}, %s::bigint) x ORDER BY 1", (n,))
        out["versions"][s.name] = text_rows(
            conn, f"SELECT concat_ws(' ', seq_start, seq_end, system_time_start, system_time_end, data::text) "
                  f"FROM driftdb.versions(NULL::{s.name}) ORDER BY 1")
        out["changes"][s.name] = text_rows(
            conn, f"SELECT concat_ws(' ', seq, committed_at, committed_by, operation, old_data::text, new_data::text) "
                  f"FROM driftdb.changes(NULL::{s.name}) ORDER BY 1")
        for n in range(0, cur + 1):
            out["digest"][(s.name, n)] = digest(conn, s.name, n)
    return out


def _compare_captures(before: dict, after: dict, what: str) -> None:
    mm = Mismatches(f"time travel answers changed {what}")
    for part, b in before.items():
        a = after[part]
        for k, v in b.items():
            if a.get(k) != v:
                mm.add(f"  {part} {k!r}:\n    before {str(v)[:300]}\n    after  {str(a.get(k))[:300]}")
    mm.check()


def _compactable(conn, table: str, upto: int) -> list:
    return [e for e in event_ops(conn, table) if e[2] in ("i", "u", "d", "m") and e[3] and e[0] <= upto]


def test_compaction_changes_no_result(db):
    conn = db.connect()
    w = workload_on_three_tables(conn, random.Random(SEED))
    w.run(70)
    conn.execute("SELECT driftdb.snapshot('tt_a')")  # a snapshot in the middle of what gets compacted
    w.run(80)
    assert w.stats["truncate"] >= 1 and w.stats["key_change"] >= 5, f"seed {SEED}: workload too tame {w.stats}"
    assert w.stats["committed"] >= 100, w.stats
    names = [s.name for s in w.specs]
    for t in names:
        assert_verified(conn, t)

    # nothing is old enough for the default age (driftdb.compact_min_age = 1 hour)
    for t in names:
        r = compact(conn, t, None)
        assert (r["segments"], r["events"], r["seq_lo"], r["seq_hi"]) == (0, 0, None, None), r
        assert not links(conn, t)

    before = _capture(conn, w, random.Random(SEED))
    stats_before = {t: stats(conn, t) for t in names}
    top = current_seq(conn)

    # round 1
    round1 = {}
    stats_changed = []
    for t in names:
        movable = _compactable(conn, t, top)
        r = compact(conn, t)
        round1[t] = r
        assert r["segments"] >= 1, r
        assert r["events"] == len(movable), f"{t}: compact moved {r['events']} events, {len(movable)} were compactable"
        assert (r["seq_lo"], r["seq_hi"]) == (min(e[0] for e in movable), max(e[0] for e in movable)), r
        assert r["raw_bytes"] > 0 and 0 < r["stored_bytes"], r
        left = event_ops(conn, t)
        assert {e[2] for e in left} <= {"t", "s"}, f"{t}: row events left in driftdb.events after compact: {left[:5]}"
        ls = links(conn, t)
        assert len(ls) == r["segments"] and all(l["kind"] == "s" for l in ls)
        assert sum(l["nevents"] for l in ls) == r["events"]
        # a second call right away has nothing to do
        again = compact(conn, t)
        assert (again["segments"], again["events"]) == (0, 0), again
    w.check_as_of_seqs()
    w.check_versions()
    w.check_changes()
    after = _capture(conn, w, random.Random(SEED))
    _compare_captures(before, after, "by the first compaction")
    for t in names:
        st = stats(conn, t)
        sb = stats_before[t]
        assert st["segments"] == round1[t]["segments"] > 0, st
        assert st["compacted_events"] > 0, st
        assert st["compacted_upto"] == top, st
        assert st["last_compaction"] is not None, st
        assert st["recent_events"] == len(event_ops(conn, t)), st
        for k in ("events", "versions", "live_rows", "oldest_seq", "newest_seq", "oldest_time", "newest_time",
                  "history_start_seq", "history_start_reason"):
            if st[k] != sb[k]:  # reported at the end, after the other checks ran
                stats_changed.append(f"{t}: stats.{k} changed by compaction: {sb[k]!r} -> {st[k]!r}")
        assert_chain_ok(conn, t)

    # round 2: more writes, compact again
    w.run(30)
    top2 = current_seq(conn)
    mid = _capture(conn, w, random.Random(SEED + 1))
    for t in names:
        movable = _compactable(conn, t, top2)
        r = compact(conn, t)
        if not movable:
            assert r["segments"] == 0
            continue
        assert r["events"] == len(movable), r
        assert r["seq_lo"] > round1[t]["seq_hi"] and r["seq_hi"] <= top2, (round1[t], r)
        ls = links(conn, t)
        assert len(ls) == round1[t]["segments"] + r["segments"]
        assert [l["seg_id"] for l in ls] == list(range(1, len(ls) + 1))
        assert {e[2] for e in event_ops(conn, t)} <= {"t", "s"}
        assert stats(conn, t)["compacted_upto"] == top2
    w.check_as_of_seqs()
    w.check_as_of_times(w.probe_times()[::7])
    w.check_set_form(list(range(0, top2 + 2, 11)), w.probe_times()[::23])
    w.check_versions()
    w.check_changes()
    after2 = _capture(conn, w, random.Random(SEED + 1))
    _compare_captures(mid, after2, "by the second compaction")
    # digests of old seqs are what they were before any compaction
    for (t, n), d in before["digest"].items():
        assert after2["digest"][(t, n)] == d, f"digest({t}, {n}) changed"
    for t in names:
        assert_chain_ok(conn, t)
    assert not stats_changed, "\n".join(stats_changed)


def _self_capture(conn, table: str, keys) -> dict:
    """as_of (full and by key) at every seq, versions, changes, digests: driftdb's own answers."""
    top = current_seq(conn)
    out = {}
    for n in range(0, top + 2):
        full = text_rows(conn, f"SELECT x::text FROM driftdb.as_of(NULL::{table}, %s::bigint) x ORDER BY 1", (n,))
        out[("as_of", n)] = full
        for k in keys:
            out[("key", n, k)] = text_rows(
                conn, f"SELECT x::text FROM driftdb.as_of(NULL::{table}, %s::bigint) x WHERE x.id = %s::int", (n, k))
    out["versions"] = text_rows(conn, f"SELECT concat_ws(' ', seq_start, seq_end, data::text) FROM driftdb.versions(NULL::{table}) ORDER BY 1")
    out["changes"] = text_rows(conn, f"SELECT concat_ws(' ', seq, operation, old_data::text, new_data::text) FROM driftdb.changes(NULL::{table}) ORDER BY 1")
    for n in range(0, top + 1):
        out[("digest", n)] = digest(conn, table, n)
    return out


def test_compaction_across_schema_changes(db):
    """ADD / DROP / RENAME COLUMN between compacted events (schema events stay in
    driftdb.events, row events around them move): every answer is what it was, a key lookup
    agrees with the full state, and verify passes."""
    conn = db.connect()
    conn.execute("CREATE TABLE sc (id int PRIMARY KEY, a text, n numeric) USING driftdb")
    seqs = []
    seqs.append(commit_tx(conn, "INSERT INTO sc SELECT g, 'a' || g, g FROM generate_series(1, 30) g")[0])
    seqs.append(commit_tx(conn, "UPDATE sc SET a = a || '!' WHERE id % 3 = 0")[0])
    conn.execute("ALTER TABLE sc ADD COLUMN b int DEFAULT 7")
    seqs.append(commit_tx(conn, "UPDATE sc SET b = id * 2 WHERE id % 2 = 0")[0])
    seqs.append(commit_tx(conn, "DELETE FROM sc WHERE id BETWEEN 10 AND 12")[0])
    conn.execute("ALTER TABLE sc DROP COLUMN a")
    seqs.append(commit_tx(conn, "UPDATE sc SET n = n + 0.5 WHERE id < 8")[0])
    seqs.append(commit_tx(conn, "UPDATE sc SET id = id + 100 WHERE id IN (5, 6)")[0])
    conn.execute("ALTER TABLE sc RENAME COLUMN n TO amount")
    seqs.append(commit_tx(conn, "INSERT INTO sc (id, amount) VALUES (11, 1.25), (200, 2)")[0])
    cut = seqs[3]
    seqs.append(commit_tx(conn, "UPDATE sc SET b = -1 WHERE id = 11")[0])
    assert sum(e[2] == "s" for e in event_ops(conn, "sc")) >= 2, event_ops(conn, "sc")  # ADD, DROP (RENAME)
    keys = [1, 3, 5, 6, 10, 11, 105, 106, 200, 999]
    before = _self_capture(conn, "sc", keys)
    # a key lookup agrees with the full state at every seq
    for n in range(0, current_seq(conn) + 2):
        full = before[("as_of", n)]
        for k in keys:
            want = [r for r in full if r.startswith(f"({k},")]
            assert before[("key", n, k)] == want, f"as_of seq {n} WHERE id = {k}: {before[('key', n, k)]} vs full {want}"
    at_cut = conn.execute("SELECT committed_at FROM driftdb.commits WHERE seq = %s", (cut,)).fetchone()[0]
    r1 = compact_before(conn, "sc", at_cut)
    assert r1["seq_hi"] == cut, r1
    assert _self_capture(conn, "sc", keys) == before
    r2 = compact(conn, "sc")
    assert r2["seq_lo"] > cut, r2
    left = event_ops(conn, "sc")
    assert left and {e[2] for e in left} == {"s"}, left  # the schema events stay
    after = _self_capture(conn, "sc", keys)
    bad = [k for k in before if before[k] != after[k]]
    assert not bad, f"{len(bad)} answers changed, e.g. {bad[0]}: {before[bad[0]]} -> {after[bad[0]]}"
    assert_chain_ok(conn, "sc")


def test_keyless_and_whole_row_identity_tables(db):
    """Rows recorded without an identity are not compacted, and their history cannot be
    purged; a REPLICA IDENTITY FULL table has no key to erase by."""
    conn = db.connect()
    conn.execute("CREATE TABLE kl (x int, y text) USING driftdb")
    conn.execute("INSERT INTO kl SELECT g, 'y' || g FROM generate_series(1, 20) g")
    conn.execute("INSERT INTO kl VALUES (1, 'y1')")  # (updates and deletes need an identity)
    conn.execute("TRUNCATE kl")
    conn.execute("INSERT INTO kl SELECT g, 'z' || g FROM generate_series(1, 5) g")
    n = len(event_ops(conn, "kl"))
    d = digest(conn, "kl")
    r = compact(conn, "kl")
    assert (r["segments"], r["events"]) == (0, 0), r
    assert len(event_ops(conn, "kl")) == n and digest(conn, "kl") == d
    assert_verified(conn, "kl")
    e = error_of(conn, "SELECT * FROM driftdb.purge_history('kl', now())")
    assert e.sqlstate == "55000" and "without a row identity" in str(e), (e.sqlstate, e)
    assert conn.execute("SELECT reason FROM driftdb.history_start('kl')").fetchone() == ("complete since creation",)
    assert_verified(conn, "kl")
    conn.execute("CREATE TABLE fu (id int PRIMARY KEY, v text) USING driftdb")
    conn.execute("ALTER TABLE fu REPLICA IDENTITY FULL")
    conn.execute("INSERT INTO fu VALUES (1, 'a'), (2, 'b')")
    conn.execute("DELETE FROM fu WHERE id = 1")
    e = error_of(conn, "SELECT * FROM driftdb.erase('fu', '1')")
    assert e.sqlstate == "55000", (e.sqlstate, e)
    r = compact(conn, "fu")
    assert r["events"] == 3, r
    assert_chain_ok(conn, "fu")


def check_versions_by_key(conn, w: Workload) -> None:
    """versions(NULL::tt_a) WHERE (v.data).id = k (the key path) vs the model, every key."""
    spec = next(s for s in w.specs if s.name == "tt_a")
    exp_all = w.expected_versions("tt_a")
    mm = Mismatches("versions(NULL::tt_a) by key vs the model")
    for k in range(0, 46):
        exp = [v for v in exp_all if spec.key_of(v[2]) == (k,)]
        rows = conn.execute(
            f"SELECT v.seq_start, v.seq_end, {', '.join(f'(v.data).{c}' for c in spec.colnames)} "
            "FROM driftdb.versions(NULL::tt_a) v WHERE (v.data).id = %s::int", (k,)).fetchall()
        got = sorted(((r[0], r[1], spec.canon_row(r[2:])) for r in rows), key=rkey)
        if got != exp:
            mm.add(f"  key {k}: expected {[(a, b) for a, b, _ in exp]}, got {[(a, b) for a, b, _ in got]}")
    mm.check()


def test_compaction_key_lookups_random(db):
    """The key paths (AS OF with equality on the identity; versions of one key) vs the model,
    on the random workload of the test above, before and after compaction."""
    conn = db.connect()
    w = workload_on_three_tables(conn, random.Random(SEED))
    w.run(70)
    conn.execute("SELECT driftdb.snapshot('tt_a')")
    w.run(80)
    errors = []
    for stage in ("before compaction", "after compaction"):
        if stage == "after compaction":
            for s in w.specs:
                compact(conn, s.name)
        for check in (lambda: check_key_lookups(conn, w, random.Random(SEED), per_seq=12),
                      lambda: check_versions_by_key(conn, w)):
            try:
                check()
            except AssertionError as e:
                errors.append(f"{stage}: {e}")
    assert not errors, "\n".join(x[:2500] for x in errors)


def test_key_lookup_when_keys_swap_in_one_transaction(db):
    """A transaction that swaps two rows' keys leaves, under each key, an 'm' marker (the row
    that left) and a 'u' (the row that arrived) in the same seq; the key holds the arrived row.
    Likewise a key whose row is deleted while another row moves onto it."""
    conn = db.connect()
    conn.execute("CREATE TABLE sw (id int PRIMARY KEY, v text) USING driftdb")
    s0 = commit_tx(conn, "INSERT INTO sw VALUES (1, 'a'), (2, 'b'), (3, 'c'), (4, 'd')")[0]
    s1 = commit_tx(conn, "UPDATE sw SET id = 100 WHERE id = 1", "UPDATE sw SET id = 1 WHERE id = 2",
                   "UPDATE sw SET id = 2 WHERE id = 100")[0]
    s2 = commit_tx(conn, "DELETE FROM sw WHERE id = 3", "UPDATE sw SET id = 3 WHERE id = 4")[0]
    s3 = commit_tx(conn, "UPDATE sw SET v = v || '!'")[0]
    expected = {
        s0: {1: "a", 2: "b", 3: "c", 4: "d"},
        s1: {1: "b", 2: "a", 3: "c", 4: "d"},
        s2: {1: "b", 2: "a", 3: "d"},
        s3: {1: "b!", 2: "a!", 3: "d!"},
    }
    versions_of: dict = {}  # key -> [(seq_start, seq_end, v)] from the per-seq states
    open_: dict = {}
    for n in sorted(expected):
        for k in sorted(set(open_) | set(expected[n])):
            if k in open_ and open_[k][1] != expected[n].get(k):
                versions_of.setdefault(k, []).append((open_[k][0], n, open_.pop(k)[1]))
            if k in expected[n] and k not in open_:
                open_[k] = (n, expected[n][k])
    for k, (start, v) in open_.items():
        versions_of.setdefault(k, []).append((start, None, v))
    plan = "\n".join(r[0] for r in conn.execute(
        "EXPLAIN (COSTS OFF) SELECT v FROM driftdb.as_of(NULL::sw, %s::bigint) x WHERE x.id = %s::int", (s1, 1)))
    assert "identity key" in plan, plan  # the key lookup path, not a full replay
    errors = []
    for stage in ("in driftdb.events", "compacted"):
        if stage == "compacted":
            compact(conn, "sw")
        for n, st in expected.items():
            full = dict(conn.execute("SELECT id, v FROM driftdb.as_of(NULL::sw, %s::bigint)", (n,)).fetchall())
            if full != st:
                errors.append(f"{stage}: as_of seq {n}: {full}, expected {st}")
            for k in range(1, 5):
                got = conn.execute("SELECT v FROM driftdb.as_of(NULL::sw, %s::bigint) x WHERE x.id = %s::int", (n, k)).fetchall()
                want = [(st[k],)] if k in st else []
                if got != want:
                    errors.append(f"{stage}: as_of seq {n} WHERE id = {k}: {got}, expected {want}")
        for k in range(1, 5):
            want = versions_of[k]
            got = conn.execute("SELECT seq_start, seq_end, (data).v FROM driftdb.versions(NULL::sw) v "
                               "WHERE (v.data).id = %s::int ORDER BY 1", (k,)).fetchall()
            full = [r[:3] for r in conn.execute("SELECT seq_start, seq_end, (data).v, (data).id FROM driftdb.versions(NULL::sw) "
                                                "ORDER BY 1").fetchall() if r[3] == k]
            if got != want or full != want:
                errors.append(f"{stage}: versions of key {k}: by key {got}, unfiltered {full}, expected {want}")
    assert_chain_ok(conn, "sw")
    assert not errors, "\n".join(errors)


# --------------------------------------------------------------------------------------------
# 2. Online compaction: writers and readers keep going
# --------------------------------------------------------------------------------------------


class OnlineModel:
    """Committed writes of several writers (disjoint keys): seq -> {id: v or None}."""

    def __init__(self, base_seq: int, initial: dict, initial_seq: int):
        self.lock = threading.Lock()
        self.base_seq = base_seq
        self.log = {initial_seq: dict(initial)}

    def record(self, seq: int, writes: dict) -> None:
        with self.lock:
            assert seq not in self.log
            self.log[seq] = dict(writes)

    def complete_upto(self) -> int:
        """The newest seq up to which every seq is known."""
        with self.lock:
            n = self.base_seq
            while n + 1 in self.log:
                n += 1
            return n

    def state_at(self, seq: int) -> dict:
        with self.lock:
            items = sorted((s, w) for s, w in self.log.items() if s <= seq)
        st = {}
        for _s, wr in items:
            for k, v in wr.items():
                if v is None:
                    st.pop(k, None)
                else:
                    st[k] = v
        return st


def _writer(conninfo, wid, model: OnlineModel, stop: threading.Event, errors: list, counts: list):
    rnd = random.Random(SEED * 10 + wid)
    own = {k: v for k, v in model.state_at(10**18).items() if k % 2 == wid}
    try:
        with psycopg.connect(conninfo, autocommit=True) as c:
            while not stop.is_set():
                c.execute("BEGIN")
                xid = xid_now(c)
                writes = {}
                for _ in range(rnd.randrange(1, 4)):
                    r = rnd.random()
                    keys = sorted(own)
                    if r < 0.6 and keys:
                        k = rnd.choice(keys)
                        v = rnd.randrange(10**6)
                        c.execute("UPDATE o SET v = %s, note = %s WHERE id = %s", (v, f"w{wid}-{v}", k))
                        own[k] = v
                        writes[k] = v
                    elif r < 0.8 and keys:
                        k = rnd.choice(keys)
                        c.execute("DELETE FROM o WHERE id = %s", (k,))
                        del own[k]
                        writes[k] = None
                    else:
                        k = rnd.randrange(1, 400) * 2 + wid
                        if k in own:
                            continue
                        v = rnd.randrange(10**6)
                        c.execute("INSERT INTO o VALUES (%s, %s, %s)", (k, v, f"w{wid}-{v}"))
                        own[k] = v
                        writes[k] = v
                c.execute("COMMIT")
                got = seq_of_xid(c, xid)
                if writes:
                    # net effect per key of this transaction (a key written twice keeps the last)
                    before = model.state_at(10**18)
                    net = {k: v for k, v in writes.items() if before.get(k) != v}
                    if net:
                        assert got is not None, f"writer {wid}: committed {writes} without a seq"
                        model.record(got[0], net)
                        counts[wid] += 1
                        continue
                assert got is None, f"writer {wid}: a transaction without net changes got seq {got}"
    except BaseException as e:  # noqa: BLE001 - reported by the test
        errors.append(f"writer {wid}: {e!r}")


def _reader(conninfo, model: OnlineModel, stop: threading.Event, errors: list, checks: list):
    rnd = random.Random(SEED * 100)
    try:
        with psycopg.connect(conninfo, autocommit=True) as c:
            while not stop.is_set():
                hi = model.complete_upto()
                if hi <= model.base_seq:
                    time.sleep(0.01)
                    continue
                n = rnd.randrange(model.base_seq + 1, hi + 1)
                exp = model.state_at(n)
                got = dict(c.execute("SELECT id, v FROM driftdb.as_of(NULL::o, %s::bigint) x", (n,)).fetchall())
                if got != exp:
                    diff = {k: (exp.get(k), got.get(k)) for k in set(exp) | set(got) if exp.get(k) != got.get(k)}
                    errors.append(f"reader: as_of seq {n}: {len(diff)} keys differ, e.g. {list(diff.items())[:5]}")
                k = rnd.randrange(1, 800)
                got = c.execute("SELECT v FROM driftdb.as_of(NULL::o, %s::bigint) x WHERE x.id = %s::int", (n, k)).fetchall()
                if got != ([(exp[k],)] if k in exp else []):
                    errors.append(f"reader: as_of seq {n} key {k}: expected {exp.get(k)}, got {got}")
                checks[0] += 1
    except BaseException as e:  # noqa: BLE001
        errors.append(f"reader: {e!r}")


def test_online_compaction_with_writers_and_readers(db):
    conn = db.connect()
    conn.execute("CREATE TABLE o (id int PRIMARY KEY, v int NOT NULL, note text) USING driftdb")
    initial = {k: k * 10 for k in range(1, 301)}
    got = commit_tx(conn, "INSERT INTO o SELECT g, g * 10, 'init' FROM generate_series(1, 300) g")
    base = got[0] - 1
    model = OnlineModel(base, initial, got[0])
    stop = threading.Event()
    errors: list = []
    counts = [0, 0]
    checks = [0]
    threads = [threading.Thread(target=_writer, args=(db.conninfo(), i, model, stop, errors, counts)) for i in (0, 1)]
    threads.append(threading.Thread(target=_reader, args=(db.conninfo(), model, stop, errors, checks)))
    for th in threads:
        th.start()
    results = []
    try:
        comp = db.connect()
        for _ in range(12):
            time.sleep(0.25)
            results.append(compact(comp, "o"))
            if errors:
                break
    finally:
        time.sleep(0.2)
        stop.set()
        for th in threads:
            th.join(timeout=60)
    assert not any(th.is_alive() for th in threads), "a worker hung"
    assert not errors, "\n".join(errors[:10])
    moved = [r for r in results if r["events"] > 0]
    assert len(moved) >= 4, f"compaction moved events in only {len(moved)} of {len(results)} rounds: {results}"
    assert min(counts) >= 20 and checks[0] >= 20, (counts, checks)
    print(f"online: {counts} writer commits, {checks[0]} reader checks, "
          f"{[(r['seq_lo'], r['seq_hi'], r['events']) for r in moved]} compacted")
    # consecutive rounds compacted consecutive seq ranges
    for a, b in zip(moved, moved[1:]):
        assert b["seq_lo"] > a["seq_hi"], (a, b)
    assert_chain_ok(conn, "o")
    top = current_seq(conn)
    assert model.complete_upto() == top
    mm = Mismatches("as_of(NULL::o, seq) after online compaction")
    for n in range(base, top + 2):
        exp = model.state_at(n)
        got = dict(conn.execute("SELECT id, v FROM driftdb.as_of(NULL::o, %s::bigint) x", (n,)).fetchall())
        if got != exp:
            mm.add(f"  seq {n}: {len(set(exp.items()) ^ set(got.items()))} differences")
    mm.check()
    # changes: one per key written in each seq
    exp = sorted((s, k) for s, wr in model.log.items() for k in wr)
    got = sorted(conn.execute(
        "SELECT seq, coalesce((new_data).id, (old_data).id) FROM driftdb.changes(NULL::o)").fetchall())
    assert got == exp


# --------------------------------------------------------------------------------------------
# 3. A crash in the middle of a compaction
# --------------------------------------------------------------------------------------------

BIG_ROWS = 20_000
BIG_UPDATES = 10


def _crash(datadir) -> None:
    """SIGKILL the postmaster and, at once, every process it started — a crash of the whole
    server. (A SIGKILL of the postmaster alone leaves a running backend free to finish its
    statement and commit before it notices: that is not a crash in the middle of it.)"""
    from pathlib import Path
    import signal

    pid = int((Path(datadir) / "postmaster.pid").read_text().splitlines()[0])

    def children():
        out = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == pid and fields[0] != "Z":
                    out.append(int(d.name))
        return out

    kids = children()
    os.kill(pid, signal.SIGKILL)
    for k in kids + children():
        try:
            os.kill(k, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 15
    def alive(p):
        try:
            return Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    while time.monotonic() < deadline and any(alive(p) for p in kids + [pid]):
        time.sleep(0.05)
    assert not any(alive(p) for p in kids + [pid]), "server processes survived SIGKILL"
    # a zombie postmaster (not reaped by PID 1 here) keeps `pg_ctl status` saying "running"
    if Path(f"/proc/{pid}").exists():
        (Path(datadir) / "postmaster.pid").unlink()


def _big_expected(seqs: list) -> dict:
    """seq -> (count, sum(v)) after each of the big table's transactions."""
    out = {}
    base = BIG_ROWS * (BIG_ROWS + 1) // 2
    total = base
    out[seqs[0]] = (BIG_ROWS, total)
    for j, s in enumerate(seqs[1:], start=1):
        total += BIG_ROWS * j
        out[s] = (BIG_ROWS, total)
    return out


def _check_big(c, table: str, exp: dict, total_events: int, what: str) -> str:
    """verify, AS OF every seq, and the all-or-nothing placement of the events."""
    assert_verified(c, table)
    top = current_seq(c)
    seqs = sorted(exp)
    for n in range(0, top + 2):
        prior = [s for s in seqs if s <= n]
        want = exp[prior[-1]] if prior else (0, None)
        got = c.execute(f"SELECT count(*), sum(v) FROM driftdb.as_of(NULL::{table}, %s::bigint)", (n,)).fetchone()
        assert tuple(got) == want, f"{what}: {table} as of seq {n}: (count, sum) {tuple(got)}, expected {want}"
    tid = table_id(c, table)
    in_events = event_count(c, table)
    nseg, in_segs = c.execute(
        "SELECT count(*), coalesce(sum(nevents), 0) FROM driftdb.segments WHERE table_id = %s", (tid,)).fetchone()
    upto = c.execute("SELECT compacted_upto FROM driftdb.tables WHERE table_id = %s", (tid,)).fetchone()[0]
    if nseg == 0:
        assert in_events == total_events and upto == 0, f"{what}: no segments but {in_events}/{total_events} events, compacted_upto {upto}"
        return "none"
    assert in_events == 0 and in_segs == total_events and upto == top, (
        f"{what}: a partial compaction survived: {in_events} events left, {in_segs} in {nseg} segments "
        f"(of {total_events}), compacted_upto {upto}")
    return "all"


@pytest.mark.slow
def test_crash_mid_compaction_is_all_or_nothing(cluster_factory):
    cluster = cluster_factory()
    create_database(cluster, "crash")
    conninfo = cluster.conninfo("crash")
    with cluster.connect("crash") as c:
        # one events row per change: the kill points below need the compaction's long deletion of
        # 220k event rows (a packed history's few hundred pack rows go too fast to kill in)
        c.execute("SET driftdb.pack_min_events = 0")
        c.execute("CREATE TABLE big (id int PRIMARY KEY, v bigint NOT NULL, pad text) USING driftdb")
        seqs = [commit_tx(c, f"INSERT INTO big SELECT g, g, 'pad' || g FROM generate_series(1, {BIG_ROWS}) g")[0]]
        for j in range(1, BIG_UPDATES + 1):
            seqs.append(commit_tx(c, f"UPDATE big SET v = v + {j}")[0])
        total = event_count(c)
        assert total == BIG_ROWS * (BIG_UPDATES + 1)
    exp = _big_expected(seqs)

    def run_compaction(box):
        try:
            with psycopg.connect(conninfo, autocommit=True) as cc:
                box["result"] = compact(cc, "big")
        except psycopg.Error as e:
            box["error"] = e

    def compactor_pid(obs):
        r = obs.execute("SELECT pid FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%%driftdb.compact(%%' "
                        "AND pid <> pg_backend_pid()").fetchone()
        return r and r[0]

    # kill points: while it reads the events; once it has written segments (it holds a row
    # lock on driftdb.segments); once it deletes the moved event rows (on driftdb.events)
    lock_of = {"segments written": "driftdb.segments", "deleting events": "driftdb.events"}
    outcomes = []
    for stage in ("scan", "segments written", "deleting events"):
        box: dict = {}
        th = threading.Thread(target=run_compaction, args=(box,))
        with cluster.connect("crash") as obs:
            th.start()
            deadline = time.monotonic() + 60
            pid = None
            while time.monotonic() < deadline and not box:
                pid = compactor_pid(obs)
                if pid and stage == "scan":
                    break
                if pid and stage in lock_of and obs.execute(
                        "SELECT 1 FROM pg_locks WHERE pid = %s AND relation = %s::regclass "
                        "AND mode = 'RowExclusiveLock' AND granted", (pid, lock_of[stage])).fetchone():
                    break
                time.sleep(0.005)
            assert pid and not box, f"stage {stage}: the compaction was not seen running ({box})"
            _crash(cluster.datadir)
        th.join(timeout=60)
        assert "error" in box, f"stage {stage}: the compaction finished before the kill: {box}"
        cluster.start()
        with cluster.connect("crash") as c:
            outcomes.append(_check_big(c, "big", exp, total, f"after a kill during the {stage} stage"))
        if outcomes[-1] == "all":
            break
    with cluster.connect("crash") as c:
        # whatever the crash left, a compaction now completes and changes nothing
        r = compact(c, "big")
        assert outcomes[-1] == "all" or r["events"] == total, r
        assert _check_big(c, "big", exp, total, "after compacting again") == "all"
        assert_chain_ok(c, "big")
    cluster.destroy()
    print(f"outcomes of the kills: {outcomes}")


# --------------------------------------------------------------------------------------------
# 4. purge_history, history_start, digest invariance, privileges
# --------------------------------------------------------------------------------------------


def _purge_history_fixture(conn) -> Script:
    """~24 transactions on tt_a: inserts, updates, a key change, deletes, a delete and
    re-insert, a TRUNCATE, rows alive across the horizon with versions before it."""
    spec = spec_a()
    for stmt in spec.ddl:
        conn.execute(stmt)
    w = Script(conn, [spec], random.Random(1))
    with w.txn() as x:
        for i in range(1, 9):
            x.insert("tt_a", row_a(i, f"v{i}", i))
    with w.txn() as x:
        x.update("tt_a", (1,), row_a(1, "v1b", 1))
    with w.txn() as x:
        x.delete("tt_a", (2,))
    with w.txn() as x:
        x.truncate("tt_a")  # everything before is gone at the TRUNCATE
        x.insert("tt_a", row_a(10, "t10"))
        x.insert("tt_a", row_a(11, "t11"))
        x.insert("tt_a", row_a(12, "t12", "1.50"))
    with w.txn() as x:
        x.update("tt_a", (10,), row_a(10, "t10b"))
        # (rows written after a TRUNCATE in its own transaction and alive at a purge horizon:
        # test_purge_keeps_rows_written_after_a_truncate_in_its_transaction)
        x.update("tt_a", (12,), row_a(12, "t12b", "1.50"))
    conn.execute("SELECT driftdb.snapshot('tt_a')")  # a snapshot below the purge horizons
    with w.txn() as x:
        x.update("tt_a", (11,), row_a(21, "t11 moved"))  # key change 11 -> 21
    with w.txn() as x:
        x.insert("tt_a", row_a(13, "t13"))
        x.insert("tt_a", row_a(14, "t14"))
    with w.txn() as x:
        x.delete("tt_a", (13,))
    with w.txn() as x:
        x.update("tt_a", (10,), row_a(10, "t10c", 7))
    with w.txn() as x:
        x.delete("tt_a", (14,))
        x.insert("tt_a", row_a(14, "t14 again"))
    for i in range(10):
        with w.txn() as x:
            x.update("tt_a", (12,), row_a(12, f"t12 #{i}", i))
            if i % 3 == 0:
                x.insert("tt_a", row_a(30 + i, f"late {i}"))
        if i == 5:
            conn.execute("SELECT driftdb.snapshot('tt_a')")  # one above them
    with w.txn() as x:
        x.update("tt_a", (21,), row_a(22, "moved again"))
    with w.txn() as x:
        x.delete("tt_a", (10,))
    return w


def test_purge_history(db, roles):
    conn = db.connect()
    w = _purge_history_fixture(conn)
    spec = w.specs[0]
    seqs = w.seqs
    top = seqs[-1]
    assert len(seqs) >= 20
    d_before = {n: digest(conn, "tt_a", n) for n in range(0, top + 1)}
    assert d_before[top] == digest(conn, "tt_a")
    assert conn.execute("SELECT seq, committed_at, reason FROM driftdb.history_start('tt_a')").fetchone() == \
        (0, None, "complete since creation")

    # compact the first 13 transactions, so that the purge rewrites segments
    k1 = seqs[12]
    r = compact_before(conn, "tt_a", w.at[k1])
    assert r["seq_hi"] == k1 and r["segments"] >= 1, r
    assert {e[0] for e in event_ops(conn, "tt_a") if e[2] in ("i", "u", "d", "m")} == set(seqs[13:])
    for n in range(0, top + 1):
        assert digest(conn, "tt_a", n) == d_before[n], f"compaction changed digest at seq {n}"
    links_before = links(conn, "tt_a")

    # purge at H = seqs[7] (inside the compacted range: after the truncate, key change, deletes)
    h = seqs[7]
    n_events_before = stats(conn, "tt_a")["events"]
    got = conn.execute("SELECT * FROM driftdb.purge_history('tt_a', %s)", (w.at[h],)).fetchone()
    assert got[0] == h, f"purge horizon {got[0]}, expected seq {h} (committed at {w.at[h]})"
    assert got[2] == 1, f"snapshots_removed {got[2]}: one snapshot was below the horizon"
    assert stats(conn, "tt_a")["snapshots"] == 1
    check_from(w, spec, h)
    # expected removals: every event at or below H except the one per key that wrote the row
    # alive at H (the model's versions alive at H)
    alive_at_h = [v for v in w.expected_versions("tt_a") if v[0] <= h and (v[1] is None or v[1] > h)]
    assert len(alive_at_h) == len(w.states[h]["tt_a"])
    # one event per net change (a TRUNCATE is one event; markers are not events)
    events_at_or_below_h = sum(len(w.models["tt_a"].changes[s]) for s in seqs if s <= h)
    assert got[1] == events_at_or_below_h - len(alive_at_h), (
        f"events_removed {got[1]}, expected {events_at_or_below_h} - {len(alive_at_h)} survivors")
    # (checked at the end: driftdb.stats counts moved-key markers once compacted)
    n_events_model = sum(len(c) for c in w.models["tt_a"].changes.values())
    late = []
    if stats(conn, "tt_a")["events"] != n_events_model - got[1]:
        late.append(f"stats.events after the purge: {stats(conn, 'tt_a')['events']}, expected "
                    f"{n_events_model} recorded - {got[1]} removed (before the purge it said {n_events_before})")
    assert conn.execute("SELECT seq, committed_at, reason FROM driftdb.history_start('tt_a')").fetchone() == \
        (h, w.at[h], "purged")
    st = stats(conn, "tt_a")
    assert (st["history_start_seq"], st["history_start_reason"]) == (h, "purged"), st
    check_from(w, spec, h)
    # AS OF a time before the horizon fails too; at the horizon's own time it works
    e = error_of(conn, "SELECT * FROM driftdb.as_of(NULL::tt_a, %s::timestamptz)", (w.at[seqs[3]],))
    assert e.sqlstate == "22023" and f"starts at seq {h}" in str(e), e
    assert as_of_rows(conn, spec, w.at[h], "ts") == srt(w.states[h]["tt_a"].values())
    # digests: unchanged for every seq >= H, refused below it
    for n in range(h, top + 1):
        assert digest(conn, "tt_a", n) == d_before[n], f"purge changed digest at seq {n}"
    assert digest(conn, "tt_a") == d_before[top]
    e = error_of(conn, "SELECT * FROM driftdb.digest('tt_a', %s)", (h - 1,))
    assert e.sqlstate == "22023", e
    # the purge record
    recs = records(conn, "tt_a", "p")
    assert len(recs) == 1, recs
    rec = recs[0]
    assert rec["action"] == "purge" and rec["horizon_seq"] == h and rec["by"] == "postgres", rec
    assert rec["events_removed"] == got[1] and rec["snapshots_removed"] == got[2], rec
    assert rec["anchor"] == d_before[h][1], (rec, d_before[h])
    old_ids = {l["seg_id"]: l["hash"].hex() for l in links_before}
    assert rec["removed_links"] and all(old_ids.get(i) == hx for i, hx in rec["removed_links"]), rec
    ls = links(conn, "tt_a")
    assert ls[-1]["kind"] == "p" and ls[-1]["seg_id"] == max(old_ids) + len(rec["added_links"]) + 1
    assert rec["added_links"] == [l["seg_id"] for l in ls if l["seg_id"] > max(old_ids) and l["kind"] == "s"]
    assert_chain_ok(conn, "tt_a")

    # purging again at or before the horizon does nothing
    got2 = conn.execute("SELECT * FROM driftdb.purge_history('tt_a', %s)", (w.at[seqs[5]],)).fetchone()
    assert got2 == (None, 0, 0), got2

    # more history, a second purge in the uncompacted part; the anchor chains on
    with w.txn() as x:
        x.insert("tt_a", row_a(40, "after purge"))
    with w.txn() as x:
        x.update("tt_a", (12,), row_a(12, "after purge too"))
    top = w.seqs[-1]
    d_mid = {n: digest(conn, "tt_a", n) for n in range(h, top + 1)}
    h2 = seqs[16]
    got = conn.execute("SELECT * FROM driftdb.purge_history('tt_a', %s)", (w.at[h2],)).fetchone()
    assert got[0] == h2
    check_from(w, spec, h2)
    for n in range(h2, top + 1):
        assert digest(conn, "tt_a", n) == d_mid[n], f"second purge changed digest at seq {n}"
    assert conn.execute("SELECT seq, reason FROM driftdb.history_start('tt_a')").fetchone() == (h2, "purged")
    assert [r["horizon_seq"] for r in records(conn, "tt_a", "p")] == [h, h2]
    assert_chain_ok(conn, "tt_a")
    # compaction after purges: still exact
    compact(conn, "tt_a")
    check_from(w, spec, h2)
    assert digest(conn, "tt_a") == d_mid[top]
    assert_chain_ok(conn, "tt_a")

    # only the owner may compact, purge, erase, set retention
    other = roles("intruder")
    conn.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON tt_a TO "{other}"')
    oc = db.connect(user=other)
    for sql in ("SELECT * FROM driftdb.compact('tt_a', '0s')",
                "SELECT * FROM driftdb.purge_history('tt_a', now())",
                "SELECT * FROM driftdb.erase('tt_a', '2')",
                "SELECT driftdb.set_retention('tt_a', '1 day')"):
        e = error_of(oc, sql)
        assert e.sqlstate == "42501", f"{sql}: {e.sqlstate} {e}"
    e = error_of(oc, "SELECT * FROM driftdb.maintain()")
    assert e.sqlstate == "42501", e
    # ... and nothing changed
    assert conn.execute("SELECT seq, reason FROM driftdb.history_start('tt_a')").fetchone() == (h2, "purged")
    assert stats(conn, "tt_a")["retention"] is None
    assert_chain_ok(conn, "tt_a")
    assert not late, "\n".join(late)


def test_purge_keeps_rows_written_after_a_truncate_in_its_transaction(db):
    """TRUNCATE and INSERT in one transaction: the TRUNCATE event comes first in its seq, so
    the rows inserted after it are alive at that seq and must survive a purge there."""
    conn = db.connect()
    spec = spec_a()
    for stmt in spec.ddl:
        conn.execute(stmt)
    w = Script(conn, [spec], random.Random(4))
    with w.txn() as x:
        x.insert("tt_a", row_a(1, "gone"))
        x.insert("tt_a", row_a(2, "gone too"))
    with w.txn() as x:
        x.truncate("tt_a")
        x.insert("tt_a", row_a(3, "after truncate"))
        x.insert("tt_a", row_a(4, "after truncate too"))
    h = w.seqs[-1]
    with w.txn() as x:
        x.update("tt_a", (3,), row_a(3, "updated"))
    with w.txn() as x:
        x.insert("tt_a", row_a(5, "later"))
    top = w.seqs[-1]
    d_before = {n: digest(conn, "tt_a", n) for n in range(h, top + 1)}
    got = conn.execute("SELECT * FROM driftdb.purge_history('tt_a', %s)", (w.at[h],)).fetchone()
    assert got[0] == h, got
    errors = []
    try:
        check_from(w, spec, h)
    except (AssertionError, psycopg.Error) as e:
        errors.append(f"after the purge at seq {h}: {e}")
    if got[1] != 3:  # the two inserts before the TRUNCATE, and the TRUNCATE
        errors.append(f"events_removed {got[1]}, expected 3")
    v = verify_map(conn, "tt_a")
    if not all(ok for ok, _d in v.values()):
        errors.append(f"verify: {v}")
    for n, d in d_before.items():
        try:
            if digest(conn, "tt_a", n) != d:
                errors.append(f"digest at seq {n} changed by the purge")
        except psycopg.Error as e:
            errors.append(f"digest at seq {n}: {e}")
    assert not errors, "\n".join(errors)


def _states_by_id(conn, table: str, n: int) -> dict:
    return {r[0]: tuple(r[1:]) for r in conn.execute(
        f"SELECT x.id, x.code, x.v FROM driftdb.as_of(NULL::{table}, %s::bigint) x", (n,)).fetchall()}


@pytest.mark.parametrize("compacted", [False, True], ids=["events", "segments"])
def test_purge_after_an_identity_change(db, compacted):
    """The primary key moves to another column: a row's events before and after are filed
    under different key bytes. A purge after that keeps the state exact from the horizon on."""
    conn = db.connect()
    conn.execute("CREATE TABLE ic (id int PRIMARY KEY, code text NOT NULL UNIQUE, v int) USING driftdb")
    h = StatesBySeq(conn)
    tx, states = h.tx, h.states

    tx("INSERT INTO ic SELECT g, 'c' || g, g FROM generate_series(1, 6) g",
       apply=lambda m: m.update({g: (f"c{g}", g) for g in range(1, 7)}))
    tx("UPDATE ic SET v = v * 10 WHERE id <= 3", apply=lambda m: m.update({g: (f"c{g}", g * 10) for g in range(1, 4)}))
    tx("DELETE FROM ic WHERE id = 6", apply=lambda m: m.pop(6))
    conn.execute("ALTER TABLE ic DROP CONSTRAINT ic_pkey")
    conn.execute("ALTER TABLE ic ADD PRIMARY KEY (code)")
    changed = tx("UPDATE ic SET v = -1 WHERE id = 1", apply=lambda m: m.update({1: ("c1", -1)}))
    assert conn.execute("SELECT keys_stable, key_attnums, keyed_from FROM driftdb.tables WHERE relid = 'ic'::regclass") \
        .fetchone() == (True, [2], changed), "the identity change was not registered"
    h = tx("INSERT INTO ic VALUES (7, 'c7', 7)", apply=lambda m: m.update({7: ("c7", 7)}))
    tx("UPDATE ic SET v = v + 1 WHERE id IN (2, 4, 7)",
       apply=lambda m: m.update({k: (m[k][0], m[k][1] + 1) for k in (2, 4, 7)}))
    tx("DELETE FROM ic WHERE id = 5", apply=lambda m: m.pop(5))
    top = max(states)
    for n in states:
        assert _states_by_id(conn, "ic", n) == states[n], f"as_of seq {n} before the purge"
    assert_verified(conn, "ic")
    if compacted:
        compact(conn, "ic")
    at = conn.execute("SELECT committed_at FROM driftdb.commits WHERE seq = %s", (h,)).fetchone()[0]
    d = {n: digest(conn, "ic", n) for n in range(h, top + 1)}
    got = conn.execute("SELECT * FROM driftdb.purge_history('ic', %s)", (at,)).fetchone()
    assert got[0] == h
    errors = []
    for n in range(h, top + 2):
        exp = states[max(s for s in states if s <= n)]
        try:
            st = _states_by_id(conn, "ic", n)
        except psycopg.Error as e:
            errors.append(f"as_of seq {n}: {e.sqlstate} {str(e).strip()}")
            continue
        if st != exp:
            errors.append(f"as_of seq {n}: {st}, expected {exp}")
        if n in d and digest(conn, "ic", n) != d[n]:
            errors.append(f"digest at seq {n} changed")
    v = verify_map(conn, "ic")
    if not all(ok for ok, _ in v.values()):
        errors.append(f"verify: {v}")
    try:
        alive = sorted((r[0], r[1], r[2]) for r in conn.execute(
            "SELECT (data).id, seq_start, seq_end FROM driftdb.versions(NULL::ic)").fetchall())
        # every version that was alive at the horizon or started after it, once
        ids = [a[0] for a in alive if a[2] is None]
        if sorted(ids) != sorted(states[top]):
            errors.append(f"current versions of ids {sorted(ids)}, live ids {sorted(states[top])}")
    except psycopg.Error as e:
        errors.append(f"versions: {e.sqlstate} {str(e).strip()}")
    assert not errors, "\n".join(errors)


def test_online_purge_with_writers_and_readers(db):
    """Purges (with compactions between them) while a writer commits and a reader reads AS OF
    seqs at or above the last horizon: the reader always gets the model's state."""
    conn = db.connect()
    conn.execute("CREATE TABLE o (id int PRIMARY KEY, v int NOT NULL, note text) USING driftdb")
    initial = {k: k * 10 for k in range(1, 201)}
    first = commit_tx(conn, "INSERT INTO o SELECT g, g * 10, 'init' FROM generate_series(1, 200) g")[0]
    model = OnlineModel(first - 1, initial, first)
    rnd = random.Random(SEED + 9)
    own = dict(initial)
    for _ in range(130):  # history to purge, written before the threads start
        k = rnd.randrange(1, 201)
        v = rnd.randrange(10**6)
        if k in own and own[k] == v:
            continue
        seq = commit_tx(conn, "INSERT INTO o VALUES (%s, %s, 'pre') ON CONFLICT (id) DO UPDATE SET v = excluded.v",
                        params=[(k, v)])[0]
        own[k] = v
        model.record(seq, {k: v})
    pre_top = current_seq(conn)
    horizons = list(range(first + 10, pre_top - 5, 12)) + [pre_top - 5]
    floor = horizons[-1]
    stop = threading.Event()
    errors: list = []
    counts = [0, 0]
    checks = [0]

    def reader():
        r = random.Random(SEED + 10 + threading.get_ident() % 1000)
        try:
            with psycopg.connect(db.conninfo(), autocommit=True) as c:
                while not stop.is_set():
                    hi = model.complete_upto()
                    n = r.randrange(floor, hi + 1)
                    exp = model.state_at(n)
                    got = dict(c.execute("SELECT id, v FROM driftdb.as_of(NULL::o, %s::bigint) x", (n,)).fetchall())
                    if got != exp:
                        errors.append(f"reader: as_of seq {n}: {len(set(exp.items()) ^ set(got.items()))} differences")
                    k = r.randrange(1, 420)
                    got = c.execute("SELECT v FROM driftdb.as_of(NULL::o, %s::bigint) x WHERE x.id = %s::int",
                                    (n, k)).fetchall()
                    if got != ([(exp[k],)] if k in exp else []):
                        errors.append(f"reader: as_of seq {n} key {k}: expected {exp.get(k)}, got {got}")
                    checks[0] += 1
        except BaseException as e:  # noqa: BLE001
            errors.append(f"reader: {e!r}")

    threads = [threading.Thread(target=_writer, args=(db.conninfo(), 0, model, stop, errors, counts)),
               threading.Thread(target=reader), threading.Thread(target=reader)]
    for th in threads:
        th.start()
    try:
        adm = db.connect()
        for i, hz in enumerate(horizons):
            time.sleep(0.15)
            if i % 2 == 0:
                compact(adm, "o")
            at = adm.execute("SELECT committed_at FROM driftdb.commits WHERE seq = %s", (hz,)).fetchone()[0]
            got = adm.execute("SELECT horizon_seq FROM driftdb.purge_history('o', %s)", (at,)).fetchone()
            assert got == (hz,), (hz, got)
            if errors:
                break
        time.sleep(0.3)
    finally:
        stop.set()
        for th in threads:
            th.join(timeout=60)
    assert not any(th.is_alive() for th in threads), "a worker hung"
    assert not errors, "\n".join(errors[:10])
    assert checks[0] >= 10 and counts[0] >= 10, (checks, counts)
    assert_chain_ok(conn, "o")
    top = current_seq(conn)
    for n in range(floor, top + 2):
        assert dict(conn.execute("SELECT id, v FROM driftdb.as_of(NULL::o, %s::bigint) x", (n,)).fetchall()) == \
            model.state_at(n), f"as_of seq {n}"
    assert [r["horizon_seq"] for r in records(conn, "o", "p")] == horizons


# --------------------------------------------------------------------------------------------
# 5. Retention through maintain()
# --------------------------------------------------------------------------------------------


def _drain_maintain(conn, limit: int = 10) -> list:
    """Call maintain() until it returns nothing; every row it returned."""
    out = []
    for _ in range(limit):
        rows = conn.execute("SELECT table_name::text, action, detail FROM driftdb.maintain()").fetchall()
        if not rows:
            return out
        out.extend(rows)
    raise AssertionError(f"maintain() still had work after {limit} calls: {out[-6:]}")


def test_retention_by_maintain(db):
    conn = db.connect()
    spec = spec_a()
    for stmt in spec.ddl:
        conn.execute(stmt)
    w = Script(conn, [spec], random.Random(2))
    e = error_of(conn, "SELECT driftdb.set_retention('tt_a', '1 day')")
    assert e.sqlstate == "55000", e  # no history yet
    with w.txn() as x:
        for i in range(1, 6):
            x.insert("tt_a", row_a(i, f"a{i}"))
    with w.txn() as x:
        x.update("tt_a", (1,), row_a(1, "a1 old"))
        x.delete("tt_a", (2,))
    with w.txn() as x:
        x.update("tt_a", (3,), row_a(3, "a3 old"))
    old_top = w.seqs[-1]
    time.sleep(2.2)
    with w.txn() as x:
        x.update("tt_a", (1,), row_a(1, "a1 new"))
    with w.txn() as x:
        x.delete("tt_a", (4,))
        x.insert("tt_a", row_a(6, "a6"))
    d_before = {n: digest(conn, "tt_a", n) for n in range(old_top, w.seqs[-1] + 1)}
    # nothing due without a retention
    assert not [r for r in _drain_maintain(conn) if r[1] == "purge"]
    conn.execute("SELECT driftdb.set_retention('tt_a', '1.5 seconds')")
    assert stats(conn, "tt_a")["retention"] == dt.timedelta(seconds=1.5)
    rows = conn.execute("SELECT table_name::text, action, detail FROM driftdb.maintain()").fetchall()
    purges = [r for r in rows if r[1] == "purge"]
    assert len(purges) == 1 and purges[0][0] == "tt_a", rows
    assert f"before seq {old_top}" in purges[0][2], purges
    assert conn.execute("SELECT seq, committed_at, reason FROM driftdb.history_start('tt_a')").fetchone() == \
        (old_top, w.at[old_top], "purged")
    st = stats(conn, "tt_a")
    assert st["history_start_reason"] == "purged" and st["retention_horizon"] is not None, st
    check_from(w, spec, old_top)
    for n, d in d_before.items():
        assert digest(conn, "tt_a", n) == d
    # the next rounds have nothing left to purge (the horizon has not moved past new commits)
    assert not [r for r in _drain_maintain(conn) if r[1] == "purge"]
    assert_chain_ok(conn, "tt_a")
    conn.execute("SELECT driftdb.set_retention('tt_a', NULL)")
    assert stats(conn, "tt_a")["retention"] is None
    time.sleep(1.6)
    assert not [r for r in _drain_maintain(conn) if r[1] == "purge"]
    assert conn.execute("SELECT seq FROM driftdb.history_start('tt_a')").fetchone() == (old_top,)


# --------------------------------------------------------------------------------------------
# 6. maintain() compacts once enough events wait
# --------------------------------------------------------------------------------------------


def test_rows_without_identity_keep_their_history_and_maintenance_goes_on(db):
    """Rows recorded while a table had no row identity cannot be purged (which of them were
    current at a horizon is unknown): set_retention refuses such a table, and a retention set
    before such rows came leaves the table's history whole in the maintenance round, which
    still compacts the other tables (it used to fail whole, every round)."""
    conn = db.connect()
    conn.execute("CREATE TABLE kr (id int PRIMARY KEY, v text) USING driftdb")
    conn.execute("INSERT INTO kr VALUES (1, 'a')")
    conn.execute("SELECT driftdb.set_retention('kr', '1 second')")
    conn.execute("ALTER TABLE kr DROP CONSTRAINT kr_pkey")
    conn.execute("INSERT INTO kr VALUES (2, 'b')")  # recorded without a key
    e = error_of(conn, "SELECT driftdb.set_retention('kr', '1 day')")
    assert e.sqlstate == "55000" and "without a row identity" in str(e) and e.diag.message_hint, (e.sqlstate, e)
    # the retention set before stays (the refused call changed nothing)
    assert conn.execute("SELECT retention FROM driftdb.tables WHERE relid = 'kr'::regclass").fetchone()[0] == dt.timedelta(seconds=1)
    conn.execute("CREATE TABLE ok (id int PRIMARY KEY) USING driftdb")
    for i in range(120):
        conn.execute("INSERT INTO ok VALUES (%s)", (i,))
    time.sleep(1.2)
    conn.execute("SET driftdb.compact_min_age = 0")
    conn.execute("SET driftdb.compact_min_events = 100")
    notices = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary))
    done = _drain_maintain(conn)
    assert [r for r in done if r[0] == "ok" and r[1] == "compact"], done
    assert not [r for r in done if r[0] == "kr"], done
    assert any('"kr" not purged' in n for n in notices), notices
    assert conn.execute("SELECT reason FROM driftdb.history_start('kr')").fetchone() == ("complete since creation",)
    assert_verified(conn, "kr", "ok")


def test_maintain_compacts_and_terminates(db):
    conn = db.connect()
    w = workload_on_three_tables(conn, random.Random(SEED + 6))
    names = [s.name for s in w.specs]
    conn.execute("CREATE TABLE other (id int PRIMARY KEY) USING driftdb")
    conn.execute("INSERT INTO other SELECT generate_series(1, 50)")
    w.run(160)
    top = current_seq(conn)
    n_ev = {t: len(_compactable(conn, t, top)) for t in names}
    assert min(n_ev.values()) >= 100, n_ev
    conn.execute("SET driftdb.compact_min_age = 0")
    conn.execute("SET driftdb.compact_min_events = %s" % (max(n_ev.values()) + 1000))
    assert not [r for r in _drain_maintain(conn) if r[1] == "compact"], "compacted below compact_min_events"
    assert not any(links(conn, t) for t in names)
    conn.execute("SET driftdb.compact_min_events = 100")
    done = _drain_maintain(conn)
    compacts = {r[0]: r for r in done if r[1] == "compact"}
    assert set(compacts) == set(names), done  # 'other' has only 50 events waiting
    for t in names:
        assert f"{n_ev[t]} events into" in compacts[t][2], compacts
        assert {e[2] for e in event_ops(conn, t)} <= {"t", "s"}
        assert_chain_ok(conn, t)
    assert len(event_ops(conn, "other")) == 50 and not links(conn, "other")
    w.check_as_of_seqs()
    w.check_versions()
    w.check_changes()
    # fewer than compact_min_events new events: not compacted; then enough: compacted
    w.run(5)
    assert not [r for r in _drain_maintain(conn) if r[1] == "compact"]
    w.run(160)
    done = _drain_maintain(conn)
    top = current_seq(conn)
    assert {r[0] for r in done if r[1] == "compact"} == {
        t for t in names if len(_compactable(conn, t, top)) == 0 and stats(conn, t)["compacted_upto"] == top}, done
    assert any(r[1] == "compact" for r in done), done
    w.check_as_of_seqs()
    w.check_versions()
    w.check_changes()
    for t in names:
        assert_chain_ok(conn, t)
    # snapshots are due once enough events (recent or compacted) follow the newest one
    conn.execute("SET driftdb.snapshot_min_events = 50")
    done = _drain_maintain(conn)
    snaps = {r[0] for r in done if r[1] == "snapshot"}
    assert set(names) <= snaps, done
    top = current_seq(conn)
    for t in names:
        assert conn.execute("SELECT max(seq) FROM driftdb.snapshots WHERE table_id = %s", (table_id(conn, t),)).fetchone()[0] == top
    w.check_as_of_seqs()
    for t in names:
        assert_chain_ok(conn, t)


# --------------------------------------------------------------------------------------------
# 7. erase
# --------------------------------------------------------------------------------------------


def _key_events(conn, table: str, key: bytes) -> list:
    """(seq,) of the key's recent events (event rows and packs), markers left out."""
    return sorted((s,) for s, _o, op, k in events(conn, table) if k == key and op != "m")


def _mentions(conn, spec, ident: int) -> list:
    """Every place time travel still shows key ``ident`` (must be none after its erasure)."""
    found = []
    top = current_seq(conn)
    for n in range(0, top + 2):
        if conn.execute(f"SELECT count(*) FROM driftdb.as_of(NULL::{spec.name}, %s::bigint) x WHERE x.id = %s::int",
                        (n, ident)).fetchone()[0]:
            found.append(("as_of key", n))
        if any(r[0] == ident for r in as_of_rows(conn, spec, n)):
            found.append(("as_of", n))
    if conn.execute(f"SELECT count(*) FROM driftdb.versions(NULL::{spec.name}) v WHERE (v.data).id = %s::int", (ident,)).fetchone()[0]:
        found.append(("versions key", None))
    if conn.execute(f"SELECT count(*) FROM driftdb.versions(NULL::{spec.name}) v WHERE (v.data).id::text = %s", (str(ident),)).fetchone()[0]:
        found.append(("versions", None))
    if conn.execute(f"SELECT count(*) FROM driftdb.changes(NULL::{spec.name}) c "
                    "WHERE (c.old_data).id = %s OR (c.new_data).id = %s", (ident, ident)).fetchone()[0]:
        found.append(("changes", None))
    return found


def _forget_key_in_model(w: Script, name: str, ident: int) -> None:
    """The model after an erasure: key ``ident`` never existed (its rows and changes go)."""
    spec = w.spec(name)
    for seq, st in w.states.items():
        if any(k == (ident,) for k in st[name]):
            st2 = dict(st)
            st2[name] = {k: r for k, r in st[name].items() if k != (ident,)}
            w.states[seq] = st2
    ch = w.models[name].changes
    for seq in list(ch):
        ch[seq] = [c for c in ch[seq] if not any(r is not None and spec.key_of(r) == (ident,) for r in c[1:])]
        if not ch[seq]:
            del ch[seq]


def test_erase(db):
    conn = db.connect()
    spec = spec_a()
    for stmt in spec.ddl:
        conn.execute(stmt)
    w = Script(conn, [spec], random.Random(3))
    with w.txn() as x:
        for i in range(1, 9):
            x.insert("tt_a", row_a(i, f"secret {i}", i))
    for j in range(3):
        with w.txn() as x:
            x.update("tt_a", (5,), row_a(5, f"secret 5 v{j}", j))
            x.update("tt_a", (6,), row_a(6, f"secret 6 v{j}"))
            x.update("tt_a", (1,), row_a(1, f"keep 1 v{j}"))
    with w.txn() as x:
        x.update("tt_a", (7,), row_a(70, "moved"))  # key 7 -> 70
    conn.execute("SELECT driftdb.snapshot('tt_a')")  # holds rows 5 and 6
    with w.txn() as x:
        x.update("tt_a", (5,), row_a(5, "secret 5 last"))
    with w.txn() as x:
        x.update("tt_a", (2,), row_a(2, "only 2"))  # a seq touching nothing erased

    # refusals
    e = error_of(conn, "SELECT * FROM driftdb.erase('tt_a', '5')")
    assert e.sqlstate == "55000" and "DELETE" in (e.diag.message_hint or ""), (e.sqlstate, e, e.diag.message_hint)
    with w.txn() as x:
        x.delete("tt_a", (70,))
    for k in ("70", "7"):
        e = error_of(conn, "SELECT * FROM driftdb.erase('tt_a', %s)", (k,))
        assert e.sqlstate == "0A000", (k, e.sqlstate, e)
    e = error_of(conn, "SELECT * FROM driftdb.erase('tt_a', '1', '2')")
    assert e.sqlstate == "22023", e

    # erase key 6 while its events are all in driftdb.events
    with w.txn() as x:
        x.delete("tt_a", (6,))
    key6 = mp_key(6)
    n6 = len(_key_events(conn, "tt_a", key6))
    assert n6 == 5
    first6 = min(s for s, in _key_events(conn, "tt_a", key6))
    top = w.seqs[-1]
    d_before = {n: digest(conn, "tt_a", n) for n in range(0, top + 1)}
    got = conn.execute("SELECT * FROM driftdb.erase('tt_a', '6')").fetchone()
    assert got[0] == n6 and got[1] >= 1 and got[2] == hashlib.sha256(key6).hexdigest(), got
    _forget_key_in_model(w, "tt_a", 6)
    assert _mentions(conn, spec, 6) == []
    w.check_as_of_seqs()
    w.check_changes()
    rec = records(conn, "tt_a", "e")
    assert len(rec) == 1 and rec[0]["key_sha256"] == got[2] and rec[0]["by"] == "postgres", rec
    assert rec[0]["digest_before"] == d_before[top][1] and rec[0]["digest_after"] == digest(conn, "tt_a")[1], rec
    assert rec[0]["digest_after"] != rec[0]["digest_before"]
    assert rec[0]["removed_links"] == [], rec  # nothing was compacted yet
    for n in range(0, top + 1):
        assert (digest(conn, "tt_a", n) == d_before[n]) == (n < first6), f"digest at seq {n} after erasing key 6"
    assert_chain_ok(conn, "tt_a")

    # compact, then erase key 5: its events are in segments, which are rewritten
    compact(conn, "tt_a")
    with w.txn() as x:
        x.delete("tt_a", (5,))
    with w.txn() as x:
        x.insert("tt_a", row_a(9, "after"))
    key5 = mp_key(5)
    links_before = links(conn, "tt_a")
    top = w.seqs[-1]
    d_before = digest(conn, "tt_a")
    got = conn.execute("SELECT * FROM driftdb.erase('tt_a', '5')").fetchone()
    assert got[0] == 6 and got[2] == hashlib.sha256(key5).hexdigest(), got  # insert, 4 updates, delete
    _forget_key_in_model(w, "tt_a", 5)
    assert _mentions(conn, spec, 5) == []
    w.check_as_of_seqs()
    w.check_versions()
    w.check_changes()
    rec = records(conn, "tt_a", "e")[-1]
    old = {l["seg_id"]: l["hash"].hex() for l in links_before}
    assert rec["removed_links"] and all(old.get(i) == hx for i, hx in rec["removed_links"]), (rec, old)
    assert rec["digest_before"] == d_before[1] and rec["digest_after"] == digest(conn, "tt_a")[1] != d_before[1]
    assert rec["added_links"] == [l["seg_id"] for l in links(conn, "tt_a") if l["seg_id"] > max(old) and l["kind"] == "s"]
    assert not [e for e in events(conn, "tt_a") if e[3] == key5]
    assert_chain_ok(conn, "tt_a")
    # a fresh session (no cached segments) sees the same
    c2 = db.connect()
    assert _mentions(c2, spec, 5) == [] and _mentions(c2, spec, 6) == []
    assert_chain_ok(c2, "tt_a")


# --------------------------------------------------------------------------------------------
# 8. Tampering is found, and named
# --------------------------------------------------------------------------------------------


def _tamper_setup(db):
    conn = db.connect()
    conn.execute("CREATE TABLE tp (id int PRIMARY KEY, v text, b bytea) USING driftdb")
    conn.execute("SET driftdb.segment_size = 4096")
    for i in range(12):
        conn.execute("INSERT INTO tp SELECT g, repeat(md5((g * %s::int)::text), 4), NULL "
                     "FROM generate_series(%s::int, %s::int) g",
                     (i + 1, i * 40 + 1, i * 40 + 40))
        conn.execute("UPDATE tp SET v = v || 'x' WHERE id %% 3 = %s::int", (i % 3,))
    r1 = compact(conn, "tp")
    assert r1["segments"] >= 5, r1
    # one event of incompressible bytes, compacted alone: a segment stored uncompressed
    blob = os.urandom(3000)
    conn.execute("INSERT INTO tp VALUES (100000, 'blob', %s)", (blob,))
    r2 = compact(conn, "tp")
    assert (r2["segments"], r2["events"]) == (1, 1), r2
    for i in range(3):
        conn.execute("UPDATE tp SET v = v || 'y' WHERE id %% 7 = %s::int", (i,))
    r3 = compact(conn, "tp")
    assert r3["segments"] >= 2, r3
    conn.execute("UPDATE tp SET v = 'recent' WHERE id = 5")  # stays in driftdb.events
    assert_chain_ok(conn, "tp")
    return conn, blob, r1, r2


def _verify_names(c, item: str, *needles: str):
    """None if verify reports ``item`` not ok with every needle in its detail; else what went wrong."""
    try:
        v = verify_map(c, "tp")
    except psycopg.Error as e:
        return f"verify raised {e.sqlstate} instead of reporting: {str(e).strip()}"
    if item not in v:
        return f"verify has no {item!r} item: {v}"
    ok, detail = v[item]
    if ok:
        return f"verify did not notice ({item} ok): {v}"
    missing = [n for n in needles if n not in detail]
    if missing:
        return f"verify {item} detail does not name {missing}: {detail!r}"
    return None


TAMPERS = ["flipped_segment_byte", "rewritten_segment", "rewritten_purge_record", "deleted_link", "event_frame"]


@pytest.mark.parametrize("how", TAMPERS)
def test_tamper_is_detected_and_named(db, how):
    """Damage made behind driftdb's back is reported by verify, naming the link (or event):
    checked in the session that wrote the chain (its caches are warm) and in a fresh one."""
    conn, blob, r1, r2 = _tamper_setup(db)
    t = tamper_conn(db)
    tid = table_id(conn, "tp")
    if how == "rewritten_purge_record":
        at = conn.execute("SELECT committed_at FROM driftdb.commits WHERE seq = %s", (r1["seq_hi"] - 3,)).fetchone()[0]
        conn.execute("SELECT * FROM driftdb.purge_history('tp', %s)", (at,))
        conn.execute("UPDATE tp SET v = 'after purge' WHERE id < 20")
        compact(conn, "tp")
        assert_chain_ok(conn, "tp")
    ls = links(conn, "tp")
    for c in (conn,):
        verify_map(c, "tp")  # warm the session's caches
    sessions = {"the session that wrote the chain": conn}
    errors = []

    def check(item, *needles):
        sessions["a fresh session"] = db.connect()
        for name, c in sessions.items():
            err = _verify_names(c, item, *needles)
            if err:
                errors.append(f"{how}, {name}: {err}")

    if how == "flipped_segment_byte":
        # a flipped byte in a (compressed) segment: its contents no longer match its hash
        k = ls[2]
        t.execute("UPDATE driftdb.segments SET data = overlay(data placing "
                  "set_byte('\\x00'::bytea, 0, 255 - get_byte(data, 39)) from 40 for 1) "
                  "WHERE table_id = %s AND seg_id = %s", (tid, k["seg_id"]))
        check("chain", f"link {k['seg_id']} (segment of seqs {k['seq_lo']}..{k['seq_hi']}",
              "its contents do not match its hash")
    elif how == "rewritten_segment":
        # a consistent rewrite of one link (data, block CRC and hash): the next link no longer
        # follows it. The lone uncompressed segment: change a byte of the stored row image.
        seg = next(l for l in ls if l["seq_lo"] == l["seq_hi"] == r2["seq_lo"] and l["kind"] == "s")
        data = bytearray(seg["data"])
        assert data[:2] == b"DS" and data[4] == 0, f"the blob segment is not stored uncompressed: {bytes(data[:24]).hex()}"
        pos = bytes(data).find(blob[:64])
        assert pos > 0
        data[pos + 10] ^= 0xFF
        data[8:12] = struct.pack("<I", zlib.crc32(bytes(data[12:])) & 0xFFFFFFFF)
        t.execute("UPDATE driftdb.segments SET data = %s, hash = %s WHERE table_id = %s AND seg_id = %s",
                  (bytes(data), chain_hash(seg["prev_hash"], bytes(data)), tid, seg["seg_id"]))
        nxt = seg["seg_id"] + 1
        check("chain", f"link {nxt} (segment of seqs", "previous-link hash does not match")
        check("live")  # and the altered image is not what the live table holds
    elif how == "rewritten_purge_record":
        # who purged is rewritten in the record, its hash recomputed: the next link breaks
        rec = next(l for l in ls if l["kind"] == "p")
        assert rec["seg_id"] < ls[-1]["seg_id"]
        body = rec["data"].replace(b'"by":"postgres"', b'"by":"nobody"')
        assert body != rec["data"], rec["data"]
        t.execute("UPDATE driftdb.segments SET data = %s, hash = %s WHERE table_id = %s AND seg_id = %s",
                  (body, chain_hash(rec["prev_hash"], body), tid, rec["seg_id"]))
        check("chain", f"link {rec['seg_id'] + 1} ", "previous-link hash does not match")
    elif how == "deleted_link":
        gone = ls[3]
        t.execute("DELETE FROM driftdb.segments WHERE table_id = %s AND seg_id = %s", (tid, gone["seg_id"]))
        check("chain", f"link {gone['seg_id']} is missing")
    else:
        # a byte of a recent (uncompacted) event's frame: frames names the seq
        seq, ord_ = conn.execute("SELECT seq, ord FROM driftdb.events WHERE table_id = %s AND op = 'u' "
                                 "ORDER BY seq DESC LIMIT 1", (tid,)).fetchone()
        frame = bytes(conn.execute("SELECT frame FROM driftdb.events WHERE table_id = %s AND seq = %s AND ord = %s",
                                   (tid, seq, ord_)).fetchone()[0])
        bad = bytearray(frame)
        bad[len(bad) - 3] ^= 0x01
        t.execute("UPDATE driftdb.events SET frame = %s WHERE table_id = %s AND seq = %s AND ord = %s",
                  (bytes(bad), tid, seq, ord_))
        check("frames", f"event seq {seq} ")
    assert not errors, "\n".join(errors)


# --------------------------------------------------------------------------------------------
# 9. pg_dump / pg_restore keeps segments, purge records and the chain
# --------------------------------------------------------------------------------------------

STATS_KEPT = ("versions", "events", "recent_events", "compacted_events", "segments", "snapshots", "bytes_raw",
              "oldest_seq", "newest_seq", "oldest_time", "newest_time", "history_start_seq",
              "history_start_reason", "retention", "compacted_upto", "last_compaction")


def _segment_state(conn, spec, horizon: int) -> dict:
    top = current_seq(conn)
    return {
        "digest": {n: digest(conn, spec.name, n) for n in range(horizon, top + 1)},
        "history_start": conn.execute(f"SELECT * FROM driftdb.history_start('{spec.name}')").fetchone(),
        "as_of": {n: text_rows(conn, f"SELECT x::text FROM driftdb.as_of(NULL::{spec.name}, %s::bigint) x ORDER BY 1", (n,))
                  for n in range(horizon, top + 2)},
        "versions": text_rows(conn, f"SELECT concat_ws(' ', seq_start, seq_end, data::text) FROM driftdb.versions(NULL::{spec.name}) ORDER BY 1"),
        "changes": text_rows(conn, f"SELECT concat_ws(' ', seq, operation, old_data::text, new_data::text) FROM driftdb.changes(NULL::{spec.name}) ORDER BY 1"),
        "stats": {k: v for k, v in stats(conn, spec.name).items() if k in STATS_KEPT},
        "links": [(l["seg_id"], l["kind"], l["seq_lo"], l["seq_hi"], l["prev_hash"], l["hash"], l["data"])
                  for l in links(conn, spec.name)],
        "verify": [(i, ok) for i, ok, _d in verify_rows(conn, spec.name)],
        "current_seq": top,
    }


def test_dump_restore_keeps_segments_and_purge(db, pg_cluster, tmp_path):
    from test_history_dump import RESTORE_OPT, _conn_args, _run

    conn = db.connect()
    w = _purge_history_fixture(conn)
    spec = w.specs[0]
    compact_before(conn, "tt_a", w.at[w.seqs[14]])
    h = w.seqs[9]
    assert conn.execute("SELECT horizon_seq FROM driftdb.purge_history('tt_a', %s)", (w.at[h],)).fetchone() == (h,)
    with w.txn() as x:
        x.insert("tt_a", row_a(50, "after purge"))
    compact(conn, "tt_a")
    with w.txn() as x:
        x.update("tt_a", (50,), row_a(50, "recent, not compacted"))
    conn.execute("SELECT driftdb.set_retention('tt_a', '10 years')")
    before = _segment_state(conn, spec, h)
    assert before["stats"]["segments"] >= 2 and before["history_start"][2] == "purged", before["stats"]
    assert {k for k, _l, *_ in before["links"]} and {l[1] for l in before["links"]} == {"s", "p"}
    assert all(ok for _i, ok in before["verify"]) and "chain" in dict(before["verify"])

    dump = tmp_path / "seg.dump"
    res = _run([str(PGBIN / "pg_dump"), "-Fc", "-f", str(dump), *_conn_args(pg_cluster), db.name])
    assert res.returncode == 0, res.stderr
    target = f"t_seg_restore_{secrets.token_hex(4)}"
    with pg_cluster.connect() as c:
        c.execute(f'CREATE DATABASE "{target}" TEMPLATE template0')
    try:
        res = _run([str(PGBIN / "pg_restore"), "-d", target, *_conn_args(pg_cluster), str(dump)], RESTORE_OPT)
        assert res.returncode == 0 and "ERROR" not in res.stderr, res.stderr
        with pg_cluster.connect(target) as c:
            after = _segment_state(c, spec, h)
            for k, v in before.items():
                assert after[k] == v, f"{k} differs after restore:\n  before {str(v)[:600]}\n  after  {str(after[k])[:600]}"
            e = error_of(c, "SELECT * FROM driftdb.as_of(NULL::tt_a, %s::bigint)", (h - 1,))
            assert e.sqlstate == "22023" and f"starts at seq {h}" in str(e), e
            # history and the chain go on where they stopped
            w.conn = c
            with w.txn() as x:
                x.update("tt_a", (50,), row_a(50, "after restore"))
            r = compact(c, "tt_a")
            assert r["events"] >= 2, r
            check_from(w, spec, h, c)
            assert_chain_ok(c, "tt_a")
            assert digest(c, "tt_a", before["current_seq"]) == before["digest"][before["current_seq"]]
    finally:
        w.conn = conn
        drop_database(pg_cluster, target)
