//! ProcessUtility hook: ALTER TABLE on driftdb tables goes through `history::ddl` before and
//! after it runs (see that module for what is checked and recorded).
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::history::ddl;

static mut PREV: pg_sys::ProcessUtility_hook_type = None;

pub fn install() {
    // SAFETY: called once from _PG_init in the postmaster, before any backend runs a statement;
    // the previous hook is saved and chained.
    unsafe {
        PREV = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
    }
}

/// The table an ALTER TABLE statement names, if it exists (no lock: the ALTER takes its own).
unsafe fn alter_table_target(stmt: *mut pg_sys::Node) -> pg_sys::Oid {
    if stmt.is_null() || (*stmt).type_ != pg_sys::NodeTag::T_AlterTableStmt {
        return pg_sys::InvalidOid;
    }
    let alter = stmt as *mut pg_sys::AlterTableStmt;
    if (*alter).objtype != pg_sys::ObjectType::OBJECT_TABLE || (*alter).relation.is_null() {
        return pg_sys::InvalidOid;
    }
    pg_sys::RangeVarGetRelidExtended(
        (*alter).relation,
        pg_sys::NoLock as i32,
        pg_sys::RVROption::RVR_MISSING_OK,
        None,
        std::ptr::null_mut(),
    )
}

#[pg_guard]
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
    let before = ddl::before_alter(alter_table_target((*pstmt).utilityStmt));
    match PREV {
        Some(prev) => prev(pstmt, query_string, read_only_tree, context, params, query_env, dest, qc),
        None => pg_sys::standard_ProcessUtility(pstmt, query_string, read_only_tree, context, params, query_env, dest, qc),
    }
    if let Some(before) = before {
        ddl::after_alter(before);
    }
}
