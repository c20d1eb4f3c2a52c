//! The `driftdb` table access method.
//!
//! Live rows are stored exactly as PostgreSQL's heap stores them: the routine below starts as a
//! copy of heap's `TableAmRoutine` (scans, index fetches, MVCC, row locks, EvalPlanQual, TOAST,
//! VACUUM, ANALYZE, parallel scans, bitmap scans are all heap's own code) and replaces only the
//! callbacks driftdb has to see. Each replaced callback lives in the file named here, in the
//! order of `tableam.h`:
//!
//! | callback                                   | file            | why                          |
//! |--------------------------------------------|-----------------|------------------------------|
//! | index_build_range_scan, index_validate_scan | `heap_swap.rs` | heap's code insists on heap's routine pointer |
//! | tuple_insert, multi_insert                 | `write.rs`      | capture inserts              |
//! | tuple_complete_speculative                 | `write.rs`      | capture ON CONFLICT inserts  |
//! | tuple_delete, tuple_update                 | `write.rs`      | identity check, capture      |
//! | relation_set_new_filenode                  | `write.rs`      | capture TRUNCATE             |
//! | relation_nontransactional_truncate         | `write.rs`      | capture TRUNCATE             |
//! | relation_toast_am                          | `mod.rs`        | TOAST tables stay plain heap |
//!
//! Anything not listed is heap's callback, unchanged (decision record D1).
use std::sync::OnceLock;

use pgrx::pg_sys;
use pgrx::prelude::*;

mod heap_swap;
mod write;

/// The routine handed to PostgreSQL. It must live forever: the relcache keeps a pointer to it
/// in every driftdb relation (`rd_tableam`).
static ROUTINE: OnceLock<pg_sys::TableAmRoutine> = OnceLock::new();

/// heap's own routine (a static inside the postgres binary).
pub(crate) fn heap_routine() -> &'static pg_sys::TableAmRoutine {
    // SAFETY: GetHeapamTableAmRoutine returns a pointer to a static const struct in the server
    // binary; it is never null and lives for the whole process.
    unsafe { &*pg_sys::GetHeapamTableAmRoutine() }
}

/// Build driftdb's routine: heap's, with driftdb's callbacks in place.
pub fn routine() -> &'static pg_sys::TableAmRoutine {
    ROUTINE.get_or_init(|| {
        let mut r = *heap_routine();
        r.index_build_range_scan = Some(heap_swap::index_build_range_scan);
        r.index_validate_scan = Some(heap_swap::index_validate_scan);
        r.relation_toast_am = Some(relation_toast_am);
        r.tuple_insert = Some(write::tuple_insert);
        r.multi_insert = Some(write::multi_insert);
        r.tuple_complete_speculative = Some(write::tuple_complete_speculative);
        r.tuple_delete = Some(write::tuple_delete);
        r.tuple_update = Some(write::tuple_update);
        r.relation_set_new_filenode = Some(write::relation_set_new_filenode);
        r.relation_nontransactional_truncate = Some(write::relation_nontransactional_truncate);
        r
    })
}

/// Called from `_PG_init`: build the routine once, while nothing else is running.
pub fn init() {
    routine();
}

/// TOAST tables of driftdb tables are plain heap tables: out-of-line values are stored and
/// read by heap's TOAST code, and their history is carried in the parent row's events.
#[pg_guard]
unsafe extern "C-unwind" fn relation_toast_am(_rel: pg_sys::Relation) -> pg_sys::Oid {
    pg_sys::HEAP_TABLE_AM_OID
}

/// The access-method handler PostgreSQL calls to get driftdb's callback table.
#[pg_extern(sql = r#"
CREATE FUNCTION driftdb.driftdb_am_handler(internal) RETURNS table_am_handler
    LANGUAGE c STRICT AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
COMMENT ON FUNCTION driftdb.driftdb_am_handler(internal) IS 'table access method handler for driftdb (system-versioned tables)';
CREATE ACCESS METHOD driftdb TYPE TABLE HANDLER driftdb.driftdb_am_handler;
COMMENT ON ACCESS METHOD driftdb IS 'system-versioned tables: heap storage for live rows, DriftDB events for history';
"#)]
fn driftdb_am_handler(_fcinfo: pg_sys::FunctionCallInfo) -> PgBox<pg_sys::TableAmRoutine> {
    // SAFETY: `routine()` is a 'static; PgBox::from_pg never frees what it wraps, and
    // PostgreSQL only reads through this pointer.
    unsafe {
        PgBox::from_pg(routine() as *const pg_sys::TableAmRoutine as *mut pg_sys::TableAmRoutine)
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn routine_is_heap_with_driftdb_overrides() {
        let heap = super::heap_routine();
        let ours = super::routine();
        // delegated: scans, fetches, locking, vacuum are heap's very functions
        assert_eq!(ours.scan_getnextslot.map(|f| f as usize), heap.scan_getnextslot.map(|f| f as usize));
        assert_eq!(ours.tuple_lock.map(|f| f as usize), heap.tuple_lock.map(|f| f as usize));
        assert_eq!(ours.relation_vacuum.map(|f| f as usize), heap.relation_vacuum.map(|f| f as usize));
        // wrapped: index builds and the TOAST AM
        assert_ne!(
            ours.index_build_range_scan.map(|f| f as usize),
            heap.index_build_range_scan.map(|f| f as usize)
        );
        assert_ne!(ours.relation_toast_am.map(|f| f as usize), heap.relation_toast_am.map(|f| f as usize));
    }

    #[pg_test]
    fn driftdb_table_round_trip_and_heap_toast() {
        Spi::run("CREATE TABLE rt (id int PRIMARY KEY, v text) USING driftdb").unwrap();
        Spi::run("INSERT INTO rt SELECT g, repeat('v', 3000) || g FROM generate_series(1, 50) g").unwrap();
        Spi::run("CREATE INDEX rt_v ON rt (v)").unwrap();
        let n = Spi::get_one::<i64>("SELECT count(*) FROM rt WHERE length(v) > 3000").unwrap();
        assert_eq!(n, Some(50));
        let am = Spi::get_one::<String>("SELECT amname::text FROM pg_am a JOIN pg_class c ON c.relam = a.oid WHERE c.relname = 'rt'").unwrap();
        assert_eq!(am.as_deref(), Some("driftdb"));
        let toast_am = Spi::get_one::<String>(
            "SELECT a.amname::text FROM pg_class c JOIN pg_class t ON t.oid = c.reltoastrelid \
             JOIN pg_am a ON a.oid = t.relam WHERE c.relname = 'rt'",
        )
        .unwrap();
        assert_eq!(toast_am.as_deref(), Some("heap"));
    }

    #[pg_test(error = "relation \"nope\" does not exist")]
    fn errors_are_errors_not_crashes() {
        Spi::run("SELECT * FROM nope").unwrap();
    }
}
