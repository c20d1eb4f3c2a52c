//! The DriftDB history scan: a CustomScan that returns a driftdb table's rows as of a point.
//!
//! Path (`add_path`, from `planner.rs`): the only path of a historical table reference.
//! Plan: `custom_private` = [mode, key attnums...] (int4 constants), `custom_exprs` =
//! [point expression (a NULL constant in session mode), key value expressions...]; all of the
//! reference's quals stay in the plan's qual list and are rechecked on every row (row-level
//! security policies among them).
//! Execution: on the first fetch (and after a rescan) the point and key values are evaluated,
//! the point resolved to a settled bound, and either one key's row read from the key index
//! or the whole state built (snapshot + replay); rows are decoded into the virtual scan slot.
//! EXPLAIN shows the point's source and the lookup strategy.
use std::ffi::CStr;

use driftdb_core::{Row, Value};
use pgrx::pg_sys;
use pgrx::prelude::*;

use super::engine::{self, Point, Source};
use super::planner::PointSource;
use super::{guc, srf};
use crate::history::catalog::Catalog;
use crate::history::codec;
use crate::history::decode::RowDecoder;

const NAME: &CStr = c"DriftDB History Scan";
const MODE_SESSION: i32 = 0;
const MODE_SEQ: i32 = 1;
const MODE_TIME: i32 = 2;
/// `driftdb.versions(NULL::t)` with its identity key pushed down (scanrelid 0, own tlist)
const MODE_VERSIONS: i32 = 3;

static mut PATH_METHODS: pg_sys::CustomPathMethods = pg_sys::CustomPathMethods {
    CustomName: NAME.as_ptr(),
    PlanCustomPath: Some(plan_path),
    ReparameterizeCustomPathByChild: None,
};

static mut SCAN_METHODS: pg_sys::CustomScanMethods =
    pg_sys::CustomScanMethods { CustomName: NAME.as_ptr(), CreateCustomScanState: Some(create_state) };

static mut EXEC_METHODS: pg_sys::CustomExecMethods = pg_sys::CustomExecMethods {
    CustomName: NAME.as_ptr(),
    BeginCustomScan: Some(begin),
    ExecCustomScan: Some(exec),
    EndCustomScan: Some(end),
    ReScanCustomScan: Some(rescan),
    MarkPosCustomScan: None,
    RestrPosCustomScan: None,
    EstimateDSMCustomScan: None,
    InitializeDSMCustomScan: None,
    ReInitializeDSMCustomScan: None,
    InitializeWorkerCustomScan: None,
    ShutdownCustomScan: None,
    ExplainCustomScan: Some(explain),
};

pub fn init() {
    // SAFETY: registering static methods once from _PG_init (plans name them by CustomName).
    unsafe { pg_sys::RegisterCustomScanMethods(std::ptr::addr_of!(SCAN_METHODS)) };
}

unsafe fn int_const(v: i32) -> *mut pg_sys::Node {
    pg_sys::makeConst(pg_sys::INT4OID, -1, pg_sys::InvalidOid, 4, pg_sys::Datum::from(v), false, true) as *mut pg_sys::Node
}

unsafe fn null_const() -> *mut pg_sys::Node {
    pg_sys::makeConst(pg_sys::INT4OID, -1, pg_sys::InvalidOid, 4, pg_sys::Datum::from(0usize), true, true) as *mut pg_sys::Node
}

unsafe fn const_int(n: *mut pg_sys::Node) -> i32 {
    (*(n as *mut pg_sys::Const)).constvalue.value() as i32
}

/// A history scan path of `rel` (not parallel: it reads backend-local caches and may store a
/// snapshot); the caller sets rows and costs.
unsafe fn new_path(root: *mut pg_sys::PlannerInfo, rel: *mut pg_sys::RelOptInfo) -> *mut pg_sys::CustomPath {
    let cp = pg_sys::palloc0(std::mem::size_of::<pg_sys::CustomPath>()) as *mut pg_sys::CustomPath;
    (*cp).path.type_ = pg_sys::NodeTag::T_CustomPath;
    (*cp).path.pathtype = pg_sys::NodeTag::T_CustomScan;
    (*cp).path.parent = rel;
    (*cp).path.pathtarget = (*rel).reltarget;
    (*cp).path.param_info = pg_sys::get_baserel_parampathinfo(root, rel, (*rel).lateral_relids);
    (*cp).path.parallel_aware = false;
    (*cp).path.parallel_safe = false;
    (*cp).path.parallel_workers = 0;
    cp
}

/// Append the pushed-down key to the path's private list ([.., nkeys, attnums.., exprs..]) and
/// add the path.
unsafe fn finish_path(rel: *mut pg_sys::RelOptInfo, cp: *mut pg_sys::CustomPath, mut private: *mut pg_sys::List, key: &[(u16, *mut pg_sys::Node)]) {
    private = pg_sys::lappend(private, int_const(key.len() as i32) as *mut _);
    for (a, _) in key {
        private = pg_sys::lappend(private, int_const(*a as i32) as *mut _);
    }
    for (_, e) in key {
        private = pg_sys::lappend(private, *e as *mut _);
    }
    (*cp).custom_private = private;
    (*cp).methods = std::ptr::addr_of!(PATH_METHODS);
    pg_sys::add_path(rel, cp as *mut pg_sys::Path);
}

/// Add the history scan path to a historical table reference (its only path).
pub unsafe fn add_path(root: *mut pg_sys::PlannerInfo, rel: *mut pg_sys::RelOptInfo, source: PointSource, key: Option<Vec<(u16, *mut pg_sys::Node)>>) {
    let cp = new_path(root, rel);
    let (mode, point) = match source {
        PointSource::Session => (MODE_SESSION, null_const()),
        PointSource::Marker(e, true) => (MODE_SEQ, e),
        PointSource::Marker(e, false) => (MODE_TIME, e),
    };
    let tuples = (*rel).tuples.max(1.0);
    match &key {
        Some(_) => {
            (*cp).path.rows = 1.0;
            (*cp).path.startup_cost = 0.0;
            (*cp).path.total_cost = 8.0; // a few index probes
        }
        None => {
            (*cp).path.rows = (*rel).rows;
            (*cp).path.startup_cost = tuples * 0.05; // the state is built before the first row
            (*cp).path.total_cost = tuples * 0.06;
        }
    }
    let mut private = pg_sys::lappend(std::ptr::null_mut(), int_const(mode) as *mut _);
    private = pg_sys::lappend(private, point as *mut _);
    finish_path(rel, cp, private, &key.unwrap_or_default());
}

/// The versions-of-one-key path of a `driftdb.versions(NULL::t)` reference.
pub unsafe fn add_versions_path(root: *mut pg_sys::PlannerInfo, rel: *mut pg_sys::RelOptInfo, relid: pg_sys::Oid, key: Vec<(u16, *mut pg_sys::Node)>) {
    let cp = new_path(root, rel);
    (*cp).path.rows = 10.0;
    (*cp).path.startup_cost = 0.0;
    (*cp).path.total_cost = 10.0;
    let mut private = pg_sys::lappend(std::ptr::null_mut(), int_const(MODE_VERSIONS) as *mut _);
    private = pg_sys::lappend(private, int_const(relid.to_u32() as i32) as *mut _);
    finish_path(rel, cp, private, &key);
}

/// The scan tuple of versions(): (system_time_start, system_time_end, seq_start, seq_end, data).
unsafe fn versions_tlist(relno: u32, relid: pg_sys::Oid) -> *mut pg_sys::List {
    let types = [pg_sys::TIMESTAMPTZOID, pg_sys::TIMESTAMPTZOID, pg_sys::INT8OID, pg_sys::INT8OID, pg_sys::get_rel_type_id(relid)];
    let mut tl = std::ptr::null_mut();
    for (i, t) in types.iter().enumerate() {
        let var = pg_sys::makeVar(relno as _, (i + 1) as i16, *t, -1, pg_sys::InvalidOid, 0);
        let te = pg_sys::makeTargetEntry(var as *mut pg_sys::Expr, (i + 1) as i16, std::ptr::null_mut(), false);
        tl = pg_sys::lappend(tl, te as *mut _);
    }
    tl
}

#[pg_guard]
unsafe extern "C-unwind" fn plan_path(
    _root: *mut pg_sys::PlannerInfo,
    rel: *mut pg_sys::RelOptInfo,
    best_path: *mut pg_sys::CustomPath,
    tlist: *mut pg_sys::List,
    clauses: *mut pg_sys::List,
    _custom_plans: *mut pg_sys::List,
) -> *mut pg_sys::Plan {
    let cs = pg_sys::palloc0(std::mem::size_of::<pg_sys::CustomScan>()) as *mut pg_sys::CustomScan;
    (*cs).scan.plan.type_ = pg_sys::NodeTag::T_CustomScan;
    (*cs).scan.plan.targetlist = tlist;
    (*cs).scan.plan.qual = pg_sys::extract_actual_clauses(clauses, false);
    (*cs).scan.scanrelid = (*rel).relid;
    let p = pgrx::PgList::<pg_sys::Node>::from_pg((*best_path).custom_private);
    let mode = const_int(p.get_ptr(0).unwrap());
    let nkeys = const_int(p.get_ptr(2).unwrap()) as usize;
    let mut private = pg_sys::lappend(std::ptr::null_mut(), int_const(mode) as *mut _);
    let mut exprs;
    if mode == MODE_VERSIONS {
        let relid = pg_sys::Oid::from(const_int(p.get_ptr(1).unwrap()) as u32);
        (*cs).scan.scanrelid = 0;
        (*cs).custom_scan_tlist = versions_tlist((*rel).relid, relid);
        private = pg_sys::lappend(private, int_const(relid.to_u32() as i32) as *mut _);
        exprs = pg_sys::lappend(std::ptr::null_mut(), null_const() as *mut _);
    } else {
        exprs = pg_sys::lappend(std::ptr::null_mut(), p.get_ptr(1).unwrap() as *mut _);
    }
    for i in 0..nkeys {
        private = pg_sys::lappend(private, p.get_ptr(3 + i).unwrap() as *mut _);
        exprs = pg_sys::lappend(exprs, p.get_ptr(3 + nkeys + i).unwrap() as *mut _);
    }
    if mode == MODE_VERSIONS {
        // the engine returns only the versions of the pushed-down key (it compares the key
        // itself when it has to replay), so the key's equality quals need no recheck
        let pushed: Vec<*mut pg_sys::Node> = (0..nkeys).map(|i| p.get_ptr(3 + nkeys + i).unwrap()).collect();
        let quals = pgrx::PgList::<pg_sys::Node>::from_pg((*cs).scan.plan.qual);
        let mut kept = std::ptr::null_mut();
        for q in quals.iter_ptr() {
            if !is_pushed_key_qual(q, &pushed) {
                kept = pg_sys::lappend(kept, q as *mut _);
            }
        }
        (*cs).scan.plan.qual = kept;
    }
    (*cs).custom_private = private;
    (*cs).custom_exprs = exprs;
    (*cs).flags = 0;
    (*cs).methods = std::ptr::addr_of!(SCAN_METHODS);
    cs as *mut pg_sys::Plan
}

/// `<col ref> = <expr>` (either order) whose value side is one of the pushed-down key expressions.
unsafe fn is_pushed_key_qual(q: *mut pg_sys::Node, pushed: &[*mut pg_sys::Node]) -> bool {
    if (*q).type_ != pg_sys::NodeTag::T_OpExpr {
        return false;
    }
    let args = pgrx::PgList::<pg_sys::Node>::from_pg((*(q as *mut pg_sys::OpExpr)).args);
    args.len() == 2 && args.iter_ptr().any(|a| pushed.contains(&a))
}

/// Per-execution state, owned by the node (freed in `end`).
struct Inner {
    mode: i32,
    /// the table (versions mode; otherwise the scan relation)
    relid: pg_sys::Oid,
    attnums: Vec<u16>,
    /// ExprStates of custom_exprs
    exprs: Vec<*mut pg_sys::ExprState>,
    rows: Option<std::vec::IntoIter<Row>>,
    /// snapshot blocks still to decode (when the state is a snapshot as stored)
    blocks: std::collections::VecDeque<Vec<u8>>,
    blocks_seq: i64,
    /// the snapshot block being read, row by row into `row_buf`
    cursor: Option<driftdb_core::SnapshotCursor>,
    row_buf: Row,
    versions: Option<std::vec::IntoIter<driftdb_core::Version>>,
    /// the table's descriptor (versions mode: for the data column)
    desc: pg_sys::TupleDesc,
    decoder: Option<RowDecoder>,
    /// what the last execution did, for EXPLAIN ANALYZE
    did: Option<String>,
}

#[repr(C)]
struct HistoryScanState {
    css: pg_sys::CustomScanState,
    inner: *mut Inner,
}

#[pg_guard]
unsafe extern "C-unwind" fn create_state(cscan: *mut pg_sys::CustomScan) -> *mut pg_sys::Node {
    let s = pg_sys::palloc0(std::mem::size_of::<HistoryScanState>()) as *mut HistoryScanState;
    (*s).css.ss.ps.type_ = pg_sys::NodeTag::T_CustomScanState;
    (*s).css.methods = std::ptr::addr_of!(EXEC_METHODS);
    let p = pgrx::PgList::<pg_sys::Node>::from_pg((*cscan).custom_private);
    let mode = const_int(p.get_ptr(0).unwrap());
    let first = if mode == MODE_VERSIONS { 2 } else { 1 };
    let relid = if mode == MODE_VERSIONS { pg_sys::Oid::from(const_int(p.get_ptr(1).unwrap()) as u32) } else { pg_sys::InvalidOid };
    let attnums = (first..p.len()).map(|i| const_int(p.get_ptr(i).unwrap()) as u16).collect();
    (*s).inner = Box::into_raw(Box::new(Inner { mode, relid, attnums, exprs: Vec::new(), rows: None, blocks: Default::default(), blocks_seq: 0, cursor: None, row_buf: Row(Vec::new()), versions: None, decoder: None, desc: std::ptr::null_mut(), did: None }));
    s as *mut pg_sys::Node
}

unsafe fn inner<'a>(node: *mut pg_sys::CustomScanState) -> &'a mut Inner {
    &mut *(*(node as *mut HistoryScanState)).inner
}

#[pg_guard]
unsafe extern "C-unwind" fn begin(node: *mut pg_sys::CustomScanState, _estate: *mut pg_sys::EState, _eflags: i32) {
    let cs = (*node).ss.ps.plan as *mut pg_sys::CustomScan;
    let list = pg_sys::ExecInitExprList((*cs).custom_exprs, &mut (*node).ss.ps);
    let st = inner(node);
    st.exprs = pgrx::PgList::<pg_sys::ExprState>::from_pg(list).iter_ptr().collect();
}

unsafe fn eval(node: *mut pg_sys::CustomScanState, e: *mut pg_sys::ExprState) -> Option<pg_sys::Datum> {
    let econtext = (*node).ss.ps.ps_ExprContext;
    let old = pg_sys::MemoryContextSwitchTo((*econtext).ecxt_per_tuple_memory);
    let mut isnull = false;
    let d = ((*e).evalfunc.unwrap())(e, econtext, &mut isnull);
    pg_sys::MemoryContextSwitchTo(old);
    (!isnull).then_some(d)
}

/// The pushed-down key's values (None if one is NULL: no row has a NULL identity).
unsafe fn eval_key(node: *mut pg_sys::CustomScanState) -> Option<Vec<Value>> {
    let st = inner(node);
    // each value is converted by its own type: an int8 compared with an int4 key encodes as the
    // same integer (or as one no int4 key has, if it is out of range)
    st.exprs[1..]
        .iter()
        .map(|&e| eval(node, e).map(|d| codec::datum_to_value(d, pg_sys::exprType((*e).expr as *mut pg_sys::Node))))
        .collect()
}

/// versions mode: the versions of the pushed-down key.
unsafe fn compute_versions(node: *mut pg_sys::CustomScanState) -> Vec<driftdb_core::Version> {
    let st = inner(node);
    let rel = srf::open_driftdb(st.relid);
    srf::check_read(st.relid, "versions");
    let cat = Catalog::require();
    let src = Source::new(cat, rel);
    let settled = engine::resolve(&cat, Point::Seq(i64::MAX));
    let marks = src.marks(settled);
    if st.decoder.is_none() {
        st.decoder = Some(srf::decoder_for(rel, &marks));
        st.desc = pg_sys::CreateTupleDescCopy((*rel).rd_att);
    }
    let Some(key) = eval_key(node) else {
        pg_sys::relation_close(rel, pg_sys::NoLock as i32);
        return Vec::new();
    };
    let mut out = Vec::new();
    src.versions(Some(&key), settled, &marks, |v| out.push(v));
    st.did = Some(if src.keyed() { "versions of one identity key (key index)".into() } else { "versions of one key (full replay: identity changed)".into() });
    pg_sys::relation_close(rel, pg_sys::NoLock as i32);
    out
}

/// Build the result rows of this execution.
unsafe fn compute(node: *mut pg_sys::CustomScanState) -> Vec<Row> {
    let rel = (*node).ss.ss_currentRelation;
    let st = inner(node);
    let point = match st.mode {
        MODE_SESSION => guc::current().unwrap_or(Point::Seq(i64::MAX)),
        m => match eval(node, st.exprs[0]) {
            None => srf_null(m),
            Some(d) if m == MODE_SEQ => Point::Seq(d.value() as i64),
            Some(d) => Point::Time(d.value() as i64),
        },
    };
    let cat = Catalog::require();
    let src = Source::new(cat, rel);
    let seq = engine::resolve(&cat, point);
    src.check_start(seq);
    let marks = src.marks(seq);
    if st.decoder.is_none() {
        st.decoder = Some(srf::decoder_for(rel, &marks));
    }
    if !st.attnums.is_empty() && src.keyed() {
        let Some(key) = eval_key(node) else {
            st.did = Some("identity key lookup (NULL key: no row)".into());
            return Vec::new();
        };
        st.did = Some("identity key lookup".into());
        return src.row_for_key(&key, seq, &marks).into_iter().collect();
    }
    match src.state_at(seq) {
        (engine::Rows::Blocks { seq: snap, blocks }, _) => {
            st.did = Some(format!("state at seq {seq}: snapshot of seq {snap}, {} blocks, no events to replay", blocks.len()));
            st.blocks = blocks.into_iter().collect();
            st.blocks_seq = snap;
            Vec::new()
        }
        (engine::Rows::Decoded(rows), replayed) => {
            super::snapshot::maybe_store(&cat, &src, seq, &rows, replayed);
            st.did = Some(format!("state at seq {seq}: {replayed} events replayed"));
            rows
        }
    }
}

fn srf_null(mode: i32) -> ! {
    crate::error::DriftError::new(
        PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
        format!("AS OF {} must not be NULL", if mode == MODE_SEQ { "seq" } else { "time" }),
    )
    .raise()
}

#[pg_guard]
unsafe extern "C-unwind" fn access(ss: *mut pg_sys::ScanState) -> *mut pg_sys::TupleTableSlot {
    let node = ss as *mut pg_sys::CustomScanState;
    if inner(node).mode == MODE_VERSIONS {
        return access_versions(node);
    }
    if inner(node).rows.is_none() {
        let rows = compute(node);
        inner(node).rows = Some(rows.into_iter());
    }
    let slot = (*ss).ss_ScanTupleSlot;
    pg_sys::ExecClearTuple(slot);
    let st = inner(node);
    let row = loop {
        if let Some(r) = st.rows.as_mut().unwrap().next() {
            st.row_buf = r;
            break &st.row_buf;
        }
        // a stored snapshot: its blocks are decoded one row at a time, into one reused row
        if let Some(c) = st.cursor.as_mut() {
            match c.next_into(&mut st.row_buf) {
                Ok(true) => break &st.row_buf,
                Ok(false) => st.cursor = None,
                Err(e) => super::reader::corrupted(format!("snapshot block of seq {}: {e}", st.blocks_seq)),
            }
        }
        let Some(b) = st.blocks.pop_front() else { return slot };
        st.cursor = Some(
            driftdb_core::SnapshotCursor::open(&b)
                .unwrap_or_else(|e| super::reader::corrupted(format!("snapshot block of seq {}: {e}", st.blocks_seq))),
        );
    };
    let natts = (*(*slot).tts_tupleDescriptor).natts as usize;
    let values = std::slice::from_raw_parts_mut((*slot).tts_values, natts);
    let nulls = std::slice::from_raw_parts_mut((*slot).tts_isnull, natts);
    // datums live in the per-tuple context, which ExecScan resets before the next fetch
    let econtext = (*node).ss.ps.ps_ExprContext;
    let old = pg_sys::MemoryContextSwitchTo((*econtext).ecxt_per_tuple_memory);
    st.decoder.as_mut().unwrap().decode_into(row, values, nulls);
    pg_sys::MemoryContextSwitchTo(old);
    (*slot).tts_tableOid = (*(*ss).ss_currentRelation).rd_id;
    pg_sys::ExecStoreVirtualTuple(slot)
}

unsafe fn access_versions(node: *mut pg_sys::CustomScanState) -> *mut pg_sys::TupleTableSlot {
    if inner(node).versions.is_none() {
        let v = compute_versions(node);
        inner(node).versions = Some(v.into_iter());
    }
    let slot = (*node).ss.ss_ScanTupleSlot;
    pg_sys::ExecClearTuple(slot);
    let st = inner(node);
    let Some(v) = st.versions.as_mut().unwrap().next() else { return slot };
    let values = std::slice::from_raw_parts_mut((*slot).tts_values, 5);
    let nulls = std::slice::from_raw_parts_mut((*slot).tts_isnull, 5);
    let econtext = (*node).ss.ps.ps_ExprContext;
    let old = pg_sys::MemoryContextSwitchTo((*econtext).ecxt_per_tuple_memory);
    values[0] = pg_sys::Datum::from(v.start_at);
    values[1] = pg_sys::Datum::from(v.end_at.unwrap_or(i64::MAX));
    values[2] = pg_sys::Datum::from(v.start_seq as i64);
    values[3] = pg_sys::Datum::from(v.end_seq.map_or(0, |s| s as i64));
    let tup = st.decoder.as_mut().unwrap().form_tuple(st.desc, &v.row);
    values[4] = pg_sys::HeapTupleHeaderGetDatum((*tup).t_data);
    nulls.copy_from_slice(&[false, false, false, v.end_seq.is_none(), false]);
    pg_sys::MemoryContextSwitchTo(old);
    pg_sys::ExecStoreVirtualTuple(slot)
}

#[pg_guard]
unsafe extern "C-unwind" fn recheck(_ss: *mut pg_sys::ScanState, _slot: *mut pg_sys::TupleTableSlot) -> bool {
    true
}

#[pg_guard]
unsafe extern "C-unwind" fn exec(node: *mut pg_sys::CustomScanState) -> *mut pg_sys::TupleTableSlot {
    pg_sys::ExecScan(&mut (*node).ss, Some(access), Some(recheck))
}

#[pg_guard]
unsafe extern "C-unwind" fn end(node: *mut pg_sys::CustomScanState) {
    let s = node as *mut HistoryScanState;
    if !(*s).inner.is_null() {
        let mut inner = Box::from_raw((*s).inner);
        let relid = if inner.mode == MODE_VERSIONS { inner.relid } else { (*(*node).ss.ss_currentRelation).rd_id };
        if let Some(d) = inner.decoder.take() {
            super::reader::put_decoder(relid, d);
        }
        drop(inner);
        (*s).inner = std::ptr::null_mut();
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn rescan(node: *mut pg_sys::CustomScanState) {
    inner(node).rows = None;
    inner(node).blocks.clear();
    inner(node).cursor = None;
    inner(node).versions = None;
}

/// "a, b": the names of the key columns, for EXPLAIN.
unsafe fn key_names(rel: pg_sys::Relation, attnums: &[u16]) -> String {
    let desc = (*rel).rd_att;
    let attrs = (*desc).attrs.as_slice((*desc).natts as usize);
    attnums.iter().map(|&a| pgrx::name_data_to_str(&attrs[a as usize - 1].attname)).collect::<Vec<_>>().join(", ")
}

#[pg_guard]
unsafe extern "C-unwind" fn explain(node: *mut pg_sys::CustomScanState, _ancestors: *mut pg_sys::List, es: *mut pg_sys::ExplainState) {
    let st = inner(node);
    if st.mode == MODE_VERSIONS {
        let rel = pg_sys::relation_open(st.relid, pg_sys::AccessShareLock as i32);
        let names = key_names(rel, &st.attnums);
        pg_sys::relation_close(rel, pg_sys::NoLock as i32);
        let v = std::ffi::CString::new(format!("versions of identity key ({names}) = pushed-down values")).unwrap();
        pg_sys::ExplainPropertyText(c"History Lookup".as_ptr(), v.as_ptr(), es);
        if let Some(d) = &st.did {
            let v = std::ffi::CString::new(d.as_str()).unwrap();
            pg_sys::ExplainPropertyText(c"History Read".as_ptr(), v.as_ptr(), es);
        }
        return;
    }
    let point = match st.mode {
        MODE_SESSION => "driftdb.as_of setting",
        MODE_SEQ => "commit seq (driftdb.as_of_seq)",
        _ => "time (driftdb.as_of_time)",
    };
    let prop = |k: &CStr, v: &str| {
        let v = std::ffi::CString::new(v).unwrap();
        pg_sys::ExplainPropertyText(k.as_ptr(), v.as_ptr(), es);
    };
    prop(c"AS OF", point);
    if st.attnums.is_empty() {
        prop(c"History Lookup", "full state (newest snapshot + replay)");
    } else {
        let names = key_names((*node).ss.ss_currentRelation, &st.attnums);
        prop(c"History Lookup", &format!("identity key ({names}) = pushed-down values"));
    }
    if let Some(d) = &st.did {
        prop(c"History Read", d);
    }
}
