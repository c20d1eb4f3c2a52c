"""pg_dump / pg_restore (issue 3, item 9; DESIGN-BRIEF §2.4): a restore into a fresh database
keeps every table's rows and history exactly — same seqs, timestamps, transactions, events —
with one documented connection option (driftdb.restore_mode=on); a restore without it fails
loudly."""
from __future__ import annotations

import os
import secrets
import subprocess

import pytest

from conftest import PGBIN, drop_database
from history_model import assert_verified, current_seq, transactions

TABLES = ["a", "b", "c", "d", '"Mixed Case"', "late"]


def _populate(conn, role):
    conn.execute("SET application_name = 'populate'")
    conn.execute("CREATE TABLE a (id int PRIMARY KEY, v text) USING driftdb")
    conn.execute(
        "CREATE TABLE b (k1 text, k2 int, amount numeric(12,2), at timestamptz, doc jsonb, "
        "tags text[], PRIMARY KEY (k1, k2)) USING driftdb"
    )
    conn.execute("CREATE TABLE c (x int, y text) USING driftdb")
    conn.execute("ALTER TABLE c REPLICA IDENTITY FULL")
    conn.execute("CREATE TABLE d (id int PRIMARY KEY, a_id int REFERENCES a ON DELETE CASCADE) USING driftdb")
    conn.execute('CREATE TABLE "Mixed Case" (id int PRIMARY KEY, big text) USING driftdb')
    conn.execute("CREATE TABLE gone (id int PRIMARY KEY) USING driftdb")
    conn.execute("CREATE TABLE plain_heap (id int PRIMARY KEY, v text) USING heap")
    conn.execute(f'GRANT ALL ON a, b, c, d, "Mixed Case" TO "{role}"')
    # loaded before its key: lookups after the key was added read the key index from there on
    conn.execute("CREATE TABLE late (id int NOT NULL, v text) USING driftdb")
    conn.execute("INSERT INTO late SELECT g, 'l' || g FROM generate_series(1, 40) g")
    conn.execute("ALTER TABLE late ADD PRIMARY KEY (id)")
    conn.execute("UPDATE late SET v = 'keyed' WHERE id IN (3, 4)")
    conn.execute("DELETE FROM late WHERE id = 5")
    assert conn.execute("SELECT keyed_from > 0 FROM driftdb.tables WHERE relid = 'late'::regclass").fetchone() == (True,)

    conn.execute("INSERT INTO a SELECT g, 'a' || g FROM generate_series(1, 200) g")
    conn.execute("INSERT INTO gone VALUES (1), (2)")
    with conn.transaction():
        conn.execute(
            "INSERT INTO b SELECT 'k' || (g % 7), g, g * 1.25, '2024-01-01 00:00+00'::timestamptz + g * interval '1 hour', "
            "jsonb_build_object('g', g), ARRAY['t' || g, NULL] FROM generate_series(1, 50) g"
        )
        conn.execute("INSERT INTO c VALUES (1, 'dup'), (1, 'dup'), (2, NULL)")
    conn.execute("INSERT INTO d SELECT g, g FROM generate_series(1, 30) g")
    conn.execute("UPDATE a SET v = v || '!' WHERE id % 10 = 0")
    conn.execute("DELETE FROM a WHERE id BETWEEN 5 AND 9")  # cascades into d
    conn.execute("UPDATE a SET id = 1000 WHERE id = 200")
    conn.execute('INSERT INTO "Mixed Case" VALUES (1, repeat(\'x\', 100000)), (2, \'small\')')
    conn.execute(f'SET ROLE "{role}"')
    conn.execute("UPDATE b SET amount = amount + 1, doc = doc || '{\"upd\": true}' WHERE k2 <= 10")
    conn.execute("DELETE FROM c WHERE ctid = (SELECT min(ctid) FROM c)")
    conn.execute("RESET ROLE")
    conn.execute("TRUNCATE d")
    conn.execute("INSERT INTO d VALUES (1, 1), (2, 2)")
    conn.execute("ALTER TABLE a ADD COLUMN extra int DEFAULT 7")
    conn.execute("UPDATE a SET extra = 8 WHERE id = 1")
    conn.execute("ALTER TABLE b DROP COLUMN tags")
    conn.execute("UPDATE b SET amount = 0 WHERE k2 = 50")
    conn.execute("DROP TABLE gone")
    conn.execute('UPDATE "Mixed Case" SET big = big || \'y\' WHERE id = 1')
    conn.execute("INSERT INTO plain_heap VALUES (1, 'heap')")
    with conn.transaction():
        conn.execute("INSERT INTO a VALUES (2000, 'last', 1)")
        conn.execute("UPDATE b SET amount = -1 WHERE k2 = 1")
    # time travel objects that must survive too: a snapshot, and a view reading the past
    conn.execute("SELECT driftdb.snapshot('a')")
    conn.execute("UPDATE a SET v = 'after snapshot' WHERE id = 3")
    conn.execute("CREATE VIEW a_at_3 AS SELECT id, v FROM driftdb.as_of(NULL::a, 3::bigint)")


def _state(conn):
    """Everything that must survive: audit trail, registry, events, live rows, current_seq."""
    tx = conn.execute(
        'SELECT seq, committed_at, xid::text, committed_by, "session_user", application_name, '
        "tables::text[] FROM driftdb.transactions ORDER BY seq"
    ).fetchall()
    reg = conn.execute(
        "SELECT table_id, relid::text, registered_seq, history_start_seq, key_attnums, keyed_from FROM driftdb.tables ORDER BY table_id"
    ).fetchall()
    ev = conn.execute(
        "SELECT t.relid::text, e.seq, e.ord, e.op::text, e.key, e.frame FROM driftdb.events e "
        "JOIN driftdb.tables t USING (table_id) ORDER BY e.seq, e.ord, t.relid::text"
    ).fetchall()
    rows = {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() for t in TABLES + ["plain_heap"]}
    # time travel: the same answers at every seq, the same versions and changes
    top = current_seq(conn)
    as_of = {
        (t, n): conn.execute(f"SELECT x::text FROM driftdb.as_of(NULL::{t}, %s::bigint) x ORDER BY 1", (n,)).fetchall()
        for t in TABLES for n in range(0, top + 2)
    }
    # key lookups and a range of the table keyed since a change (key index and live rows)
    late = {
        n: (conn.execute("SELECT x::text FROM driftdb.as_of(NULL::late, %s::bigint) x WHERE id IN (1, 3, 4, 5, 40) ORDER BY 1", (n,)).fetchall(),
            conn.execute("SELECT x::text FROM driftdb.as_of(NULL::late, %s::bigint) x WHERE id BETWEEN 2 AND 6 ORDER BY 1", (n,)).fetchall())
        for n in range(0, top + 2)
    }
    versions = {
        t: conn.execute(f"SELECT seq_start, seq_end, system_time_start::text, system_time_end::text, data::text FROM driftdb.versions(NULL::{t}) ORDER BY 1, 5").fetchall()
        for t in TABLES
    }
    changes = {
        t: conn.execute(f"SELECT seq, committed_at, committed_by, operation, old_data::text, new_data::text FROM driftdb.changes(NULL::{t}) ORDER BY 1, 4, 5, 6").fetchall()
        for t in TABLES
    }
    view = conn.execute("SELECT * FROM a_at_3 ORDER BY 1").fetchall()
    snaps = conn.execute(
        "SELECT t.relid::text, s.seq, s.block, s.nrows, s.data FROM driftdb.snapshots s JOIN driftdb.tables t USING (table_id) ORDER BY 1, 2, 3"
    ).fetchall()
    return {"transactions": tx, "tables": reg, "events": ev, "rows": rows, "current_seq": top,
            "as_of": as_of, "late": late, "versions": versions, "changes": changes, "view": view, "snapshots": snaps}


def _run(cmd, env_extra=None):
    env = dict(os.environ)
    env.pop("PGOPTIONS", None)
    env.update(env_extra or {})
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)


def _conn_args(cluster):
    return ["-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres"]


@pytest.fixture
def dumped(db, roles, tmp_path):
    role = roles("auditor")
    conn = db.connect()
    _populate(conn, role)
    state = _state(conn)
    assert len(state["transactions"]) >= 15
    assert {e[3] for e in state["events"]} >= {"i", "u", "d", "t"}
    for t in TABLES:
        assert_verified(conn, t)
    dump = tmp_path / "db.dump"
    res = _run([str(PGBIN / "pg_dump"), "-Fc", "-f", str(dump), *_conn_args(db.cluster), db.name])
    assert res.returncode == 0, res.stderr
    plain = tmp_path / "db.sql"
    res = _run([str(PGBIN / "pg_dump"), "-Fp", "-f", str(plain), *_conn_args(db.cluster), db.name])
    assert res.returncode == 0, res.stderr
    return {"state": state, "dump": dump, "plain": plain, "role": role}


@pytest.fixture
def fresh_db(pg_cluster):
    names = []

    def make():
        name = f"t_restore_{secrets.token_hex(4)}"
        with pg_cluster.connect() as c:
            c.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        names.append(name)
        return name

    yield make
    for n in names:
        drop_database(pg_cluster, n)


RESTORE_OPT = {"PGOPTIONS": "-c driftdb.restore_mode=on"}


@pytest.mark.parametrize("mode", ["serial", "jobs2", "plain_psql"])
def test_restore_keeps_history_exactly(pg_cluster, dumped, fresh_db, mode):
    target = fresh_db()
    if mode == "plain_psql":
        cmd = [str(PGBIN / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(dumped["plain"]),
               *_conn_args(pg_cluster), target]
    else:
        cmd = [str(PGBIN / "pg_restore"), *(["-j", "2"] if mode == "jobs2" else []),
               "-d", target, *_conn_args(pg_cluster), str(dumped["dump"])]
    res = _run(cmd, RESTORE_OPT)
    assert res.returncode == 0, res.stderr
    assert "ERROR" not in res.stderr, res.stderr
    with pg_cluster.connect(target) as c:
        got = _state(c)
        before = dumped["state"]
        for k in ("transactions", "tables", "events", "current_seq"):
            assert got[k] == before[k], f"{k} differs after restore ({mode})"
        for t, rows in before["rows"].items():
            assert got["rows"][t] == rows, f"rows of {t} differ after restore ({mode})"
        for t in TABLES:
            assert_verified(c, t)
        # history goes on where it stopped
        old = got["current_seq"]
        c.execute("UPDATE a SET v = 'after restore' WHERE id = 1")
        tx = transactions(c, old)
        assert [x["seq"] for x in tx] == [old + 1] and tx[0]["tables"] == ["a"]
        # a new driftdb table gets a table id of its own
        c.execute("CREATE TABLE fresh (id int PRIMARY KEY) USING driftdb")
        c.execute("INSERT INTO fresh VALUES (1)")
        ids = [r[0] for r in c.execute("SELECT table_id FROM driftdb.tables")]
        assert len(ids) == len(set(ids)) == len(before["tables"]) + 1
        assert transactions(c, old + 1)[0]["tables"] == ["fresh"]
        for t in TABLES + ["fresh"]:
            assert_verified(c, t)


@pytest.mark.parametrize("mode", ["serial", "jobs2", "plain_psql"])
def test_restore_without_restore_mode_fails_loudly(pg_cluster, dumped, fresh_db, mode):
    target = fresh_db()
    if mode == "plain_psql":
        cmd = [str(PGBIN / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(dumped["plain"]),
               *_conn_args(pg_cluster), target]
    else:
        cmd = [str(PGBIN / "pg_restore"), *(["-j", "2"] if mode == "jobs2" else []),
               "-d", target, *_conn_args(pg_cluster), str(dumped["dump"])]
    res = _run(cmd)
    assert res.returncode != 0, f"restore without driftdb.restore_mode succeeded:\n{res.stderr}"
    assert "driftdb.restore_mode" in res.stderr, res.stderr


def test_single_transaction_restore_without_restore_mode_leaves_nothing(pg_cluster, dumped, fresh_db):
    """With --single-transaction the failed restore rolls back completely: no tables, no
    history stamped for the restored rows."""
    target = fresh_db()
    res = _run([str(PGBIN / "pg_restore"), "--single-transaction", "-d", target,
                *_conn_args(pg_cluster), str(dumped["dump"])])
    assert res.returncode != 0
    assert "driftdb.restore_mode" in res.stderr, res.stderr
    with pg_cluster.connect(target) as c:
        assert c.execute("SELECT count(*) FROM pg_extension WHERE extname = 'driftdb'").fetchone() == (0,)
        assert c.execute("SELECT to_regclass('public.a')").fetchone() == (None,)


def test_restore_mode_is_off_by_default_and_records_nothing(db):
    c = db.connect()
    assert c.execute("SHOW driftdb.restore_mode").fetchone() == ("off",)
    c.execute("CREATE TABLE t (id int PRIMARY KEY) USING driftdb")
    # in restore mode, writes are not recorded (their history arrives with the dump)
    c.execute("SET driftdb.restore_mode = on")
    c.execute("INSERT INTO t VALUES (1)")
    c.execute("RESET driftdb.restore_mode")
    assert current_seq(c) == 0
