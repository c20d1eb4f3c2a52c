//! The DriftDB history scan: a CustomScan that returns a driftdb table's rows as of a point.
//!
//! Paths (`add_path`, from `planner.rs`): the only paths of a historical table reference —
//! the full state, and with it, when the quals allow, a read of a set or range of identity keys
//! (the cheaper wins); for `versions(NULL::t)`, the versions of one key or of a window of seqs.
//! What was pushed down is a `Lookup`: equality on every identity column, `col = ANY(array)`,
//! integer bounds on a one-column identity, or bounds on where versions start and end.
//! Plan: `custom_private` = [mode, relid (versions) or 0, kind, [attnums], [one tag per pushed
//! expression]] (int4 constants), `custom_exprs` = [point expression (a NULL constant in
//! session and versions mode), pushed-down expressions...]. All of the reference's quals stay
//! in the plan's qual list and are rechecked on every row (row-level security policies among
//! them; a range read may return a superset), except a versions key's own equality.
//! Execution: on the first fetch (and after a rescan) the point and pushed-down values are
//! evaluated, the point resolved to a settled bound, and the rows read: one key's (or a list
//! of keys') from the key index, a key range's from the key index and the segments whose key
//! range overlaps, or the whole state (snapshot + replay); rows are decoded into the virtual
//! scan slot. EXPLAIN shows the point's source, what was pushed down and, under ANALYZE, what
//! the read did.
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

/// A comparison pushed into the scan: which column it bounds, and how.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Bound {
    /// the (one-column, integer) identity key: `>=` `>` `<=` `<`
    Key(Cmp),
    /// versions: `seq_start >=`/`>` (lower) or `seq_end <=`/`<` (upper)
    Seq(Cmp),
    /// versions: `system_time_start >=`/`>` (lower) or `system_time_end <=`/`<` (upper)
    Time(Cmp),
}

#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Cmp {
    Ge,
    Gt,
    Le,
    Lt,
}

impl Bound {
    fn tag(self) -> i32 {
        let (class, c) = match self {
            Bound::Key(c) => (0, c),
            Bound::Seq(c) => (1, c),
            Bound::Time(c) => (2, c),
        };
        class * 10 + c as i32 + 1
    }

    fn of_tag(t: i32) -> Bound {
        let c = [Cmp::Ge, Cmp::Gt, Cmp::Le, Cmp::Lt][(t % 10 - 1) as usize];
        match t / 10 {
            0 => Bound::Key(c),
            1 => Bound::Seq(c),
            _ => Bound::Time(c),
        }
    }
}

/// What the planner pushed into the scan.
pub enum Lookup {
    /// nothing: the whole state (or every version)
    Full,
    /// equality on every identity column: (attnum, value expression) in identity order
    Key(Vec<(u16, *mut pg_sys::Node)>),
    /// `col = ANY(array)` on a one-column identity
    AnyOf(u16, *mut pg_sys::Node),
    /// bounds on a one-column integer identity
    KeyRange(u16, Vec<(Bound, *mut pg_sys::Node)>),
    /// versions: bounds on their start (lower) and end (upper)
    Window(Vec<(Bound, *mut pg_sys::Node)>),
}

const KIND_FULL: i32 = 0;
const KIND_KEY: i32 = 1;
const KIND_ANY: i32 = 2;
const KIND_RANGE: i32 = 3;
const KIND_WINDOW: i32 = 4;

unsafe fn int_list(v: impl IntoIterator<Item = i32>) -> *mut pg_sys::List {
    v.into_iter().fold(std::ptr::null_mut(), |l, i| pg_sys::lappend(l, int_const(i) as *mut _))
}

unsafe fn ints_of(l: *mut pg_sys::Node) -> Vec<i32> {
    pgrx::PgList::<pg_sys::Node>::from_pg(l as *mut pg_sys::List).iter_ptr().map(|n| const_int(n)).collect()
}

impl Lookup {
    /// (kind, attnums, one tag per expression, expressions)
    unsafe fn parts(&self) -> (i32, Vec<u16>, Vec<i32>, Vec<*mut pg_sys::Node>) {
        match self {
            Lookup::Full => (KIND_FULL, vec![], vec![], vec![]),
            Lookup::Key(k) => (KIND_KEY, k.iter().map(|(a, _)| *a).collect(), vec![0; k.len()], k.iter().map(|(_, e)| *e).collect()),
            Lookup::AnyOf(a, e) => (KIND_ANY, vec![*a], vec![0], vec![*e]),
            Lookup::KeyRange(a, b) => (KIND_RANGE, vec![*a], b.iter().map(|(b, _)| b.tag()).collect(), b.iter().map(|(_, e)| *e).collect()),
            Lookup::Window(b) => (KIND_WINDOW, vec![], b.iter().map(|(b, _)| b.tag()).collect(), b.iter().map(|(_, e)| *e).collect()),
        }
    }
}

/// Path private list: [mode, point expression or relid, kind, [attnums], [tags], exprs...].
unsafe fn finish_path(rel: *mut pg_sys::RelOptInfo, cp: *mut pg_sys::CustomPath, mode: i32, second: *mut pg_sys::Node, lookup: &Lookup) {
    let (kind, attnums, tags, exprs) = lookup.parts();
    let mut private = pg_sys::lappend(std::ptr::null_mut(), int_const(mode) as *mut _);
    private = pg_sys::lappend(private, second as *mut _);
    private = pg_sys::lappend(private, int_const(kind) as *mut _);
    private = pg_sys::lappend(private, int_list(attnums.iter().map(|&a| a as i32)) as *mut _);
    private = pg_sys::lappend(private, int_list(tags) as *mut _);
    for e in exprs {
        private = pg_sys::lappend(private, e as *mut _);
    }
    (*cp).custom_private = private;
    (*cp).methods = std::ptr::addr_of!(PATH_METHODS);
    pg_sys::add_path(rel, cp as *mut pg_sys::Path);
}

/// Estimated cost of reading one key's row through the key index: a few index probes.
const KEY_COST: f64 = 8.0;
/// Estimated cost per row of a key-range read (each key's events come from the key index):
/// measured at about 25 times a full read's cost per row from a snapshot (50k rows with 10
/// versions each: 6.5 µs per key against 0.26 µs per row), so a range of more than about 4% of
/// the table is read in full.
const RANGE_ROW_COST: f64 = 1.5;

/// Add a history scan path to a historical table reference. The planner adds the full-state
/// path, and with it a key-range or key-list path when one is pushable (the cheaper wins).
pub unsafe fn add_path(root: *mut pg_sys::PlannerInfo, rel: *mut pg_sys::RelOptInfo, source: &PointSource, lookup: Lookup, est_rows: f64) {
    let cp = new_path(root, rel);
    let (mode, point) = match *source {
        PointSource::Session => (MODE_SESSION, null_const()),
        PointSource::Marker(e, true) => (MODE_SEQ, e),
        PointSource::Marker(e, false) => (MODE_TIME, e),
    };
    let tuples = (*rel).tuples.max(1.0);
    let (rows, startup, total) = match &lookup {
        Lookup::Key(_) => (1.0, 0.0, KEY_COST),
        Lookup::AnyOf(..) => (est_rows, 0.0, est_rows * KEY_COST),
        Lookup::KeyRange(..) => (est_rows, KEY_COST, KEY_COST + est_rows * RANGE_ROW_COST),
        // the state is built before the first row
        Lookup::Full | Lookup::Window(_) => ((*rel).rows, tuples * 0.05, tuples * 0.06),
    };
    (*cp).path.rows = rows.max(1.0).min((*rel).rows.max(1.0));
    (*cp).path.startup_cost = startup;
    (*cp).path.total_cost = total;
    finish_path(rel, cp, mode, point, &lookup);
}

/// A pushed-down path of a `driftdb.versions(NULL::t)` reference: the versions of one key, or
/// the versions within a window of seqs.
pub unsafe fn add_versions_path(root: *mut pg_sys::PlannerInfo, rel: *mut pg_sys::RelOptInfo, relid: pg_sys::Oid, lookup: Lookup) {
    let cp = new_path(root, rel);
    match lookup {
        Lookup::Key(_) => {
            (*cp).path.rows = 10.0;
            (*cp).path.total_cost = 10.0;
        }
        _ => {
            (*cp).path.rows = (*rel).rows;
            (*cp).path.total_cost = (*rel).rows.max(1.0) * 0.01;
        }
    }
    (*cp).path.startup_cost = 0.0;
    finish_path(rel, cp, MODE_VERSIONS, int_const(relid.to_u32() as i32), &lookup);
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
    // path: [mode, point or relid, kind, [attnums], [tags], exprs...]
    // plan: custom_private [mode, relid (0 unless versions), kind, [attnums], [tags]],
    //       custom_exprs [point (a NULL constant unless AS OF a marker), exprs...]
    let p = pgrx::PgList::<pg_sys::Node>::from_pg((*best_path).custom_private);
    let mode = const_int(p.get_ptr(0).unwrap());
    let kind = const_int(p.get_ptr(2).unwrap());
    let mut exprs;
    let relid_node;
    if mode == MODE_VERSIONS {
        let relid = pg_sys::Oid::from(const_int(p.get_ptr(1).unwrap()) as u32);
        (*cs).scan.scanrelid = 0;
        (*cs).custom_scan_tlist = versions_tlist((*rel).relid, relid);
        relid_node = p.get_ptr(1).unwrap();
        exprs = pg_sys::lappend(std::ptr::null_mut(), null_const() as *mut _);
    } else {
        relid_node = int_const(0);
        exprs = pg_sys::lappend(std::ptr::null_mut(), p.get_ptr(1).unwrap() as *mut _);
    }
    let pushed: Vec<*mut pg_sys::Node> = (5..p.len()).map(|i| p.get_ptr(i).unwrap()).collect();
    for &e in &pushed {
        exprs = pg_sys::lappend(exprs, e as *mut _);
    }
    let mut private = pg_sys::lappend(std::ptr::null_mut(), int_const(mode) as *mut _);
    private = pg_sys::lappend(private, relid_node as *mut _);
    private = pg_sys::lappend(private, int_const(kind) as *mut _);
    private = pg_sys::lappend(private, p.get_ptr(3).unwrap() as *mut _);
    private = pg_sys::lappend(private, p.get_ptr(4).unwrap() as *mut _);
    if mode == MODE_VERSIONS && kind == KIND_KEY {
        // the engine returns only the versions of the pushed-down key (it compares the key
        // itself when it has to replay), so the key's equality quals need no recheck; every
        // other pushed-down comparison (a superset read) stays in the qual list
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
    /// what was pushed down (`KIND_*`)
    kind: i32,
    /// the table (versions mode; otherwise the scan relation)
    relid: pg_sys::Oid,
    attnums: Vec<u16>,
    /// one tag per pushed-down expression (`Bound::tag` for bounds)
    tags: Vec<i32>,
    /// ExprStates of custom_exprs: the point, then the pushed-down expressions
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
    let relid = pg_sys::Oid::from(const_int(p.get_ptr(1).unwrap()) as u32);
    let kind = const_int(p.get_ptr(2).unwrap());
    let attnums = ints_of(p.get_ptr(3).unwrap()).into_iter().map(|a| a as u16).collect();
    let tags = ints_of(p.get_ptr(4).unwrap());
    (*s).inner = Box::into_raw(Box::new(Inner {
        mode,
        kind,
        relid,
        attnums,
        tags,
        exprs: Vec::new(),
        rows: None,
        blocks: Default::default(),
        blocks_seq: 0,
        cursor: None,
        row_buf: Row(Vec::new()),
        versions: None,
        decoder: None,
        desc: std::ptr::null_mut(),
        did: None,
    }));
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

/// The values of `col = ANY(array)`, each a one-column key (NULL elements match nothing).
unsafe fn eval_any(node: *mut pg_sys::CustomScanState) -> Vec<Vec<Value>> {
    let st = inner(node);
    let Some(d) = eval(node, st.exprs[1]) else { return Vec::new() };
    let arr = pg_sys::pg_detoast_datum(d.cast_mut_ptr()) as *mut pg_sys::ArrayType;
    let elem = (*arr).elemtype;
    let (mut len, mut byval, mut align) = (0i16, false, 0 as std::ffi::c_char);
    pg_sys::get_typlenbyvalalign(elem, &mut len, &mut byval, &mut align);
    let (mut datums, mut nulls, mut n) = (std::ptr::null_mut(), std::ptr::null_mut(), 0i32);
    pg_sys::deconstruct_array(arr, elem, len as i32, byval, align, &mut datums, &mut nulls, &mut n);
    (0..n as usize)
        .filter(|&i| !*nulls.add(i))
        .map(|i| vec![codec::datum_to_value(*datums.add(i), elem)])
        .collect()
}

/// The pushed-down bounds as integers (µs for times); None if one is NULL (a comparison with
/// NULL is never true: no row).
unsafe fn eval_bounds(node: *mut pg_sys::CustomScanState) -> Option<Vec<(Bound, i64)>> {
    let st = inner(node);
    let tags = st.tags.clone();
    let exprs = st.exprs[1..].to_vec();
    tags.iter()
        .zip(exprs)
        .map(|(&t, e)| {
            let d = eval(node, e)?;
            let v = match codec::datum_to_value(d, pg_sys::exprType((*e).expr as *mut pg_sys::Node)) {
                Value::Int(i) | Value::TimestampTz(i) => i,
                other => unreachable!("the planner pushes integer and timestamptz bounds only, not {other:?}"),
            };
            Some((Bound::of_tag(t), v))
        })
        .collect()
}

/// The inclusive integer range the key bounds leave (None: empty).
fn key_range(bounds: &[(Bound, i64)]) -> Option<(i64, i64)> {
    let (mut lo, mut hi) = (i64::MIN, i64::MAX);
    for &(b, v) in bounds {
        match b {
            Bound::Key(Cmp::Ge) => lo = lo.max(v),
            Bound::Key(Cmp::Gt) => lo = lo.max(v.checked_add(1)?),
            Bound::Key(Cmp::Le) => hi = hi.min(v),
            Bound::Key(Cmp::Lt) => hi = hi.min(v.checked_sub(1)?),
            _ => {}
        }
    }
    (lo <= hi).then_some((lo, hi))
}

/// The seq window `(after, upto]` the versions bounds leave (times resolved to seqs: the
/// commit times of seqs never decrease, so `start > t` is `start_seq > seq_at(t)`).
fn window(cat: &Catalog, bounds: &[(Bound, i64)]) -> (i64, i64) {
    let at = |t: i64| engine::resolve(cat, Point::Time(t));
    let (mut after, mut upto) = (0i64, i64::MAX);
    for &(b, v) in bounds {
        match b {
            Bound::Seq(Cmp::Ge) => after = after.max(v.saturating_sub(1)),
            Bound::Seq(Cmp::Gt) => after = after.max(v),
            Bound::Seq(Cmp::Le) => upto = upto.min(v),
            Bound::Seq(Cmp::Lt) => upto = upto.min(v.saturating_sub(1)),
            Bound::Time(Cmp::Ge) => after = after.max(at(v.saturating_sub(1))),
            Bound::Time(Cmp::Gt) => after = after.max(at(v)),
            Bound::Time(Cmp::Le) => upto = upto.min(at(v)),
            Bound::Time(Cmp::Lt) => upto = upto.min(at(v.saturating_sub(1))),
            Bound::Key(_) => {}
        }
    }
    (after, upto)
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
    let mut out = Vec::new();
    if st.kind == KIND_WINDOW {
        match eval_bounds(node) {
            None => st.did = Some("a bound is NULL: no versions".into()),
            Some(b) => {
                let (after, upto) = window(&cat, &b);
                src.versions_window(after, upto, settled, &marks, |v| out.push(v));
                let end = upto.min(settled);
                st.did = Some(if src.keyed() {
                    format!("versions starting after seq {after}: events of seqs ({after}, {end}] replayed")
                } else {
                    "every version, filtered (no unique identity key to read a window by)".into()
                });
            }
        }
    } else if let Some(key) = eval_key(node) {
        src.versions(Some(&key), settled, &marks, |v| out.push(v));
        st.did = Some(if src.keyed() { "versions of one identity key (key index)".into() } else { "versions of one key (full replay: identity changed)".into() });
    }
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
    // key lookups, lists and ranges read the key index (also after an identity change, from
    // the seq where the new keys begin)
    let by_key = match st.kind {
        KIND_FULL => false,
        _ => src.keyed_lookup_at(seq),
    };
    if by_key {
        match st.kind {
            KIND_KEY => {
                let Some(key) = eval_key(node) else {
                    st.did = Some("identity key lookup (NULL key: no row)".into());
                    return Vec::new();
                };
                let row = src.row_for_key(&key, seq, &marks);
                st.did = Some(lookup_note(&src, "identity key lookup".into()));
                return row.into_iter().collect();
            }
            KIND_ANY => {
                let keys = eval_any(node);
                let rows = src.rows_for_keys(&keys, seq, &marks);
                st.did = Some(lookup_note(&src, format!("identity key lookups: {} keys", keys.len())));
                return rows;
            }
            _ => {
                let Some((lo, hi)) = eval_bounds(node).as_deref().and_then(key_range) else {
                    st.did = Some("identity key range: empty".into());
                    return Vec::new();
                };
                let rows = src.rows_for_int_range(lo, hi, seq, &marks);
                let show = |v: i64, inf: &str| if v == i64::MIN || v == i64::MAX { inf.to_string() } else { v.to_string() };
                let what = format!("identity key range [{}, {}] (key index): {} rows", show(lo, "-inf"), show(hi, "+inf"), rows.len());
                st.did = Some(lookup_note(&src, what));
                return rows;
            }
        }
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

/// What a key lookup did, for EXPLAIN: a lookup after an identity change replays the whole
/// state when a TRUNCATE followed the point, among others (`engine::Source::rows_for_keys`).
fn lookup_note(src: &Source, what: String) -> String {
    match src.lookup_replayed.get() {
        Some(why) => format!("{what}, by replay of the whole state ({why})"),
        None => what,
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

/// "id >= pushed-down value, id < pushed-down value": the pushed-down bounds, for EXPLAIN.
fn bounds_text(tags: &[i32], col: &str) -> String {
    let ops = [">=", ">", "<=", "<"];
    tags.iter()
        .map(|&t| {
            let (name, c) = match Bound::of_tag(t) {
                Bound::Key(c) => (col, c),
                Bound::Seq(c) => (if matches!(c, Cmp::Ge | Cmp::Gt) { "seq_start" } else { "seq_end" }, c),
                Bound::Time(c) => (if matches!(c, Cmp::Ge | Cmp::Gt) { "system_time_start" } else { "system_time_end" }, c),
            };
            format!("{name} {} pushed-down value", ops[c as usize])
        })
        .collect::<Vec<_>>()
        .join(" and ")
}

#[pg_guard]
unsafe extern "C-unwind" fn explain(node: *mut pg_sys::CustomScanState, _ancestors: *mut pg_sys::List, es: *mut pg_sys::ExplainState) {
    let st = inner(node);
    let prop = |k: &CStr, v: &str| {
        let v = std::ffi::CString::new(v).unwrap();
        pg_sys::ExplainPropertyText(k.as_ptr(), v.as_ptr(), es);
    };
    let rel = if st.mode == MODE_VERSIONS { pg_sys::relation_open(st.relid, pg_sys::AccessShareLock as i32) } else { (*node).ss.ss_currentRelation };
    let names = key_names(rel, &st.attnums);
    if st.mode == MODE_VERSIONS {
        pg_sys::relation_close(rel, pg_sys::NoLock as i32);
        prop(
            c"History Lookup",
            &match st.kind {
                KIND_KEY => format!("versions of identity key ({names}) = pushed-down values"),
                _ => format!("versions with {}", bounds_text(&st.tags, "")),
            },
        );
    } else {
        prop(
            c"AS OF",
            match st.mode {
                MODE_SESSION => "driftdb.as_of setting",
                MODE_SEQ => "commit seq (driftdb.as_of_seq)",
                _ => "time (driftdb.as_of_time)",
            },
        );
        prop(
            c"History Lookup",
            &match st.kind {
                KIND_FULL => "full state (newest snapshot + replay)".to_string(),
                KIND_KEY => format!("identity key ({names}) = pushed-down values"),
                KIND_ANY => format!("identity key ({names}) = ANY (pushed-down array)"),
                _ => format!("identity key range: {}", bounds_text(&st.tags, &names)),
            },
        );
    }
    if let Some(d) = &st.did {
        prop(c"History Read", d);
    }
}
