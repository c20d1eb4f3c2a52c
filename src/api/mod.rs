//! SQL-callable functions (schema `driftdb`). Each is a thin shim over the history modules.
pub mod verify;
pub mod forget;

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgRelation;

use crate::error::DriftError;

/// Refuse anything but a driftdb table.
pub fn require_driftdb_table(rel: &PgRelation) {
    if rel.rd_tableam != crate::am::routine() as *const pg_sys::TableAmRoutine {
        DriftError::new(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("\"{}\" is not a driftdb table", rel.name()),
        )
        .hint(format!("Create it with USING driftdb, or convert it: ALTER TABLE {} SET ACCESS METHOD driftdb.", rel.name()))
        .raise();
    }
}

/// Refuse callers who do not own the table.
pub fn require_owner(rel: &PgRelation, what: &str) {
    // SAFETY: plain catalog checks on a valid relation OID.
    let ok = unsafe { pg_sys::pg_class_ownercheck(rel.oid(), pg_sys::GetUserId()) };
    if !ok {
        DriftError::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("must be owner of table {} to {what}", rel.name()),
        )
        .raise();
    }
}
