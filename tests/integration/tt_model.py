"""Oracle for the time-travel tests (issue 4: driftdb.as_of / versions / changes, SET driftdb.as_of).

Everything here is built from the test's OWN committed writes, never from driftdb's output:

* a random workload (:class:`Workload`) runs transactions on tables described by :class:`Spec`,
  keeps a *lineage* model of every row (an id per row that an UPDATE keeps — also when it
  changes the key — and an INSERT creates), and after every commit records
  ``(seq, committed_at)`` of that transaction (looked up by its xid, as the contract says) and
  the state of every table;
* from the recorded per-seq states it derives what ``as_of`` must return at every seq and at
  any time, the versions of every row (``versions``), and the net changes of every transaction
  (``changes``).

Values are compared in a canonical form (:func:`canon`) built per column kind: numerics by
their text (scale included), timestamps as UTC ISO strings, jsonb as sorted-key JSON, arrays as
tuples. The test writes Python values and reads PostgreSQL's typed values back, so no text
formatting of either side is trusted.

The net-change model of one transaction and one table (what ``changes`` must list):

* TRUNCATE: one 'TRUNCATE' change; the rows present before the TRUNCATE (committed or written
  earlier in the transaction) leave no other change; rows present at commit that were written
  after it are 'INSERT's.
* otherwise per lineage: absent before, present after: 'INSERT'; present before, absent after:
  'DELETE'; present in both with different values: 'UPDATE' (old, new) — also when the key
  changed (one row, not a delete and an insert); same values: nothing.
* a 'DELETE' and an 'INSERT' of the same row identity (the key, or the whole row under REPLICA
  IDENTITY FULL) in one transaction are one 'UPDATE' of that row (nothing if the values are
  back where they were): the identity names the row, as for every other history reader.
"""
from __future__ import annotations

import bisect
import datetime as dt
import decimal
import json
import random
from dataclasses import dataclass, field
from typing import Any, Callable

import psycopg
from psycopg import sql

UTC = dt.timezone.utc
DEC = decimal.Context(prec=200)  # exact numeric arithmetic for the model (n + 1 on 30+ digits)

# --------------------------------------------------------------------------------------------
# Canonical values
# --------------------------------------------------------------------------------------------

PGTYPE = {
    "int": "int", "bigint": "bigint", "text": "text", "numeric": "numeric", "jsonb": "jsonb",
    "tstz": "timestamptz", "intarr": "int[]",
}


def canon(kind: str, v: Any):
    """A hashable, comparable form of one value of column kind ``kind`` (None stays None)."""
    if v is None:
        return None
    if kind in ("int", "bigint"):
        return int(v)
    if kind == "text":
        return str(v)
    if kind == "numeric":
        return str(v)  # Decimal's str keeps the scale ('1.50'), like numeric's text
    if kind == "jsonb":
        if isinstance(v, str):
            v = json.loads(v)
        return json.dumps(v, sort_keys=True)
    if kind == "tstz":
        assert v.tzinfo is not None, v
        return v.astimezone(UTC).isoformat()
    if kind == "intarr":
        return tuple(None if x is None else int(x) for x in v)
    raise AssertionError(f"unknown column kind {kind}")


def param(kind: str, v: Any):
    """The value to send for a placeholder cast to PGTYPE[kind]."""
    if v is None:
        return None
    if kind == "jsonb":
        return json.dumps(v)
    return v


def rkey(row) -> str:
    """Sort key for canonical rows (they may hold None next to ints/strings)."""
    return repr(row)


def srt(rows) -> list:
    return sorted(rows, key=rkey)


# --------------------------------------------------------------------------------------------
# Table shapes
# --------------------------------------------------------------------------------------------


@dataclass
class Spec:
    """One table of the workload."""

    name: str
    cols: list  # [(name, kind)]
    key: list  # names of the key columns (the primary key)
    ddl: list  # statements creating it
    full_identity: bool = False  # REPLICA IDENTITY FULL: the identity is the whole row
    gen_key: Callable = None  # (rnd) -> tuple of key values (raw)
    gen_rest: Callable = None  # (rnd, token) -> tuple of the other columns' values (raw)

    @property
    def colnames(self) -> list:
        return [c for c, _k in self.cols]

    @property
    def kinds(self) -> list:
        return [k for _c, k in self.cols]

    @property
    def key_idx(self) -> list:
        return [self.colnames.index(k) for k in self.key]

    @property
    def rest_idx(self) -> list:
        return [i for i in range(len(self.cols)) if i not in self.key_idx]

    def canon_row(self, raw) -> tuple:
        return tuple(canon(k, v) for k, v in zip(self.kinds, raw))

    def key_of(self, row) -> tuple:
        return tuple(row[i] for i in self.key_idx)

    def ident_of(self, crow) -> tuple:
        return tuple(crow) if self.full_identity else self.key_of(crow)

    def make_row(self, key, rest) -> tuple:
        out = [None] * len(self.cols)
        for i, v in zip(self.key_idx, key):
            out[i] = v
        for i, v in zip(self.rest_idx, rest):
            out[i] = v
        return tuple(out)

    # SQL -----------------------------------------------------------------------------------

    def select_list(self, prefix: str = "") -> str:
        return ", ".join(f"{prefix}{c}" for c in self.colnames)

    def where_key(self) -> str:
        return " AND ".join(f"{c} = %s::{PGTYPE[k]}" for c, k in self.cols if c in self.key)

    def key_params(self, raw) -> list:
        return [param(self.kinds[i], raw[i]) for i in self.key_idx]

    def insert_sql(self) -> str:
        ph = ", ".join(f"%s::{PGTYPE[k]}" for _c, k in self.cols)
        return f"INSERT INTO {self.name} ({self.select_list()}) VALUES ({ph})"

    def insert_params(self, raw) -> list:
        return [param(k, v) for k, v in zip(self.kinds, raw)]

    def update_sql(self, cols: list) -> str:
        sets = ", ".join(f"{c} = %s::{PGTYPE[self.kinds[self.colnames.index(c)]]}" for c in cols)
        return f"UPDATE {self.name} SET {sets} WHERE {self.where_key()}"

    def read_canon(self, rows) -> list:
        return [self.canon_row(r) for r in rows]


def _text_value(rnd: random.Random, tok: int) -> str:
    style = rnd.randrange(6)
    if style == 0:
        return f"v{tok}"
    if style == 1:
        return f"é'\"\\{tok} ünïcödé ✓"
    if style == 2:
        return f"{tok} " + "long " * rnd.randrange(400, 900)  # TOAST-sized, compressible
    if style == 3:
        return f"  {tok}\n\ttabs  "
    if style == 4:
        return f"{tok}" + "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(rnd.randrange(0, 40)))
    return f"NULL{tok}"  # a string that looks like NULL


def _numeric(rnd: random.Random):
    r = rnd.random()
    if r < 0.15:
        return None
    if r < 0.25:
        return decimal.Decimal(f"{rnd.randrange(10**29, 10**30)}.{rnd.randrange(1000):03d}")
    if r < 0.35:
        return decimal.Decimal(rnd.randrange(-1000, 1000))  # scale 0
    return decimal.Decimal(rnd.randrange(-10**6, 10**6)).scaleb(-2)  # scale 2, e.g. '0.50'


def spec_a() -> Spec:
    """Single int key, text (always holding a unique token) and a nullable numeric."""
    return Spec(
        name="tt_a",
        cols=[("id", "int"), ("v", "text"), ("n", "numeric")],
        key=["id"],
        ddl=["CREATE TABLE tt_a (id int PRIMARY KEY, v text NOT NULL, n numeric) USING driftdb"],
        gen_key=lambda rnd: (rnd.randrange(1, 45),),
        gen_rest=lambda rnd, tok: (_text_value(rnd, tok), _numeric(rnd)),
    )


B_TEXTS = ["x", "y", "zz", "É", "q r", "", "Ω'"]


def spec_b() -> Spec:
    """Composite key (a, b) with a jsonb payload (always holding a unique token) and a note."""
    def rest(rnd, tok):
        payload = {"tok": tok, "tags": [rnd.choice(["a", "b", "ü"]) for _ in range(rnd.randrange(3))],
                   "nested": {"k": rnd.randrange(100), "flag": rnd.random() < 0.5, "none": None}}
        if rnd.random() < 0.2:
            payload["big"] = "p" * rnd.randrange(3000, 6000)
        note = None if rnd.random() < 0.3 else _text_value(rnd, tok)
        return (payload, note)

    return Spec(
        name="tt_b",
        cols=[("a", "int"), ("b", "text"), ("payload", "jsonb"), ("note", "text")],
        key=["a", "b"],
        ddl=["CREATE TABLE tt_b (a int, b text, payload jsonb NOT NULL, note text, PRIMARY KEY (a, b)) USING driftdb"],
        gen_key=lambda rnd: (rnd.randrange(1, 6), rnd.choice(B_TEXTS)),
        gen_rest=rest,
    )


C_BASE = dt.datetime(2001, 2, 3, 4, 5, 6, tzinfo=UTC)


def spec_c() -> Spec:
    """bigint key, REPLICA IDENTITY FULL (every update changes the identity), a timestamptz
    (unique per version) and a nullable int[] with NULL elements."""
    def rest(rnd, tok):
        at = C_BASE + dt.timedelta(seconds=tok * 7, microseconds=rnd.randrange(10**6))
        r = rnd.random()
        if r < 0.2:
            arr = None
        elif r < 0.3:
            arr = []
        else:
            arr = [rnd.choice([None, rnd.randrange(-2**31, 2**31)]) if rnd.random() < 0.2 else rnd.randrange(-50, 50)
                   for _ in range(rnd.randrange(1, 6))]
            if all(x is None for x in arr):
                arr.append(tok)
        return (at, arr)

    return Spec(
        name="tt_c",
        cols=[("k", "bigint"), ("at", "tstz"), ("arr", "intarr")],
        key=["k"],
        ddl=["CREATE TABLE tt_c (k bigint PRIMARY KEY, at timestamptz NOT NULL, arr int[]) USING driftdb",
             "ALTER TABLE tt_c REPLICA IDENTITY FULL"],
        full_identity=True,
        gen_key=lambda rnd: (10**12 + rnd.randrange(40),),
        gen_rest=rest,
    )


def workload_on_three_tables(conn, rnd: random.Random) -> "Workload":
    """Create the tables of spec_a, spec_b and spec_c and return a Workload over them (not run)."""
    specs = [spec_a(), spec_b(), spec_c()]
    for s in specs:
        for stmt in s.ddl:
            conn.execute(stmt)
    return Workload(conn, specs, rnd)


# --------------------------------------------------------------------------------------------
# Reading driftdb
# --------------------------------------------------------------------------------------------


def xid_now(conn) -> int:
    return conn.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()[0]


def seq_of_xid(conn, xid: int):
    """(seq, committed_at) of the committed transaction ``xid``, or None (it got no seq)."""
    return conn.execute(
        "SELECT seq, committed_at FROM driftdb.transactions WHERE xid::text::bigint = %s", (xid,)
    ).fetchone()


def commit_tx(conn, *statements, params=None):
    """Run ``statements`` in one transaction; returns (seq, committed_at) or None (no seq)."""
    conn.execute("BEGIN")
    try:
        x = xid_now(conn)
        for i, s in enumerate(statements):
            conn.execute(s, params[i] if params else None)
        conn.execute("COMMIT")
    except BaseException:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.execute("ROLLBACK")
        raise
    return seq_of_xid(conn, x)


class StatesBySeq:
    """A test's model of a table (``model``, by identity key) and its state after each of the
    test's committed transactions (``states``, by seq)."""

    def __init__(self, conn):
        self.conn = conn
        self.model: dict = {}
        self.states: dict = {}

    def tx(self, *statements, apply):
        """Commit ``statements`` in one transaction, apply the change to the model, and record
        the model under the transaction's seq (which it must have)."""
        got = commit_tx(self.conn, *statements)
        assert got is not None, f"no seq for {statements}"
        apply(self.model)
        self.states[got[0]] = dict(self.model)
        return got[0]


def as_of_rows(conn, spec: Spec, at, kind: str = "seq") -> list:
    """Canonical rows of driftdb.as_of(NULL::t, at) (``kind``: 'seq' -> bigint, 'ts' -> timestamptz)."""
    cast = "bigint" if kind == "seq" else "timestamptz"
    rows = conn.execute(
        f"SELECT {spec.select_list('x.')} FROM driftdb.as_of(NULL::{spec.name}, %s::{cast}) x", (at,)
    ).fetchall()
    return srt(spec.read_canon(rows))


def set_as_of(conn, value: str, local: bool = False) -> None:
    conn.execute(sql.SQL("SET {}driftdb.as_of = {}").format(
        sql.SQL("LOCAL ") if local else sql.SQL(""), sql.Literal(value)))


def plain_rows(conn, spec: Spec) -> list:
    rows = conn.execute(f"SELECT {spec.select_list()} FROM {spec.name}").fetchall()
    return srt(spec.read_canon(rows))


def ts_literal(t: dt.datetime) -> str:
    return t.astimezone(UTC).isoformat(sep=" ")


# --------------------------------------------------------------------------------------------
# Diffs with useful messages
# --------------------------------------------------------------------------------------------


def _short(v, n: int = 120) -> str:
    s = repr(v)
    return s if len(s) <= n else s[: n - 20] + f"...<{len(s)} chars>"


def diff_rows(spec: Spec, expected: list, got: list, limit: int = 6) -> str:
    """Per key: what the model expects vs what came back."""
    def by_key(rows):
        d: dict = {}
        for r in rows:
            d.setdefault(spec.key_of(r), []).append(r)
        return d

    e, g = by_key(expected), by_key(got)
    lines = []
    for k in sorted(set(e) | set(g), key=repr):
        if e.get(k, []) != g.get(k, []):
            lines.append(f"    key {k!r}: expected {_short(e.get(k))}, got {_short(g.get(k))}")
    more = f"\n    ... and {len(lines) - limit} more keys" if len(lines) > limit else ""
    return "\n".join(lines[:limit]) + more + f"\n    ({len(expected)} rows expected, {len(got)} returned)"


class Mismatches:
    """Collects mismatches so that one failure reports several (and how many there were)."""

    def __init__(self, what: str, limit: int = 8):
        self.what, self.limit, self.items = what, limit, []

    def add(self, msg: str) -> None:
        self.items.append(msg)

    def check(self) -> None:
        if self.items:
            shown = "\n".join(self.items[: self.limit])
            more = f"\n... {len(self.items) - self.limit} more" if len(self.items) > self.limit else ""
            raise AssertionError(f"{self.what}: {len(self.items)} mismatches\n{shown}{more}")


# --------------------------------------------------------------------------------------------
# The model of one table
# --------------------------------------------------------------------------------------------


@dataclass
class TableModel:
    spec: Spec
    rows: dict = field(default_factory=dict)  # lineage id -> raw row (committed)
    # per seq that changed this table: [(op, old canon row | None, new canon row | None)]
    changes: dict = field(default_factory=dict)

    def state(self, rows=None) -> dict:
        """{key: canon row} of ``rows`` (default: the committed rows)."""
        rows = self.rows if rows is None else rows
        out = {}
        for r in rows.values():
            c = self.spec.canon_row(r)
            k = self.spec.key_of(c)
            assert k not in out, f"model bug: duplicate key {k} in {self.spec.name}"
            out[k] = c
        return out


def net_changes(spec: Spec, before: dict, after: dict, truncated: bool) -> list:
    """The expected changes of one transaction on one table (see the module docstring).
    ``before``/``after``: lineage -> canon row before and after the transaction."""
    if truncated:
        # everything present before the TRUNCATE is covered by it; what is there at commit
        # was inserted after it (one TRUNCATE per table per transaction in this workload)
        return [("TRUNCATE", None, None)] + sorted((("INSERT", None, a) for a in after.values()), key=rkey)
    dels, ins, rest = [], [], []
    for lid in set(before) | set(after):
        b, a = before.get(lid), after.get(lid)
        if b is None and a is not None:
            ins.append(a)
        elif b is not None and a is None:
            dels.append(b)
        elif b is not None and a is not None and a != b:
            rest.append(("UPDATE", b, a))
    # a delete and an insert of the same identity are one update of that row
    ins_by_ident: dict = {}
    for a in ins:
        ins_by_ident.setdefault(spec.ident_of(a), []).append(a)
    for b in dels:
        cand = ins_by_ident.get(spec.ident_of(b))
        if cand:
            a = cand.pop()
            if a != b:
                rest.append(("UPDATE", b, a))
        else:
            rest.append(("DELETE", b, None))
    for lst in ins_by_ident.values():
        rest.extend(("INSERT", None, a) for a in lst)
    return sorted(rest, key=rkey)


# --------------------------------------------------------------------------------------------
# The workload
# --------------------------------------------------------------------------------------------


class Workload:
    """Random transactions on ``specs``; per committed seq: committed_at and every table's state.

    ``seqs``: [seq ...] in commit order; ``at``: {seq: committed_at}; ``states``: {seq: {table:
    {key: canon row}}}; ``base_seq``: current_seq() before the first transaction.
    """

    def __init__(self, conn, specs: list, rnd: random.Random):
        self.conn, self.specs, self.rnd = conn, specs, rnd
        self.models = {s.name: TableModel(s) for s in specs}
        self.token = 0
        self.lid = 0
        self.base_seq = conn.execute("SELECT driftdb.current_seq()").fetchone()[0]
        self.seqs: list = []
        self.at: dict = {}
        self.states: dict = {}
        self.stats = {"committed": 0, "no_seq": 0, "rolled_back": 0, "truncate": 0, "key_change": 0,
                      "noop_update": 0, "swap": 0, "reinsert": 0, "savepoint": 0, "multi_table": 0,
                      "multi_row": 0}

    # helpers ---------------------------------------------------------------------------------

    def _tok(self) -> int:
        self.token += 1
        return self.token

    def _lid(self) -> int:
        self.lid += 1
        return self.lid

    def _free_key(self, spec: Spec, work: dict, tries: int = 40):
        taken = {spec.key_of(spec.canon_row(r)) for r in work.values()}
        for _ in range(tries):
            k = spec.gen_key(self.rnd)
            if tuple(canon(spec.kinds[i], v) for i, v in zip(spec.key_idx, k)) not in taken:
                return k
        return None

    def _x(self, q, params=None):
        return self.conn.execute(q, params)

    # one random operation on one table ------------------------------------------------------

    def _op(self, spec: Spec, work: dict) -> None:
        """Run one random statement on ``spec``'s table and apply it to ``work`` (lid -> raw row)."""
        rnd = self.rnd
        r = rnd.random()
        lids = list(work)
        if not lids or r < 0.30:  # insert
            k = self._free_key(spec, work)
            if k is None:
                return
            row = spec.make_row(k, spec.gen_rest(rnd, self._tok()))
            self._x(spec.insert_sql(), spec.insert_params(row))
            work[self._lid()] = row
            return
        lid = rnd.choice(lids)
        old = work[lid]
        if r < 0.50:  # update the non-key columns
            row = spec.make_row(spec.key_of(old), spec.gen_rest(rnd, self._tok()))
            cols = [spec.colnames[i] for i in spec.rest_idx]
            self._x(spec.update_sql(cols), [param(spec.kinds[i], row[i]) for i in spec.rest_idx] + spec.key_params(old))
            work[lid] = row
        elif r < 0.60:  # change the key (sometimes the other columns too)
            k = self._free_key(spec, work)
            if k is None:
                return
            rest = spec.gen_rest(rnd, self._tok()) if rnd.random() < 0.4 else tuple(old[i] for i in spec.rest_idx)
            row = spec.make_row(k, rest)
            self._x(spec.update_sql(spec.colnames), spec.insert_params(row) + spec.key_params(old))
            work[lid] = row
            self.stats["key_change"] += 1
        elif r < 0.67:  # no-op update: the same values
            self._x(spec.update_sql(spec.colnames), spec.insert_params(old) + spec.key_params(old))
            self.stats["noop_update"] += 1
        elif r < 0.80:  # delete
            self._x(f"DELETE FROM {spec.name} WHERE {spec.where_key()}", spec.key_params(old))
            del work[lid]
        elif r < 0.85:  # delete and insert the same key with new values
            self._x(f"DELETE FROM {spec.name} WHERE {spec.where_key()}", spec.key_params(old))
            del work[lid]
            row = spec.make_row(spec.key_of(old), spec.gen_rest(rnd, self._tok()))
            self._x(spec.insert_sql(), spec.insert_params(row))
            work[self._lid()] = row
            self.stats["reinsert"] += 1
        elif r < 0.90 and len(lids) >= 2:  # swap the keys of two rows through a free key
            lid2 = rnd.choice([x for x in lids if x != lid])
            o2 = work[lid2]
            tmp = self._free_key(spec, work)
            if tmp is None:
                return
            k1, k2 = spec.key_of(old), spec.key_of(o2)
            setk = spec.update_sql(spec.key)
            self._x(setk, [param(spec.kinds[i], v) for i, v in zip(spec.key_idx, tmp)] + spec.key_params(old))
            self._x(setk, [param(spec.kinds[i], v) for i, v in zip(spec.key_idx, k1)] + spec.key_params(o2))
            self._x(setk, [param(spec.kinds[i], v) for i, v in zip(spec.key_idx, k2)]
                    + [param(spec.kinds[i], v) for i, v in zip(spec.key_idx, tmp)])
            work[lid] = spec.make_row(k2, tuple(old[i] for i in spec.rest_idx))
            work[lid2] = spec.make_row(k1, tuple(o2[i] for i in spec.rest_idx))
            self.stats["swap"] += 1
        else:  # a multi-row statement, per table shape
            self._multi(spec, work)
            self.stats["multi_row"] += 1

    def _multi(self, spec: Spec, work: dict) -> None:
        rnd = self.rnd
        if spec.name == "tt_a":
            m = rnd.randrange(2, 5)
            rem = rnd.randrange(m)
            # rows with n NULL stay unchanged (NULL + 1): no-op updates inside a real one
            self._x("UPDATE tt_a SET n = n + 1 WHERE id %% %s = %s", (m, rem))
            for lid, row in work.items():
                if row[0] % m == rem and row[2] is not None:
                    work[lid] = (row[0], row[1], DEC.add(row[2], 1))
        elif spec.name == "tt_b":
            a = rnd.randrange(1, 6)
            tok = self._tok()
            self._x("UPDATE tt_b SET payload = payload || jsonb_build_object('touched', %s::int) WHERE a = %s",
                    (tok, a))
            for lid, row in work.items():
                if row[0] == a:
                    work[lid] = (row[0], row[1], {**row[2], "touched": tok}, row[3])
        else:
            if rnd.random() < 0.5:
                # delete the rows with the oldest timestamps
                ats = sorted(r[1] for r in work.values())
                cut = ats[min(len(ats) - 1, rnd.randrange(3))]
                self._x("DELETE FROM tt_c WHERE at < %s", (cut,))
                for lid in [l for l, r in work.items() if r[1] < cut]:
                    del work[lid]
            else:
                x = rnd.randrange(-100, 100)
                ks = sorted(r[0] for r in work.values())
                lo = rnd.choice(ks)
                self._x("UPDATE tt_c SET arr = array_append(arr, %s::int) WHERE k >= %s::bigint AND k < %s::bigint + 5",
                        (x, lo, lo))
                for lid, row in work.items():
                    if lo <= row[0] < lo + 5:
                        work[lid] = (row[0], row[1], list(row[2] or []) + [x])

    # one transaction --------------------------------------------------------------------------

    def transaction(self) -> None:
        rnd = self.rnd
        kind = rnd.random()
        rollback = kind < 0.05
        savepoint = 0.05 <= kind < 0.10
        noop_only = 0.10 <= kind < 0.13
        k = 1 if rnd.random() < 0.7 else (2 if rnd.random() < 0.85 else 3)
        specs = rnd.sample(self.specs, k)
        if k > 1:
            self.stats["multi_table"] += 1
        work = {s.name: dict(self.models[s.name].rows) for s in specs}
        truncated = {s.name: False for s in specs}

        self._x("BEGIN")
        xid = xid_now(self.conn)
        if noop_only:
            for s in specs:
                for lid in rnd.sample(list(work[s.name]), min(2, len(work[s.name]))):
                    old = work[s.name][lid]
                    self._x(s.update_sql(s.colnames), s.insert_params(old) + s.key_params(old))
                    self.stats["noop_update"] += 1
                # insert and delete again: no net change either
                if rnd.random() < 0.5:
                    key = self._free_key(s, work[s.name])
                    if key is not None:
                        row = s.make_row(key, s.gen_rest(rnd, self._tok()))
                        self._x(s.insert_sql(), s.insert_params(row))
                        self._x(f"DELETE FROM {s.name} WHERE {s.where_key()}", s.key_params(row))
        else:
            for s in specs:
                w = work[s.name]
                n_ops = rnd.randrange(1, 5)
                trunc_at = rnd.randrange(n_ops + 1) if (not savepoint and rnd.random() < 0.04) else None
                for i in range(n_ops + 1):
                    if i == trunc_at and w:
                        self._x(f"TRUNCATE {s.name}")
                        w.clear()
                        truncated[s.name] = True
                        self.stats["truncate"] += 1
                    if i < n_ops:
                        self._op(s, w)
                if savepoint:
                    saved = dict(w)
                    self._x("SAVEPOINT sp")
                    for _ in range(rnd.randrange(1, 4)):
                        self._op(s, w)
                    self._x("ROLLBACK TO SAVEPOINT sp")
                    w.clear()
                    w.update(saved)
                    self._op(s, w)
                    self.stats["savepoint"] += 1
        if rollback:
            self._x("ROLLBACK")
            self.stats["rolled_back"] += 1
            assert seq_of_xid(self.conn, xid) is None, f"rolled-back transaction {xid} got a seq"
            self._check_live()
            return
        self._x("COMMIT")
        got = seq_of_xid(self.conn, xid)
        expected_changes = {}
        for s in specs:
            m = self.models[s.name]
            before = {lid: s.canon_row(r) for lid, r in m.rows.items()}
            after = {lid: s.canon_row(r) for lid, r in work[s.name].items()}
            ch = net_changes(s, before, after, truncated[s.name])
            if ch:
                expected_changes[s.name] = ch
        if not expected_changes:
            assert got is None, (
                f"a transaction without net changes got seq {got[0]} (tables {[s.name for s in specs]})")
            self.stats["no_seq"] += 1
        else:
            assert got is not None, (
                f"committed transaction xid {xid} with changes {expected_changes} has no seq")
            seq, at = got
            assert not self.seqs or seq > self.seqs[-1], f"seq {seq} not after {self.seqs[-1]}"
            self.seqs.append(seq)
            self.at[seq] = at
            for name, ch in expected_changes.items():
                self.models[name].changes[seq] = ch
            self.stats["committed"] += 1
        for s in specs:
            self.models[s.name].rows = work[s.name]
        if got is not None:
            self.states[got[0]] = {name: m.state() for name, m in self.models.items()}
        self._check_live()

    def _check_live(self) -> None:
        """The live tables equal the model (catches model bugs, and lost writes, early)."""
        for s in self.specs:
            exp = srt(self.models[s.name].state().values())
            got = plain_rows(self.conn, s)
            assert got == exp, f"live {s.name} differs from the model after {self.seqs[-1:]}:\n{diff_rows(s, exp, got)}"

    def run(self, n: int) -> None:
        for _ in range(n):
            self.transaction()

    # expectations -------------------------------------------------------------------------

    def empty_state(self) -> dict:
        return {s.name: {} for s in self.specs}

    def state_at_seq(self, n: int) -> dict:
        i = bisect.bisect_right(self.seqs, n)
        return self.states[self.seqs[i - 1]] if i else self.empty_state()

    def state_at_time(self, t: dt.datetime) -> dict:
        """The state after every seq with committed_at <= t (commit times never go back)."""
        times = [self.at[s] for s in self.seqs]
        i = bisect.bisect_right(times, t)
        return self.states[self.seqs[i - 1]] if i else self.empty_state()

    def expected_versions(self, name: str) -> list:
        """[(seq_start, seq_end | None, canon row)] from the per-seq states of table ``name``."""
        out = []
        prev: dict = {}
        start: dict = {}
        for seq in self.seqs:
            cur = self.states[seq][name]
            if cur is prev:
                continue
            for k in set(prev) | set(cur):
                if prev.get(k) != cur.get(k):
                    if k in prev:
                        out.append((start.pop(k), seq, prev[k]))
                    if k in cur:
                        start[k] = seq
            prev = cur
        for k, s in start.items():
            out.append((s, None, prev[k]))
        return sorted(out, key=rkey)

    def expected_changes(self, name: str) -> list:
        """[(seq, op, old, new)] sorted."""
        out = []
        for seq, ch in self.models[name].changes.items():
            out.extend((seq, op, o, n) for op, o, n in ch)
        return sorted(out, key=rkey)

    # checks against driftdb -----------------------------------------------------------------

    def check_as_of_seqs(self, seqs=None) -> None:
        cur = self.conn.execute("SELECT driftdb.current_seq()").fetchone()[0]
        assert cur == (self.seqs[-1] if self.seqs else self.base_seq), (
            f"current_seq() = {cur}, the test's last commit was {self.seqs[-1:]}")
        seqs = range(0, cur + 2) if seqs is None else seqs
        mm = Mismatches("as_of(NULL::t, seq) vs the model")
        for n in seqs:
            exp_all = self.state_at_seq(n)
            for s in self.specs:
                exp = srt(exp_all[s.name].values())
                got = as_of_rows(self.conn, s, n, "seq")
                if got != exp:
                    mm.add(f"  {s.name} as of seq {n} (current {cur}):\n{diff_rows(s, exp, got)}")
        mm.check()

    def probe_times(self) -> list:
        """(label, time): before the first commit, every commit time, the midpoint between
        every two consecutive distinct commit times, and the future."""
        out = []
        if not self.seqs:
            return out
        times = [self.at[s] for s in self.seqs]
        out.append(("before the first commit", times[0] - dt.timedelta(microseconds=1)))
        out.append(("a day before the first commit", times[0] - dt.timedelta(days=1)))
        for i, s in enumerate(self.seqs):
            out.append((f"committed_at of seq {s}", times[i]))
            if i + 1 < len(times) and times[i + 1] - times[i] >= dt.timedelta(microseconds=2):
                mid = times[i] + (times[i + 1] - times[i]) / 2
                assert times[i] < mid < times[i + 1]
                out.append((f"between seq {s} and seq {self.seqs[i + 1]}", mid))
        out.append(("in the future", dt.datetime.now(UTC) + dt.timedelta(days=365)))
        return out

    def check_as_of_times(self, probes=None) -> None:
        probes = self.probe_times() if probes is None else probes
        mm = Mismatches("as_of(NULL::t, timestamptz) vs the model")
        for label, t in probes:
            exp_all = self.state_at_time(t)
            for s in self.specs:
                exp = srt(exp_all[s.name].values())
                got = as_of_rows(self.conn, s, t, "ts")
                if got != exp:
                    mm.add(f"  {s.name} as of {t.isoformat()} ({label}):\n{diff_rows(s, exp, got)}")
        mm.check()

    def check_set_form(self, seqs, probes) -> None:
        conn = self.conn
        mm = Mismatches("SET driftdb.as_of + SELECT * FROM t vs the model")
        try:
            for n in seqs:
                set_as_of(conn, f"@seq:{n}")
                exp_all = self.state_at_seq(n)
                for s in self.specs:
                    exp = srt(exp_all[s.name].values())
                    got = plain_rows(conn, s)
                    if got != exp:
                        mm.add(f"  {s.name} under SET driftdb.as_of = '@seq:{n}':\n{diff_rows(s, exp, got)}")
            for label, t in probes:
                set_as_of(conn, ts_literal(t))
                exp_all = self.state_at_time(t)
                for s in self.specs:
                    exp = srt(exp_all[s.name].values())
                    got = plain_rows(conn, s)
                    if got != exp:
                        mm.add(f"  {s.name} under SET driftdb.as_of = '{ts_literal(t)}' ({label}):\n"
                               f"{diff_rows(s, exp, got)}")
        finally:
            conn.execute("RESET driftdb.as_of")
        for s in self.specs:
            exp = srt(self.models[s.name].state().values())
            got = plain_rows(conn, s)
            if got != exp:
                mm.add(f"  {s.name} after RESET driftdb.as_of is not the current state:\n{diff_rows(s, exp, got)}")
        mm.check()

    def check_versions(self) -> None:
        mm = Mismatches("driftdb.versions(NULL::t) vs the model")
        for s in self.specs:
            rows = self.conn.execute(
                f"SELECT v.seq_start, v.seq_end, v.system_time_start, isfinite(v.system_time_end), "
                f"CASE WHEN isfinite(v.system_time_end) THEN v.system_time_end END, "
                f"{', '.join(f'(v.data).{c}' for c in s.colnames)} "
                f"FROM driftdb.versions(NULL::{s.name}) v").fetchall()
            got = sorted(((r[0], r[1], s.canon_row(r[5:])) for r in rows), key=rkey)
            exp = self.expected_versions(s.name)
            if got != exp:
                eg = {}
                for x in exp:
                    eg.setdefault(s.key_of(x[2]), [[], []])[0].append(x[:2] + (x[2],))
                for x in got:
                    eg.setdefault(s.key_of(x[2]), [[], []])[1].append(x[:2] + (x[2],))
                bad = [(k, e, g) for k, (e, g) in eg.items() if e != g]
                detail = "\n".join(
                    f"    key {k!r}:\n      expected {[(a, b) for a, b, _ in e]} {_short([r for _, _, r in e])}\n"
                    f"      got      {[(a, b) for a, b, _ in g]} {_short([r for _, _, r in g])}"
                    for k, e, g in sorted(bad, key=repr)[:6])
                mm.add(f"  {s.name}: {len(bad)} keys differ ({len(exp)} versions expected, {len(got)} returned)\n{detail}")
            for r in rows:
                seq_start, seq_end, t_start, finite, t_end = r[:5]
                where = f"{s.name} version {seq_start}..{seq_end} of key {s.key_of(s.canon_row(r[5:]))!r}"
                if seq_start in self.at and t_start != self.at[seq_start]:
                    mm.add(f"  {where}: system_time_start {t_start} != committed_at of seq {seq_start} ({self.at[seq_start]})")
                if seq_end is None:
                    if finite:
                        mm.add(f"  {where}: seq_end NULL but system_time_end is finite ({t_end})")
                else:
                    if not finite:
                        mm.add(f"  {where}: seq_end {seq_end} but system_time_end = infinity")
                    elif seq_end in self.at and t_end != self.at[seq_end]:
                        mm.add(f"  {where}: system_time_end {t_end} != committed_at of seq {seq_end} ({self.at[seq_end]})")
        mm.check()

    def check_changes(self, committed_by: str = "postgres") -> None:
        mm = Mismatches("driftdb.changes(NULL::t) vs the model")
        for s in self.specs:
            cols_old = ", ".join(f"(c.old_data).{c}" for c in s.colnames)
            cols_new = ", ".join(f"(c.new_data).{c}" for c in s.colnames)
            rows = self.conn.execute(
                f"SELECT c.seq, c.committed_at, c.committed_by, c.operation, c.old_data IS NULL, "
                f"c.new_data IS NULL, {cols_old}, {cols_new} FROM driftdb.changes(NULL::{s.name}) c"
            ).fetchall()
            n = len(s.cols)
            got = []
            meta = set()
            for r in rows:
                seq, at, by, op, old_null, new_null = r[:6]
                old = None if old_null else s.canon_row(r[6:6 + n])
                new = None if new_null else s.canon_row(r[6 + n:6 + 2 * n])
                got.append((seq, op, old, new))
                if seq in self.at and at != self.at[seq]:
                    meta.add(f"  {s.name} changes at seq {seq}: committed_at {at} != {self.at[seq]}")
                if by != committed_by:
                    meta.add(f"  {s.name} changes at seq {seq}: committed_by {by!r}, expected {committed_by!r}")
            for m in sorted(meta):
                mm.add(m)
            got.sort(key=rkey)
            exp = self.expected_changes(s.name)
            if got != exp:
                gs, es = {}, {}
                for x in got:
                    gs.setdefault(x[0], []).append(x[1:])
                for x in exp:
                    es.setdefault(x[0], []).append(x[1:])
                bad = [q for q in sorted(set(gs) | set(es)) if gs.get(q) != es.get(q)]
                detail = "\n".join(
                    f"    seq {q}:\n      expected {_short(es.get(q), 400)}\n      got      {_short(gs.get(q), 400)}"
                    for q in bad[:5])
                mm.add(f"  {s.name}: {len(bad)} seqs differ ({len(exp)} changes expected, {len(got)} returned)\n{detail}")
        mm.check()


# --------------------------------------------------------------------------------------------
# A small hand-driven history (API and security tests)
# --------------------------------------------------------------------------------------------


class Hist:
    """One table's history written by a test, statement by statement, with the expected rows.

    ``h.commit(sql..., upsert={key: row}, delete=[key], truncate=False)`` runs the statements
    in one transaction and records (seq, committed_at) and the state after it. Rows are plain
    tuples in the order of ``cols``; the key is the first column.
    """

    def __init__(self, conn, table: str, cols: str):
        self.conn, self.table, self.cols = conn, table, cols
        self.rows: dict = {}
        self.seqs: list = []
        self.at: dict = {}
        self.states: dict = {}

    def commit(self, *stmts, upsert=None, delete=(), truncate=False, params=None):
        got = commit_tx(self.conn, *stmts, params=params)
        rows = {} if truncate else dict(self.rows)
        for k in delete:
            del rows[k]
        rows.update(upsert or {})
        self.rows = rows
        if got is None:
            return None
        seq, at = got
        self.seqs.append(seq)
        self.at[seq] = at
        self.states[seq] = dict(rows)
        return seq

    def at_seq(self, n: int) -> list:
        i = bisect.bisect_right(self.seqs, n)
        return srt(self.states[self.seqs[i - 1]].values()) if i else []

    def current(self) -> list:
        return srt(self.rows.values())

    def as_of(self, n, conn=None, kind: str = "seq") -> list:
        cast = "bigint" if kind == "seq" else "timestamptz"
        return srt((conn or self.conn).execute(
            f"SELECT {self.cols} FROM driftdb.as_of(NULL::{self.table}, %s::{cast})", (n,)).fetchall())

    def read(self, conn=None) -> list:
        return srt((conn or self.conn).execute(f"SELECT {self.cols} FROM {self.table}").fetchall())
