//! The maintenance launcher and the per-database maintenance worker.
//!
//! **Launcher** ("driftdb maintenance launcher", registered by the postmaster at preload, started
//! once recovery has finished — never on a standby — and restarted 10 s after it exits with an
//! error). It connects to no database (like PostgreSQL's autovacuum and logical replication
//! launchers), because the list of databases is the shared catalog `pg_database` and no
//! particular database (not even "postgres") is sure to exist. Every
//! `driftdb.maintenance_naptime` seconds it reads `pg_database` and, for each database that
//! accepts connections and is not a template, starts a dynamic worker and waits for it to exit
//! before starting the next: one database at a time, so maintenance never takes more than one
//! background worker slot besides the launcher's own.
//!
//! **Worker** ("driftdb maintenance <db>", type "driftdb maintenance worker", never restarted).
//! It connects to its database by OID as the bootstrap superuser, with an empty `search_path`,
//! and in one transaction checks that driftdb is installed and has `driftdb.maintain()`; if so
//! it calls it and, after the commit, logs every action it reports at LOG level as
//! `driftdb maintenance: <db>.<table>: <action>: <detail>`. An ERROR in `driftdb.maintain()`
//! ends this worker only (logged, naming the database); the launcher carries on with the next
//! database.
//!
//! Both set `application_name` to "driftdb maintenance", so they are easy to find in
//! `pg_stat_activity` (`backend_type` tells them apart).
//!
//! Stopping. The launcher uses PostgreSQL's own handlers: SIGHUP sets `ConfigReloadPending`,
//! SIGTERM sets `ShutdownRequestPending`; both set the latch, which the launcher waits on in
//! every loop (including while a worker runs), and it checks interrupts after every wait, so it
//! also absorbs procsignal barriers (DROP DATABASE waits for those). On SIGTERM it stops
//! launching, asks its running worker to stop, waits for it briefly and exits with code 1 — the
//! convention of PostgreSQL's logical replication launcher: in a shutdown nothing is restarted,
//! while a launcher terminated alone (pg_terminate_backend) comes back after its restart time
//! (pause maintenance with `driftdb.maintenance_naptime = 0` instead). The worker uses the
//! regular backend SIGTERM handler (`die`): a fast shutdown or DROP DATABASE ... WITH (FORCE)
//! ends it at its next interrupt check, its transaction is rolled back.
use std::ffi::{c_long, CStr};
use std::ptr;
use std::time::{Duration, Instant};

use pgrx::bgworkers::{BackgroundWorkerBuilder, BgWorkerStartTime};
use pgrx::pg_sys;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;

use super::NAPTIME;
use crate::error::DriftError;

const LIBRARY: &str = "driftdb";
const LAUNCHER_NAME: &str = "driftdb maintenance launcher";
const LAUNCHER_MAIN: &str = "driftdb_maintenance_launcher_main";
const WORKER_TYPE: &str = "driftdb maintenance worker";
const WORKER_MAIN: &str = "driftdb_maintenance_worker_main";
/// The application_name of the launcher and the workers.
const APPLICATION_NAME: &CStr = c"driftdb maintenance";
/// How long after exiting with an error the postmaster restarts the launcher.
const LAUNCHER_RESTART: Duration = Duration::from_secs(10);
/// After SIGTERM, how long the launcher waits for its running worker to stop.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// While a worker runs, the launcher wakes at least this often (it is normally woken by the
/// postmaster's notification that the worker exited).
const POLL: Duration = Duration::from_secs(1);
/// What the worker runs (also shown in pg_stat_activity.query). Casts keep the output readable
/// whatever exact types `driftdb.maintain()` declares.
const MAINTAIN_SQL: &CStr =
    c"SELECT table_name::pg_catalog.text, action::pg_catalog.text, detail::pg_catalog.text FROM driftdb.maintain()";

// PostgreSQL's signal handlers, by their C symbols: pgrx's `pg_sys` functions of the same names
// are Rust wrappers (guarded calls), not something to hand to pqsignal.
mod handlers {
    use std::ffi::c_int;
    extern "C-unwind" {
        /// tcop/postgres.c: the regular backend SIGTERM handler.
        pub fn die(signo: c_int);
        /// postmaster/interrupt.c: sets ConfigReloadPending and the latch.
        pub fn SignalHandlerForConfigReload(signo: c_int);
        /// postmaster/interrupt.c: sets ShutdownRequestPending and the latch.
        pub fn SignalHandlerForShutdownRequest(signo: c_int);
    }
}

/// Register the launcher with the postmaster. Only valid while shared_preload_libraries is
/// being processed.
pub fn register_launcher() {
    BackgroundWorkerBuilder::new(LAUNCHER_NAME)
        .set_type(LAUNCHER_NAME)
        .set_library(LIBRARY)
        .set_function(LAUNCHER_MAIN)
        // shared memory + a database connection (to no database: it reads pg_database only)
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(LAUNCHER_RESTART))
        .load();
}

// ---------------------------------------------------------------------------------------------
// Launcher
// ---------------------------------------------------------------------------------------------

/// A database to maintain.
struct Database {
    oid: pg_sys::Oid,
    name: String,
}

/// Main function of the launcher (`bgw_function_name`).
#[no_mangle]
#[pg_guard]
pub extern "C-unwind" fn driftdb_maintenance_launcher_main(_arg: pg_sys::Datum) {
    // SAFETY: we are a freshly started background worker with signals still blocked; these are
    // PostgreSQL's own async-signal-safe handlers (they set a sig_atomic_t flag and the latch),
    // installed before signals are unblocked. Connecting to no database (NULL, NULL) is what the
    // BGWORKER_BACKEND_DATABASE_CONNECTION flag we registered with allows, once, here.
    unsafe {
        pg_sys::pqsignal(pg_sys::SIGHUP as i32, Some(handlers::SignalHandlerForConfigReload));
        pg_sys::pqsignal(pg_sys::SIGTERM as i32, Some(handlers::SignalHandlerForShutdownRequest));
        pg_sys::BackgroundWorkerUnblockSignals();
        pg_sys::BackgroundWorkerInitializeConnection(ptr::null(), ptr::null(), 0);
    }
    set_session_option(c"application_name", APPLICATION_NAME);
    debug1!("driftdb maintenance launcher started");

    let mut last_round = Instant::now();
    let mut out_of_slots = false;
    while !shutdown_requested() {
        reload_config_if_pending();
        let naptime = NAPTIME.get();
        if naptime <= 0 {
            wait(None); // paused until a reload (or SIGTERM)
            continue;
        }
        let due = last_round + Duration::from_secs(naptime as u64);
        let now = Instant::now();
        if now < due {
            wait(Some(due - now));
            continue;
        }
        run_round(&mut out_of_slots);
        last_round = Instant::now();
    }
    debug1!("driftdb maintenance launcher shutting down");
    // SAFETY: proc_exit runs the registered exit callbacks and never returns; nothing of ours
    // needs dropping (no Rust values with destructors are live in this frame).
    unsafe { pg_sys::proc_exit(1) }
}

/// One round: a worker per database, one at a time.
fn run_round(out_of_slots: &mut bool) {
    let databases = database_list();
    debug1!("driftdb maintenance: round over {} databases", databases.len());
    for db in databases {
        reload_config_if_pending();
        if shutdown_requested() || NAPTIME.get() <= 0 {
            return; // stopping, or paused in the middle of the round
        }
        let Some(handle) = start_worker(&db) else {
            if !*out_of_slots {
                warning!(
                    "driftdb maintenance: no free background worker slot to maintain database \"{}\"; \
                     skipping this round (raise max_worker_processes)",
                    db.name
                );
                *out_of_slots = true; // warn once until a worker starts again
            }
            return;
        };
        *out_of_slots = false;
        wait_for_exit(handle);
    }
}

/// The databases that accept connections and are not templates, read from the shared catalog
/// pg_database like autovacuum's get_database_list().
fn database_list() -> Vec<Database> {
    let mut out = Vec::new();
    // SAFETY: the launcher is connected (to no database), outside any transaction; the scan of
    // the shared catalog runs in its own transaction with a snapshot, and every tuple is read
    // while the scan holds it (its fields are copied out before the next heap_getnext). An ERROR
    // raised by any call unwinds through pgrx's guards and ends the launcher (restarted later).
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        let _ = pg_sys::GetTransactionSnapshot();
        let rel = pg_sys::table_open(pg_sys::DatabaseRelationId, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let scan = pg_sys::table_beginscan_catalog(rel, 0, ptr::null_mut());
        loop {
            let tup = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tup.is_null() {
                break;
            }
            let form = &*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_database>(tup);
            // datconnlimit = -2: a DROP DATABASE was interrupted; connecting would fail
            if !form.datallowconn || form.datistemplate || form.datconnlimit == pg_sys::DATCONNLIMIT_INVALID_DB {
                continue;
            }
            out.push(Database { oid: form.oid, name: pgrx::name_data_to_str(&form.datname).to_string() });
        }
        pg_sys::table_endscan(scan);
        pg_sys::table_close(rel, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        pg_sys::CommitTransactionCommand();
    }
    out
}

/// Start the worker for `db`; None when no background worker slot is free.
fn start_worker(db: &Database) -> Option<*mut pg_sys::BackgroundWorkerHandle> {
    // "driftdb maintenance " + a name of at most NAMEDATALEN-1 bytes fits BGW_MAXLEN (96)
    let builder = BackgroundWorkerBuilder::new(&format!("driftdb maintenance {}", db.name))
        .set_type(WORKER_TYPE)
        .set_library(LIBRARY)
        .set_function(WORKER_MAIN)
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(None)
        .set_argument(Some(pg_sys::Datum::from(db.oid)))
        // SAFETY: reading our own pid, set once at process start.
        .set_notify_pid(unsafe { pg_sys::MyProcPid });
    let mut bgw: pg_sys::BackgroundWorker = (&builder).into();
    let mut handle: *mut pg_sys::BackgroundWorkerHandle = ptr::null_mut();
    // SAFETY: bgw is a fully initialized registration (by value: its main argument is an OID,
    // no pointer); on success PostgreSQL sets handle to a palloc'd handle we own.
    let ok = unsafe { pg_sys::RegisterDynamicBackgroundWorker(&mut bgw, &mut handle) };
    (ok && !handle.is_null()).then_some(handle)
}

/// Wait until the worker behind `handle` has exited, then free the handle. On SIGTERM, ask the
/// worker to stop and give it STOP_GRACE.
fn wait_for_exit(handle: *mut pg_sys::BackgroundWorkerHandle) {
    let mut stop_by: Option<Instant> = None;
    loop {
        let mut pid: pg_sys::pid_t = 0;
        // SAFETY: handle came from RegisterDynamicBackgroundWorker and is freed only below.
        let status = unsafe { pg_sys::GetBackgroundWorkerPid(handle, &mut pid) };
        if status != pg_sys::BgwHandleStatus::BGWH_STARTED && status != pg_sys::BgwHandleStatus::BGWH_NOT_YET_STARTED {
            break; // stopped
        }
        if shutdown_requested() {
            match stop_by {
                None => {
                    // SAFETY: as above; asks the postmaster to SIGTERM the worker (or not start it).
                    unsafe { pg_sys::TerminateBackgroundWorker(handle) };
                    stop_by = Some(Instant::now() + STOP_GRACE);
                }
                Some(t) if Instant::now() >= t => break,
                Some(_) => {}
            }
        }
        reload_config_if_pending();
        wait(Some(POLL));
    }
    // SAFETY: the handle is palloc'd memory we own and no longer use.
    unsafe { pg_sys::pfree(handle.cast()) };
}

/// Whether SIGTERM was received.
fn shutdown_requested() -> bool {
    // SAFETY: a sig_atomic_t written only by PostgreSQL's signal handler; read volatile.
    unsafe { ptr::addr_of!(pg_sys::ShutdownRequestPending).read_volatile() != 0 }
}

/// Re-read the configuration files if SIGHUP was received.
fn reload_config_if_pending() {
    // SAFETY: ConfigReloadPending is a sig_atomic_t set by the SIGHUP handler and cleared here
    // (as PostgreSQL's own processes do) before re-reading the files, in the main loop, outside
    // any transaction.
    unsafe {
        if ptr::addr_of!(pg_sys::ConfigReloadPending).read_volatile() != 0 {
            ptr::addr_of_mut!(pg_sys::ConfigReloadPending).write_volatile(0);
            pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP);
        }
    }
}

/// Wait on the latch (set by signals and by the postmaster's worker notifications) for at most
/// `timeout` (None: until set), then handle pending interrupts. Exits if the postmaster dies.
fn wait(timeout: Option<Duration>) {
    let (events, ms) = match timeout {
        // round up, so a wait never ends just before its deadline and spins
        Some(t) => (
            pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH,
            t.as_micros().div_ceil(1000).min(c_long::MAX as u128) as c_long,
        ),
        None => (pg_sys::WL_LATCH_SET | pg_sys::WL_EXIT_ON_PM_DEATH, -1),
    };
    // SAFETY: MyLatch is this process's latch, valid for its lifetime; WL_EXIT_ON_PM_DEATH
    // makes WaitLatch exit the process if the postmaster is gone. CHECK_FOR_INTERRUPTS may raise
    // (e.g. a cancel), which unwinds through pgrx's guard and ends the launcher.
    unsafe {
        pg_sys::WaitLatch(pg_sys::MyLatch, events as i32, ms, pg_sys::PG_WAIT_EXTENSION);
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
    pg_sys::check_for_interrupts!();
}

/// Set a GUC for the rest of the process, as a SET would (a function's own SET clause still
/// applies on top of it).
fn set_session_option(name: &CStr, value: &CStr) {
    // SAFETY: both are NUL-terminated strings; called outside any transaction, so the value is
    // the process's session value. application_name's assign hook also updates pg_stat_activity.
    unsafe {
        pg_sys::SetConfigOption(
            name.as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_SESSION,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Per-database worker
// ---------------------------------------------------------------------------------------------

/// What a worker found in its database.
enum Outcome {
    NotInstalled,
    NoMaintainFunction,
    Actions(Vec<Action>),
}

/// One row of driftdb.maintain().
struct Action {
    table: Option<String>,
    action: Option<String>,
    detail: Option<String>,
}

/// Main function of a per-database worker (`bgw_function_name`); the argument is the
/// database's OID.
#[no_mangle]
#[pg_guard]
pub extern "C-unwind" fn driftdb_maintenance_worker_main(arg: pg_sys::Datum) {
    let dboid = pg_sys::Oid::from(arg.value() as u32);
    // SAFETY: a freshly started worker with signals blocked: `die` is the regular backend
    // SIGTERM handler (it only sets flags and the latch; the process exits at its next
    // CHECK_FOR_INTERRUPTS), installed before signals are unblocked. We registered with
    // BGWORKER_BACKEND_DATABASE_CONNECTION and connect once, as the bootstrap superuser.
    unsafe {
        pg_sys::pqsignal(pg_sys::SIGTERM as i32, Some(handlers::die));
        pg_sys::BackgroundWorkerUnblockSignals();
        pg_sys::BackgroundWorkerInitializeConnectionByOid(dboid, pg_sys::InvalidOid, 0);
    }
    set_session_option(c"application_name", APPLICATION_NAME);
    // We run as a superuser in every database: resolve no name through schemas that other
    // users can create objects in (only pg_catalog and what is written qualified).
    set_session_option(c"search_path", c"");

    // driftdb.maintain() does one table's work per call (so that each table's changes commit
    // on their own): call it, each time in a transaction of its own, until it has nothing to
    // do — at most MAX_CALLS times per round.
    let mut db = format!("{dboid:?}");
    for _ in 0..MAX_CALLS {
        // SAFETY: connected and outside any transaction; the transaction is started and (unless
        // an ERROR ends the process, whose exit callbacks then abort it) committed here, and
        // the snapshot pushed is popped before the commit.
        let outcome = unsafe {
            pg_sys::SetCurrentStatementStartTimestamp();
            pg_sys::StartTransactionCommand();
            pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
            let name = pg_sys::get_database_name(pg_sys::MyDatabaseId);
            if !name.is_null() {
                db = CStr::from_ptr(name).to_string_lossy().into_owned();
            }
            pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_RUNNING, MAINTAIN_SQL.as_ptr());
            let outcome = maintain(&db);
            pg_sys::PopActiveSnapshot();
            pg_sys::CommitTransactionCommand();
            pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_IDLE, ptr::null());
            outcome
        };
        match outcome {
            Outcome::NotInstalled => {
                debug1!("driftdb maintenance: driftdb is not installed in database \"{db}\"");
                return;
            }
            Outcome::NoMaintainFunction => {
                debug1!("driftdb maintenance: driftdb in database \"{db}\" has no driftdb.maintain() (ALTER EXTENSION driftdb UPDATE adds it)");
                return;
            }
            // logged after the commit: only what really happened
            Outcome::Actions(actions) => {
                if actions.is_empty() {
                    return;
                }
                for a in actions {
                    let table = a.table.as_deref().unwrap_or("-");
                    let action = a.action.as_deref().unwrap_or("-");
                    match a.detail.as_deref() {
                        Some(detail) => log!("driftdb maintenance: {db}.{table}: {action}: {detail}"),
                        None => log!("driftdb maintenance: {db}.{table}: {action}"),
                    }
                }
            }
        }
        // between transactions: a pending SIGTERM ends the worker here
        pgrx::check_for_interrupts!();
    }
}

/// Calls of driftdb.maintain() per database per round (each does one table's work).
const MAX_CALLS: usize = 1000;

/// In the worker's transaction: check for driftdb and driftdb.maintain(), and run it. An error
/// is raised again with the database named, and ends the worker.
fn maintain(db: &str) -> Outcome {
    let result = PgTryBuilder::new(|| {
        Spi::connect_mut(|client| -> Result<Outcome, pgrx::spi::Error> {
            let installed = !client
                .select("SELECT 1 FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'driftdb'", None, &[])?
                .is_empty();
            if !installed {
                return Ok(Outcome::NotInstalled);
            }
            let has_maintain = client
                .select("SELECT pg_catalog.to_regprocedure('driftdb.maintain()') IS NOT NULL", None, &[])?
                .first()
                .get_one::<bool>()?
                .unwrap_or(false);
            if !has_maintain {
                return Ok(Outcome::NoMaintainFunction);
            }
            let sql = MAINTAIN_SQL.to_str().expect("ASCII");
            let mut actions = Vec::new();
            for row in client.update(sql, None, &[])? {
                actions.push(Action { table: row.get(1)?, action: row.get(2)?, detail: row.get(3)? });
            }
            Ok(Outcome::Actions(actions))
        })
    })
    .catch_others(|e| {
        let report = match &e {
            CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) | CaughtError::RustPanic { ereport: r, .. } => r,
        };
        let mut err = DriftError::new(
            report.sql_error_code(),
            format!("driftdb maintenance of database \"{db}\" failed: {}", report.message()),
        );
        if let Some(d) = report.detail() {
            err = err.detail(d);
        }
        if let Some(h) = report.hint() {
            err = err.hint(h);
        }
        err.raise()
    })
    .execute();
    result.unwrap_or_else(|e| {
        DriftError::new(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("driftdb maintenance of database \"{db}\" failed: {e}"))
            .raise()
    })
}
