//! The capture side of the write path: which row versions this transaction touched.
//!
//! The access method's write callbacks call in here after heap has done the write. We keep
//! only TIDs (packed into a `u64` handle) in the per-transaction `TxBuf`; row images are read
//! from the heap at pre-commit, once per net change (see `commit.rs`). Everything here is on
//! the hot path of every write: a few field reads and a hash-table operation.
use std::cell::RefCell;

use driftdb_core::{SchemaChange, TxBuf};
use pgrx::pg_sys;

use super::RESTORE_MODE;

/// A schema change to record with this transaction (ALTER TABLE, SET ACCESS METHOD).
pub(crate) struct SchemaNote {
    /// Subtransaction nesting level that made it: dropped if that subtransaction aborts.
    pub level: i32,
    pub rel: u32,
    pub change: SchemaChange,
    /// The table's history starts with this transaction (converted with SET ACCESS METHOD).
    pub baseline: bool,
}

thread_local! {
    /// The current top-level transaction's changes. Emptied at commit and abort.
    pub(crate) static TXBUF: RefCell<TxBuf> = RefCell::new(TxBuf::new());
    /// The current top-level transaction's schema changes to driftdb tables, in order.
    pub(crate) static SCHEMA_NOTES: RefCell<Vec<SchemaNote>> = const { RefCell::new(Vec::new()) };
}

pub fn note_schema(rel: u32, change: SchemaChange, baseline: bool) {
    // SAFETY: reads the backend's transaction nesting level.
    let level = unsafe { pg_sys::GetCurrentTransactionNestLevel() };
    SCHEMA_NOTES.with(|n| n.borrow_mut().push(SchemaNote { level, rel, change, baseline }));
}

/// Subtransaction end: notes of an aborted subtransaction go; a committed one's belong to its
/// parent from now on.
pub fn notes_end_sub(level: i32, committed: bool) {
    SCHEMA_NOTES.with(|n| {
        let mut n = n.borrow_mut();
        if committed {
            n.iter_mut().filter(|x| x.level >= level).for_each(|x| x.level = level - 1);
        } else {
            n.retain(|x| x.level < level);
        }
    });
}

/// Replace this transaction's buffered TIDs of `rel` by row images (before a rewrite).
///
/// # Safety
/// `rel` must be open, and locked by this transaction's earlier writes.
pub unsafe fn resolve(rel: pg_sys::Relation) {
    let relid = (*rel).rd_id.to_u32();
    let mut versions = super::commit::VersionReader::new(rel);
    TXBUF.with(|b| b.borrow_mut().resolve_rel(relid, |h| versions.read(h)));
}

/// Pack a heap TID into a handle: block number in the high bits, line pointer in the low 16.
#[inline]
pub fn pack_tid(tid: &pg_sys::ItemPointerData) -> u64 {
    let block = ((tid.ip_blkid.bi_hi as u64) << 16) | tid.ip_blkid.bi_lo as u64;
    (block << 16) | tid.ip_posid as u64
}

#[inline]
pub fn unpack_tid(h: u64) -> pg_sys::ItemPointerData {
    let block = h >> 16;
    pg_sys::ItemPointerData {
        ip_blkid: pg_sys::BlockIdData { bi_hi: (block >> 16) as u16, bi_lo: (block & 0xffff) as u16 },
        ip_posid: (h & 0xffff) as u16,
    }
}

/// Does this relation's history get recorded? Permanent plain tables only: temporary and
/// unlogged driftdb tables behave like heap tables without history (their rows do not
/// survive a session or a crash, the history would). The transient heaps that table
/// rewrites (ALTER TABLE, VACUUM FULL, CLUSTER) fill are not recorded either: they carry
/// rows that already have their history (decision record D5).
///
/// # Safety
/// `rel` must be a valid open relation.
#[inline]
pub unsafe fn is_captured(rel: pg_sys::Relation) -> bool {
    let form = &*(*rel).rd_rel;
    if form.relkind as u8 != pg_sys::RELKIND_RELATION || form.relpersistence as u8 != pg_sys::RELPERSISTENCE_PERMANENT {
        return false;
    }
    if RESTORE_MODE.get() || pg_sys::IsBinaryUpgrade {
        return false;
    }
    !is_transient_rewrite_target(rel)
}

/// make_new_heap() names the transient table of a rewrite "pg_temp_<oid of the old table>"
/// and creates it in the current transaction.
unsafe fn is_transient_rewrite_target(rel: pg_sys::Relation) -> bool {
    if (*rel).rd_createSubid == 0 {
        // InvalidSubTransactionId: not created in this transaction
        return false;
    }
    let name = pgrx::name_data_to_str(&(*(*rel).rd_rel).relname);
    name.strip_prefix("pg_temp_").is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()))
}

#[inline]
fn relid(rel: pg_sys::Relation) -> u32 {
    // SAFETY: rel is valid (callers' contract).
    unsafe { (*rel).rd_id.to_u32() }
}

fn txbuf_error(e: driftdb_core::TxBufError) -> ! {
    crate::error::DriftError::new(pgrx::PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("driftdb change buffer: {e}"))
        .hint("This is a driftdb bug; the transaction has been aborted and nothing was recorded.")
        .raise()
}

pub fn on_insert(rel: pg_sys::Relation, tid: &pg_sys::ItemPointerData) {
    TXBUF.with(|b| b.borrow_mut().insert(relid(rel), pack_tid(tid))).unwrap_or_else(|e| txbuf_error(e));
}

pub fn on_update(rel: pg_sys::Relation, old: &pg_sys::ItemPointerData, new: &pg_sys::ItemPointerData) {
    TXBUF
        .with(|b| b.borrow_mut().update(relid(rel), pack_tid(old), pack_tid(new)))
        .unwrap_or_else(|e| txbuf_error(e));
}

pub fn on_delete(rel: pg_sys::Relation, tid: &pg_sys::ItemPointerData) {
    TXBUF.with(|b| b.borrow_mut().delete(relid(rel), pack_tid(tid)));
}

pub fn on_truncate(rel: pg_sys::Relation) {
    TXBUF.with(|b| b.borrow_mut().truncate(relid(rel)));
}

/// Has this transaction changed driftdb rows that are not yet written as events?
pub fn pending() -> bool {
    TXBUF.with(|b| !b.borrow().is_empty()) || SCHEMA_NOTES.with(|n| !n.borrow().is_empty())
}

/// Does the buffer hold TIDs of this relation? (Before a rewrite they must be resolved.)
pub fn touches(rel: u32) -> bool {
    TXBUF.with(|b| b.borrow().tables_touched().any(|r| r == rel))
}
