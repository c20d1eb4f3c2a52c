//! `driftdb.stats`: per table, how much history there is and where it lives — live rows,
//! versions, events (recent — event rows and packs — and compacted), segments, snapshots, bytes raw and stored, the
//! compression ratio, the oldest and newest seq and time, where history starts, the retention
//! horizon and the last compaction. A view over driftdb's own tables (readable by those the
//! table owner or a superuser grants it to, like `driftdb.transactions`).
use pgrx::prelude::*;

extension_sql!(
    r#"
CREATE VIEW driftdb.stats AS
SELECT t.relid AS table_name,
       GREATEST(c.reltuples, 0)::bigint AS live_rows,
       COALESCE(e.versions, 0) + COALESCE(s.versions, 0) AS versions,
       COALESCE(e.events, 0) + COALESCE(s.events, 0) AS events,
       COALESCE(e.events, 0) AS recent_events,
       COALESCE(s.events, 0) AS compacted_events,
       COALESCE(s.segments, 0) AS segments,
       COALESCE(n.snapshots, 0) AS snapshots,
       COALESCE(e.raw_bytes, 0) + COALESCE(s.raw_bytes, 0) + COALESCE(n.raw_bytes, 0) AS bytes_raw,
       COALESCE(e.stored_bytes, 0) + COALESCE(s.stored_bytes, 0) + COALESCE(n.stored_bytes, 0) AS bytes_stored,
       round((COALESCE(e.raw_bytes, 0) + COALESCE(s.raw_bytes, 0) + COALESCE(n.raw_bytes, 0))::numeric
             / NULLIF(COALESCE(e.stored_bytes, 0) + COALESCE(s.stored_bytes, 0) + COALESCE(n.stored_bytes, 0), 0), 2) AS compression_ratio,
       LEAST(e.oldest_seq, s.oldest_seq) AS oldest_seq,
       GREATEST(e.newest_seq, s.newest_seq) AS newest_seq,
       (SELECT committed_at FROM driftdb.commits WHERE seq = LEAST(e.oldest_seq, s.oldest_seq)) AS oldest_time,
       (SELECT committed_at FROM driftdb.commits WHERE seq = GREATEST(e.newest_seq, s.newest_seq)) AS newest_time,
       t.history_start_seq,
       CASE WHEN t.history_purged THEN 'purged' WHEN t.history_start_seq > 0 THEN 'converted' ELSE 'complete' END AS history_start_reason,
       t.retention,
       pg_catalog.now() - t.retention AS retention_horizon,
       t.compacted_upto,
       t.last_compaction
  FROM driftdb.tables t
  LEFT JOIN pg_catalog.pg_class c ON c.oid = t.relid
  LEFT JOIN LATERAL (
        SELECT count(*) FILTER (WHERE ev.op <> 'm') AS events,
               count(*) FILTER (WHERE ev.op IN ('i', 'u')) AS versions,
               sum(pg_catalog.octet_length(ev.frame)) FILTER (WHERE ev.op <> 'm') AS raw_bytes,
               sum(pg_catalog.pg_column_size(ev.*)) AS stored_bytes,
               min(ev.seq) AS oldest_seq, max(ev.seq) AS newest_seq
          FROM driftdb.events ev WHERE ev.table_id = t.table_id) e0 ON true
  LEFT JOIN LATERAL (
        SELECT sum(pk.nevents) AS events, sum(pk.nversions) AS versions,
               sum(pg_catalog.octet_length(pk.data)) AS raw_bytes,
               sum(pg_catalog.pg_column_size(pk.*)) AS stored_bytes,
               min(pk.seq) AS oldest_seq, max(pk.seq) AS newest_seq
          FROM driftdb.packs pk WHERE pk.table_id = t.table_id) p ON true
  -- recent events: event rows and packs
  CROSS JOIN LATERAL (
        SELECT COALESCE(e0.events, 0) + COALESCE(p.events, 0) AS events,
               COALESCE(e0.versions, 0) + COALESCE(p.versions, 0) AS versions,
               COALESCE(e0.raw_bytes, 0) + COALESCE(p.raw_bytes, 0) AS raw_bytes,
               COALESCE(e0.stored_bytes, 0) + COALESCE(p.stored_bytes, 0) AS stored_bytes,
               LEAST(e0.oldest_seq, p.oldest_seq) AS oldest_seq,
               GREATEST(e0.newest_seq, p.newest_seq) AS newest_seq) e
  LEFT JOIN LATERAL (
        SELECT count(*) FILTER (WHERE sg.kind = 's') AS segments,
               sum(sg.nevents - sg.nmarkers) AS events, sum(sg.nversions) AS versions,
               sum(sg.raw_bytes) FILTER (WHERE sg.kind = 's') AS raw_bytes,
               sum(pg_catalog.pg_column_size(sg.*)) AS stored_bytes,
               min(sg.seq_lo) AS oldest_seq, max(sg.seq_hi) AS newest_seq
          FROM driftdb.segments sg WHERE sg.table_id = t.table_id) s ON true
  LEFT JOIN LATERAL (
        SELECT count(DISTINCT sn.seq) AS snapshots,
               sum(pg_catalog.pg_column_size(sn.data)) AS raw_bytes,
               sum(pg_catalog.pg_column_size(sn.*)) AS stored_bytes
          FROM driftdb.snapshots sn WHERE sn.table_id = t.table_id) n ON true;
COMMENT ON VIEW driftdb.stats IS 'driftdb storage per table: live rows, versions, events, segments, snapshots, bytes raw and stored, compression ratio, oldest/newest seq and time, history start, retention, last compaction';
"#,
    name = "stats_view",
    requires = ["history"]
);
