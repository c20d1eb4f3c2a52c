-- reads.sh schema, run with psql -v am=heap|driftdb.
CREATE TABLE rd (
    id          int           PRIMARY KEY,
    account     int           NOT NULL,
    qty         int           NOT NULL,
    price       numeric(12,2) NOT NULL,
    note        text,
    updated_at  timestamptz   NOT NULL
) USING :am;
