//! `driftdb.compact(regclass, older_than interval)`: pack a table's cold events into segments.
//!
//! Compactable events are row events with an identity key (`i`, `u`, `d` and the `m` markers)
//! whose seq is settled, at most the newest seq committed before `now() - older_than`
//! (default `driftdb.compact_min_age`), and above the table's `compacted_upto`. TRUNCATE and
//! schema events (a handful per table, read on every AS OF) and events without a key stay in
//! `driftdb.events`; so do recent events, individually addressable by key and seq.
//!
//! The events are read in seq order in chunks of about `CHUNK_EVENTS`; each chunk is sorted by
//! (key, seq, ord) and cut into segments of about `driftdb.segment_size` raw bytes (a key's
//! events of one chunk stay in one segment), each appended to the table's chain; the chunk's
//! event rows are deleted. All of it is one transaction: a crash or an ERROR leaves the events
//! where they were, a commit moves them all. Writers are never blocked (no lock on the table
//! itself; new events have higher seqs); readers see the events in exactly one place (see
//! `segments` on the chain lock).
use driftdb_core::{SegmentBuilder, SegmentEntry};
use pgrx::prelude::*;
use pgrx::{pg_sys, GucContext, GucFlags, GucRegistry, GucSetting};

use super::{append_link, head_seg_id, lock_chain, seal_chain, Link};
use crate::history::catalog::{self, Catalog, Order};
use crate::history::packs;
use crate::timetravel::engine::{self, Point};
use crate::timetravel::reader;

/// `driftdb.compact_min_age` (seconds): events younger than this stay uncompacted by default.
pub static MIN_AGE: GucSetting<i32> = GucSetting::<i32>::new(3600);
/// `driftdb.segment_size` (bytes): target uncompressed size of one segment.
pub static SEGMENT_SIZE: GucSetting<i32> = GucSetting::<i32>::new(64 * 1024);
/// Events read before a chunk is sorted and written.
const CHUNK_EVENTS: usize = 200_000;

pub fn init() {
    GucRegistry::define_int_guc(
        c"driftdb.compact_min_age",
        c"driftdb.compact() and the maintenance worker leave events younger than this uncompacted.",
        c"Recent events stay individually addressable by key and seq; older ones are packed into compressed segments.",
        &MIN_AGE,
        0,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"driftdb.segment_size",
        c"Target uncompressed size of one compacted event segment.",
        c"Smaller segments make key lookups in compacted history cheaper, larger ones compress better.",
        &SEGMENT_SIZE,
        4096,
        64 * 1024 * 1024,
        GucContext::Userset,
        GucFlags::UNIT_BYTE,
    );
}

/// What one compaction did.
#[derive(Default, Debug)]
pub struct Outcome {
    pub segments: i32,
    pub events: i64,
    pub raw_bytes: i64,
    pub stored_bytes: i64,
    pub seq_lo: Option<i64>,
    pub seq_hi: Option<i64>,
}

/// Reports progress with NOTICEs at most every few seconds.
pub struct Progress {
    what: String,
    started: std::time::Instant,
    last: std::time::Instant,
}

impl Progress {
    pub fn new(what: String) -> Progress {
        let now = std::time::Instant::now();
        Progress { what, started: now, last: now }
    }

    /// `done` of `total` (a fraction of the work), and a note.
    pub fn tick(&mut self, done: f64, note: impl FnOnce() -> String) {
        if self.last.elapsed().as_secs_f64() >= 2.0 {
            self.last = std::time::Instant::now();
            notice!(
                "{}: {:.0}% after {:.0} s ({})",
                self.what,
                (done * 100.0).clamp(0.0, 100.0),
                self.started.elapsed().as_secs_f64(),
                note()
            );
        }
    }
}

/// Compact table `relid`'s events with seq ≤ the newest settled seq committed at or before
/// `before` (µs since 2000-01-01). Packs nothing unless at least `min_events` would move.
pub fn compact_table(cat: &Catalog, relid: pg_sys::Oid, before: i64, min_events: usize) -> Outcome {
    let mut out = Outcome::default();
    let Some(info) = reader::table_info(cat, relid) else { return out };
    let table_id = info.table_id;
    lock_chain(cat, table_id);
    // re-read after the lock: another compaction may have committed since the cache was filled
    let lo = reader::table_info(cat, relid).map_or(0, |i| i.compacted_upto);
    let upto = engine::resolve(cat, Point::Time(before));
    if upto <= lo {
        return out;
    }
    // SAFETY: relation name lookup for messages.
    let name = unsafe { crate::timetravel::srf::rel_name(relid) };
    let mut progress = Progress::new(format!("driftdb.compact({name})"));
    let mut chunk: Vec<SegmentEntry> = Vec::new();
    let mut tids: Vec<pg_sys::ItemPointerData> = Vec::new();
    let mut head = head_seg_id(cat, table_id);
    let mut prev_hash = head_hash(cat, table_id, head);
    let target = SEGMENT_SIZE.get().max(4096) as usize;
    let keys = [
        (1, pg_sys::BTEqualStrategyNumber as u16, pg_sys::F_INT4EQ, pg_sys::Datum::from(table_id)),
        (2, pg_sys::BTGreaterStrategyNumber as u16, pg_sys::F_INT8GT, pg_sys::Datum::from(lo)),
        (2, pg_sys::BTLessEqualStrategyNumber as u16, pg_sys::F_INT8LE, pg_sys::Datum::from(upto)),
    ];
    let want = min_events.max(1);
    let waiting = count_compactable(cat, &keys, want);
    if waiting < want && waiting + packs::count(cat, table_id, lo, upto, want - waiting) < want {
        return out;
    }
    // bulk transactions' packed events, added to the chunk at their place in seq order
    let bulk = packs::seqs(cat, table_id, lo, upto, catalog::snapshot_self());
    let mut next_bulk = 0usize;
    let mut pack_tids: Vec<pg_sys::ItemPointerData> = Vec::new();
    let add_packs = |s: i64, chunk: &mut Vec<SegmentEntry>, pack_tids: &mut Vec<pg_sys::ItemPointerData>| {
        packs::for_seq(cat, table_id, s, catalog::snapshot_self(), pg_sys::AccessShareLock, |row| {
            let p = row.pack();
            chunk.extend(p.entries().map(|e| SegmentEntry { seq: s, ord: e.ord, op: e.op, key: e.key.to_vec(), frame: e.frame().into_owned() }));
            pack_tids.push(row.tid);
            true
        });
    };
    // Write a chunk as segments and delete its event rows (and packs).
    let mut flush = |entries: &mut Vec<SegmentEntry>, tids: &mut Vec<pg_sys::ItemPointerData>, pack_tids: &mut Vec<pg_sys::ItemPointerData>, out: &mut Outcome| {
        entries.sort_by(|a, b| (&a.key, a.seq, a.ord).cmp(&(&b.key, b.seq, b.ord)));
        let mut builder = SegmentBuilder::new(target);
        let mut segs = Vec::new();
        for e in entries.drain(..) {
            segs.extend(builder.push(&e).unwrap_or_else(|err| reader::corrupted(format!("compacting seq {}: {err}", e.seq))));
        }
        segs.extend(builder.finish());
        for (data, info) in segs {
            head += 1;
            prev_hash = append_link(cat, table_id, head, super::SEGMENT, Some(&info), &prev_hash, &data);
            out.segments += 1;
            out.events += info.nevents as i64; // rows moved (moved-key markers included)
            out.raw_bytes += info.raw_len as i64;
            out.stored_bytes += data.len() as i64;
            out.seq_lo = Some(out.seq_lo.map_or(info.seq_lo, |s: i64| s.min(info.seq_lo)));
            out.seq_hi = Some(out.seq_hi.map_or(info.seq_hi, |s: i64| s.max(info.seq_hi)));
        }
        // SAFETY: deleting the event rows just packed, by TID, in this transaction (the scan
        // that found them has moved past them).
        unsafe {
            let rel = pg_sys::table_open(cat.events, pg_sys::RowExclusiveLock as i32);
            for t in tids.iter_mut() {
                pg_sys::simple_heap_delete(rel, t);
            }
            pg_sys::table_close(rel, pg_sys::NoLock as i32);
        }
        tids.clear();
        packs::delete(cat, pack_tids);
        pack_tids.clear();
    };
    let mut tmp = pgrx::PgMemoryContexts::new("driftdb compaction scan");
    let mut last_seq = lo;
    let mut total = 0usize;
    // The compactable events in seq order, a chunk at a time (cut only between seqs).
    // SAFETY: catalog-style read of driftdb.events; frames are copied out of the per-row context.
    unsafe {
        catalog::scan(cat.events, cat.events_pkey, &keys, catalog::snapshot_self(), Order::Forward, pg_sys::AccessShareLock, |tup, rel| {
            let seq = catalog::attr(tup, rel, 2).map_or(0, |d| d.value() as i64);
            while next_bulk < bulk.len() && bulk[next_bulk] < seq {
                let s = bulk[next_bulk];
                if s != last_seq && chunk.len() >= CHUNK_EVENTS {
                    flush(&mut chunk, &mut tids, &mut pack_tids, &mut out);
                }
                add_packs(s, &mut chunk, &mut pack_tids);
                last_seq = s;
                next_bulk += 1;
            }
            let op = catalog::attr(tup, rel, 4).map_or(0, |d| d.value() as u8);
            if !matches!(op, b'i' | b'u' | b'd' | b'm') {
                return true;
            }
            let Some(key) = catalog::attr(tup, rel, 5) else { return true };
            if seq != last_seq && chunk.len() >= CHUNK_EVENTS {
                flush(&mut chunk, &mut tids, &mut pack_tids, &mut out);
                progress.tick((seq - lo) as f64 / (upto - lo) as f64, || format!("{total} events, {} segments", out.segments));
            }
            last_seq = seq;
            let ord = catalog::attr(tup, rel, 3).map_or(0, |d| d.value() as i32);
            let entry = tmp.switch_to(|_| SegmentEntry {
                seq,
                ord,
                op,
                key: super::bytea_of(Some(key)),
                frame: super::bytea_of(catalog::attr(tup, rel, 6)),
            });
            tmp.reset();
            chunk.push(entry);
            tids.push((*tup).t_self);
            total += 1;
            true
        });
    }
    for &s in &bulk[next_bulk..] {
        if s != last_seq && chunk.len() >= CHUNK_EVENTS {
            flush(&mut chunk, &mut tids, &mut pack_tids, &mut out);
        }
        add_packs(s, &mut chunk, &mut pack_tids);
        last_seq = s;
    }
    if !chunk.is_empty() {
        flush(&mut chunk, &mut tids, &mut pack_tids, &mut out);
    }
    // SAFETY: timestamps of this transaction; relcache invalidation of the user table makes
    // every backend drop its cached registration (compacted_upto) and directory.
    unsafe {
        catalog::update_table_row(
            cat,
            table_id,
            &[
                (8, pg_sys::Datum::from(upto), false),
                (9, pg_sys::Datum::from(pg_sys::GetCurrentTransactionStartTimestamp()), false),
            ],
        );
        seal_chain(cat, table_id);
        pg_sys::CacheInvalidateRelcacheByRelid(relid);
    }
    out
}

/// How many compactable events the scan keys select, counting up to `limit`.
fn count_compactable(cat: &Catalog, keys: &[(i16, u16, u32, pg_sys::Datum)], limit: usize) -> usize {
    let mut n = 0;
    // SAFETY: catalog-style read of driftdb.events (op and key columns only).
    unsafe {
        catalog::scan(cat.events, cat.events_pkey, keys, catalog::snapshot_self(), Order::Forward, pg_sys::AccessShareLock, |tup, rel| {
            let op = catalog::attr(tup, rel, 4).map_or(0, |d| d.value() as u8);
            if matches!(op, b'i' | b'u' | b'd' | b'm') && catalog::attr(tup, rel, 5).is_some() {
                n += 1;
            }
            n < limit
        });
    }
    n
}

/// The hash of link `head` (32 zero bytes when the chain is empty).
pub fn head_hash(cat: &Catalog, table_id: i32, head: i64) -> Vec<u8> {
    if head == 0 {
        return driftdb_core::GENESIS.to_vec();
    }
    let dir = super::directory(cat, table_id);
    dir.iter().rev().find(|l: &&Link| l.seg_id == head).map(|l| l.hash.clone()).unwrap_or_else(|| driftdb_core::GENESIS.to_vec())
}

/// Microseconds since 2000-01-01 of `now() - secs`.
pub fn now_minus(secs: i64) -> i64 {
    // SAFETY: reading this transaction's start time.
    let now = unsafe { pg_sys::GetCurrentTransactionStartTimestamp() };
    now.saturating_sub(secs.saturating_mul(1_000_000))
}

#[pg_extern(name = "_compact", volatile)]
fn compact_sql(
    table: pgrx::PgRelation,
    before: Option<pgrx::datum::TimestampWithTimeZone>,
) -> TableIterator<
    'static,
    (
        name!(segments, i32),
        name!(events, i64),
        name!(raw_bytes, i64),
        name!(stored_bytes, i64),
        name!(seq_lo, Option<i64>),
        name!(seq_hi, Option<i64>),
    ),
> {
    crate::api::require_driftdb_table(&table);
    crate::api::require_owner(&table, "compact its history");
    let cat = Catalog::require();
    let before = before.map(|t| t.into_inner()).unwrap_or_else(|| now_minus(MIN_AGE.get() as i64));
    let o = compact_table(&cat, table.oid(), before, 1);
    TableIterator::once((o.segments, o.events, o.raw_bytes, o.stored_bytes, o.seq_lo, o.seq_hi))
}

extension_sql!(
    r#"
CREATE FUNCTION driftdb.compact(t regclass, older_than interval DEFAULT NULL)
RETURNS TABLE (segments integer, events bigint, raw_bytes bigint, stored_bytes bigint, seq_lo bigint, seq_hi bigint)
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$ SELECT * FROM driftdb._compact(t, CASE WHEN older_than IS NULL THEN NULL ELSE pg_catalog.now() - older_than END) $$;
COMMENT ON FUNCTION driftdb.compact(regclass, interval) IS 'pack the table''s events older than older_than (default driftdb.compact_min_age) into compressed, hash-chained segments; table owner only';
"#,
    name = "compact_sql",
    requires = [compact_sql]
);
