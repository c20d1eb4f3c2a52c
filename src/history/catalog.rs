//! driftdb's own catalog: the OIDs of the objects in schema `driftdb` (looked up by name, and
//! looked up again after any relcache or schema invalidation, since OIDs change if the
//! extension is dropped and re-created), and direct inserts into its tables.
//!
//! driftdb writes its tables with `CatalogTupleInsertWithInfo` (heap insert plus index
//! entries, like PostgreSQL's own catalogs): no executor, no triggers — the guard triggers
//! that refuse direct SQL writes do not fire for driftdb itself.
use std::ffi::CString;

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::error::DriftError;

thread_local! {
    static CACHED: std::cell::Cell<Option<(pg_sys::Oid, Catalog)>> = const { std::cell::Cell::new(None) };
    /// Counts the relcache and schema invalidations this backend has processed.
    static GENERATION: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// The generation at which `CACHED` was last checked against the schema's current objects.
    static CHECKED_AT: std::cell::Cell<u64> = const { std::cell::Cell::new(u64::MAX) };
}

/// A relation's relcache entry, or a schema, changed (or every entry was reset): the cached
/// catalog is checked by name again on its next use. DROP EXTENSION, a dropped or renamed
/// driftdb table and a renamed or dropped schema all send one of these.
fn invalidate() {
    GENERATION.with(|g| g.set(g.get().wrapping_add(1)));
}

#[pg_guard]
unsafe extern "C-unwind" fn relation_changed(_arg: pg_sys::Datum, _relid: pg_sys::Oid) {
    invalidate();
}

#[pg_guard]
unsafe extern "C-unwind" fn namespace_changed(_arg: pg_sys::Datum, _cacheid: i32, _hash: u32) {
    invalidate();
}

/// Registered once, from `_PG_init`.
pub fn register_invalidation() {
    // SAFETY: registering process-lifetime relcache and syscache callbacks from _PG_init.
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(Some(relation_changed), pg_sys::Datum::from(0usize));
        pg_sys::CacheRegisterSyscacheCallback(pg_sys::SysCacheIdentifier::NAMESPACEOID as i32, Some(namespace_changed), pg_sys::Datum::from(0usize));
    }
}

/// OIDs of driftdb's objects in the current database.
#[derive(Clone, Copy, Debug)]
pub struct Catalog {
    pub tables: pg_sys::Oid,
    pub tables_pkey: pg_sys::Oid,
    pub tables_relid_idx: pg_sys::Oid,
    pub commits: pg_sys::Oid,
    pub commits_pkey: pg_sys::Oid,
    pub events: pg_sys::Oid,
    pub events_pkey: pg_sys::Oid,
    pub events_key: pg_sys::Oid,
    pub packs: pg_sys::Oid,
    pub packs_pkey: pg_sys::Oid,
    pub packs_key: pg_sys::Oid,
    pub snapshots: pg_sys::Oid,
    pub snapshots_pkey: pg_sys::Oid,
    pub segments: pg_sys::Oid,
    pub segments_pkey: pg_sys::Oid,
    pub commit_seq: pg_sys::Oid,
    pub table_id_seq: pg_sys::Oid,
}

fn relid(nsp: pg_sys::Oid, name: &str) -> pg_sys::Oid {
    let c = CString::new(name).unwrap();
    // SAFETY: syscache lookup with a valid C string.
    unsafe { pg_sys::get_relname_relid(c.as_ptr(), nsp) }
}

impl Catalog {
    /// Look the objects up; None if the extension is not installed in this database.
    /// Cached per backend, checked against the schema's and `driftdb.events`' current OIDs (a
    /// dropped and re-created extension gives every object a new OID) after any relcache or
    /// schema invalidation (`invalidate`): without one, nothing they name can have changed,
    /// and a small transaction's commit does not look them up again.
    pub fn get() -> Option<Catalog> {
        let generation = GENERATION.with(|g| g.get());
        if CHECKED_AT.with(|c| c.get()) == generation {
            if let Some((_, c)) = CACHED.with(|c| c.get()) {
                return Some(c);
            }
        }
        // SAFETY: syscache lookup with a valid C string.
        let nsp = unsafe { pg_sys::get_namespace_oid(c"driftdb".as_ptr(), true) };
        if nsp == pg_sys::InvalidOid {
            return None;
        }
        if let Some((n, c)) = CACHED.with(|c| c.get()) {
            // the schema survives DROP EXTENSION (it is not an extension member in PG 15):
            // check that the objects are still the cached ones
            if n == nsp && relid(nsp, "events") == c.events {
                CHECKED_AT.with(|c| c.set(generation));
                return Some(c);
            }
        }
        let c = Self::lookup(nsp)?;
        CACHED.with(|cell| cell.set(Some((nsp, c))));
        CHECKED_AT.with(|c| c.set(generation));
        Some(c)
    }

    fn lookup(nsp: pg_sys::Oid) -> Option<Catalog> {
        let c = Catalog {
            tables: relid(nsp, "tables"),
            tables_pkey: relid(nsp, "tables_pkey"),
            tables_relid_idx: relid(nsp, "tables_relid_key"),
            commits: relid(nsp, "commits"),
            commits_pkey: relid(nsp, "commits_pkey"),
            events: relid(nsp, "events"),
            events_pkey: relid(nsp, "events_pkey"),
            events_key: relid(nsp, "events_key"),
            packs: relid(nsp, "packs"),
            packs_pkey: relid(nsp, "packs_pkey"),
            packs_key: relid(nsp, "packs_key"),
            snapshots: relid(nsp, "snapshots"),
            snapshots_pkey: relid(nsp, "snapshots_pkey"),
            segments: relid(nsp, "segments"),
            segments_pkey: relid(nsp, "segments_pkey"),
            commit_seq: relid(nsp, "commit_seq"),
            table_id_seq: relid(nsp, "table_id_seq"),
        };
        if [c.tables, c.tables_pkey, c.tables_relid_idx, c.commits, c.commits_pkey, c.events, c.events_pkey, c.events_key, c.packs, c.packs_pkey, c.packs_key, c.snapshots, c.snapshots_pkey, c.segments, c.segments_pkey, c.commit_seq, c.table_id_seq]
            .contains(&pg_sys::InvalidOid)
        {
            return None;
        }
        Some(c)
    }

    /// Like `get`, but a clear ERROR when the extension is missing.
    pub fn require() -> Catalog {
        Catalog::get().unwrap_or_else(|| {
            // SAFETY: syscache lookup with a valid C string.
            let nsp = unsafe { pg_sys::get_namespace_oid(c"driftdb".as_ptr(), true) };
            if nsp != pg_sys::InvalidOid && relid(nsp, "events") != pg_sys::InvalidOid {
                DriftError::new(PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, "driftdb's catalog in this database is incomplete")
                    .detail("Objects in schema driftdb are missing or renamed (created by another version of the extension, or altered by hand).")
                    .hint("Restore the missing objects, or dump the database and restore it into one with a fresh CREATE EXTENSION driftdb.")
                    .raise()
            }
            DriftError::new(
                PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
                "the driftdb extension is not installed in this database",
            )
            .hint("Run CREATE EXTENSION driftdb.")
            .raise()
        })
    }
}

extern "C-unwind" {
    // commands/sequence.h; not in pgrx's bindings. Advances a sequence without a permission
    // check (driftdb's sequences are not usable by PUBLIC).
    fn nextval_internal(relid: pg_sys::Oid, check_permissions: bool) -> i64;
}

/// nextval() on one of driftdb's sequences.
pub fn nextval(seq: pg_sys::Oid) -> i64 {
    // SAFETY: nextval_internal is an exported backend function; the FFI boundary guard turns a
    // PostgreSQL ERROR into a Rust panic that pgrx re-raises at the outer guard.
    unsafe { pg_sys::ffi::pg_guard_ffi_boundary(|| nextval_internal(seq, false)) }
}

/// An open driftdb table with its index state, for a batch of direct inserts.
pub struct Writer {
    rel: pg_sys::Relation,
    indstate: pg_sys::CatalogIndexState,
}

impl Writer {
    pub fn open(relid: pg_sys::Oid) -> Writer {
        // SAFETY: relid is one of driftdb's tables; RowExclusiveLock as for any insert.
        unsafe {
            let rel = pg_sys::table_open(relid, pg_sys::RowExclusiveLock as i32);
            let indstate = pg_sys::CatalogOpenIndexes(rel);
            Writer { rel, indstate }
        }
    }

    /// Insert one row given as datums and null flags (in column order).
    pub fn insert(&mut self, values: &mut [pg_sys::Datum], nulls: &mut [bool]) {
        // SAFETY: values/nulls have exactly the descriptor's length (checked: heap_form_tuple
        // reads natts entries) and were built column by column from the bootstrap.sql
        // definitions; heap_form_tuple copies the data.
        unsafe {
            let natts = (*(*self.rel).rd_att).natts as usize;
            assert!(values.len() == natts && nulls.len() == natts, "driftdb catalog insert: {} values for {natts} columns", values.len());
            let tup = pg_sys::heap_form_tuple((*self.rel).rd_att, values.as_mut_ptr(), nulls.as_mut_ptr());
            pg_sys::CatalogTupleInsertWithInfo(self.rel, tup, self.indstate);
            pg_sys::heap_freetuple(tup);
        }
    }
}

/// Rows a `BatchWriter` buffers before writing them (as COPY does: one heap_multi_insert of up
/// to this many rows, then their index entries).
const BATCH_ROWS: usize = 1000;
/// ... or fewer, once the buffered tuples take this many bytes.
const BATCH_BYTES: usize = 1 << 20;
/// Fewer rows than this are not batched at all.
const DIRECT_ROWS: usize = 4;

/// An open driftdb table for many direct inserts: rows are buffered and written with
/// `heap_multi_insert` (one WAL record per heap page instead of one per row), then their index
/// entries, one by one, exactly as `CatalogTupleInsertWithInfo` makes them.
///
/// The buffered tuples live in a memory context of the writer's own, reset after every batch;
/// `finish` writes the last batch. Dropping a writer without `finish` loses the buffered rows
/// (only an ERROR unwinding does that).
pub struct BatchWriter {
    w: Writer,
    /// Few rows expected: each is inserted at once (CatalogTupleInsertWithInfo), nothing is
    /// buffered and no context or slots are made — a one-row transaction pays nothing extra.
    direct: bool,
    /// Made on the first push (a transaction that writes nothing here makes none).
    cxt: pg_sys::MemoryContext,
    slots: Vec<*mut pg_sys::TupleTableSlot>,
    used: usize,
    bytes: usize,
}

impl BatchWriter {
    /// `rows`: how many rows the caller is about to push (below `DIRECT_ROWS` they are
    /// inserted one by one).
    pub fn open(relid: pg_sys::Oid, rows: usize) -> BatchWriter {
        let w = Writer::open(relid);
        // The batch path forms index entries itself, for plain column indexes only (driftdb's
        // own): an index added by hand with expressions or a predicate sends every row down the
        // direct path, CatalogTupleInsertWithInfo, as before batching existed.
        // SAFETY: the index state of the open relation, ri_NumIndices entries.
        let plain = unsafe {
            let ind = w.indstate;
            (0..(*ind).ri_NumIndices as usize).all(|i| {
                let info = *(*ind).ri_IndexRelationInfo.add(i);
                (*info).ii_Expressions.is_null() && (*info).ii_Predicate.is_null()
            })
        };
        BatchWriter { w, direct: rows < DIRECT_ROWS || !plain, cxt: std::ptr::null_mut(), slots: Vec::new(), used: 0, bytes: 0 }
    }

    /// The open relation rows are written to.
    pub fn rel(&self) -> pg_sys::Relation {
        self.w.rel
    }

    /// The tuple's bytes to come: build datums for `push` in this context (they are copied
    /// into the tuple and freed with the batch).
    pub fn context(&mut self) -> pg_sys::MemoryContext {
        if self.direct {
            // SAFETY: reads the current context: a few datums of a small transaction are left
            // to it (the pre-commit's, freed with the transaction)
            return unsafe { pg_sys::CurrentMemoryContext };
        }
        if self.cxt.is_null() {
            // SAFETY: a child of the current (transaction-lifetime) context, deleted in Drop or
            // by the transaction's end.
            self.cxt = unsafe {
                pg_sys::AllocSetContextCreateExtended(
                    pg_sys::CurrentMemoryContext,
                    c"driftdb batch insert".as_ptr(),
                    pg_sys::ALLOCSET_DEFAULT_MINSIZE as usize,
                    pg_sys::ALLOCSET_DEFAULT_INITSIZE as usize,
                    pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
                )
            };
        }
        self.cxt
    }

    /// Buffer one row given as datums and null flags (in column order); writes the batch when
    /// it is full.
    pub fn push(&mut self, values: &mut [pg_sys::Datum], nulls: &mut [bool]) {
        if self.direct {
            self.w.insert(values, nulls);
            return;
        }
        // SAFETY: as Writer::insert; the tuple is formed in the batch context and handed to a
        // slot of the relation's descriptor (freed when the slot is cleared in flush).
        unsafe {
            let rel = self.w.rel;
            let natts = (*(*rel).rd_att).natts as usize;
            assert!(values.len() == natts && nulls.len() == natts, "driftdb catalog insert: {} values for {natts} columns", values.len());
            if self.used == self.slots.len() {
                let old = pg_sys::MemoryContextSwitchTo(pg_sys::CurTransactionContext);
                let slot = pg_sys::MakeSingleTupleTableSlot((*rel).rd_att, &pg_sys::TTSOpsHeapTuple);
                pg_sys::MemoryContextSwitchTo(old);
                self.slots.push(slot);
            }
            let old = pg_sys::MemoryContextSwitchTo(self.context());
            let tup = pg_sys::heap_form_tuple((*rel).rd_att, values.as_mut_ptr(), nulls.as_mut_ptr());
            pg_sys::MemoryContextSwitchTo(old);
            self.bytes += (*tup).t_len as usize;
            let slot = self.slots[self.used];
            pg_sys::ExecStoreHeapTuple(tup, slot, true); // owned: heap_multi_insert then does not copy it
            (*slot).tts_tableOid = (*rel).rd_id;
            self.used += 1;
        }
        if self.used >= BATCH_ROWS || self.bytes >= BATCH_BYTES {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.used == 0 {
            return;
        }
        // SAFETY: the slots hold valid tuples of rel; the index state is the relation's own
        // (CatalogOpenIndexes): plain column indexes, no expressions or predicates.
        unsafe {
            let rel = self.w.rel;
            let old = pg_sys::MemoryContextSwitchTo(self.cxt);
            if self.used == 1 {
                // one row (a one-row transaction): heap_insert's plain WAL record and path
                let slot = self.slots[0];
                let tup = pg_sys::ExecFetchSlotHeapTuple(slot, false, std::ptr::null_mut());
                pg_sys::CatalogTupleInsertWithInfo(rel, tup, self.w.indstate);
                pg_sys::ExecClearTuple(slot);
                pg_sys::MemoryContextSwitchTo(old);
                pg_sys::MemoryContextReset(self.cxt);
                self.used = 0;
                self.bytes = 0;
                return;
            }
            pg_sys::heap_multi_insert(rel, self.slots.as_mut_ptr(), self.used as i32, pg_sys::GetCurrentCommandId(true), 0, std::ptr::null_mut());
            // the index entries, as CatalogIndexInsert makes them: from the row as formed (not
            // its toasted copy), pointing at the TID heap_multi_insert put in the slot
            let ind = self.w.indstate;
            let n = (*ind).ri_NumIndices as usize;
            let mut values = [pg_sys::Datum::from(0usize); pg_sys::INDEX_MAX_KEYS as usize];
            let mut isnull = [false; pg_sys::INDEX_MAX_KEYS as usize];
            for &slot in &self.slots[..self.used] {
                let mut tid = (*slot).tts_tid;
                for i in 0..n {
                    let info = *(*ind).ri_IndexRelationInfo.add(i);
                    let index = *(*ind).ri_IndexRelationDescs.add(i);
                    if !(*info).ii_ReadyForInserts {
                        continue;
                    }
                    pg_sys::FormIndexDatum(info, slot, std::ptr::null_mut(), values.as_mut_ptr(), isnull.as_mut_ptr());
                    let unique = if (*(*index).rd_index).indisunique {
                        pg_sys::IndexUniqueCheck::UNIQUE_CHECK_YES
                    } else {
                        pg_sys::IndexUniqueCheck::UNIQUE_CHECK_NO
                    };
                    pg_sys::index_insert(index, values.as_mut_ptr(), isnull.as_mut_ptr(), &mut tid, rel, unique, false, info);
                }
                pg_sys::ExecClearTuple(slot);
            }
            pg_sys::MemoryContextSwitchTo(old);
            pg_sys::MemoryContextReset(self.cxt);
        }
        self.used = 0;
        self.bytes = 0;
    }

    /// Write what is buffered and close the table.
    pub fn finish(mut self) {
        self.flush();
    }
}

impl Drop for BatchWriter {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return; // the transaction's abort frees the context and releases the slots' pins
        }
        // SAFETY: the slots and the context were made in open/push and are dropped once.
        unsafe {
            for &slot in &self.slots {
                pg_sys::ExecDropSingleTupleTableSlot(slot);
            }
            if !self.cxt.is_null() {
                pg_sys::MemoryContextDelete(self.cxt);
            }
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // While an ERROR unwinds, leave the relation and index references to the transaction
        // abort (resource owners release them); calling back into PostgreSQL then could raise
        // a second error mid-unwind.
        if std::thread::panicking() {
            return;
        }
        // SAFETY: rel and indstate were opened in `open` and are closed exactly once.
        unsafe {
            pg_sys::CatalogCloseIndexes(self.indstate);
            pg_sys::table_close(self.rel, pg_sys::NoLock as i32);
        }
    }
}

/// How a catalog-style scan reads: in index order (forward/backward), or in any order.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Any,
    Forward,
    Backward,
}

/// Scan driftdb table `table` through index `index` with btree scan keys on heap columns
/// (`(attnum, strategy, proc, value)`), calling `f` with each tuple and the table's descriptor
/// until it returns false. The relation, index and scan are closed before returning.
///
/// # Safety
/// `snapshot` must stay valid for the call; the tuple passed to `f` is valid only during `f`.
pub unsafe fn scan(
    table: pg_sys::Oid,
    index: pg_sys::Oid,
    keys: &[(i16, u16, u32, pg_sys::Datum)],
    snapshot: pg_sys::Snapshot,
    order: Order,
    lockmode: u32,
    mut f: impl FnMut(pg_sys::HeapTuple, pg_sys::Relation) -> bool,
) {
    let rel = pg_sys::table_open(table, lockmode as i32);
    let mut skeys: Vec<pg_sys::ScanKeyData> = vec![std::mem::zeroed(); keys.len()];
    for (sk, &(attnum, strategy, proc_, value)) in skeys.iter_mut().zip(keys) {
        pg_sys::ScanKeyInit(sk, attnum, strategy, pg_sys::Oid::from(proc_), value);
    }
    let nkeys = skeys.len() as i32;
    if order == Order::Any {
        let scan = pg_sys::systable_beginscan(rel, index, true, snapshot, nkeys, skeys.as_mut_ptr());
        loop {
            let tup = pg_sys::systable_getnext(scan);
            if tup.is_null() || !f(tup, rel) {
                break;
            }
        }
        pg_sys::systable_endscan(scan);
    } else {
        let dir = if order == Order::Forward {
            pg_sys::ScanDirection::ForwardScanDirection
        } else {
            pg_sys::ScanDirection::BackwardScanDirection
        };
        let idx = pg_sys::index_open(index, pg_sys::AccessShareLock as i32);
        let scan = pg_sys::systable_beginscan_ordered(rel, idx, snapshot, nkeys, skeys.as_mut_ptr());
        loop {
            let tup = pg_sys::systable_getnext_ordered(scan, dir);
            if tup.is_null() || !f(tup, rel) {
                break;
            }
        }
        pg_sys::systable_endscan_ordered(scan);
        pg_sys::index_close(idx, pg_sys::AccessShareLock as i32);
    }
    pg_sys::table_close(rel, pg_sys::NoLock as i32);
}

/// Column `attnum` of a tuple of `rel` as a datum (None if NULL).
///
/// # Safety
/// `tup` must be a valid tuple of `rel`.
pub unsafe fn attr(tup: pg_sys::HeapTuple, rel: pg_sys::Relation, attnum: i32) -> Option<pg_sys::Datum> {
    let mut isnull = false;
    let d = pg_sys::heap_getattr(tup, attnum, (*rel).rd_att, &mut isnull);
    (!isnull).then_some(d)
}

/// SnapshotSelf: the latest committed state plus this transaction's own rows, taking no MVCC
/// predicate locks (driftdb's bookkeeping must not make SERIALIZABLE transactions conflict).
pub fn snapshot_self() -> pg_sys::Snapshot {
    // Taking the address of PostgreSQL's static SnapshotSelfData (never written through).
    std::ptr::addr_of_mut!(pg_sys::SnapshotSelfData)
}

/// Update columns of table `table_id`'s row in `driftdb.tables`: `(attnum, value, isnull)`.
/// Returns false if the table has no row.
pub fn update_table_row(cat: &Catalog, table_id: i32, cols: &[(usize, pg_sys::Datum, bool)]) -> bool {
    let keys = [(1, pg_sys::BTEqualStrategyNumber as u16, pg_sys::F_INT4EQ, pg_sys::Datum::from(table_id))];
    let mut found = false;
    // SAFETY: catalog-style update of one driftdb.tables row (found through its primary key)
    // with heap_modify_tuple; the arrays are sized by the table's descriptor.
    unsafe {
        scan(cat.tables, cat.tables_pkey, &keys, snapshot_self(), Order::Any, pg_sys::RowExclusiveLock, |tup, rel| {
            let natts = (*(*rel).rd_att).natts as usize;
            let mut values = vec![pg_sys::Datum::from(0usize); natts];
            let mut nulls = vec![false; natts];
            let mut repl = vec![false; natts];
            for &(attnum, v, isnull) in cols {
                values[attnum - 1] = v;
                nulls[attnum - 1] = isnull;
                repl[attnum - 1] = true;
            }
            let newtup = pg_sys::heap_modify_tuple(tup, (*rel).rd_att, values.as_mut_ptr(), nulls.as_mut_ptr(), repl.as_mut_ptr());
            pg_sys::CatalogTupleUpdate(rel, &mut (*newtup).t_self, newtup);
            pg_sys::heap_freetuple(newtup);
            found = true;
            false
        });
    }
    found
}
