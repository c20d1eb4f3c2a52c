-- History across ALTER TABLE.
CREATE TABLE converted (id int PRIMARY KEY, v text) USING heap;
INSERT INTO converted SELECT g, 'v' || g FROM generate_series(1, 3) g;
ALTER TABLE converted SET ACCESS METHOD driftdb;     -- existing rows become the first versions
SELECT registered_seq = history_start_seq AS history_starts_at_conversion
  FROM driftdb.tables WHERE relid = 'converted'::regclass;
UPDATE converted SET v = 'changed' WHERE id = 1;
ALTER TABLE converted ADD COLUMN qty int DEFAULT 0;  -- constant default: fine
ALTER TABLE converted RENAME COLUMN v TO label;
ALTER TABLE converted ADD COLUMN note text;
ALTER TABLE converted DROP COLUMN note;
UPDATE converted SET qty = 5 WHERE id = 2;
VACUUM FULL converted;
CLUSTER converted USING legacy_pkey;
SELECT * FROM converted ORDER BY id;
SELECT * FROM driftdb.verify('converted');
SELECT op, count(*) FROM driftdb.events e JOIN driftdb.tables t USING (table_id)
 WHERE t.relid = 'converted'::regclass GROUP BY op ORDER BY op;

-- refused: these would make history wrong
ALTER TABLE converted ALTER COLUMN qty TYPE bigint;
ALTER TABLE converted ADD COLUMN r float8 DEFAULT random();
ALTER TABLE converted SET ACCESS METHOD heap;

-- DROP TABLE takes its history along
SELECT count(*) > 0 AS has_events FROM driftdb.events e JOIN driftdb.tables t USING (table_id) WHERE t.relid = 'converted'::regclass;
DROP TABLE converted;
SELECT count(*) AS orphan_events FROM driftdb.events e LEFT JOIN driftdb.tables t USING (table_id) WHERE t.table_id IS NULL;

-- one ALTER TABLE that rewrites (a domain with a CHECK forces it) stores no "missing" value for
-- the columns it adds; constant defaults are still what older rows read
CREATE DOMAIN posint AS int CHECK (VALUE > 0);
CREATE TABLE stock (id int PRIMARY KEY, item text) USING driftdb;
INSERT INTO stock VALUES (1, 'bolt'), (2, 'nut');
ALTER TABLE stock ADD COLUMN qty int DEFAULT 7, ADD COLUMN min_qty posint DEFAULT 1;
UPDATE stock SET qty = 9 WHERE id = 2;
VACUUM FULL stock;
SELECT * FROM stock ORDER BY id;
SELECT bool_and(ok) AS verified FROM driftdb.verify('stock');
ALTER TABLE stock ADD COLUMN note text DEFAULT 'x', ADD COLUMN serial_no serial;  -- names the culprit
ALTER TABLE stock SET UNLOGGED;                                                    -- would stop versioning
