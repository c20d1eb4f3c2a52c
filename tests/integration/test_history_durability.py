"""Durability (issue 3, item 7): concurrent writers, SIGKILL of the postmaster mid-load, restart;
history holds exactly the transactions whose COMMIT returned to a client, plus possibly ones
in flight at the kill (each wholly present or absent), and verify passes.

Runs on a throwaway cluster of its own (the shared session cluster is never killed). The
cluster keeps conftest's fsync = off: a SIGKILL of the server leaves the OS page cache intact,
so WAL written before a COMMIT was acknowledged survives exactly as with fsync."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from conftest import create_database
from history_model import (
    WORKLOAD_DDL,
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
        time.sleep(delay)
        _sigkill_postmaster(cluster.datadir)
        stop.set()
        for th in threads:
            th.join(timeout=30)
        assert not any(th.is_alive() for th in threads), "a worker hung after the kill"
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
