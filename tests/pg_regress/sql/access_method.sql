-- The driftdb access method: created by the extension, usable like heap.
SELECT amname, amtype FROM pg_am WHERE amname = 'driftdb';

CREATE TABLE accounts (id int PRIMARY KEY, owner text NOT NULL, balance numeric CHECK (balance >= 0)) USING driftdb;
INSERT INTO accounts VALUES (1, 'ada', 100), (2, 'grace', 50);
INSERT INTO accounts VALUES (1, 'dup', 0);                      -- unique violation
INSERT INTO accounts VALUES (3, 'neg', -1);                     -- check violation
INSERT INTO accounts VALUES (2, 'grace', 75) ON CONFLICT (id) DO UPDATE SET balance = EXCLUDED.balance;
UPDATE accounts SET balance = balance - 10 WHERE id = 1;
DELETE FROM accounts WHERE owner = 'nobody';
SELECT * FROM accounts ORDER BY id;

-- the default access method, and converting a heap table
SET default_table_access_method = driftdb;
CREATE TABLE notes (id int PRIMARY KEY, body text);
RESET default_table_access_method;
CREATE TABLE legacy (id int PRIMARY KEY, v text) USING heap;
INSERT INTO legacy VALUES (1, 'one'), (2, 'two');
ALTER TABLE legacy SET ACCESS METHOD driftdb;
SELECT c.relname, a.amname FROM pg_class c JOIN pg_am a ON a.oid = c.relam
 WHERE c.relname IN ('accounts', 'notes', 'legacy') ORDER BY 1;
SELECT * FROM legacy ORDER BY id;

-- indexes are used as on heap
CREATE INDEX accounts_owner ON accounts (owner);
SET enable_seqscan = off;
EXPLAIN (COSTS OFF) SELECT * FROM accounts WHERE owner = 'ada';
SELECT * FROM accounts WHERE owner = 'ada';
RESET enable_seqscan;

-- maintenance keeps the rows
VACUUM FULL accounts;
CLUSTER accounts USING accounts_pkey;
SELECT count(*) FROM accounts;
