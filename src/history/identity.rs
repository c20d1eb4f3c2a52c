//! Row identity: which columns name "the same row" across versions. It is the table's
//! REPLICA IDENTITY, exactly as logical replication uses it: DEFAULT (the primary key),
//! USING INDEX (that unique index), FULL (every column), NOTHING (none).
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::error::DriftError;

/// How a table identifies its rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// The key columns (attnums) of the primary key or the REPLICA IDENTITY index.
    Key(Vec<u16>),
    /// REPLICA IDENTITY FULL: the whole row.
    Full,
    /// No usable identity (no primary key, or REPLICA IDENTITY NOTHING).
    None,
}

/// The identity of `rel` as of now.
///
/// # Safety
/// `rel` must be a valid open relation.
pub unsafe fn of(rel: pg_sys::Relation) -> Identity {
    let replident = (*(*rel).rd_rel).relreplident as u8;
    match replident {
        b'f' => Identity::Full,
        b'n' => Identity::None,
        _ => {
            // DEFAULT and INDEX: RelationGetReplicaIndex picks the primary key or the chosen
            // index (cached in the relcache entry).
            let idx = pg_sys::RelationGetReplicaIndex(rel);
            if idx == pg_sys::InvalidOid {
                return Identity::None;
            }
            let index_rel = pg_sys::RelationIdGetRelation(idx);
            let index = (*index_rel).rd_index;
            let n = (*index).indnkeyatts as usize;
            let keys = (*index).indkey.values.as_slice(n).iter().map(|&a| a as u16).collect();
            pg_sys::RelationClose(index_rel);
            Identity::Key(keys)
        }
    }
}

/// Cheap check for the write path: does the table have a usable identity?
///
/// # Safety
/// `rel` must be a valid open relation.
#[inline]
pub unsafe fn has_identity(rel: pg_sys::Relation) -> bool {
    match (*(*rel).rd_rel).relreplident as u8 {
        b'f' => true,
        b'n' => false,
        _ => pg_sys::RelationGetReplicaIndex(rel) != pg_sys::InvalidOid, // cached in the relcache
    }
}

/// The write that needs a row identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    Update,
    Delete,
    /// The DELETE half of an UPDATE that moves a row to another partition (`changingPart`).
    PartitionMove,
}

/// Refuse an UPDATE or DELETE on a table whose rows cannot be told apart across versions.
///
/// # Safety
/// `rel` must be a valid open relation.
pub unsafe fn require(rel: pg_sys::Relation, write: Write) {
    if !has_identity(rel) {
        let name = pgrx::name_data_to_str(&(*(*rel).rd_rel).relname).to_string();
        let (message, moved) = match write {
            Write::Update => (format!("cannot update rows of driftdb table \"{name}\": it has no row identity"), ""),
            Write::Delete => (format!("cannot delete rows of driftdb table \"{name}\": it has no row identity"), ""),
            Write::PartitionMove => (
                format!("cannot move rows of driftdb table \"{name}\" to another partition: it has no row identity"),
                "An UPDATE that changes a row's partition deletes it from one partition and inserts it into another. ",
            ),
        };
        DriftError::new(PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, message)
            .detail(format!(
                "{moved}driftdb records each version of a row under the table's REPLICA IDENTITY (by default its primary key); this table has none."
            ))
            .hint(format!(
                "Add a primary key (ALTER TABLE {name} ADD PRIMARY KEY (...)), or use ALTER TABLE {name} REPLICA IDENTITY FULL or REPLICA IDENTITY USING INDEX."
            ))
            .raise();
    }
}
