-- copy_1m.sh target table, run with psql -v am=heap|driftdb: a realistic 6-column row
-- (~100 bytes) with a primary key, created empty before every timed COPY.
DROP TABLE IF EXISTS copy_t, copy_t_history CASCADE;
CREATE TABLE copy_t (
    id          bigint PRIMARY KEY,
    customer_id int           NOT NULL,
    created_at  timestamptz   NOT NULL,
    status      text          NOT NULL,
    amount      numeric(12,2) NOT NULL,
    note        text
) USING :am;
