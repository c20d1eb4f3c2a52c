-- driftdb history: the SQL face of the commit sequence and the audit trail.
-- Every function is schema-qualified throughout and pins its search_path, so it behaves the
-- same under any caller's search_path.

-- driftdb.current_seq() is defined in src/history/settle.rs (it waits for in-flight seqs).

-- driftdb.seq_at(timestamptz) is defined in src/history/settle.rs (binary search over seqs).

-- The audit trail: one row per committed transaction that changed driftdb rows.
-- Not granted to PUBLIC: GRANT SELECT ON driftdb.transactions TO your auditors.
CREATE VIEW driftdb.transactions AS
SELECT c.seq,
       c.committed_at,
       c.xid,
       c.committed_by,
       c.session_user_name AS "session_user",
       c.application_name,
       ARRAY(SELECT t.relid
               FROM pg_catalog.unnest(c.table_ids) WITH ORDINALITY AS u(table_id, n)
               JOIN driftdb.tables t ON t.table_id = u.table_id
              ORDER BY u.n) AS tables
  FROM driftdb.commits c;
COMMENT ON VIEW driftdb.transactions IS 'driftdb audit trail: seq, commit time, xid, roles, application and tables changed, per committed transaction';

-- driftdb's own tables are written only by driftdb (which bypasses triggers) — and by a
-- restore of a dump, in driftdb.restore_mode.
CREATE FUNCTION driftdb.guard_history() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
  IF pg_catalog.current_setting('driftdb.restore_mode', true) IS DISTINCT FROM 'on' THEN
    RAISE EXCEPTION 'driftdb history is written only by driftdb: % on %.% refused', TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME
      USING ERRCODE = 'object_not_in_prerequisite_state',
            DETAIL = 'History is recorded when transactions commit and cannot be edited with SQL.',
            HINT = 'Restoring a dump? Run the restore with driftdb.restore_mode = on, e.g. PGOPTIONS=''-c driftdb.restore_mode=on'' pg_restore ...';
  END IF;
  RETURN NULL;
END
$$;
CREATE TRIGGER guard_history BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON driftdb.events
  FOR EACH STATEMENT EXECUTE FUNCTION driftdb.guard_history();
CREATE TRIGGER guard_history BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON driftdb.commits
  FOR EACH STATEMENT EXECUTE FUNCTION driftdb.guard_history();
CREATE TRIGGER guard_history BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON driftdb.packs
  FOR EACH STATEMENT EXECUTE FUNCTION driftdb.guard_history();
CREATE TRIGGER guard_history BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON driftdb.tables
  FOR EACH STATEMENT EXECUTE FUNCTION driftdb.guard_history();
CREATE TRIGGER guard_history BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON driftdb.snapshots
  FOR EACH STATEMENT EXECUTE FUNCTION driftdb.guard_history();
CREATE TRIGGER guard_history BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON driftdb.segments
  FOR EACH STATEMENT EXECUTE FUNCTION driftdb.guard_history();

-- DROP TABLE removes the table's history.
CREATE FUNCTION driftdb.on_sql_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  dropped oid[];
BEGIN
  SELECT pg_catalog.array_agg(objid) INTO dropped
    FROM pg_catalog.pg_event_trigger_dropped_objects()
   WHERE classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND objsubid = 0 AND object_type = 'table';
  IF dropped IS NOT NULL THEN
    PERFORM driftdb._forget_dropped_tables(dropped);
  END IF;
END
$$;
CREATE EVENT TRIGGER driftdb_drop_history ON sql_drop EXECUTE FUNCTION driftdb.on_sql_drop();
