//! Event segments and the chain: where cold history lives once compacted.
//!
//! `driftdb.segments` holds, per table, a chain of links (`seg_id` 1, 2, ...): event segments
//! ('s', many events in one compressed DriftDB block sorted by (key, seq, ord), format in
//! `driftdb_core::segment`) and the records of purges ('p') and erasures ('e'). Each link's
//! hash covers the previous link's hash and its own data (`driftdb_core::chain_hash`).
//!
//! This module is the read side every history reader goes through, and the one writer of
//! links:
//! - `for_each_event`: a table's events in (seq, ord) order from `driftdb.events`, the packs
//!   of bulk transactions (`driftdb.packs`) *and* the segments, merged (what replay, versions,
//!   changes and verify read);
//! - `key_entries`: one key's compacted events (what a key lookup reads after the recent
//!   events in `driftdb.events` had none);
//! - `directory`: the links' headers (no data), cached per backend and revalidated by the
//!   chain's head seg_id, which every change of the chain advances;
//! - `append_link` / `remove_link`: chain writers (compaction, purge, erasure), serialized
//!   per table by `lock_chain`.
//!
//! Concurrency. A chain writer moves events from `driftdb.events` into segments (or removes
//! them) in one transaction. A seq-ordered reader must not see the events table before that
//! commit and the segments after it (it would miss the moved events) — so a stream holds a
//! share lock on the table's chain while it reads both, and writers take the exclusive lock
//! just before they commit (`seal_chain`): a writer waits for the streams in progress, and
//! streams starting meanwhile wait for its commit (milliseconds). Key lookups need no lock:
//! they read the events table first and the directory after, so a commit in between shows the
//! moved events in the segments.
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use driftdb_core::SegmentEntry;
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::history::catalog::{self, Catalog, Order};
use crate::history::packs;
use crate::timetravel::reader::corrupted;

pub mod chain;
pub mod compact;
pub mod maintain;
pub mod retention;
pub mod stats;

pub fn init() {
    compact::init();
    maintain::init();
}

/// Link kinds (`driftdb.segments.kind`).
pub const SEGMENT: u8 = b's';
pub const PURGE: u8 = b'p';
pub const ERASURE: u8 = b'e';

/// The header of one link (everything but its data).
#[derive(Clone, Debug)]
pub struct Link {
    pub seg_id: i64,
    pub kind: u8,
    pub seq_lo: i64,
    pub seq_hi: i64,
    pub key_lo: Vec<u8>,
    pub key_hi: Vec<u8>,
    pub time_lo: i64,
    pub time_hi: i64,
    /// Entries, moved-key markers included.
    pub nevents: i32,
    pub raw_bytes: i32,
    pub created_at: i64,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
}

impl Link {
    /// Can this link hold events of `key`?
    pub fn may_hold_key(&self, key: &[u8]) -> bool {
        self.kind == SEGMENT && self.key_lo.as_slice() <= key && key <= self.key_hi.as_slice()
    }
}

type Directory = Rc<Vec<Link>>;

thread_local! {
    /// table_id → (driftdb.segments' OID, head seg_id, links): valid while the head is unchanged.
    static DIRS: RefCell<HashMap<i32, (pg_sys::Oid, i64, Directory)>> = RefCell::new(HashMap::new());
    /// Recently decoded segments, by hash (segments are immutable; a rewritten one has a new
    /// hash). Small: it serves repeated lookups of keys in the same segments.
    static DECODED: RefCell<Vec<(Vec<u8>, Rc<Vec<SegmentEntry>>)>> = const { RefCell::new(Vec::new()) };
}
const DECODED_MAX: usize = 8;

fn key_datum(table_id: i32) -> [(i16, u16, u32, pg_sys::Datum); 1] {
    [(1, pg_sys::BTEqualStrategyNumber as u16, pg_sys::F_INT4EQ, pg_sys::Datum::from(table_id))]
}

/// The seg_id of the table's newest link (0: no chain yet).
pub fn head_seg_id(cat: &Catalog, table_id: i32) -> i64 {
    let mut head = 0;
    // SAFETY: catalog-style read of driftdb.segments (column 2 = seg_id).
    unsafe {
        catalog::scan(cat.segments, cat.segments_pkey, &key_datum(table_id), catalog::snapshot_self(), Order::Backward, pg_sys::AccessShareLock, |tup, rel| {
            head = catalog::attr(tup, rel, 2).map_or(0, |d| d.value() as i64);
            false
        });
    }
    head
}

unsafe fn bytea_of(d: Option<pg_sys::Datum>) -> Vec<u8> {
    d.map(|d| {
        let v = pg_sys::pg_detoast_datum_packed(d.cast_mut_ptr());
        std::slice::from_raw_parts(pgrx::vardata_any(v) as *const u8, pgrx::varsize_any_exhdr(v)).to_vec()
    })
    .unwrap_or_default()
}

/// The table's links in chain order (headers only), cached while the head is unchanged.
pub fn directory(cat: &Catalog, table_id: i32) -> Directory {
    let head = head_seg_id(cat, table_id);
    if let Some(d) = DIRS.with(|c| c.borrow().get(&table_id).filter(|e| e.0 == cat.segments && e.1 == head).map(|e| e.2.clone())) {
        return d;
    }
    let d = Rc::new(load_links(cat, table_id));
    DIRS.with(|c| c.borrow_mut().insert(table_id, (cat.segments, head, d.clone())));
    d
}

/// The table's links in chain order, read now (the doctor trusts no cache).
pub fn load_links(cat: &Catalog, table_id: i32) -> Vec<Link> {
    let mut links = Vec::new();
    // SAFETY: catalog-style read of driftdb.segments; the data column (15) is not touched.
    unsafe {
        catalog::scan(cat.segments, cat.segments_pkey, &key_datum(table_id), catalog::snapshot_self(), Order::Forward, pg_sys::AccessShareLock, |tup, rel| {
            let get = |n| catalog::attr(tup, rel, n);
            let int = |n| get(n).map_or(0, |d: pg_sys::Datum| d.value() as i64);
            links.push(Link {
                seg_id: int(2),
                kind: int(3) as u8,
                seq_lo: int(4),
                seq_hi: int(5),
                key_lo: bytea_of(get(6)),
                key_hi: bytea_of(get(7)),
                time_lo: int(8),
                time_hi: int(9),
                nevents: int(10) as i32,
                raw_bytes: int(11) as i32,
                created_at: int(12),
                prev_hash: bytea_of(get(13)),
                hash: bytea_of(get(14)),
            });
            true
        });
    }
    links
}

/// The stored data of link `seg_id`.
pub fn link_data(cat: &Catalog, table_id: i32, seg_id: i64) -> Vec<u8> {
    let keys = [
        (1, pg_sys::BTEqualStrategyNumber as u16, pg_sys::F_INT4EQ, pg_sys::Datum::from(table_id)),
        (2, pg_sys::BTEqualStrategyNumber as u16, pg_sys::F_INT8EQ, pg_sys::Datum::from(seg_id)),
    ];
    let mut out = None;
    let mut tmp = pgrx::PgMemoryContexts::new("driftdb segment read");
    // SAFETY: catalog-style read of driftdb.segments (column 15 = data), detoasted in a
    // short-lived context and copied out.
    unsafe {
        catalog::scan(cat.segments, cat.segments_pkey, &keys, catalog::snapshot_self(), Order::Any, pg_sys::AccessShareLock, |tup, rel| {
            out = Some(tmp.switch_to(|_| bytea_of(catalog::attr(tup, rel, 15))));
            false
        });
        tmp.reset();
    }
    out.unwrap_or_else(|| corrupted(format!("segment {seg_id} of table {table_id} is missing")))
}

/// A segment's entries if this backend decoded it recently.
fn cached(link: &Link) -> Option<Rc<Vec<SegmentEntry>>> {
    DECODED.with(|c| c.borrow().iter().find(|(h, _)| *h == link.hash).map(|(_, e)| e.clone()))
}

/// The decoded entries of a segment link (cached by hash).
pub fn entries(cat: &Catalog, table_id: i32, link: &Link) -> Rc<Vec<SegmentEntry>> {
    if let Some(e) = cached(link) {
        return e;
    }
    let data = link_data(cat, table_id, link.seg_id);
    let e = Rc::new(
        driftdb_core::decode_segment(&data)
            .unwrap_or_else(|err| corrupted(format!("segment {} (seqs {}..{}): {err}", link.seg_id, link.seq_lo, link.seq_hi))),
    );
    DECODED.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= DECODED_MAX {
            c.remove(0);
        }
        c.push((link.hash.clone(), e.clone()));
    });
    e
}

/// One key's compacted events with seq ≤ `hi`, newest first: `f(seq, ord, op, frame)` until
/// it returns false. The segments that may hold the key are read newest first (by seq_hi), and
/// only as far as needed: a lookup of the key's newest event decodes one segment when that
/// one has it.
pub fn key_entries(cat: &Catalog, table_id: i32, key: &[u8], hi: i64, mut f: impl FnMut(i64, i32, u8, &[u8]) -> bool) {
    let dir = directory(cat, table_id);
    let mut links: Vec<&Link> = dir.iter().filter(|l| l.may_hold_key(key) && l.seq_lo <= hi).collect();
    links.sort_by(|a, b| b.seq_hi.cmp(&a.seq_hi));
    // entries found and not yet passed on, newest last (so that pop() gives the newest)
    let mut pending: Vec<(i64, i32, u8, Vec<u8>)> = Vec::new();
    for (i, l) in links.iter().enumerate() {
        let mut take = |e: &SegmentEntry| {
            if e.seq <= hi {
                pending.push((e.seq, e.ord, e.op, e.frame.clone()));
            }
        };
        match cached(l) {
            Some(es) => {
                // entries are sorted by (key, seq, ord): the key's run starts at the partition point
                let start = es.partition_point(|e| e.key.as_slice() < key);
                es[start..].iter().take_while(|e| e.key == key).for_each(&mut take);
            }
            None => {
                // decode only this key's entries (the others are skipped, not built)
                let data = link_data(cat, table_id, l.seg_id);
                driftdb_core::decode_segment_key(&data, key)
                    .unwrap_or_else(|err| corrupted(format!("segment {} (seqs {}..{}): {err}", l.seg_id, l.seq_lo, l.seq_hi)))
                    .iter()
                    .for_each(&mut take);
            }
        }
        pending.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        // what is newer than every segment still to read can be passed on now
        let bound = links.get(i + 1).map_or(i64::MIN, |n| n.seq_hi);
        while pending.last().is_some_and(|e| e.0 > bound) {
            let (seq, ord, op, frame) = pending.pop().expect("checked");
            if !f(seq, ord, op, &frame) {
                return;
            }
        }
    }
    while let Some((seq, ord, op, frame)) = pending.pop() {
        if !f(seq, ord, op, &frame) {
            return;
        }
    }
}

/// For every key in `[lo, hi]` (encoded keys, inclusive), per segment that holds it: its
/// newest entries with `seq <= hi_seq` (all those of that seq) — `f(entry)`. Only segments whose
/// key and seq ranges overlap are read (decoded whole, and cached).
pub fn range_newest(cat: &Catalog, table_id: i32, lo: &[u8], hi: &[u8], hi_seq: i64, mut f: impl FnMut(&SegmentEntry)) {
    let dir = directory(cat, table_id);
    for l in dir.iter().filter(|l| l.kind == SEGMENT && l.key_lo.as_slice() <= hi && lo <= l.key_hi.as_slice() && l.seq_lo <= hi_seq) {
        let es = entries(cat, table_id, l);
        // entries are sorted by (key, seq, ord): each key's run, its entries ≤ hi_seq first
        let start = es.partition_point(|e| e.key.as_slice() < lo);
        let end = start + es[start..].partition_point(|e| e.key.as_slice() <= hi);
        let mut i = start;
        while i < end {
            let run = i + es[i..end].partition_point(|e| e.key == es[i].key);
            let upto = i + es[i..run].partition_point(|e| e.seq <= hi_seq);
            if upto > i {
                let newest = es[upto - 1].seq;
                es[i..upto].iter().filter(|e| e.seq == newest).for_each(&mut f);
            }
            i = run;
        }
    }
}

/// Holds the share lock on a table's chain for the life of a seq-ordered read.
pub struct StreamLock {
    cat: Catalog,
    table_id: i32,
}

impl StreamLock {
    fn take(cat: &Catalog, table_id: i32) -> StreamLock {
        // SAFETY: a heavyweight lock on a driftdb-owned object id; released in Drop (or by
        // transaction abort when an ERROR unwinds).
        unsafe { pg_sys::LockDatabaseObject(cat.segments, pg_sys::Oid::from(table_id as u32), 1, pg_sys::AccessShareLock as i32) };
        StreamLock { cat: *cat, table_id }
    }
}

impl Drop for StreamLock {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return; // the abort releases it
        }
        // SAFETY: releasing the lock taken in `take`.
        unsafe {
            pg_sys::UnlockDatabaseObject(self.cat.segments, pg_sys::Oid::from(self.table_id as u32), 1, pg_sys::AccessShareLock as i32)
        };
    }
}

/// Take the share lock on a table's chain for a read that must see one state of its history
/// throughout (registration, snapshots, events): held until dropped. Invalidation messages are
/// processed once it is held, so cached registrations reflect every chain change committed
/// before (a purge moves the history start).
pub fn read_lock(cat: &Catalog, table_id: i32) -> StreamLock {
    let l = StreamLock::take(cat, table_id);
    // SAFETY: processing pending invalidation messages, as acquiring a relation lock does.
    unsafe { pg_sys::AcceptInvalidationMessages() };
    l
}

/// Serialize chain writers of one table (compaction, purge, erasure): held to transaction end.
/// The previous writer sent its invalidations before it released the lock, so once they are
/// processed here the cached registration (`reader::table_info`) is the committed one.
pub fn lock_chain(cat: &Catalog, table_id: i32) {
    // SAFETY: heavyweight lock on a driftdb-owned object id, released at transaction end;
    // then pending invalidation messages are processed, as acquiring a relation lock does.
    unsafe {
        pg_sys::LockDatabaseObject(cat.segments, pg_sys::Oid::from(table_id as u32), 0, pg_sys::ExclusiveLock as i32);
        pg_sys::AcceptInvalidationMessages();
    }
}

/// Before a chain writer commits: wait for the seq-ordered reads in progress and hold new ones
/// until the commit (see the module comment).
pub fn seal_chain(cat: &Catalog, table_id: i32) {
    // SAFETY: as lock_chain; held to transaction end.
    unsafe { pg_sys::LockDatabaseObject(cat.segments, pg_sys::Oid::from(table_id as u32), 1, pg_sys::AccessExclusiveLock as i32) };
}

/// Every event row of the table with `lo < seq <= hi`, in (seq, ord) order, from the events
/// table and the segments: `f(seq, ord, op, key, frame)` until it returns false. Markers ('m') are
/// passed only when `markers`. Rows are read with `snapshot` (SnapshotSelf for AS OF reads of
/// settled seqs; the statement's snapshot for verify).
pub fn for_each_event(
    cat: &Catalog,
    table_id: i32,
    lo: i64,
    hi: i64,
    snapshot: pg_sys::Snapshot,
    markers: bool,
    mut f: impl FnMut(i64, i32, u8, Option<&[u8]>, &[u8]) -> bool,
) {
    if lo >= hi {
        return; // e.g. a read at exactly a snapshot's seq: no segment needs decoding
    }
    let _lock = StreamLock::take(cat, table_id);
    let dir = directory(cat, table_id);
    let mut segs = SegStream::new(cat, table_id, &dir, lo, hi, markers);
    let keys = [
        (1, pg_sys::BTEqualStrategyNumber as u16, pg_sys::F_INT4EQ, pg_sys::Datum::from(table_id)),
        (2, pg_sys::BTGreaterStrategyNumber as u16, pg_sys::F_INT8GT, pg_sys::Datum::from(lo)),
        (2, pg_sys::BTLessEqualStrategyNumber as u16, pg_sys::F_INT8LE, pg_sys::Datum::from(hi)),
    ];
    // detoasted frames of a long scan go to a per-row context
    let mut tmp = pgrx::PgMemoryContexts::new("driftdb history scan");
    let mut go = true;
    // Bulk transactions' packed events come after their seq's event rows (TRUNCATE and schema
    // events, numbered first), in ord order.
    let bulk = packs::seqs(cat, table_id, lo, hi, snapshot);
    let mut next_bulk = 0usize;
    let emit_packs = |s: i64, segs: &mut SegStream, f: &mut dyn FnMut(i64, i32, u8, Option<&[u8]>, &[u8]) -> bool| -> bool {
        packs::for_seq(cat, table_id, s, snapshot, pg_sys::AccessShareLock, |row| {
            let p = row.pack();
            for e in p.entries() {
                while let Some(c) = segs.peek_before(s, e.ord) {
                    if !f(c.seq, c.ord, c.op, Some(&c.key), &c.frame) {
                        return false;
                    }
                    segs.advance();
                }
                segs.skip_equal(s, e.ord);
                if !f(s, e.ord, e.op, Some(e.key), &e.frame()) {
                    return false;
                }
            }
            true
        })
    };
    // SAFETY: catalog-style read of driftdb.events.
    unsafe {
        catalog::scan(cat.events, cat.events_pkey, &keys, snapshot, Order::Forward, pg_sys::AccessShareLock, |tup, rel| {
            let seq = catalog::attr(tup, rel, 2).map_or(0, |d| d.value() as i64);
            let ord = catalog::attr(tup, rel, 3).map_or(0, |d| d.value() as i32);
            while next_bulk < bulk.len() && bulk[next_bulk] < seq {
                if !emit_packs(bulk[next_bulk], &mut segs, &mut f) {
                    go = false;
                    return false;
                }
                next_bulk += 1;
            }
            // compacted events that come first
            while let Some(e) = segs.peek_before(seq, ord) {
                if !f(e.seq, e.ord, e.op, Some(&e.key), &e.frame) {
                    go = false;
                    return false;
                }
                segs.advance();
            }
            // the same event in both places cannot happen while the chain lock is held; counted
            // once anyway
            segs.skip_equal(seq, ord);
            let op = catalog::attr(tup, rel, 4).map_or(0, |d| d.value() as u8);
            if op == b'm' && !markers {
                return true;
            }
            go = tmp.switch_to(|_| {
                let bytes = |n| {
                    catalog::attr(tup, rel, n).map(|d| {
                        let v = pg_sys::pg_detoast_datum_packed(d.cast_mut_ptr());
                        std::slice::from_raw_parts(pgrx::vardata_any(v) as *const u8, pgrx::varsize_any_exhdr(v))
                    })
                };
                f(seq, ord, op, bytes(5), bytes(6).unwrap_or(&[]))
            });
            tmp.reset();
            go
        });
    }
    while go && next_bulk < bulk.len() {
        go = emit_packs(bulk[next_bulk], &mut segs, &mut f);
        next_bulk += 1;
    }
    while go {
        let Some(e) = segs.peek_before(i64::MAX, i32::MAX) else { break };
        go = f(e.seq, e.ord, e.op, Some(&e.key), &e.frame);
        segs.advance();
    }
}

/// The compacted events of a seq range in (seq, ord) order, decoding the segments a group of
/// overlapping seq ranges at a time (one compaction's segments overlap; rounds do not).
struct SegStream<'a> {
    cat: &'a Catalog,
    table_id: i32,
    lo: i64,
    hi: i64,
    markers: bool,
    /// Segment links overlapping (lo, hi], by seq_lo; `next` is the first not yet loaded.
    links: Vec<&'a Link>,
    next: usize,
    /// Loaded entries of the current group, in (seq, ord) order; `pos` the next one.
    buf: Vec<SegmentEntry>,
    pos: usize,
}

impl<'a> SegStream<'a> {
    fn new(cat: &'a Catalog, table_id: i32, dir: &'a [Link], lo: i64, hi: i64, markers: bool) -> SegStream<'a> {
        let mut links: Vec<&Link> = dir.iter().filter(|l| l.kind == SEGMENT && l.seq_hi > lo && l.seq_lo <= hi).collect();
        links.sort_by_key(|l| l.seq_lo);
        SegStream { cat, table_id, lo, hi, markers, links, next: 0, buf: Vec::new(), pos: 0 }
    }

    /// Load the next group of overlapping segments if the buffer is used up.
    fn fill(&mut self) {
        while self.pos >= self.buf.len() && self.next < self.links.len() {
            self.buf.clear();
            self.pos = 0;
            let mut upto = self.links[self.next].seq_hi;
            while self.next < self.links.len() && self.links[self.next].seq_lo <= upto {
                let l = self.links[self.next];
                upto = upto.max(l.seq_hi);
                let es = entries(self.cat, self.table_id, l);
                self.buf.extend(
                    es.iter().filter(|e| e.seq > self.lo && e.seq <= self.hi && (self.markers || e.op != b'm')).cloned(),
                );
                self.next += 1;
            }
            self.buf.sort_by_key(|e| (e.seq, e.ord));
        }
    }

    /// The next compacted entry if it sorts before (seq, ord).
    fn peek_before(&mut self, seq: i64, ord: i32) -> Option<&SegmentEntry> {
        self.fill();
        self.buf.get(self.pos).filter(|e| (e.seq, e.ord) < (seq, ord))
    }

    fn advance(&mut self) {
        self.pos += 1;
    }

    /// Skip a compacted entry equal to (seq, ord) — the same event seen in both places.
    fn skip_equal(&mut self, seq: i64, ord: i32) {
        self.fill();
        if self.buf.get(self.pos).is_some_and(|e| (e.seq, e.ord) == (seq, ord)) {
            self.pos += 1;
        }
    }
}

/// Append a link to the table's chain (caller holds `lock_chain`): returns its hash.
pub fn append_link(cat: &Catalog, table_id: i32, seg_id: i64, kind: u8, info: Option<&driftdb_core::SegmentInfo>, prev_hash: &[u8], data: &[u8]) -> Vec<u8> {
    let mut prev = [0u8; 32];
    prev.copy_from_slice(prev_hash);
    let hash = driftdb_core::chain_hash(&prev, data).to_vec();
    let mut w = catalog::Writer::open(cat.segments);
    let mut tmp = pgrx::PgMemoryContexts::new("driftdb segment write");
    // SAFETY: datums built in a short-lived context for one insert of driftdb.segments' 17
    // columns, in table order (sql/bootstrap.sql).
    unsafe {
        tmp.switch_to(|_| {
            let now = pg_sys::GetCurrentTransactionStartTimestamp();
            let (seq_lo, seq_hi, key_lo, key_hi, t_lo, t_hi, n, raw) = match info {
                Some(i) => (Some(i.seq_lo), Some(i.seq_hi), Some(i.key_lo.as_slice()), Some(i.key_hi.as_slice()), Some(i.time_lo), Some(i.time_hi), i.nevents as i32, i.raw_len as i32),
                None => (None, None, None, None, None, None, 0, data.len() as i32),
            };
            let d = |o: Option<i64>| o.map_or(pg_sys::Datum::from(0usize), pg_sys::Datum::from);
            let b = |o: Option<&[u8]>| o.map_or(pg_sys::Datum::from(0usize), |s| s.into_datum().unwrap());
            let values = [
                pg_sys::Datum::from(table_id),
                pg_sys::Datum::from(seg_id),
                pg_sys::Datum::from(kind as i8),
                d(seq_lo),
                d(seq_hi),
                b(key_lo),
                b(key_hi),
                d(t_lo),
                d(t_hi),
                pg_sys::Datum::from(n),
                pg_sys::Datum::from(raw),
                pg_sys::Datum::from(now),
                prev_hash.into_datum().unwrap(),
                hash.as_slice().into_datum().unwrap(),
                data.into_datum().unwrap(),
            ];
            let count = |es: &[SegmentEntry], ops: &[u8]| es.iter().filter(|e| ops.contains(&e.op)).count() as i32;
            let (nversions, nmarkers) = match info {
                Some(_) => driftdb_core::decode_segment(data).map_or((0, 0), |es| (count(&es, b"iu"), count(&es, b"m"))),
                None => (0, 0),
            };
            let mut values: Vec<pg_sys::Datum> =
                values.into_iter().chain([pg_sys::Datum::from(nversions), pg_sys::Datum::from(nmarkers)]).collect();
            let mut nulls = [false; 17];
            for i in [3, 4, 5, 6, 7, 8] {
                nulls[i] = info.is_none();
            }
            w.insert(&mut values, &mut nulls);
        });
        tmp.reset();
    }
    hash
}

/// Delete link `seg_id` of the table (caller holds `lock_chain`).
pub fn remove_link(cat: &Catalog, table_id: i32, seg_id: i64) {
    let keys = [
        (1, pg_sys::BTEqualStrategyNumber as u16, pg_sys::F_INT4EQ, pg_sys::Datum::from(table_id)),
        (2, pg_sys::BTEqualStrategyNumber as u16, pg_sys::F_INT8EQ, pg_sys::Datum::from(seg_id)),
    ];
    // SAFETY: catalog-style delete of one driftdb.segments row by TID, as forget.rs does.
    unsafe {
        catalog::scan(cat.segments, cat.segments_pkey, &keys, catalog::snapshot_self(), Order::Any, pg_sys::RowExclusiveLock, |tup, rel| {
            pg_sys::simple_heap_delete(rel, &mut (*tup).t_self);
            false
        });
    }
}

/// Hex of a hash, for records and messages.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
