//! Time travel: reading a driftdb table as it was (AS OF a time or a commit seq), every
//! version of its rows, and every change.
//!
//! Data flow of a historical read:
//! 1. SQL: `driftdb.as_of(NULL::t, ts | seq)`, `SET driftdb.as_of`, `driftdb.versions(NULL::t)`,
//!    `driftdb.changes(NULL::t)` ([`srf`], [`guc`]).
//! 2. Planning ([`planner`]): `as_of(...)` in FROM becomes a scan of `t` itself marked with the
//!    point (so privileges, row-level security, whole-row references and views work as for any
//!    table reference); such scans, and every scan of a driftdb table while `driftdb.as_of` is
//!    set, get the DriftDB history scan ([`scan`]) as their only path — no current-state index
//!    path can answer a historical read. Equality on the identity columns is pushed down.
//! 3. Execution ([`engine`]): the point is resolved to a settled bound; a key lookup reads the
//!    key's newest event at or below it through `driftdb.events`' key index; a full read
//!    starts from the newest snapshot ([`snapshot`]) at or below it and replays the rest.
//!    [`reader`] does the index scans; `history::decode` turns row images into tuples.
/// `PG_FUNCTION_INFO_V1(name)`: the info record PostgreSQL looks up for a C function that is
/// declared `LANGUAGE c` in hand-written SQL (functions whose signature pgrx cannot express).
macro_rules! pg_function_info_v1 {
    ($info:ident) => {
        #[no_mangle]
        pub extern "C" fn $info() -> &'static pgrx::pg_sys::Pg_finfo_record {
            const V1: pgrx::pg_sys::Pg_finfo_record = pgrx::pg_sys::Pg_finfo_record { api_version: 1 };
            &V1
        }
    };
}

pub mod engine;
pub mod guc;
pub mod live;
pub mod planner;
pub mod reader;
pub mod scan;
pub mod snapshot;
pub mod srf;

pub fn init() {
    reader::register_callbacks();
    snapshot::init();
    guc::init();
    scan::init();
    planner::init();
}
