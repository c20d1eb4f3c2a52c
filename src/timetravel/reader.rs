//! Reading history back: a table's registration, its events (all of them in seq order, or one
//! key's, newest first), its TRUNCATE/schema events, its snapshots, and who committed a seq.
//!
//! Everything is read with SnapshotSelf (latest committed state, no predicate locks) and
//! bounded by a seq that `point.rs` has made sure is *settled*: every transaction with a seq at
//! or below it has committed or rolled back, so what is visible now below the bound is all
//! there will ever be (AS OF N is repeatable).
//!
//! Index use (sql/bootstrap.sql): `events_pkey (table_id, seq, ord)` for seq-ordered scans,
//! `events_key (table_id, key, seq)` for one key's events and — with `key IS NULL` — for the
//! TRUNCATE and schema events, `snapshots_pkey (table_id, seq, block)` for snapshots.
use std::cell::RefCell;
use std::collections::HashMap;

use driftdb_core::{decode_frame, Event, Op, Row, Value};
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::error::DriftError;
use crate::history::catalog::{self, Catalog, Order};
use crate::history::packs;

/// A table's row in `driftdb.tables`.
#[derive(Clone, Debug)]
pub struct TableInfo {
    pub table_id: i32,
    pub registered_seq: i64,
    pub history_start_seq: i64,
    /// Identity columns the events' keys are recorded under since `keyed_from` (None: FULL or
    /// none).
    pub key_attnums: Option<Vec<u16>>,
    /// False: key lookups replay (set by earlier builds at an identity change).
    pub keys_stable: bool,
    /// The seq from which events are keyed by `key_attnums` (0: since registration; else the
    /// first commit after an identity change).
    pub keyed_from: i64,
    /// Every compactable event with seq ≤ this is in a segment.
    pub compacted_upto: i64,
    /// `history_start_seq` is a purge horizon (not the seq of a conversion).
    pub history_purged: bool,
}

/// The TRUNCATE and schema events of a table (key NULL in `driftdb.events`), in seq order.
#[derive(Clone, Debug, Default)]
pub struct Marks {
    /// (seq, committed_at) of every TRUNCATE (from `truncates_from` on).
    pub truncates: Vec<(i64, i64)>,
    /// Value a column added later reads as in older rows, per attnum (latest schema event).
    pub missing: HashMap<u16, Value>,
    /// Every seq ≤ this was settled when the marks were read.
    pub complete_upto: i64,
    /// `truncates` holds the TRUNCATEs from this seq on (0: all): a table's `keyed_from`,
    /// whose readers (key lookups after an identity change, replays) use no older ones.
    pub truncates_from: i64,
}

thread_local! {
    /// relid → (registration, marks), dropped on the relation's relcache invalidation (which
    /// TRUNCATE, ALTER TABLE and identity changes all send).
    static CACHE: RefCell<HashMap<pg_sys::Oid, (TableInfo, Option<Marks>)>> = RefCell::new(HashMap::new());
    /// relid → the table's identity now (changes send a relcache invalidation).
    static IDENTITY: RefCell<HashMap<pg_sys::Oid, crate::history::identity::Identity>> = RefCell::new(HashMap::new());
    /// relid → a row decoder not in use (taken by a scan, given back when it ends).
    static DECODERS: RefCell<HashMap<pg_sys::Oid, crate::history::decode::RowDecoder>> = RefCell::new(HashMap::new());
}

/// The identity of open relation `rel`, cached.
///
/// # Safety
/// `rel` must be a valid open relation.
pub unsafe fn identity_of(rel: pg_sys::Relation) -> crate::history::identity::Identity {
    let relid = (*rel).rd_id;
    if let Some(i) = IDENTITY.with(|c| c.borrow().get(&relid).cloned()) {
        return i;
    }
    let i = crate::history::identity::of(rel);
    IDENTITY.with(|c| c.borrow_mut().insert(relid, i.clone()));
    i
}

/// A decoder for `relid`'s rows: a cached one, or `make()`. Give it back with `put_decoder`.
pub fn take_decoder(relid: pg_sys::Oid, make: impl FnOnce() -> crate::history::decode::RowDecoder) -> crate::history::decode::RowDecoder {
    DECODERS.with(|c| c.borrow_mut().remove(&relid)).unwrap_or_else(make)
}

pub fn put_decoder(relid: pg_sys::Oid, d: crate::history::decode::RowDecoder) {
    DECODERS.with(|c| c.borrow_mut().insert(relid, d));
}

#[pg_guard]
unsafe extern "C-unwind" fn relcache_callback(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    super::planner::forget(relid);
    CACHE.with(|c| forget_in(&mut c.borrow_mut(), relid));
    IDENTITY.with(|c| forget_in(&mut c.borrow_mut(), relid));
    DECODERS.with(|c| forget_in(&mut c.borrow_mut(), relid));
}

/// Drop `relid`'s entry (InvalidOid: every entry), as a relcache invalidation asks.
pub fn forget_in<V>(map: &mut HashMap<pg_sys::Oid, V>, relid: pg_sys::Oid) {
    if relid == pg_sys::InvalidOid {
        map.clear();
    } else {
        map.remove(&relid);
    }
}

pub fn register_callbacks() {
    // SAFETY: registering a process-lifetime callback from _PG_init.
    unsafe { pg_sys::CacheRegisterRelcacheCallback(Some(relcache_callback), pg_sys::Datum::from(0usize)) };
}

pub fn corrupted(what: String) -> ! {
    DriftError::new(PgSqlErrorCode::ERRCODE_DATA_CORRUPTED, "driftdb history is damaged")
        .detail(what)
        .hint("Run SELECT * FROM driftdb.verify('<table>') for a full check.")
        .raise()
}

pub fn decode(frame: &[u8], seq: i64) -> Event {
    decode_frame(frame).unwrap_or_else(|e| corrupted(format!("event frame of seq {seq}: {e}")))
}

/// The registration of `relid`, if it ever recorded a change.
pub fn table_info(cat: &Catalog, relid: pg_sys::Oid) -> Option<TableInfo> {
    if let Some(i) = CACHE.with(|c| c.borrow().get(&relid).map(|e| e.0.clone())) {
        return Some(i);
    }
    let mut info = None;
    // SAFETY: catalog-style read of driftdb.tables (column 2 = relid).
    unsafe {
        let keys = [(2, pg_sys::BTEqualStrategyNumber as u16, pg_sys::F_OIDEQ, pg_sys::Datum::from(relid))];
        catalog::scan(cat.tables, cat.tables_relid_idx, &keys, catalog::snapshot_self(), Order::Any, pg_sys::AccessShareLock, |tup, rel| {
            let get = |n| catalog::attr(tup, rel, n);
            info = Some(TableInfo {
                table_id: get(1).map_or(0, |d| d.value() as i32),
                registered_seq: get(3).map_or(0, |d| d.value() as i64),
                history_start_seq: get(4).map_or(0, |d| d.value() as i64),
                key_attnums: get(5)
                    .and_then(|d| Vec::<i16>::from_datum(d, false))
                    .filter(|v| !v.is_empty())
                    .map(|v| v.into_iter().map(|a| a as u16).collect()),
                keys_stable: get(6).is_none_or(|d| d.value() != 0),
                compacted_upto: get(8).map_or(0, |d| d.value() as i64),
                history_purged: get(10).is_some_and(|d| d.value() != 0),
                keyed_from: get(11).map_or(0, |d| d.value() as i64),
            });
            false
        });
    }
    if let Some(i) = &info {
        CACHE.with(|c| c.borrow_mut().insert(relid, (i.clone(), None)));
    }
    info
}

/// TRUNCATE and schema events of the table, complete at least up to `settled`.
///
/// A table whose identity changed (`keyed_from` > 0) may hold many key-less events before the
/// change — rows loaded before its primary key existed, which compaction leaves in
/// `driftdb.events` — and this cache is dropped by every relcache invalidation of the table
/// (each VACUUM and ANALYZE sends one). So for such a table only the events from `keyed_from`
/// on are read here, and its TRUNCATEs are kept from there (`truncates_from`: its readers use
/// none older); the newest schema event before the change is looked up once per backend
/// (`SCHEMA_BELOW`), since history before `keyed_from` no longer changes.
pub fn marks(cat: &Catalog, relid: pg_sys::Oid, info: &TableInfo, settled: i64) -> Marks {
    if let Some(m) = CACHE.with(|c| c.borrow().get(&relid).and_then(|e| e.1.clone())) {
        if m.complete_upto >= settled {
            return m;
        }
    }
    let from = info.keyed_from;
    let mut m = Marks { complete_upto: settled, truncates_from: from, ..Marks::default() };
    let mut schema: Option<Event> = None;
    // SAFETY: catalog-style read of driftdb.events through events_key with key IS NULL.
    unsafe {
        null_key_scan_from(cat, info.table_id, if from > 0 { from } else { i64::MIN }, |seq, op, frame| {
            match op {
                b't' => m.truncates.push((seq, decode(frame, seq).committed_at)),
                b's' => schema = Some(decode(frame, seq)),
                _ => {}
            }
            true
        });
    }
    m.missing = match schema {
        Some(e) => missing_of(e),
        None if from > 0 => schema_below(cat, info, from),
        None => HashMap::new(),
    };
    CACHE.with(|c| {
        if let Some(e) = c.borrow_mut().get_mut(&relid) {
            e.1 = Some(m.clone());
        }
    });
    m
}

/// The missing values (`Marks::missing`) a schema event records.
fn missing_of(e: Event) -> HashMap<u16, Value> {
    let mut missing = HashMap::new();
    for c in e.schema.map(|ch| ch.columns).unwrap_or_default() {
        if let (false, Some(v)) = (c.dropped, c.missing) {
            missing.insert(c.attnum, v);
        }
    }
    missing
}

thread_local! {
    /// (table_id, keyed_from, history_start_seq) → the missing values of the table's newest
    /// schema event before `keyed_from` (empty: none). Not dropped on relcache invalidations:
    /// the history before `keyed_from` is fixed once the identity changed — only a purge
    /// removes from it, and a purge moves `history_start_seq`, which is part of the key.
    static SCHEMA_BELOW: RefCell<HashMap<(i32, i64, i64), HashMap<u16, Value>>> = RefCell::new(HashMap::new());
}

/// The missing values of the newest schema event with seq < `from`, once per backend.
fn schema_below(cat: &Catalog, info: &TableInfo, from: i64) -> HashMap<u16, Value> {
    let k = (info.table_id, from, info.history_start_seq);
    if let Some(m) = SCHEMA_BELOW.with(|c| c.borrow().get(&k).cloned()) {
        return m;
    }
    let mut schema: Option<Event> = None;
    // SAFETY: catalog-style read of driftdb.events through events_key with key IS NULL,
    // backwards from `from`: it stops at the first schema event.
    unsafe {
        null_key_scan_dir(cat, info.table_id, from, true, |seq, op, frame| {
            if op == b's' {
                schema = Some(decode(frame, seq));
                return false;
            }
            true
        });
    }
    let m = schema.map(missing_of).unwrap_or_default();
    SCHEMA_BELOW.with(|c| c.borrow_mut().insert(k, m.clone()));
    m
}

/// Does the table hold a row event recorded without a key (a row written while the table had
/// no row identity) at or below `upto`? Reads the key-less events up to the first such one.
pub fn keyless_rows_upto(cat: &Catalog, table_id: i32, upto: i64) -> bool {
    let mut found = false;
    // SAFETY: catalog-style read of driftdb.events through events_key with key IS NULL.
    unsafe {
        null_key_scan_from(cat, table_id, i64::MIN, |seq, op, _| {
            if seq > upto {
                return false;
            }
            found = !matches!(op, b't' | b's');
            !found
        });
    }
    found
}

/// The seqs of the table's TRUNCATEs at or after `from`, ascending, as committed now (this
/// reads `driftdb.events` afresh, unlike `marks`, whose cache is complete only up to the bound
/// it was read for). Only the key-less events from `from` on are read: rows written before a
/// table had an identity are key-less too, and may be many.
pub fn truncates_from(cat: &Catalog, table_id: i32, from: i64) -> Vec<i64> {
    let mut out = Vec::new();
    // SAFETY: catalog-style read of driftdb.events through events_key with key IS NULL.
    unsafe {
        null_key_scan_from(cat, table_id, from, |seq, op, _| {
            if op == b't' {
                out.push(seq);
            }
            true
        });
    }
    out
}

/// Events of the table with `key IS NULL` (TRUNCATE, schema, rows of tables without
/// identity) with seq >= `from`, ascending seq: `f(seq, op, frame)` until it returns false.
unsafe fn null_key_scan_from(cat: &Catalog, table_id: i32, from: i64, f: impl FnMut(i64, u8, &[u8]) -> bool) {
    null_key_scan_dir(cat, table_id, from, false, f)
}

/// The key-less events with seq >= `bound` in ascending seq, or (`below`) those with
/// seq < `bound` in descending seq.
unsafe fn null_key_scan_dir(cat: &Catalog, table_id: i32, bound: i64, below: bool, mut f: impl FnMut(i64, u8, &[u8]) -> bool) {
    let rel = pg_sys::table_open(cat.events, pg_sys::AccessShareLock as i32);
    let idx = pg_sys::index_open(cat.events_key, pg_sys::AccessShareLock as i32);
    let mut sk: [pg_sys::ScanKeyData; 3] = std::mem::zeroed();
    pg_sys::ScanKeyInit(&mut sk[0], 1, pg_sys::BTEqualStrategyNumber as u16, pg_sys::Oid::from(pg_sys::F_INT4EQ), pg_sys::Datum::from(table_id));
    pg_sys::ScanKeyEntryInitialize(
        &mut sk[1],
        (pg_sys::SK_ISNULL | pg_sys::SK_SEARCHNULL) as i32,
        5, // heap column numbers (systable scans map them to the index's): key
        0, // InvalidStrategy
        pg_sys::InvalidOid,
        pg_sys::InvalidOid,
        pg_sys::InvalidOid.into(),
        pg_sys::Datum::from(0usize),
    );
    // seq (heap column 2) >= bound, or < bound
    let (strategy, proc_, dir) = if below {
        (pg_sys::BTLessStrategyNumber, pg_sys::F_INT8LT, pg_sys::ScanDirection::BackwardScanDirection)
    } else {
        (pg_sys::BTGreaterEqualStrategyNumber, pg_sys::F_INT8GE, pg_sys::ScanDirection::ForwardScanDirection)
    };
    pg_sys::ScanKeyInit(&mut sk[2], 2, strategy as u16, pg_sys::Oid::from(proc_), pg_sys::Datum::from(bound));
    let scan = pg_sys::systable_beginscan_ordered(rel, idx, catalog::snapshot_self(), 3, sk.as_mut_ptr());
    loop {
        let tup = pg_sys::systable_getnext_ordered(scan, dir);
        if tup.is_null() {
            break;
        }
        let (seq, op, frame) = event_cols(tup, rel);
        if !f(seq, op, frame) {
            break;
        }
    }
    pg_sys::systable_endscan_ordered(scan);
    pg_sys::index_close(idx, pg_sys::AccessShareLock as i32);
    pg_sys::table_close(rel, pg_sys::NoLock as i32);
}

/// (seq, op, frame bytes) of an events tuple; the frame borrows detoasted memory of the
/// current context.
unsafe fn event_cols<'a>(tup: pg_sys::HeapTuple, rel: pg_sys::Relation) -> (i64, u8, &'a [u8]) {
    let seq = catalog::attr(tup, rel, 2).map_or(0, |d| d.value() as i64);
    let op = catalog::attr(tup, rel, 4).map_or(0, |d| d.value() as u8);
    let frame = catalog::attr(tup, rel, 6).map(|d| {
        let v = pg_sys::pg_detoast_datum_packed(d.cast_mut_ptr());
        std::slice::from_raw_parts(pgrx::vardata_any(v) as *const u8, pgrx::varsize_any_exhdr(v))
    });
    (seq, op, frame.unwrap_or(&[]))
}

/// Row events (not markers) of the table with `lo < seq <= hi`, ascending — from the events
/// table and the compacted segments: `f(event)` until it returns false.
pub fn events_between(cat: &Catalog, table_id: i32, lo: i64, hi: i64, mut f: impl FnMut(Event) -> bool) {
    crate::segments::for_each_event(cat, table_id, lo, hi, catalog::snapshot_self(), false, |seq, _, _, _, frame| f(decode(frame, seq)));
}

/// One key's events (including 'm' markers: the key moved away) with `seq <= hi`, newest
/// first: `f(seq, op, event)` until it returns false. Recent events come from the events
/// table (`events_key`), older ones from the compacted segments — read after the events table,
/// so that a compaction committing in between shows its events there.
pub fn key_events_desc(cat: &Catalog, table_id: i32, key: &[u8], hi: i64, f: impl FnMut(i64, u8, Event) -> bool) {
    key_rows_desc(cat, table_id, key, hi, false, decode, f)
}

/// As `key_events_desc`, but each event read only for its commit time and new image (None
/// for a delete or a marker): what key lookups and the versions of a key need.
pub fn key_images_desc(cat: &Catalog, table_id: i32, key: &[u8], hi: i64, f: impl FnMut(i64, u8, (i64, Option<Row>)) -> bool) {
    key_rows_desc(cat, table_id, key, hi, false, decode_image, f)
}

/// As `key_images_desc`, but only the events of the key's newest seq at or below `hi` (what
/// an AS OF key lookup needs): the read stops before looking for an older one, which for a
/// packed key would cost another pack.
pub fn key_images_newest(cat: &Catalog, table_id: i32, key: &[u8], hi: i64, f: impl FnMut(i64, u8, (i64, Option<Row>)) -> bool) {
    key_rows_desc(cat, table_id, key, hi, true, decode_image, f)
}

pub fn decode_image(frame: &[u8], seq: i64) -> (i64, Option<Row>) {
    driftdb_core::decode_new_image(frame).unwrap_or_else(|e| corrupted(format!("event frame of seq {seq}: {e}")))
}

fn key_rows_desc<T>(
    cat: &Catalog,
    table_id: i32,
    key: &[u8],
    hi: i64,
    newest_only: bool,
    decode: impl Fn(&[u8], i64) -> T,
    mut f: impl FnMut(i64, u8, T) -> bool,
) {
    let mut oldest: Option<(i64, i32)> = None;
    let mut go = true;
    // packed events of the key (bulk transactions), merged in newest first
    let mut packed = packs::KeyCursor::new(table_id, key, hi);
    let mut emit_packed = |floor: i64, oldest: &mut Option<(i64, i32)>, f: &mut dyn FnMut(i64, u8, T) -> bool| -> bool {
        // with newest_only, once anything was emitted no older pack is looked for
        while let Some((seq, entries)) = if newest_only && oldest.is_some() { None } else { packed.take_above(cat, floor) } {
            for (ord, op, frame) in entries {
                *oldest = Some(oldest.map_or((seq, ord), |o| o.min((seq, ord))));
                if !f(seq, op, decode(&frame, seq)) {
                    return false;
                }
            }
            if newest_only {
                return false; // a packed seq is newer than anything left: it is the newest
            }
        }
        true
    };
    // SAFETY: catalog-style read of driftdb.events through events_key; the key datum is a
    // bytea built in the current context.
    unsafe {
        let kd = key.into_datum().unwrap();
        // scan keys name heap columns: table_id (1), key (5), seq (2)
        let keys = [
            (1, pg_sys::BTEqualStrategyNumber as u16, pg_sys::F_INT4EQ, pg_sys::Datum::from(table_id)),
            (5, pg_sys::BTEqualStrategyNumber as u16, pg_sys::F_BYTEAEQ, kd),
            (2, pg_sys::BTLessEqualStrategyNumber as u16, pg_sys::F_INT8LE, pg_sys::Datum::from(hi)),
        ];
        catalog::scan(cat.events, cat.events_key, &keys, catalog::snapshot_self(), Order::Backward, pg_sys::AccessShareLock, |tup, rel| {
            let (seq, op, frame) = event_cols(tup, rel);
            if newest_only && oldest.is_some_and(|(s, _)| s != seq) {
                go = false; // the newest seq's events are all out
                return false;
            }
            if !emit_packed(seq, &mut oldest, &mut f) {
                go = false;
                return false;
            }
            // events of one seq come in no particular order: remember the least (seq, ord)
            let this = (seq, catalog::attr(tup, rel, 3).map_or(0, |d| d.value() as i32));
            oldest = Some(oldest.map_or(this, |o| o.min(this)));
            go = f(seq, op, decode(frame, seq));
            go
        });
    }
    if !go || (newest_only && oldest.is_some()) || !emit_packed(i64::MIN, &mut oldest, &mut f) {
        return;
    }
    crate::segments::key_entries(cat, table_id, key, hi, |seq, ord, op, frame| {
        // an event seen in both places (moved by a compaction during this read) counts once
        if oldest.is_some_and(|o| (seq, ord) >= o) {
            return true;
        }
        f(seq, op, decode(frame, seq))
    });
}

/// For every key in `[lo, hi]` (encoded keys, inclusive): its newest events with
/// `seq <= hi_seq` (markers included; all the events of that newest seq) in the events table,
/// and likewise in each compacted segment that may hold it — `f(key, seq, op, frame)`, in no
/// particular order; the caller takes, per key, the newest seq over all of them. The caller
/// holds the table's read lock (`segments::read_lock`), so no compaction commits meanwhile
/// and each event is seen once.
///
/// The events table is read through `events_key` backwards, deciding from the index tuple
/// (key, seq) alone: only each key's newest entries are fetched from the heap (an entry whose
/// row is gone, moved by an earlier compaction, gives way to the next older one).
pub fn key_range_newest(cat: &Catalog, table_id: i32, lo: &[u8], hi: &[u8], hi_seq: i64, mut f: impl FnMut(&[u8], i64, u8, &[u8])) {
    // SAFETY: an index scan of driftdb.events through events_key under AccessShareLock on
    // both; the bound datums are byteas built in the current context and outlive the scan;
    // the index tuple (xs_itup) and the fetched heap tuple are read before the next fetch,
    // which is when they become invalid; the slot, scan and relations are released below
    // (an ERROR in between releases them with the transaction's resource owner).
    unsafe {
        let heap = pg_sys::table_open(cat.events, pg_sys::AccessShareLock as i32);
        let idx = pg_sys::index_open(cat.events_key, pg_sys::AccessShareLock as i32);
        let (lod, hid) = (lo.into_datum().unwrap(), hi.into_datum().unwrap());
        // index columns: table_id (1), key (2), seq (3)
        let mut sk: [pg_sys::ScanKeyData; 4] = std::mem::zeroed();
        let init = |sk: &mut pg_sys::ScanKeyData, att: i16, strategy: u32, proc_: u32, d: pg_sys::Datum| {
            pg_sys::ScanKeyInit(sk, att, strategy as u16, pg_sys::Oid::from(proc_), d)
        };
        init(&mut sk[0], 1, pg_sys::BTEqualStrategyNumber, pg_sys::F_INT4EQ, pg_sys::Datum::from(table_id));
        init(&mut sk[1], 2, pg_sys::BTGreaterEqualStrategyNumber, pg_sys::F_BYTEAGE, lod);
        init(&mut sk[2], 2, pg_sys::BTLessEqualStrategyNumber, pg_sys::F_BYTEALE, hid);
        init(&mut sk[3], 3, pg_sys::BTLessEqualStrategyNumber, pg_sys::F_INT8LE, pg_sys::Datum::from(hi_seq));
        let scan = pg_sys::index_beginscan(heap, idx, catalog::snapshot_self(), 4, 0);
        (*scan).xs_want_itup = true;
        pg_sys::index_rescan(scan, sk.as_mut_ptr(), 4, std::ptr::null_mut(), 0);
        let slot = pg_sys::table_slot_create(heap, std::ptr::null_mut());
        // the key being read, and the seq of its newest live entry once found
        let mut key: Vec<u8> = Vec::new();
        let mut decided: Option<i64> = None;
        let mut vals = [pg_sys::Datum::from(0usize); 3];
        let mut nulls = [false; 3];
        while !pg_sys::index_getnext_tid(scan, pg_sys::ScanDirection::BackwardScanDirection).is_null() {
            pg_sys::index_deform_tuple((*scan).xs_itup, (*scan).xs_itupdesc, vals.as_mut_ptr(), nulls.as_mut_ptr());
            if nulls[1] {
                continue;
            }
            let kv = pg_sys::pg_detoast_datum_packed(vals[1].cast_mut_ptr());
            let k = std::slice::from_raw_parts(pgrx::vardata_any(kv) as *const u8, pgrx::varsize_any_exhdr(kv));
            let seq = vals[2].value() as i64;
            if k != key.as_slice() {
                key.clear();
                key.extend_from_slice(k);
                decided = None;
            }
            if decided.is_some_and(|d| seq < d) {
                continue; // an older event of a key already decided: not fetched
            }
            if !pg_sys::index_fetch_heap(scan, slot) {
                continue; // gone (compacted or purged earlier): the next older entry decides
            }
            decided = Some(seq);
            let mut should_free = false;
            let tup = pg_sys::ExecFetchSlotHeapTuple(slot, false, &mut should_free);
            let (_, op, frame) = event_cols(tup, heap);
            f(&key, seq, op, frame);
        }
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        pg_sys::index_endscan(scan);
        pg_sys::index_close(idx, pg_sys::NoLock as i32);
        pg_sys::table_close(heap, pg_sys::NoLock as i32);
    }
    packs::range(cat, table_id, lo, hi, hi_seq, &mut f);
    crate::segments::range_newest(cat, table_id, lo, hi, hi_seq, |e| f(&e.key, e.seq, e.op, &e.frame));
}

/// The newest snapshot of the table with seq ≤ `hi`: (seq, number of blocks).
pub fn latest_snapshot(cat: &Catalog, table_id: i32, hi: i64) -> Option<i64> {
    let mut found = None;
    let keys = [
        (1, pg_sys::BTEqualStrategyNumber as u16, pg_sys::F_INT4EQ, pg_sys::Datum::from(table_id)),
        (2, pg_sys::BTLessEqualStrategyNumber as u16, pg_sys::F_INT8LE, pg_sys::Datum::from(hi)),
    ];
    // SAFETY: catalog-style read of driftdb.snapshots.
    unsafe {
        catalog::scan(cat.snapshots, cat.snapshots_pkey, &keys, catalog::snapshot_self(), Order::Backward, pg_sys::AccessShareLock, |tup, rel| {
            found = catalog::attr(tup, rel, 2).map(|d| d.value() as i64);
            false
        });
    }
    found
}

/// Decode one stored snapshot block.
pub fn decode_block(bytes: &[u8], seq: i64) -> Vec<Row> {
    driftdb_core::decode_snapshot_block(bytes).unwrap_or_else(|e| corrupted(format!("snapshot block of seq {seq}: {e}")))
}

/// The stored (compressed) blocks of snapshot (table_id, seq), in order — for readers that
/// decode one block at a time.
pub fn snapshot_blocks(cat: &Catalog, table_id: i32, seq: i64) -> Vec<Vec<u8>> {
    let keys = [
        (1, pg_sys::BTEqualStrategyNumber as u16, pg_sys::F_INT4EQ, pg_sys::Datum::from(table_id)),
        (2, pg_sys::BTEqualStrategyNumber as u16, pg_sys::F_INT8EQ, pg_sys::Datum::from(seq)),
    ];
    let mut out = Vec::new();
    let mut tmp = pgrx::PgMemoryContexts::new("driftdb snapshot read");
    // SAFETY: catalog-style read of driftdb.snapshots (column 5 = data).
    unsafe {
        catalog::scan(cat.snapshots, cat.snapshots_pkey, &keys, catalog::snapshot_self(), Order::Forward, pg_sys::AccessShareLock, |tup, rel| {
            tmp.switch_to(|_| {
                let d = catalog::attr(tup, rel, 5).unwrap_or_else(|| corrupted(format!("snapshot {seq}: NULL block")));
                let v = pg_sys::pg_detoast_datum_packed(d.cast_mut_ptr());
                out.push(std::slice::from_raw_parts(pgrx::vardata_any(v) as *const u8, pgrx::varsize_any_exhdr(v)).to_vec());
            });
            tmp.reset();
            true
        });
    }
    out
}

/// Who committed each seq (`driftdb.commits.committed_by`), memoised per call site.
pub struct CommitterCache<'a> {
    cat: &'a Catalog,
    by: HashMap<i64, String>,
}

impl<'a> CommitterCache<'a> {
    pub fn new(cat: &'a Catalog) -> Self {
        CommitterCache { cat, by: HashMap::new() }
    }

    pub fn get(&mut self, seq: i64) -> String {
        if let Some(s) = self.by.get(&seq) {
            return s.clone();
        }
        let mut who = String::new();
        let keys = [(1, pg_sys::BTEqualStrategyNumber as u16, pg_sys::F_INT8EQ, pg_sys::Datum::from(seq))];
        // SAFETY: catalog-style read of driftdb.commits (column 4 = committed_by).
        unsafe {
            catalog::scan(self.cat.commits, self.cat.commits_pkey, &keys, catalog::snapshot_self(), Order::Any, pg_sys::AccessShareLock, |tup, rel| {
                who = catalog::attr(tup, rel, 4).and_then(|d| String::from_datum(d, false)).unwrap_or_default();
                false
            });
        }
        self.by.insert(seq, who.clone());
        who
    }
}

/// Ops as stored in the events table.
pub fn op_of(c: u8) -> Option<Op> {
    Some(match c {
        b'i' => Op::Insert,
        b'u' => Op::Update,
        b'd' => Op::Delete,
        b't' => Op::Truncate,
        b's' => Op::Schema,
        _ => return None,
    })
}
