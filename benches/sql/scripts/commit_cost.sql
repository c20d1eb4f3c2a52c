-- commit_cost.sh procedures: n single-row transactions in one call (COMMIT after each
-- statement), timed on the server; us_per_xact is the loop's wall time ÷ n, in µs.
-- Ids for the update are spread over the whole table (7919 is prime, so 1..n visits n
-- different rows while n <= nrows), like pgbench's random ids but the same in every system.
CREATE PROCEDURE commit_cost_update(n int, nrows int, INOUT us_per_xact numeric)
LANGUAGE plpgsql AS $$
DECLARE
    t0 timestamptz := clock_timestamp();
BEGIN
    FOR i IN 1..n LOOP
        UPDATE sr SET qty = qty + 1, updated_at = now() WHERE id = 1 + (i::bigint * 7919) % nrows;
        COMMIT;
    END LOOP;
    us_per_xact := round((extract(epoch FROM clock_timestamp() - t0) * 1e6 / n)::numeric, 2);
END $$;

CREATE PROCEDURE commit_cost_insert(n int, nrows int, INOUT us_per_xact numeric)
LANGUAGE plpgsql AS $$
DECLARE
    t0 timestamptz := clock_timestamp();
BEGIN
    FOR i IN 1..n LOOP
        INSERT INTO sr (account, qty, price, note, updated_at)
        VALUES (1 + i % 10000, 1 + i % 100, (1 + i % 100) * 1.25, 'new order for account ' || (1 + i % 10000), now());
        COMMIT;
    END LOOP;
    us_per_xact := round((extract(epoch FROM clock_timestamp() - t0) * 1e6 / n)::numeric, 2);
END $$;
