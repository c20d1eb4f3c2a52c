"""Commit semantics (issue 3, item 3): one seq per committed transaction that changed driftdb
rows, stamped at commit; aborts and rolled-back savepoints leave nothing; history is
transaction-granular; PREPARE TRANSACTION is refused; current_seq, seq_at and the
driftdb.transactions view."""
from __future__ import annotations

import datetime as dt
import secrets
import time

import psycopg
import pytest

from conftest import create_database, drop_database
from history_model import (
    Model,
    assert_commit_order,
    assert_verified,
    current_seq,
    event_count,
    events,
    mp_key,
    seqs,
    transactions,
)


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@pytest.fixture
def t(conn):
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text) USING driftdb")
    return Model("t", "id", "v")


def test_one_seq_per_transaction_stamped_at_commit(conn, t):
    conn.execute("CREATE TABLE u (id int PRIMARY KEY, n int) USING driftdb")
    u = Model("u", "id", "n")
    clocks = []
    for i in range(1, 16):
        before = now()
        with conn.transaction():
            conn.execute("INSERT INTO t VALUES (%s, 'a')", (i,))
            if i % 3 == 0:
                conn.execute("UPDATE t SET v = 'b' WHERE id = %s", (i - 1,))
            if i % 2 == 0:
                conn.execute("INSERT INTO u VALUES (%s, %s)", (i, i))
        after = now()
        clocks.append((before, after))
        ups = {i: ("a",)}
        if i % 3 == 0:
            ups[i - 1] = ("b",)
        t.apply(ups)
        if i % 2 == 0:
            u.apply({i: (i,)})
    tx = transactions(conn)
    assert [x["seq"] for x in tx] == list(range(1, 16)), "one seq per transaction, no gaps"
    for x, (before, after) in zip(tx, clocks):
        assert before <= x["committed_at"] <= after, (x, before, after)
        assert x["tables"] == (["t", "u"] if x["seq"] % 2 == 0 else ["t"])
    assert_commit_order(conn)
    t.check(conn)
    u.check(conn)


def test_timestamp_taken_at_commit_not_at_start(conn, t):
    with conn.transaction():
        start = conn.execute("SELECT now()").fetchone()[0]
        conn.execute("INSERT INTO t VALUES (1, 'a')")
        time.sleep(0.4)
        before_commit = now()
    committed_at = transactions(conn)[0]["committed_at"]
    assert committed_at >= before_commit > start + dt.timedelta(seconds=0.35)


def test_transactions_without_driftdb_changes_get_no_seq(conn, t):
    conn.execute("CREATE TABLE h (id int) USING heap")
    conn.execute("INSERT INTO t VALUES (1, 'a')")
    s = current_seq(conn)
    conn.execute("INSERT INTO h VALUES (1)")
    conn.execute("SELECT * FROM t")
    conn.execute("SELECT * FROM t WHERE id = 1 FOR UPDATE")
    conn.execute("DELETE FROM t WHERE id = 99")
    conn.execute("UPDATE t SET v = v WHERE id = 1")  # changes nothing
    conn.execute("UPDATE t SET v = 'a'")  # changes nothing either
    conn.execute("CREATE INDEX ON t (v)")
    conn.execute("ANALYZE t")
    conn.execute("VACUUM t")
    assert current_seq(conn) == s
    assert len(transactions(conn)) == 1


def test_aborted_transaction_leaves_nothing(conn, t):
    conn.execute("INSERT INTO t VALUES (1, 'a'), (2, 'b')")
    t.apply({1: ("a",), 2: ("b",)})
    s, n = current_seq(conn), event_count(conn)
    conn.execute("BEGIN")
    conn.execute("INSERT INTO t VALUES (3, 'c')")
    conn.execute("UPDATE t SET v = 'z'")
    conn.execute("DELETE FROM t WHERE id = 1")
    conn.execute("TRUNCATE t")
    conn.execute("ROLLBACK")
    # aborted by an error
    conn.execute("BEGIN")
    conn.execute("INSERT INTO t VALUES (4, 'd')")
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("INSERT INTO t VALUES (1, 'dup')")
    conn.execute("ROLLBACK")
    # aborted at COMMIT by a deferred constraint
    conn.execute("CREATE TABLE p (id int PRIMARY KEY) USING heap")
    conn.execute(
        "CREATE TABLE c (id int PRIMARY KEY, p int REFERENCES p DEFERRABLE INITIALLY DEFERRED) USING driftdb"
    )
    s2, n2 = current_seq(conn), event_count(conn)
    assert s2 == s
    conn.execute("BEGIN")
    conn.execute("INSERT INTO c VALUES (1, 42)")
    conn.execute("INSERT INTO t VALUES (5, 'e')")
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        conn.execute("COMMIT")
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert (current_seq(conn), event_count(conn)) == (s, n)
    assert conn.execute("SELECT count(*) FROM c").fetchone() == (0,)
    t.check(conn)
    assert_verified(conn, "c")


def test_writes_by_deferred_trigger_at_commit_are_captured(conn, t):
    conn.execute("CREATE TABLE log (id int PRIMARY KEY, v text) USING driftdb")
    log = Model("log", "id", "v")
    conn.execute(
        """CREATE FUNCTION deferred_log() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN INSERT INTO log VALUES (NEW.id, 'deferred ' || NEW.v); RETURN NULL; END $$"""
    )
    conn.execute(
        "CREATE CONSTRAINT TRIGGER d AFTER INSERT ON t DEFERRABLE INITIALLY DEFERRED "
        "FOR EACH ROW EXECUTE FUNCTION deferred_log()"
    )
    with conn.transaction():
        conn.execute("INSERT INTO t VALUES (1, 'a'), (2, 'b')")
        assert conn.execute("SELECT count(*) FROM log").fetchone() == (0,)
    t.apply({1: ("a",), 2: ("b",)})
    log.apply({1: ("deferred a",), 2: ("deferred b",)})
    t.check(conn)
    log.check(conn)
    tx = transactions(conn)
    assert len(tx) == 1 and sorted(tx[0]["tables"]) == ["log", "t"]


def test_rolled_back_savepoints_leave_nothing(conn, t):
    conn.execute("INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c')")
    t.apply({1: ("a",), 2: ("b",), 3: ("c",)})
    with conn.transaction():
        conn.execute("UPDATE t SET v = 'a1' WHERE id = 1")
        conn.execute("SAVEPOINT s1")
        conn.execute("UPDATE t SET v = 'a2' WHERE id = 1")  # rolled back: a1 stays
        conn.execute("DELETE FROM t WHERE id = 2")
        conn.execute("INSERT INTO t VALUES (4, 'd')")
        conn.execute("SAVEPOINT s2")
        conn.execute("INSERT INTO t VALUES (5, 'e')")
        conn.execute("ROLLBACK TO SAVEPOINT s1")
        conn.execute("INSERT INTO t VALUES (6, 'f')")
        conn.execute("SAVEPOINT s3")
        conn.execute("UPDATE t SET v = 'c1' WHERE id = 3")
        conn.execute("RELEASE SAVEPOINT s3")  # kept
        conn.execute("SAVEPOINT s4")
        conn.execute("TRUNCATE t")
        conn.execute("ROLLBACK TO SAVEPOINT s4")  # the truncate is undone
        conn.execute("SAVEPOINT s5")
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("INSERT INTO t VALUES (7, 'g'), (1, 'dup')")
        conn.execute("ROLLBACK TO SAVEPOINT s5")
    t.apply({1: ("a1",), 6: ("f",), 3: ("c1",)})
    assert t.history[-1] == {mp_key(1): "u", mp_key(6): "i", mp_key(3): "u"}
    t.check(conn)
    assert len(transactions(conn)) == 2


def test_subtransactions_of_plpgsql_exception_blocks(conn, t):
    conn.execute(
        """DO $$
           BEGIN
             INSERT INTO t VALUES (1, 'kept');
             BEGIN
               INSERT INTO t VALUES (2, 'lost');
               UPDATE t SET v = 'lost' WHERE id = 1;
               PERFORM 1 / 0;
             EXCEPTION WHEN division_by_zero THEN NULL;
             END;
             FOR i IN 10..30 LOOP
               BEGIN
                 INSERT INTO t VALUES (i, 'loop');
                 IF i % 2 = 0 THEN RAISE EXCEPTION 'odd only'; END IF;
               EXCEPTION WHEN raise_exception THEN NULL;
               END;
             END LOOP;
           END $$"""
    )
    t.apply({1: ("kept",), **{i: ("loop",) for i in range(11, 31, 2)}})
    t.check(conn)


def test_rolled_back_savepoint_only_changes_give_no_seq(conn, t):
    s = current_seq(conn)
    with conn.transaction():
        conn.execute("SAVEPOINT a")
        conn.execute("INSERT INTO t VALUES (1, 'x')")
        conn.execute("ROLLBACK TO SAVEPOINT a")
    assert current_seq(conn) == s
    assert event_count(conn) == 0


def test_transaction_granularity(conn, t):
    conn.execute("INSERT INTO t VALUES (1, 'a'), (2, 'b')")
    t.apply({1: ("a",), 2: ("b",)})
    # insert then update: one insert of the final row
    with conn.transaction():
        conn.execute("INSERT INTO t VALUES (3, 'c')")
        conn.execute("UPDATE t SET v = 'c2' WHERE id = 3")
        conn.execute("UPDATE t SET v = 'c3' WHERE id = 3")
    t.apply({3: ("c3",)})
    assert t.history[-1] == {mp_key(3): "i"}
    # insert then delete: no seq at all
    s = current_seq(conn)
    with conn.transaction():
        conn.execute("INSERT INTO t VALUES (4, 'd')")
        conn.execute("UPDATE t SET v = 'd2' WHERE id = 4")
        conn.execute("DELETE FROM t WHERE id = 4")
    assert current_seq(conn) == s
    # update, then update back: nothing changed
    with conn.transaction():
        conn.execute("UPDATE t SET v = 'zz' WHERE id = 1")
        conn.execute("UPDATE t SET v = 'a' WHERE id = 1")
    assert current_seq(conn) == s
    # update then delete: one delete
    with conn.transaction():
        conn.execute("UPDATE t SET v = 'q' WHERE id = 1")
        conn.execute("DELETE FROM t WHERE id = 1")
    t.apply(deletes=[1])
    assert t.history[-1] == {mp_key(1): "d"}
    t.check(conn)


def test_delete_then_reinsert_same_row_is_no_change(conn, t):
    conn.execute("INSERT INTO t VALUES (1, 'a'), (2, 'b')")
    t.apply({1: ("a",), 2: ("b",)})
    s = current_seq(conn)
    with conn.transaction():
        conn.execute("DELETE FROM t WHERE id = 2")
        conn.execute("INSERT INTO t VALUES (2, 'b')")
    assert current_seq(conn) == s, "net effect nothing: no seq"
    t.check(conn)


def test_delete_then_reinsert_same_key_is_one_update(conn, t):
    conn.execute("INSERT INTO t VALUES (1, 'a'), (2, 'b')")
    t.apply({1: ("a",), 2: ("b",)})
    with conn.transaction():
        conn.execute("DELETE FROM t WHERE id = 2")
        conn.execute("INSERT INTO t VALUES (2, 'b2')")
    t.apply({2: ("b2",)})
    assert t.history[-1] == {mp_key(2): "u"}
    t.check(conn)


def test_update_changing_nothing_adds_no_version(conn):
    conn.execute(
        "CREATE TABLE t (id int PRIMARY KEY, n numeric, f float8, j jsonb, a int[], ts timestamptz) USING driftdb"
    )
    conn.execute("INSERT INTO t VALUES (1, 1.50, 0.1, '{\"a\": 1}', '{1,2}', '2024-01-01 00:00+00')")
    s = current_seq(conn)
    conn.execute("UPDATE t SET n = n, f = f, j = j, a = a, ts = ts")
    conn.execute("UPDATE t SET id = id")
    assert current_seq(conn) == s
    # a numeric with a different display scale is a different value (1.50 vs 1.5)
    conn.execute("UPDATE t SET n = 1.5")
    assert current_seq(conn) == s + 1
    assert_verified(conn, "t")


def test_prepare_transaction_refused(conn, t):
    conn.execute("INSERT INTO t VALUES (1, 'a')")
    t.apply({1: ("a",)})
    s, n = current_seq(conn), event_count(conn)
    conn.execute("BEGIN")
    conn.execute("INSERT INTO t VALUES (2, 'b')")
    conn.execute("UPDATE t SET v = 'z' WHERE id = 1")
    with pytest.raises(psycopg.Error) as ei:
        conn.execute("PREPARE TRANSACTION 'drift_2pc'")
    assert ei.value.sqlstate == "0A000", ei.value
    assert "driftdb" in str(ei.value)
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        conn.execute("ROLLBACK")
    assert conn.execute("SELECT count(*) FROM pg_prepared_xacts WHERE gid = 'drift_2pc'").fetchone() == (0,)
    assert (current_seq(conn), event_count(conn)) == (s, n)
    t.check(conn)
    # two-phase commit without driftdb changes still works
    conn.execute("CREATE TABLE h (id int) USING heap")
    conn.execute("BEGIN")
    conn.execute("INSERT INTO h VALUES (1)")
    conn.execute("SELECT * FROM t")
    conn.execute("PREPARE TRANSACTION 'heap_2pc'")
    conn.execute("COMMIT PREPARED 'heap_2pc'")
    assert conn.execute("SELECT count(*) FROM h").fetchone() == (1,)
    assert current_seq(conn) == s


def test_current_seq_and_seq_at(conn, t):
    assert current_seq(conn) == 0
    assert conn.execute("SELECT driftdb.seq_at(now())").fetchone() == (0,)
    for i in range(1, 6):
        conn.execute("INSERT INTO t VALUES (%s, 'a')", (i,))
        time.sleep(0.01)
    assert current_seq(conn) == 5
    tx = transactions(conn)
    for x in tx:
        at = x["committed_at"]
        assert conn.execute("SELECT driftdb.seq_at(%s)", (at,)).fetchone() == (x["seq"],)
        assert conn.execute(
            "SELECT driftdb.seq_at(%s::timestamptz + interval '1 microsecond')", (at,)
        ).fetchone() == (x["seq"],)
        assert conn.execute(
            "SELECT driftdb.seq_at(%s::timestamptz - interval '1 microsecond')", (at,)
        ).fetchone() == (x["seq"] - 1,)
    assert conn.execute("SELECT driftdb.seq_at('-infinity')").fetchone() == (0,)
    assert conn.execute("SELECT driftdb.seq_at('infinity')").fetchone() == (5,)
    assert conn.execute("SELECT driftdb.seq_at(NULL)").fetchone() == (None,)
    # inside a transaction, current_seq does not count the transaction's own uncommitted work
    with conn.transaction():
        conn.execute("INSERT INTO t VALUES (100, 'x')")
        assert current_seq(conn) == 5
    assert current_seq(conn) == 6


def test_seq_is_per_database(pg_cluster, conn, t):
    conn.execute("INSERT INTO t VALUES (1, 'a')")
    conn.execute("INSERT INTO t VALUES (2, 'a')")
    other = f"t_seqdb_{secrets.token_hex(4)}"
    create_database(pg_cluster, other)
    try:
        with pg_cluster.connect(other) as c2:
            assert current_seq(c2) == 0
            c2.execute("CREATE TABLE t (id int PRIMARY KEY) USING driftdb")
            c2.execute("INSERT INTO t VALUES (1)")
            assert seqs(c2) == [1]
            assert_verified(c2, "t")
        assert seqs(conn) == [1, 2]
    finally:
        drop_database(pg_cluster, other)


def test_transactions_view_roles_and_application(db, roles):
    alice, bob = roles("alice"), roles("bob")
    admin = db.connect(application_name="admin_app")
    admin.execute("CREATE TABLE t (id int PRIMARY KEY, v text) USING driftdb")
    admin.execute("CREATE TABLE u (id int PRIMARY KEY) USING driftdb")
    admin.execute(f'GRANT ALL ON t, u TO "{alice}", "{bob}"')
    admin.execute(f'GRANT "{bob}" TO "{alice}"')

    admin.execute("INSERT INTO t VALUES (1, 'a')")  # seq 1
    admin.execute(f'SET ROLE "{alice}"')
    admin.execute("INSERT INTO t VALUES (2, 'a')")  # seq 2: committed by alice
    admin.execute("RESET ROLE")
    with admin.transaction():  # seq 3: SET ROLE inside, after the write: the role at commit
        admin.execute("INSERT INTO u VALUES (1)")
        admin.execute("INSERT INTO t VALUES (3, 'a')")
        admin.execute(f'SET LOCAL ROLE "{bob}"')
        admin.execute("SET LOCAL application_name = 'changed in tx'")
    with admin.transaction():  # seq 4: role set, then reset before commit
        admin.execute(f'SET LOCAL ROLE "{bob}"')
        admin.execute("UPDATE t SET v = 'b' WHERE id = 1")
        admin.execute("RESET ROLE")

    a = db.connect(user=alice, application_name="alice_app")
    a.execute("INSERT INTO u VALUES (2)")  # seq 5
    a.execute(f'SET ROLE "{bob}"')
    a.execute("DELETE FROM t WHERE id = 2")  # seq 6
    tx = transactions(admin)
    got = [(x["seq"], x["committed_by"], x["session_user"], x["application_name"], x["tables"]) for x in tx]
    assert got == [
        (1, "postgres", "postgres", "admin_app", ["t"]),
        (2, alice, "postgres", "admin_app", ["t"]),
        (3, bob, "postgres", "changed in tx", ["u", "t"]),
        (4, "postgres", "postgres", "admin_app", ["t"]),
        (5, alice, alice, "alice_app", ["u"]),
        (6, bob, alice, "alice_app", ["t"]),
    ]
    # xid: the top-level transaction id of the writer
    with admin.transaction():
        xid = admin.execute("SELECT txid_current()").fetchone()[0]
        admin.execute("INSERT INTO t VALUES (10, 'x')")
    assert transactions(admin, 6)[0]["xid"] == xid
    # a role renamed between two commits of a session is recorded under its new name (the
    # commit looks role names up once per session, until pg_authid changes)
    admin.execute(f'ALTER ROLE "{bob}" RENAME TO "{bob}_renamed"')
    try:
        a.execute("DELETE FROM t WHERE id = 3")  # seq 8, by bob under his new name
        assert [(x["committed_by"], x["session_user"]) for x in transactions(admin, 7)] == [(f"{bob}_renamed", alice)]
    finally:
        admin.execute(f'ALTER ROLE "{bob}_renamed" RENAME TO "{bob}"')
    # the view is not readable by PUBLIC
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        a.execute("SELECT * FROM driftdb.transactions")
    assert_verified(admin, "t", "u")



@pytest.mark.parametrize("pack_min_events", [0, 1000])
def test_large_transaction_is_written_in_batches_exactly(conn, pack_min_events):
    """A transaction with thousands of events (written in batches of 1000 rows or 1 MB, one
    heap_multi_insert each, then their index entries — or, by default, as event packs), with
    toasted frames among them and a key changed and re-inserted in the same transaction: every
    event is there once, with its own ord, readable through the key lookups."""
    conn.execute(f"SET driftdb.pack_min_events = {pack_min_events}")
    conn.execute("CREATE TABLE b (id int PRIMARY KEY, v text) USING driftdb")
    rows = {i: (("x%d-" % i) * (2000 if i % 97 == 0 else 3)) for i in range(1, 3501)}
    with conn.transaction():
        with conn.cursor().copy("COPY b (id, v) FROM STDIN") as cp:
            for i, v in rows.items():
                cp.write_row((i, v))
        conn.execute("UPDATE b SET id = 100000 WHERE id = 7")           # a key change
        conn.execute("INSERT INTO b VALUES (7, 'again')")                # the key re-used
    rows[100000] = rows.pop(7)
    rows[7] = "again"
    seq = current_seq(conn)
    got = dict(conn.execute("SELECT (new_data).id, (new_data).v FROM driftdb.changes(NULL::b) WHERE seq = %s",
                            (seq,)).fetchall())
    assert got == rows
    mine = [e for e in events(conn, "b") if e[0] == seq]
    assert len(mine) == len({e[1] for e in mine}) >= len(rows)
    npacked = conn.execute("SELECT COALESCE(sum(nevents), 0) FROM driftdb.packs WHERE seq = %s", (seq,)).fetchone()[0]
    assert npacked == (len(mine) if pack_min_events else 0)
    # the key index finds every key's row as of that seq
    for k in (1, 7, 97, 3500, 100000):
        assert conn.execute(f"SELECT v FROM driftdb.as_of(NULL::b, {seq}::bigint) WHERE id = %s", (k,)).fetchone()[0] == rows[k]
    assert_verified(conn, "b")
