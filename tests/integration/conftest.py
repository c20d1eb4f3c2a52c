"""Shared fixtures for driftdb's pytest tier.

Every session runs against a throwaway PostgreSQL 15 cluster started with
``scripts/pgcluster.sh`` (driftdb preloaded), in ``/tmp/driftdb-pytest-<random>`` on a free
port. The cluster is stopped and its directory removed when the session ends, also when tests
fail or the session is interrupted.

Fixtures
--------
``pg_cluster``       session: the shared cluster (``.datadir``, ``.port``, ``.log_path``,
                     ``.dsn()``, ``.connect()``, ``.restart()``).
``cluster_factory``  session: ``cluster_factory(extra_conf=[...])`` starts another throwaway
                     cluster (later conf lines win, so extra lines can override the defaults).
``db``               function: a fresh database with driftdb installed (a copy of a per-cluster
                     template made with ``CREATE EXTENSION driftdb``); ``db.connect()`` opens
                     autocommit psycopg connections (as many as a test needs, ``user=`` for other
                     roles), all closed and the database dropped at teardown.
``conn``             function: one autocommit connection to ``db``.
``roles``            function: ``roles("alice")`` creates a LOGIN role with a unique name, dropped
                     (with everything it owns) at teardown.

Helpers (importable: ``from conftest import ...``)
-------
``outcome(conn, sql, params)``  ("ok", rows) or ("error", sqlstate): lets heap and driftdb be
                                compared also where a statement is expected to fail.
``run_on_both(db, setup, queries)``  runs the same scenario (SQL with ``{am}`` placeholders) in
                                a heap schema and a driftdb schema and returns both outcomes.
``assert_parity(db, setup, queries)``  the same, asserting the outcomes are identical.
``explain(conn, sql)``          the plan as one string (EXPLAIN (COSTS OFF)).
``in_background(fn, ...)``      run a (blocking) call in a worker thread; returns a Future.
``wait_until_blocked(obs, pid)`` poll pg_stat_activity until backend ``pid`` waits on a lock.
``wait_for(predicate)``         poll until true.

Markers: ``slow`` (restarts a server or starts an extra one; deselect with ``-m "not slow"``).
"""
from __future__ import annotations

import atexit
import contextlib
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import psycopg
import pytest

ROOT = Path(__file__).resolve().parents[2]
PGCLUSTER = ROOT / "scripts" / "pgcluster.sh"
PGBIN = Path(os.environ.get("PGBIN", "/usr/lib/postgresql/15/bin"))

# Lines added to every throwaway cluster's postgresql.conf (after pgcluster.sh's own).
DEFAULT_CONF = [
    "max_connections = 50",
    "fsync = off",  # throwaway data: speed over durability (a clean restart still keeps rows)
    "max_worker_processes = 16",
    "max_parallel_workers = 8",
    "max_parallel_workers_per_gather = 2",
    "shared_buffers = 64MB",
    "log_min_messages = warning",
    "log_line_prefix = '%m [%p] %d '",
    # no background maintenance rounds: driftdb.maintain() would compact/snapshot/expire history
    # under the tests' feet (test_maintenance_worker.py turns them on in clusters of its own)
    "driftdb.maintenance_naptime = 0",
]
# Extra lines from the environment, e.g. a private build:
#   DRIFTDB_EXTRA_CONF="dynamic_library_path = '/path/to/dir:$libdir'"   (';;'-separated)
DEFAULT_CONF += [l for l in os.environ.get("DRIFTDB_EXTRA_CONF", "").split(";;") if l.strip()]


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds (deselect with -m 'not slow')")


# --------------------------------------------------------------------------------------------
# Clusters
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pkglibdir() -> Path:
    out = subprocess.run([str(PGBIN / "pg_config"), "--pkglibdir"], capture_output=True, text=True)
    return Path(out.stdout.strip() or "/usr/lib/postgresql/15/lib")


def _wait_for_library(timeout: float = 90.0) -> None:
    """The lead reinstalls driftdb from time to time; don't start a server mid-install."""
    lib = _pkglibdir() / "driftdb.so"
    deadline = time.monotonic() + timeout
    while not lib.exists() and time.monotonic() < deadline:
        time.sleep(1)


class Cluster:
    """A throwaway cluster managed through scripts/pgcluster.sh."""

    def __init__(self, extra_conf: Sequence[str] = ()):
        self.datadir = Path(f"/tmp/driftdb-pytest-{secrets.token_hex(4)}")
        self.port = free_port()
        self.extra_conf = list(DEFAULT_CONF) + list(extra_conf)

    @property
    def log_path(self) -> Path:
        return self.datadir / "server.log"

    @property
    def socket_dir(self) -> Path:
        return self.datadir / "sock"

    def _script(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", str(PGCLUSTER), *args], capture_output=True, text=True, timeout=180
        )

    def start(self) -> None:
        _wait_for_library()
        last = None
        for _attempt in range(3):
            res = self._script("start", str(self.datadir), str(self.port), *self.extra_conf)
            if res.returncode == 0:
                return
            last = res
            # Port taken between free_port() and the start, or driftdb.so mid-reinstall: retry.
            if "could not bind" in (res.stderr + self.log_tail()) and not (self.datadir / "postmaster.pid").exists():
                self.stop()
                shutil.rmtree(self.datadir, ignore_errors=True)
                self.port = free_port()
            time.sleep(2)
            _wait_for_library()
        raise RuntimeError(
            f"pgcluster.sh start {self.datadir} {self.port} failed:\n{last.stdout}\n{last.stderr}\n"
            f"--- server.log ---\n{self.log_tail()}"
        )

    def stop(self) -> None:
        self._script("stop", str(self.datadir))

    def restart(self) -> None:
        self.stop()
        self.start()

    def is_running(self) -> bool:
        return self._script("status", str(self.datadir)).returncode == 0

    def destroy(self) -> None:
        if not self.datadir.exists():
            return
        try:
            self.stop()
        finally:
            shutil.rmtree(self.datadir, ignore_errors=True)
            Path(f"{self.datadir}.initdb.log").unlink(missing_ok=True)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def conninfo(self, dbname: str = "postgres", user: str = "postgres", **kw) -> str:
        parts = {"host": "127.0.0.1", "port": self.port, "dbname": dbname, "user": user,
                 "connect_timeout": 10, **kw}
        return " ".join(f"{k}={v}" for k, v in parts.items())

    dsn = conninfo

    def connect(self, dbname: str = "postgres", user: str = "postgres", autocommit: bool = True,
                **kw) -> psycopg.Connection:
        return psycopg.connect(self.conninfo(dbname, user, **kw), autocommit=autocommit)


@pytest.fixture(scope="session")
def cluster_factory():
    """Start extra throwaway clusters: ``cluster_factory(extra_conf=[...])``."""
    made: list[Cluster] = []

    def make(extra_conf: Sequence[str] = ()) -> Cluster:
        c = Cluster(extra_conf)
        made.append(c)
        atexit.register(c.destroy)  # also if the session dies without running finalizers
        c.start()
        return c

    yield make
    for c in made:
        c.destroy()


@pytest.fixture(scope="session")
def pg_cluster(cluster_factory) -> Cluster:
    return cluster_factory()


# --------------------------------------------------------------------------------------------
# Per-test databases
# --------------------------------------------------------------------------------------------


@dataclass
class Database:
    cluster: Cluster
    name: str
    _conns: list = field(default_factory=list)

    def conninfo(self, user: str = "postgres", **kw) -> str:
        return self.cluster.conninfo(self.name, user, **kw)

    def connect(self, user: str = "postgres", autocommit: bool = True, **kw) -> psycopg.Connection:
        conn = self.cluster.connect(self.name, user, autocommit=autocommit, **kw)
        self._conns.append(conn)
        return conn

    def close_all(self) -> None:
        for c in self._conns:
            try:
                c.close()
            except Exception:
                pass
        self._conns.clear()


def _db_name(nodeid: str) -> str:
    base = re.sub(r"[^a-z0-9]+", "_", nodeid.split("::")[-1].lower()).strip("_")[:40]
    return f"t_{base}_{secrets.token_hex(3)}"


TEMPLATE_DB = "driftdb_pytest_template"


def _template(cluster: Cluster) -> str | None:
    """A template database with driftdb created, made once per cluster: copying it is about
    twice as fast as CREATE DATABASE + CREATE EXTENSION, and its SQL objects match the library
    the running server loaded at start (the lead may reinstall driftdb during a session)."""
    if getattr(cluster, "_template", None) is None:
        try:
            with cluster.connect() as admin:
                admin.execute(f'CREATE DATABASE "{TEMPLATE_DB}"')
            with cluster.connect(TEMPLATE_DB) as c:
                c.execute("CREATE EXTENSION driftdb")
            cluster._template = TEMPLATE_DB
        except psycopg.Error:
            cluster._template = ""
    return cluster._template or None


def create_database(cluster: Cluster, name: str, extension: bool = True) -> None:
    """CREATE DATABASE ``name``; with ``extension``, driftdb is installed in it."""
    tmpl = _template(cluster) if extension else None
    with cluster.connect() as admin:
        if tmpl:
            admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{tmpl}" STRATEGY FILE_COPY')
            return
        admin.execute(f'CREATE DATABASE "{name}"')
    if extension:
        with cluster.connect(name) as c:
            c.execute("CREATE EXTENSION driftdb")


@contextlib.contextmanager
def module_database(cluster: Cluster, prefix: str):
    """A database of its own (driftdb installed) for a module-scoped fixture: yields a
    connection to it; afterwards the connection is closed and the database dropped."""
    name = f"{prefix}_{secrets.token_hex(3)}"
    create_database(cluster, name)
    conn = cluster.connect(name)
    try:
        yield conn
    finally:
        conn.close()
        drop_database(cluster, name)


def drop_database(cluster: Cluster, name: str) -> None:
    try:
        with cluster.connect() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except psycopg.Error:
        pass  # the server may be down (a failed restart test); the whole cluster goes anyway


@pytest.fixture
def db(pg_cluster, request) -> Database:
    """A fresh database with driftdb created; connections from ``db.connect()`` are autocommit."""
    name = _db_name(request.node.nodeid)
    create_database(pg_cluster, name)
    d = Database(pg_cluster, name)
    yield d
    if not pg_cluster.is_running():  # a test that restarts the server may have failed midway
        pg_cluster.start()
    # Drop first: WITH (FORCE) terminates the test's backends, which also releases any statement
    # a background thread is still blocked in; then the client side is closed.
    drop_database(pg_cluster, name)
    d.close_all()


@pytest.fixture
def conn(db) -> psycopg.Connection:
    """One autocommit connection to the test's database."""
    return db.connect()


@pytest.fixture
def roles(pg_cluster):
    """Create cluster-wide roles for a test; they are dropped afterwards.

    ``name = roles("alice")`` returns a unique role name (roles are global, tests share a cluster).
    """
    made: list[str] = []

    def make(prefix: str = "r") -> str:
        name = f"{prefix}_{secrets.token_hex(3)}"
        with pg_cluster.connect() as c:
            c.execute(f'CREATE ROLE "{name}" LOGIN')
        made.append(name)
        return name

    yield make
    if made and pg_cluster.is_running():
        with pg_cluster.connect() as c:
            dbs = [r[0] for r in c.execute(
                "SELECT datname FROM pg_database WHERE datallowconn AND datname <> 'template0'")]
        for d in dbs:
            try:
                with pg_cluster.connect(d) as c:
                    for r in made:
                        c.execute(f'DROP OWNED BY "{r}" CASCADE')
            except psycopg.Error:
                pass
        with pg_cluster.connect() as c:
            for r in made:
                c.execute(f'DROP ROLE IF EXISTS "{r}"')


# --------------------------------------------------------------------------------------------
# Comparing heap and driftdb
# --------------------------------------------------------------------------------------------

AMS = ("heap", "driftdb")


def outcome(conn: psycopg.Connection, sql: str, params=None):
    """Run one statement: ("ok", rows) — rows is None when it returns none — or ("error", sqlstate).

    In autocommit mode a failed statement leaves nothing behind; inside an explicit transaction
    the caller decides what to do with the aborted transaction.
    """
    try:
        cur = conn.execute(sql, params)
        rows = cur.fetchall() if cur.description is not None else None
        return ("ok", rows)
    except psycopg.Error as e:
        return ("error", e.sqlstate)


def _schema(am: str) -> str:
    return f"parity_{am}"


def run_scenario(conn: psycopg.Connection, am: str, setup: str | Iterable[str],
                 queries: Iterable[str]) -> list:
    """Run ``setup`` (must succeed) then ``queries`` (outcomes recorded) in a schema of its own.

    ``{am}`` in the SQL is replaced by the access method; tables are created unqualified, so
    they land in the scenario's schema (first on search_path).
    """
    schema = _schema(am)
    conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    conn.execute(f"CREATE SCHEMA {schema}")
    conn.execute(f"SET search_path = {schema}, public")
    steps = [setup] if isinstance(setup, str) else list(setup)
    for s in steps:
        conn.execute(s.replace("{am}", am))
    return [outcome(conn, q.replace("{am}", am)) for q in queries]


def run_on_both(db: Database, setup, queries) -> dict:
    """The same scenario on heap and on driftdb, each on its own connection."""
    queries = list(queries)
    results = {}
    for am in AMS:
        c = db.connect()
        results[am] = run_scenario(c, am, setup, queries)
    return results


def assert_parity(db: Database, setup, queries) -> list:
    """Run on both and assert identical outcomes query by query; returns the heap outcomes."""
    queries = list(queries)
    res = run_on_both(db, setup, queries)
    for q, h, d in zip(queries, res["heap"], res["driftdb"]):
        assert d == h, f"driftdb differs from heap for:\n  {q}\nheap:    {h!r}\ndriftdb: {d!r}"
    return res["heap"]


def explain(conn: psycopg.Connection, sql: str, params=None) -> str:
    rows = conn.execute(f"EXPLAIN (COSTS OFF) {sql}", params).fetchall()
    return "\n".join(r[0] for r in rows)


def table_am(conn: psycopg.Connection, table: str) -> str | None:
    row = conn.execute(
        "SELECT a.amname FROM pg_class c LEFT JOIN pg_am a ON a.oid = c.relam WHERE c.oid = %s::regclass",
        (table,),
    ).fetchone()
    return row[0]


# --------------------------------------------------------------------------------------------
# Concurrency helpers
# --------------------------------------------------------------------------------------------

import concurrent.futures as _futures  # noqa: E402

_pool = _futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="sql")


def in_background(fn, *args, **kwargs) -> _futures.Future:
    """Run ``fn`` in a worker thread (e.g. a statement that is expected to block)."""
    return _pool.submit(fn, *args, **kwargs)


def backend_pid(conn: psycopg.Connection) -> int:
    """The server pid of ``conn``, read from libpq without a round trip: safe to call while
    another thread is running a (blocked) statement on ``conn`` — a query would wait for the
    connection's lock, i.e. forever."""
    return conn.info.backend_pid


def wait_until_blocked(observer: psycopg.Connection, pid, timeout: float = 15.0) -> None:
    """Poll until backend ``pid`` (or a connection's backend) waits on a heavyweight lock
    (a row lock waits on the other transaction's xid)."""
    if isinstance(pid, psycopg.Connection):
        pid = backend_pid(pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = observer.execute(
            "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)
        ).fetchone()
        if row and row[0] == "Lock":
            return
        time.sleep(0.02)
    raise AssertionError(f"backend {pid} never blocked on a lock within {timeout}s")


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = predicate()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
