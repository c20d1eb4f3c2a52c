//! Event packs (`driftdb.packs`): the row events of a bulk transaction, a few kilobytes at a
//! time (decision record D17 in docs/architecture.md; format: `driftdb_core::pack`).
//!
//! A transaction that changes at least `driftdb.pack_min_events` rows of one table (and changes
//! no row's key) stores that table's row events here instead of one `driftdb.events` row each:
//! the commit numbers them in key order and cuts them into packs of about `pack_bytes` (11 kB). Each
//! pack row carries its seq, its first event's ord, its event count and its lowest and highest
//! key; `packs_key (table_id, seq, key_lo)` finds the one pack of a transaction that can hold a
//! key. TRUNCATE and schema events, moved-key markers and tables without identity stay in
//! `driftdb.events`.
//!
//! Readers see packed events exactly as if they were event rows: `segments::for_each_event`
//! merges them in (seq, ord) order, key lookups (`reader::key_rows_desc`) merge them newest
//! first with `events_key`, key ranges add the packs overlapping the range, and compaction,
//! purge, erasure and DROP TABLE move or remove them like event rows.
use driftdb_core::{BuiltPack, NewEntry, Pack, PackBuilder};
use pgrx::prelude::*;
use pgrx::{pg_sys, GucContext, GucFlags, GucRegistry, GucSetting};

use super::catalog::{self, BatchWriter, Catalog, Order};

/// `driftdb.pack_min_events`: a transaction's row events of one table that make it store them
/// as packs (0: never).
pub static MIN_EVENTS: GucSetting<i32> = GucSetting::<i32>::new(1000);

/// Target size of a pack's entries before compression, per byte of the packs table's
/// `toast_tuple_target` (the size PostgreSQL compresses a row down to before it moves values out
/// of line, into TOAST): lz4 shrinks a pack of MessagePack frames by more than this ratio
/// (1.56–1.73 measured on the benchmark tables), so a pack stays inline.
///
/// `driftdb.packs` is created with `toast_tuple_target = 8160`, the most a page takes: packs
/// of about 11 kB, one per page once compressed. At PostgreSQL's default target (2032 bytes, a
/// `driftdb.packs` created by an earlier build) packs are about 2.8 kB, four to a page. Fewer,
/// larger packs mean fewer rows, index entries and WAL records for the same events: a 1M-row
/// COPY's commit took 11% less time with 11 kB packs than with 2.8 kB ones, and an AS OF
/// lookup in packed history took the same time (session 10, docs/architecture.md).
const RAW_PER_TARGET: (usize, usize) = (11, 8);

/// PostgreSQL's `TOAST_TUPLE_TARGET` with 8 kB pages (heaptoast.h: a quarter page, less headers).
const DEFAULT_TOAST_TARGET: usize = 2032;

/// The raw pack size for a packs table that compresses rows down to `toast_target` bytes.
pub fn pack_bytes(toast_target: usize) -> usize {
    toast_target * RAW_PER_TARGET.0 / RAW_PER_TARGET.1
}

pub fn init() {
    GucRegistry::define_int_guc(
        c"driftdb.pack_min_events",
        c"A transaction that changes at least this many rows of one driftdb table stores their history as packs.",
        c"Packs hold a few kilobytes of events each instead of one events row per change; 0 stores every change as its own row.",
        &MIN_EVENTS,
        0,
        i32::MAX,
        GucContext::Userset,
        GucFlags::default(),
    );
}

/// Whether a table's row events in one transaction go into packs.
pub fn wanted(nevents: usize) -> bool {
    let min = MIN_EVENTS.get();
    min > 0 && nevents >= min as usize
}

/// One `driftdb.packs` row as read.
pub struct PackRow {
    pub table_id: i32,
    pub seq: i64,
    pub key_lo: Vec<u8>,
    pub key_hi: Vec<u8>,
    pub data: Vec<u8>,
    pub tid: pg_sys::ItemPointerData,
}

impl PackRow {
    /// The checked pack; a damaged one, or one whose header names another transaction or
    /// table than its row (its frames are rebuilt from the header), is reported as corrupted
    /// history.
    pub fn pack(&self) -> Pack<'_> {
        let p = Pack::parse(&self.data).unwrap_or_else(|e| crate::timetravel::reader::corrupted(format!("event pack of seq {}: {e}", self.seq)));
        if let Some((seq, _, table_id)) = p.commit_fields() {
            if (seq, table_id) != (self.seq as u64, self.table_id as u32) {
                crate::timetravel::reader::corrupted(format!(
                    "event pack of seq {} (table id {}) says it holds seq {seq} of table id {table_id}",
                    self.seq, self.table_id
                ));
            }
        }
        p
    }
}

/// A bytea column's bytes, copied (empty if NULL).
///
/// # Safety
/// `tup` must be a valid tuple of `rel`, column `n` a bytea; the detoasted copy is made in the
/// current memory context.
unsafe fn bytes_of(tup: pg_sys::HeapTuple, rel: pg_sys::Relation, n: i32) -> Vec<u8> {
    catalog::attr(tup, rel, n).map_or_else(Vec::new, |d| {
        let v = pg_sys::pg_detoast_datum_packed(d.cast_mut_ptr());
        std::slice::from_raw_parts(pgrx::vardata_any(v) as *const u8, pgrx::varsize_any_exhdr(v)).to_vec()
    })
}

/// Columns: table_id 1, seq 2, ord 3, nevents 4, nversions 5, key_lo 6, key_hi 7, data 8.
///
/// # Safety
/// `tup` must be a valid `driftdb.packs` tuple of the open relation `rel`.
unsafe fn row_of(tup: pg_sys::HeapTuple, rel: pg_sys::Relation, with_data: bool) -> PackRow {
    PackRow {
        table_id: catalog::attr(tup, rel, 1).map_or(0, |d| d.value() as i32),
        seq: catalog::attr(tup, rel, 2).map_or(0, |d| d.value() as i64),
        key_lo: bytes_of(tup, rel, 6),
        key_hi: bytes_of(tup, rel, 7),
        data: if with_data { bytes_of(tup, rel, 8) } else { Vec::new() },
        tid: (*tup).t_self,
    }
}

fn eq_table(table_id: i32) -> (i16, u16, u32, pg_sys::Datum) {
    (1, pg_sys::BTEqualStrategyNumber as u16, pg_sys::F_INT4EQ, pg_sys::Datum::from(table_id))
}

fn seq_key(strategy: u32, proc_: u32, seq: i64) -> (i16, u16, u32, pg_sys::Datum) {
    (2, strategy as u16, proc_, pg_sys::Datum::from(seq))
}

/// The packs' seqs of the table in `(lo, hi]`, ascending: a skip scan, one index descent per
/// bulk transaction.
pub fn seqs(cat: &Catalog, table_id: i32, lo: i64, hi: i64, snapshot: pg_sys::Snapshot) -> Vec<i64> {
    let mut out = Vec::new();
    let mut after = lo;
    while after < hi {
        let keys = [eq_table(table_id), seq_key(pg_sys::BTGreaterStrategyNumber, pg_sys::F_INT8GT, after), seq_key(pg_sys::BTLessEqualStrategyNumber, pg_sys::F_INT8LE, hi)];
        let mut found = None;
        // SAFETY: catalog-style read of driftdb.packs (seq only).
        unsafe {
            catalog::scan(cat.packs, cat.packs_pkey, &keys, snapshot, Order::Forward, pg_sys::AccessShareLock, |tup, rel| {
                found = catalog::attr(tup, rel, 2).map(|d| d.value() as i64);
                false
            });
        }
        match found {
            Some(s) => {
                out.push(s);
                after = s;
            }
            None => break,
        }
    }
    out
}

/// The newest seq in `(floor, hi]` with packs of the table.
fn newest_seq(cat: &Catalog, table_id: i32, floor: i64, hi: i64) -> Option<i64> {
    let keys = [eq_table(table_id), seq_key(pg_sys::BTGreaterStrategyNumber, pg_sys::F_INT8GT, floor), seq_key(pg_sys::BTLessEqualStrategyNumber, pg_sys::F_INT8LE, hi)];
    let mut found = None;
    // SAFETY: catalog-style read of driftdb.packs (seq only).
    unsafe {
        catalog::scan(cat.packs, cat.packs_pkey, &keys, catalog::snapshot_self(), Order::Backward, pg_sys::AccessShareLock, |tup, rel| {
            found = catalog::attr(tup, rel, 2).map(|d| d.value() as i64);
            false
        });
    }
    found
}

/// Every pack of transaction `seq` of the table, in ord (= key) order: `f(pack)` until false.
pub fn for_seq(cat: &Catalog, table_id: i32, seq: i64, snapshot: pg_sys::Snapshot, lockmode: u32, mut f: impl FnMut(PackRow) -> bool) -> bool {
    let keys = [eq_table(table_id), seq_key(pg_sys::BTEqualStrategyNumber, pg_sys::F_INT8EQ, seq)];
    let mut go = true;
    let mut tmp = pgrx::PgMemoryContexts::new("driftdb pack read");
    // SAFETY: catalog-style read of driftdb.packs; detoasted bytes are copied out of the
    // per-row context before it is reset.
    unsafe {
        catalog::scan(cat.packs, cat.packs_pkey, &keys, snapshot, Order::Forward, lockmode, |tup, rel| {
            let row = tmp.switch_to(|_| row_of(tup, rel, true));
            tmp.reset();
            go = f(row);
            go
        });
    }
    go
}

/// The packs of transaction `seq` whose key range may meet `[lo, hi]`, highest first: the
/// packs with `key_lo <= hi`, down to the first whose `key_hi < lo` (a transaction's packs
/// hold disjoint, ascending key ranges).
fn overlapping(cat: &Catalog, table_id: i32, seq: i64, lo: &[u8], hi: &[u8], mut f: impl FnMut(PackRow) -> bool) {
    let mut tmp = pgrx::PgMemoryContexts::new("driftdb pack read");
    // SAFETY: catalog-style read of driftdb.packs through packs_key; the bound is a bytea built
    // in the current context that outlives the scan.
    unsafe {
        let hd = hi.into_datum().unwrap();
        let keys = [
            eq_table(table_id),
            seq_key(pg_sys::BTEqualStrategyNumber, pg_sys::F_INT8EQ, seq),
            (6, pg_sys::BTLessEqualStrategyNumber as u16, pg_sys::F_BYTEALE, hd),
        ];
        catalog::scan(cat.packs, cat.packs_key, &keys, catalog::snapshot_self(), Order::Backward, pg_sys::AccessShareLock, |tup, rel| {
            let row = tmp.switch_to(|_| row_of(tup, rel, true));
            tmp.reset();
            if row.key_hi.as_slice() < lo {
                return false;
            }
            f(row)
        });
    }
}

thread_local! {
    /// Per (packs table OID, table id): a settled seq at or below which the table has no packs.
    /// Packs at or below a settled seq never appear later (every transaction with such a seq has
    /// ended; compaction and purges only remove or rewrite existing packs), so the fact, once
    /// read, holds for good: key lookups at such bounds skip the probe of `driftdb.packs`.
    static NONE_UPTO: std::cell::RefCell<std::collections::HashMap<(pg_sys::Oid, i32), i64>> = Default::default();
}

/// Whether the table is known to have no packs at or below settled seq `hi`.
fn known_none(cat: &Catalog, table_id: i32, hi: i64) -> bool {
    NONE_UPTO.with(|m| m.borrow().get(&(cat.packs, table_id)).is_some_and(|&upto| hi <= upto))
}

/// Probe whether the table has packs at or below settled seq `hi`: the newest such seq, and
/// if there is none, remember it.
fn newest_settled(cat: &Catalog, table_id: i32, hi: i64) -> Option<i64> {
    if known_none(cat, table_id, hi) {
        return None;
    }
    let s = newest_seq(cat, table_id, i64::MIN, hi);
    if s.is_none() && hi < i64::MAX {
        NONE_UPTO.with(|m| {
            let mut m = m.borrow_mut();
            let e = m.entry((cat.packs, table_id)).or_insert(hi);
            *e = (*e).max(hi);
        });
    }
    s
}

/// A key's packed events, newest transaction first, found lazily: `take_above(floor)` gives
/// the newest not yet taken with seq > floor. Each bulk transaction costs one or two index
/// descents, and only those newer than the caller's floor are looked at.
pub struct KeyCursor {
    table_id: i32,
    key: Vec<u8>,
    /// Seqs above this have been searched.
    next_hi: i64,
    /// Whether the table's newest pack seq at or below the (settled) bound was looked up.
    probed: bool,
    hit: Option<(i64, Vec<(i32, u8, Vec<u8>)>)>,
}

impl KeyCursor {
    /// The key's packed events with seq ≤ `hi`, a settled seq.
    pub fn new(table_id: i32, key: &[u8], hi: i64) -> KeyCursor {
        KeyCursor { table_id, key: key.to_vec(), next_hi: hi, probed: false, hit: None }
    }

    /// (seq, [(ord, op, frame)]) of the newest remaining transaction above `floor` with packed
    /// events of the key.
    pub fn take_above(&mut self, cat: &Catalog, floor: i64) -> Option<(i64, Vec<(i32, u8, Vec<u8>)>)> {
        loop {
            if let Some((s, _)) = &self.hit {
                return if *s > floor { self.hit.take() } else { None };
            }
            if self.next_hi <= floor {
                return None;
            }
            let first = !self.probed;
            let found = if first {
                // most tables have no packs at all: one probe (or none, once known) settles it
                self.probed = true;
                newest_settled(cat, self.table_id, self.next_hi)
            } else {
                newest_seq(cat, self.table_id, floor, self.next_hi)
            };
            let s = match found {
                None => {
                    // none at all below the bound (first probe), or none above the floor
                    self.next_hi = if first { i64::MIN } else { floor.min(self.next_hi) };
                    return None;
                }
                Some(s) if s <= floor => {
                    self.next_hi = s; // s itself is still to be looked at
                    return None;
                }
                Some(s) => s,
            };
            self.next_hi = s - 1;
            let mut entries = Vec::new();
            let key = &self.key;
            overlapping(cat, self.table_id, s, key, key, |row| {
                let p = row.pack();
                entries.extend(p.find(key).map(|e| (e.ord, e.op, e.frame().into_owned())));
                false // at most one pack of a transaction can hold the key
            });
            if !entries.is_empty() {
                self.hit = Some((s, entries));
            }
        }
    }
}

/// Packed events with `lo <= key <= hi` and `seq <= hi_seq` (a settled seq):
/// `f(key, seq, op, frame)`, in no particular order.
pub fn range(cat: &Catalog, table_id: i32, lo: &[u8], hi: &[u8], hi_seq: i64, mut f: impl FnMut(&[u8], i64, u8, &[u8])) {
    if newest_settled(cat, table_id, hi_seq).is_none() {
        return;
    }
    for s in seqs(cat, table_id, i64::MIN, hi_seq, catalog::snapshot_self()) {
        overlapping(cat, table_id, s, lo, hi, |row| {
            let p = row.pack();
            for e in p.range(lo, hi) {
                f(e.key, s, e.op, &e.frame());
            }
            true
        });
    }
}

/// Packed events of the table with `lo < seq <= hi`, counted up to `limit`.
pub fn count(cat: &Catalog, table_id: i32, lo: i64, hi: i64, limit: usize) -> usize {
    let keys = [eq_table(table_id), seq_key(pg_sys::BTGreaterStrategyNumber, pg_sys::F_INT8GT, lo), seq_key(pg_sys::BTLessEqualStrategyNumber, pg_sys::F_INT8LE, hi)];
    let mut n = 0usize;
    // SAFETY: catalog-style read of driftdb.packs (nevents only: the data is not detoasted).
    unsafe {
        catalog::scan(cat.packs, cat.packs_pkey, &keys, catalog::snapshot_self(), Order::Forward, pg_sys::AccessShareLock, |tup, rel| {
            n += catalog::attr(tup, rel, 4).map_or(0, |d| d.value() as i32 as usize);
            n < limit
        });
    }
    n
}

/// Delete pack rows by TID (found by a scan of this transaction, which has moved past them).
pub fn delete(cat: &Catalog, tids: &mut [pg_sys::ItemPointerData]) {
    if tids.is_empty() {
        return;
    }
    // SAFETY: deleting driftdb.packs rows by TID in this transaction.
    unsafe {
        let rel = pg_sys::table_open(cat.packs, pg_sys::RowExclusiveLock as i32);
        for t in tids.iter_mut() {
            pg_sys::simple_heap_delete(rel, t);
        }
        pg_sys::table_close(rel, pg_sys::NoLock as i32);
    }
}

/// Writes packs: entries pushed in (key, ord) order per (table, seq).
pub struct PackWriter {
    w: BatchWriter,
    b: PackBuilder,
    table_id: i32,
    seq: i64,
    /// `data` is lz4-compressed: packs are compressed here, ahead of TOAST (`precompress`).
    lz4: bool,
}

impl PackWriter {
    /// `events`: about how many events will be pushed (chooses batched or direct inserts).
    pub fn open(cat: &Catalog, events: usize) -> PackWriter {
        let w = BatchWriter::open(cat.packs, events / 16 + 1);
        // SAFETY: the writer's relation is open; rd_options is null or the relation's parsed
        // StdRdOptions (RelationGetToastTupleTarget in rel.h)
        let target = unsafe {
            let opts = (*w.rel()).rd_options as *const pg_sys::StdRdOptions;
            if opts.is_null() { DEFAULT_TOAST_TARGET } else { (*opts).toast_tuple_target as usize }
        };
        // SAFETY: the writer's relation is open and is driftdb.packs, whose column 8 is data
        let lz4 = unsafe { super::precompress::column_is_lz4(w.rel(), 8) };
        PackWriter { w, b: PackBuilder::new(pack_bytes(target)), table_id: 0, seq: 0, lz4 }
    }

    /// Start the packs of table `table_id` in transaction `seq`, committed at `committed_at`
    /// (ending the previous ones).
    pub fn start(&mut self, table_id: i32, seq: i64, committed_at: i64) {
        if let Some(p) = self.b.start(seq as u64, committed_at, table_id as u32) {
            self.write(p);
        }
        self.table_id = table_id;
        self.seq = seq;
    }

    /// Add an event: its ord, op code, key and frame tail (`encode_event_tail`).
    pub fn push(&mut self, ord: i32, op: u8, key: &[u8], tail: &[u8]) {
        let built = self.b.push(NewEntry { ord, op, key, tail });
        self.written(built);
    }

    /// Add an insert event, its tail written straight into the pack from the key and the row
    /// (`PackBuilder::push_insert`; `filed`: the key as filed). False, and nothing written,
    /// when its key does not ascend above the last one pushed.
    pub fn push_insert(&mut self, ord: i32, filed: &[u8], key: &[u8], row: &[u8]) -> bool {
        match self.b.push_insert(ord, filed, key, row) {
            Err(driftdb_core::PackError::Order(_)) => false,
            built => {
                self.written(built);
                true
            }
        }
    }

    /// Add an event given as its whole frame (rewriting a pack).
    fn push_frame(&mut self, ord: i32, op: u8, key: &[u8], frame: &[u8]) {
        let built = self.b.push_frame(ord, op, key, frame);
        self.written(built);
    }

    fn written(&mut self, built: Result<Option<BuiltPack>, driftdb_core::PackError>) {
        let built = built.unwrap_or_else(|e| match e {
            // only a rewrite passes whole frames: one that does not take apart was damaged
            driftdb_core::PackError::Frame(_) => crate::timetravel::reader::corrupted(format!("a frame in an event pack of seq {}: {e}", self.seq)),
            _ => crate::error::DriftError::new(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("driftdb could not pack the history of seq {}: {e}", self.seq))
                .hint("This is a driftdb bug; the transaction was aborted and nothing was recorded.")
                .raise(),
        });
        if let Some(p) = built {
            self.write(p);
        }
    }

    pub fn finish(mut self) {
        if let Some(p) = self.b.finish() {
            self.write(p);
        }
        let PackWriter { w, .. } = self;
        w.finish();
    }

    fn write(&mut self, p: BuiltPack) {
        // SAFETY: datums built in the writer's batch context (copied into the tuple and freed
        // with the batch), for driftdb.packs' 8 columns in table order (sql/bootstrap.sql).
        unsafe {
            let old = pg_sys::MemoryContextSwitchTo(self.w.context());
            let data = if self.lz4 { super::precompress::lz4_varlena(&p.data) } else { None };
            let mut values = [
                self.table_id.into_datum().unwrap(),
                self.seq.into_datum().unwrap(),
                p.first_ord.into_datum().unwrap(),
                p.count.into_datum().unwrap(),
                p.versions.into_datum().unwrap(),
                p.key_lo.as_slice().into_datum().unwrap(),
                p.key_hi.as_slice().into_datum().unwrap(),
                data.unwrap_or_else(|| p.data.as_slice().into_datum().unwrap()),
            ];
            pg_sys::MemoryContextSwitchTo(old);
            self.w.push(&mut values, &mut [false; 8]);
        }
    }
}

/// Rewrite the packs of the table with `lo < seq <= hi` without the events `drop` selects (by
/// seq, ord, op, key); returns how many events went. A pack that loses events is deleted and
/// its remaining events, if any, are written as a new pack of the same transaction.
pub fn remove(cat: &Catalog, table_id: i32, lo: i64, hi: i64, drop: &dyn Fn(i64, i32, u8, Option<&[u8]>) -> bool) -> i64 {
    let mut removed = 0i64;
    let mut gone = Vec::new();
    let mut rewrite: Vec<(i64, Vec<(i32, u8, Vec<u8>, Vec<u8>)>)> = Vec::new();
    for s in seqs(cat, table_id, lo, hi, catalog::snapshot_self()) {
        for_seq(cat, table_id, s, catalog::snapshot_self(), pg_sys::RowExclusiveLock, |row| {
            let p = row.pack();
            let keep: Vec<_> = p.entries().filter(|e| !drop(s, e.ord, e.op, Some(e.key))).map(|e| (e.ord, e.op, e.key.to_vec(), e.frame().into_owned())).collect();
            if keep.len() < p.len() {
                removed += (p.len() - keep.len()) as i64;
                gone.push(row.tid);
                if !keep.is_empty() {
                    rewrite.push((s, keep));
                }
            }
            true
        });
    }
    delete(cat, &mut gone);
    if !rewrite.is_empty() {
        let mut w = PackWriter::open(cat, rewrite.iter().map(|r| r.1.len()).sum());
        w.b = PackBuilder::new(usize::MAX);
        for (s, keep) in rewrite {
            // one new pack per old one: the kept entries stay in their key range; written in
            // the current format whatever the old one's (the frames carry the commit time)
            let committed_at = keep.first().and_then(|e| driftdb_core::split_frame(&e.3).ok()).map_or(0, |f| f.committed_at);
            w.start(table_id, s, committed_at);
            for (ord, op, key, frame) in &keep {
                w.push_frame(*ord, *op, key, frame);
            }
        }
        w.finish();
    }
    removed
}
