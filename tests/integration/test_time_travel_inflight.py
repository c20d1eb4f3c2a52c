"""AS OF seq N while seq N+1 is still committing (issue 4, item 5): the read neither waits for
the newer commit nor sees it, and gives the same rows before and after that commit ends.

A commit is held "in flight" — seq drawn and events written, not yet visible — by synchronous
replication to a standby that does not exist: the committing backend waits after its commit
record is flushed and before the commit becomes visible. Every other session uses
synchronous_commit = local and is not held."""
from __future__ import annotations

import psycopg
import pytest

from conftest import backend_pid, in_background, wait_for

pytestmark = pytest.mark.slow


def _rows(conn, seq):
    return conn.execute("SELECT id, v FROM driftdb.as_of(NULL::t, %s::bigint) ORDER BY id", (seq,)).fetchall()


def test_as_of_does_not_wait_for_or_see_a_newer_commit_in_flight(cluster_factory):
    cl = cluster_factory(extra_conf=["synchronous_standby_names = 'nobody'"])

    def local(conn):
        conn.execute("SET synchronous_commit = local")
        conn.execute("SET statement_timeout = 10000")
        return conn

    c0 = local(cl.connect())
    c0.execute("CREATE DATABASE tt")
    c0.close()
    a = local(cl.connect("tt"))
    a.execute("CREATE EXTENSION driftdb")
    a.execute("CREATE TABLE t (id int PRIMARY KEY, v int) USING driftdb")
    a.execute("INSERT INTO t VALUES (1, 10), (2, 20)")
    a.execute("UPDATE t SET v = 11 WHERE id = 1")
    n = a.execute("SELECT driftdb.current_seq()").fetchone()[0]
    before = _rows(a, n)
    assert before == [(1, 11), (2, 20)]

    held = cl.connect("tt")
    pid = backend_pid(held)
    fut = in_background(held.execute, "UPDATE t SET v = 99 WHERE id = 2")
    wait_for(lambda: a.execute("SELECT wait_event FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()[0] == "SyncRep",
             what="the UPDATE's commit to wait for the (missing) synchronous standby")

    # a fresh session: no cached knowledge of settled seqs
    b = local(cl.connect("tt"))
    assert _rows(b, n) == before, "AS OF N changed (or waited) while N+1 is committing"
    assert b.execute("SELECT id, v FROM driftdb.as_of(NULL::t, %s::bigint) WHERE id = 2", (n,)).fetchall() == [(2, 20)]
    assert b.execute("SELECT id, v FROM t ORDER BY id").fetchall() == before  # not visible yet

    # let the commit finish (cancelling the wait commits locally, with a WARNING)
    a.execute("SELECT pg_cancel_backend(%s)", (pid,))
    fut.result(timeout=20)
    assert _rows(b, n) == before, "AS OF N is not repeatable"
    assert _rows(b, n + 1) == [(1, 11), (2, 99)]
    assert b.execute("SELECT driftdb.current_seq()").fetchone()[0] == n + 1
    for c in (a, b, held):
        c.close()
