"""Durability (issue 3, item 7): concurrent writers, SIGKILL of the postmaster mid-load, restart;
history holds exactly the transactions whose COMMIT returned to a client, plus possibly ones
in flight at the kill (each wholly present or absent), and verify passes.

Runs on a throwaway cluster of its own (the shared session cluster is never killed). The
cluster keeps conftest's fsync = off: a SIGKILL of the server leaves the OS page cache intact,
so WAL written before a COMMIT was acknowledged survives exactly as with fsync."""
from __future__ import annotations

import contextlib
import os
import signal
from collections import Counter
import threading
import time
from pathlib import Path

import pytest

from conftest import create_database
from history_model import (
    WORKLOAD_DDL,
    assert_verified,
    check_workload,
    current_seq,
    run_worker,
    run_workload,
    transactions,
)

KILL_POINTS = (0.5, 1.5, 3.0)  # seconds of load before each SIGKILL


def _pids_in_group(pgid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may contain spaces: split after the last ')'
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(d.name))
    return out


def _sigkill_postmaster(datadir: Path) -> None:
    """SIGKILL the postmaster (first line of postmaster.pid); its orphaned backends then exit
    on their own when they notice (bounded wait; SIGKILL them as well if they linger so the
    restart can attach the shared memory)."""
    pid = int((datadir / "postmaster.pid").read_text().splitlines()[0])
    stat = Path(f"/proc/{pid}/stat").read_text()
    pgid = int(stat.rsplit(")", 1)[1].split()[2])
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if not _pids_in_group(pgid):
            break
        time.sleep(0.05)
    else:
        if pgid == pid:  # pg_ctl makes the postmaster a process-group leader
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)
    # The dead postmaster is re-parented to PID 1, which here may not reap it for a while:
    # while it is a zombie, `pg_ctl status` (kill(pid, 0)) still reports the server running
    # and pgcluster.sh would not start it. Once every process of the server is gone, the
    # stale postmaster.pid is exactly what an administrator removes after such a crash.
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.05)
    if Path(f"/proc/{pid}").exists():
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        assert state == "Z", f"postmaster {pid} survived SIGKILL (state {state})"
        (datadir / "postmaster.pid").unlink()


def _kill_under_load(cluster, threads: list, stop: threading.Event, delay: float) -> None:
    """After `delay` seconds of the workers' load, SIGKILL the server; then stop the workers
    and wait for them (each returns when its connection dies)."""
    time.sleep(delay)
    _sigkill_postmaster(cluster.datadir)
    stop.set()
    for th in threads:
        th.join(timeout=30)
    assert not any(th.is_alive() for th in threads), "a worker hung after the kill"


@pytest.mark.slow
def test_sigkill_mid_load_keeps_exactly_the_acknowledged_history(cluster_factory):
    cluster = cluster_factory()
    create_database(cluster, "crash")
    tables = ["da", "db"]
    with cluster.connect("crash") as c:
        for t in tables:
            c.execute(WORKLOAD_DDL.format(t=t))
    records: list = []
    unknown_total = 0
    for rnd, delay in enumerate(KILL_POINTS):
        stop = threading.Event()
        before = len(records)
        threads, records = run_workload(cluster.conninfo("crash"), tables, workers=4, ntx=None,
                                        keys=40, stop=stop, seed=100 + rnd, records=records)
        _kill_under_load(cluster, threads, stop, delay)
        this_round = records[before:]
        assert sum(r.status == "committed" for r in this_round) > 20, "too little load before the kill"

        cluster.start()
        with cluster.connect("crash") as c:
            check_workload(c, tables, records, allow_unknown=True)
            unknown_total += sum(r.status == "unknown" for r in this_round)
            # after recovery, new commits get seqs above everything recorded before. (They go
            # through the recording worker too: xids of transactions lost in the crash are
            # handed out again, so every writer's xid must be known to the oracle.)
            top = current_seq(c)
            n = len(records)
            run_worker(cluster.conninfo("crash"), 99, tables, 5, 40, records, seed=200 + rnd)
            assert all(r.status == "committed" for r in records[n:])
            after = transactions(c, top)
            assert after and all(x["seq"] > top for x in after)
            check_workload(c, tables, records, allow_unknown=True)
    # present for the report: how many outcomes were decided by recovery
    print(f"{len(records)} transactions, {unknown_total} in flight at a kill")


BULK_ROWS = 1500  # rows per bulk transaction: over driftdb.pack_min_events (1000), so packed


def _bulk_worker(conninfo: str, wid: int, stop: threading.Event, log: list, seed: int) -> None:
    """Bulk transactions on table `bulk` until `stop` is set or the server dies: loads of an
    id range of their own (INSERT ... SELECT or COPY FROM STDIN, half each) and UPDATEs of
    every row of a range this worker loaded and saw committed. Each transaction is appended to
    `log` before it starts; its status ends as committed (COMMIT returned), unknown (the
    server died during COMMIT) or failed (it died before COMMIT was sent)."""
    import random

    import psycopg

    rnd = random.Random(seed)
    try:
        conn = psycopg.connect(conninfo, autocommit=True)
    except psycopg.Error:
        return
    loaded: list[int] = []
    i = 0
    try:
        while not stop.is_set():
            rec = {"status": "started", "xid": None, "worker": wid}
            log.append(rec)
            try:
                conn.execute("BEGIN")
                rec["xid"] = conn.execute("SELECT txid_current()").fetchone()[0]
                if loaded and rnd.random() < 0.3:
                    rec.update(kind="update", lo=rnd.choice(loaded))
                    conn.execute("UPDATE bulk SET n = n + 1 WHERE id >= %s AND id < %s", (rec["lo"], rec["lo"] + BULK_ROWS))
                else:
                    rec.update(kind="load", lo=wid * 15_000_000 + i * BULK_ROWS)
                    i += 1
                    lo = rec["lo"]
                    if rnd.random() < 0.5:
                        conn.execute("INSERT INTO bulk SELECT g, 'w' || g, 0 FROM generate_series(%s::bigint, %s) g",
                                     (lo, lo + BULK_ROWS - 1))
                    else:
                        with conn.cursor().copy("COPY bulk (id, v, n) FROM STDIN") as cp:
                            for g in range(lo, lo + BULK_ROWS):
                                cp.write_row((g, f"w{g}", 0))
                rec["status"] = "committing"
                conn.execute("COMMIT")
                rec["status"] = "committed"
                if rec["kind"] == "load":
                    loaded.append(rec["lo"])
            except psycopg.Error:
                rec["status"] = "unknown" if rec["status"] == "committing" else "failed"
                return
    finally:
        with contextlib.suppress(Exception):
            conn.close()


def _check_bulk(c, log: list) -> None:
    """History holds every acknowledged bulk transaction and none that never sent COMMIT, each
    whole: the live table and the AS OF state after each transaction equal a model built from
    the transactions history says committed.

    A transaction is looked up by its xid once, in the check right after the crash that ended
    its round, and its seq (or absence) is kept in the record: the xids of transactions lost in
    a crash are handed out again after it, so a later round may commit one under the same xid."""
    seq_of = {t["xid"]: t["seq"] for t in transactions(c)}
    for rec in log:
        if rec["xid"] is None or "seq" in rec:
            continue
        rec["seq"] = seq_of.get(rec["xid"])
        if rec["status"] == "committed":
            assert rec["seq"] is not None, f"acknowledged bulk transaction {rec} is missing from history"
        elif rec["status"] in ("failed", "started"):
            assert rec["seq"] is None, f"bulk transaction {rec} never sent COMMIT but is in history"
    present = sorted(((rec["seq"], rec) for rec in log if rec.get("seq") is not None), key=lambda p: p[0])
    assert len({s for s, _ in present}) == len(present), "two bulk transactions took one seq"
    # the model after each present transaction: range start -> n of its rows
    model: dict[int, int] = {}
    states = []
    for s, rec in present:
        if rec["kind"] == "load":
            model[rec["lo"]] = 0
        else:
            model[rec["lo"]] += 1
        states.append((s, dict(model)))

    def summary(sql: str, *params) -> dict:
        # per range: row count and the set of n values (a whole transaction updates a whole range)
        rows = c.execute(
            f"SELECT id - mod(id, {BULK_ROWS}), count(*), array_agg(DISTINCT n) FROM ({sql}) x GROUP BY 1", params or None).fetchall()
        return {lo: (cnt, sorted(ns)) for lo, cnt, ns in rows}

    def expect(m: dict) -> dict:
        return {lo: (BULK_ROWS, [n]) for lo, n in m.items()}

    assert summary("SELECT id, n FROM bulk") == expect(model)
    step = max(1, len(states) // 8)
    for s, m in states[::step] + states[-1:]:
        assert summary("SELECT id, n FROM driftdb.as_of(NULL::bulk, %s::bigint)", s) == expect(m), f"AS OF seq {s}"
    packed = c.execute("SELECT count(*), count(*) FILTER (WHERE pg_column_compression(data) = 'lz4') FROM driftdb.packs").fetchone()
    assert packed[0] > 0 and packed[0] == packed[1], f"bulk history is packed, lz4-compressed: {packed}"
    assert_verified(c, "bulk")


@pytest.mark.slow
def test_sigkill_mid_bulk_loads_keeps_whole_transactions(cluster_factory):
    """Bulk loads and bulk updates (their history in packs, compressed by driftdb) killed
    mid-load: after recovery every acknowledged one is in history and in the table, whole, and
    nothing of those that never committed."""
    cluster = cluster_factory()
    create_database(cluster, "bulkcrash")
    with cluster.connect("bulkcrash") as c:
        c.execute("CREATE TABLE bulk (id bigint PRIMARY KEY, v text NOT NULL, n int NOT NULL) USING driftdb")
    log: list = []
    for rnd, delay in enumerate((0.5, 1.2)):
        stop = threading.Event()
        before = len(log)
        threads = [threading.Thread(target=_bulk_worker, args=(cluster.conninfo("bulkcrash"), rnd * 10 + w, stop, log, rnd * 10 + w),
                                    daemon=True) for w in range(3)]
        for th in threads:
            th.start()
        _kill_under_load(cluster, threads, stop, delay)
        this_round = log[before:]
        assert sum(r["status"] == "committed" for r in this_round) >= 3, f"too little load before the kill: {this_round}"
        cluster.start()
        with cluster.connect("bulkcrash") as c:
            _check_bulk(c, log)
    # present for the report: how the transactions ended
    print(f"{len(log)} bulk transactions:", Counter((r["status"], r.get("kind")) for r in log))
