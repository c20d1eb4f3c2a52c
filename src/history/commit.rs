//! Commit stamping: at `XACT_EVENT_PRE_COMMIT` the transaction's net changes become events.
//!
//! 1. Drain the change buffer: one `(orig, cur)` lineage per touched row.
//! 2. Read both row versions from the heap by TID (SnapshotAny: the old version is deleted by
//!    this very transaction, so nothing can have pruned it) and encode them.
//! 3. Net effect: insert, update (skipped when nothing changed), delete; TRUNCATE first.
//! 4. Nothing left → no seq, nothing written. Otherwise take the seq and commit timestamp
//!    (below) and write the frames into `driftdb.events` (a bulk table's into `driftdb.packs`)
//!    and one row into `driftdb.commits`.
//!
//! A one-table bulk load of inserts (`stream_bulk_load`) takes the seq first instead, since its
//! events are known to be one insert per row, and streams the rows into packs as it reads them
//! while their keys ascend; when they stop ascending it falls back to the steps above.
//!
//! Seq and timestamp (decision record D4): under a short exclusive lock (the *allocation
//! lock*) the transaction draws `nextval(driftdb.commit_seq)` and reads the clock, then takes
//! a *seq lock* on its own seq, held until the transaction has fully ended (PostgreSQL releases
//! locks after the commit is visible), and releases the allocation lock. Seqs and timestamps
//! are therefore assigned in the same order; commits are not serialized (group commit and
//! fsync overlap as usual). A reader that needs every seq ≤ N settled (AS OF N) waits on the
//! seq locks of the gaps it sees.
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasherDefault;
use std::rc::Rc;
use std::ffi::{c_void, CStr};

use driftdb_core::net::{fold_keyed, EventKeys, FxHasher};
use driftdb_core::frame::{encode_event_tail, encode_frame_from_tail, encode_row_event_tail, long_key_digest};
use driftdb_core::{Endpoint, Event, Op, Row, TableChanges, Value};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgMemoryContexts;

use super::capture::{notes_end_sub, unpack_tid, SCHEMA_NOTES, TXBUF};
use super::catalog::{self, nextval, BatchWriter, Catalog, Order, Writer};
use super::packs::{self, PackWriter};
use super::codec;
use super::identity::{self, Identity};
use crate::error::DriftError;

pub fn register_callbacks() {
    // SAFETY: registering process-lifetime callbacks from _PG_init (postmaster, preload).
    unsafe {
        pg_sys::RegisterXactCallback(Some(xact_callback), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(subxact_callback), std::ptr::null_mut());
        pg_sys::CacheRegisterSyscacheCallback(pg_sys::SysCacheIdentifier::AUTHOID as i32, Some(roles_changed), pg_sys::Datum::from(0usize));
        pg_sys::CacheRegisterRelcacheCallback(Some(relcache_callback), pg_sys::Datum::from(0usize));
    }
}

thread_local! {
    /// Set when the change buffer's subtransaction bookkeeping went wrong: the transaction
    /// must not commit history it cannot vouch for.
    static POISONED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// relid → table_id of registrations this backend has seen. An entry is dropped when the
    /// relation's relcache entry is invalidated (DROP TABLE, so a reused OID never maps to an
    /// old id); entries made by the current transaction are dropped if it aborts.
    static TABLE_IDS: std::cell::RefCell<HashMap<pg_sys::Oid, (i32, bool)>> = std::cell::RefCell::new(HashMap::new());
    /// relid → what encoding its changes needs (`shape`); dropped with its relcache entry.
    static SHAPES: std::cell::RefCell<HashMap<pg_sys::Oid, Rc<Shape>>> = std::cell::RefCell::new(HashMap::new());
    /// The buffers `Pending::push_direct` encodes with, kept from one commit to the next.
    static DIRECT: std::cell::Cell<Option<Box<DirectScratch>>> = const { std::cell::Cell::new(None) };
    /// The memory the pre-commit works in (`flush_context`).
    static FLUSH_CXT: std::cell::Cell<pg_sys::MemoryContext> = const { std::cell::Cell::new(std::ptr::null_mut()) };
}

/// The pre-commit's memory context: a child of TopMemoryContext made on the first commit that
/// writes history and kept for the backend's life, reset after every flush (and after an
/// aborted one). Its first 64 kB block survives the resets, so a small transaction's history
/// write allocates no new memory at all.
fn flush_context() -> pg_sys::MemoryContext {
    FLUSH_CXT.with(|c| {
        if c.get().is_null() {
            // SAFETY: creates a context under TopMemoryContext, which lives as long as the
            // backend; it is never deleted, only reset.
            let cxt = unsafe {
                pg_sys::AllocSetContextCreateExtended(
                    pg_sys::TopMemoryContext,
                    c"driftdb pre-commit".as_ptr(),
                    64 * 1024,
                    64 * 1024,
                    pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
                )
            };
            c.set(cxt);
        }
        c.get()
    })
}

/// While alive, the current memory context is the pre-commit's (`flush_context`): everything
/// PostgreSQL pallocs for the history write (tuples, slots, scan keys, index state) is garbage
/// once it is written, and there its pages stay mapped instead of being malloc'ed (and
/// page-faulted in) by the transaction context on every commit. Dropped, it makes the previous
/// context current again and resets the pre-commit's; while an ERROR unwinds it leaves both to
/// the abort (which resets the context in `xact_callback`).
struct FlushMemory {
    old: pg_sys::MemoryContext,
}

impl FlushMemory {
    fn enter() -> FlushMemory {
        // SAFETY: switches to a valid context that lives as long as the backend.
        FlushMemory { old: unsafe { pg_sys::MemoryContextSwitchTo(flush_context()) } }
    }
}

impl Drop for FlushMemory {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        // SAFETY: `old` was current when this guard was made and outlives the flush; nothing
        // allocated in the pre-commit's context is used after the flush (the locals that own
        // its children were dropped before this guard).
        unsafe {
            pg_sys::MemoryContextSwitchTo(self.old);
            pg_sys::MemoryContextReset(flush_context());
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn relcache_callback(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    TABLE_IDS.with(|c| crate::timetravel::reader::forget_in(&mut c.borrow_mut(), relid));
    SHAPES.with(|c| crate::timetravel::reader::forget_in(&mut c.borrow_mut(), relid));
}

/// What the commit needs to know about a table to encode its changes, looked up on its first
/// change and kept until its relcache entry is invalidated (ALTER TABLE, REPLICA IDENTITY and
/// index changes all send an invalidation), so that a small transaction does not look up its
/// identity and its columns' types again.
struct Shape {
    ident: Identity,
    columns: codec::ColumnKinds,
    /// Lineages whose ends are stored versions are encoded straight from the tuples
    /// (`Pending::push_direct`) with these key columns (Some(None): no identity), unless a key
    /// column needs `encode_key`'s canonical NaN (None).
    direct_key: Option<Option<Vec<u16>>>,
    /// ... updates too, unless a float could make unequal bytes of equal rows.
    updates_direct: bool,
}

/// The shape of open relation `rel`.
///
/// # Safety
/// `rel` must be a valid open relation.
unsafe fn shape(rel: pg_sys::Relation) -> Rc<Shape> {
    let relid = (*rel).rd_id;
    if let Some(s) = SHAPES.with(|c| c.borrow().get(&relid).cloned()) {
        return s;
    }
    let ident = identity::of(rel);
    let columns = codec::ColumnKinds::of((*rel).rd_att);
    let direct_key = match &ident {
        Identity::Key(attnums) if columns.key_copyable(attnums) => Some(Some(attnums.clone())),
        Identity::None => Some(None),
        _ => None,
    };
    let updates_direct = direct_key.is_some() && columns.rows_bytewise();
    let s = Rc::new(Shape { ident, columns, direct_key, updates_direct });
    SHAPES.with(|c| c.borrow_mut().insert(relid, s.clone()));
    s
}

/// Transaction end: keep registrations that committed, forget ones that did not.
fn settle_table_ids(committed: bool) {
    TABLE_IDS.with(|c| {
        let mut c = c.borrow_mut();
        if committed {
            c.values_mut().for_each(|e| e.1 = true);
        } else {
            c.retain(|_, e| e.1);
        }
    });
}

fn reset() {
    TXBUF.with(|b| b.borrow_mut().clear());
    SCHEMA_NOTES.with(|n| n.borrow_mut().clear());
    POISONED.with(|p| p.set(false));
}

#[pg_guard]
unsafe extern "C-unwind" fn xact_callback(event: pg_sys::XactEvent::Type, _arg: *mut c_void) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_PRE_COMMIT | XACT_EVENT_PARALLEL_PRE_COMMIT => flush(),
        XACT_EVENT_PRE_PREPARE => {
            if super::capture::pending() {
                DriftError::new(
                    PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                    "cannot PREPARE a transaction that changed driftdb tables",
                )
                .detail("driftdb stamps history at commit; COMMIT PREPARED offers no point to do that.")
                .hint("Commit the transaction directly, or keep driftdb writes out of two-phase transactions.")
                .raise();
            }
        }
        XACT_EVENT_COMMIT | XACT_EVENT_PARALLEL_COMMIT | XACT_EVENT_PREPARE => {
            settle_table_ids(true);
            reset()
        }
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT => {
            settle_table_ids(false);
            let cxt = FLUSH_CXT.with(|c| c.get());
            if !cxt.is_null() {
                // a flush that raised an ERROR left its garbage here
                pg_sys::MemoryContextReset(cxt);
            }
            crate::hooks::utility::reset();
            reset()
        }
        _ => {}
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn subxact_callback(
    event: pg_sys::SubXactEvent::Type,
    _my: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut c_void,
) {
    use pg_sys::SubXactEvent::*;
    let result = TXBUF.with(|b| {
        let mut b = b.borrow_mut();
        match event {
            SUBXACT_EVENT_START_SUB => {
                b.begin_sub();
                Ok(())
            }
            SUBXACT_EVENT_COMMIT_SUB => b.commit_sub(),
            SUBXACT_EVENT_ABORT_SUB => b.abort_sub(),
            _ => Ok(()),
        }
    });
    match event {
        SUBXACT_EVENT_COMMIT_SUB => notes_end_sub(pg_sys::GetCurrentTransactionNestLevel(), true),
        SUBXACT_EVENT_ABORT_SUB => notes_end_sub(pg_sys::GetCurrentTransactionNestLevel(), false),
        _ => {}
    }
    if let Err(e) = result {
        // never raise from (sub)abort processing; refuse the commit instead
        POISONED.with(|p| p.set(true));
        pgrx::warning!("driftdb: change buffer lost track of subtransactions: {e}");
    }
}

/// One change ready to be written, encoded as far as it can be before the transaction's seq
/// is drawn: its op, its encoded keys (the `key` column, and the marker row's key of an update
/// that moved the row) and the frame's tail (`encode_event_tail`: everything but seq, time,
/// table id and op), contiguous in `Pending::bytes`. Only these bytes are kept, not the row
/// images: a bulk load's history waits for its seq in about the size of its frames, in one
/// buffer rather than millions of small allocations, and each change's entry takes 24 bytes
/// (a 1M-row commit writes, sorts and frees 24 MB of them, not the 72 MB that three ranges
/// took).
#[derive(Debug, PartialEq)]
struct Encoded {
    /// Where the change's bytes start: its key, the marker's key, then the tail, contiguous.
    start: u64,
    /// The lengths of the key and the marker's key (`NONE`: none), and of the tail.
    key_len: u32,
    old_key_len: u32,
    tail_len: u32,
    op: Op,
}

const _: () = assert!(std::mem::size_of::<Encoded>() == 24);

impl Encoded {
    /// No key (`key_len`, `old_key_len`).
    const NONE: u32 = u32::MAX;

    /// A change whose bytes start at `start`: keys of these lengths, then a tail ending at `end`.
    fn new(op: Op, start: usize, key_len: Option<usize>, old_key_len: Option<usize>, end: usize) -> Encoded {
        // keys are filed in at most LONG_KEY_BYTES; a tail is one frame's, which a bytea
        // holds, under 1 GB
        let len = |n: Option<usize>| n.map_or(Self::NONE, |n| u32::try_from(n).expect("driftdb: key length"));
        let keys = key_len.unwrap_or(0) + old_key_len.unwrap_or(0);
        let tail_len = u32::try_from(end - start - keys).expect("driftdb: an event's frame exceeds 4 GB");
        Encoded { start: start as u64, key_len: len(key_len), old_key_len: len(old_key_len), tail_len, op }
    }

    /// The bytes a key of this length takes (none: 0).
    fn key_bytes(n: u32) -> usize {
        if n == Self::NONE { 0 } else { n as usize }
    }

    fn key(&self) -> Option<std::ops::Range<usize>> {
        let s = self.start as usize;
        (self.key_len != Self::NONE).then(|| s..s + self.key_len as usize)
    }

    fn old_key(&self) -> Option<std::ops::Range<usize>> {
        let s = self.start as usize + Self::key_bytes(self.key_len);
        (self.old_key_len != Self::NONE).then(|| s..s + self.old_key_len as usize)
    }

    fn tail(&self) -> std::ops::Range<usize> {
        let s = self.start as usize + Self::key_bytes(self.key_len) + Self::key_bytes(self.old_key_len);
        s..s + self.tail_len as usize
    }
}

/// The transaction's changes, and which table's changes end where (`runs`: (table, end), in
/// order; each table's changes are contiguous).
#[derive(Default)]
struct Pending {
    items: Vec<Encoded>,
    bytes: Vec<u8>,
    runs: Vec<(pg_sys::Oid, usize)>,
}

impl Pending {
    fn push(&mut self, event: &Event, keys: EventKeys) {
        let start = self.bytes.len();
        let key = keys.key.as_deref().map(|k| self.put(k).len());
        let old_key = keys.old_key.as_deref().map(|k| self.put(k).len());
        encode_event_tail(event, &mut self.bytes);
        self.items.push(Encoded::new(event.op, start, key, old_key, self.bytes.len()));
    }

    /// Append the bytes a key `write_key` encoded is filed under (`put_filed`); their range.
    fn put_key(&mut self, key: &[u8]) -> std::ops::Range<usize> {
        let start = self.bytes.len();
        put_filed(&mut self.bytes, key);
        start..self.bytes.len()
    }

    /// Append `b` to the bytes; its range.
    fn put(&mut self, b: &[u8]) -> std::ops::Range<usize> {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(b);
        start..self.bytes.len()
    }

    /// A lineage whose ends are stored row versions (`orig`: the version before the
    /// transaction, `cur`: the one at its end), encoded straight from the tuples into the
    /// bytes `lineage_event` + `push` make of it (a pg_test compares the two), without the rows'
    /// Values. `key_cols`: the identity columns (None: no identity); every one must be
    /// `ColumnKinds::key_copyable`, and for an update (both ends) the rows must be
    /// `ColumnKinds::rows_bytewise`, so that equal bytes mean equal rows. An update that changed
    /// nothing pushes nothing.
    ///
    /// # Safety
    /// As `VersionReader::read`; call in a memory context that is reset afterwards (detoasting
    /// allocates in it).
    unsafe fn push_direct(&mut self, versions: &mut VersionReader, orig: Option<u64>, cur: Option<u64>, key_cols: Option<&[u16]>, d: &mut DirectScratch) {
        let desc = (*versions.rel).rd_att;
        for (h, row, cols) in [(orig, &mut d.old, &mut d.old_cols), (cur, &mut d.new, &mut d.new_cols)] {
            if let Some(h) = h {
                let mut tuple = versions.fetch(h);
                row.clear();
                codec::write_tuple(desc, &mut tuple, row, cols);
            }
        }
        let op = match (orig, cur) {
            (None, Some(_)) => Op::Insert,
            (Some(_), Some(_)) if d.old == d.new => return, // an UPDATE that changed nothing
            (Some(_), Some(_)) => Op::Update,
            (Some(_), None) => Op::Delete,
            (None, None) => return,
        };
        // the key: the row's after the change, or before it for a delete; an update that
        // changed the key also carries the old one
        if let Some(attnums) = key_cols {
            let (row, cols) = if cur.is_some() { (&d.new, &d.new_cols) } else { (&d.old, &d.old_cols) };
            d.key.clear();
            write_key(&mut d.key, attnums, row, cols);
        }
        let key_moved = match (op, key_cols) {
            (Op::Update, Some(attnums)) => {
                d.old_key.clear();
                write_key(&mut d.old_key, attnums, &d.old, &d.old_cols);
                d.old_key != d.key
            }
            _ => false,
        };
        let key_bytes = key_cols.map(|_| &d.key[..]);
        let old_key_bytes = key_moved.then_some(&d.old_key[..]);
        // the frame carries the key's values; the index copies are filed as encode_key files
        // them (a long key under its digest)
        let start = self.bytes.len();
        let key = key_bytes.map(|k| self.put_key(k).len());
        let old_key = old_key_bytes.map(|k| self.put_key(k).len());
        let rows = (orig.map(|_| &d.old[..]), cur.map(|_| &d.new[..]));
        encode_row_event_tail([key_bytes, old_key_bytes, rows.0, rows.1], &mut self.bytes);
        self.items.push(Encoded::new(op, start, key, old_key, self.bytes.len()));
    }

    /// Forget the changes from item `n` on.
    fn truncate(&mut self, n: usize) {
        if let Some(it) = self.items.get(n) {
            self.bytes.truncate(it.start as usize);
        }
        self.items.truncate(n);
    }

    fn slice(&self, r: &Option<std::ops::Range<usize>>) -> Option<&[u8]> {
        r.as_ref().map(|r| &self.bytes[r.clone()])
    }
}

/// Buffers `Pending::push_direct` reuses from one lineage to the next, and (`DIRECT`) from one
/// commit to the next.
#[derive(Default)]
struct DirectScratch {
    old: Vec<u8>,
    new: Vec<u8>,
    old_cols: codec::TupleScratch,
    new_cols: codec::TupleScratch,
    key: Vec<u8>,
    old_key: Vec<u8>,
}

/// `DirectScratch` buffers larger than this are freed after the commit instead of kept.
const DIRECT_KEEP_BYTES: usize = 256 * 1024;

impl DirectScratch {
    /// Bytes its row and key buffers hold.
    fn capacity(&self) -> usize {
        self.old.capacity() + self.new.capacity() + self.key.capacity() + self.old_key.capacity()
    }
}

/// Append the bytes a key `write_key` encoded is filed under, as `encode_key` files it: the key
/// itself, or a long one's digest.
fn put_filed(out: &mut Vec<u8>, key: &[u8]) {
    match long_key_digest(key) {
        Some(digest) => out.extend_from_slice(&digest),
        None => out.extend_from_slice(key),
    }
}

/// Append the key of a row `codec::write_tuple` wrote (`row`, its columns in `cols`): the
/// MessagePack array of the key columns' values, as `encode_key` makes it of `Row::project`
/// (a column the row does not carry is nil).
/// `write_key` for many rows of one descriptor: `at` keeps where each key column was found
/// among the encoded columns (`TupleScratch::cols`, the same positions for every row of one
/// descriptor), so the columns are searched for once, not per row. A position that does not
/// hold its column (not the case, but cheap to check) is searched for again.
fn write_key_at(out: &mut Vec<u8>, attnums: &[u16], at: &mut Vec<Option<usize>>, row: &[u8], cols: &codec::TupleScratch) {
    if at.len() != attnums.len() {
        at.clear();
        at.extend(attnums.iter().map(|a| cols.cols.binary_search_by_key(a, |c| c.0).ok()));
    }
    rmp::encode::write_array_len(out, attnums.len() as u32).unwrap();
    for (a, slot) in attnums.iter().zip(at.iter_mut()) {
        let found = match *slot {
            Some(i) if cols.cols.get(i).is_some_and(|c| c.0 == *a) => Some(i),
            _ => {
                *slot = cols.cols.binary_search_by_key(a, |c| c.0).ok();
                *slot
            }
        };
        match found {
            Some(i) => out.extend_from_slice(&row[cols.cols[i].1..cols.cols[i].2]),
            None => rmp::encode::write_nil(out).unwrap(),
        }
    }
}

fn write_key(out: &mut Vec<u8>, attnums: &[u16], row: &[u8], cols: &codec::TupleScratch) {
    rmp::encode::write_array_len(out, attnums.len() as u32).unwrap();
    for a in attnums {
        match cols.cols.binary_search_by_key(a, |c| c.0) {
            Ok(i) => out.extend_from_slice(&row[cols.cols[i].1..cols.cols[i].2]),
            Err(_) => rmp::encode::write_nil(out).unwrap(),
        }
    }
}

fn event(op: Op, key: Option<Vec<Value>>, old: Option<Row>, new: Option<Row>) -> Event {
    let mut event = Event::new(0, 0, 0, op);
    event.key = key;
    event.old = old;
    event.new = new;
    event
}

/// Read a row version by TID, or take (a copy of) the image resolved earlier.
unsafe fn materialize(versions: &mut VersionReader, e: &Endpoint) -> Row {
    match e {
        Endpoint::Image(row) => (**row).clone(),
        Endpoint::Handle(h) => versions.read(*h),
    }
}

/// A transaction that changed at least this many rows of a table reads their versions back
/// through a ring of buffers (`VersionReader::for_versions`).
const RING_VERSIONS: usize = 1000;

/// Reads the row versions this transaction wrote or deleted in one relation, by TID, whatever
/// their visibility (as `heap_fetch` with SnapshotAny would). The last page read stays pinned:
/// a bulk transaction's versions come in TID order, dozens to a page, and an UPDATE's two
/// versions usually share one (HOT), so most reads skip the buffer lookup and pin. The page
/// is share-locked once per pin, to read how many line pointers it has, not once per row.
pub struct VersionReader {
    rel: pg_sys::Relation,
    /// Null: pages are read as any read reads them (see `for_versions`).
    strategy: pg_sys::BufferAccessStrategy,
    buf: pg_sys::Buffer,
    block: pg_sys::BlockNumber,
    /// The pinned page's line pointer count when it was last read under the lock (0: not yet).
    maxoff: pg_sys::OffsetNumber,
}

impl VersionReader {
    /// `rel` must be open for as long as the reader is used.
    pub fn new(rel: pg_sys::Relation) -> VersionReader {
        VersionReader { rel, buf: pg_sys::InvalidBuffer as pg_sys::Buffer, block: pg_sys::InvalidBlockNumber, maxoff: 0, strategy: std::ptr::null_mut() }
    }

    /// A reader for about `n` versions: from `RING_VERSIONS` on, pages missing from shared
    /// buffers are read into a small ring of buffers, as a large sequential scan reads them
    /// (`BAS_BULKREAD`), not into fresh ones. A bulk load's pages are mostly not in shared
    /// buffers any more at its commit (COPY writes through a ring of its own), and reading
    /// them all back into buffers not used before cost a page fault per page on top of the
    /// read (5% of a 1M-row COPY's commit).
    pub fn for_versions(rel: pg_sys::Relation, n: usize) -> VersionReader {
        let mut r = VersionReader::new(rel);
        if n >= RING_VERSIONS {
            // SAFETY: allocates the ring's descriptor in the current (pre-commit) context,
            // which outlives the reader; buffers read through it are released by the reader
            r.strategy = unsafe { pg_sys::GetAccessStrategy(pg_sys::BufferAccessStrategyType::BAS_BULKREAD) };
        }
        r
    }

    /// # Safety
    /// `rel` must be open; the version at `h` must still exist (this transaction wrote or
    /// deleted it, so no prune can have removed it).
    pub unsafe fn read(&mut self, h: u64) -> Row {
        let mut tuple = self.fetch(h);
        codec::row_from_heap_tuple((*self.rel).rd_att, &mut tuple)
    }

    /// The version at `h`, pinned (until the next fetch or the reader's drop) but not locked.
    ///
    /// # Safety
    /// As `read`.
    unsafe fn fetch(&mut self, h: u64) -> pg_sys::HeapTupleData {
        let rel = self.rel;
        let tid = unpack_tid(h);
        let block = (h >> 16) as pg_sys::BlockNumber;
        let offset = (h & 0xffff) as pg_sys::OffsetNumber;
        if self.buf == pg_sys::InvalidBuffer as pg_sys::Buffer || self.block != block {
            self.release();
            self.buf = pg_sys::ReadBufferExtended(rel, pg_sys::ForkNumber::MAIN_FORKNUM, block, pg_sys::ReadBufferMode::RBM_NORMAL, self.strategy);
            self.block = block;
            self.maxoff = 0;
        }
        let page = pg_sys::BufferGetPage(self.buf);
        if offset > self.maxoff {
            // The line pointer array grows (other backends add tuples to the page under an
            // exclusive lock), so its length is read under the share lock, as heap_fetch
            // holds it. It cannot shrink or change an entry in use while we hold the pin:
            // pruning, which truncates it or marks entries unused, takes a cleanup lock, which
            // waits for every pin.
            pg_sys::LockBuffer(self.buf, pg_sys::BUFFER_LOCK_SHARE as i32);
            self.maxoff = pg_sys::PageGetMaxOffsetNumber(page);
            pg_sys::LockBuffer(self.buf, pg_sys::BUFFER_LOCK_UNLOCK as i32);
        }
        // The entry of a version this transaction wrote or deleted is not written by anyone
        // while we hold the pin (see above), so it is read under the pin alone, as a page-at-a-
        // time scan reads the entries it collected (heapgettup_pagemode).
        let found = offset >= pg_sys::FirstOffsetNumber as u16 && offset <= self.maxoff;
        let item = if found { pg_sys::PageGetItemId(page, offset) } else { std::ptr::null_mut() };
        if item.is_null() || (*item).lp_flags() != pg_sys::LP_NORMAL {
            self.gone(h);
        }
        let mut tuple: pg_sys::HeapTupleData = std::mem::zeroed();
        tuple.t_data = pg_sys::PageGetItem(page, item) as pg_sys::HeapTupleHeader;
        tuple.t_len = (*item).lp_len();
        tuple.t_self = tid;
        tuple.t_tableOid = (*rel).rd_id;
        // decoded under the pin alone, as a scan reads a page's visible tuples
        tuple
    }

    fn release(&mut self) {
        if self.buf != pg_sys::InvalidBuffer as pg_sys::Buffer {
            // SAFETY: our own pin, taken in read and released once
            unsafe { pg_sys::ReleaseBuffer(self.buf) };
            self.buf = pg_sys::InvalidBuffer as pg_sys::Buffer;
        }
    }

    unsafe fn gone(&mut self, h: u64) -> ! {
        self.release();
        let name = pgrx::name_data_to_str(&(*(*self.rel).rd_rel).relname).to_string();
        DriftError::new(
            PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
            format!("driftdb: a row version of \"{name}\" changed by this transaction is gone (TID {h:#x})"),
        )
        .hint("This is a driftdb bug; the transaction was aborted and nothing was recorded.")
        .raise();
    }
}

impl Drop for VersionReader {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return; // an ERROR unwinding: the transaction's abort releases the pin
        }
        self.release();
    }
}

fn key_of(ident: &Identity, row: &Row) -> Option<Vec<Value>> {
    match ident {
        Identity::Key(attnums) => Some(row.project(attnums)),
        Identity::Full => Some(row.0.iter().map(|(_, v)| v.clone()).collect()),
        Identity::None => None,
    }
}

unsafe fn rel_exists(relid: pg_sys::Oid) -> bool {
    pg_sys::SearchSysCacheExists(
        pg_sys::SysCacheIdentifier::RELOID as i32,
        pg_sys::Datum::from(relid),
        pg_sys::Datum::from(0usize),
        pg_sys::Datum::from(0usize),
        pg_sys::Datum::from(0usize),
    )
}

/// Reset a per-row scratch context if a row left anything in it, as `MemoryContextReset` would
/// decide (an allocation since the last reset, or a child context): most rows leave nothing,
/// their values being read in place, and the check is two field reads where the reset is a
/// guarded call into the server per row.
///
/// # Safety
/// `scratch` must be a valid memory context that is not the current one.
unsafe fn reset_if_used(scratch: &mut PgMemoryContexts) {
    let cx = scratch.value();
    if !(*cx).isReset || !(*cx).firstchild.is_null() {
        scratch.reset();
    }
}

/// The event of one lineage, None if it nets to nothing.
unsafe fn lineage_event(
    versions: &mut VersionReader,
    ident: &Identity,
    orig: &Option<Endpoint>,
    cur: &Option<Endpoint>,
    scratch: &mut PgMemoryContexts,
) -> Option<Event> {
    let (old, new) = scratch.switch_to(|_| (orig.as_ref().map(|e| materialize(versions, e)), cur.as_ref().map(|e| materialize(versions, e))));
    reset_if_used(scratch);
    Some(match (old, new) {
        (None, Some(new)) => event(Op::Insert, key_of(ident, &new), None, Some(new)),
        (Some(old), None) => event(Op::Delete, key_of(ident, &old), Some(old), None),
        (Some(old), Some(new)) => {
            if old == new {
                return None; // an UPDATE that changed nothing adds no version
            }
            let key = key_of(ident, &new);
            let old_key = key_of(ident, &old).filter(|k| Some(k) != key.as_ref());
            let mut e = event(Op::Update, key, Some(old), Some(new));
            e.old_key = old_key;
            e
        }
        (None, None) => return None,
    })
}

/// Does any encoded key (or moved-from key) of items `from..` occur twice? Only then can
/// folding change anything (driftdb_core::net composes events of one key only).
fn keys_repeat(p: &Pending, from: usize) -> bool {
    let items = &p.items[from..];
    let mut seen: HashSet<&[u8], BuildHasherDefault<FxHasher>> = HashSet::with_capacity_and_hasher(items.len(), Default::default());
    items.iter().flat_map(|it| [p.slice(&it.key()), p.slice(&it.old_key())]).flatten().any(|k| !seen.insert(k))
}

/// Reduce one table's lineages to pending, encoded events.
unsafe fn table_events(
    tc: TableChanges,
    notes: Vec<driftdb_core::SchemaChange>,
    out: &mut Pending,
    scratch: &mut PgMemoryContexts,
) {
    let relid = pg_sys::Oid::from(tc.rel);
    // locked already by this transaction's writes; null if it dropped the table later
    let rel = pg_sys::try_table_open(relid, pg_sys::AccessShareLock as i32);
    if rel.is_null() {
        return; // no history to keep
    }
    let start = out.items.len();
    // schema changes first: a baseline's rows, and rows written after an ALTER, follow them
    for change in notes {
        let mut e = event(Op::Schema, None, None, None);
        e.schema = Some(change);
        out.push(&e, EventKeys::default());
    }
    let shape = shape(rel);
    let ident = &shape.ident;
    let mut versions = VersionReader::for_versions(rel, tc.lineages.len());
    if tc.truncated {
        out.push(&event(Op::Truncate, None, None, None), EventKeys::default());
    }
    // Each lineage's event is encoded at once and its row images dropped. Folding (one net
    // change per key, see driftdb_core::net) can only change events whose key occurs more
    // than once; if one does, the table's lineages are read again as whole events and folded.
    let first = out.items.len();
    out.items.reserve(tc.lineages.len());
    // Lineages whose ends are stored versions are encoded straight from the tuples (the shape
    // says when they can be)
    let direct_key = shape.direct_key.as_ref().map(|k| k.as_deref());
    let updates_direct = shape.updates_direct;
    let handle = |e: &Option<Endpoint>| match e {
        Some(Endpoint::Handle(h)) => Some(Some(*h)),
        None => Some(None),
        Some(Endpoint::Image(_)) => None,
    };
    let mut direct = DIRECT.take().unwrap_or_default();
    direct.old_cols.prepare((*rel).rd_att, &shape.columns);
    direct.new_cols.prepare((*rel).rd_att, &shape.columns);
    for (orig, cur) in &tc.lineages {
        if let (Some(key), Some(o), Some(c)) = (direct_key, handle(orig), handle(cur)) {
            if o.is_none() || c.is_none() || updates_direct {
                scratch.switch_to(|_| out.push_direct(&mut versions, o, c, key, &mut direct));
                reset_if_used(scratch);
                continue;
            }
        }
        if let Some(e) = lineage_event(&mut versions, ident, orig, cur, scratch) {
            let keys = EventKeys::of(&e);
            out.push(&e, keys);
        }
    }
    // kept for the next commit unless a large row grew them (a session that once wrote a
    // multi-megabyte row does not hold that memory for good)
    if direct.capacity() <= DIRECT_KEEP_BYTES {
        DIRECT.set(Some(direct));
    }
    // Under a unique key (primary key or REPLICA IDENTITY USING INDEX, both NOT NULL), rows
    // inserted or updated in place are live at commit — deferred uniqueness checks have run by
    // now — so their keys are distinct and no set of keys is needed to know it (a bulk load's
    // commit would otherwise hash every key once).
    let distinct = matches!(ident, Identity::Key(_)) && out.items[first..].iter().all(|it| it.old_key().is_none() && matches!(it.op, Op::Insert | Op::Update));
    if *ident != Identity::None && !distinct && keys_repeat(out, first) {
        out.truncate(first);
        let mut events: Vec<Event> =
            tc.lineages.iter().filter_map(|(orig, cur)| lineage_event(&mut versions, ident, orig, cur, scratch)).collect();
        let mut keys: Vec<EventKeys> = events.iter().map(EventKeys::of).collect();
        fold_keyed(&mut events, &mut keys, 0);
        for (e, k) in events.iter().zip(keys) {
            out.push(e, k);
        }
    }
    drop(versions);
    pg_sys::table_close(rel, pg_sys::NoLock as i32);
    if out.items.len() > start {
        out.runs.push((relid, out.items.len()));
    }
}

/// Draw the next seq and the commit timestamp, in one order (see the module comment).
unsafe fn stamp(cat: &Catalog) -> (i64, i64) {
    let lock = pg_sys::ExclusiveLock as i32;
    pg_sys::LockDatabaseObject(cat.commits, pg_sys::Oid::from(0u32), 0, lock);
    let seq = nextval(cat.commit_seq);
    let ts = pg_sys::GetCurrentTimestamp();
    let (objid, subid) = seq_lock_tag(seq);
    pg_sys::LockDatabaseObject(cat.commits, objid, subid, lock);
    pg_sys::UnlockDatabaseObject(cat.commits, pg_sys::Oid::from(0u32), 0, lock);
    (seq, ts)
}

/// The lock tag of seq N's seq lock: low 32 bits as object id, next 16 as sub-id (seq ≥ 1,
/// so it never collides with the allocation lock's (0, 0)).
pub fn seq_lock_tag(seq: i64) -> (pg_sys::Oid, u16) {
    (pg_sys::Oid::from(seq as u32), (seq >> 32) as u16)
}

/// The table id of `relid`, registering the table on its first recorded change.
unsafe fn table_id(cat: &Catalog, relid: pg_sys::Oid, seq: i64, baseline: bool) -> i32 {
    if let Some((id, _)) = TABLE_IDS.with(|c| c.borrow().get(&relid).copied()) {
        return id;
    }
    let id = register(cat, relid, seq, baseline);
    check_keys(cat, relid, seq);
    TABLE_IDS.with(|c| c.borrow_mut().insert(relid, (id, false)));
    id
}

/// The identity as stored in `driftdb.tables.key_attnums`: the key columns, `{}` for FULL,
/// NULL for none.
unsafe fn identity_attnums(relid: pg_sys::Oid) -> Option<Vec<i16>> {
    let rel = pg_sys::RelationIdGetRelation(relid);
    let ident = identity::of(rel);
    pg_sys::RelationClose(rel);
    match ident {
        Identity::Key(cols) => Some(cols.into_iter().map(|c| c as i16).collect()),
        Identity::Full => Some(Vec::new()),
        Identity::None => None,
    }
}

/// On a cache miss (first commit in this backend, or after the table's relcache entry was
/// invalidated — which every identity change does): if the table's identity is no longer the
/// one its events are keyed by (`driftdb.tables.key_attnums`), this commit (`seq`) is where
/// the new identity's keys begin: record it (`keyed_from`) with the new identity, once. Every
/// write of the table since the identity change commits at or after `seq` (the change took an
/// ACCESS EXCLUSIVE lock), and this commit's events are encoded under the new identity. AS OF
/// key lookups at or after `keyed_from` read the key index from there on
/// (`timetravel::engine::Source::row_for_key`); earlier points replay.
unsafe fn check_keys(cat: &Catalog, relid: pg_sys::Oid, seq: i64) {
    let current = identity_attnums(relid);
    // the recorded identity is the current one, and trusted (`keys_stable` false: written by a
    // build before `keyed_from`, e.g. restored from its dump — recorded here afresh, with this
    // commit as `keyed_from`: every event from it on is encoded under the current identity)
    let same = |cat: &Catalog| {
        let mut same = true;
        let keys = [(2, pg_sys::BTEqualStrategyNumber as u16, pg_sys::F_OIDEQ, pg_sys::Datum::from(relid))];
        catalog::scan(cat.tables, cat.tables_relid_idx, &keys, catalog::snapshot_self(), Order::Any, pg_sys::AccessShareLock, |tup, rel| {
            let recorded: Option<Vec<i16>> = catalog::attr(tup, rel, 5).and_then(|d| Vec::<i16>::from_datum(d, false));
            let stable = catalog::attr(tup, rel, 6).is_none_or(|d| d.value() != 0);
            same = stable && recorded == current;
            false
        });
        same
    };
    if same(cat) {
        return;
    }
    // two first committers after the change: the second finds the first one's record (and
    // its own events, at a later seq, are keyed as the record says)
    pg_sys::LockDatabaseObject(cat.tables, relid, 0, pg_sys::ExclusiveLock as i32);
    if same(cat) {
        return;
    }
    let rel = pg_sys::table_open(cat.tables, pg_sys::RowExclusiveLock as i32);
    let keys = [(2, pg_sys::BTEqualStrategyNumber as u16, pg_sys::F_OIDEQ, pg_sys::Datum::from(relid))];
    let mut target: Option<pg_sys::HeapTuple> = None;
    catalog::scan(cat.tables, cat.tables_relid_idx, &keys, catalog::snapshot_self(), Order::Any, pg_sys::AccessShareLock, |tup, _| {
        target = Some(pg_sys::heap_copytuple(tup));
        false
    });
    if let Some(tup) = target {
        let natts = (*(*rel).rd_att).natts as usize;
        let mut values = vec![pg_sys::Datum::from(0usize); natts];
        let mut nulls = vec![false; natts];
        let mut repl = vec![false; natts];
        // key_attnums (column 5), keys_stable (6) and keyed_from (11)
        match current.clone().into_datum() {
            Some(d) => values[4] = d,
            None => nulls[4] = true,
        }
        repl[4] = true;
        values[5] = pg_sys::Datum::from(true); // keys_stable
        repl[5] = true;
        values[10] = seq.into_datum().unwrap();
        repl[10] = true;
        let newtup = pg_sys::heap_modify_tuple(tup, (*rel).rd_att, values.as_mut_ptr(), nulls.as_mut_ptr(), repl.as_mut_ptr());
        pg_sys::CatalogTupleUpdate(rel, &mut (*newtup).t_self, newtup);
        // readers that cached the registration before (timetravel/reader.rs) read it again
        pg_sys::CacheInvalidateRelcacheByRelid(relid);
    }
    pg_sys::table_close(rel, pg_sys::NoLock as i32);
}

unsafe fn register(cat: &Catalog, relid: pg_sys::Oid, seq: i64, baseline: bool) -> i32 {
    if let Some(id) = lookup_table_id(cat, relid) {
        return id;
    }
    // Two first writers of one table: the second waits here until the first has committed
    // (or aborted) and then finds its registration.
    pg_sys::LockDatabaseObject(cat.tables, relid, 0, pg_sys::ExclusiveLock as i32);
    if let Some(id) = lookup_table_id(cat, relid) {
        return id;
    }
    let id = nextval(cat.table_id_seq) as i32;
    let mut w = Writer::open(cat.tables);
    // history_start_seq: 0 = complete since the table was created; a converted table's history
    // starts with the conversion
    let start = if baseline { seq } else { 0 };
    let key_attnums = identity_attnums(relid);
    let mut values = [
        id.into_datum().unwrap(),
        pg_sys::Datum::from(relid),
        seq.into_datum().unwrap(),
        start.into_datum().unwrap(),
        key_attnums.clone().into_datum().unwrap_or(pg_sys::Datum::from(0usize)),
        pg_sys::Datum::from(true),
        pg_sys::Datum::from(0usize), // retention: none
        pg_sys::Datum::from(0i64),   // compacted_upto
        pg_sys::Datum::from(0usize), // last_compaction: never
        pg_sys::Datum::from(false),  // history_purged
        pg_sys::Datum::from(0i64),   // keyed_from: keyed as registered
    ];
    w.insert(&mut values, &mut [false, false, false, false, key_attnums.is_none(), false, true, false, true, false, false]);
    id
}

/// Find the registration of `relid` in driftdb.tables. SnapshotSelf: the latest committed
/// state plus this transaction's own rows, without MVCC predicate locks (a SERIALIZABLE
/// transaction must not conflict with others over driftdb's registry).
pub unsafe fn lookup_table_id(cat: &Catalog, relid: pg_sys::Oid) -> Option<i32> {
    let mut id = None;
    // scan keys name heap columns: relid is column 2 of driftdb.tables
    let keys = [(2, pg_sys::BTEqualStrategyNumber as u16, pg_sys::F_OIDEQ, pg_sys::Datum::from(relid))];
    catalog::scan(cat.tables, cat.tables_relid_idx, &keys, catalog::snapshot_self(), Order::Any, pg_sys::AccessShareLock, |tup, rel| {
        id = catalog::attr(tup, rel, 1).map(|d| d.value() as i32);
        false
    });
    id
}

/// What `stream_bulk_load` did.
enum Streamed {
    /// Not a load it streams; nothing drawn, nothing written.
    No,
    /// Every event is in packs, under this seq, time and table id.
    Done { seq: i64, ts: i64, id: i32 },
    /// The keys did not ascend: the seq and time are drawn, and the packs written so far
    /// deleted; the changes go the usual way, under this seq.
    Unsorted { seq: i64, ts: i64 },
}

/// A bulk load streamed into packs: the transaction changed one table only, by inserts only
/// (at least `driftdb.pack_min_events` of them, rows stored in the heap), under a key whose
/// columns are copied as stored (`ColumnKinds::key_copyable`), with no TRUNCATE or schema change.
/// Its events are all inserts, one per lineage, so the seq is drawn first; each row is then
/// read, encoded and pushed into the packs in lineage (TID) order, which for a load of
/// ascending keys is key order, without `Pending`, its sort, or its memory. The first key that
/// does not ascend stops the stream: the packs written so far are deleted (they are this
/// transaction's own rows) and the caller writes the changes the usual way.
///
/// # Safety
/// Called from `flush`, in its memory context, with an active snapshot pushed.
unsafe fn stream_bulk_load(cat: &Catalog, tc: &TableChanges, scratch: &mut PgMemoryContexts) -> Streamed {
    let relid = pg_sys::Oid::from(tc.rel);
    let pure_inserts = || tc.lineages.iter().all(|l| matches!(l, (None, Some(Endpoint::Handle(_)))));
    if tc.truncated || !packs::wanted(tc.lineages.len()) || !pure_inserts() || !rel_exists(relid) {
        return Streamed::No;
    }
    let rel = pg_sys::table_open(relid, pg_sys::AccessShareLock as i32);
    let shape = shape(rel);
    let attnums = match &shape.direct_key {
        Some(Some(attnums)) => attnums,
        _ => {
            pg_sys::table_close(rel, pg_sys::AccessShareLock as i32);
            return Streamed::No;
        }
    };
    let (seq, ts) = stamp(cat);
    let id = table_id(cat, relid, seq, false);
    let desc = (*rel).rd_att;
    let mut versions = VersionReader::for_versions(rel, tc.lineages.len());
    let mut pw = PackWriter::open(cat, tc.lineages.len());
    pw.start(id, seq, ts);
    let mut cols = codec::TupleScratch::default();
    cols.prepare(desc, &shape.columns);
    // the row and its key as encoded; where the key columns sit among the encoded columns
    let (mut row, mut key, mut key_at) = (Vec::new(), Vec::new(), Vec::new());
    let mut sorted = true;
    for (i, (_, cur)) in tc.lineages.iter().enumerate() {
        let Some(Endpoint::Handle(h)) = cur else { unreachable!("checked: pure inserts") };
        scratch.switch_to(|_| {
            let mut tuple = versions.fetch(*h);
            row.clear();
            codec::write_tuple(desc, &mut tuple, &mut row, &mut cols);
        });
        reset_if_used(scratch);
        key.clear();
        write_key_at(&mut key, attnums, &mut key_at, &row, &cols);
        // the key as the index files it (a long one under its digest), which orders packs;
        // an insert's event, as push_direct encodes it, written straight into the pack
        let digest = long_key_digest(&key);
        if !pw.push_insert(2 * i as i32, digest.as_ref().map_or(&key[..], |d| &d[..]), &key, &row) {
            sorted = false;
            break;
        }
    }
    pw.finish();
    drop(versions);
    pg_sys::table_close(rel, pg_sys::NoLock as i32);
    if sorted {
        return Streamed::Done { seq, ts, id };
    }
    // the packs were inserted by this very command: make them its past before deleting them
    pg_sys::CommandCounterIncrement();
    let mut written = Vec::new();
    packs::for_seq(cat, id, seq, catalog::snapshot_self(), pg_sys::RowExclusiveLock, |p| {
        written.push(p.tid);
        true
    });
    packs::delete(cat, &mut written);
    Streamed::Unsorted { seq, ts }
}

/// Which tables' (runs') row events go into packs, and how many events that is: the tables
/// with at least `driftdb.pack_min_events` of them, all keyed, none of which moved a row to
/// another key (moved-key markers stay event rows). Their changes are put in key order, so that
/// the ords numbered from that order ascend with the key (TRUNCATE and schema events stay first).
fn choose_packs(pending: &mut Pending) -> (Vec<bool>, usize) {
    let Pending { items, bytes, runs } = pending;
    let mut start = 0;
    let mut npacked = 0;
    let packed = runs
        .iter()
        .map(|&(_, end)| {
            let span = &mut items[start..end];
            start = end;
            let keyed = span.iter().filter(|it| it.key().is_some()).count();
            let packable = span.iter().all(|it| it.old_key().is_none() && (it.key().is_some() || matches!(it.op, Op::Truncate | Op::Schema)));
            if !packable || !packs::wanted(keyed) {
                return false;
            }
            span.sort_by(|a, b| match (a.key(), b.key()) {
                (Some(x), Some(y)) => bytes[x].cmp(&bytes[y]),
                (x, y) => x.is_some().cmp(&y.is_some()),
            });
            npacked += keyed;
            true
        })
        .collect();
    (packed, npacked)
}

/// A build-time cut for the ceiling experiment (`benches/sql/ceiling.sh`): built with
/// `DRIFTDB_CEILING=<step>`, the pre-commit stops after that step and stores less than the
/// full history (`capture`: nothing read; `encode`: images read and encoded; `stamp`: plus the
/// seq, time, table ids and frames; `commit_row`: plus the `driftdb.commits` row;
/// `events_heap`: plus the event rows without index entries; `events_pkey`: with their
/// `events_pkey` entries but not their `events_key` ones). Such a build loses history and
/// exists only to measure what each step of the commit costs; a normal build has the empty
/// string here, and every test checks its history.
pub const CEILING: &str = match option_env!("DRIFTDB_CEILING") {
    Some(s) => s,
    None => "",
};

const _: () = assert!(
    matches!(CEILING.as_bytes(), b"" | b"capture" | b"encode" | b"stamp" | b"commit_row" | b"events_heap" | b"events_pkey"),
    "DRIFTDB_CEILING must be one of capture, encode, stamp, commit_row, events_heap, events_pkey"
);

/// Whether a ceiling build stops at `step` (see [`CEILING`]).
fn ceiling_at(step: &str) -> bool {
    CEILING == step
}

/// Pre-commit: write this transaction's history.
unsafe fn flush() {
    if POISONED.with(|p| p.get()) {
        DriftError::new(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, "driftdb cannot record this transaction's history")
            .detail("The change buffer lost track of subtransactions (see the WARNING above).")
            .hint("This is a driftdb bug; the transaction was aborted so that history stays exact.")
            .raise();
    }
    let mut changes = TXBUF.with(|b| b.borrow_mut().drain());
    let notes: Vec<_> = SCHEMA_NOTES.with(|n| std::mem::take(&mut *n.borrow_mut()));
    if changes.is_empty() && notes.is_empty() {
        return;
    }
    if ceiling_at("capture") {
        return;
    }
    // declared before every local that pallocs, so dropped after them
    let _memory = FlushMemory::enter();
    // tables with only schema changes get an (empty) entry so that their notes are written
    for n in &notes {
        if !changes.iter().any(|c| c.rel == n.rel) {
            changes.push(TableChanges { rel: n.rel, truncated: false, lineages: Vec::new() });
        }
    }
    let baselines: Vec<u32> = notes.iter().filter(|n| n.baseline).map(|n| n.rel).collect();
    let Some(cat) = Catalog::get() else {
        // Dropping the extension drops every driftdb table with it. A changed table that still
        // exists means the catalog is incomplete (objects from another version of driftdb, or
        // altered by hand): refuse to commit a change that would go unrecorded.
        if changes.iter().any(|c| rel_exists(pg_sys::Oid::from(c.rel))) {
            DriftError::new(PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, "driftdb's catalog in this database is incomplete")
                .detail("A driftdb table changed, but objects in schema driftdb that record its history are missing or renamed (created by another version of the extension, or altered by hand); the change would go unrecorded.")
                .hint("Restore the missing objects, or dump the database and restore it into one with a fresh CREATE EXTENSION driftdb. The transaction was rolled back.")
                .raise();
        }
        return; // the extension (and with it every driftdb table) was dropped in this transaction
    };
    let mut scratch = PgMemoryContexts::new("driftdb pre-commit");
    let mut pending = Pending::default();
    // Reading row images may detoast out-of-line values, which needs an active snapshot. The
    // versions read are pinned by TID, so any snapshot serves; abort pops it on error.
    pg_sys::PushActiveSnapshot(pg_sys::GetLatestSnapshot());
    // a bulk load of ascending keys goes straight into packs
    let mut stamped = None;
    if notes.is_empty() && changes.len() == 1 {
        match stream_bulk_load(&cat, &changes[0], &mut scratch) {
            Streamed::No => {}
            Streamed::Done { seq, ts, id } => {
                pg_sys::PopActiveSnapshot();
                write_commit(&cat, seq, ts, vec![id]);
                return;
            }
            Streamed::Unsorted { seq, ts } => stamped = Some((seq, ts)),
        }
    }
    let mut notes = notes;
    for tc in changes {
        let mine: Vec<_> = notes.extract_if(.., |n| n.rel == tc.rel).map(|n| n.change).collect();
        table_events(tc, mine, &mut pending, &mut scratch);
    }
    pg_sys::PopActiveSnapshot();
    if pending.items.is_empty() {
        // net effect nothing: no seq (a streamed load drew one only for inserts, which are
        // never nothing)
        assert!(stamped.is_none(), "driftdb: a bulk load's inserts netted to nothing");
        return;
    }
    if ceiling_at("encode") {
        return;
    }
    let (seq, ts) = stamped.unwrap_or_else(|| stamp(&cat));

    let mut ids: HashMap<pg_sys::Oid, i32> = HashMap::new();
    let mut table_ids: Vec<i32> = Vec::new();
    for &(rel, _) in &pending.runs {
        if !ids.contains_key(&rel) {
            let id = table_id(&cat, rel, seq, baselines.contains(&rel.to_u32()));
            ids.insert(rel, id);
            table_ids.push(id);
        }
    }

    // the rows go out in batches (heap_multi_insert, then their index entries); a bulk
    // table's row events go into packs instead (history/packs.rs)
    let (packed, npacked) = choose_packs(&mut pending);
    let rows = pending.items.len() - npacked + pending.items.iter().filter(|it| it.old_key().is_some()).count();
    if !CEILING.is_empty() {
        // a ceiling build: the frames are built, and stored only as far as its step says
        let store = match CEILING {
            "events_heap" => Some(false),
            "events_pkey" => Some(true),
            _ => None,
        };
        ceiling_events(&cat, &pending, &ids, seq, ts, store);
        if !ceiling_at("stamp") {
            write_commit(&cat, seq, ts, table_ids);
        }
        return;
    }
    let mut w = BatchWriter::open(cat.events, rows);
    let mut pw: Option<PackWriter> = None;
    let mut pw_table: Option<usize> = None;
    let mut frame = Vec::with_capacity(256);
    let mut run = 0usize;
    for (ord, item) in pending.items.iter().enumerate() {
        while pending.runs[run].1 <= ord {
            run += 1;
        }
        let rel = pending.runs[run].0;
        let id = ids[&rel];
        let op = item.op;
        let op_char = op_char(op);
        // a packed event is stored as its tail: the pack rebuilds its frame (driftdb_core::pack)
        if let (true, Some(key)) = (packed[run], pending.slice(&item.key())) {
            let pw = pw.get_or_insert_with(|| PackWriter::open(&cat, npacked));
            if pw_table != Some(run) {
                pw.start(id, seq, ts);
                pw_table = Some(run);
            }
            pw.push(2 * ord as i32, op_char, key, &pending.bytes[item.tail()]);
            continue;
        }
        encode_frame_from_tail(seq as u64, ts, id as u32, op, &pending.bytes[item.tail()], &mut frame);
        // An update that changed the row's identity is stored under the new key; a marker
        // row ('m', same frame) under the old key lets lookups by the old key see that the
        // row moved away at this seq. Replay skips markers.
        let rows = [(op_char, pending.slice(&item.key())), (b'm', pending.slice(&item.old_key()))];
        for (i, (op, key)) in rows.into_iter().enumerate() {
            if i == 1 && key.is_none() {
                break;
            }
            // the bytea copies live in the writer's batch context, freed with the batch: a
            // large transaction does not pile up its frames in transaction memory
            let old = pg_sys::MemoryContextSwitchTo(w.context());
            let mut values = [
                id.into_datum().unwrap(),
                seq.into_datum().unwrap(),
                (2 * ord as i32 + i as i32).into_datum().unwrap(),
                pg_sys::Datum::from(op as usize),
                key.map(|k| k.into_datum().unwrap()).unwrap_or(pg_sys::Datum::from(0usize)),
                frame.as_slice().into_datum().unwrap(),
            ];
            pg_sys::MemoryContextSwitchTo(old);
            let mut nulls = [false, false, false, false, key.is_none(), false];
            w.push(&mut values, &mut nulls);
        }
    }
    w.finish();
    if let Some(pw) = pw {
        pw.finish();
    }
    write_commit(&cat, seq, ts, table_ids);
}

/// An event's `driftdb.events.op` (the row kinds; `'m'`, a moved key's marker, is not an event's).
fn op_char(op: Op) -> u8 {
    match op {
        Op::Insert => b'i',
        Op::Update => b'u',
        Op::Delete => b'd',
        Op::Truncate => b't',
        Op::Schema => b's',
    }
}

/// The ceiling steps' events (see [`CEILING`]): each event's frame is built; with `store`, it
/// is written as a `driftdb.events` row with no index entry (`Some(false)`, `events_heap`) or
/// with its `events_pkey` entry only (`Some(true)`). Only the plain event rows single-row
/// transactions write (no packs, no moved-key markers).
///
/// # Safety
/// At pre-commit, as `flush`: `cat` is this database's catalog, so the tuple formed from six
/// datums matches `driftdb.events`' six columns, and the pkey's three key columns are its first
/// three; the relations are opened and closed here.
unsafe fn ceiling_events(cat: &Catalog, pending: &Pending, ids: &HashMap<pg_sys::Oid, i32>, seq: i64, ts: i64, store: Option<bool>) {
    let pkey = store == Some(true);
    let rel = if store.is_some() { pg_sys::table_open(cat.events, pg_sys::RowExclusiveLock as i32) } else { std::ptr::null_mut() };
    let idx = if pkey { pg_sys::index_open(cat.events_pkey, pg_sys::RowExclusiveLock as i32) } else { std::ptr::null_mut() };
    let info = if pkey { pg_sys::BuildIndexInfo(idx) } else { std::ptr::null_mut() };
    let mut frame = Vec::with_capacity(256);
    let mut run = 0usize;
    for (ord, item) in pending.items.iter().enumerate() {
        while pending.runs[run].1 <= ord {
            run += 1;
        }
        let id = ids[&pending.runs[run].0];
        encode_frame_from_tail(seq as u64, ts, id as u32, item.op, &pending.bytes[item.tail()], &mut frame);
        if store.is_none() {
            std::hint::black_box(&frame);
            continue;
        }
        let key = pending.slice(&item.key());
        let mut values = [
            id.into_datum().unwrap(),
            seq.into_datum().unwrap(),
            (2 * ord as i32).into_datum().unwrap(),
            pg_sys::Datum::from(op_char(item.op) as usize),
            key.map(|k| k.into_datum().unwrap()).unwrap_or(pg_sys::Datum::from(0usize)),
            frame.as_slice().into_datum().unwrap(),
        ];
        let mut nulls = [false, false, false, false, key.is_none(), false];
        let tup = pg_sys::heap_form_tuple((*rel).rd_att, values.as_mut_ptr(), nulls.as_mut_ptr());
        pg_sys::simple_heap_insert(rel, tup);
        if pkey {
            let mut iv = [values[0], values[1], values[2]];
            let mut inull = [false; 3];
            pg_sys::index_insert(idx, iv.as_mut_ptr(), inull.as_mut_ptr(), &mut (*tup).t_self, rel, pg_sys::IndexUniqueCheck::UNIQUE_CHECK_YES, false, info);
        }
        pg_sys::heap_freetuple(tup);
    }
    if pkey {
        pg_sys::index_close(idx, pg_sys::NoLock as i32);
    }
    if store.is_some() {
        pg_sys::table_close(rel, pg_sys::NoLock as i32);
    }
}

/// The transaction's `driftdb.commits` row.
unsafe fn write_commit(cat: &Catalog, seq: i64, ts: i64, table_ids: Vec<i32>) {
    let xid = pg_sys::GetTopFullTransactionId().value;
    let app = pg_sys::application_name;
    let mut c = Writer::open(cat.commits);
    let ids: Vec<pg_sys::Datum> = table_ids.iter().map(|&id| pg_sys::Datum::from(id)).collect();
    let mut values = [
        seq.into_datum().unwrap(),
        pg_sys::Datum::from(ts as usize),
        pg_sys::Datum::from(xid as usize),
        role_name(pg_sys::GetUserId()),
        role_name(pg_sys::GetSessionUserId()),
        text_datum(if app.is_null() { &[] } else { CStr::from_ptr(app).to_bytes() }),
        // int4[]: 4 bytes, passed by value, int-aligned (pg_type)
        pg_sys::Datum::from(pg_sys::construct_array(ids.as_ptr().cast_mut(), ids.len() as i32, pg_sys::INT4OID, 4, true, b'i' as std::ffi::c_char)),
    ];
    c.insert(&mut values, &mut [false; 7]);
}

/// A text datum of these bytes, in the current memory context.
///
/// # Safety
/// Inside a transaction (it pallocs); the bytes must be in the database's encoding.
unsafe fn text_datum(b: &[u8]) -> pg_sys::Datum {
    pg_sys::Datum::from(pg_sys::cstring_to_text_with_len(b.as_ptr().cast(), b.len() as i32))
}

thread_local! {
    /// role OID → its name, for `driftdb.commits`. Emptied whenever pg_authid changes (a role
    /// renamed or dropped).
    static ROLE_NAMES: std::cell::RefCell<HashMap<pg_sys::Oid, Vec<u8>>> = std::cell::RefCell::new(HashMap::new());
}

#[pg_guard]
unsafe extern "C-unwind" fn roles_changed(_arg: pg_sys::Datum, _cacheid: i32, _hash: u32) {
    ROLE_NAMES.with(|c| c.borrow_mut().clear());
}

/// The name of role `oid` as a text datum in the current memory context ('' for a role that no
/// longer exists). The name is looked up once per role: the syscache lookup and its copies
/// were a tenth of a small commit's own work.
///
/// # Safety
/// Inside a transaction (syscache lookup, palloc).
unsafe fn role_name(oid: pg_sys::Oid) -> pg_sys::Datum {
    let cached = ROLE_NAMES.with(|c| c.borrow().get(&oid).map(|n| text_datum(n)));
    if let Some(d) = cached {
        return d;
    }
    let name = pg_sys::GetUserNameFromId(oid, true);
    let bytes = if name.is_null() { Vec::new() } else { CStr::from_ptr(name).to_bytes().to_vec() };
    let d = text_datum(&bytes);
    ROLE_NAMES.with(|c| c.borrow_mut().insert(oid, bytes));
    d
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use driftdb_core::net::EventKeys;
    use driftdb_core::Endpoint;
    use pgrx::pg_sys;
    use pgrx::prelude::*;
    use pgrx::PgMemoryContexts;

    use std::collections::HashMap;

    use super::{lineage_event, DirectScratch, Pending, VersionReader};
    use crate::history::capture::pack_tid;
    use crate::history::{codec, identity};

    /// The TIDs of `table`'s rows, by the int column `by`, as (block, offset).
    fn tids(table: &str, by: &str) -> HashMap<i32, (u32, u16)> {
        Spi::connect(|client| {
            let q = format!("SELECT {by}, (ctid::text::point)[0]::int8, (ctid::text::point)[1]::int8 FROM {table}");
            client
                .select(&q, None, &[])
                .unwrap()
                .map(|r| (r.get::<i32>(1).unwrap().unwrap(), (r.get::<i64>(2).unwrap().unwrap() as u32, r.get::<i64>(3).unwrap().unwrap() as u16)))
                .collect()
        })
    }

    fn handle((block, offset): (u32, u16)) -> u64 {
        pack_tid(&pg_sys::ItemPointerData { ip_blkid: pg_sys::BlockIdData { bi_hi: (block >> 16) as u16, bi_lo: block as u16 }, ip_posid: offset })
    }

    /// Lineages (version before, version after) of `table` encoded both ways — straight from
    /// the tuples (`Pending::push_direct`) and through their Values (`lineage_event` +
    /// `Pending::push`) — must give the same items and bytes. Returns how many items.
    fn compare_encodings(table: &str, lineages: &[(Option<(u32, u16)>, Option<(u32, u16)>)]) -> usize {
        let relid = Spi::get_one::<pg_sys::Oid>(&format!("SELECT '{table}'::regclass::oid")).unwrap().unwrap();
        // SAFETY: the table exists (just queried) and is locked for the test's transaction;
        // every TID was read in this transaction, whose versions no prune can remove.
        unsafe {
            let rel = pg_sys::table_open(relid, pg_sys::AccessShareLock as i32);
            let ident = identity::of(rel);
            let key: Option<&[u16]> = match &ident {
                identity::Identity::Key(a) => {
                    assert!(codec::ColumnKinds::of((*rel).rd_att).key_copyable(a), "{table}: the test wants a copyable key");
                    Some(a)
                }
                _ => None,
            };
            if lineages.iter().any(|(o, c)| o.is_some() && c.is_some()) {
                assert!(codec::ColumnKinds::of((*rel).rd_att).rows_bytewise(), "{table}: updates want rows without floats");
            }
            let mut versions = VersionReader::new(rel);
            let mut scratch = PgMemoryContexts::new("test");
            let (mut direct, mut via_values) = (Pending::default(), Pending::default());
            let mut d = DirectScratch::default();
            for &(o, c) in lineages {
                direct.push_direct(&mut versions, o.map(handle), c.map(handle), key, &mut d);
                let ends = (o.map(|t| Endpoint::Handle(handle(t))), c.map(|t| Endpoint::Handle(handle(t))));
                if let Some(e) = lineage_event(&mut versions, &ident, &ends.0, &ends.1, &mut scratch) {
                    via_values.push(&e, EventKeys::of(&e));
                }
            }
            assert_eq!(direct.items, via_values.items, "{table}");
            assert!(direct.bytes == via_values.bytes, "{table}: the encodings differ");
            drop(versions);
            pg_sys::table_close(rel, pg_sys::NoLock as i32);
            direct.items.len()
        }
    }

    /// Every row of `table` as an insert.
    fn compare_insert_encodings(table: &str, by: &str) -> usize {
        let all: Vec<_> = tids(table, by).into_values().map(|t| (None, Some(t))).collect();
        compare_encodings(table, &all)
    }

    #[pg_test]
    fn inserts_encoded_from_the_tuple_are_the_value_path_bytes() {
        Spi::run(
            "CREATE TYPE enc_mood AS ENUM ('sad', 'happy');
             CREATE TYPE enc_pair AS (x int, y text);
             CREATE TABLE enc_keyed (k1 int, k2 text, f float8, n numeric, b bytea, t timestamptz, d date,
                                     a int[], r enc_pair, m enc_mood, j jsonb, u uuid, big text, gone int,
                                     nm name, c char(3), tt timetz, iv interval, PRIMARY KEY (k2, k1));
             ALTER TABLE enc_keyed DROP COLUMN gone;
             INSERT INTO enc_keyed
               SELECT g, 'k' || g, CASE WHEN g % 3 = 0 THEN 'NaN' ELSE g / 7.0 END, g * 1.25 - 30, '\\x01ff',
                      '2026-01-01 10:00+00'::timestamptz + g * interval '1 hour', '2020-01-01'::date + g,
                      ARRAY[g, NULL], ROW(g, 'x')::enc_pair, 'happy', '{\"a\": [1, 2]}',
                      ('00000000-0000-0000-0000-00000000000' || (g % 10))::uuid, CASE WHEN g = 5 THEN repeat('long', 5000) END,
                      'name' || g, 'ab', '10:00+02', interval '1 mon 2 days 3 s' * g
               FROM generate_series(1, 60) g;
             INSERT INTO enc_keyed (k1, k2) VALUES (0, '');
             CREATE TABLE enc_unkeyed (v text, n numeric, f float4);
             INSERT INTO enc_unkeyed SELECT 'row ' || g, g, g FROM generate_series(1, 20) g;
             INSERT INTO enc_unkeyed VALUES (NULL, NULL, NULL);",
        )
        .unwrap();
        assert_eq!(compare_insert_encodings("enc_keyed", "k1"), 61);
        Spi::run("ALTER TABLE enc_unkeyed ADD COLUMN rid serial").unwrap();
        assert_eq!(compare_insert_encodings("enc_unkeyed", "rid"), 21);
        // attnums from 128 on take two bytes in the row's map (a uint 8, not a fixint)
        let cols: Vec<String> = (1..=140).map(|i| format!("c{i} int")).collect();
        Spi::run(&format!("CREATE TABLE enc_wide (id int PRIMARY KEY, {})", cols.join(", "))).unwrap();
        let vals: Vec<String> = (1..=140).map(|i| if i % 9 == 0 { "NULL".to_string() } else { format!("g * {i}") }).collect();
        Spi::run(&format!("INSERT INTO enc_wide SELECT g, {} FROM generate_series(1, 5) g", vals.join(", "))).unwrap();
        assert_eq!(compare_insert_encodings("enc_wide", "id"), 5);
    }

    /// Updates (of other columns, of the key, to the same values) and deletes, both ways.
    #[pg_test]
    fn updates_and_deletes_encoded_from_the_tuples_are_the_value_path_bytes() {
        Spi::run(
            "CREATE TABLE enc_upd (k1 int, k2 text, rid int, n numeric, t text, ts timestamptz, j jsonb,
                                   gone int, big text, PRIMARY KEY (k1, k2));
             ALTER TABLE enc_upd DROP COLUMN gone;
             INSERT INTO enc_upd SELECT g, 'k' || g, g, g * 0.5, 'row ' || g, '2026-01-01'::timestamptz + g * interval '1 day',
                                        jsonb_build_object('g', g), CASE WHEN g = 3 THEN repeat('long', 5000) END
               FROM generate_series(1, 40) g;",
        )
        .unwrap();
        let before = tids("enc_upd", "rid");
        Spi::run(
            "UPDATE enc_upd SET t = t || '!' WHERE rid % 4 = 0;
             UPDATE enc_upd SET k1 = k1 + 1000 WHERE rid % 4 = 1;
             UPDATE enc_upd SET t = t, n = n WHERE rid % 4 = 2;
             UPDATE enc_upd SET big = repeat('other', 4000) WHERE rid = 3;
             DELETE FROM enc_upd WHERE rid % 4 = 3 AND rid <> 3;",
        )
        .unwrap();
        let after = tids("enc_upd", "rid");
        let mut lineages: Vec<_> = before.iter().map(|(rid, &old)| (Some(old), after.get(rid).copied())).collect();
        lineages.sort();
        // 10 updates of t, 10 key changes, 1 TOASTed value, 9 deletes; the 10 no-op updates
        // make nothing either way
        assert_eq!(compare_encodings("enc_upd", &lineages), 30);
    }
}
