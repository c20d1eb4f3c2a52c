//! ProcessUtility hook: ALTER TABLE and CLUSTER on driftdb tables go through `history::ddl`
//! before and after they run (see that module for what is checked and recorded).
//!
//! The hook itself is deliberately *not* a `#[pg_guard]` function and holds nothing that needs
//! dropping: an ERROR raised by the utility statement must travel to PostgreSQL's handler
//! untouched (a pgrx guard would catch and re-raise it, losing its cursor position and CONTEXT
//! lines). driftdb's own work runs in the guarded `before`/`after` functions, which keep their
//! state in a thread-local stack instead of the hook's frame.
use std::cell::RefCell;

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::history::ddl;

static mut PREV: pg_sys::ProcessUtility_hook_type = None;

thread_local! {
    /// One entry per utility statement in progress (they nest: a function can run DDL).
    static PENDING: RefCell<Vec<Option<ddl::Before>>> = const { RefCell::new(Vec::new()) };
}

extern "C-unwind" {
    // The raw symbol, called without pgrx's error-catching wrapper (see the module comment).
    #[link_name = "standard_ProcessUtility"]
    fn raw_standard_process_utility(
        pstmt: *mut pg_sys::PlannedStmt,
        query_string: *const std::ffi::c_char,
        read_only_tree: bool,
        context: pg_sys::ProcessUtilityContext::Type,
        params: pg_sys::ParamListInfo,
        query_env: *mut pg_sys::QueryEnvironment,
        dest: *mut pg_sys::DestReceiver,
        qc: *mut pg_sys::QueryCompletion,
    );
}

pub fn install() {
    // SAFETY: called once from _PG_init in the postmaster, before any backend runs a statement;
    // the previous hook is saved and chained.
    unsafe {
        PREV = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
    }
}

/// The table an ALTER TABLE or CLUSTER statement names, if it exists (no lock: the statement
/// takes its own). Both can rewrite the table inside a transaction block, which gives every
/// row a new TID. (VACUUM FULL cannot run inside a transaction block.)
unsafe fn rewrite_target(stmt: *mut pg_sys::Node) -> pg_sys::Oid {
    if stmt.is_null() {
        return pg_sys::InvalidOid;
    }
    let relation = match (*stmt).type_ {
        pg_sys::NodeTag::T_AlterTableStmt => {
            let alter = stmt as *mut pg_sys::AlterTableStmt;
            if (*alter).objtype != pg_sys::ObjectType::OBJECT_TABLE {
                return pg_sys::InvalidOid;
            }
            (*alter).relation
        }
        pg_sys::NodeTag::T_ClusterStmt => (*(stmt as *mut pg_sys::ClusterStmt)).relation,
        _ => return pg_sys::InvalidOid,
    };
    if relation.is_null() {
        return pg_sys::InvalidOid;
    }
    pg_sys::RangeVarGetRelidExtended(
        relation,
        pg_sys::NoLock as i32,
        pg_sys::RVROption::RVR_MISSING_OK,
        None,
        std::ptr::null_mut(),
    )
}

/// Before the statement: returns the depth to hand to `after`. Entries above it are leftovers
/// of statements that raised an ERROR; `after` discards them.
#[pg_guard]
unsafe extern "C-unwind" fn before(pstmt: *mut pg_sys::PlannedStmt) -> usize {
    let state = ddl::before_alter(rewrite_target((*pstmt).utilityStmt));
    PENDING.with(|p| {
        let mut p = p.borrow_mut();
        p.push(state);
        p.len() - 1
    })
}

#[pg_guard]
unsafe extern "C-unwind" fn after(depth: usize) {
    let state = PENDING.with(|p| {
        let mut p = p.borrow_mut();
        let s = p.get_mut(depth).and_then(Option::take);
        p.truncate(depth);
        s
    });
    if let Some(state) = state {
        ddl::after_alter(state);
    }
}

/// Forget statements that never finished (transaction abort).
pub fn reset() {
    PENDING.with(|p| p.borrow_mut().clear());
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    // Only plain values live in this frame, so an ERROR may longjmp through it.
    let depth = before(pstmt);
    match PREV {
        Some(prev) => prev(pstmt, query_string, read_only_tree, context, params, query_env, dest, qc),
        None => raw_standard_process_utility(pstmt, query_string, read_only_tree, context, params, query_env, dest, qc),
    }
    after(depth);
}
