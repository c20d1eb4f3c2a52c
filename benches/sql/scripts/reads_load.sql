-- reads.sh data (psql -v nrows=N): identical rows in every system's database.
-- Loaded after periods versioning is set up (rows carry their system_time columns).
INSERT INTO rd (id, account, qty, price, note, updated_at)
SELECT g, 1 + (g * 7919) % 10000, g % 100, round((g % 50000) / 100.0, 2),
       'order ' || g || ' ' || md5(g::text), timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second'
  FROM generate_series(1::bigint, :nrows) g;
