-- driftdb bootstrap: runs first in CREATE EXTENSION driftdb.
--
-- The extension's schema `driftdb` is created by CREATE EXTENSION (driftdb.control: schema).
-- Everything driftdb stores for itself is an ordinary heap table in this schema, created
-- `USING heap` explicitly so that `default_table_access_method = driftdb` never versions
-- driftdb's own bookkeeping. These tables are extension configuration tables: pg_dump dumps
-- their rows, so history survives dump/restore (see docs/architecture.md, D3 and D6).
-- Nobody but driftdb writes them: direct writes are refused by trigger unless
-- driftdb.restore_mode is on (pg_restore), and PUBLIC has no privileges on them.
COMMENT ON SCHEMA driftdb IS 'driftdb: system-versioned tables (time travel, history, audit)';
-- Everyone may call driftdb's functions (each checks the caller's rights on the table it reads);
-- driftdb's own tables are not granted to PUBLIC (below).
GRANT USAGE ON SCHEMA driftdb TO PUBLIC;

-- The commit sequence: one value per committed transaction that changed driftdb rows.
CREATE SEQUENCE driftdb.commit_seq AS bigint MINVALUE 1 NO CYCLE;
-- Stable table ids: events name tables by id, not by OID (OIDs change across dump/restore).
CREATE SEQUENCE driftdb.table_id_seq AS integer MINVALUE 1 NO CYCLE;

-- Versioned tables. `relid` is a regclass so that pg_dump writes it as a name and pg_restore
-- maps it to the new OID.
CREATE TABLE driftdb.tables (
    table_id          integer PRIMARY KEY,
    relid             regclass NOT NULL UNIQUE,
    registered_seq    bigint NOT NULL,          -- seq of the first transaction recorded
    history_start_seq bigint NOT NULL DEFAULT 0, -- history is complete after this seq (0: from creation)
    key_attnums       int2[],                   -- identity the events' keys are recorded under since
                                                -- keyed_from ('{}': REPLICA IDENTITY FULL, NULL: none)
    keys_stable       boolean NOT NULL DEFAULT true, -- false: AS OF key lookups replay. Set by earlier
                                                -- builds at an identity change (they had no
                                                -- keyed_from); the next commit that writes the
                                                -- table sets it true, with keyed_from
    retention         interval,                 -- history older than this is purged by
                                                -- driftdb.maintain() (NULL: kept forever)
    compacted_upto    bigint NOT NULL DEFAULT 0, -- every compactable event <= this is in a segment
    last_compaction   timestamptz,
    history_purged    boolean NOT NULL DEFAULT false, -- history_start_seq is a purge horizon
                                                -- (not the seq of a conversion)
    keyed_from        bigint NOT NULL DEFAULT 0 -- events from this seq on are keyed by key_attnums
                                                -- (the identity changed at it; 0: since registration)
) USING heap;

-- One row per committed transaction that changed driftdb rows: the audit trail.
CREATE TABLE driftdb.commits (
    seq              bigint PRIMARY KEY,
    committed_at     timestamptz NOT NULL,
    xid              xid8 NOT NULL,
    committed_by     text NOT NULL,          -- current role at commit
    session_user_name text NOT NULL,
    application_name text NOT NULL,
    table_ids        integer[] NOT NULL
) USING heap;
-- no index on committed_at: commit times are non-decreasing in seq, so seq_at() binary-searches
-- the primary key (one index less to maintain on every commit)

-- The events: one DriftDB frame per changed row (or per TRUNCATE / schema change) per
-- transaction. `key` is the canonical encoding of the row's identity (NULL when it has none,
-- e.g. TRUNCATE); `frame` is the CRC-protected, versioned, MessagePack event (format in
-- docs/architecture.md).
CREATE TABLE driftdb.events (
    table_id integer NOT NULL,
    seq      bigint NOT NULL,
    ord      integer NOT NULL,       -- position within the transaction
    op       "char" NOT NULL,        -- i u d t s (as in the frame), or m: moved-key marker
                                     -- (an update that changed the key, filed under the old key)
    key      bytea,
    frame    bytea NOT NULL,
    PRIMARY KEY (table_id, seq, ord)
) USING heap;
CREATE INDEX events_key ON driftdb.events (table_id, key, seq);
-- frames are already compact MessagePack: skip pglz and keep short rows inline
ALTER TABLE driftdb.events ALTER COLUMN frame SET STORAGE EXTERNAL;

-- Event packs: a transaction's row events of one table, when there are many of them (at least
-- driftdb.pack_min_events: COPY, bulk INSERT/UPDATE/DELETE), stored a few kilobytes at a time
-- instead of one events row each. A pack holds a run of the events sorted by key, each with
-- its ord, op and frame exactly as driftdb.events would (format in docs/architecture.md and
-- driftdb_core::pack); key_lo/key_hi are its lowest and highest key. The writer numbers a
-- packed table's events in key order, so a transaction's packs in (seq, ord) order are also
-- in key order, and a lookup by key reads at most one pack per transaction.
CREATE TABLE driftdb.packs (
    table_id integer NOT NULL,
    seq      bigint NOT NULL,
    ord      integer NOT NULL,       -- ord of its first event
    nevents  integer NOT NULL,
    nversions integer NOT NULL,      -- events that wrote a row version (insert, update)
    key_lo   bytea NOT NULL,
    key_hi   bytea NOT NULL,
    data     bytea NOT NULL,
    PRIMARY KEY (table_id, seq, ord)
) USING heap;
CREATE INDEX packs_key ON driftdb.packs (table_id, seq, key_lo);
-- a row may fill a page before its values are moved out of line: the writer sizes packs by
-- this target (about 11 kB of events, compressed to one pack per page; history/packs.rs)
ALTER TABLE driftdb.packs SET (toast_tuple_target = 8160);
-- packs are a few kilobytes of MessagePack: lz4 (where the server has it) keeps them inline
DO $$
BEGIN
  ALTER TABLE driftdb.packs ALTER COLUMN data SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
  NULL; -- a server built without lz4: pglz
END
$$;

-- Snapshots: a table's full state at one seq, in compressed blocks (driftdb_core::snapshot,
-- format in docs/architecture.md). Derived from the events (any snapshot can be rebuilt from
-- them); they bound the cost of a full AS OF read to about the state size.
CREATE TABLE driftdb.snapshots (
    table_id integer NOT NULL,
    seq      bigint NOT NULL,        -- the state after every transaction with seq <= this
    block    integer NOT NULL,       -- 0..nblocks-1
    nrows    integer NOT NULL,       -- rows in this block
    data     bytea NOT NULL,         -- one snapshot block (magic "DS", CRC-32, zstd payload)
    PRIMARY KEY (table_id, seq, block)
) USING heap;
ALTER TABLE driftdb.snapshots ALTER COLUMN data SET STORAGE EXTERNAL;

-- The chain: per table, compacted event segments and the records of purges and erasures, in
-- order (seg_id 1, 2, ...). Each link's hash is SHA-256 over the previous link's hash and its
-- own data (driftdb_core::segment::chain_hash), so editing, removing or reordering a stored link
-- breaks the chain at that link (driftdb.verify names it). Segments ('s') hold many events of
-- one table, MessagePack-encoded and zstd-compressed in a DriftDB block (kind 2), sorted by
-- (key, seq), with the ranges below so that reads skip segments that cannot match. Purge ('p')
-- and erasure ('e') records are JSON (data = its UTF-8 text) naming what was removed, when, by
-- whom, and the hashes of the links they removed, so the chain stays checkable across them.
CREATE TABLE driftdb.segments (
    table_id   integer NOT NULL,
    seg_id     bigint NOT NULL,          -- position in the table's chain, from 1
    kind       "char" NOT NULL,          -- s: event segment, p: purge record, e: erasure record
    seq_lo     bigint,                   -- seq range of the segment's events (s only)
    seq_hi     bigint,
    key_lo     bytea,                    -- key range (canonical key bytes, as events.key)
    key_hi     bytea,
    time_lo    timestamptz,              -- commit time range
    time_hi    timestamptz,
    nevents    integer NOT NULL,
    raw_bytes  integer NOT NULL,         -- payload size before compression
    created_at timestamptz NOT NULL,
    prev_hash  bytea NOT NULL,           -- hash of link seg_id - 1 (32 zero bytes for the first)
    hash       bytea NOT NULL,
    data       bytea NOT NULL,
    nversions  integer NOT NULL DEFAULT 0, -- events that wrote a row version (insert, update)
    nmarkers   integer NOT NULL DEFAULT 0, -- moved-key markers among the nevents entries
    PRIMARY KEY (table_id, seg_id)
) USING heap;
ALTER TABLE driftdb.segments ALTER COLUMN data SET STORAGE EXTERNAL;

SELECT pg_catalog.pg_extension_config_dump('driftdb.tables', '');
SELECT pg_catalog.pg_extension_config_dump('driftdb.snapshots', '');
SELECT pg_catalog.pg_extension_config_dump('driftdb.segments', '');
SELECT pg_catalog.pg_extension_config_dump('driftdb.commits', '');
SELECT pg_catalog.pg_extension_config_dump('driftdb.events', '');
SELECT pg_catalog.pg_extension_config_dump('driftdb.packs', '');
SELECT pg_catalog.pg_extension_config_dump('driftdb.commit_seq', '');
SELECT pg_catalog.pg_extension_config_dump('driftdb.table_id_seq', '');

REVOKE ALL ON driftdb.tables, driftdb.commits, driftdb.events, driftdb.packs, driftdb.snapshots, driftdb.segments FROM PUBLIC;
REVOKE ALL ON SEQUENCE driftdb.commit_seq, driftdb.table_id_seq FROM PUBLIC;
