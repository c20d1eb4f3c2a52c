-- generates the COPY input once, server-side (psql -v nrows=N -v file=PATH); deterministic content
COPY (
  SELECT g,
         1 + (g * 7919) % 50000,
         timestamptz '2025-01-01 00:00:00+00' + g * interval '17 seconds',
         (ARRAY['new','paid','shipped','delivered','returned'])[1 + g % 5],
         round(((g * 31) % 1000000) / 100.0, 2),
         'order note ' || md5(g::text)
    FROM generate_series(1::bigint, :nrows) g
) TO :'file' WITH (FORMAT csv);
