"""Time travel (issue 4): privileges, row-level security and search_path.

* Reading history needs SELECT on the table (42501 otherwise) — as_of (both forms), versions,
  changes and the SET driftdb.as_of form; with SELECT granted they work for an ordinary role.
* A column-level grant is not SELECT on the table: the functions (which return whole rows)
  refuse; under SET driftdb.as_of a read of the permitted columns is an ordinary read and works.
* Row-level security: as_of (function and SET form) applies the table's policies to the
  historical rows — a row is visible if the policy accepts the row *as it was*; versions and
  changes refuse (42501) for a role the policies restrict; superuser, the owner (without FORCE)
  and BYPASSRLS roles see everything.
* A hostile search_path (objects shadowing driftdb's tables and functions, and pg_catalog's
  operators and functions) does not change any result.
"""
from __future__ import annotations

import re

import psycopg
import pytest

from tt_model import Hist, set_as_of, srt, ts_literal


def _history(conn, owners=("o1", "o2")) -> Hist:
    """t(id, owner, v): 6 seqs; rows change owner, are deleted, re-keyed and truncated."""
    a, b = owners
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, owner text NOT NULL, v text) USING driftdb")
    h = Hist(conn, "t", "id, owner, v")
    h.commit("INSERT INTO t VALUES (1, %s, 'a1'), (2, %s, 'a2'), (3, %s, 'b3'), (4, %s, 'b4')",
             params=[(a, a, b, b)],
             upsert={1: (1, a, "a1"), 2: (2, a, "a2"), 3: (3, b, "b3"), 4: (4, b, "b4")})
    h.commit("UPDATE t SET owner = %s WHERE id = 2", "UPDATE t SET owner = %s, v = 'now a' WHERE id = 3",
             params=[(b,), (a,)], upsert={2: (2, b, "a2"), 3: (3, a, "now a")})
    h.commit("DELETE FROM t WHERE id = 1", delete=[1])
    h.commit("INSERT INTO t VALUES (5, %s, 'a5')", "UPDATE t SET v = 'b4 changed' WHERE id = 4",
             params=[(a,), None], upsert={5: (5, a, "a5"), 4: (4, b, "b4 changed")})
    h.commit("UPDATE t SET id = 50 WHERE id = 5", "DELETE FROM t WHERE id = 2",
             delete=[5, 2], upsert={50: (50, a, "a5")})
    h.commit("TRUNCATE t", "INSERT INTO t VALUES (6, %s, 'b6'), (7, %s, 'a7')", params=[None, (b, a)],
             truncate=True, upsert={6: (6, b, "b6"), 7: (7, a, "a7")})
    return h


# _history's versions: id 1: 1; 2: 2; 3: 2; 4: 2; 5: 1; 50: 1; 6: 1; 7: 1. Its changes:
# 4 INSERT; 2 UPDATE; 1 DELETE; INSERT + UPDATE; UPDATE (key 5 -> 50) + DELETE; TRUNCATE + 2 INSERT.
N_VERSIONS, N_CHANGES = 11, 14


def _refused(conn, q, params=None) -> tuple:
    """(sqlstate, message) of a statement expected to fail; (None, rows) if it succeeded."""
    try:
        rows = conn.execute(q, params).fetchall()
        return (None, rows)
    except psycopg.Error as e:
        return (e.sqlstate, str(e).splitlines()[0])


def _assert_refused_for_the_table(conn, q, params=None, table="t"):
    """42501 — and, when the message is PostgreSQL's "permission denied for <kind> <name>",
    about the table itself, not one of driftdb's own objects the caller cannot read (so that
    the refusal tests do not pass for the wrong reason)."""
    state, msg = _refused(conn, q, params)
    assert state == "42501", f"{q}: expected 42501, got {state}: {msg}"
    m = re.search(r"permission denied for (\w+) (\S+)", msg)
    assert m is None or (m.group(1) == "table" and m.group(2).strip('"') == table), (
        f"{q}: refused because of another object than table {table}: {msg}")


def _reads(conn, h: Hist) -> dict:
    """Everything the role reads through the time-travel API, in comparable form."""
    out = {}
    for n in range(0, h.seqs[-1] + 2):
        out[("seq", n)] = h.as_of(n, conn)
    for n in h.seqs:
        out[("ts", n)] = h.as_of(h.at[n], conn, "ts")
    for n in (0, 2, h.seqs[-1]):
        set_as_of(conn, f"@seq:{n}")
        try:
            out[("set", n)] = h.read(conn)
        finally:
            conn.execute("RESET driftdb.as_of")
    return out


# --------------------------------------------------------------------------------------------
# Table privileges
# --------------------------------------------------------------------------------------------

CALLS = [
    "SELECT * FROM driftdb.as_of(NULL::t, 2::bigint)",
    "SELECT id FROM driftdb.as_of(NULL::t, 2::bigint)",
    "SELECT * FROM driftdb.as_of(NULL::t, now())",
    "SELECT count(*) FROM driftdb.as_of(NULL::t, 0::bigint)",
    "SELECT * FROM driftdb.versions(NULL::t)",
    "SELECT seq_start FROM driftdb.versions(NULL::t)",
    "SELECT * FROM driftdb.changes(NULL::t)",
    "SELECT seq, operation FROM driftdb.changes(NULL::t)",
]


def test_without_select_everything_is_refused(db, conn, roles):
    h = _history(conn)
    r = roles("nosel")
    c = db.connect(user=r)
    for q in CALLS:
        _assert_refused_for_the_table(c, q)
    # the setting itself is a user setting; the read under it is refused like any read of t
    set_as_of(c, "@seq:2")
    _assert_refused_for_the_table(c, "SELECT * FROM t")
    _assert_refused_for_the_table(c, "SELECT count(*) FROM t")
    c.execute("RESET driftdb.as_of")
    # other privileges than SELECT do not help
    conn.execute(f'GRANT INSERT, UPDATE (v), DELETE, TRUNCATE, REFERENCES, TRIGGER ON t TO "{r}"')
    for q in CALLS:
        _assert_refused_for_the_table(c, q)
    # and a revoked SELECT is refused again
    conn.execute(f'GRANT SELECT ON t TO "{r}"')
    assert c.execute("SELECT count(*) FROM driftdb.as_of(NULL::t, 1::bigint)").fetchone() == (4,)
    conn.execute(f'REVOKE SELECT ON t FROM "{r}"')
    for q in CALLS:
        _assert_refused_for_the_table(c, q)
    assert h.seqs  # the history exists: the refusals are not about an empty table


def test_with_select_everything_works(db, conn, roles):
    h = _history(conn)
    r = roles("sel")
    conn.execute(f'GRANT SELECT ON t TO "{r}"')
    c = db.connect(user=r)
    mine = _reads(c, h)
    exp = _reads(conn, h)
    for k, rows in exp.items():
        want = h.at_seq(k[1])
        assert rows == want, f"superuser {k}: {rows} != {want}"
        assert mine[k] == want, f"role with SELECT, {k}:\n  expected {want}\n  got      {mine[k]}"
    got = srt(c.execute("SELECT seq_start, seq_end, (data).id FROM driftdb.versions(NULL::t)").fetchall())
    assert got == srt(conn.execute("SELECT seq_start, seq_end, (data).id FROM driftdb.versions(NULL::t)").fetchall())
    assert len(got) == N_VERSIONS, got
    got = srt(c.execute("SELECT seq, operation, (old_data).id, (new_data).id FROM driftdb.changes(NULL::t)").fetchall())
    assert len(got) == N_CHANGES and {r[1] for r in got} == {"INSERT", "UPDATE", "DELETE", "TRUNCATE"}, got
    # also through a grant to a group role the reader is a member of
    g, m = roles("grp"), roles("member")
    conn.execute(f'GRANT SELECT ON t TO "{g}"')
    conn.execute(f'GRANT "{g}" TO "{m}"')
    cm = db.connect(user=m)
    assert h.as_of(2, cm) == h.at_seq(2)


def test_column_grant_is_not_select_on_the_table(db, conn, roles):
    h = _history(conn)
    r = roles("colsel")
    conn.execute(f'GRANT SELECT (id) ON t TO "{r}"')
    c = db.connect(user=r)
    # the functions return whole rows: refused, whatever the caller projects
    for q in CALLS:
        _assert_refused_for_the_table(c, q)
    # under the setting, a read of the permitted column is an ordinary read
    for n in (1, 3, h.seqs[-1]):
        set_as_of(c, f"@seq:{n}")
        try:
            got = sorted(c.execute("SELECT id FROM t").fetchall())
            exp = sorted((row[0],) for row in h.at_seq(n))
            assert got == exp, f"SELECT id FROM t under @seq:{n} with SELECT (id): expected {exp}, got {got}"
            got = c.execute("SELECT count(*) FROM t WHERE id > 1").fetchone()[0]
            assert got == sum(1 for row in h.at_seq(n) if row[0] > 1)
            for q in ("SELECT * FROM t", "SELECT v FROM t", "SELECT id FROM t WHERE owner = 'x'"):
                _assert_refused_for_the_table(c, q)
        finally:
            c.execute("RESET driftdb.as_of")


# --------------------------------------------------------------------------------------------
# Row-level security
# --------------------------------------------------------------------------------------------


def _rls_setup(db, conn, roles, force=False):
    alice, bob, own, byp = roles("alice"), roles("bob"), roles("own"), roles("byp")
    h = _history(conn, owners=(alice, bob))
    conn.execute("CREATE TABLE shares (id int, grantee text) USING heap")
    conn.execute("ALTER TABLE t ENABLE ROW LEVEL SECURITY")
    if force:
        conn.execute("ALTER TABLE t FORCE ROW LEVEL SECURITY")
    conn.execute("CREATE POLICY mine ON t FOR SELECT USING (owner = current_user)")
    # a second, permissive policy reading a (current, heap) table: rows shared with the role
    conn.execute("CREATE POLICY shared ON t FOR SELECT USING (id IN (SELECT s.id FROM shares s WHERE s.grantee = current_user))")
    conn.execute("GRANT SELECT ON shares TO PUBLIC")
    conn.execute(f'INSERT INTO shares VALUES (4, %s), (1, %s)', (alice, bob))
    conn.execute(f'ALTER TABLE t OWNER TO "{own}"')
    conn.execute(f'ALTER ROLE "{byp}" BYPASSRLS')
    conn.execute(f'GRANT SELECT ON t TO "{alice}", "{bob}", "{byp}"')
    shares = {alice: {4}, bob: {1}}
    return h, alice, bob, own, byp, shares


def _visible(h: Hist, n: int, role: str, shares: dict) -> list:
    """The rows of seq n the policies let ``role`` see: the historical owner, or a share now."""
    return [row for row in h.at_seq(n) if row[1] == role or row[0] in shares.get(role, set())]


def test_rls_as_of_applies_policies_to_historical_rows(db, conn, roles):
    h, alice, bob, own, byp, shares = _rls_setup(db, conn, roles)
    # the history really has rows that later changed owner or disappeared
    assert any(row[1] == alice for row in h.at_seq(1) if row[0] == 2) and h.rows.get(2) is None
    for role in (alice, bob):
        c = db.connect(user=role)
        got = _reads(c, h)
        bad = []
        for k, rows in got.items():
            exp = srt(_visible(h, k[1], role, shares))
            if rows != exp:
                bad.append(f"  {k}: expected {exp}\n    got {rows}")
        assert not bad, f"as_of under RLS for {role}:\n" + "\n".join(bad)
        # the live table as a check of the policies themselves
        assert h.read(c) == srt(row for row in h.current() if row[1] == role or row[0] in shares[role])
        # predicates and joins do not widen what is visible
        n = 2
        got = c.execute("SELECT id FROM driftdb.as_of(NULL::t, %s::bigint) WHERE owner <> current_user ORDER BY id",
                        (n,)).fetchall()
        exp = [(row[0],) for row in sorted(_visible(h, n, role, shares)) if row[1] != role]
        assert got == exp, f"{role} rows of others at seq {n}: {got} != {exp}"


def test_rls_versions_and_changes_refused_for_restricted_roles(db, conn, roles):
    h, alice, bob, own, byp, shares = _rls_setup(db, conn, roles)
    for role in (alice, bob):
        c = db.connect(user=role)
        for q in ("SELECT * FROM driftdb.versions(NULL::t)", "SELECT count(*) FROM driftdb.versions(NULL::t)",
                  "SELECT * FROM driftdb.changes(NULL::t)", "SELECT count(*) FROM driftdb.changes(NULL::t)"):
            _assert_refused_for_the_table(c, q)


def test_rls_unrestricted_roles_see_everything(db, conn, roles):
    h, alice, bob, own, byp, shares = _rls_setup(db, conn, roles)
    n_versions = conn.execute("SELECT count(*) FROM driftdb.versions(NULL::t)").fetchone()[0]
    n_changes = conn.execute("SELECT count(*) FROM driftdb.changes(NULL::t)").fetchone()[0]
    assert (n_versions, n_changes) == (N_VERSIONS, N_CHANGES)
    for who, c in (("superuser", conn), ("owner", db.connect(user=own)), ("BYPASSRLS role", db.connect(user=byp))):
        got = _reads(c, h)
        for k, rows in got.items():
            assert rows == h.at_seq(k[1]), f"{who} {k}: expected {h.at_seq(k[1])}, got {rows}"
        assert c.execute("SELECT count(*) FROM driftdb.versions(NULL::t)").fetchone()[0] == n_versions, who
        assert c.execute("SELECT count(*) FROM driftdb.changes(NULL::t)").fetchone()[0] == n_changes, who


def test_rls_forced_restricts_the_owner_too(db, conn, roles):
    h, alice, bob, own, byp, shares = _rls_setup(db, conn, roles, force=True)
    c = db.connect(user=own)
    for n in range(0, h.seqs[-1] + 1):
        assert h.as_of(n, c) == [], f"owner under FORCE ROW LEVEL SECURITY sees rows as of seq {n}"
    set_as_of(c, "@seq:1")
    try:
        assert h.read(c) == []
    finally:
        c.execute("RESET driftdb.as_of")
    for q in ("SELECT * FROM driftdb.versions(NULL::t)", "SELECT * FROM driftdb.changes(NULL::t)"):
        _assert_refused_for_the_table(c, q)
    # the policies still let alice see her historical rows
    ca = db.connect(user=alice)
    assert h.as_of(1, ca) == srt(_visible(h, 1, alice, shares))


def test_rls_policy_for_a_command_other_than_select_does_not_open_history(db, conn, roles):
    """Only SELECT (or ALL) policies grant reads: an UPDATE-only policy leaves as_of empty."""
    r = roles("upd")
    h = _history(conn, owners=(r, "other"))
    conn.execute("ALTER TABLE t ENABLE ROW LEVEL SECURITY")
    conn.execute("CREATE POLICY u ON t FOR UPDATE USING (true)")
    conn.execute(f'GRANT SELECT, UPDATE ON t TO "{r}"')
    c = db.connect(user=r)
    for n in h.seqs:
        assert h.as_of(n, c) == [], f"as_of at seq {n} shows rows without a SELECT policy"


# --------------------------------------------------------------------------------------------
# search_path
# --------------------------------------------------------------------------------------------

EVIL = [
    "CREATE SCHEMA evil",
    # driftdb's own objects, by their unqualified names, with bogus content
    "CREATE TABLE evil.commits (LIKE driftdb.commits)",
    "CREATE TABLE evil.events (LIKE driftdb.events)",
    "CREATE TABLE evil.tables (LIKE driftdb.tables)",
    "CREATE TABLE evil.snapshots (LIKE driftdb.snapshots)",
    "INSERT INTO evil.commits SELECT seq, committed_at - interval '10 years', xid, 'evil', 'evil', 'evil', table_ids "
    "FROM driftdb.commits",
    "INSERT INTO evil.tables SELECT * FROM driftdb.tables",
    "CREATE VIEW evil.transactions AS SELECT * FROM evil.commits",
    # functions that fail loudly if anything calls them
    """CREATE FUNCTION evil.boom(what text) RETURNS bigint LANGUAGE plpgsql AS
       $$ BEGIN RAISE EXCEPTION 'evil.% was called', what; END $$""",
    "CREATE FUNCTION evil.current_seq() RETURNS bigint LANGUAGE sql AS $$ SELECT evil.boom('current_seq') $$",
    "CREATE FUNCTION evil.seq_at(timestamptz) RETURNS bigint LANGUAGE sql AS $$ SELECT evil.boom('seq_at') $$",
    "CREATE FUNCTION evil._settled_seq() RETURNS bigint LANGUAGE sql AS $$ SELECT evil.boom('_settled_seq') $$",
    "CREATE FUNCTION evil.now() RETURNS timestamptz LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'evil.now'; END $$",
    "CREATE FUNCTION evil.to_timestamp(double precision) RETURNS timestamptz LANGUAGE plpgsql AS "
    "$$ BEGIN RAISE EXCEPTION 'evil.to_timestamp'; END $$",
    "CREATE FUNCTION evil.int8lt(bigint, bigint) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'evil <'; END $$",
    "CREATE FUNCTION evil.int8le(bigint, bigint) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'evil <='; END $$",
    "CREATE FUNCTION evil.int8eq(bigint, bigint) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'evil ='; END $$",
    "CREATE FUNCTION evil.int4eq(int, int) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'evil int ='; END $$",
    "CREATE FUNCTION evil.oideq(oid, oid) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'evil oid ='; END $$",
    "CREATE FUNCTION evil.byteaeq(bytea, bytea) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'evil bytea ='; END $$",
    "CREATE FUNCTION evil.tsle(timestamptz, timestamptz) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'evil ts <='; END $$",
    "CREATE OPERATOR evil.< (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = evil.int8lt)",
    "CREATE OPERATOR evil.<= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = evil.int8le)",
    "CREATE OPERATOR evil.= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = evil.int8eq)",
    "CREATE OPERATOR evil.= (LEFTARG = int, RIGHTARG = int, FUNCTION = evil.int4eq)",
    "CREATE OPERATOR evil.= (LEFTARG = oid, RIGHTARG = oid, FUNCTION = evil.oideq)",
    "CREATE OPERATOR evil.= (LEFTARG = bytea, RIGHTARG = bytea, FUNCTION = evil.byteaeq)",
    "CREATE OPERATOR evil.<= (LEFTARG = timestamptz, RIGHTARG = timestamptz, FUNCTION = evil.tsle)",
    "GRANT USAGE ON SCHEMA evil TO PUBLIC",
    "GRANT SELECT ON ALL TABLES IN SCHEMA evil TO PUBLIC",
]


def _api_reads(conn, h: Hist) -> dict:
    """as_of (seq and time), the SET form, versions and changes, with operator-free SQL (the
    hostile schema shadows comparison operators; sorting happens in Python)."""
    out = _reads(conn, h)
    out["versions"] = srt(conn.execute(
        "SELECT seq_start, seq_end, system_time_start, (data).id, (data).owner, (data).v "
        "FROM driftdb.versions(NULL::public.t)").fetchall())
    out["changes"] = srt(conn.execute(
        "SELECT seq, committed_at, committed_by, operation, (old_data).id, (new_data).id, (new_data).v "
        "FROM driftdb.changes(NULL::public.t)").fetchall())
    return out


@pytest.mark.parametrize("path", ["evil, public", "evil, pg_catalog, public", "evil, pg_catalog, driftdb, public"])
def test_hostile_search_path_changes_nothing(db, conn, path):
    h = _history(conn)
    clean = _api_reads(conn, h)
    for k in clean:
        if isinstance(k, tuple):
            assert clean[k] == h.at_seq(k[1]), f"{k} with a clean search_path"
    for stmt in EVIL:
        conn.execute(stmt)
    c = db.connect()
    c.execute(f"SET search_path = {path}")
    got = _api_reads(c, h)
    bad = [k for k in clean if got[k] != clean[k]]
    assert not bad, "\n".join(f"  {k}: clean {clean[k]}\n    with search_path {path}: {got[k]}" for k in bad[:5])
    # a function pinning the hostile path, reading history in its body
    conn.execute(f"""
        CREATE FUNCTION public.read_as_of(n bigint) RETURNS SETOF public.t LANGUAGE sql
        SET search_path = {path} AS $$ SELECT * FROM driftdb.as_of(NULL::public.t, n) $$""")
    conn.execute(f"""
        CREATE FUNCTION public.read_under_setting() RETURNS SETOF public.t LANGUAGE sql
        SET search_path = {path} SET driftdb.as_of = '@seq:2' AS $$ SELECT * FROM public.t $$""")
    c2 = db.connect()
    for n in range(0, h.seqs[-1] + 2):
        got = srt(c2.execute("SELECT id, owner, v FROM public.read_as_of(%s)", (n,)).fetchall())
        assert got == h.at_seq(n), f"read_as_of({n}) with SET search_path = {path}: {got} != {h.at_seq(n)}"
    got = srt(c2.execute("SELECT id, owner, v FROM public.read_under_setting()").fetchall())
    assert got == h.at_seq(2), f"function with SET driftdb.as_of = '@seq:2': {got}"
    assert h.read(c2) == h.current(), "the function's SET driftdb.as_of leaked out of it"
    # the session setting with the hostile path, also in a timestamp
    c.execute(f"SET search_path = {path}")
    set_as_of(c, ts_literal(h.at[3]))
    try:
        got = srt(c.execute("SELECT id, owner, v FROM public.t").fetchall())
    finally:
        c.execute("RESET driftdb.as_of")
    assert got == h.at_seq(3)
