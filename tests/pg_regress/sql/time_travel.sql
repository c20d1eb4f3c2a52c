-- Time travel: AS OF a commit seq or a time, the session setting, versions and changes.
-- Seqs are shown relative to the first transaction of this file (:s0), so the expected output
-- does not depend on which tests ran before.
SELECT coalesce(max(seq), 0) AS s0 FROM driftdb.transactions \gset

CREATE TABLE acct (id int PRIMARY KEY, owner text, balance numeric(10,2)) USING driftdb;
INSERT INTO acct VALUES (1, 'ann', 10), (2, 'bob', 20);        -- s0+1
UPDATE acct SET balance = 15 WHERE id = 1;                      -- s0+2
DELETE FROM acct WHERE id = 2;                                  -- s0+3
INSERT INTO acct VALUES (3, 'cy', 30);                          -- s0+4
UPDATE acct SET id = 4 WHERE id = 3;                            -- s0+5: the key changes
SELECT pg_sleep(0.01);
SELECT now() AS before_truncate \gset
SELECT pg_sleep(0.01);
TRUNCATE acct;                                                  -- s0+6
INSERT INTO acct VALUES (5, 'dee', 50);                         -- s0+7

-- the table at every seq
SELECT n, (SELECT string_agg(format('%s:%s:%s', id, owner, balance), ' ' ORDER BY id)
             FROM driftdb.as_of(NULL::acct, :s0 + n)) AS rows
  FROM generate_series(0, 8) n;

-- before the table existed: nothing; a seq beyond now: the current state
SELECT count(*) FROM driftdb.as_of(NULL::acct, 0::bigint);
SELECT * FROM driftdb.as_of(NULL::acct, 9223372036854775807);

-- AS OF a time
SELECT * FROM driftdb.as_of(NULL::acct, :'before_truncate'::timestamptz) ORDER BY id;
SELECT count(*) FROM driftdb.as_of(NULL::acct, '2000-01-01'::timestamptz);

-- composable: what changed between two points, joined by key
SELECT coalesce(a.id, b.id) AS id, a.balance AS was, b.balance AS now_is
  FROM driftdb.as_of(NULL::acct, :s0 + 1) a
  FULL JOIN driftdb.as_of(NULL::acct, :s0 + 5) b USING (id)
 ORDER BY 1;

-- a key lookup is pushed into the history scan
EXPLAIN (COSTS OFF) SELECT * FROM driftdb.as_of(NULL::acct, 3::bigint) WHERE id = 1;
SELECT * FROM driftdb.as_of(NULL::acct, :s0 + 2) WHERE id = 1;
SELECT * FROM driftdb.as_of(NULL::acct, :s0 + 4) WHERE id = 4;  -- not yet moved there
SELECT * FROM driftdb.as_of(NULL::acct, :s0 + 5) WHERE id = 4;
SELECT * FROM driftdb.as_of(NULL::acct, :s0 + 6) WHERE id = 1;  -- truncated
-- the key compared with another integer width (drivers send int2/int8 parameters) is pushed down
-- too; a value out of the key's range finds nothing
EXPLAIN (COSTS OFF) SELECT * FROM driftdb.as_of(NULL::acct, 3::bigint) WHERE id = 1::int8;
SELECT * FROM driftdb.as_of(NULL::acct, :s0 + 2) WHERE id = 1::int8;
SELECT * FROM driftdb.as_of(NULL::acct, :s0 + 2) WHERE id = 1::int2;
SELECT * FROM driftdb.as_of(NULL::acct, :s0 + 2) WHERE id = 4294967297::int8;

-- in a view and a prepared statement
-- as_of is rewritten wherever a FROM clause can be: in a FROM-clause subquery, a CTE, a UNION,
-- a sublink, and a sublink of a CTE (each plan shows the history scan, not a function scan)
EXPLAIN (COSTS OFF) SELECT * FROM (SELECT id FROM driftdb.as_of(NULL::acct, 3::bigint)) s;
EXPLAIN (COSTS OFF) WITH c AS MATERIALIZED (SELECT id FROM driftdb.as_of(NULL::acct, 3::bigint)) SELECT * FROM c;
EXPLAIN (COSTS OFF) SELECT id FROM driftdb.as_of(NULL::acct, 3::bigint) UNION ALL SELECT id FROM acct;
EXPLAIN (COSTS OFF) SELECT 1 WHERE EXISTS (SELECT FROM driftdb.as_of(NULL::acct, 3::bigint) WHERE id = 1);
EXPLAIN (COSTS OFF) WITH c AS MATERIALIZED (SELECT (SELECT count(*) FROM driftdb.as_of(NULL::acct, 3::bigint)) AS n) SELECT * FROM c;
SELECT (SELECT count(*) FROM driftdb.as_of(NULL::acct, :s0 + 1)) AS at_1,
       (WITH c AS (SELECT * FROM driftdb.as_of(NULL::acct, :s0 + 3)) SELECT string_agg(owner, ',' ORDER BY id) FROM c) AS at_3;

CREATE VIEW acct_at_2 AS SELECT * FROM driftdb.as_of(NULL::acct, 2::bigint);
SELECT pg_get_viewdef('acct_at_2'::regclass) LIKE '%TABLESAMPLE driftdb.as_of_seq%' AS stored_as_marker;
PREPARE at(bigint, int) AS SELECT owner, balance FROM driftdb.as_of(NULL::acct, $1) WHERE id = $2;
EXECUTE at(:s0 + 1, 1);
EXECUTE at(:s0 + 2, 1);
DEALLOCATE at;

-- every version, half-open and contiguous per row
SELECT seq_start - :s0 AS seq_start, seq_end - :s0 AS seq_end,
       system_time_end = 'infinity' AS current, (v.data).*
  FROM driftdb.versions(NULL::acct) v ORDER BY seq_start, (v.data).id;
EXPLAIN (COSTS OFF) SELECT * FROM driftdb.versions(NULL::acct) v WHERE (v.data).id = 1;

-- every change
SELECT seq - :s0 AS seq, committed_by = current_user AS by_me, operation, old_data, new_data
  FROM driftdb.changes(NULL::acct) ORDER BY seq, operation, (new_data).id;

-- the session setting: every read of every driftdb table sees that state
SELECT format('@seq:%s', :s0 + 2) AS at2 \gset
SET driftdb.as_of = :'at2';
SELECT * FROM acct ORDER BY id;
SELECT * FROM acct WHERE id = 2;
EXPLAIN (COSTS OFF) SELECT * FROM acct WHERE id = 2;
SELECT count(*), max(balance) FROM acct;
-- writes are refused
INSERT INTO acct VALUES (9, 'x', 0);
UPDATE acct SET balance = 0;
DELETE FROM acct;
TRUNCATE acct;
-- heap tables are unaffected
CREATE TABLE plain (x int);
INSERT INTO plain VALUES (1);
SELECT * FROM plain;
RESET driftdb.as_of;
SELECT * FROM acct ORDER BY id;

-- SET LOCAL ends with the transaction
BEGIN;
SET LOCAL driftdb.as_of = :'at2';
SELECT count(*) FROM acct;
COMMIT;
SELECT count(*) FROM acct;

-- bad input
SET driftdb.as_of = 'not a time';
SET driftdb.as_of = '@seq:x';
SELECT * FROM driftdb.as_of(NULL::acct, NULL::bigint);
SELECT * FROM driftdb.as_of(NULL::acct, -1::bigint);
SELECT * FROM driftdb.as_of(NULL::plain, 1::bigint);
SELECT * FROM driftdb.as_of(NULL::int, 1::bigint);

-- snapshots change no result
SELECT driftdb.snapshot('acct') - :s0 AS snapshot_seq;
SELECT n, (SELECT string_agg(format('%s:%s:%s', id, owner, balance), ' ' ORDER BY id)
             FROM driftdb.as_of(NULL::acct, :s0 + n)) AS rows
  FROM generate_series(5, 8) n;

DROP VIEW acct_at_2;
DROP TABLE acct, plain;

-- ranges and lists of identity keys are pushed into the history scan too: only the events filed
-- under those keys are read (a wide range reads the full state, which is then cheaper)
SELECT coalesce(max(seq), 0) AS s1 FROM driftdb.transactions \gset
CREATE TABLE ledger (id int PRIMARY KEY, amount int) USING driftdb;
INSERT INTO ledger SELECT g, g FROM generate_series(-5, 2000) g;    -- s1+1
UPDATE ledger SET amount = -amount WHERE id BETWEEN 100 AND 110;   -- s1+2
UPDATE ledger SET id = -id WHERE id = 101;                        -- s1+3
ANALYZE ledger;
EXPLAIN (COSTS OFF) SELECT * FROM driftdb.as_of(NULL::ledger, 3::bigint) WHERE id BETWEEN 98 AND 102;
SELECT * FROM driftdb.as_of(NULL::ledger, :s1 + 1) WHERE id BETWEEN 98 AND 102 ORDER BY id;
SELECT * FROM driftdb.as_of(NULL::ledger, :s1 + 3) WHERE id BETWEEN 98 AND 102 ORDER BY id;
SELECT * FROM driftdb.as_of(NULL::ledger, :s1 + 3) WHERE id < -3 ORDER BY id;
EXPLAIN (COSTS OFF) SELECT * FROM driftdb.as_of(NULL::ledger, 3::bigint) WHERE id IN (5, 105);
SELECT * FROM driftdb.as_of(NULL::ledger, :s1 + 2) WHERE id IN (5, 105, 5000) ORDER BY id;
EXPLAIN (COSTS OFF) SELECT * FROM driftdb.as_of(NULL::ledger, 3::bigint) WHERE id > 10;

-- versions: a lower bound on their start and an upper bound on their end (CONTAINED IN) limit
-- the events read; bounds on the other sides (FROM..TO, BETWEEN) are filters
EXPLAIN (COSTS OFF) SELECT * FROM driftdb.versions(NULL::ledger) v WHERE seq_start > 5 AND seq_end <= 9;
SELECT seq_start - :s1 AS seq_start, seq_end - :s1 AS seq_end, (v.data).*
  FROM driftdb.versions(NULL::ledger) v
 WHERE seq_start > :s1 + 1 AND seq_end <= :s1 + 3 ORDER BY (v.data).id;
DROP TABLE ledger;
