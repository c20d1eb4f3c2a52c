-- Cold history: compaction into segments, the digest, verify's chain check, retention,
-- erasure and driftdb.stats. Seqs are shown relative to :s0 (the last seq before this file).
SELECT coalesce(max(seq), 0) AS s0 FROM driftdb.transactions \gset

CREATE TABLE ledger (id int PRIMARY KEY, owner text, amount numeric(10,2)) USING driftdb;
INSERT INTO ledger SELECT g, 'owner ' || g, g FROM generate_series(1, 50) g;   -- s0+1
UPDATE ledger SET amount = amount + 1;                                          -- s0+2
UPDATE ledger SET amount = amount * 2 WHERE id % 2 = 0;                          -- s0+3
DELETE FROM ledger WHERE id > 45;                                               -- s0+4
UPDATE ledger SET owner = 'moved' , id = id + 1000 WHERE id = 7;                -- s0+5: key changes
UPDATE ledger SET amount = 0 WHERE id = 1;                                      -- s0+6

-- what the history says before compaction
CREATE TEMP TABLE seen AS
SELECT n, (SELECT string_agg(format('%s:%s:%s', id, owner, amount), ' ' ORDER BY id)
             FROM driftdb.as_of(NULL::ledger, :s0 + n)) AS rows
  FROM generate_series(0, 6) n;
SELECT digest AS digest_before FROM driftdb.digest('ledger') \gset
SELECT count(*) AS versions_before FROM driftdb.versions(NULL::ledger) \gset

-- compact everything (older_than => 0): every row event moves into segments
SELECT segments > 0 AS has_segments, events, seq_lo - :s0 AS seq_lo, seq_hi - :s0 AS seq_hi
  FROM driftdb.compact('ledger', '0 seconds');
SELECT count(*) AS row_events_left FROM driftdb.events e JOIN driftdb.tables t USING (table_id)
 WHERE t.relid = 'ledger'::regclass AND e.op IN ('i', 'u', 'd', 'm');

-- no result changed
SELECT n, s.rows = (SELECT string_agg(format('%s:%s:%s', id, owner, amount), ' ' ORDER BY id)
                      FROM driftdb.as_of(NULL::ledger, :s0 + n)) AS same
  FROM seen s ORDER BY n;
SELECT digest = :'digest_before' AS digest_unchanged FROM driftdb.digest('ledger');
SELECT count(*) = :versions_before AS versions_unchanged FROM driftdb.versions(NULL::ledger);
SELECT seq_start - :s0 AS seq_start, seq_end - :s0 AS seq_end, (v.data).*
  FROM driftdb.versions(NULL::ledger) v WHERE (v.data).id IN (7, 1007) ORDER BY seq_start;
SELECT * FROM driftdb.as_of(NULL::ledger, :s0 + 2) WHERE id = 4;
SELECT item, ok FROM driftdb.verify('ledger');
SELECT segments > 0 AS segments, compacted_events, recent_events, history_start_reason
  FROM driftdb.stats WHERE table_name = 'ledger'::regclass;

-- retention: purge history before the commit of s0+3
SELECT committed_at AS t3 FROM driftdb.transactions WHERE seq = :s0 + 3 \gset
SELECT horizon_seq - :s0 AS horizon FROM driftdb.purge_history('ledger', :'t3');
SELECT seq - :s0 AS seq, reason FROM driftdb.history_start('ledger');
SELECT count(*) FROM driftdb.as_of(NULL::ledger, :s0 + 2);           -- before the horizon: error
SELECT n, s.rows = (SELECT string_agg(format('%s:%s:%s', id, owner, amount), ' ' ORDER BY id)
                      FROM driftdb.as_of(NULL::ledger, :s0 + n)) AS same
  FROM seen s WHERE n >= 3 ORDER BY n;
SELECT digest = :'digest_before' AS digest_unchanged FROM driftdb.digest('ledger');
-- a surviving row keeps its version current at the horizon, with its true start
SELECT seq_start - :s0 AS seq_start, seq_end - :s0 AS seq_end, (v.data).amount
  FROM driftdb.versions(NULL::ledger) v WHERE (v.data).id = 1 ORDER BY seq_start;
SELECT min(seq) - :s0 AS first_change FROM driftdb.changes(NULL::ledger);
-- a change feed from a seq: after the horizon fine, from before it refused (it would be partial)
SELECT seq - :s0 AS seq, operation, count(*) FROM driftdb.changes(NULL::ledger, :s0 + 4) GROUP BY 1, 2 ORDER BY 1, 2;
SELECT count(*) FROM driftdb.changes(NULL::ledger, :s0 + 1);
SELECT count(*) FROM driftdb.changes(NULL::ledger, NULL);
SELECT item, ok FROM driftdb.verify('ledger');

-- erasure of a deleted row's history
SELECT * FROM driftdb.erase('ledger', '3');                           -- still there: error
DELETE FROM ledger WHERE id = 3;
SELECT events_removed > 0 AS removed, length(key_sha256) FROM driftdb.erase('ledger', '3');
SELECT count(*) FROM driftdb.versions(NULL::ledger) v WHERE (v.data).id = 3;
SELECT count(*) FROM driftdb.changes(NULL::ledger) c WHERE (c.old_data).id = 3 OR (c.new_data).id = 3;
SELECT kind, convert_from(data, 'UTF8')::jsonb ->> 'action' AS action,
       convert_from(data, 'UTF8')::jsonb ->> 'by' AS by
  FROM driftdb.segments s JOIN driftdb.tables t USING (table_id)
 WHERE t.relid = 'ledger'::regclass AND kind <> 's' ORDER BY seg_id;
SELECT item, ok FROM driftdb.verify('ledger');

-- bad input
SELECT * FROM driftdb.erase('ledger', '1', '2');
SELECT * FROM driftdb.compact('pg_class');
SELECT driftdb.set_retention('ledger', '30 days');
SELECT retention FROM driftdb.stats WHERE table_name = 'ledger'::regclass;
DROP TABLE ledger;
SELECT count(*) FROM driftdb.segments s WHERE NOT EXISTS (SELECT 1 FROM driftdb.tables t WHERE t.table_id = s.table_id);
