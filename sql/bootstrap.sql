-- driftdb bootstrap: runs first in CREATE EXTENSION driftdb.
-- The extension's schema `driftdb` is created by CREATE EXTENSION (driftdb.control: schema).
-- Everything driftdb stores for itself is an ordinary heap table in this schema, created
-- `USING heap` explicitly so that `default_table_access_method = driftdb` never versions
-- driftdb's own bookkeeping.
COMMENT ON SCHEMA driftdb IS 'driftdb: system-versioned tables (time travel, history, audit)';
