-- Event packs: a transaction that changes many rows of one table stores their history
-- key-sorted in driftdb.packs (driftdb.pack_min_events, default 1000). Reading it is the same as
-- reading one events row per change. Seqs are shown relative to :s0.
SELECT coalesce(max(seq), 0) AS s0 FROM driftdb.transactions \gset
SET driftdb.pack_min_events = 100;

CREATE TABLE stock (sku int PRIMARY KEY, name text, qty int) USING driftdb;
INSERT INTO stock SELECT g, 'item ' || g, 10 FROM generate_series(1, 500) g;   -- s0+1: packed
UPDATE stock SET qty = qty - 1 WHERE sku = 42;                                 -- s0+2: one row
UPDATE stock SET qty = qty + 5 WHERE sku % 2 = 0;                              -- s0+3: packed
DELETE FROM stock WHERE sku BETWEEN 401 AND 450;                               -- s0+4: 50 rows
UPDATE stock SET sku = sku + 1000 WHERE sku BETWEEN 451 AND 600;               -- s0+5: moves keys

-- where the history went: packs for the bulk transactions, event rows for the others; a full
-- pack is compressed, a transaction's last, partial one may be under the size PostgreSQL
-- compresses rows from (the packs table's toast_tuple_target)
SELECT p.seq - :s0 AS seq, count(*) AS packs, sum(nevents) AS events, sum(nversions) AS versions,
       bool_or(pg_column_size(data) < octet_length(data)) AS compressed
  FROM driftdb.packs p JOIN driftdb.tables t USING (table_id)
 WHERE t.relid = 'stock'::regclass GROUP BY p.seq ORDER BY 1;
-- packs of about 11 kB (driftdb.packs' toast_tuple_target), kept inline: nothing in its TOAST table
SELECT pg_relation_size(reltoastrelid) AS toasted_bytes FROM pg_class WHERE oid = 'driftdb.packs'::regclass;
SELECT e.seq - :s0 AS seq, e.op, count(*)
  FROM driftdb.events e JOIN driftdb.tables t USING (table_id)
 WHERE t.relid = 'stock'::regclass GROUP BY 1, 2 ORDER BY 1, 2;

-- reads: a key, a list, a range, the whole table, versions and changes
SELECT n, (SELECT format('%s:%s', name, qty) FROM driftdb.as_of(NULL::stock, :s0 + n) WHERE sku = 42) AS sku_42
  FROM generate_series(0, 5) n ORDER BY n;
SELECT sku, qty FROM driftdb.as_of(NULL::stock, :s0 + 3) WHERE sku IN (1, 2, 449, 451, 1451) ORDER BY sku;
SELECT count(*), sum(qty) FROM driftdb.as_of(NULL::stock, :s0 + 3) WHERE sku BETWEEN 100 AND 199;
SELECT n, count(*), sum(qty) FROM generate_series(1, 5) n,
       LATERAL (SELECT qty FROM driftdb.as_of(NULL::stock, :s0 + n)) s GROUP BY n ORDER BY n;
SELECT seq_start - :s0 AS seq_start, seq_end - :s0 AS seq_end, (v.data).qty
  FROM driftdb.versions(NULL::stock) v WHERE (v.data).sku = 42 ORDER BY seq_start;
SELECT seq - :s0 AS seq, operation, count(*) FROM driftdb.changes(NULL::stock) GROUP BY 1, 2 ORDER BY 1, 2;
SELECT item, ok FROM driftdb.verify('stock');

-- compaction moves packs into segments like event rows; the answers stay the same
SELECT events FROM driftdb.compact('stock', '0 seconds');
SELECT count(*) AS packs_left FROM driftdb.packs p JOIN driftdb.tables t USING (table_id)
 WHERE t.relid = 'stock'::regclass;
SELECT n, count(*), sum(qty) FROM generate_series(1, 5) n,
       LATERAL (SELECT qty FROM driftdb.as_of(NULL::stock, :s0 + n)) s GROUP BY n ORDER BY n;
SELECT item, ok FROM driftdb.verify('stock');

-- 0 turns packs off
SET driftdb.pack_min_events = 0;
UPDATE stock SET qty = 0;
SELECT count(*) AS new_packs FROM driftdb.packs p JOIN driftdb.tables t USING (table_id)
 WHERE t.relid = 'stock'::regclass;
DROP TABLE stock;
SELECT count(*) AS packs_after_drop FROM driftdb.packs;
RESET driftdb.pack_min_events;
