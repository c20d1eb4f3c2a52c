//! driftdb — system-versioned tables for PostgreSQL 15.
//!
//! `CREATE TABLE t (...) USING driftdb` keeps the live rows in PostgreSQL's heap (every MVCC,
//! locking, TOAST, VACUUM and index mechanism is heap's own) and records every committed change
//! as an append-only DriftDB event. This crate is the PostgreSQL edge: thin `#[pg_guard]` shims
//! that translate between PostgreSQL and the pgrx-free storage core in `core/`
//! (`driftdb_core`: frames, values, replay, the per-transaction change buffer).
//!
//! Module map:
//! - [`api`]     — SQL-callable functions (verify, ...), thin shims.
//! - [`am`]      — the `driftdb` table access method: heap's callback table with the callbacks
//!                 driftdb must see (writes, truncate, index builds, TOAST) wrapped.
//! - [`history`] — capture: the per-transaction change buffer, commit stamping, the codec.
//! - [`hooks`]   — PostgreSQL hooks (ProcessUtility: ALTER TABLE and history).
//! - [`timetravel`] — reading the past: AS OF, versions, changes, snapshots; the planner hooks
//!                 and the DriftDB history scan.
//! - [`preload`] — the shared_preload_libraries requirement and its error.
//!
//! See `docs/architecture.md` for the data flow, on-disk formats and decision records.
use pgrx::prelude::*;

::pgrx::pg_module_magic!(name, version);

pub mod am;
pub mod api;
pub mod error;
pub mod history;
pub mod hooks;
pub mod maint;
pub mod preload;
pub mod segments;
pub mod timetravel;

extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
extension_sql_file!("../sql/history.sql", name = "history", requires = ["bootstrap"]);

/// Library entry point: PostgreSQL calls this once per process that loads driftdb.
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    preload::require_preload();
    am::init();
    history::init();
    hooks::init();
    timetravel::init();
    segments::init();
    maint::init();
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    #[allow(unused_imports)]
    use pgrx::prelude::*;
}

/// Required by `cargo pgrx test`: settings for the test cluster.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries = 'driftdb'", "max_prepared_transactions = 5", "driftdb.maintenance_naptime = 0"]
    }
}
