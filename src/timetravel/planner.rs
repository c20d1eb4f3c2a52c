//! Planner hooks for historical reads.
//!
//! * `post_parse_analyze_hook`: `driftdb.as_of(NULL::t, x)` in a FROM clause is rewritten into a
//!   reference to `t` itself carrying the AS OF point as a TABLESAMPLE clause with one of
//!   driftdb's two *marker* sampling methods, `driftdb.as_of_seq(bigint)` and
//!   `driftdb.as_of_time(timestamptz)`. The reference is then an ordinary table reference:
//!   privileges are checked by the executor, row-level security policies are added by the
//!   rewriter and apply to historical rows, views store it (and pg_dump prints it as
//!   `t TABLESAMPLE driftdb.as_of_seq(...)`), outer joins and LATERAL work. Users may write the
//!   TABLESAMPLE form themselves.
//! * `set_rel_pathlist_hook`: a driftdb table scanned with a marker, or any driftdb table while
//!   `driftdb.as_of` is set, gets the DriftDB history scan (`scan.rs`) as its only path —
//!   every current-state path (seq, index, index-only, bitmap, parallel) is removed, since none
//!   of them can see the past. Equality on all identity columns is pushed into the scan as a
//!   key lookup. A driftdb table that the statement writes or locks while `driftdb.as_of` is set
//!   is refused (25006).
use std::cell::RefCell;
use std::collections::HashMap;

use pgrx::pg_sys;
use pgrx::prelude::*;

use super::scan::{Bound, Cmp, Lookup};
use super::{guc, scan};
use crate::history::identity::{self, Identity};

static mut PREV_ANALYZE: pg_sys::post_parse_analyze_hook_type = None;
static mut PREV_PATHLIST: pg_sys::set_rel_pathlist_hook_type = None;

pub fn init() {
    // SAFETY: hook installation from _PG_init (single-threaded), chaining the previous hooks.
    unsafe {
        PREV_ANALYZE = pg_sys::post_parse_analyze_hook;
        pg_sys::post_parse_analyze_hook = Some(post_parse_analyze);
        PREV_PATHLIST = pg_sys::set_rel_pathlist_hook;
        pg_sys::set_rel_pathlist_hook = Some(set_rel_pathlist);
    }
}

/// OIDs of driftdb's functions, looked up by signature (None: extension not installed here).
#[derive(Clone, Copy)]
pub struct Funcs {
    pub as_of_seq: pg_sys::Oid,
    pub as_of_time: pg_sys::Oid,
    pub versions: pg_sys::Oid,
    pub tsm_seq: pg_sys::Oid,
    pub tsm_time: pg_sys::Oid,
}

/// A function of schema `nsp` by name and argument types, straight from the syscache: no
/// privilege check (the hook runs for every query of every role, including roles without
/// USAGE on schema driftdb) and no search_path.
unsafe fn func_oid(nsp: pg_sys::Oid, name: &std::ffi::CStr, args: &[pg_sys::Oid]) -> pg_sys::Oid {
    let v = pg_sys::buildoidvector(args.as_ptr(), args.len() as i32);
    let mut nm: pg_sys::NameData = std::mem::zeroed();
    pg_sys::namestrcpy(&mut nm, name.as_ptr());
    pg_sys::GetSysCacheOid(
        pg_sys::SysCacheIdentifier::PROCNAMEARGSNSP as i32,
        pg_sys::Anum_pg_proc_oid as i16,
        pg_sys::Datum::from(&mut nm as *mut pg_sys::NameData),
        pg_sys::Datum::from(v),
        pg_sys::Datum::from(nsp),
        pg_sys::Datum::from(0usize),
    )
}

thread_local! {
    static FUNCS: RefCell<Option<(pg_sys::Oid, Funcs)>> = const { RefCell::new(None) };
    /// relid → is it a driftdb table (per backend; relkind/AM do not change under a lock).
    static IS_DRIFTDB: RefCell<HashMap<pg_sys::Oid, bool>> = RefCell::new(HashMap::new());
}

/// The function OIDs, cached per database session (keyed by the extension's schema OID, so a
/// dropped and re-created extension is looked up again).
pub fn funcs() -> Option<Funcs> {
    // SAFETY: syscache lookups inside a transaction.
    unsafe {
        if !pg_sys::IsTransactionState() {
            return None;
        }
        let nsp = pg_sys::get_namespace_oid(c"driftdb".as_ptr(), true);
        if nsp == pg_sys::InvalidOid {
            return None;
        }
        // keyed by driftdb.events' OID: the schema outlives DROP EXTENSION, the functions do not
        let key = crate::history::catalog::Catalog::get()?.events;
        if let Some((n, f)) = FUNCS.with(|c| *c.borrow()) {
            if n == key {
                return Some(f);
            }
        }
        let f = Funcs {
            as_of_seq: func_oid(nsp, c"as_of", &[pg_sys::ANYELEMENTOID, pg_sys::INT8OID]),
            as_of_time: func_oid(nsp, c"as_of", &[pg_sys::ANYELEMENTOID, pg_sys::TIMESTAMPTZOID]),
            versions: func_oid(nsp, c"versions", &[pg_sys::ANYELEMENTOID]),
            tsm_seq: func_oid(nsp, c"as_of_seq", &[pg_sys::INTERNALOID]),
            tsm_time: func_oid(nsp, c"as_of_time", &[pg_sys::INTERNALOID]),
        };
        if [f.as_of_seq, f.as_of_time, f.versions, f.tsm_seq, f.tsm_time].contains(&pg_sys::InvalidOid) {
            return None; // mid CREATE EXTENSION
        }
        FUNCS.with(|c| *c.borrow_mut() = Some((key, f)));
        Some(f)
    }
}

/// Is `relid` a driftdb table?
pub fn is_driftdb(relid: pg_sys::Oid) -> bool {
    if let Some(b) = IS_DRIFTDB.with(|c| c.borrow().get(&relid).copied()) {
        return b;
    }
    // SAFETY: relcache lookup of an OID the planner/parser already locked.
    let b = unsafe {
        let rel = pg_sys::RelationIdGetRelation(relid);
        if rel.is_null() {
            return false;
        }
        let b = (*rel).rd_tableam == crate::am::routine() as *const pg_sys::TableAmRoutine;
        pg_sys::RelationClose(rel);
        b
    };
    IS_DRIFTDB.with(|c| c.borrow_mut().insert(relid, b));
    b
}

/// Forget cached facts about a relation (relcache invalidation).
pub fn forget(relid: pg_sys::Oid) {
    IS_DRIFTDB.with(|c| super::reader::forget_in(&mut c.borrow_mut(), relid));
}

// ------------------------------------------------------------------------------------------
// post-parse-analysis: as_of(...) in FROM → the table with a marker TABLESAMPLE
// ------------------------------------------------------------------------------------------

#[pg_guard]
unsafe extern "C-unwind" fn post_parse_analyze(pstate: *mut pg_sys::ParseState, query: *mut pg_sys::Query, jstate: *mut pg_sys::JumbleState) {
    if let Some(prev) = PREV_ANALYZE {
        prev(pstate, query, jstate);
    }
    // driftdb's function OIDs are looked up only once a function call in FROM is met: most
    // queries have none, and this hook runs for every statement parsed
    let mut f: Option<Option<Funcs>> = None;
    visit_query(query, &mut f);
}

/// Rewrite the `as_of` calls in the FROM clauses of `query` and every query nested in it.
///
/// Function calls in FROM are range table entries, found in the range tables of the query, its
/// FROM-clause subqueries, its CTEs, and the subqueries of its sublinks. A query without
/// sublinks (`hasSubLinks`, which the planner relies on as well) holds no query inside its
/// expressions, so its range table and CTEs are read directly; only a query with sublinks is
/// walked node by node (`walker`). Most statements take the direct way: the walk through every
/// expression node cost about 4,000 instructions per statement parsed (callgrind), on every
/// statement of every session, heap tables' included.
///
/// # Safety
/// `query` must be a valid analyzed query.
unsafe fn visit_query(query: *mut pg_sys::Query, f: &mut Option<Option<Funcs>>) {
    if (*query).hasSubLinks {
        pg_sys::query_tree_walker(query, Some(walker), f as *mut Option<Option<Funcs>> as *mut std::ffi::c_void, pg_sys::QTW_EXAMINE_RTES_BEFORE as i32);
        return;
    }
    for rte in pgrx::PgList::<pg_sys::RangeTblEntry>::from_pg((*query).rtable).iter_ptr() {
        visit_rte(rte, f);
        if (*rte).rtekind == pg_sys::RTEKind::RTE_SUBQUERY && !(*rte).subquery.is_null() {
            visit_query((*rte).subquery, f);
        }
    }
    for cte in pgrx::PgList::<pg_sys::CommonTableExpr>::from_pg((*query).cteList).iter_ptr() {
        let q = (*cte).ctequery;
        if !q.is_null() && (*q).type_ == pg_sys::NodeTag::T_Query {
            visit_query(q as *mut pg_sys::Query, f);
        }
    }
}

/// A range table entry: a function call in FROM may be an `as_of` to rewrite.
///
/// # Safety
/// `rte` must be a valid range table entry of the query being analyzed.
unsafe fn visit_rte(rte: *mut pg_sys::RangeTblEntry, f: &mut Option<Option<Funcs>>) {
    if (*rte).rtekind == pg_sys::RTEKind::RTE_FUNCTION {
        if let Some(f) = *f.get_or_insert_with(funcs) {
            rewrite_rte(rte, &f);
        }
    }
}

/// The node-by-node walk of a query with sublinks (`visit_query`): every range table entry and
/// nested query it meets is visited.
#[pg_guard]
unsafe extern "C-unwind" fn walker(node: *mut pg_sys::Node, ctx: *mut std::ffi::c_void) -> bool {
    if node.is_null() {
        return false;
    }
    match (*node).type_ {
        pg_sys::NodeTag::T_RangeTblEntry => {
            visit_rte(node as *mut pg_sys::RangeTblEntry, &mut *(ctx as *mut Option<Option<Funcs>>));
            false
        }
        pg_sys::NodeTag::T_Query => {
            visit_query(node as *mut pg_sys::Query, &mut *(ctx as *mut Option<Option<Funcs>>));
            false
        }
        _ => pg_sys::expression_tree_walker(node, Some(walker), ctx),
    }
}

/// A FROM-clause call `f(NULL::t, ...)` of a single function, without ORDINALITY, whose first
/// argument is a constant of a plain table's row type: (the call, the table), locked.
unsafe fn call_on_table(rte: *mut pg_sys::RangeTblEntry) -> Option<(*mut pg_sys::FuncExpr, pg_sys::Oid)> {
    if (*rte).rtekind != pg_sys::RTEKind::RTE_FUNCTION || (*rte).funcordinality {
        return None;
    }
    let fl = pgrx::PgList::<pg_sys::RangeTblFunction>::from_pg((*rte).functions);
    if fl.len() != 1 {
        return None;
    }
    let fe = (*fl.get_ptr(0)?).funcexpr as *mut pg_sys::FuncExpr;
    if fe.is_null() || (*fe).xpr.type_ != pg_sys::NodeTag::T_FuncExpr {
        return None;
    }
    // the table comes from the type of the first argument (NULL::t); any expression of the
    // row type names it, but only a constant can be dropped without changing the query
    let a0 = pgrx::PgList::<pg_sys::Node>::from_pg((*fe).args).get_ptr(0)?;
    if (*a0).type_ != pg_sys::NodeTag::T_Const {
        return None;
    }
    let relid = pg_sys::get_typ_typrelid((*(a0 as *mut pg_sys::Const)).consttype);
    if relid == pg_sys::InvalidOid || pg_sys::get_rel_relkind(relid) as u8 != pg_sys::RELKIND_RELATION {
        return None;
    }
    Some((fe, relid))
}

unsafe fn rewrite_rte(rte: *mut pg_sys::RangeTblEntry, f: &Funcs) {
    let Some((fe, relid)) = call_on_table(rte) else { return };
    let tsm = if (*fe).funcid == f.as_of_seq {
        f.tsm_seq
    } else if (*fe).funcid == f.as_of_time {
        f.tsm_time
    } else {
        return;
    };
    let Some(a1) = pgrx::PgList::<pg_sys::Node>::from_pg((*fe).args).get_ptr(1) else { return };
    pg_sys::LockRelationOid(relid, pg_sys::AccessShareLock as i32);
    if !is_driftdb(relid) {
        return; // the function itself reports the error when it runs
    }
    let tsc = pg_sys::palloc0(std::mem::size_of::<pg_sys::TableSampleClause>()) as *mut pg_sys::TableSampleClause;
    (*tsc).type_ = pg_sys::NodeTag::T_TableSampleClause;
    (*tsc).tsmhandler = tsm;
    (*tsc).args = pg_sys::lappend(std::ptr::null_mut(), a1 as *mut std::ffi::c_void);
    (*tsc).repeatable = std::ptr::null_mut();

    (*rte).rtekind = pg_sys::RTEKind::RTE_RELATION;
    (*rte).relid = relid;
    (*rte).relkind = pg_sys::RELKIND_RELATION as std::ffi::c_char;
    (*rte).rellockmode = pg_sys::AccessShareLock as i32;
    (*rte).tablesample = tsc;
    (*rte).inh = false; // the function reads this table's own history only
    (*rte).functions = std::ptr::null_mut();
    (*rte).funcordinality = false;
    (*rte).requiredPerms = pg_sys::ACL_SELECT as pg_sys::AclMode;
    (*rte).checkAsUser = pg_sys::InvalidOid;
    // whole rows are returned: SELECT on every column (or the table) is required
    (*rte).selectedCols = pg_sys::bms_add_member(std::ptr::null_mut(), 0 - pg_sys::FirstLowInvalidHeapAttributeNumber);
}

// ------------------------------------------------------------------------------------------
// path generation
// ------------------------------------------------------------------------------------------

/// Where a historical scan's point comes from.
pub enum PointSource {
    /// the session setting `driftdb.as_of`, read when the scan starts
    Session,
    /// a marker TABLESAMPLE: (expression, true = seq / false = time)
    Marker(*mut pg_sys::Node, bool),
}

#[pg_guard]
unsafe extern "C-unwind" fn set_rel_pathlist(root: *mut pg_sys::PlannerInfo, rel: *mut pg_sys::RelOptInfo, rti: pg_sys::Index, rte: *mut pg_sys::RangeTblEntry) {
    if let Some(prev) = PREV_PATHLIST {
        prev(root, rel, rti, rte);
    }
    if (*rte).rtekind == pg_sys::RTEKind::RTE_FUNCTION {
        versions_pushdown(root, rel, rte);
        return;
    }
    if (*rte).rtekind != pg_sys::RTEKind::RTE_RELATION || (*rte).inh || (*rte).relkind as u8 != pg_sys::RELKIND_RELATION {
        return;
    }
    let marker = marker_of(rte);
    let session = guc::current().is_some();
    if marker.is_none() && !session {
        return;
    }
    if !is_driftdb((*rte).relid) {
        return;
    }
    let source = match marker {
        Some(m) => m,
        None => {
            refuse_if_written(root, rti, (*rte).relid);
            PointSource::Session
        }
    };
    let key = key_pushdown(root, rel, (*rte).relid);
    (*rel).pathlist = std::ptr::null_mut();
    (*rel).partial_pathlist = std::ptr::null_mut();
    match key {
        Some(key) => scan::add_path(root, rel, &source, Lookup::Key(key), 1.0),
        None => {
            // the full state, and (the cheaper wins) a read of a set or range of keys
            scan::add_path(root, rel, &source, Lookup::Full, 0.0);
            if let Some((lookup, rows)) = key_set_pushdown(root, rel, (*rte).relid) {
                scan::add_path(root, rel, &source, lookup, rows);
            }
        }
    }
}

/// Is `n` (relabels stripped) a column of the scanned relation itself? Its attnum.
unsafe fn own_column(rel: *mut pg_sys::RelOptInfo, n: *mut pg_sys::Node) -> Option<i16> {
    let n = strip_relabel(n);
    if (*n).type_ != pg_sys::NodeTag::T_Var {
        return None;
    }
    let v = n as *mut pg_sys::Var;
    ((*v).varno as u32 == (*rel).relid && (*v).varlevelsup == 0 && (*v).varattno > 0).then_some((*v).varattno)
}

/// Can `other` be computed before the scan starts: no Vars (of this or another relation: no
/// parameterized history paths yet), nothing volatile?
unsafe fn computable_first(root: *mut pg_sys::PlannerInfo, other: *mut pg_sys::Node) -> bool {
    pg_sys::bms_is_empty(pg_sys::pull_varnos(root, other)) && !pg_sys::contain_volatile_functions(other)
}

fn is_int(t: pg_sys::Oid) -> bool {
    // SAFETY: a syscache lookup (domains resolve to their base type)
    matches!(unsafe { pg_sys::getBaseType(t) }, pg_sys::INT2OID | pg_sys::INT4OID | pg_sys::INT8OID)
}

/// `rel`'s own quals (not pseudo-constant) that are nodes of type `tag`, with their RestrictInfo.
unsafe fn quals_of(rel: *mut pg_sys::RelOptInfo, tag: pg_sys::NodeTag) -> Vec<(*mut pg_sys::RestrictInfo, *mut pg_sys::Node)> {
    let ris = pgrx::PgList::<pg_sys::RestrictInfo>::from_pg((*rel).baserestrictinfo);
    ris.iter_ptr()
        .filter(|&ri| !(*ri).pseudoconstant && (*((*ri).clause as *mut pg_sys::Node)).type_ == tag)
        .map(|ri| (ri, (*ri).clause as *mut pg_sys::Node))
        .collect()
}

/// The comparisons of `rel`'s quals `<column> op <value>` (either order; the operator
/// commuted when the column is on the right), the value computable before the scan, whose
/// column `col` accepts: (column attnum, btree strategy in `opfamily`, value, the clause).
unsafe fn comparisons(
    root: *mut pg_sys::PlannerInfo,
    rel: *mut pg_sys::RelOptInfo,
    col: impl Fn(*mut pg_sys::Node) -> Option<i16>,
    opfamily: impl Fn(i16) -> pg_sys::Oid,
) -> Vec<(i16, u16, *mut pg_sys::Node, *mut pg_sys::RestrictInfo)> {
    let mut out = Vec::new();
    for (ri, clause) in quals_of(rel, pg_sys::NodeTag::T_OpExpr) {
        let op = clause as *mut pg_sys::OpExpr;
        let args = pgrx::PgList::<pg_sys::Node>::from_pg((*op).args);
        if args.len() != 2 {
            continue;
        }
        for (i, (var, other)) in [(args.get_ptr(0).unwrap(), args.get_ptr(1).unwrap()), (args.get_ptr(1).unwrap(), args.get_ptr(0).unwrap())].into_iter().enumerate() {
            let Some(attno) = col(var) else { continue };
            let strategy = pg_sys::get_op_opfamily_strategy((*op).opno, opfamily(attno));
            if strategy == 0 || !computable_first(root, other) {
                continue;
            }
            // `value < col` is `col > value`
            let strategy = if i == 0 { strategy as u16 } else { pg_sys::BTMaxStrategyNumber as u16 + 1 - strategy as u16 };
            out.push((attno, strategy, other, ri));
        }
    }
    out
}

fn cmp_of(strategy: u16) -> Option<Cmp> {
    match strategy as u32 {
        pg_sys::BTLessStrategyNumber => Some(Cmp::Lt),
        pg_sys::BTLessEqualStrategyNumber => Some(Cmp::Le),
        pg_sys::BTGreaterEqualStrategyNumber => Some(Cmp::Ge),
        pg_sys::BTGreaterStrategyNumber => Some(Cmp::Gt),
        _ => None,
    }
}

/// A one-column identity compared with `= ANY(array)`, or (an integer identity) bounded by
/// `<` `<=` `>` `>=` (BETWEEN is two of them): the lookup, and how many rows it should return.
unsafe fn key_set_pushdown(root: *mut pg_sys::PlannerInfo, rel: *mut pg_sys::RelOptInfo, relid: pg_sys::Oid) -> Option<(Lookup, f64)> {
    let r = pg_sys::RelationIdGetRelation(relid);
    let ident = identity::of(r);
    let desc = (*r).rd_att;
    let attr = |a: i16| *(*desc).attrs.as_slice((*desc).natts as usize).get(a as usize - 1).expect("a column of the table");
    let col = match ident {
        Identity::Key(cols) if cols.len() == 1 => cols[0] as i16,
        _ => {
            pg_sys::RelationClose(r);
            return None;
        }
    };
    let a = attr(col);
    pg_sys::RelationClose(r);
    if !key_type_ok(a.atttypid, a.attcollation) {
        return None;
    }
    // col = ANY(array): each element looked up by the key index
    for (_, clause) in quals_of(rel, pg_sys::NodeTag::T_ScalarArrayOpExpr) {
        let sa = clause as *mut pg_sys::ScalarArrayOpExpr;
        let args = pgrx::PgList::<pg_sys::Node>::from_pg((*sa).args);
        if !(*sa).useOr || args.len() != 2 || own_column(rel, args.get_ptr(0).unwrap()) != Some(col) {
            continue;
        }
        let arr = args.get_ptr(1).unwrap();
        let elem = pg_sys::get_element_type(pg_sys::exprType(arr));
        let tce = pg_sys::lookup_type_cache(pg_sys::getBaseType(a.atttypid), pg_sys::TYPECACHE_EQ_OPR as i32);
        let same_eq = !tce.is_null() && (*tce).eq_opr == (*sa).opno;
        let int_eq = is_int(a.atttypid)
            && is_int(elem)
            && pg_sys::get_op_opfamily_strategy((*sa).opno, pg_sys::INTEGER_BTREE_FAM_OID) == pg_sys::BTEqualStrategyNumber as i32;
        if elem == pg_sys::InvalidOid || !(same_eq || int_eq) || !computable_first(root, arr) {
            continue;
        }
        return Some((Lookup::AnyOf(col as u16, arr), pg_sys::estimate_array_length(arr).max(1) as f64));
    }
    // integer bounds: the key index read over the range of encoded keys
    if !is_int(a.atttypid) {
        return None;
    }
    let mut bounds = Vec::new();
    let mut used: *mut pg_sys::List = std::ptr::null_mut();
    for (_, strategy, other, ri) in comparisons(root, rel, |n| own_column(rel, n).filter(|&c| c == col), |_| pg_sys::INTEGER_BTREE_FAM_OID) {
        if let (Some(c), true) = (cmp_of(strategy), is_int(pg_sys::exprType(other))) {
            bounds.push((Bound::Key(c), other));
            used = pg_sys::lappend(used, ri as *mut _);
        }
    }
    if bounds.is_empty() {
        return None;
    }
    let sel = pg_sys::clauselist_selectivity(root, used, (*rel).relid as i32, pg_sys::JoinType::JOIN_INNER, std::ptr::null_mut());
    Some((Lookup::KeyRange(col as u16, bounds), (sel * (*rel).tuples).max(1.0)))
}

/// The marker TABLESAMPLE of a table reference, if any.
unsafe fn marker_of(rte: *mut pg_sys::RangeTblEntry) -> Option<PointSource> {
    let tsc = (*rte).tablesample;
    if tsc.is_null() {
        return None;
    }
    let f = funcs()?;
    let is_seq = if (*tsc).tsmhandler == f.tsm_seq {
        true
    } else if (*tsc).tsmhandler == f.tsm_time {
        false
    } else {
        return None;
    };
    let args = pgrx::PgList::<pg_sys::Node>::from_pg((*tsc).args);
    Some(PointSource::Marker(args.get_ptr(0)?, is_seq))
}

unsafe fn refuse_if_written(root: *mut pg_sys::PlannerInfo, rti: pg_sys::Index, relid: pg_sys::Oid) {
    let parse = (*root).parse;
    let mut written = (*parse).resultRelation as pg_sys::Index == rti && (*parse).commandType != pg_sys::CmdType::CMD_SELECT;
    let marks = pgrx::PgList::<pg_sys::PlanRowMark>::from_pg((*root).rowMarks);
    for m in marks.iter_ptr() {
        if (*m).rti == rti && (*m).markType != pg_sys::RowMarkType::ROW_MARK_REFERENCE && (*m).markType != pg_sys::RowMarkType::ROW_MARK_COPY {
            written = true;
        }
    }
    if written {
        let rel = pg_sys::RelationIdGetRelation(relid);
        guc::refuse_write(rel);
        pg_sys::RelationClose(rel);
    }
}

/// Equality on every identity column: (attnum, value expression) in identity order.
unsafe fn key_pushdown(root: *mut pg_sys::PlannerInfo, rel: *mut pg_sys::RelOptInfo, relid: pg_sys::Oid) -> Option<Vec<(u16, *mut pg_sys::Node)>> {
    key_pushdown_by(root, rel, relid, |n| own_column(rel, n))
}

/// `versions(NULL::t)` in FROM with equality on `(v.data).<identity column>` for every identity
/// column: serve it with the history scan's versions-of-one-key mode.
unsafe fn versions_pushdown(root: *mut pg_sys::PlannerInfo, rel: *mut pg_sys::RelOptInfo, rte: *mut pg_sys::RangeTblEntry) {
    let Some((fe, relid)) = call_on_table(rte) else { return };
    if funcs().is_none_or(|f| (*fe).funcid != f.versions) {
        return;
    }
    pg_sys::LockRelationOid(relid, pg_sys::AccessShareLock as i32);
    if !is_driftdb(relid) {
        return;
    }
    // whole-row references to the function's output cannot be served by the scan's tlist
    let mut attrs: *mut pg_sys::Bitmapset = std::ptr::null_mut();
    pg_sys::pull_varattnos((*(*rel).reltarget).exprs as *mut pg_sys::Node, (*rel).relid, &mut attrs);
    let ris = pgrx::PgList::<pg_sys::RestrictInfo>::from_pg((*rel).baserestrictinfo);
    for ri in ris.iter_ptr() {
        pg_sys::pull_varattnos((*ri).clause as *mut pg_sys::Node, (*rel).relid, &mut attrs);
    }
    if pg_sys::bms_is_member(0 - pg_sys::FirstLowInvalidHeapAttributeNumber, attrs) {
        return;
    }
    let relno = (*rel).relid;
    let key = key_pushdown_by(root, rel, relid, |n| {
        let n = strip_relabel(n);
        if (*n).type_ != pg_sys::NodeTag::T_FieldSelect {
            return None;
        }
        let fs = n as *mut pg_sys::FieldSelect;
        let arg = (*fs).arg as *mut pg_sys::Node;
        if (*arg).type_ != pg_sys::NodeTag::T_Var {
            return None;
        }
        let v = arg as *mut pg_sys::Var;
        ((*v).varno as u32 == relno && (*v).varlevelsup == 0 && (*v).varattno == 5).then_some((*fs).fieldnum)
    });
    let lookup = match key {
        Some(key) => Lookup::Key(key),
        None => {
            let bounds = window_bounds(root, rel);
            if bounds.is_empty() {
                return;
            }
            Lookup::Window(bounds)
        }
    };
    (*rel).pathlist = std::ptr::null_mut();
    (*rel).partial_pathlist = std::ptr::null_mut();
    scan::add_versions_path(root, rel, relid, lookup);
}

/// Bounds of a `versions()` reference that limit which events must be read: a lower bound on
/// where versions start (`seq_start`/`system_time_start` `>=`, `>`, `=`) and an upper bound on
/// where they end (`seq_end`/`system_time_end` `<=`, `<`, `=`). Equality pushes down as the
/// inclusive bound (a superset; every qual is rechecked). Bounds on the other sides (versions
/// that end after a point, as FROM..TO and BETWEEN have) need the versions open at that point
/// with their starts, and are only filtered.
unsafe fn window_bounds(root: *mut pg_sys::PlannerInfo, rel: *mut pg_sys::RelOptInfo) -> Vec<(Bound, *mut pg_sys::Node)> {
    let relno = (*rel).relid;
    let column = |n: *mut pg_sys::Node| {
        let n = strip_relabel(n);
        if (*n).type_ != pg_sys::NodeTag::T_Var {
            return None;
        }
        let v = n as *mut pg_sys::Var;
        ((*v).varno as u32 == relno && (*v).varlevelsup == 0 && (1..=4).contains(&(*v).varattno)).then_some((*v).varattno)
    };
    let tce = pg_sys::lookup_type_cache(pg_sys::TIMESTAMPTZOID, pg_sys::TYPECACHE_BTREE_OPFAMILY as i32);
    let time_family = if tce.is_null() { pg_sys::InvalidOid } else { (*tce).btree_opf };
    // columns: 1 system_time_start, 2 system_time_end, 3 seq_start, 4 seq_end
    let family = |attno: i16| if attno <= 2 { time_family } else { pg_sys::INTEGER_BTREE_FAM_OID };
    let mut out = Vec::new();
    for (attno, strategy, other, _) in comparisons(root, rel, column, family) {
        let is_start = attno == 1 || attno == 3;
        let c = match (strategy as u32, is_start) {
            (pg_sys::BTEqualStrategyNumber, true) => Cmp::Ge,
            (pg_sys::BTEqualStrategyNumber, false) => Cmp::Le,
            _ => match cmp_of(strategy) {
                Some(c @ (Cmp::Ge | Cmp::Gt)) if is_start => c,
                Some(c @ (Cmp::Le | Cmp::Lt)) if !is_start => c,
                _ => continue,
            },
        };
        let t = pg_sys::exprType(other);
        if attno <= 2 && t == pg_sys::TIMESTAMPTZOID {
            out.push((Bound::Time(c), other));
        } else if attno > 2 && is_int(t) {
            out.push((Bound::Seq(c), other));
        }
    }
    out
}

/// Equality on every identity column of `relid`, the column reference recognised by `col`
/// (returns the attnum it names): (attnum, value expression) in identity order.
unsafe fn key_pushdown_by(
    root: *mut pg_sys::PlannerInfo,
    rel: *mut pg_sys::RelOptInfo,
    relid: pg_sys::Oid,
    col: impl Fn(*mut pg_sys::Node) -> Option<i16>,
) -> Option<Vec<(u16, *mut pg_sys::Node)>> {
    let r = pg_sys::RelationIdGetRelation(relid);
    let ident = identity::of(r);
    let desc = (*r).rd_att;
    let Identity::Key(cols) = ident else {
        pg_sys::RelationClose(r);
        return None;
    };
    let natts = (*desc).natts as usize;
    let attrs = (*desc).attrs.as_slice(natts);
    let mut found: Vec<Option<*mut pg_sys::Node>> = vec![None; cols.len()];
    for (_, clause) in quals_of(rel, pg_sys::NodeTag::T_OpExpr) {
        let op = clause as *mut pg_sys::OpExpr;
        let args = pgrx::PgList::<pg_sys::Node>::from_pg((*op).args);
        if args.len() != 2 {
            continue;
        }
        for (var, other) in [(args.get_ptr(0).unwrap(), args.get_ptr(1).unwrap()), (args.get_ptr(1).unwrap(), args.get_ptr(0).unwrap())] {
            let Some(attno) = col(var) else { continue };
            let Some(pos) = cols.iter().position(|&c| c as i16 == attno) else { continue };
            let a = &attrs[attno as usize - 1];
            if !key_type_ok(a.atttypid, a.attcollation) || !(is_type_eq(op, a.atttypid) || is_integer_eq(op, a.atttypid, other)) {
                continue;
            }
            if !computable_first(root, other) {
                continue;
            }
            found[pos] = Some(other);
        }
    }
    pg_sys::RelationClose(r);
    if found.iter().all(|f| f.is_some()) {
        Some(cols.iter().zip(found).map(|(c, f)| (*c, f.unwrap())).collect())
    } else {
        None
    }
}

unsafe fn strip_relabel(mut n: *mut pg_sys::Node) -> *mut pg_sys::Node {
    while (*n).type_ == pg_sys::NodeTag::T_RelabelType {
        n = (*(n as *mut pg_sys::RelabelType)).arg as *mut pg_sys::Node;
    }
    n
}

/// Types whose equality is exactly "same stored value" (so an encoded key finds every row the
/// operator would match): integers, text types under a deterministic collation, uuid, bool,
/// date and timestamps, bytea.
unsafe fn key_type_ok(typid: pg_sys::Oid, coll: pg_sys::Oid) -> bool {
    let base = pg_sys::getBaseType(typid);
    match base {
        pg_sys::INT2OID | pg_sys::INT4OID | pg_sys::INT8OID | pg_sys::UUIDOID | pg_sys::BOOLOID | pg_sys::DATEOID | pg_sys::TIMESTAMPOID
        | pg_sys::TIMESTAMPTZOID | pg_sys::BYTEAOID | pg_sys::OIDOID => true,
        pg_sys::TEXTOID | pg_sys::VARCHAROID => coll == pg_sys::InvalidOid || pg_sys::get_collation_isdeterministic(coll),
        _ => false,
    }
}

/// Is the operator the equality of the column's type (both inputs of that type)?
unsafe fn is_type_eq(op: *mut pg_sys::OpExpr, typid: pg_sys::Oid) -> bool {
    let tce = pg_sys::lookup_type_cache(pg_sys::getBaseType(typid), pg_sys::TYPECACHE_EQ_OPR as i32);
    !tce.is_null() && (*tce).eq_opr == (*op).opno
}

/// Is the operator an integer equality across integer widths (an int4 key compared with an
/// int2 or int8 value, as drivers often send)? Integers are encoded by value whatever their
/// width, so the value's own type encodes the same key (the scan converts it by its own type).
unsafe fn is_integer_eq(op: *mut pg_sys::OpExpr, typid: pg_sys::Oid, other: *mut pg_sys::Node) -> bool {
    let int = |t: pg_sys::Oid| matches!(t, pg_sys::INT2OID | pg_sys::INT4OID | pg_sys::INT8OID);
    int(pg_sys::getBaseType(typid))
        && int(pg_sys::getBaseType(pg_sys::exprType(other)))
        && pg_sys::get_op_opfamily_strategy((*op).opno, pg_sys::INTEGER_BTREE_FAM_OID) == pg_sys::BTEqualStrategyNumber as i32
}

// ------------------------------------------------------------------------------------------
// the marker sampling methods
// ------------------------------------------------------------------------------------------

unsafe fn tsm_routine(param: pg_sys::Oid) -> pg_sys::Datum {
    let r = pg_sys::palloc0(std::mem::size_of::<pg_sys::TsmRoutine>()) as *mut pg_sys::TsmRoutine;
    (*r).type_ = pg_sys::NodeTag::T_TsmRoutine;
    (*r).parameterTypes = pg_sys::lappend_oid(std::ptr::null_mut(), param);
    (*r).repeatable_across_queries = true;
    (*r).repeatable_across_scans = true;
    (*r).SampleScanGetSampleSize = Some(tsm_size);
    (*r).BeginSampleScan = Some(tsm_begin);
    (*r).NextSampleTuple = Some(tsm_next);
    pg_sys::Datum::from(r)
}

#[pg_guard]
unsafe extern "C-unwind" fn tsm_size(
    _root: *mut pg_sys::PlannerInfo,
    baserel: *mut pg_sys::RelOptInfo,
    _params: *mut pg_sys::List,
    pages: *mut pg_sys::BlockNumber,
    tuples: *mut f64,
) {
    *pages = (*baserel).pages;
    *tuples = (*baserel).tuples.max(1.0);
}

fn not_here() -> ! {
    crate::error::DriftError::new(
        PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
        "driftdb AS OF markers can only be read by the DriftDB history scan",
    )
    .detail("TABLESAMPLE driftdb.as_of_seq/as_of_time marks a historical read of a driftdb table; it is not a sampling method.")
    .raise()
}

#[pg_guard]
unsafe extern "C-unwind" fn tsm_begin(_node: *mut pg_sys::SampleScanState, _params: *mut pg_sys::Datum, _nparams: i32, _seed: u32) {
    not_here()
}

#[pg_guard]
unsafe extern "C-unwind" fn tsm_next(_node: *mut pg_sys::SampleScanState, _block: pg_sys::BlockNumber, _max: pg_sys::OffsetNumber) -> pg_sys::OffsetNumber {
    not_here()
}

pg_function_info_v1!(pg_finfo_driftdb_tsm_seq);

#[no_mangle]
#[pg_guard]
pub unsafe extern "C-unwind" fn driftdb_tsm_seq(_fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    tsm_routine(pg_sys::INT8OID)
}

pg_function_info_v1!(pg_finfo_driftdb_tsm_time);

#[no_mangle]
#[pg_guard]
pub unsafe extern "C-unwind" fn driftdb_tsm_time(_fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    tsm_routine(pg_sys::TIMESTAMPTZOID)
}

extension_sql!(
    r#"
CREATE FUNCTION driftdb.as_of_seq(internal) RETURNS tsm_handler
LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'driftdb_tsm_seq';
COMMENT ON FUNCTION driftdb.as_of_seq(internal) IS 'marks a historical read: t TABLESAMPLE driftdb.as_of_seq(N) reads t as of commit seq N (what driftdb.as_of(NULL::t, N) becomes)';
CREATE FUNCTION driftdb.as_of_time(internal) RETURNS tsm_handler
LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'driftdb_tsm_time';
COMMENT ON FUNCTION driftdb.as_of_time(internal) IS 'marks a historical read: t TABLESAMPLE driftdb.as_of_time(ts) reads t as of a time (what driftdb.as_of(NULL::t, ts) becomes)';
"#,
    name = "timetravel_markers",
    requires = ["history"]
);
