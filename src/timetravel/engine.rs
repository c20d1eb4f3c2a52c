//! The time-travel engine: resolve an AS OF point to a settled bound, then produce the rows
//! of a table at that bound (snapshot + replay), one key's row at that bound (the key index),
//! every version (all, or one key's), or every change — as `Row` images, which the callers
//! (SQL functions in `srf.rs`, the custom scan in `scan.rs`) turn into tuples.
//!
//! Replay keys rows by the table's *current* identity projected from the images, matching
//! UPDATE/DELETE by their recorded old image (`driftdb_core::ImageReplay`), so history
//! recorded before a primary key existed replays exactly like the doctor's check.
use std::cell::Cell;

use driftdb_core::{encode_key, ImageReplay, Op, Row, Value, Version, VersionBuilder};
use pgrx::pg_sys;
use pgrx::prelude::*;

use super::reader::{self, Marks, TableInfo};
use crate::error::DriftError;
use crate::history::catalog::{self, Catalog, Order};
use crate::history::identity::Identity;
use crate::history::settle;

/// What the caller asked for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Point {
    /// AS OF @seq:N
    Seq(i64),
    /// AS OF a time, µs since 2000-01-01 UTC
    Time(i64),
}

/// A settled bound: events with `seq <= seq` and (when `time` is set) `committed_at <= time`
/// are visible. Every seq ≤ `seq` is settled.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bound {
    pub seq: i64,
    pub time: Option<i64>,
}

impl Bound {
    pub fn sees(&self, seq: i64, committed_at: i64) -> bool {
        seq <= self.seq && self.time.is_none_or(|t| committed_at <= t)
    }
}

thread_local! {
    /// The newest settled seq this backend has seen, and its commit time. Settled never goes
    /// back, so a point at or below it needs no waiting and no lookup.
    static SETTLED: Cell<(i64, i64)> = const { Cell::new((0, i64::MIN)) };
    /// A seq up to which every seq is known settled (not necessarily a committed one).
    static SETTLED_UPTO: Cell<i64> = const { Cell::new(0) };
    /// driftdb.commits' OID the two caches above belong to.
    static CACHE_FOR: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
}

fn commit_time(cat: &Catalog, seq: i64) -> i64 {
    let mut t = i64::MIN;
    let keys = [(1, pg_sys::BTEqualStrategyNumber as u16, pg_sys::F_INT8EQ, pg_sys::Datum::from(seq))];
    // SAFETY: catalog-style read of driftdb.commits.
    unsafe {
        catalog::scan(cat.commits, cat.commits_pkey, &keys, catalog::snapshot_self(), Order::Any, pg_sys::AccessShareLock, |tup, rel| {
            t = catalog::attr(tup, rel, 2).map_or(i64::MIN, |d| d.value() as i64);
            false
        });
    }
    t
}

fn refresh_settled(cat: &Catalog) -> (i64, i64) {
    let s = settle::settled_seq(cat);
    let v = if s == 0 { (0, i64::MIN) } else { (s, commit_time(cat, s)) };
    SETTLED.with(|c| c.set(v));
    v
}

/// Resolve a point to a settled bound (waiting only when the point is at or beyond the newest
/// settled seq this backend knows of).
pub fn resolve(cat: &Catalog, p: Point) -> Bound {
    // the caches hold seqs of one incarnation of the extension (a re-created one restarts seqs)
    if CACHE_FOR.with(|c| c.replace(cat.commits)) != cat.commits {
        SETTLED.with(|c| c.set((0, i64::MIN)));
        SETTLED_UPTO.with(|c| c.set(0));
    }
    let (s, t) = SETTLED.with(|c| c.get());
    match p {
        Point::Seq(n) => {
            if n < 0 {
                DriftError::new(PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE, format!("AS OF seq {n} is out of range"))
                    .hint("Commit seqs start at 1; seq 0 is the state before any recorded change.")
                    .raise();
            }
            if n <= s || n <= SETTLED_UPTO.with(|c| c.get()) {
                return Bound { seq: n, time: None };
            }
            // wait only for seqs ≤ n: a commit in flight with a newer seq does not hold up AS OF n
            let settled = settle::settled_upto(cat, n);
            if settled < n {
                let (s, _) = refresh_settled(cat);
                return Bound { seq: n.min(s), time: None };
            }
            SETTLED_UPTO.with(|c| c.set(c.get().max(n)));
            Bound { seq: n, time: None }
        }
        Point::Time(ts) => {
            let (s, t) = if s > 0 && ts < t { (s, t) } else { refresh_settled(cat) };
            if ts >= t {
                return Bound { seq: s, time: None };
            }
            Bound { seq: seq_for_time(cat, ts, s), time: None }
        }
    }
}

thread_local! {
    /// (commits table OID, seq → commit time) of every commit a binary search has probed:
    /// commit times never change, and later searches start from the nearest known points.
    static TIMES: std::cell::RefCell<(pg_sys::Oid, std::collections::BTreeMap<i64, i64>)> =
        std::cell::RefCell::new((pg_sys::InvalidOid, std::collections::BTreeMap::new()));
}

/// The newest committed seq ≤ `top` (settled, committed after `ts`) committed at or before
/// `ts`; 0 if none. Commit times are non-decreasing in seq (D4): a binary search over the
/// commits' primary key, seeded with the commit times this backend already knows.
fn seq_for_time(cat: &Catalog, ts: i64, top: i64) -> i64 {
    TIMES.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.0 != cat.commits || cell.1.len() > 1_000_000 {
            *cell = (cat.commits, std::collections::BTreeMap::new());
        }
        let known = &mut cell.1;
        // invariant: every committed seq ≤ lo has time ≤ ts, lo is committed (or 0);
        //            every committed seq ≥ hi has time > ts
        let mut lo = 0i64;
        let mut hi = top;
        if let Some((&s, _)) = known.range(..=top).rev().find(|(_, &t)| t <= ts) {
            lo = s;
        }
        if let Some((&s, _)) = known.range(lo + 1..=top).find(|(_, &t)| t > ts) {
            hi = s;
        }
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            // SAFETY: catalog-style read of driftdb.commits.
            match unsafe { settle::first_commit_from(cat, mid) } {
                Some((s, t)) if s < hi => {
                    known.insert(s, t);
                    if t <= ts {
                        lo = s;
                    } else {
                        hi = s;
                    }
                }
                _ => hi = mid,
            }
        }
        lo
    })
}

/// The seq a bound amounts to (the newest visible seq).
pub fn bound_seq(cat: &Catalog, b: Bound) -> i64 {
    match b.time {
        None => b.seq,
        Some(ts) => settle::seq_at(cat, ts).min(b.seq),
    }
}

/// A table's rows at a seq: decoded, or still the stored blocks of a snapshot.
pub enum Rows {
    Decoded(Vec<Row>),
    Blocks { seq: i64, blocks: Vec<Vec<u8>> },
}

impl Rows {
    pub fn into_vec(self) -> Vec<Row> {
        match self {
            Rows::Decoded(v) => v,
            Rows::Blocks { seq, blocks } => blocks.iter().flat_map(|b| reader::decode_block(b, seq)).collect(),
        }
    }
}

/// A driftdb table being read historically.
pub struct Source {
    pub cat: Catalog,
    pub relid: pg_sys::Oid,
    /// None: the table never recorded a change (no history: no rows at any point before now
    /// either — it was created empty and stayed so).
    pub info: Option<TableInfo>,
    /// The table's identity now.
    pub identity: Identity,
}

impl Source {
    /// # Safety
    /// `rel` must be an open driftdb relation.
    pub unsafe fn new(cat: Catalog, rel: pg_sys::Relation) -> Source {
        let relid = (*rel).rd_id;
        Source { cat, relid, info: reader::table_info(&cat, relid), identity: reader::identity_of(rel) }
    }

    fn key_cols(&self) -> Option<Vec<u16>> {
        match &self.identity {
            Identity::Key(c) => Some(c.clone()),
            _ => None,
        }
    }

    pub fn marks(&self, settled: i64) -> Marks {
        match &self.info {
            Some(i) => reader::marks(&self.cat, self.relid, i, settled),
            None => Marks::default(),
        }
    }

    /// Refuse points before the history of a converted (or purged) table begins.
    pub fn check_start(&self, seq: i64, name: &str) {
        if let Some(i) = &self.info {
            if i.history_start_seq > 0 && seq < i.history_start_seq {
                DriftError::new(
                    PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                    format!("history of table \"{name}\" starts at seq {}", i.history_start_seq),
                )
                .detail(format!("AS OF seq {seq} asks for a state before driftdb recorded this table (it was converted with ALTER TABLE ... SET ACCESS METHOD driftdb); its earlier history is unknown."))
                .hint(format!("Ask for seq {} or later.", i.history_start_seq))
                .raise();
            }
        }
    }

    /// The whole table at `seq` (a settled seq): the newest snapshot at or below it, plus the
    /// events after the snapshot. When no event follows the snapshot, its stored blocks are
    /// returned undecoded (`Rows::Blocks`), so that a scan decodes one block at a time instead
    /// of holding the whole table in memory. Also returns how many events were replayed.
    pub fn state_at(&self, seq: i64) -> (Rows, usize) {
        let Some(info) = &self.info else { return (Rows::Decoded(Vec::new()), 0) };
        let snap = reader::latest_snapshot(&self.cat, info.table_id, seq);
        let blocks = snap.map(|s| reader::snapshot_blocks(&self.cat, info.table_id, s)).unwrap_or_default();
        let mut events = Vec::new();
        reader::events_between(&self.cat, info.table_id, snap.unwrap_or(0), seq, |e| {
            events.push(e);
            true
        });
        if events.is_empty() {
            return (Rows::Blocks { seq: snap.unwrap_or(0), blocks }, 0);
        }
        let rows = blocks.iter().flat_map(|b| reader::decode_block(b, snap.unwrap_or(0)));
        let mut state = ImageReplay::from_rows(self.key_cols(), rows, snap.map(|s| s as u64));
        for e in &events {
            if let Err(err) = state.apply(e) {
                reader::corrupted(format!("replaying history: {err}"));
            }
        }
        (Rows::Decoded(state.into_rows().collect()), events.len())
    }

    /// `state_at`, decoded.
    pub fn rows_at(&self, seq: i64) -> (Vec<Row>, usize) {
        let (rows, n) = self.state_at(seq);
        (rows.into_vec(), n)
    }

    /// Can one key's row at a bound be read from the key index? Only while the events' keys
    /// name rows by the current identity.
    pub fn keyed(&self) -> bool {
        match (&self.info, &self.identity) {
            (Some(i), Identity::Key(cols)) => i.keys_stable && i.key_attnums.as_ref() == Some(cols),
            (None, _) => true,
            _ => false,
        }
    }

    /// The row with identity `key` (current identity columns, in identity order) at bound `b`.
    /// Caller checked `keyed()`.
    pub fn row_for_key(&self, key: &[Value], b: Bound, marks: &Marks) -> Option<Row> {
        let info = self.info.as_ref()?;
        let k = encode_key(key);
        let mut found: Option<(i64, Option<Row>)> = None;
        reader::key_events_desc(&self.cat, info.table_id, &k, b.seq, |seq, op, e| {
            if !b.sees(seq, e.committed_at) {
                return true;
            }
            found = Some((seq, if op == b'i' || op == b'u' { e.new } else { None }));
            false
        });
        let (seq, row) = found?;
        let truncated = marks.truncates.iter().any(|&(t, at)| t > seq && b.sees(t, at));
        if truncated {
            None
        } else {
            row
        }
    }

    /// Every version of every row (`key` None), or of the row(s) with one identity key,
    /// oldest first per row; `f` gets each version.
    pub fn versions(&self, key: Option<&[Value]>, settled: i64, marks: &Marks, mut f: impl FnMut(Version)) {
        let Some(info) = &self.info else { return };
        match key {
            Some(key) if self.keyed() => {
                let k = encode_key(key);
                let mut evs = Vec::new();
                reader::key_events_desc(&self.cat, info.table_id, &k, settled, |seq, op, e| {
                    evs.push((seq, op, e));
                    true
                });
                evs.reverse();
                // within one seq, what closes (delete, moved away) comes before what opens
                evs.sort_by_key(|(seq, op, _)| (*seq, matches!(op, b'i' | b'u')));
                let mut open: Option<Version> = None;
                let mut truncs = marks.truncates.iter().filter(|(t, _)| *t <= settled).peekable();
                for (seq, op, e) in evs {
                    while let Some(&&(t, at)) = truncs.peek() {
                        if t > seq {
                            break;
                        }
                        // a truncate at or before this event (TRUNCATE comes first within its
                        // transaction) closes the open version
                        if let Some(mut v) = open.take() {
                            v.end_seq = Some(t as u64);
                            v.end_at = Some(at);
                            f(v);
                        }
                        truncs.next();
                    }
                    if let Some(mut v) = open.take() {
                        v.end_seq = Some(seq as u64);
                        v.end_at = Some(e.committed_at);
                        f(v);
                    }
                    if matches!(op, b'i' | b'u') {
                        if let Some(row) = e.new {
                            open = Some(Version { start_seq: seq as u64, start_at: e.committed_at, end_seq: None, end_at: None, row });
                        }
                    }
                }
                if let Some(mut v) = open {
                    if let Some(&&(t, at)) = truncs.peek() {
                        v.end_seq = Some(t as u64);
                        v.end_at = Some(at);
                    }
                    f(v);
                }
            }
            _ => {
                let mut b = VersionBuilder::new(self.key_cols());
                reader::events_between(&self.cat, info.table_id, 0, settled, |e| {
                    if let Err(err) = b.apply(&e) {
                        reader::corrupted(format!("replaying history: {err}"));
                    }
                    for v in b.take_closed() {
                        if key.is_none_or(|k| v.row.project(self.key_cols().as_deref().unwrap_or(&[])) == k) {
                            f(v);
                        }
                    }
                    true
                });
                for v in b.finish() {
                    if key.is_none_or(|k| v.row.project(self.key_cols().as_deref().unwrap_or(&[])) == k) {
                        f(v);
                    }
                }
            }
        }
    }

    /// Every committed change up to `settled`, in seq order: (seq, committed_at, op, old, new).
    pub fn changes(&self, settled: i64, mut f: impl FnMut(i64, i64, Op, Option<Row>, Option<Row>)) {
        let Some(info) = &self.info else { return };
        reader::events_between(&self.cat, info.table_id, 0, settled, |e| {
            if e.op != Op::Schema {
                f(e.seq as i64, e.committed_at, e.op, e.old, e.new);
            }
            true
        });
    }
}
