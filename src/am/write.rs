//! The write callbacks: heap does the write, then capture notes which row versions changed.
//!
//! Every callback first runs heap's own implementation with the same arguments; only when heap
//! reports success is the change handed to `history::capture` (by TID — row images are read at
//! pre-commit). UPDATE and DELETE are refused up front on tables without a row identity, before
//! anything is written.
use pgrx::pg_sys;
use pgrx::prelude::*;

use super::heap_routine;
use crate::history::{capture, identity};

macro_rules! heap_fn {
    ($name:ident) => {
        heap_routine().$name.expect(concat!("heap implements ", stringify!($name)))
    };
}

#[pg_guard]
pub(super) unsafe extern "C-unwind" fn tuple_insert(
    rel: pg_sys::Relation,
    slot: *mut pg_sys::TupleTableSlot,
    cid: pg_sys::CommandId,
    options: i32,
    bistate: *mut pg_sys::BulkInsertStateData,
) {
    crate::timetravel::guc::refuse_write(rel);
    heap_fn!(tuple_insert)(rel, slot, cid, options, bistate);
    if capture::is_captured(rel) {
        capture::on_insert(rel, &(*slot).tts_tid);
    }
}

#[pg_guard]
pub(super) unsafe extern "C-unwind" fn multi_insert(
    rel: pg_sys::Relation,
    slots: *mut *mut pg_sys::TupleTableSlot,
    nslots: i32,
    cid: pg_sys::CommandId,
    options: i32,
    bistate: *mut pg_sys::BulkInsertStateData,
) {
    crate::timetravel::guc::refuse_write(rel);
    heap_fn!(multi_insert)(rel, slots, nslots, cid, options, bistate);
    if capture::is_captured(rel) {
        for i in 0..nslots as usize {
            capture::on_insert(rel, &(**slots.add(i)).tts_tid);
        }
    }
}

/// INSERT ... ON CONFLICT inserts speculatively; the row counts once heap confirms it.
#[pg_guard]
pub(super) unsafe extern "C-unwind" fn tuple_complete_speculative(
    rel: pg_sys::Relation,
    slot: *mut pg_sys::TupleTableSlot,
    spec_token: u32,
    succeeded: bool,
) {
    heap_fn!(tuple_complete_speculative)(rel, slot, spec_token, succeeded);
    if succeeded && capture::is_captured(rel) {
        capture::on_insert(rel, &(*slot).tts_tid);
    }
}

#[pg_guard]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe extern "C-unwind" fn tuple_delete(
    rel: pg_sys::Relation,
    tid: pg_sys::ItemPointer,
    cid: pg_sys::CommandId,
    snapshot: pg_sys::Snapshot,
    crosscheck: pg_sys::Snapshot,
    wait: bool,
    tmfd: *mut pg_sys::TM_FailureData,
    changing_part: bool,
) -> pg_sys::TM_Result::Type {
    crate::timetravel::guc::refuse_write(rel);
    let captured = capture::is_captured(rel);
    if captured {
        // the DELETE half of a cross-partition UPDATE says so (changingPart)
        identity::require(rel, if changing_part { identity::Write::PartitionMove } else { identity::Write::Delete });
    }
    let result = heap_fn!(tuple_delete)(rel, tid, cid, snapshot, crosscheck, wait, tmfd, changing_part);
    if captured && result == pg_sys::TM_Result::TM_Ok {
        capture::on_delete(rel, &*tid);
    }
    result
}

#[pg_guard]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe extern "C-unwind" fn tuple_update(
    rel: pg_sys::Relation,
    otid: pg_sys::ItemPointer,
    slot: *mut pg_sys::TupleTableSlot,
    cid: pg_sys::CommandId,
    snapshot: pg_sys::Snapshot,
    crosscheck: pg_sys::Snapshot,
    wait: bool,
    tmfd: *mut pg_sys::TM_FailureData,
    lockmode: *mut pg_sys::LockTupleMode::Type,
    update_indexes: *mut bool,
) -> pg_sys::TM_Result::Type {
    crate::timetravel::guc::refuse_write(rel);
    let captured = capture::is_captured(rel);
    if captured {
        identity::require(rel, identity::Write::Update);
    }
    // the TID of the version being replaced, copied before heap runs (the executor may pass a
    // pointer into a slot that heap_update's caller reuses)
    let old = *otid;
    let result = heap_fn!(tuple_update)(rel, otid, slot, cid, snapshot, crosscheck, wait, tmfd, lockmode, update_indexes);
    if captured && result == pg_sys::TM_Result::TM_Ok {
        capture::on_update(rel, &old, &(*slot).tts_tid);
    }
    result
}

/// Called to give a relation new storage: at CREATE (for the new relation itself) and at
/// TRUNCATE (for an existing one). Only the latter is a change of history.
#[pg_guard]
pub(super) unsafe extern "C-unwind" fn relation_set_new_filenode(
    rel: pg_sys::Relation,
    newrnode: *const pg_sys::RelFileNode,
    persistence: std::ffi::c_char,
    freeze_xid: *mut pg_sys::TransactionId,
    minmulti: *mut pg_sys::MultiXactId,
) {
    // heap_create passes the relation's own rd_node; RelationSetNewRelfilenode (TRUNCATE)
    // passes a freshly allocated filenode.
    let is_truncate = (*newrnode).relNode != (*rel).rd_node.relNode;
    if is_truncate {
        crate::timetravel::guc::refuse_write(rel);
    }
    heap_fn!(relation_set_new_filenode)(rel, newrnode, persistence, freeze_xid, minmulti);
    if is_truncate && capture::is_captured(rel) {
        capture::on_truncate(rel);
    }
}

/// TRUNCATE of a table created (or given new storage) in the current subtransaction.
#[pg_guard]
pub(super) unsafe extern "C-unwind" fn relation_nontransactional_truncate(rel: pg_sys::Relation) {
    crate::timetravel::guc::refuse_write(rel);
    heap_fn!(relation_nontransactional_truncate)(rel);
    if capture::is_captured(rel) {
        capture::on_truncate(rel);
    }
}
