//! `driftdb.as_of`: the session/transaction-wide AS OF point.
//!
//! `SET [LOCAL] driftdb.as_of = '<timestamptz>' | '@seq:N'`; `RESET driftdb.as_of` (or '')
//! returns to now. The value is parsed and checked at SET time (a timestamp is fixed to an
//! absolute instant then, under the session's TimeZone/DateStyle), so a garbage value is an
//! ERROR at SET, not at the next query.
//!
//! While it is set, every scan of a driftdb table is planned as a DriftDB history scan
//! (`planner.rs`), which reads the point when it starts executing; writes to driftdb tables
//! are refused with SQLSTATE 25006. Plans made with the setting on are wrong with it off and
//! vice versa, so switching between set and unset invalidates every cached plan of the
//! session (`ResetPlanCache`): prepared statements, PL/pgSQL and SQL-function plans are
//! re-planned on their next use.
use std::cell::Cell;
use std::ffi::{c_char, c_void, CStr};

use pgrx::pg_sys;
use pgrx::prelude::*;

use super::engine::Point;
use crate::error::DriftError;

thread_local! {
    /// The parsed current value (None: not set).
    static CURRENT: Cell<Option<Point>> = const { Cell::new(None) };
}

extern "C" {
    // PostgreSQL 15 frees a GUC's `extra` with free(); guc_malloc is not exported.
    fn malloc(size: usize) -> *mut c_void;
}

/// Storage PostgreSQL's GUC machinery writes the string value into.
static mut VALUE: *mut c_char = std::ptr::null_mut();

/// The session's AS OF point, if `driftdb.as_of` is set.
pub fn current() -> Option<Point> {
    CURRENT.with(|c| c.get())
}

pub fn init() {
    // SAFETY: defining a GUC from _PG_init with static storage and hooks that never raise.
    unsafe {
        pg_sys::DefineCustomStringVariable(
            c"driftdb.as_of".as_ptr(),
            c"Read every driftdb table as of this time or commit seq ('@seq:N'); empty: now.".as_ptr(),
            c"While set, driftdb tables are read-only in this session.".as_ptr(),
            std::ptr::addr_of_mut!(VALUE),
            c"".as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            0,
            Some(check_hook),
            Some(assign_hook),
            None,
        );
    }
}

/// Parse '@seq:N' / a timestamptz; Err(detail) when invalid.
unsafe fn parse(s: &str) -> Result<Option<Point>, String> {
    let t = s.trim();
    if t.is_empty() {
        return Ok(None);
    }
    if let Some(n) = t.strip_prefix("@seq:") {
        return match n.trim().parse::<i64>() {
            Ok(n) if n >= 0 => Ok(Some(Point::Seq(n))),
            Ok(_) => Err("A commit seq is 0 or greater.".into()),
            Err(_) => Err(format!("\"{n}\" is not a commit seq: use @seq:N with a whole number N.")),
        };
    }
    // timestamptz_in raises on bad input: catch it (it holds no resources) and report it as
    // the check hook's detail instead.
    let owned = std::ffi::CString::new(t).map_err(|_| "Value contains a NUL byte.".to_string())?;
    PgTryBuilder::new(|| {
        let d = pgrx::direct_function_call_as_datum(
            pg_sys::timestamptz_in,
            &[Some(pg_sys::Datum::from(owned.as_ptr())), Some(pg_sys::Datum::from(pg_sys::InvalidOid)), Some(pg_sys::Datum::from(-1i32))],
        );
        Ok(d.map(|d| Point::Time(d.value() as i64)))
    })
    .catch_others(|_| Err(format!("\"{t}\" is neither a timestamp with time zone nor @seq:N.")))
    .execute()
}

#[pg_guard]
unsafe extern "C-unwind" fn check_hook(newval: *mut *mut c_char, extra: *mut *mut c_void, _source: pg_sys::GucSource::Type) -> bool {
    let s = if (*newval).is_null() { String::new() } else { CStr::from_ptr(*newval).to_string_lossy().into_owned() };
    match parse(&s) {
        Ok(p) => {
            // extra: [kind (0 none, 1 seq, 2 time), value], freed by the GUC machinery with free()
            let e = malloc(16) as *mut i64;
            if e.is_null() {
                return false;
            }
            let (k, v) = match p {
                None => (0, 0),
                Some(Point::Seq(n)) => (1, n),
                Some(Point::Time(t)) => (2, t),
            };
            *e = k;
            *e.add(1) = v;
            *extra = e as *mut c_void;
            true
        }
        Err(detail) => {
            let msg = std::ffi::CString::new(detail).unwrap_or_default();
            pg_sys::GUC_check_errcode(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE as i32);
            pg_sys::GUC_check_errdetail_string = pg_sys::pstrdup(msg.as_ptr());
            pg_sys::GUC_check_errhint_string = pg_sys::pstrdup(c"Use a timestamp such as '2026-01-15 10:00:00+00', or '@seq:42'.".as_ptr());
            false
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn assign_hook(_newval: *const c_char, extra: *mut c_void) {
    let p = if extra.is_null() {
        None
    } else {
        let e = extra as *const i64;
        match *e {
            1 => Some(Point::Seq(*e.add(1))),
            2 => Some(Point::Time(*e.add(1))),
            _ => None,
        }
    };
    let was = CURRENT.with(|c| c.replace(p));
    if was.is_some() != p.is_some() {
        // plans differ between "set" and "not set": make every cached plan re-plan
        pg_sys::ResetPlanCache();
    }
}

/// Refuse a write to a driftdb table while the session reads the past.
///
/// # Safety
/// `rel` must be a valid open relation.
pub unsafe fn refuse_write(rel: pg_sys::Relation) {
    if current().is_some() {
        let name = pgrx::name_data_to_str(&(*(*rel).rd_rel).relname).to_string();
        DriftError::new(
            PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
            format!("cannot write to driftdb table \"{name}\" while driftdb.as_of is set"),
        )
        .detail("The session is reading driftdb tables as of a past point; history cannot be changed.")
        .hint("RESET driftdb.as_of to write again.")
        .raise();
    }
}
