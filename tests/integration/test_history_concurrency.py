"""Concurrency (issue 3, item 8): several connections writing the same driftdb tables at once.
No lost or duplicated events; seq order consistent with commit order."""
from __future__ import annotations

import threading

import pytest

from conftest import backend_pid, in_background, wait_until_blocked
from history_model import (
    WORKLOAD_DDL,
    assert_verified,
    check_workload,
    current_seq,
    events,
    mp_key,
    run_workload,
    transactions,
)


def _xid(conn):
    return conn.execute("SELECT txid_current()").fetchone()[0]


def _seq_of(conn, xid):
    row = conn.execute("SELECT seq FROM driftdb.transactions WHERE xid::text::bigint = %s", (xid,)).fetchone()
    return row[0] if row else None


def test_waiter_on_row_lock_gets_later_seq(db):
    c0, c1, c2 = db.connect(), db.connect(), db.connect()
    c0.execute("CREATE TABLE t (id int PRIMARY KEY, v int) USING driftdb")
    c0.execute("INSERT INTO t VALUES (1, 0), (2, 0), (3, 0)")
    # T2 starts first (smaller xid) and writes another row, then waits for T1's row lock
    pid2 = backend_pid(c2)
    c2.execute("BEGIN")
    x2 = _xid(c2)
    c2.execute("UPDATE t SET v = 20 WHERE id = 3")
    c1.execute("BEGIN")
    x1 = _xid(c1)
    c1.execute("UPDATE t SET v = 10 WHERE id = 1")
    fut = in_background(c2.execute, "UPDATE t SET v = v + 100 WHERE id = 1")
    wait_until_blocked(c0, pid2)
    c1.execute("COMMIT")
    fut.result(timeout=15)
    c2.execute("COMMIT")
    s1, s2 = _seq_of(c0, x1), _seq_of(c0, x2)
    assert x2 < x1 and s1 is not None and s2 is not None
    assert s2 > s1, f"T2 waited for T1 yet seq(T2)={s2} <= seq(T1)={s1}"
    assert c0.execute("SELECT v FROM t WHERE id = 1").fetchone() == (110,)
    assert_verified(c0, "t")


def test_commit_order_not_start_order(db):
    a, b, obs = db.connect(), db.connect(), db.connect()
    obs.execute("CREATE TABLE t (id int PRIMARY KEY, v int) USING driftdb")
    a.execute("BEGIN")
    xa = _xid(a)
    a.execute("INSERT INTO t VALUES (1, 1)")
    b.execute("BEGIN")
    xb = _xid(b)
    b.execute("INSERT INTO t VALUES (2, 2)")
    b.execute("COMMIT")
    assert current_seq(obs) == 1
    a.execute("COMMIT")
    assert (_seq_of(obs, xb), _seq_of(obs, xa)) == (1, 2)
    tx = transactions(obs)
    assert tx[0]["committed_at"] <= tx[1]["committed_at"]
    assert_verified(obs, "t")


def test_concurrent_upserts_of_one_key(db):
    """ON CONFLICT races: exactly one insert event, then updates, one seq each."""
    c = db.connect()
    c.execute("CREATE TABLE t (id int PRIMARY KEY, n int) USING driftdb")
    barrier = threading.Barrier(6)

    def work():
        conn = db.connect()
        barrier.wait()
        for _ in range(30):
            conn.execute("INSERT INTO t VALUES (1, 1) ON CONFLICT (id) DO UPDATE SET n = t.n + 1")

    futs = [in_background(work) for _ in range(6)]
    for f in futs:
        f.result(timeout=60)
    assert c.execute("SELECT n FROM t").fetchone() == (180,)
    evs = events(c, "t")
    assert [e[2] for e in evs] == ["i"] + ["u"] * 179
    assert {e[3] for e in evs} == {mp_key(1)}
    assert [e[0] for e in evs] == list(range(1, 181))
    assert_verified(c, "t")


def test_first_writes_to_a_new_table_register_it_once(db):
    c = db.connect()
    c.execute("CREATE TABLE t (id int PRIMARY KEY) USING driftdb")
    barrier = threading.Barrier(5)
    conns = [db.connect() for _ in range(5)]
    for i, conn in enumerate(conns):
        conn.execute("BEGIN")
        conn.execute("INSERT INTO t VALUES (%s)", (i,))

    def commit(conn):
        barrier.wait()
        conn.execute("COMMIT")

    futs = [in_background(commit, conn) for conn in conns]
    for f in futs:
        f.result(timeout=30)
    assert c.execute("SELECT count(*) FROM driftdb.tables WHERE relid = 't'::regclass").fetchone() == (1,)
    assert len(transactions(c)) == 5
    assert_verified(c, "t")


@pytest.mark.slow
def test_random_concurrent_writers(db):
    """4 connections x 300 random transactions on two tables with hot keys; every committed
    transaction's events, the seq order (against each client's observed row state and the
    real-time order of non-overlapping transactions) and the final rows are checked."""
    c = db.connect()
    tables = ["ca", "cb"]
    for t in tables:
        c.execute(WORKLOAD_DDL.format(t=t))
    threads, records = run_workload(db.conninfo(), tables, workers=4, ntx=300, keys=40, seed=1)
    for th in threads:
        th.join(timeout=120)
    assert not any(th.is_alive() for th in threads), "workers did not finish"
    committed = [r for r in records if r.status == "committed"]
    assert len(records) == 1200 and len(committed) > 1000
    errors = [r.error for r in records if r.error]
    assert not errors, errors[:5]
    check_workload(c, tables, records)
    # the workload produced real conflicts: some transactions updated rows others inserted
    assert sum(1 for r in committed for op in r.expected_ops().values() if op == "u") > 100


def test_verify_under_concurrent_writes(db):
    """verify reads events and rows with one snapshot: no false alarms while others commit."""
    c = db.connect()
    c.execute(WORKLOAD_DDL.format(t="cv"))
    stop = threading.Event()
    threads, records = run_workload(db.conninfo(), ["cv"], workers=3, ntx=None, keys=30, stop=stop, seed=2)
    try:
        for _ in range(15):
            assert_verified(c, "cv")
    finally:
        stop.set()
        for th in threads:
            th.join(timeout=30)
    check_workload(c, ["cv"], records)
