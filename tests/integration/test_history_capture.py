"""History capture on every write path (issue 3, item 1).

Each test writes through one path, keeps a Python model of the rows it committed, and checks
(a) one seq per transaction, (b) the op and key of every event, (c) live rows == model and
driftdb.verify passes.
"""
from __future__ import annotations

import psycopg
import pytest

from conftest import create_database, drop_database, wait_for
from history_model import (
    Model,
    assert_verified,
    current_seq,
    event_count,
    events,
    live,
    mp_key,
    ops_by_seq,
    transactions,
)


def _table(conn, name="t", extra=""):
    conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v text{extra}) USING driftdb")
    return Model(name, "id", "v")


def test_insert_single_row(conn):
    m = _table(conn)
    conn.execute("INSERT INTO t VALUES (1, 'a')")
    m.apply({1: ("a",)})
    conn.execute("INSERT INTO t VALUES (2, NULL)")
    m.apply({2: (None,)})
    m.check(conn)
    assert len(transactions(conn)) == 2
    # the key column is the MessagePack array of the identity values
    assert [e[3] for e in events(conn, "t")] == [b"\x91\x01", b"\x91\x02"]


def test_insert_multi_row_and_insert_select(conn):
    m = _table(conn)
    conn.execute("INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c')")
    m.apply({1: ("a",), 2: ("b",), 3: ("c",)})
    conn.execute("INSERT INTO t SELECT g, 'g' || g FROM generate_series(10, 300) g")
    m.apply({g: (f"g{g}",) for g in range(10, 301)})
    m.check(conn)
    tx = transactions(conn)
    assert len(tx) == 2
    assert event_count(conn, "t") == 3 + 291
    # ords order a transaction's events: unique and increasing within each seq
    for s in (tx[0]["seq"], tx[1]["seq"]):
        ords = [e[1] for e in events(conn, "t") if e[0] == s]
        assert ords == sorted(set(ords)) and len(ords) in (3, 291)


def test_insert_wide_keys(conn):
    """Keys beyond fixint range, negative, text and composite keys encode as MessagePack."""
    conn.execute("CREATE TABLE w (a bigint, b text, v int, PRIMARY KEY (a, b)) USING driftdb")
    m = Model("w", "a, b", "v")
    rows = {(-1, "x"): (1,), (-200, ""): (2,), (300, "é" * 20): (3,), (2**40, "y" * 40): (4,),
            (-(2**40), "z"): (5,), (127, "k"): (6,), (128, "k"): (7,), (70000, "k"): (8,)}
    with conn.transaction():
        for (a, b), (v,) in rows.items():
            conn.execute("INSERT INTO w VALUES (%s, %s, %s)", (a, b, v))
    m.apply(rows)
    m.check(conn)


def test_copy_text(conn):
    m = _table(conn)
    with conn.cursor() as cur:
        with cur.copy("COPY t (id, v) FROM STDIN") as cp:
            for i in range(1, 2001):
                cp.write_row((i, f"r{i}" if i % 7 else None))
    m.apply({i: (f"r{i}" if i % 7 else None,) for i in range(1, 2001)})
    m.check(conn)
    assert len(transactions(conn)) == 1


def test_copy_binary(conn):
    m = _table(conn)
    with conn.cursor() as cur:
        with cur.copy("COPY t (id, v) FROM STDIN (FORMAT BINARY)") as cp:
            cp.set_types(["int4", "text"])
            for i in range(1, 1501):
                cp.write_row((i, "b" * (i % 50)))
    m.apply({i: ("b" * (i % 50),) for i in range(1, 1501)})
    m.check(conn)
    assert len(transactions(conn)) == 1


def _copy_rows(conn, ids, v):
    """COPY rows (id, v) into t, in the caller's transaction."""
    with conn.cursor() as cur:
        with cur.copy("COPY t (id, v) FROM STDIN") as cp:
            for i in ids:
                cp.write_row((i, v))


def test_copy_in_transaction_with_other_writes(conn):
    m = _table(conn)
    conn.execute("INSERT INTO t VALUES (1, 'x'), (2, 'y')")
    m.apply({1: ("x",), 2: ("y",)})
    with conn.transaction():
        _copy_rows(conn, range(3, 103), "c")
        conn.execute("UPDATE t SET v = 'upd' WHERE id IN (1, 50)")
        conn.execute("DELETE FROM t WHERE id IN (2, 60)")
    rows = dict(m.rows)
    rows.update({i: ("c",) for i in range(3, 103)})
    rows[1] = ("upd",)
    rows[50] = ("upd",)
    del rows[2], rows[60]
    m.commit(rows)
    # 50 was inserted and updated in the same transaction: one insert; 60: nothing at all
    assert m.history[-1][mp_key(50)] == "i" and mp_key(60) not in m.history[-1]
    m.check(conn)


def test_bulk_insert_then_rollback_to_savepoint_and_tid_reuse(conn):
    """A bulk insert's rows are buffered without a TID index until a lookup needs one (txbuf's
    lazy index). Rows inserted in a rolled-back savepoint free their TIDs, which the next
    inserts reuse; updates and deletes of both generations must still find their rows."""
    m = _table(conn)
    with conn.transaction():
        _copy_rows(conn, range(1, 3001), "a")
        conn.execute("SAVEPOINT s")
        conn.execute("INSERT INTO t SELECT g, 'gone' FROM generate_series(3001, 4000) g")
        conn.execute("UPDATE t SET v = 'gone too' WHERE id % 5 = 0")
        conn.execute("ROLLBACK TO SAVEPOINT s")
        # the rolled-back versions are dead: a prune may hand their TIDs to these rows
        conn.execute("SELECT count(*) FROM t")
        conn.execute("INSERT INTO t SELECT g, 'b' FROM generate_series(5001, 5800) g")
        conn.execute("UPDATE t SET v = v || '+' WHERE id % 7 = 0")
        conn.execute("DELETE FROM t WHERE id % 11 = 0")
    rows = {i: ("a",) for i in range(1, 3001)}
    rows.update({i: ("b",) for i in range(5001, 5801)})
    for i in list(rows):
        if i % 7 == 0:
            rows[i] = (rows[i][0] + "+",)
        if i % 11 == 0:
            del rows[i]
    m.commit(rows)
    assert set(m.history[-1].values()) == {"i"}
    m.check(conn)


def test_update_and_delete(conn):
    m = _table(conn)
    conn.execute("INSERT INTO t SELECT g, 'v' FROM generate_series(1, 20) g")
    m.apply({g: ("v",) for g in range(1, 21)})
    conn.execute("UPDATE t SET v = 'w' WHERE id <= 5")
    m.apply({g: ("w",) for g in range(1, 6)})
    conn.execute("UPDATE t SET v = NULL WHERE id = 6")
    m.apply({6: (None,)})
    conn.execute("DELETE FROM t WHERE id > 15")
    m.apply(deletes=range(16, 21))
    conn.execute("DELETE FROM t WHERE id = 1000")  # deletes nothing: no seq
    m.check(conn)
    assert len(transactions(conn)) == 4


def test_update_changing_the_key(conn):
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text) USING driftdb")
    conn.execute("INSERT INTO t VALUES (1, 'a'), (2, 'b')")
    s0 = current_seq(conn)
    conn.execute("UPDATE t SET id = id + 100 WHERE id = 1")
    evs = events(conn, "t", s0)
    # one update of the row, not delete + insert: filed under the new key, plus a moved-key
    # marker ('m') under the old key
    assert [(e[2], e[3]) for e in evs] == [("u", mp_key(101)), ("m", mp_key(1))], evs
    assert live(conn, "t", "id", "v") == {101: ("a",), 2: ("b",)}
    # swap the keys of two rows in one transaction, then change a key back and forth
    s1 = current_seq(conn)
    with conn.transaction():
        conn.execute("UPDATE t SET id = -1, v = v || '!' WHERE id = 101")
        conn.execute("UPDATE t SET id = 101, v = v || '!' WHERE id = 2")
        conn.execute("UPDATE t SET id = 2 WHERE id = -1")
    assert sorted((e[2], e[3]) for e in events(conn, "t", s1)) == [
        ("m", mp_key(2)), ("m", mp_key(101)), ("u", mp_key(2)), ("u", mp_key(101))]
    s2 = current_seq(conn)
    with conn.transaction():
        conn.execute("UPDATE t SET id = 500 WHERE id = 2")
        conn.execute("UPDATE t SET id = 2 WHERE id = 500")
    # net effect: nothing changed, so no seq
    assert current_seq(conn) == s2
    assert live(conn, "t", "id", "v") == {2: ("a!",), 101: ("b!",)}
    assert_verified(conn, "t")


def test_on_conflict_do_update(conn):
    m = _table(conn)
    conn.execute("INSERT INTO t VALUES (1, 'a'), (2, 'b')")
    m.apply({1: ("a",), 2: ("b",)})
    conn.execute(
        "INSERT INTO t VALUES (2, 'B'), (3, 'C') ON CONFLICT (id) DO UPDATE SET v = excluded.v"
    )
    m.apply({2: ("B",), 3: ("C",)})
    assert m.history[-1] == {mp_key(2): "u", mp_key(3): "i"}
    # DO UPDATE that sets the same value: no change, no seq
    s = current_seq(conn)
    conn.execute("INSERT INTO t VALUES (1, 'a') ON CONFLICT (id) DO UPDATE SET v = excluded.v")
    assert current_seq(conn) == s
    # DO UPDATE ... WHERE false: nothing
    conn.execute("INSERT INTO t VALUES (1, 'zz') ON CONFLICT (id) DO UPDATE SET v = excluded.v WHERE false")
    assert current_seq(conn) == s
    m.check(conn)


def test_on_conflict_do_nothing(conn):
    m = _table(conn)
    conn.execute("INSERT INTO t VALUES (1, 'a')")
    m.apply({1: ("a",)})
    s = current_seq(conn)
    conn.execute("INSERT INTO t VALUES (1, 'z') ON CONFLICT DO NOTHING")
    assert current_seq(conn) == s, "an insert that did nothing must get no seq"
    conn.execute("INSERT INTO t VALUES (1, 'z'), (2, 'b') ON CONFLICT (id) DO NOTHING")
    m.apply({2: ("b",)})
    m.check(conn)


def test_merge(conn):
    m = _table(conn)
    conn.execute("INSERT INTO t SELECT g, 'old' FROM generate_series(1, 10) g")
    m.apply({g: ("old",) for g in range(1, 11)})
    conn.execute("CREATE TABLE src (id int, v text, del bool)")
    conn.execute(
        "INSERT INTO src VALUES (1, 'new', false), (2, NULL, true), (3, 'old', false), "
        "(20, 'ins', false), (21, 'ins', true)"
    )
    conn.execute(
        """MERGE INTO t USING src ON t.id = src.id
           WHEN MATCHED AND src.del THEN DELETE
           WHEN MATCHED THEN UPDATE SET v = src.v
           WHEN NOT MATCHED AND NOT src.del THEN INSERT VALUES (src.id, src.v)"""
    )
    # 3: updated to the same value -> no event
    m.apply({1: ("new",), 20: ("ins",)}, deletes=[2])
    assert m.history[-1] == {mp_key(1): "u", mp_key(2): "d", mp_key(20): "i"}
    m.check(conn)
    assert len(transactions(conn)) == 2


def test_writes_by_trigger_on_heap_table_into_driftdb(conn):
    conn.execute("CREATE TABLE h (id int PRIMARY KEY, v text) USING heap")
    m = _table(conn, "audit")
    conn.execute(
        """CREATE FUNCTION h_trg() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
             IF TG_OP = 'DELETE' THEN DELETE FROM audit WHERE id = OLD.id; RETURN OLD; END IF;
             INSERT INTO audit VALUES (NEW.id, NEW.v) ON CONFLICT (id) DO UPDATE SET v = excluded.v;
             RETURN NEW;
           END $$"""
    )
    conn.execute("CREATE TRIGGER h_trg AFTER INSERT OR UPDATE OR DELETE ON h FOR EACH ROW EXECUTE FUNCTION h_trg()")
    conn.execute("INSERT INTO h VALUES (1, 'a'), (2, 'b')")
    m.apply({1: ("a",), 2: ("b",)})
    conn.execute("UPDATE h SET v = 'bb' WHERE id = 2")
    m.apply({2: ("bb",)})
    conn.execute("DELETE FROM h WHERE id = 1")
    m.apply(deletes=[1])
    m.check(conn)
    assert [t["tables"] for t in transactions(conn)] == [["audit"]] * 3


def test_writes_by_trigger_on_driftdb_table(conn):
    """A driftdb table's triggers write into a heap table and into another driftdb table; a
    BEFORE trigger changes the row (history must show the row as stored)."""
    m = _table(conn)
    conn.execute("CREATE TABLE heap_log (n serial, op text, id int) USING heap")
    conn.execute("CREATE TABLE dlog (id int PRIMARY KEY, cnt int) USING driftdb")
    dl = Model("dlog", "id", "cnt")
    conn.execute(
        """CREATE FUNCTION before_t() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN NEW.v := upper(NEW.v); RETURN NEW; END $$"""
    )
    conn.execute(
        """CREATE FUNCTION after_t() RETURNS trigger LANGUAGE plpgsql AS $$
           DECLARE k int := COALESCE(NEW.id, OLD.id);
           BEGIN
             INSERT INTO heap_log (op, id) VALUES (TG_OP, k);
             INSERT INTO dlog VALUES (k, 1) ON CONFLICT (id) DO UPDATE SET cnt = dlog.cnt + 1;
             RETURN NULL;
           END $$"""
    )
    conn.execute("CREATE TRIGGER b BEFORE INSERT OR UPDATE ON t FOR EACH ROW EXECUTE FUNCTION before_t()")
    conn.execute("CREATE TRIGGER a AFTER INSERT OR UPDATE OR DELETE ON t FOR EACH ROW EXECUTE FUNCTION after_t()")
    conn.execute("INSERT INTO t VALUES (1, 'a'), (2, 'b')")
    m.apply({1: ("A",), 2: ("B",)})
    dl.apply({1: (1,), 2: (1,)})
    conn.execute("UPDATE t SET v = 'x' WHERE id = 1")
    m.apply({1: ("X",)})
    dl.apply({1: (2,)})
    conn.execute("DELETE FROM t WHERE id = 2")
    m.apply(deletes=[2])
    dl.apply({2: (2,)})
    m.check(conn)
    dl.check(conn)
    assert conn.execute("SELECT op, id FROM heap_log ORDER BY n").fetchall() == [
        ("INSERT", 1), ("INSERT", 2), ("UPDATE", 1), ("DELETE", 2)]
    tx = transactions(conn)
    assert len(tx) == 3
    assert all(sorted(t["tables"]) == ["dlog", "t"] for t in tx)


@pytest.mark.parametrize("parent_am", ["heap", "driftdb"])
def test_fk_cascade_and_set_null_into_driftdb_child(conn, parent_am):
    conn.execute(f"CREATE TABLE p (id int PRIMARY KEY) USING {parent_am}")
    conn.execute(
        "CREATE TABLE c (id int PRIMARY KEY, "
        "p1 int REFERENCES p ON DELETE CASCADE ON UPDATE CASCADE, "
        "p2 int REFERENCES p ON DELETE SET NULL) USING driftdb"
    )
    c = Model("c", "id", "p1, p2")
    conn.execute("INSERT INTO p SELECT generate_series(1, 5)")
    conn.execute("INSERT INTO c VALUES (1, 1, 2), (2, 1, 3), (3, 2, 2), (4, 3, NULL), (5, 4, 1)")
    c.apply({1: (1, 2), 2: (1, 3), 3: (2, 2), 4: (3, None), 5: (4, 1)})
    conn.execute("DELETE FROM p WHERE id = 1")  # cascades 1, 2; sets 5.p2 NULL
    c.apply({5: (4, None)}, deletes=[1, 2])
    assert c.history[-1] == {mp_key(1): "d", mp_key(2): "d", mp_key(5): "u"}
    conn.execute("DELETE FROM p WHERE id = 2")  # cascades 3 (p1 = 2)
    c.apply(deletes=[3])
    conn.execute("UPDATE p SET id = 30 WHERE id = 3")  # ON UPDATE CASCADE: 4.p1 = 30
    c.apply({4: (30, None)})
    c.check(conn)
    if parent_am == "driftdb":
        assert_verified(conn, "p")
        # parent and child changes of one statement are one seq
        tx = transactions(conn)
        assert [sorted(t["tables"]) for t in tx] == [["p"], ["c"], ["c", "p"], ["c", "p"], ["c", "p"]]
    else:
        assert [t["tables"] for t in transactions(conn)] == [["c"]] * 4


def _drop_subscription(sub_conn, name):
    try:
        sub_conn.execute(f"ALTER SUBSCRIPTION {name} DISABLE")
        sub_conn.execute(f"ALTER SUBSCRIPTION {name} SET (slot_name = NONE)")
        sub_conn.execute(f"DROP SUBSCRIPTION {name}")
    except psycopg.Error:
        pass


@pytest.mark.parametrize("publisher_am", ["heap", "driftdb"])
def test_logical_replication_apply(db, publisher_am):
    """Publication in the test database, subscription in a second database of the same cluster:
    the apply worker's (and the initial table sync's) writes into the subscriber's driftdb table
    are captured."""
    pub = db.connect()
    pub.execute(f"CREATE TABLE t (id int PRIMARY KEY, v text) USING {publisher_am}")
    pub.execute("INSERT INTO t SELECT g, 'init' FROM generate_series(1, 50) g")
    pub.execute("CREATE PUBLICATION p FOR TABLE t")
    slot = f"s_{db.name[-6:]}_{publisher_am}"
    pub.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))

    sub_db = db.name + "_sub"
    create_database(db.cluster, sub_db)
    sub = db.cluster.connect(sub_db)
    try:
        sub.execute("CREATE TABLE t (id int PRIMARY KEY, v text) USING driftdb")
        sub.execute(
            f"CREATE SUBSCRIPTION sub CONNECTION '{db.conninfo()}' PUBLICATION p "
            f"WITH (create_slot = false, slot_name = '{slot}')"
        )
        model = {g: ("init",) for g in range(1, 51)}

        def caught_up():
            return live(sub, "t", "id", "v") == model

        wait_for(caught_up, timeout=30, what="initial table sync")
        # changes after the sync flow through the apply worker, one transaction each
        pub.execute("INSERT INTO t VALUES (100, 'new')")
        pub.execute("UPDATE t SET v = 'upd' WHERE id <= 10")
        pub.execute("DELETE FROM t WHERE id BETWEEN 41 AND 50")
        with pub.transaction():
            pub.execute("INSERT INTO t VALUES (101, 'x')")
            pub.execute("UPDATE t SET v = 'y' WHERE id = 101")
            pub.execute("UPDATE t SET id = 200 WHERE id = 11")
        model[100] = ("new",)
        for g in range(1, 11):
            model[g] = ("upd",)
        for g in range(41, 51):
            del model[g]
        model[101] = ("y",)
        model[200] = model.pop(11)
        wait_for(caught_up, timeout=30, what="subscriber to apply the changes")

        sub_tx = transactions(sub)
        assert sub_tx, "the subscriber recorded no history"
        assert all(t["tables"] == ["t"] for t in sub_tx)
        ops = ops_by_seq(sub, "t")
        # the last four seqs are the four publisher transactions, applied one each
        assert len(ops) >= 5, ops
        assert ops[-4] == {mp_key(100): "i"}
        assert ops[-3] == {mp_key(g): "u" for g in range(1, 11)}
        assert ops[-2] == {mp_key(g): "d" for g in range(41, 51)}
        assert ops[-1] == {mp_key(101): "i", mp_key(200): "u", mp_key(11): "m"}
        # everything before them is the initial sync: 50 inserts
        initial = {}
        for o in ops[:-4]:
            initial.update(o)
        assert initial == {mp_key(g): "i" for g in range(1, 51)}
        assert_verified(sub, "t")
        if publisher_am == "driftdb":
            assert_verified(pub, "t")
    finally:
        _drop_subscription(sub, "sub")
        sub.close()
        try:
            pub.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        except psycopg.Error:
            pass
        drop_database(db.cluster, sub_db)


def test_copy_freeze_into_table_truncated_in_same_transaction(conn):
    m = _table(conn)
    conn.execute("INSERT INTO t VALUES (1, 'old')")
    m.apply({1: ("old",)})
    with conn.transaction():
        conn.execute("TRUNCATE t")
        with conn.cursor() as cur:
            with cur.copy("COPY t (id, v) FROM STDIN (FREEZE)") as cp:
                for i in range(1, 101):
                    cp.write_row((i, "frozen"))
    m.apply({i: ("frozen",) for i in range(1, 101)}, truncate=True)
    m.check(conn)


def test_writable_cte(conn):
    m = _table(conn)
    conn.execute("CREATE TABLE archive (id int PRIMARY KEY, v text) USING driftdb")
    a = Model("archive", "id", "v")
    conn.execute("INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 10) g")
    m.apply({g: (f"v{g}",) for g in range(1, 11)})
    conn.execute(
        "WITH moved AS (DELETE FROM t WHERE id > 7 RETURNING *), "
        "upd AS (UPDATE t SET v = 'kept' WHERE id = 1 RETURNING *) "
        "INSERT INTO archive SELECT * FROM moved"
    )
    m.apply({1: ("kept",)}, deletes=[8, 9, 10])
    a.apply({g: (f"v{g}",) for g in (8, 9, 10)})
    m.check(conn)
    a.check(conn)
    tx = transactions(conn)
    assert len(tx) == 2 and sorted(tx[1]["tables"]) == ["archive", "t"]


def test_procedure_with_transaction_control(conn):
    """COMMIT and ROLLBACK inside a procedure end transactions: one seq per committed one."""
    m = _table(conn)
    conn.execute(
        """CREATE PROCEDURE p() LANGUAGE plpgsql AS $$
           BEGIN
             INSERT INTO t VALUES (1, 'first');
             COMMIT;
             INSERT INTO t VALUES (2, 'rolled back');
             ROLLBACK;
             UPDATE t SET v = 'second' WHERE id = 1;
             INSERT INTO t VALUES (3, 'second');
             COMMIT;
             DELETE FROM t WHERE id = 3;
           END $$"""
    )
    conn.execute("CALL p()")
    m.apply({1: ("first",)})
    m.apply({1: ("second",), 3: ("second",)})
    m.apply(deletes=[3])
    m.check(conn)
    assert len(transactions(conn)) == 3


def test_partitions(conn):
    conn.execute("CREATE TABLE p (id int, k int, v text, PRIMARY KEY (id, k)) PARTITION BY RANGE (k)")
    conn.execute("CREATE TABLE p1 PARTITION OF p FOR VALUES FROM (0) TO (100) USING driftdb")
    conn.execute("CREATE TABLE p2 PARTITION OF p FOR VALUES FROM (100) TO (200) USING driftdb")
    p1, p2 = Model("p1", "id, k", "v"), Model("p2", "id, k", "v")
    conn.execute("INSERT INTO p VALUES (1, 10, 'a'), (2, 150, 'b'), (3, 20, 'c')")
    p1.apply({(1, 10): ("a",), (3, 20): ("c",)})
    p2.apply({(2, 150): ("b",)})
    conn.execute("UPDATE p SET v = 'a2' WHERE id = 1")
    p1.apply({(1, 10): ("a2",)})
    conn.execute("UPDATE p SET k = 120 WHERE id = 3")  # moves the row to p2: delete + insert
    p1.apply(deletes=[(3, 20)])
    p2.apply({(3, 120): ("c",)})
    conn.execute("DELETE FROM p WHERE id = 2")
    p2.apply(deletes=[(2, 150)])
    p1.check(conn)
    p2.check(conn)
    tx = transactions(conn)
    assert [sorted(x["tables"]) for x in tx] == [["p1", "p2"], ["p1"], ["p1", "p2"], ["p2"]]
    # a driftdb partition attached later, and a detached one, keep their own history
    conn.execute("CREATE TABLE p3 (id int, k int, v text, PRIMARY KEY (id, k)) USING driftdb")
    conn.execute("INSERT INTO p3 VALUES (9, 250, 'z')")
    conn.execute("ALTER TABLE p ATTACH PARTITION p3 FOR VALUES FROM (200) TO (300)")
    conn.execute("UPDATE p SET v = 'z2' WHERE id = 9")
    conn.execute("ALTER TABLE p DETACH PARTITION p1")
    conn.execute("UPDATE p1 SET v = 'detached' WHERE id = 1")
    assert [e[2] for e in events(conn, "p3")] == ["i", "u"]
    assert_verified(conn, "p1", "p2", "p3")


def test_partition_move_without_identity_is_refused_as_a_move(conn):
    """An UPDATE that moves a row to another partition deletes it from the first one; on a
    partition without row identity the refusal says it is the move (not a DELETE the user never
    wrote), and the row stays where it was."""
    conn.execute("CREATE TABLE q (id int, k int, v text) PARTITION BY RANGE (k)")
    conn.execute("CREATE TABLE q1 PARTITION OF q FOR VALUES FROM (0) TO (100) USING driftdb")
    conn.execute("CREATE TABLE q2 PARTITION OF q FOR VALUES FROM (100) TO (200) USING driftdb")
    conn.execute("INSERT INTO q VALUES (1, 10, 'a')")
    seq = current_seq(conn)
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as exc:
        conn.execute("UPDATE q SET k = 150 WHERE id = 1")
    diag = exc.value.diag
    assert diag.message_primary == 'cannot move rows of driftdb table "q1" to another partition: it has no row identity'
    assert "changes a row's partition" in diag.message_detail and "PRIMARY KEY" in diag.message_hint
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match='cannot delete rows of driftdb table "q1"'):
        conn.execute("DELETE FROM q WHERE id = 1")
    assert conn.execute("SELECT tableoid::regclass::text, id, k, v FROM q").fetchall() == [("q1", 1, 10, "a")]
    assert current_seq(conn) == seq
    assert_verified(conn, "q1", "q2")


def test_toasted_values(conn):
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, big text, n int, b bytea) USING driftdb")
    conn.execute("INSERT INTO t SELECT g, repeat(md5(g::text), 40000), 0, "
                 "decode(repeat(md5(g::text), 5000), 'hex') FROM generate_series(1, 5) g")
    conn.execute("UPDATE t SET n = n + 1 WHERE id <= 3")  # big stays toasted, unchanged
    conn.execute("UPDATE t SET big = big || 'x' WHERE id = 2")
    conn.execute("DELETE FROM t WHERE id = 5")
    assert [e[2] for e in events(conn, "t")] == ["i"] * 5 + ["u"] * 3 + ["u", "d"]
    assert_verified(conn, "t")
