"""History survives table operations (issue 3, item 5; DESIGN-BRIEF §2.4): TRUNCATE is one
event; ADD / DROP / RENAME COLUMN keep verify passing; ALTER COLUMN TYPE converts or fails
clearly; VACUUM FULL, CLUSTER and rewriting ALTER TABLEs neither lose history nor add events;
DROP TABLE removes the table's history; driftdb's own tables refuse direct writes."""
from __future__ import annotations

import psycopg
import pytest

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


def _t(conn, n=50):
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text) USING driftdb")
    m = Model("t", "id", "v")
    if n:
        conn.execute("INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, %s) g", (n,))
        m.apply({g: (f"v{g}",) for g in range(1, n + 1)})
    return m


def _snapshot(conn):
    """Everything driftdb recorded, to compare before/after an operation that must add nothing."""
    return (
        conn.execute("SELECT seq, committed_at, xid::text, table_ids FROM driftdb.commits ORDER BY seq").fetchall(),
        conn.execute("SELECT table_id, seq, ord, op::text, key, frame FROM driftdb.events ORDER BY 1, 2, 3").fetchall(),
        conn.execute("SELECT table_id, seq, ord, data FROM driftdb.packs ORDER BY 1, 2, 3").fetchall(),
    )


# ---------------------------------------------------------------------------------- TRUNCATE


def test_truncate_is_one_event(conn):
    m = _t(conn, 200)
    conn.execute("TRUNCATE t")
    m.apply(truncate=True)
    assert m.history[-1] == {None: "t"}
    m.check(conn)
    conn.execute("INSERT INTO t VALUES (1, 'again')")
    m.apply({1: ("again",)})
    m.check(conn)


def test_truncate_within_a_transaction(conn):
    m = _t(conn, 20)
    with conn.transaction():
        conn.execute("UPDATE t SET v = 'before truncate' WHERE id = 1")
        conn.execute("INSERT INTO t VALUES (100, 'gone')")
        conn.execute("TRUNCATE t")
        conn.execute("INSERT INTO t VALUES (1, 'after'), (2, 'after')")
        conn.execute("UPDATE t SET v = 'after2' WHERE id = 2")
    m.apply({1: ("after",), 2: ("after2",)}, truncate=True)
    assert m.history[-1] == {None: "t", mp_key(1): "i", mp_key(2): "i"}
    m.check(conn)
    # the truncate comes first among the transaction's events
    last = events(conn, "t", current_seq(conn) - 1)
    assert last[0][2] == "t" and last[0][3] is None


def test_truncate_several_tables_and_cascade(conn):
    m = _t(conn, 5)
    conn.execute("CREATE TABLE c (id int PRIMARY KEY, tid int REFERENCES t) USING driftdb")
    c = Model("c", "id", "tid")
    conn.execute("INSERT INTO c VALUES (1, 1), (2, 2)")
    c.apply({1: (1,), 2: (2,)})
    conn.execute("CREATE TABLE u (id int PRIMARY KEY) USING driftdb")
    u = Model("u", "id", "id")
    conn.execute("INSERT INTO u VALUES (1)")
    u.apply({1: (1,)})
    s = current_seq(conn)
    conn.execute("TRUNCATE t, u CASCADE")  # c by cascade
    for x in (m, c, u):
        x.apply(truncate=True)
        x.check(conn)
    tx = transactions(conn, s)
    assert len(tx) == 1 and sorted(tx[0]["tables"]) == ["c", "t", "u"]


def test_truncate_of_table_created_in_same_transaction(conn):
    with conn.transaction():
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text) USING driftdb")
        conn.execute("INSERT INTO t VALUES (1, 'a'), (2, 'b')")
        conn.execute("TRUNCATE t")
        conn.execute("INSERT INTO t VALUES (3, 'c')")
    assert live(conn, "t", "id", "v") == {3: ("c",)}
    ops = ops_by_seq(conn, "t")
    assert len(ops) == 1
    assert ops[0].get(mp_key(3)) == "i" and set(ops[0]) <= {None, mp_key(3)}
    assert_verified(conn, "t")


def test_rolled_back_truncate(conn):
    m = _t(conn, 10)
    s = current_seq(conn)
    conn.execute("BEGIN")
    conn.execute("TRUNCATE t")
    conn.execute("ROLLBACK")
    assert current_seq(conn) == s
    conn.execute("UPDATE t SET v = 'x' WHERE id = 3")
    m.apply({3: ("x",)})
    m.check(conn)


# ------------------------------------------------------------------------- ADD/DROP/RENAME


def test_add_column_without_and_with_default(conn):
    m = _t(conn, 10)
    conn.execute("ALTER TABLE t ADD COLUMN a int")
    conn.execute("ALTER TABLE t ADD COLUMN b text DEFAULT 'dflt'")  # missing value, no rewrite
    assert_verified(conn, "t")
    conn.execute("UPDATE t SET a = 1 WHERE id = 1")
    conn.execute("UPDATE t SET b = 'set' WHERE id = 2")
    conn.execute("INSERT INTO t VALUES (100, 'n', 5)")
    conn.execute("DELETE FROM t WHERE id = 3")
    assert_verified(conn, "t")
    assert conn.execute("SELECT a, b FROM t WHERE id IN (1, 4, 100) ORDER BY id").fetchall() == [
        (1, "dflt"), (None, "dflt"), (5, "dflt")]


def _row_events(snapshot):
    return [e for e in snapshot[1] if e[3] in ("i", "u", "d", "t")]


@pytest.mark.parametrize("column", [
    "r float8 DEFAULT random()",
    "s serial",
    "g int GENERATED ALWAYS AS (id * 2) STORED",
    "ident int GENERATED ALWAYS AS IDENTITY",
    "ident2 bigint GENERATED BY DEFAULT AS IDENTITY",
])
def test_add_column_with_per_row_values_converts_or_fails_clearly(conn, column):
    """A column whose existing rows get per-row values rewrites the table: either driftdb
    records no new row changes and verify passes, or it refuses clearly (0A000 with a HINT)."""
    m = _t(conn, 30)
    conn.execute("UPDATE t SET v = 'u' WHERE id < 5")
    m.apply({g: ("u",) for g in range(1, 5)})
    before = _snapshot(conn)
    try:
        conn.execute(f"ALTER TABLE t ADD COLUMN {column}")
    except psycopg.Error as e:
        assert e.sqlstate == "0A000", e
        assert '"t"' in e.diag.message_primary and e.diag.message_hint
        assert _snapshot(conn) == before
        m.check(conn)
        return
    assert _row_events(_snapshot(conn)) == _row_events(before), "a rewrite recorded row changes"
    assert_verified(conn, "t")
    conn.execute("UPDATE t SET v = 'after rewrite' WHERE id BETWEEN 3 AND 8")
    conn.execute("DELETE FROM t WHERE id = 20")
    conn.execute("INSERT INTO t (id, v) VALUES (99, 'new')")
    assert_verified(conn, "t")


def test_add_column_of_constrained_domain_with_constant_default(conn):
    """PostgreSQL rewrites the table for a default checked by a domain's constraints (no stored
    "missing" value); the default is constant, so driftdb records it as the value older rows
    read: no row events, and history replays to the live table."""
    m = _t(conn, 10)
    conn.execute("CREATE DOMAIN posint AS int CHECK (VALUE > 0)")
    before = _snapshot(conn)
    conn.execute("ALTER TABLE t ADD COLUMN c posint DEFAULT 1")  # PostgreSQL rewrites for this
    assert _row_events(_snapshot(conn)) == _row_events(before)
    assert_verified(conn, "t")
    conn.execute("UPDATE t SET c = 5 WHERE id = 1")
    assert_verified(conn, "t")
    conn.execute("VACUUM FULL t")
    assert_verified(conn, "t")


def test_constant_default_in_a_rewriting_alter_is_kept_and_per_row_value_named(conn):
    """One ALTER TABLE that rewrites for another reason stores no "missing" value for any column
    it adds: a constant default among them still works, and a refusal names the per-row one."""
    _t(conn, 10)
    conn.execute("CREATE DOMAIN posint AS int CHECK (VALUE > 0)")
    conn.execute("CREATE INDEX t_v ON t (v)")
    # the posint column makes PostgreSQL rewrite: neither column gets a stored missing value
    conn.execute("ALTER TABLE t ADD COLUMN d int DEFAULT 7, ADD COLUMN d2 posint DEFAULT 8")
    assert conn.execute("SELECT count(*) FROM pg_attribute WHERE attrelid = 't'::regclass "
                        "AND attname IN ('d', 'd2') AND NOT atthasmissing").fetchone() == (2,)
    conn.execute("CLUSTER t USING t_v")
    assert_verified(conn, "t")
    with pytest.raises(psycopg.errors.FeatureNotSupported) as exc:
        conn.execute("ALTER TABLE t ADD COLUMN e int DEFAULT 42, ADD COLUMN s serial")
    assert '"s"' in exc.value.diag.message_primary
    assert_verified(conn, "t")
    assert conn.execute("SELECT count(*) FROM t WHERE d = 7 AND d2 = 8").fetchone()[0] == 10


def test_identity_column_refusal_gives_a_recipe_that_works(conn):
    """ADD COLUMN ... AS IDENTITY would number the existing rows outside history: refused, naming
    the column, with a HINT whose steps (plain column, UPDATE, then ADD GENERATED ... AS
    IDENTITY) do work and are recorded."""
    _t(conn, 10)
    before = _snapshot(conn)
    with pytest.raises(psycopg.errors.FeatureNotSupported) as exc:
        conn.execute("ALTER TABLE t ADD COLUMN n int GENERATED BY DEFAULT AS IDENTITY")
    diag = exc.value.diag
    assert '"n"' in diag.message_primary and "identity column" in diag.message_detail
    assert "ADD GENERATED BY DEFAULT AS IDENTITY" in diag.message_hint
    assert _snapshot(conn) == before
    conn.execute("ALTER TABLE t ADD COLUMN n int")
    seq_before = current_seq(conn)
    conn.execute("UPDATE t SET n = id")
    assert current_seq(conn) == seq_before + 1
    assert sum(1 for e in events(conn, "t") if e[0] == seq_before + 1 and e[2] == "u") == 10
    conn.execute("ALTER TABLE t ALTER COLUMN n SET NOT NULL, ALTER COLUMN n ADD GENERATED BY DEFAULT AS IDENTITY (START WITH 11)")
    conn.execute("INSERT INTO t (id, v) VALUES (11, 'new')")
    assert conn.execute("SELECT n FROM t WHERE id = 11").fetchone() == (11,)
    assert_verified(conn, "t")


def test_generated_column_refusal_names_it_and_not_its_constant_neighbour(conn):
    """One ALTER adding a constant-default column and a generated column that uses it: the
    refusal names the generated one, says PostgreSQL 15 cannot make a column generated later,
    and changes nothing; the constant default alone is accepted. A table that has history but
    no rows takes the generated column."""
    _t(conn, 10)
    before = _snapshot(conn)
    with pytest.raises(psycopg.errors.FeatureNotSupported) as exc:
        conn.execute("ALTER TABLE t ADD COLUMN c int DEFAULT 42, ADD COLUMN x int GENERATED ALWAYS AS (c * 4) STORED")
    diag = exc.value.diag
    assert '"x"' in diag.message_primary and '"c"' not in diag.message_primary
    assert "generated column" in diag.message_detail
    assert "cannot make an existing column generated" in diag.message_hint
    assert _snapshot(conn) == before
    conn.execute("ALTER TABLE t ADD COLUMN c int DEFAULT 42")
    assert conn.execute("SELECT count(*) FROM t WHERE c = 42").fetchone() == (10,)
    assert_verified(conn, "t")
    conn.execute("DELETE FROM t")
    conn.execute("ALTER TABLE t ADD COLUMN x int GENERATED ALWAYS AS (c * 4) STORED")
    conn.execute("INSERT INTO t (id, v) VALUES (1, 'back')")
    assert conn.execute("SELECT c, x FROM t").fetchone() == (42, 168)
    assert_verified(conn, "t")


def test_set_unlogged_is_refused_for_a_versioned_table(conn):
    _t(conn, 5)
    before = _snapshot(conn)
    with pytest.raises(psycopg.errors.FeatureNotSupported):
        conn.execute("ALTER TABLE t SET UNLOGGED")
    assert conn.execute("SELECT relpersistence FROM pg_class WHERE oid = 't'::regclass").fetchone() == ("p",)
    assert _snapshot(conn) == before
    assert_verified(conn, "t")


def test_drop_and_rename_column(conn):
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, a text, b int, c text) USING driftdb")
    conn.execute("INSERT INTO t SELECT g, 'a', g, 'c' FROM generate_series(1, 10) g")
    conn.execute("UPDATE t SET b = b * 10 WHERE id <= 3")
    conn.execute("ALTER TABLE t DROP COLUMN b")
    assert_verified(conn, "t")
    conn.execute("UPDATE t SET a = 'a2' WHERE id = 1")
    conn.execute("ALTER TABLE t RENAME COLUMN c TO cc")
    conn.execute("ALTER TABLE t RENAME COLUMN a TO aa")
    assert_verified(conn, "t")
    conn.execute("UPDATE t SET cc = 'c2' WHERE id <= 5")
    conn.execute("INSERT INTO t (id, aa, cc) VALUES (11, 'x', 'y')")
    conn.execute("DELETE FROM t WHERE id = 2")
    conn.execute("ALTER TABLE t ADD COLUMN b int DEFAULT 7")  # same name as the dropped one
    conn.execute("UPDATE t SET b = 8 WHERE id = 3")
    assert_verified(conn, "t")
    assert conn.execute("SELECT id, aa, cc, b FROM t WHERE id IN (1, 3, 11) ORDER BY id").fetchall() == [
        (1, "a2", "c2", 7), (3, "a", "c2", 8), (11, "x", "y", 7)]


def test_rename_table_keeps_history(conn):
    m = _t(conn, 5)
    conn.execute("ALTER TABLE t RENAME TO t2")
    conn.execute("UPDATE t2 SET v = 'renamed' WHERE id = 1")
    assert len(ops_by_seq(conn, "t2")) == 2
    assert transactions(conn)[-1]["tables"] == ["t2"]
    assert_verified(conn, "t2")


@pytest.mark.parametrize("alter,probe", [
    ("ALTER TABLE t ALTER COLUMN n TYPE bigint", "SELECT n FROM t WHERE id = 1"),
    ("ALTER TABLE t ALTER COLUMN n TYPE text", "SELECT n FROM t WHERE id = 1"),
    ("ALTER TABLE t ALTER COLUMN n TYPE numeric(10,2)", "SELECT n FROM t WHERE id = 1"),
    ("ALTER TABLE t ALTER COLUMN s TYPE varchar(20)", "SELECT s FROM t WHERE id = 1"),  # no rewrite
    ("ALTER TABLE t ALTER COLUMN id TYPE bigint", "SELECT id FROM t WHERE id = 1"),  # the key
])
def test_alter_column_type_converts_or_fails_clearly(conn, alter, probe):
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, n int, s text) USING driftdb")
    conn.execute("INSERT INTO t SELECT g, g, 's' || g FROM generate_series(1, 20) g")
    conn.execute("UPDATE t SET n = n + 100 WHERE id <= 5")
    conn.execute("DELETE FROM t WHERE id = 20")
    before = _snapshot(conn)
    try:
        conn.execute(alter)
    except psycopg.Error as e:
        assert e.sqlstate == "0A000", f"ALTER COLUMN TYPE failed with {e.sqlstate}: {e}"
        assert "\"t\"" in e.diag.message_primary and e.diag.message_hint
        assert _snapshot(conn) == before
        assert_verified(conn, "t")
        return
    conn.execute(probe)
    assert_verified(conn, "t")
    conn.execute("UPDATE t SET s = s || '!' WHERE id IN (1, 6)")
    conn.execute("INSERT INTO t (id, n, s) VALUES (50, 50, 'x')")
    conn.execute("DELETE FROM t WHERE id = 2")
    assert_verified(conn, "t")


# ------------------------------------------------------------------------------- rewrites


@pytest.mark.parametrize("rewrite", ["VACUUM FULL t", "CLUSTER t USING t_pkey", "VACUUM (FULL, FREEZE) t"])
def test_rewrites_neither_lose_history_nor_add_events(conn, rewrite):
    m = _t(conn, 300)
    conn.execute("UPDATE t SET v = 'u' WHERE id % 3 = 0")
    m.apply({g: ("u",) for g in range(3, 301, 3)})
    conn.execute("DELETE FROM t WHERE id % 5 = 0")
    m.apply(deletes=range(5, 301, 5))
    before = _snapshot(conn)
    conn.execute(rewrite)
    assert _snapshot(conn) == before, f"{rewrite} changed the history"
    m.check(conn)
    # TIDs changed: later updates and deletes still find their rows' history
    conn.execute("UPDATE t SET v = 'after' WHERE id IN (1, 2, 3, 299)")
    m.apply({k: ("after",) for k in (1, 2, 3, 299)})
    conn.execute("DELETE FROM t WHERE id IN (4, 298)")
    m.apply(deletes=[4, 298])
    m.check(conn)


def test_cluster_inside_transaction_after_changes(conn):
    m = _t(conn, 50)
    conn.execute("CREATE INDEX t_v ON t (v)")
    with conn.transaction():
        conn.execute("UPDATE t SET v = 'z' || v WHERE id <= 10")
        conn.execute("INSERT INTO t VALUES (100, 'new')")
        conn.execute("DELETE FROM t WHERE id = 11")
        conn.execute("CLUSTER t USING t_v")
        conn.execute("UPDATE t SET v = 'twice' WHERE id IN (1, 100)")
        conn.execute("DELETE FROM t WHERE id = 2")
    assert_verified(conn, "t")
    ups = {g: (f"zv{g}",) for g in range(3, 11)}
    ups.update({1: ("twice",), 100: ("twice",)})
    m.apply(ups, deletes=[2, 11])
    m.check(conn)


def _keys_touched(conn, table, seq):
    return {e[3] for e in events(conn, table, seq - 1) if e[0] == seq and e[2] in "iud"}


def test_add_column_inside_transaction_that_changed_the_table(conn):
    """BEGIN; UPDATE t; ALTER TABLE t ADD COLUMN c int DEFAULT 1; UPDATE t; COMMIT."""
    m = _t(conn, 30)
    with conn.transaction():
        conn.execute("UPDATE t SET v = 'one' WHERE id <= 5")
        conn.execute("INSERT INTO t VALUES (31, 'ins')")
        conn.execute("DELETE FROM t WHERE id = 30")
        conn.execute("ALTER TABLE t ADD COLUMN c int DEFAULT 1")
        conn.execute("UPDATE t SET v = 'two', c = 2 WHERE id IN (1, 6, 31)")
        conn.execute("DELETE FROM t WHERE id = 7")
    assert_verified(conn, "t")
    seq = current_seq(conn)
    assert transactions(conn, seq - 1)[0]["tables"] == ["t"]
    assert _keys_touched(conn, "t", seq) == {mp_key(g) for g in (1, 2, 3, 4, 5, 6, 7, 30, 31)}
    rows = live(conn, "t", "id", "v, c")
    assert rows[1] == ("two", 2) and rows[2] == ("one", 1) and rows[31] == ("two", 2)
    assert 7 not in rows and 30 not in rows and rows[8] == ("v8", 1)
    conn.execute("UPDATE t SET c = 3 WHERE id = 8")
    conn.execute("ALTER TABLE t DROP COLUMN c")
    conn.execute("UPDATE t SET v = 'three' WHERE id = 8")
    assert_verified(conn, "t")


def test_drop_and_rename_column_inside_transaction_that_changed_the_table(conn):
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, a text, b int) USING driftdb")
    conn.execute("INSERT INTO t SELECT g, 'a', g FROM generate_series(1, 10) g")
    with conn.transaction():
        conn.execute("UPDATE t SET b = -b WHERE id <= 3")
        conn.execute("INSERT INTO t VALUES (11, 'n', 11)")
        conn.execute("ALTER TABLE t DROP COLUMN b")
        conn.execute("ALTER TABLE t RENAME COLUMN a TO aa")
        conn.execute("UPDATE t SET aa = 'x' WHERE id IN (2, 11)")
        conn.execute("DELETE FROM t WHERE id = 3")
    assert_verified(conn, "t")
    assert live(conn, "t", "id", "aa")[2] == ("x",)


def test_alter_with_per_row_default_inside_transaction_refused_or_verified(conn):
    m = _t(conn, 10)
    s = current_seq(conn)
    conn.execute("BEGIN")
    conn.execute("UPDATE t SET v = 'one' WHERE id <= 3")
    try:
        conn.execute("ALTER TABLE t ADD COLUMN r float8 DEFAULT random()")
    except psycopg.Error as e:
        assert e.sqlstate == "0A000", e
        conn.execute("ROLLBACK")
        assert current_seq(conn) == s
        m.check(conn)
        return
    conn.execute("UPDATE t SET v = 'two' WHERE id IN (1, 5)")
    conn.execute("COMMIT")
    assert_verified(conn, "t")


# ----------------------------------------------------------------------------- DROP TABLE


def test_drop_table_removes_its_history(conn):
    _t(conn, 10)
    conn.execute("CREATE TABLE keep (id int PRIMARY KEY) USING driftdb")
    with conn.transaction():
        conn.execute("INSERT INTO keep VALUES (1)")
        conn.execute("UPDATE t SET v = 'x' WHERE id = 1")
    tid = conn.execute("SELECT table_id FROM driftdb.tables WHERE relid = 't'::regclass").fetchone()[0]
    keep_events = events(conn, "keep")
    # a rolled-back DROP keeps everything
    conn.execute("BEGIN")
    conn.execute("DROP TABLE t")
    conn.execute("ROLLBACK")
    assert event_count(conn, "t") == 11
    assert_verified(conn, "t")
    conn.execute("DROP TABLE t")
    assert conn.execute("SELECT count(*) FROM driftdb.events WHERE table_id = %s", (tid,)).fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM driftdb.packs WHERE table_id = %s", (tid,)).fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM driftdb.tables WHERE table_id = %s", (tid,)).fetchone() == (0,)
    assert events(conn, "keep") == keep_events
    assert_verified(conn, "keep")
    # a new table of the same name starts a fresh history
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text) USING driftdb")
    conn.execute("INSERT INTO t VALUES (1, 'new')")
    assert [e[2] for e in events(conn, "t")] == ["i"]
    assert_verified(conn, "t")


def test_drop_table_in_the_transaction_that_wrote_it(conn):
    conn.execute("CREATE TABLE keep (id int PRIMARY KEY) USING driftdb")
    _t(conn, 3)
    s = current_seq(conn)
    with conn.transaction():
        conn.execute("INSERT INTO t VALUES (10, 'x')")
        conn.execute("INSERT INTO keep VALUES (1)")
        conn.execute("DROP TABLE t")
    tx = transactions(conn, s)
    assert len(tx) == 1 and tx[0]["tables"] == ["keep"]
    for h in ("events", "packs"):
        assert conn.execute(f"SELECT count(*) FROM driftdb.{h} e WHERE NOT EXISTS "
                            "(SELECT FROM driftdb.tables t WHERE t.table_id = e.table_id)").fetchone() == (0,)
    # a table created and dropped in one transaction leaves no seq
    s = current_seq(conn)
    with conn.transaction():
        conn.execute("CREATE TABLE tmp (id int PRIMARY KEY) USING driftdb")
        conn.execute("INSERT INTO tmp VALUES (1)")
        conn.execute("DROP TABLE tmp")
    assert current_seq(conn) == s


def test_drop_schema_cascade_removes_history(conn):
    conn.execute("CREATE SCHEMA s")
    conn.execute("CREATE TABLE s.a (id int PRIMARY KEY) USING driftdb")
    conn.execute("CREATE TABLE s.b (id int PRIMARY KEY) USING driftdb")
    conn.execute("INSERT INTO s.a VALUES (1)")
    conn.execute("INSERT INTO s.b VALUES (1)")
    _t(conn, 2)
    conn.execute("DROP SCHEMA s CASCADE")
    assert conn.execute("SELECT relid::text FROM driftdb.tables").fetchall() == [("t",)]
    assert event_count(conn) == 2
    assert_verified(conn, "t")


# ------------------------------------------------------------------ history is read-only


@pytest.mark.parametrize("sql", [
    "INSERT INTO driftdb.events VALUES (1, 999, 0, 'i', '\\x9101', '\\x00')",
    "UPDATE driftdb.events SET op = 'd'",
    "DELETE FROM driftdb.events",
    "TRUNCATE driftdb.events",
    "INSERT INTO driftdb.commits VALUES (999, now(), '1', 'x', 'x', 'x', '{1}')",
    "DELETE FROM driftdb.commits",
    "UPDATE driftdb.tables SET history_start_seq = 5",
    "COPY driftdb.events FROM STDIN",
])
def test_direct_writes_to_history_refused(conn, sql):
    m = _t(conn, 3)
    before = _snapshot(conn)
    with pytest.raises(psycopg.Error) as ei:
        if sql.startswith("COPY"):
            with conn.cursor() as cur:
                with cur.copy(sql) as cp:
                    cp.write_row((1, 999, 0, "i", b"\x91\x01", b"\x00"))
        else:
            conn.execute(sql)
    assert ei.value.sqlstate == "55000", ei.value
    assert "restore_mode" in (ei.value.diag.message_hint or "")
    assert _snapshot(conn) == before
    m.check(conn)


def test_restore_mode_is_superuser_only(db, roles):
    r = roles("plain")
    c = db.connect(user=r)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        c.execute("SET driftdb.restore_mode = on")


# --------------------------------------------------------------- SET ACCESS METHOD driftdb


def test_set_access_method_driftdb_records_existing_rows(conn):
    conn.execute("CREATE TABLE legacy (id int PRIMARY KEY, v text) USING heap")
    conn.execute("INSERT INTO legacy SELECT g, 'old' FROM generate_series(1, 100) g")
    conn.execute("UPDATE legacy SET v = 'older' WHERE id <= 10")
    s = current_seq(conn)
    conn.execute("ALTER TABLE legacy SET ACCESS METHOD driftdb")
    assert conn.execute(
        "SELECT a.amname FROM pg_class c JOIN pg_am a ON a.oid = c.relam WHERE c.oid = 'legacy'::regclass"
    ).fetchone() == ("driftdb",)
    tx = transactions(conn, s)
    assert len(tx) == 1 and tx[0]["tables"] == ["legacy"], tx
    conv = tx[0]["seq"]
    assert conn.execute(
        "SELECT history_start_seq FROM driftdb.tables WHERE relid = 'legacy'::regclass"
    ).fetchone() == (conv,)
    # the existing rows are the table's first versions (a schema event may come with them)
    ops = ops_by_seq(conn, "legacy", schema_events=False)
    assert ops == [{mp_key(g): "i" for g in range(1, 101)}]
    assert_verified(conn, "legacy")
    conn.execute("UPDATE legacy SET v = 'new' WHERE id = 1")
    conn.execute("DELETE FROM legacy WHERE id = 2")
    assert ops_by_seq(conn, "legacy", schema_events=False)[1:] == [{mp_key(1): "u"}, {mp_key(2): "d"}]
    assert_verified(conn, "legacy")
