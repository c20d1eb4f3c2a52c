//! Maintenance by policy in the background: the driftdb maintenance workers.
//!
//! The policy work itself — compaction, snapshots, retention for every driftdb table of a
//! database — is the SQL function `driftdb.maintain()`, which anyone can call; nothing here is
//! needed for driftdb to work. With driftdb preloaded (always: decision record D2) the postmaster
//! also runs a *launcher* background worker that, every `driftdb.maintenance_naptime` seconds,
//! goes through the databases one at a time and starts a short-lived *worker* in each, which
//! calls `driftdb.maintain()` and logs each action it reports (`worker.rs`).
//!
//! Settings (reloaded on SIGHUP):
//! - `driftdb.maintenance_naptime` — seconds between rounds; 0 pauses the rounds (the launcher
//!   stays, idle, and resumes when the setting is raised again).
//!
//! The thresholds of the policy (when to compact, snapshot, expire) are `driftdb.maintain()`'s
//! settings, read by the worker like by any session.
pub mod worker;

use pgrx::{pg_sys, GucContext, GucFlags, GucRegistry, GucSetting};

/// `driftdb.maintenance_naptime`: seconds between two maintenance rounds; 0 pauses them.
pub static NAPTIME: GucSetting<i32> = GucSetting::<i32>::new(60);

/// Largest naptime, as for autovacuum_naptime: the latch wait is in milliseconds.
const MAX_NAPTIME: i32 = i32::MAX / 1000;

/// Define the settings; when called by the postmaster (shared_preload_libraries), register the
/// launcher.
pub fn init() {
    GucRegistry::define_int_guc(
        c"driftdb.maintenance_naptime",
        c"Time between two rounds of the driftdb maintenance worker (compaction, snapshots, retention by policy).",
        c"Each round runs driftdb.maintain() in every database that has driftdb installed, one database at a \
time, and logs what it did. 0 pauses the rounds; driftdb.maintain() can still be called directly.",
        &NAPTIME,
        0,
        MAX_NAPTIME,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    // SAFETY: a plain global bool set by PostgreSQL's dfmgr while the postmaster loads
    // shared_preload_libraries; reading it in the (single-threaded) process is sound.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        worker::register_launcher();
    }
}
