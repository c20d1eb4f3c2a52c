-- commit_cost.sh procedure: n single-row transactions in one call (COMMIT after each
-- statement), timed on the server; us_per_xact is the loop's wall time ÷ n, in µs.
--   workload 'update': UPDATE one row by id. The ids are spread over the whole table (7919 is
--                      prime, so 1..n visits n different rows while n <= nrows), like pgbench's
--                      random ids but the same in every system.
--   workload 'insert': INSERT one row (new id from the identity sequence).
CREATE PROCEDURE commit_cost(workload text, n int, nrows int, INOUT us_per_xact numeric)
LANGUAGE plpgsql AS $$
DECLARE
    t0 timestamptz := clock_timestamp();
BEGIN
    IF workload NOT IN ('update', 'insert') THEN
        RAISE EXCEPTION 'unknown workload %', workload USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR i IN 1..n LOOP
        IF workload = 'update' THEN
            UPDATE sr SET qty = qty + 1, updated_at = now() WHERE id = 1 + (i::bigint * 7919) % nrows;
        ELSE
            INSERT INTO sr (account, qty, price, note, updated_at)
            VALUES (1 + i % 10000, 1 + i % 100, (1 + i % 100) * 1.25, 'new order for account ' || (1 + i % 10000), now());
        END IF;
        COMMIT;
    END LOOP;
    us_per_xact := round((extract(epoch FROM clock_timestamp() - t0) * 1e6 / n)::numeric, 2);
END $$;
