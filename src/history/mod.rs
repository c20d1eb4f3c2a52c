//! History capture: every committed change to a driftdb table becomes DriftDB events.
//!
//! Data flow (docs/architecture.md, "Write path"):
//! 1. The access method's write callbacks (`am/write.rs`) tell [`capture`] which heap tuple
//!    versions a statement inserted, updated or deleted; [`capture`] keeps them in a
//!    per-transaction buffer (`driftdb_core::TxBuf`) by TID, with exact subtransaction undo.
//! 2. At `XACT_EVENT_PRE_COMMIT`, [`commit`] reduces the buffer to one net change per row,
//!    reads the row images from the heap, encodes them ([`codec`]), and — if anything changed —
//!    takes the next commit seq and timestamp and writes one frame per change into
//!    `driftdb.events` (or, for a table with many changes, into key-sorted [`packs`]) plus one
//!    row in `driftdb.commits`, in the same transaction.
//! 3. Aborts discard the buffer; nothing was written.
pub mod capture;
pub mod catalog;
pub mod codec;
pub mod commit;
pub mod decode;
pub mod ddl;
pub mod identity;
pub mod packs;
pub mod precompress;
pub mod settle;

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

/// `driftdb.restore_mode`: set by pg_restore sessions (PGOPTIONS='-c driftdb.restore_mode=on').
/// While on, writes to driftdb tables are not captured (their history arrives with the dump),
/// and driftdb's own tables accept the dumped rows.
pub static RESTORE_MODE: GucSetting<bool> = GucSetting::<bool>::new(false);

pub fn init() {
    GucRegistry::define_bool_guc(
        c"driftdb.restore_mode",
        c"Restoring a dump: take history from the dump instead of recording the restored rows.",
        c"Set for pg_restore/psql sessions that restore a dump of a database with driftdb tables, e.g. PGOPTIONS='-c driftdb.restore_mode=on'. Superuser only.",
        &RESTORE_MODE,
        GucContext::Suset,
        GucFlags::default(),
    );
    if !commit::CEILING.is_empty() {
        // a measuring build (benches/sql/ceiling.sh) must never pass for a working one
        pgrx::warning!(
            "this driftdb.so was built with DRIFTDB_CEILING={} for benchmarks: it does not record history",
            commit::CEILING
        );
    }
    packs::init();
    commit::register_callbacks();
    codec::register_type_invalidation();
    catalog::register_invalidation();
}
