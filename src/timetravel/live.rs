//! The live row of one identity key, for AS OF key lookups after an identity change.
//!
//! Events written before a table's identity changed are filed under the old identity's keys
//! (or under none, for rows loaded before the primary key existed), so the key index cannot
//! find them by the new keys. A key whose row no event has touched since the change
//! (`driftdb.tables.keyed_from`) still has, in the live table, the row it had then: that row
//! is read here, through the identity index, instead of replaying the whole history
//! (`engine::Source::row_for_key`).
use driftdb_core::{Row, Value};
use pgrx::pg_sys;

use crate::history::{codec, decode};

/// A snapshot for reading the live table as committed: taken fresh, before the history is
/// read, and blind to this transaction's own changes (command id 0: rows it inserted are not
/// seen, rows it deleted or updated are seen as they were). Unregistered on drop.
pub struct CommittedSnapshot(pg_sys::Snapshot);

impl CommittedSnapshot {
    /// None under SERIALIZABLE: a read with a snapshot other than the transaction's would take
    /// predicate locks of its own, so such reads replay instead.
    pub fn take() -> Option<CommittedSnapshot> {
        // SAFETY: inside a transaction (the executor runs the scan); GetLatestSnapshot returns
        // a static snapshot, which RegisterSnapshot copies (it is not `copied`), so the command
        // id is changed on our own copy; the copy stays registered until Drop.
        unsafe {
            if pg_sys::XactIsoLevel >= pg_sys::XACT_SERIALIZABLE as i32 {
                return None;
            }
            let snap = pg_sys::RegisterSnapshot(pg_sys::GetLatestSnapshot());
            (*snap).curcid = pg_sys::FirstCommandId;
            Some(CommittedSnapshot(snap))
        }
    }
}

impl Drop for CommittedSnapshot {
    fn drop(&mut self) {
        // SAFETY: registered in `take` with the current resource owner (an ERROR in between
        // releases it with the owner instead).
        unsafe { pg_sys::UnregisterSnapshot(self.0) }
    }
}

/// The row of `rel` whose identity key is `key` (values in identity-index column order), as
/// `snap` sees the table; `Err(())` when the key's values cannot be given to the index (then
/// the caller replays).
///
/// # Safety
/// `rel` must be an open driftdb table whose replica identity index has `key.len()` columns.
pub unsafe fn row_for_key(rel: pg_sys::Relation, key: &[Value], snap: &CommittedSnapshot) -> Result<Option<Row>, ()> {
    let rows = identity_index_rows(rel, snap, |index| {
        let nkeys = (*(*index).rd_index).indnkeyatts as usize;
        if nkeys != key.len() {
            return Err(());
        }
        let attrs = (*(*rel).rd_att).attrs.as_slice((*(*rel).rd_att).natts as usize);
        let heap_cols = (*(*index).rd_index).indkey.values.as_slice(nkeys);
        let mut sk: Vec<pg_sys::ScanKeyData> = vec![std::mem::zeroed(); nkeys];
        for i in 0..nkeys {
            let att = &attrs[heap_cols[i] as usize - 1];
            // identity columns are NOT NULL: no row has a NULL key
            let d = decode::value_to_datum(&key[i], att.atttypid, att.atttypmod).ok_or(())?;
            // the index column's equality operator (the opclass's, as a B-tree lookup uses it)
            let opcintype = *(*index).rd_opcintype.add(i);
            let op = pg_sys::get_opfamily_member(*(*index).rd_opfamily.add(i), opcintype, opcintype, pg_sys::BTEqualStrategyNumber as i16);
            if op == pg_sys::InvalidOid {
                return Err(());
            }
            pg_sys::ScanKeyEntryInitialize(
                &mut sk[i],
                0,
                (i + 1) as i16,
                pg_sys::BTEqualStrategyNumber as u16,
                pg_sys::InvalidOid,
                *(*index).rd_indcollation.add(i),
                pg_sys::get_opcode(op),
                d,
            );
        }
        Ok(sk)
    })?;
    Ok(rows.into_iter().next()) // a unique index: one row at most
}

/// The rows of `rel` whose identity key, one integer column, is in `[lo, hi]` (`i64::MIN` /
/// `i64::MAX`: unbounded), as `snap` sees the table; `Err(())` when the identity index is not
/// one integer column of the integer operator family.
///
/// # Safety
/// `rel` must be an open driftdb table.
pub unsafe fn rows_in_int_range(rel: pg_sys::Relation, lo: i64, hi: i64, snap: &CommittedSnapshot) -> Result<Vec<Row>, ()> {
    identity_index_rows(rel, snap, |index| {
        let opcintype = *(*index).rd_opcintype;
        if (*(*index).rd_index).indnkeyatts != 1 || ![pg_sys::INT2OID, pg_sys::INT4OID, pg_sys::INT8OID].contains(&opcintype) {
            return Err(());
        }
        // the bounds as int8 against the column's type: the integer family's cross-type operators
        let mut sk: Vec<pg_sys::ScanKeyData> = Vec::new();
        for (bound, unbounded, strategy) in [(lo, i64::MIN, pg_sys::BTGreaterEqualStrategyNumber), (hi, i64::MAX, pg_sys::BTLessEqualStrategyNumber)] {
            if bound == unbounded {
                continue;
            }
            let op = pg_sys::get_opfamily_member(*(*index).rd_opfamily, opcintype, pg_sys::INT8OID, strategy as i16);
            if op == pg_sys::InvalidOid {
                return Err(());
            }
            let mut k: pg_sys::ScanKeyData = std::mem::zeroed();
            pg_sys::ScanKeyEntryInitialize(&mut k, 0, 1, strategy as u16, pg_sys::INT8OID, pg_sys::InvalidOid, pg_sys::get_opcode(op), pg_sys::Datum::from(bound));
            sk.push(k);
        }
        Ok(sk)
    })
}

/// The rows of `rel` that `snap` sees through its replica identity index under the scan keys
/// `keys` builds from the open index (`Err(())` from it, or no identity index: `Err(())`).
///
/// # Safety
/// `rel` must be an open driftdb table; `keys` must build scan keys for that index.
unsafe fn identity_index_rows(
    rel: pg_sys::Relation,
    snap: &CommittedSnapshot,
    keys: impl FnOnce(pg_sys::Relation) -> Result<Vec<pg_sys::ScanKeyData>, ()>,
) -> Result<Vec<Row>, ()> {
    let idx = pg_sys::RelationGetReplicaIndex(rel);
    if idx == pg_sys::InvalidOid {
        return Err(());
    }
    let index = pg_sys::index_open(idx, pg_sys::AccessShareLock as i32);
    let mut sk = match keys(index) {
        Ok(sk) => sk,
        Err(()) => {
            pg_sys::index_close(index, pg_sys::AccessShareLock as i32);
            return Err(());
        }
    };
    let scan = pg_sys::index_beginscan(rel, index, snap.0, sk.len() as i32, 0);
    pg_sys::index_rescan(scan, sk.as_mut_ptr(), sk.len() as i32, std::ptr::null_mut(), 0);
    let slot = pg_sys::table_slot_create(rel, std::ptr::null_mut());
    let mut rows = Vec::new();
    while pg_sys::index_getnext_slot(scan, pg_sys::ScanDirection::ForwardScanDirection, slot) {
        rows.push(codec::row_from_slot((*rel).rd_att, slot));
    }
    pg_sys::ExecDropSingleTupleTableSlot(slot);
    pg_sys::index_endscan(scan);
    pg_sys::index_close(index, pg_sys::AccessShareLock as i32);
    Ok(rows)
}
