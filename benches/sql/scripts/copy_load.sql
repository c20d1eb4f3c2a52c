\timing on
COPY copy_t (id, customer_id, created_at, status, amount, note) FROM :'file' WITH (FORMAT csv);
