-- The demo database: a few driftdb tables and some changes to look at.
CREATE EXTENSION IF NOT EXISTS driftdb;

CREATE TABLE customers (
    id    int PRIMARY KEY,
    name  text NOT NULL,
    email text UNIQUE
) USING driftdb;

CREATE TABLE orders (
    id          int PRIMARY KEY,
    customer_id int NOT NULL REFERENCES customers(id),
    status      text NOT NULL DEFAULT 'new' CHECK (status IN ('new', 'paid', 'shipped', 'cancelled')),
    amount      numeric(10,2) NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
) USING driftdb;
CREATE INDEX ON orders (customer_id);

INSERT INTO customers VALUES (1, 'Ada', 'ada@example.com'), (2, 'Grace', 'grace@example.com'),
                             (3, 'Edsger', 'edsger@example.com');
INSERT INTO orders (id, customer_id, amount) VALUES (100, 1, 25.00), (101, 2, 99.90), (102, 1, 12.50);
UPDATE orders SET status = 'paid' WHERE id IN (100, 101);
UPDATE orders SET status = 'shipped' WHERE id = 100;
DELETE FROM orders WHERE id = 102;
UPDATE customers SET email = 'grace.hopper@example.com' WHERE id = 2;
