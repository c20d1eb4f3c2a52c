//! driftdb must be in `shared_preload_libraries` (decision record D2 in docs/architecture.md):
//! its settings (`driftdb.*`) must be validated when they are SET, its planner and utility hooks
//! must be in place before the first statement of every session, and its maintenance worker can
//! only be registered by the postmaster. Loading it any other way is refused with a clear error
//! instead of half-working.
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::error::DriftError;

/// Raise an ERROR unless the library is being loaded through `shared_preload_libraries`.
pub fn require_preload() {
    // SAFETY: a plain global bool set by PostgreSQL's dfmgr while it processes
    // shared_preload_libraries; reading it in the backend's single thread is sound.
    let in_preload = unsafe { pg_sys::process_shared_preload_libraries_in_progress };
    if !in_preload {
        DriftError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "driftdb must be loaded via shared_preload_libraries",
        )
        .detail(
            "The driftdb library was loaded on demand; its settings, hooks and commit \
             stamping need it loaded when the server starts.",
        )
        .hint(
            "Add driftdb to shared_preload_libraries in postgresql.conf \
             (shared_preload_libraries = 'driftdb') and restart the server.",
        )
        .raise();
    }
}
