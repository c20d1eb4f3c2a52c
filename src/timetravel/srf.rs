//! The SQL functions of time travel: `driftdb.as_of`, `driftdb.versions`, `driftdb.changes`
//! and `driftdb.snapshot`.
//!
//! `as_of`, `versions` and `changes` take a row of the table (`NULL::t`) so that they can
//! return rows of *that* table's type (`anyelement` polymorphism). They are set-returning C
//! functions in materialize mode; in a FROM clause the planner hooks usually serve them with
//! the DriftDB history scan instead (`planner.rs`: `as_of` is rewritten to a scan of the table
//! itself, `versions` gets its key predicates pushed down), and these bodies run only where no
//! hook applies (e.g. a call in a SELECT list).
//!
//! Access control: the caller needs SELECT on the table (or on every column: these functions
//! return whole rows). Row-level security: when policies apply to the caller, these functions
//! refuse — `as_of` in a FROM clause and `SET driftdb.as_of` apply the policies instead.
use driftdb_core::{Op, Row};
use pgrx::pg_sys;
use pgrx::prelude::*;

use super::engine::{self, Point, Source};
use crate::error::DriftError;
use crate::history::catalog::Catalog;
use crate::history::decode::RowDecoder;

/// The relation whose row type argument `argno` of the call has.
unsafe fn table_of_arg(fcinfo: pg_sys::FunctionCallInfo, argno: i32, fname: &str) -> pg_sys::Oid {
    let typ = pg_sys::get_fn_expr_argtype((*fcinfo).flinfo, argno);
    let relid = if typ == pg_sys::InvalidOid { pg_sys::InvalidOid } else { pg_sys::get_typ_typrelid(typ) };
    if relid == pg_sys::InvalidOid {
        DriftError::new(PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE, format!("driftdb.{fname} needs a row of a driftdb table as its first argument"))
            .hint(format!("Pass a typed NULL of the table's row type, e.g. driftdb.{fname}(NULL::my_table, ...)."))
            .raise();
    }
    relid
}

/// Who may read history of `relid` through a function returning whole rows.
pub unsafe fn check_read(relid: pg_sys::Oid, fname: &str) {
    let user = pg_sys::GetUserId();
    let name = rel_name(relid);
    let ok = pg_sys::pg_class_aclcheck(relid, user, pg_sys::ACL_SELECT as pg_sys::AclMode) == pg_sys::AclResult::ACLCHECK_OK
        || pg_sys::pg_attribute_aclcheck_all(relid, user, pg_sys::ACL_SELECT as pg_sys::AclMode, pg_sys::AclMaskHow::ACLMASK_ALL)
            == pg_sys::AclResult::ACLCHECK_OK;
    if !ok {
        DriftError::new(PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE, format!("permission denied for table {name}"))
            .detail(format!("driftdb.{fname} returns whole rows of {name}: it needs SELECT on the table or on all of its columns."))
            .raise();
    }
    if pg_sys::check_enable_rls(relid, pg_sys::InvalidOid, false) == pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32 {
        DriftError::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("driftdb.{fname} is not available on table {name} to roles its row-level security policies restrict"),
        )
        .detail("History would show rows the policies hide from you.")
        .hint(format!("Read the past through driftdb.as_of(NULL::{name}, ...) in a FROM clause or SET driftdb.as_of, which apply the policies to historical rows."))
        .raise();
    }
}

pub unsafe fn rel_name(relid: pg_sys::Oid) -> String {
    let p = pg_sys::get_rel_name(relid);
    if p.is_null() {
        format!("{}", relid.to_u32())
    } else {
        std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

/// Open a driftdb table for a history read (AccessShareLock) or fail clearly.
pub unsafe fn open_driftdb(relid: pg_sys::Oid) -> pg_sys::Relation {
    let rel = pg_sys::relation_open(relid, pg_sys::AccessShareLock as i32);
    if (*rel).rd_tableam != crate::am::routine() as *const pg_sys::TableAmRoutine {
        let name = rel_name(relid);
        pg_sys::relation_close(rel, pg_sys::AccessShareLock as i32);
        DriftError::new(PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE, format!("\"{name}\" is not a driftdb table"))
            .detail("Only tables created USING driftdb (or converted with SET ACCESS METHOD driftdb) have history.")
            .raise();
    }
    rel
}

/// The value columns added later read as in older row images.
/// A decoder for `rel`'s rows (cached per table; give it back with `reader::put_decoder`).
pub unsafe fn decoder_for(rel: pg_sys::Relation, marks: &super::reader::Marks) -> RowDecoder {
    let desc = (*rel).rd_att;
    super::reader::take_decoder((*rel).rd_id, || {
        RowDecoder::new(desc, &|attnum| match marks.missing.get(&attnum) {
            Some(v) => v.clone(),
            None => crate::history::codec::missing_value(desc, attnum),
        })
    })
}

unsafe fn arg_null(fcinfo: pg_sys::FunctionCallInfo, n: usize) -> bool {
    (*fcinfo).args.as_slice(n + 1)[n].isnull
}

unsafe fn arg(fcinfo: pg_sys::FunctionCallInfo, n: usize) -> pg_sys::Datum {
    (*fcinfo).args.as_slice(n + 1)[n].value
}

fn null_arg(what: &str) -> ! {
    DriftError::new(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, format!("AS OF {what} must not be NULL")).raise()
}

/// Materialize-mode result: (tuplestore, result descriptor).
unsafe fn materialize(fcinfo: pg_sys::FunctionCallInfo) -> (*mut pg_sys::Tuplestorestate, pg_sys::TupleDesc) {
    pg_sys::InitMaterializedSRF(fcinfo, 0);
    let rsinfo = (*fcinfo).resultinfo as *mut pg_sys::ReturnSetInfo;
    ((*rsinfo).setResult, (*rsinfo).setDesc)
}

/// Shared body of both `as_of` forms.
unsafe fn as_of(fcinfo: pg_sys::FunctionCallInfo, point: Point) -> pg_sys::Datum {
    let mut call = HistoryCall::open(fcinfo, "as_of", point);
    call.src.check_start(call.seq);
    let (store, _desc) = materialize(fcinfo);
    let desc = (*call.rel).rd_att;
    let (rows, replayed) = call.src.rows_at(call.seq);
    super::snapshot::maybe_store(&call.cat, &call.src, call.seq, &rows, replayed);
    let mut tmp = pgrx::PgMemoryContexts::new("driftdb as_of rows");
    for row in &rows {
        tmp.switch_to(|_| {
            let tup = call.dec.form_tuple(desc, row);
            pg_sys::tuplestore_puttuple(store, tup);
        });
        tmp.reset();
    }
    call.close()
}

pg_function_info_v1!(pg_finfo_driftdb_as_of_seq);

/// `driftdb.as_of(anyelement, bigint)`
#[no_mangle]
#[pg_guard]
pub unsafe extern "C-unwind" fn driftdb_as_of_seq(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    if arg_null(fcinfo, 1) {
        null_arg("seq");
    }
    as_of(fcinfo, Point::Seq(arg(fcinfo, 1).value() as i64))
}

pg_function_info_v1!(pg_finfo_driftdb_as_of_time);

/// `driftdb.as_of(anyelement, timestamptz)`
#[no_mangle]
#[pg_guard]
pub unsafe extern "C-unwind" fn driftdb_as_of_time(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    if arg_null(fcinfo, 1) {
        null_arg("time");
    }
    as_of(fcinfo, Point::Time(arg(fcinfo, 1).value() as i64))
}

/// A whole-row datum of the table's row type.
unsafe fn row_datum(dec: &mut RowDecoder, desc: pg_sys::TupleDesc, row: &Row) -> pg_sys::Datum {
    let tup = dec.form_tuple(desc, row);
    pg_sys::HeapTupleHeaderGetDatum((*tup).t_data)
}

fn ts_datum(t: Option<i64>) -> pg_sys::Datum {
    pg_sys::Datum::from(t.unwrap_or(i64::MAX)) // i64::MAX is 'infinity'
}

pg_function_info_v1!(pg_finfo_driftdb_versions);

/// Emit versions into a tuplestore of (system_time_start, system_time_end, seq_start, seq_end, data).
pub unsafe fn put_version(store: *mut pg_sys::Tuplestorestate, out: pg_sys::TupleDesc, dec: &mut RowDecoder, desc: pg_sys::TupleDesc, v: &driftdb_core::Version) {
    let mut values = [
        pg_sys::Datum::from(v.start_at),
        ts_datum(v.end_at),
        pg_sys::Datum::from(v.start_seq as i64),
        pg_sys::Datum::from(v.end_seq.map_or(0, |s| s as i64)),
        row_datum(dec, desc, &v.row),
    ];
    let mut nulls = [false, false, false, v.end_seq.is_none(), false];
    pg_sys::tuplestore_putvalues(store, out, values.as_mut_ptr(), nulls.as_mut_ptr());
}

/// `driftdb.versions(anyelement)`
#[no_mangle]
#[pg_guard]
pub unsafe extern "C-unwind" fn driftdb_versions(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    let mut call = HistoryCall::open(fcinfo, "versions", Point::Seq(i64::MAX));
    let (store, out) = materialize(fcinfo);
    let desc = (*call.rel).rd_att;
    let mut tmp = pgrx::PgMemoryContexts::new("driftdb versions");
    let dec = &mut call.dec;
    call.src.versions(None, call.seq, &call.marks, |v| {
        tmp.switch_to(|_| put_version(store, out, dec, desc, &v));
        tmp.reset();
    });
    call.close()
}

/// What the SQL functions share: the table of the first argument, opened and checked, its
/// history source, the point resolved to a settled seq, and a row decoder.
struct HistoryCall {
    relid: pg_sys::Oid,
    rel: pg_sys::Relation,
    cat: Catalog,
    src: Source,
    seq: i64,
    marks: super::reader::Marks,
    dec: RowDecoder,
}

impl HistoryCall {
    unsafe fn open(fcinfo: pg_sys::FunctionCallInfo, fname: &str, point: Point) -> HistoryCall {
        let relid = table_of_arg(fcinfo, 0, fname);
        let rel = open_driftdb(relid);
        check_read(relid, fname);
        let cat = Catalog::require();
        let src = Source::new(cat, rel);
        let seq = engine::resolve(&cat, point);
        let marks = src.marks(seq);
        let dec = decoder_for(rel, &marks);
        HistoryCall { relid, rel, cat, src, seq, marks, dec }
    }

    /// Give the decoder back, close the table (its lock stays until the transaction ends).
    unsafe fn close(self) -> pg_sys::Datum {
        super::reader::put_decoder(self.relid, self.dec);
        pg_sys::relation_close(self.rel, pg_sys::NoLock as i32);
        pg_sys::Datum::from(0usize)
    }
}

pg_function_info_v1!(pg_finfo_driftdb_changes);

/// `driftdb.changes(anyelement)`
#[no_mangle]
#[pg_guard]
pub unsafe extern "C-unwind" fn driftdb_changes(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    let mut call = HistoryCall::open(fcinfo, "changes", Point::Seq(i64::MAX));
    // changes(tbl, after_seq): the change feed from a seq on
    let after = if (*fcinfo).nargs >= 2 {
        if arg_null(fcinfo, 1) {
            DriftError::new(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, "after_seq must not be NULL").hint("Pass 0 to read every change.").raise();
        }
        // checked against the purge horizon by Source::changes
        Some(arg(fcinfo, 1).value() as i64)
    } else {
        None
    };
    let (store, out) = materialize(fcinfo);
    let desc = (*call.rel).rd_att;
    let mut who = super::reader::CommitterCache::new(&call.cat);
    let mut tmp = pgrx::PgMemoryContexts::new("driftdb changes");
    let dec = &mut call.dec;
    call.src.changes(after, call.seq, |seq, at, op, old, new| {
        let by = who.get(seq);
        tmp.switch_to(|_| {
            let mut values = [
                pg_sys::Datum::from(seq),
                pg_sys::Datum::from(at),
                by.as_str().into_datum().unwrap(),
                op.as_str().into_datum().unwrap(),
                old.as_ref().map_or(pg_sys::Datum::from(0usize), |r| row_datum(dec, desc, r)),
                new.as_ref().map_or(pg_sys::Datum::from(0usize), |r| row_datum(dec, desc, r)),
            ];
            let keep_old = matches!(op, Op::Update | Op::Delete);
            let keep_new = matches!(op, Op::Update | Op::Insert);
            let mut nulls = [false, false, false, false, old.is_none() || !keep_old, new.is_none() || !keep_new];
            pg_sys::tuplestore_putvalues(store, out, values.as_mut_ptr(), nulls.as_mut_ptr());
        });
        tmp.reset();
    });
    drop(who);
    call.close()
}

extension_sql!(
    r#"
CREATE FUNCTION driftdb.as_of(tbl anyelement, seq bigint) RETURNS SETOF anyelement
LANGUAGE c STABLE PARALLEL RESTRICTED ROWS 1000 AS 'MODULE_PATHNAME', 'driftdb_as_of_seq';
COMMENT ON FUNCTION driftdb.as_of(anyelement, bigint) IS 'rows of the table as of commit seq N (FOR SYSTEM_TIME AS OF @seq:N); call as driftdb.as_of(NULL::t, N)';
CREATE FUNCTION driftdb.as_of(tbl anyelement, at timestamptz) RETURNS SETOF anyelement
LANGUAGE c STABLE PARALLEL RESTRICTED ROWS 1000 AS 'MODULE_PATHNAME', 'driftdb_as_of_time';
COMMENT ON FUNCTION driftdb.as_of(anyelement, timestamptz) IS 'rows of the table as of a time (FOR SYSTEM_TIME AS OF); call as driftdb.as_of(NULL::t, ts)';
CREATE FUNCTION driftdb.versions(tbl anyelement,
    OUT system_time_start timestamptz, OUT system_time_end timestamptz,
    OUT seq_start bigint, OUT seq_end bigint, OUT data anyelement) RETURNS SETOF record
LANGUAGE c STABLE PARALLEL RESTRICTED ROWS 1000 AS 'MODULE_PATHNAME', 'driftdb_versions';
COMMENT ON FUNCTION driftdb.versions(anyelement) IS 'every version of every row, valid over [system_time_start, system_time_end) (FOR SYSTEM_TIME ALL); call as driftdb.versions(NULL::t)';
CREATE FUNCTION driftdb.changes(tbl anyelement,
    OUT seq bigint, OUT committed_at timestamptz, OUT committed_by text,
    OUT operation text, OUT old_data anyelement, OUT new_data anyelement) RETURNS SETOF record
LANGUAGE c STABLE PARALLEL RESTRICTED ROWS 1000 AS 'MODULE_PATHNAME', 'driftdb_changes';
COMMENT ON FUNCTION driftdb.changes(anyelement) IS 'every committed change (INSERT, UPDATE, DELETE, TRUNCATE) in seq order: the audit trail and change feed; call as driftdb.changes(NULL::t)';
CREATE FUNCTION driftdb.changes(tbl anyelement, after_seq bigint,
    OUT seq bigint, OUT committed_at timestamptz, OUT committed_by text,
    OUT operation text, OUT old_data anyelement, OUT new_data anyelement) RETURNS SETOF record
LANGUAGE c STABLE PARALLEL RESTRICTED ROWS 1000 AS 'MODULE_PATHNAME', 'driftdb_changes';
COMMENT ON FUNCTION driftdb.changes(anyelement, bigint) IS 'the committed changes with seq > after_seq, in seq order (a change feed: pass the last seq you processed); fails if history after after_seq was purged';
"#,
    name = "timetravel_functions",
    requires = ["history"]
);
