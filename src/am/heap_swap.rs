//! Callbacks where heap's implementation is right but refuses to run on a relation whose
//! `rd_tableam` is not heap's own routine.
//!
//! `heapam_index_build_range_scan` and `heapam_index_validate_scan` call `heap_getnext()`, which
//! raises "only heap AM is supported" unless `rel->rd_tableam == GetHeapamTableAmRoutine()`.
//! Since a driftdb relation's storage *is* a heap, we point `rd_tableam` at heap's routine for
//! the duration of the call and restore it afterwards — also when the call raises an ERROR
//! (`PgTryBuilder::finally`), so the relcache entry never keeps the wrong routine.
//! Nothing is written to the table during an index build, so no change escapes capture.
use pgrx::pg_sys;
use pgrx::pg_sys::PgTryBuilder;
use pgrx::prelude::*;

use super::heap_routine;

/// Run `f` with `rel->rd_tableam` temporarily set to heap's routine.
///
/// # Safety
/// `rel` must be a valid, open relcache entry for the whole call.
unsafe fn as_heap<R>(rel: pg_sys::Relation, f: impl FnOnce() -> R) -> R {
    let saved = (*rel).rd_tableam;
    (*rel).rd_tableam = heap_routine();
    PgTryBuilder::new(std::panic::AssertUnwindSafe(f))
        // SAFETY: `rel` stays valid for the call (caller's contract); restoring the pointer the
        // relcache had is always correct.
        .finally(|| unsafe { (*rel).rd_tableam = saved })
        .execute()
}

#[pg_guard]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe extern "C-unwind" fn index_build_range_scan(
    table_rel: pg_sys::Relation,
    index_rel: pg_sys::Relation,
    index_info: *mut pg_sys::IndexInfo,
    allow_sync: bool,
    anyvisible: bool,
    progress: bool,
    start_blockno: pg_sys::BlockNumber,
    numblocks: pg_sys::BlockNumber,
    callback: pg_sys::IndexBuildCallback,
    callback_state: *mut std::ffi::c_void,
    scan: pg_sys::TableScanDesc,
) -> f64 {
    let heap_fn = heap_routine().index_build_range_scan.expect("heap has index_build_range_scan");
    // SAFETY: PostgreSQL passes a valid open table relation; heap's callback gets exactly the
    // arguments it would have received for a heap table.
    as_heap(table_rel, || unsafe {
        heap_fn(
            table_rel,
            index_rel,
            index_info,
            allow_sync,
            anyvisible,
            progress,
            start_blockno,
            numblocks,
            callback,
            callback_state,
            scan,
        )
    })
}

#[pg_guard]
pub(super) unsafe extern "C-unwind" fn index_validate_scan(
    table_rel: pg_sys::Relation,
    index_rel: pg_sys::Relation,
    index_info: *mut pg_sys::IndexInfo,
    snapshot: pg_sys::Snapshot,
    state: *mut pg_sys::ValidateIndexState,
) {
    let heap_fn = heap_routine().index_validate_scan.expect("heap has index_validate_scan");
    // SAFETY: as above.
    as_heap(table_rel, || unsafe { heap_fn(table_rel, index_rel, index_info, snapshot, state) })
}
