"""The extension itself: what CREATE EXTENSION creates, DROP EXTENSION, the preload requirement."""
import psycopg
import pytest

from conftest import create_database, drop_database
from history_model import assert_verified


def test_create_extension_creates_schema_and_access_method(conn):
    assert conn.execute(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
        "WHERE e.extname = 'driftdb'"
    ).fetchone() == ("driftdb",)
    assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'driftdb'").fetchone() == (1,)
    row = conn.execute(
        "SELECT amtype, amhandler::regproc::text FROM pg_am WHERE amname = 'driftdb'"
    ).fetchone()
    assert row is not None, "access method driftdb missing from pg_am"
    assert row[0] == "t"
    assert row[1] == "driftdb.driftdb_am_handler"
    # The access method belongs to the extension (so DROP EXTENSION takes it away).
    assert conn.execute(
        "SELECT count(*) FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid "
        "WHERE e.extname = 'driftdb' AND d.classid = 'pg_am'::regclass "
        "AND d.objid = (SELECT oid FROM pg_am WHERE amname = 'driftdb') AND d.deptype = 'e'"
    ).fetchone() == (1,)


def test_create_extension_twice_fails_cleanly(conn):
    with pytest.raises(psycopg.errors.DuplicateObject):
        conn.execute("CREATE EXTENSION driftdb")
    conn.execute("CREATE EXTENSION IF NOT EXISTS driftdb")


def test_drop_extension(conn):
    conn.execute("CREATE TABLE t (id int) USING driftdb")
    conn.execute("INSERT INTO t VALUES (1)")  # this session now knows the catalog's OIDs
    # A driftdb table depends on the access method: plain DROP refuses.
    with pytest.raises(psycopg.errors.DependentObjectsStillExist):
        conn.execute("DROP EXTENSION driftdb")
    conn.execute("DROP TABLE t")
    conn.execute("DROP EXTENSION driftdb")
    assert conn.execute("SELECT count(*) FROM pg_am WHERE amname = 'driftdb'").fetchone() == (0,)
    # The schema named in driftdb.control is created by CREATE EXTENSION but, as PostgreSQL 15
    # does for every such extension, is not an extension member, so it may stay behind — empty.
    assert conn.execute(
        "SELECT (SELECT count(*) FROM pg_class WHERE relnamespace = n.oid)"
        "     + (SELECT count(*) FROM pg_proc WHERE pronamespace = n.oid)"
        "     + (SELECT count(*) FROM pg_type WHERE typnamespace = n.oid) "
        "FROM pg_namespace n WHERE nspname = 'driftdb'"
    ).fetchall() in ([], [(0,)])
    assert conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'driftdb'").fetchone() == (0,)
    with pytest.raises(psycopg.errors.UndefinedObject):
        conn.execute("CREATE TABLE t2 (id int) USING driftdb")
    # ... and it can come back.
    conn.execute("CREATE EXTENSION driftdb")
    conn.execute("CREATE TABLE t2 (id int) USING driftdb")
    conn.execute("INSERT INTO t2 VALUES (1)")
    assert conn.execute("SELECT * FROM t2").fetchall() == [(1,)]
    # the same session reads the new extension's history, planned by the history scan (no
    # stale OIDs of the dropped extension's objects)
    assert conn.execute("SELECT * FROM driftdb.as_of(NULL::t2, driftdb.current_seq())").fetchall() == [(1,)]
    plan = "\n".join(r[0] for r in conn.execute("EXPLAIN SELECT * FROM driftdb.as_of(NULL::t2, 1::bigint)"))
    assert "DriftDB History Scan" in plan, plan
    # ... and its commits went into the new extension's tables
    assert conn.execute("SELECT count(*) FROM driftdb.events").fetchone() == (1,)
    assert_verified(conn, "t2")


def test_drop_extension_cascade_drops_tables(conn):
    conn.execute("CREATE TABLE t (id int) USING driftdb")
    conn.execute("CREATE TABLE h (id int) USING heap")
    conn.execute("DROP EXTENSION driftdb CASCADE")
    assert conn.execute("SELECT to_regclass('t')").fetchone() == (None,)
    assert conn.execute("SELECT to_regclass('h')::text").fetchone() == ("h",)


def test_preloaded_library_is_loaded(conn):
    assert conn.execute("SHOW shared_preload_libraries").fetchone()[0] == "driftdb"


@pytest.mark.slow
def test_create_extension_without_preload_fails_clearly(cluster_factory):
    # pgcluster.sh always writes shared_preload_libraries = 'driftdb'; a later line wins.
    cluster = cluster_factory(extra_conf=["shared_preload_libraries = ''"])
    with cluster.connect() as c:
        assert c.execute("SHOW shared_preload_libraries").fetchone() == ("",)
    create_database(cluster, "nopreload", extension=False)
    try:
        with cluster.connect("nopreload") as c:
            with pytest.raises(psycopg.Error) as ei:
                c.execute("CREATE EXTENSION driftdb")
            err = ei.value
            assert err.sqlstate == "55000", (err.sqlstate, str(err))
            assert "shared_preload_libraries" in err.diag.message_primary
            assert err.diag.message_hint and "shared_preload_libraries" in err.diag.message_hint
            # Nothing half-created: no access method, no schema.
            assert c.execute("SELECT count(*) FROM pg_am WHERE amname = 'driftdb'").fetchone() == (0,)
            assert c.execute("SELECT count(*) FROM pg_extension WHERE extname = 'driftdb'").fetchone() == (0,)
            assert c.execute("SELECT 1").fetchone() == (1,)  # the backend survived the ERROR
        with cluster.connect("nopreload") as c:
            # LOAD (a fresh backend) is refused the same way.
            with pytest.raises(psycopg.Error) as ei2:
                c.execute("LOAD 'driftdb'")
            assert ei2.value.sqlstate == "55000"
            assert c.execute("SELECT 1").fetchone() == (1,)
    finally:
        drop_database(cluster, "nopreload")
    # The server did not crash.
    assert "terminated by signal" not in cluster.log_text()


def test_incomplete_catalog_refuses_writes_instead_of_dropping_history(db, conn):
    """A driftdb table whose history objects are incomplete (here: one renamed, as a database
    created by another version of the extension would lack it) must refuse to commit changes,
    not commit them unrecorded; reads of history say what is wrong."""
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, v int) USING driftdb")
    conn.execute("INSERT INTO t VALUES (1, 1)")
    conn.execute("ALTER TABLE driftdb.segments RENAME TO segments_moved")
    other = db.connect()  # a new backend looks the catalog up afresh
    try:
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="catalog in this database is incomplete"):
            other.execute("INSERT INTO t VALUES (2, 2)")
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="incomplete"):
            other.execute("SELECT * FROM driftdb.as_of(NULL::t, 1::bigint)")
        assert other.execute("SELECT id FROM t ORDER BY id").fetchall() == [(1,)]
    finally:
        conn.execute("ALTER TABLE driftdb.segments_moved RENAME TO segments")
        other.close()
    conn.execute("INSERT INTO t VALUES (2, 2)")
    assert conn.execute("SELECT count(*) FROM driftdb.changes(NULL::t)").fetchone()[0] == 2
    assert_verified(conn, "t")

