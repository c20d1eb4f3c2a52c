-- Time travel after an identity change: rows loaded before the primary key existed (as
-- pgbench -i loads them) have key-less events. From the first commit after the key was added
-- (driftdb.tables.keyed_from) AS OF key lookups, lists and ranges read the key index, the
-- first later event's old image, or the live row; points before it replay the whole state.
-- Seqs are shown relative to the first transaction of this file (:s0).
SELECT coalesce(max(seq), 0) AS s0 FROM driftdb.transactions \gset

-- how a history scan answered (EXPLAIN ANALYZE's "History Read"), seqs masked
CREATE FUNCTION pg_temp.read_path(q text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  l text;
BEGIN
  FOR l IN EXECUTE 'EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) ' || q LOOP
    IF l LIKE '%History Read:%' THEN
      RETURN regexp_replace(trim(l), 'seq \d+', 'seq N', 'g');
    END IF;
  END LOOP;
  RETURN NULL;
END $$;

CREATE TABLE late (id int NOT NULL, v text) USING driftdb;
INSERT INTO late SELECT g, 'v' || g FROM generate_series(1, 2000) g;   -- s0+1: no key yet
ALTER TABLE late ADD PRIMARY KEY (id);
UPDATE late SET v = 'changed' WHERE id = 2;                             -- s0+2: keyed from here
UPDATE late SET v = 'later' WHERE id = 3;                               -- s0+3
DELETE FROM late WHERE id = 4;                                          -- s0+4

SELECT key_attnums, keyed_from - :s0 AS keyed_from, keys_stable
  FROM driftdb.tables WHERE relid = 'late'::regclass;

-- ids 1..5 at every seq: 1 and 5 untouched since the change (the live row), 2 changed at the
-- change, 3 changed later (before it: the old image of that later event), 4 deleted later
SELECT n, (SELECT string_agg(format('%s:%s', id, v), ' ' ORDER BY id)
             FROM driftdb.as_of(NULL::late, :s0 + n) WHERE id IN (1, 2, 3, 4, 5)) AS rows
  FROM generate_series(1, 4) n;
SELECT n, (SELECT string_agg(format('%s:%s', id, v), ' ' ORDER BY id)
             FROM driftdb.as_of(NULL::late, :s0 + n) WHERE id BETWEEN 1 AND 5) AS rows
  FROM generate_series(1, 4) n;

-- the paths: key index from the change on, a replay before it
SELECT pg_temp.read_path('SELECT * FROM driftdb.as_of(NULL::late, ' || :s0 + 2 || '::bigint) WHERE id = 1') AS key_after;
SELECT pg_temp.read_path('SELECT * FROM driftdb.as_of(NULL::late, ' || :s0 + 2 || '::bigint) WHERE id IN (1, 3, 4)') AS list_after;
SELECT pg_temp.read_path('SELECT * FROM driftdb.as_of(NULL::late, ' || :s0 + 2 || '::bigint) WHERE id BETWEEN 1 AND 5') AS range_after;
SELECT pg_temp.read_path('SELECT * FROM driftdb.as_of(NULL::late, ' || :s0 + 1 || '::bigint) WHERE id = 1') AS key_before;

-- under SERIALIZABLE the live rows would need a second snapshot (with predicate locks of its
-- own): the lookup replays, with the same answer
BEGIN ISOLATION LEVEL SERIALIZABLE;
SELECT string_agg(format('%s:%s', id, v), ' ' ORDER BY id) AS rows
  FROM driftdb.as_of(NULL::late, :s0 + 2) WHERE id IN (1, 3);
SELECT pg_temp.read_path('SELECT * FROM driftdb.as_of(NULL::late, ' || :s0 + 2 || '::bigint) WHERE id = 1') AS key_serializable;
COMMIT;

-- a TRUNCATE after a point: the live rows no longer tell what was there, so that point replays
TRUNCATE late;                                                          -- s0+5
INSERT INTO late VALUES (1, 'new');                                     -- s0+6
SELECT (SELECT string_agg(format('%s:%s', id, v), ' ' ORDER BY id)
          FROM driftdb.as_of(NULL::late, :s0 + 3) WHERE id IN (1, 3)) AS before_truncate,
       (SELECT string_agg(format('%s:%s', id, v), ' ' ORDER BY id)
          FROM driftdb.as_of(NULL::late, :s0 + 6) WHERE id IN (1, 3)) AS after_truncate;
SELECT pg_temp.read_path('SELECT * FROM driftdb.as_of(NULL::late, ' || :s0 + 3 || '::bigint) WHERE id = 1') AS key_before_truncate;
SELECT pg_temp.read_path('SELECT * FROM driftdb.as_of(NULL::late, ' || :s0 + 6 || '::bigint) WHERE id = 1') AS key_after_truncate;

SELECT item, ok FROM driftdb.verify('late') ORDER BY item;
DROP TABLE late;
