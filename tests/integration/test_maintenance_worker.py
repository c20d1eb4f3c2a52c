"""The maintenance background worker (issue 5, item 5).

With driftdb preloaded, the "driftdb maintenance launcher" starts a "driftdb maintenance worker"
in one database at a time every ``driftdb.maintenance_naptime`` seconds; the worker calls
``driftdb.maintain()`` and logs each row it returns as
``driftdb maintenance: <db>.<table>: <action>: <detail>``.

Each test runs a throwaway cluster of its own (the session cluster keeps the rounds paused).
Where a test needs ``driftdb.maintain()`` to do something observable (count its calls, raise,
sleep), it installs a stand-in for it in its own database; the first test uses the real
function when the extension has one and a stand-in only when it has not.
"""
from __future__ import annotations

import re
import secrets
import time

import psycopg
import pytest

from conftest import create_database, wait_for

pytestmark = pytest.mark.slow

LAUNCHER = "driftdb maintenance launcher"
WORKER = "driftdb maintenance worker"
APPNAME = "driftdb maintenance"

# What every action line looks like (log_line_prefix first; %d is empty for background workers).
ACTION_LINE = re.compile(
    r"LOG:  driftdb maintenance: (?P<db>[^.\s]+)\.(?P<table>[^:\n]+): (?P<action>[^:\n]+)(?:: (?P<detail>[^\n]*))?$",
    re.M,
)
CRASH_MARKERS = ("terminated by signal", "was terminated", "reinitializing", "PANIC")


@pytest.fixture
def maint_cluster(cluster_factory):
    """``maint_cluster(naptime)``: a throwaway cluster with the rounds at ``naptime`` seconds
    (and function call counting on), destroyed at the end of the test."""
    made = []

    def make(naptime: int):
        c = cluster_factory(extra_conf=[f"driftdb.maintenance_naptime = {naptime}", "track_functions = 'all'"])
        made.append(c)
        with c.connect() as admin:
            defined = admin.execute(
                "SELECT count(*) FROM pg_settings WHERE name = 'driftdb.maintenance_naptime'"
            ).fetchone()[0]
        assert defined, "the driftdb library this server loaded has no maintenance worker (a stale install?)"
        return c

    yield make
    for c in made:
        c.destroy()


def new_database(cluster, prefix: str) -> str:
    name = f"{prefix}_{secrets.token_hex(3)}"
    create_database(cluster, name)
    return name


def has_maintain(conn) -> bool:
    return conn.execute("SELECT to_regprocedure('driftdb.maintain()') IS NOT NULL").fetchone()[0]


def install_maintain(conn, body: str, language: str = "sql") -> None:
    """Install a stand-in ``driftdb.maintain()`` in this database, replacing (and detaching from
    the extension) the real one if there is one."""
    if has_maintain(conn):
        member = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_depend WHERE classid = 'pg_proc'::regclass"
            " AND objid = 'driftdb.maintain()'::regprocedure AND deptype = 'e')"
        ).fetchone()[0]
        if member:
            conn.execute("ALTER EXTENSION driftdb DROP FUNCTION driftdb.maintain()")
        conn.execute("DROP FUNCTION driftdb.maintain()")
    conn.execute(
        "CREATE FUNCTION driftdb.maintain() RETURNS TABLE (table_name text, action text, detail text)"
        f" LANGUAGE {language} AS $body${body}$body$"
    )


# The worker calls driftdb.maintain() until it returns no row (the real one does one table's
# work per call): the stand-in reports an action on odd calls only, so each round makes two.
COUNTING_BODY = (
    "WITH c AS (INSERT INTO public.maintain_calls DEFAULT VALUES RETURNING n)"
    " SELECT 'probe'::text, 'test'::text, 'called ' || n FROM c WHERE n % 2 = 1"
)


def install_counting_maintain(conn) -> None:
    """A stand-in that records each call in public.maintain_calls and reports one action."""
    conn.execute("CREATE TABLE IF NOT EXISTS public.maintain_calls (n serial PRIMARY KEY, at timestamptz DEFAULT now())")
    install_maintain(conn, COUNTING_BODY)


def calls(conn) -> int:
    return conn.execute("SELECT count(*) FROM public.maintain_calls").fetchone()[0]


def maintain_calls_counted(conn) -> int:
    """driftdb.maintain() calls in this database according to the function statistics."""
    row = conn.execute(
        "SELECT calls FROM pg_stat_user_functions WHERE funcid = to_regprocedure('driftdb.maintain()')"
    ).fetchone()
    return row[0] if row else 0


def launcher_pids(obs) -> list[int]:
    return [r[0] for r in obs.execute(
        "SELECT pid FROM pg_stat_activity WHERE backend_type = %s AND application_name = %s AND datid IS NULL",
        (LAUNCHER, APPNAME),
    )]


def workers_in(obs, dbname: str) -> list[tuple]:
    return obs.execute(
        "SELECT pid, wait_event_type, wait_event FROM pg_stat_activity"
        " WHERE backend_type = %s AND application_name = %s AND datname = %s",
        (WORKER, APPNAME, dbname),
    ).fetchall()


def action_lines(cluster, dbname: str) -> list[re.Match]:
    return [m for m in ACTION_LINE.finditer(cluster.log_text()) if m["db"] == dbname]


def assert_no_crash(cluster) -> None:
    log = cluster.log_text()
    for marker in CRASH_MARKERS:
        assert marker not in log, f"{marker!r} in the server log:\n{cluster.log_tail(60)}"


# ---------------------------------------------------------------------------------------------


def test_workers_run_and_log(maint_cluster):
    """The launcher is there; a worker per database shows up in pg_stat_activity; the actions
    driftdb.maintain() reports are logged in the documented format."""
    c = maint_cluster(1)
    name = new_database(c, "maint_log")
    obs = c.connect()  # observer in "postgres": never blocked by the lock taken below
    conn = c.connect(name)
    try:
        stand_in = True
        install_counting_maintain(conn)

        pids = wait_for(lambda: launcher_pids(obs), what="the maintenance launcher")
        assert len(pids) == 1

        # Hold the worker at its first catalog read in this database so it can be seen.
        with c.connect(name, autocommit=False) as locker:
            locker.execute("LOCK TABLE pg_catalog.pg_extension IN ACCESS EXCLUSIVE MODE")
            seen = wait_for(lambda: workers_in(obs, name), what=f"a maintenance worker in {name}")
            assert len(seen) == 1
            assert seen[0][1] == "Lock"
            locker.rollback()

        wait_for(lambda: maintain_calls_counted(conn) >= 1, what="driftdb.maintain() to be called")
        if stand_in:
            lines = wait_for(lambda: action_lines(c, name), what="an action line in the log")
            m = lines[0]
            assert (m["table"], m["action"]) == ("probe", "test")
            assert re.fullmatch(r"called \d+", m["detail"])
            assert f"LOG:  driftdb maintenance: {name}.probe: test: called 1\n" in c.log_text()
            assert calls(conn) >= 1
        # databases without driftdb (postgres) or without work are skipped quietly
        assert "ERROR" not in c.log_text(), c.log_tail(60)
        assert launcher_pids(obs) == pids
    finally:
        conn.close()
        obs.close()
    assert_no_crash(c)


def test_naptime_zero_pauses_and_reload_resumes(maint_cluster):
    """naptime 0: the launcher idles and starts no worker; raising it with a reload (SIGHUP)
    starts the rounds; lowering it to 0 again pauses them. The launcher is never restarted."""
    c = maint_cluster(0)
    name = new_database(c, "maint_pause")
    obs = c.connect()
    conn = c.connect(name)
    try:
        install_counting_maintain(conn)
        pids = wait_for(lambda: launcher_pids(obs), what="the maintenance launcher")

        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            assert not workers_in(obs, name), "a maintenance worker ran with naptime 0"
            time.sleep(0.05)
        assert calls(conn) == 0
        assert not action_lines(c, name)

        obs.execute("ALTER SYSTEM SET driftdb.maintenance_naptime = 1")
        obs.execute("SELECT pg_reload_conf()")
        wait_for(lambda: calls(conn) >= 2, what="two maintenance rounds after the reload")
        wait_for(lambda: action_lines(c, name), what="an action line in the log")

        obs.execute("ALTER SYSTEM SET driftdb.maintenance_naptime = 0")
        obs.execute("SELECT pg_reload_conf()")
        time.sleep(2.5)  # a round already under way may still finish
        n = calls(conn)
        time.sleep(3.0)
        assert calls(conn) == n, "rounds went on after naptime was set back to 0"
        assert launcher_pids(obs) == pids
    finally:
        conn.close()
        obs.close()
    assert_no_crash(c)


def test_fast_shutdown_is_prompt_and_clean(maint_cluster):
    """pg_ctl stop -m fast while a worker is in the middle of a (long) driftdb.maintain():
    done within 10 s, the worker and the launcher exit, nothing crashes."""
    c = maint_cluster(1)
    name = new_database(c, "maint_stop")
    obs = c.connect()
    with c.connect(name) as conn:
        install_maintain(conn, "SELECT 'slow'::text, 'sleep'::text, pg_sleep(300)::text")
    wait_for(lambda: [w for w in workers_in(obs, name) if w[2] == "PgSleep"],
             what="a maintenance worker inside driftdb.maintain()")
    assert launcher_pids(obs)
    client = c.connect(name)  # an ordinary idle session as well

    t0 = time.monotonic()
    res = c._script("stop", str(c.datadir))
    elapsed = time.monotonic() - t0
    obs.close()
    client.close()
    assert res.returncode == 0, res.stderr
    assert elapsed < 10, f"pg_ctl stop -m fast took {elapsed:.1f}s"
    assert not c.is_running()

    log = c.log_text()
    assert "database system is shut down" in log
    assert f'terminating background worker "{WORKER}" due to administrator command' in log
    assert_no_crash(c)
    assert not action_lines(c, name)  # the interrupted call reported nothing


def test_error_in_one_database_does_not_stop_others(maint_cluster):
    """An ERROR in driftdb.maintain() of one database ends that worker only (logged, naming the
    database); the launcher stays and the rounds go on in the other databases."""
    c = maint_cluster(1)
    bad = new_database(c, "maint_bad")
    good = new_database(c, "maint_good")
    obs = c.connect()
    conn_bad = c.connect(bad)
    conn_good = c.connect(good)
    try:
        install_maintain(
            conn_bad,
            "BEGIN RAISE EXCEPTION 'maintenance exploded' USING DETAIL = 'by the test', ERRCODE = 'P0001'; END",
            language="plpgsql",
        )
        install_counting_maintain(conn_good)
        pids = wait_for(lambda: launcher_pids(obs), what="the maintenance launcher")

        error = f'ERROR:  driftdb maintenance of database "{bad}" failed: maintenance exploded'
        wait_for(lambda: error in c.log_text(), what="the ERROR of the failing database")
        after_first_error = calls(conn_good)
        wait_for(lambda: c.log_text().count(error) >= 3, timeout=30, what="three failing rounds")
        wait_for(lambda: calls(conn_good) >= after_first_error + 2, what="rounds in the healthy database")

        log = c.log_text()
        assert "DETAIL:  by the test" in log
        assert f'background worker "{WORKER}"' in log and "exited with exit code 1" in log
        assert launcher_pids(obs) == pids, "the launcher was restarted"
        assert action_lines(c, good)
        assert not action_lines(c, bad)
    finally:
        for x in (conn_bad, conn_good, obs):
            x.close()
    assert_no_crash(c)


def test_real_maintain_compacts_and_snapshots_by_policy(maint_cluster):
    """The worker with the real driftdb.maintain(): once enough old events wait, it compacts
    them (logged), takes a snapshot, and no AS OF result, digest or verify outcome changes."""
    c = maint_cluster(0)
    name = new_database(c, "maint_real")
    obs = c.connect()
    conn = c.connect(name)
    try:
        assert has_maintain(conn)
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v int) USING driftdb")
        conn.execute("INSERT INTO t SELECT g, 0 FROM generate_series(1, 2000) g")
        for _ in range(3):
            conn.execute("UPDATE t SET v = v + 1")
        seqs = [r[0] for r in conn.execute(
            "SELECT seq FROM driftdb.transactions WHERE 't'::regclass = ANY(tables) ORDER BY seq")]
        assert len(seqs) == 4
        before = {s: conn.execute("SELECT count(*), sum(v) FROM driftdb.as_of(NULL::t, %s::bigint)", (s,)).fetchone()
                  for s in seqs}
        assert before[seqs[-1]] == (2000, 6000)
        digest = conn.execute("SELECT digest FROM driftdb.digest('t')").fetchone()[0]
        for setting in ("driftdb.compact_min_age = 0", "driftdb.compact_min_events = 1000",
                        "driftdb.snapshot_min_events = 1000"):
            conn.execute(f"ALTER DATABASE {name} SET {setting}")
        obs.execute("ALTER SYSTEM SET driftdb.maintenance_naptime = 1")
        obs.execute("SELECT pg_reload_conf()")
        lines = wait_for(lambda: [m for m in action_lines(c, name) if m["table"] == "t" and m["action"] == "compact"],
                         what="a compaction by the maintenance worker", timeout=60)
        assert re.match(r"8000 events into \d+ segments", lines[0]["detail"]), lines[0]
        wait_for(lambda: [m for m in action_lines(c, name) if m["table"] == "t" and m["action"] == "snapshot"],
                 what="a snapshot by the maintenance worker", timeout=60)
        segs, compacted, snaps = conn.execute(
            "SELECT segments, compacted_events, snapshots FROM driftdb.stats WHERE table_name = 't'::regclass").fetchone()
        assert segs > 0 and compacted == 8000 and snaps >= 1
        for s, want in before.items():
            got = conn.execute("SELECT count(*), sum(v) FROM driftdb.as_of(NULL::t, %s::bigint)", (s,)).fetchone()
            assert got == want, (s, got, want)
        assert conn.execute("SELECT digest FROM driftdb.digest('t')").fetchone()[0] == digest
        checks = conn.execute("SELECT item, ok FROM driftdb.verify('t')").fetchall()
        assert dict(checks) == {"chain": True, "frames": True, "replay": True, "live": True}, checks
        # a writer meanwhile is never held up, and the next round has nothing left to do
        conn.execute("UPDATE t SET v = v + 1 WHERE id = 1")
        obs.execute("ALTER SYSTEM SET driftdb.maintenance_naptime = 0")
        obs.execute("SELECT pg_reload_conf()")
        assert "ERROR" not in c.log_text(), c.log_tail(60)
    finally:
        conn.close()
        obs.close()
    assert_no_crash(c)
