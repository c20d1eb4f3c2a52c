-- History: every committed change becomes events, one seq per transaction.
CREATE TABLE items (id int PRIMARY KEY, name text, qty int) USING driftdb;
SELECT driftdb.current_seq() AS base \gset

INSERT INTO items VALUES (1, 'apple', 3), (2, 'pear', 5);
UPDATE items SET qty = qty + 1 WHERE id = 1;
BEGIN;
  INSERT INTO items VALUES (3, 'plum', 1);
  UPDATE items SET qty = 2 WHERE id = 3;       -- same transaction: one version of row 3
  INSERT INTO items VALUES (4, 'fig', 9);
  DELETE FROM items WHERE id = 4;              -- inserted and deleted: nothing
COMMIT;
UPDATE items SET qty = qty WHERE id = 2;       -- changes nothing: no seq
BEGIN;
  DELETE FROM items WHERE id = 2;
  SAVEPOINT s;
  UPDATE items SET name = 'APPLE' WHERE id = 1;
  ROLLBACK TO s;                               -- the savepoint's change is gone
COMMIT;
BEGIN; INSERT INTO items VALUES (5, 'kiwi', 1); ROLLBACK;   -- aborted: nothing
TRUNCATE items;

-- seqs relative to the start, the ops each transaction recorded
SELECT e.seq - :base AS seq, string_agg(e.op::text, ' ' ORDER BY e.ord) AS ops
  FROM driftdb.events e JOIN driftdb.tables t USING (table_id)
 WHERE t.relid = 'items'::regclass
 GROUP BY e.seq ORDER BY e.seq;
SELECT seq - :base AS seq, tables, committed_by, application_name
  FROM driftdb.transactions WHERE seq > :base ORDER BY seq;
SELECT driftdb.current_seq() - :base AS seqs_used;
SELECT driftdb.seq_at('1999-01-01') AS before_everything;

-- the doctor
INSERT INTO items VALUES (10, 'melon', 1);
SELECT * FROM driftdb.verify('items');

-- refused, with a hint
CREATE TABLE bag (v text) USING driftdb;
INSERT INTO bag VALUES ('ok');                  -- inserts need no identity
UPDATE bag SET v = 'no';
BEGIN;
INSERT INTO items VALUES (11, 'x', 1);
PREPARE TRANSACTION 'p';
INSERT INTO driftdb.events VALUES (1, 1, 1, 'i', NULL, '\x00');
SELECT * FROM driftdb.verify('pg_class');
