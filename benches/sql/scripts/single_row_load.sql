-- single_row.sh data (psql -v nrows=N): ids 1..N, then the identity continues at N+1.
-- Loaded after periods versioning is set up, so periods rows physically carry their
-- system_time columns as they would in real use.
INSERT INTO sr (id, account, qty, price, note, updated_at)
SELECT g, 1 + (g * 7919) % 10000, g % 100, round((g % 50000) / 100.0, 2),
       'order ' || g || ' ' || md5(g::text), timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second'
  FROM generate_series(1::bigint, :nrows) g;
SELECT setval(pg_get_serial_sequence('sr', 'id'), :nrows);
