//! The time-travel engine: resolve an AS OF point to a settled bound, then produce the rows
//! of a table at that bound (snapshot + replay), one key's row at that bound (the key index),
//! every version (all, or one key's), or every change — as `Row` images, which the callers
//! (SQL functions in `srf.rs`, the custom scan in `scan.rs`) turn into tuples.
//!
//! Replay keys rows by the table's *current* identity projected from the images, matching
//! UPDATE/DELETE by their recorded old image (`driftdb_core::ImageReplay`), so history
//! recorded before a primary key existed replays exactly like the doctor's check.
use std::cell::Cell;

use driftdb_core::{encode_key, Event, ImageReplay, Op, Row, Value, Version, VersionBuilder};
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

thread_local! {
    /// The newest settled seq this backend has seen, and its commit time. Settled never goes
    /// back, so a point at or below it needs no waiting and no lookup.
    static SETTLED: Cell<(i64, i64)> = const { Cell::new((0, i64::MIN)) };
    /// A seq up to which every seq is known settled (not necessarily a committed one).
    static SETTLED_UPTO: Cell<i64> = const { Cell::new(0) };
    /// driftdb.commits' OID the two caches above belong to.
    static CACHE_FOR: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
}

pub fn commit_time(cat: &Catalog, seq: i64) -> i64 {
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

/// Resolve a point to the seq it amounts to, a settled one: every seq at or below it has
/// committed or rolled back. Waits only when the point is at or beyond the newest settled seq
/// this backend knows of.
pub fn resolve(cat: &Catalog, p: Point) -> i64 {
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
                return n;
            }
            // wait only for seqs ≤ n: a commit in flight with a newer seq does not hold up AS OF n
            let settled = settle::settled_upto(cat, n);
            if settled < n {
                let (s, _) = refresh_settled(cat);
                return n.min(s);
            }
            SETTLED_UPTO.with(|c| c.set(c.get().max(n)));
            n
        }
        Point::Time(ts) => {
            let (s, t) = if s > 0 && ts < t { (s, t) } else { refresh_settled(cat) };
            if ts >= t {
                return s;
            }
            settle::seq_at_upto(cat, ts, s)
        }
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

/// Why a key lookup after an identity change replayed the whole state (EXPLAIN ANALYZE).
const REPLAY_TRUNCATE: &str = "a TRUNCATE after the identity change";
const REPLAY_SERIALIZABLE: &str = "SERIALIZABLE isolation: no second snapshot for the live rows";
const REPLAY_NO_LIVE: &str = "the live rows could not be read by key";
const REPLAY_BEFORE: &str = "the point is before the identity change";

/// A driftdb table being read historically.
pub struct Source {
    pub cat: Catalog,
    pub relid: pg_sys::Oid,
    /// None: the table never recorded a change (no history: no rows at any point before now
    /// either — it was created empty and stayed so).
    pub info: Option<TableInfo>,
    /// The table's identity now.
    pub identity: Identity,
    /// The open relation (the caller keeps it open while the source is used).
    rel: pg_sys::Relation,
    /// Why a key lookup had to replay the whole state (`rows_for_keys_since`), for EXPLAIN.
    pub lookup_replayed: Cell<Option<&'static str>>,
}

impl Source {
    /// # Safety
    /// `rel` must be an open driftdb relation.
    pub unsafe fn new(cat: Catalog, rel: pg_sys::Relation) -> Source {
        let relid = (*rel).rd_id;
        Source { cat, relid, info: reader::table_info(&cat, relid), identity: reader::identity_of(rel), rel, lookup_replayed: Cell::new(None) }
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
    pub fn check_start(&self, seq: i64) {
        if let Some(i) = &self.info {
            self.check_start_of(i, seq);
        }
    }

    fn check_start_of(&self, i: &TableInfo, seq: i64) {
        if i.history_start_seq > 0 && seq < i.history_start_seq {
            // SAFETY: syscache lookup of an open relation's name
            let name = unsafe { super::srf::rel_name(self.relid) };
            let start = i.history_start_seq;
            let err = DriftError::new(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, format!("history of table \"{name}\" starts at seq {start}"));
            let err = if i.history_purged {
                err.detail(format!("AS OF seq {seq} asks for a state before the purge horizon: history before seq {start} was purged (driftdb.purge_history or the table's retention)."))
            } else {
                err.detail(format!("AS OF seq {seq} asks for a state before driftdb recorded this table (it was converted with ALTER TABLE ... SET ACCESS METHOD driftdb); its earlier history is unknown."))
            };
            err.hint(format!("Ask for seq {start} or later; driftdb.history_start('{name}') shows where history begins.")).raise();
        }
    }

    /// Tell the caller (NOTICE) that the history read here starts at a purge horizon, so that
    /// a period before it is never mistaken for a complete answer.
    fn note_purged(&self, i: &TableInfo, what: &str) {
        if i.history_purged {
            // SAFETY: syscache lookup of an open relation's name
            let name = unsafe { super::srf::rel_name(self.relid) };
            notice!("history of table \"{name}\" before seq {} was purged: {what}", i.history_start_seq);
        }
    }

    /// The registration as it is now, under the chain's read lock (a purge may have committed
    /// since `self.info` was read), checked against `seq`.
    fn fresh_info(&self, seq: i64) -> Option<TableInfo> {
        let i = reader::table_info(&self.cat, self.relid).or_else(|| self.info.clone())?;
        self.check_start_of(&i, seq);
        Some(i)
    }

    /// Refuse a change feed from a seq whose following changes were purged (they would be
    /// partial).
    fn check_changes_after_of(&self, i: &TableInfo, after: i64) {
        if i.history_purged && after < i.history_start_seq {
            // SAFETY: syscache lookup of an open relation's name
            let name = unsafe { super::srf::rel_name(self.relid) };
            DriftError::new(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("the changes of table \"{name}\" after seq {after} are incomplete: its history before seq {} was purged", i.history_start_seq),
            )
            .detail("History before the purge horizon is gone: the changes returned would be incomplete.")
            .hint(format!("Read the state at seq {} with driftdb.as_of, then the changes after it.", i.history_start_seq))
            .raise();
        }
    }

    /// The whole table at `seq` (a settled seq): the newest snapshot at or below it, plus the
    /// events after the snapshot. When no event follows the snapshot, its stored blocks are
    /// returned undecoded (`Rows::Blocks`), so that a scan decodes one block at a time instead
    /// of holding the whole table in memory. Also returns how many events were replayed.
    pub fn state_at(&self, seq: i64) -> (Rows, usize) {
        let Some(info) = &self.info else { return (Rows::Decoded(Vec::new()), 0) };
        // one state of the history throughout: no purge or compaction commits meanwhile
        let _lock = crate::segments::read_lock(&self.cat, info.table_id);
        let Some(info) = &self.fresh_info(seq) else { return (Rows::Decoded(Vec::new()), 0) };
        let snap = reader::latest_snapshot(&self.cat, info.table_id, seq);
        let blocks = snap.map(|s| reader::snapshot_blocks(&self.cat, info.table_id, s)).unwrap_or_default();
        let from = snap.unwrap_or(0);
        // replay as the events stream by (memory is the state's, not the history's); the
        // snapshot is decoded only once an event follows it
        let mut state: Option<ImageReplay> = None;
        let mut replayed = 0usize;
        reader::events_between(&self.cat, info.table_id, from, seq, |e| {
            let st = state.get_or_insert_with(|| {
                let rows = blocks.iter().flat_map(|b| reader::decode_block(b, from));
                let mut st = ImageReplay::from_rows(self.key_cols(), rows, snap.map(|s| s as u64));
                if info.history_purged {
                    st.set_base_upto(info.history_start_seq as u64);
                }
                st
            });
            if let Err(err) = st.apply(&e) {
                reader::corrupted(format!("replaying history: {err}"));
            }
            replayed += 1;
            true
        });
        match state {
            None => (Rows::Blocks { seq: from, blocks }, 0),
            Some(st) => (Rows::Decoded(st.into_rows().collect()), replayed),
        }
    }

    /// `state_at`, decoded.
    pub fn rows_at(&self, seq: i64) -> (Vec<Row>, usize) {
        let (rows, n) = self.state_at(seq);
        (rows.into_vec(), n)
    }

    /// Can one key's row at a bound be read from the key index? Only while the events' keys
    /// name rows by the current identity, since registration (`keyed_lookup_at` also answers
    /// point lookups after an identity change).
    pub fn keyed(&self) -> bool {
        self.keys_current() && self.info.as_ref().is_none_or(|i| i.keyed_from == 0)
    }

    /// Are the events' keys, since `keyed_from`, those of the current identity?
    fn keys_current(&self) -> bool {
        match (&self.info, &self.identity) {
            (Some(i), Identity::Key(cols)) => i.keys_stable && i.key_attnums.as_ref() == Some(cols),
            (None, _) => true,
            _ => false,
        }
    }

    /// Can `row_for_key` answer at settled `seq`? As `keyed`, and also at or after the seq
    /// where the current identity's keys begin (`driftdb.tables.keyed_from`).
    pub fn keyed_lookup_at(&self, seq: i64) -> bool {
        self.keys_current() && self.info.as_ref().is_none_or(|i| i.keyed_from == 0 || seq >= i.keyed_from)
    }

    /// The row with identity `key` (current identity columns, in identity order) at settled
    /// `seq`. Caller checked `keyed_lookup_at(seq)`.
    pub fn row_for_key(&self, key: &[Value], seq: i64, marks: &Marks) -> Option<Row> {
        self.rows_for_keys(std::slice::from_ref(&key.to_vec()), seq, marks).pop()
    }

    /// The rows whose identity key is one of `keys` at settled `seq` (each looked up in the
    /// key index; a key given twice counts once). Caller checked `keyed_lookup_at(seq)`.
    pub fn rows_for_keys(&self, keys: &[Vec<Value>], seq: i64, marks: &Marks) -> Vec<Row> {
        let Some(info) = self.info.as_ref() else { return Vec::new() };
        // One state of the history throughout, as the other reads take it: the lookup reads
        // `driftdb.events`, the packs and the segments one after another, each row as latest
        // committed, and a purge that rewrites a pack (deletes it, inserts what it keeps)
        // committing between two of those reads could hide the key's newest event from both,
        // so that an older one answered (found by test_online_purge_with_writers_and_readers).
        let _lock = crate::segments::read_lock(&self.cat, info.table_id);
        // a purge that committed before the lock may have moved the history start past `seq`
        // (read_lock processed its invalidation)
        let fresh = self.fresh_info(seq);
        let keyed_from = fresh.as_ref().map_or(info.keyed_from, |i| i.keyed_from);
        let mut seen = std::collections::HashSet::new();
        let keys: Vec<(&Vec<Value>, Vec<u8>)> = keys.iter().map(|k| (k, encode_key(k))).filter(|(_, k)| seen.insert(k.clone())).collect();
        if keyed_from > seq {
            // the identity changed after this read was planned (not when it started: the change
            // sends an invalidation): this point is before the new keys
            return self.rows_for_keys_by_replay(&keys, seq, REPLAY_BEFORE);
        }
        if keyed_from > 0 {
            return self.rows_for_keys_since(&keys, seq, keyed_from, info.table_id);
        }
        assert_eq!(marks.truncates_from, 0, "driftdb: the TRUNCATEs of a table keyed since an identity change are partial");
        let mut out = Vec::new();
        for (_, k) in &keys {
            // The key's newest seq at or below `seq` decides. One transaction can file two
            // events under a key (a row left it, another arrived: 'd' or 'm', then 'i' or 'u'):
            // whatever wrote an image is the key's state after that transaction.
            let mut found: Option<(i64, Option<Row>)> = None;
            reader::key_images_newest(&self.cat, info.table_id, k, seq, |s, op, (_, new)| {
                match &mut found {
                    Some((at, _)) if *at != s => return false,
                    Some((_, row)) => {
                        if op == b'i' || op == b'u' {
                            *row = new;
                        }
                    }
                    None => found = Some((s, if op == b'i' || op == b'u' { new } else { None })),
                }
                true
            });
            let Some((at, row)) = found else { continue };
            // a TRUNCATE after the key's last event (and at or before `seq`) removed the row
            if !marks.truncates.iter().any(|&(t, _)| t > at && t <= seq) {
                out.extend(row);
            }
        }
        out
    }

    /// `rows_for_keys` after an identity change (`from` = `keyed_from`): one snapshot and one
    /// read of the TRUNCATEs for all the keys, then `key_state_since` for each.
    fn rows_for_keys_since(&self, keys: &[(&Vec<Value>, Vec<u8>)], seq: i64, from: i64, table_id: i32) -> Vec<Row> {
        let Some(snap) = super::live::CommittedSnapshot::take() else {
            return self.rows_for_keys_by_replay(keys, seq, REPLAY_SERIALIZABLE);
        };
        let truncates = reader::truncates_from(&self.cat, table_id, from);
        if truncates.iter().any(|&t| t > seq) {
            return self.rows_for_keys_by_replay(keys, seq, REPLAY_TRUNCATE);
        }
        keys.iter().filter_map(|(key, k)| self.key_state_since(key, k, seq, from, table_id, &snap, &truncates)).collect()
    }

    /// The rows with these encoded identity keys in the whole state at `seq`.
    fn rows_for_keys_by_replay(&self, keys: &[(&Vec<Value>, Vec<u8>)], seq: i64, why: &'static str) -> Vec<Row> {
        self.lookup_replayed.set(Some(why));
        let Some(cols) = self.key_cols() else { return Vec::new() };
        let wanted: std::collections::HashSet<&[u8]> = keys.iter().map(|(_, k)| &k[..]).collect();
        self.rows_at(seq).0.into_iter().filter(|r| wanted.contains(&encode_key(&r.project(&cols))[..])).collect()
    }

    /// One key's row at `seq` after an identity change: events from `from` (`keyed_from`) on
    /// are filed under the current identity's keys, older ones are not (rows loaded before the
    /// primary key existed have no key at all). `seq >= from`. The key's state at `seq` is, in order:
    /// 1. what its newest event in `[from, seq]` left (as without a change);
    /// 2. else, if events came later, the old image of the first of them: nothing touched the
    ///    key between `seq` and that event;
    /// 3. else the live row: nothing touched the key since `from`, so the row it has now is
    ///    the one it had at `seq`. The live table is read with a snapshot taken before the
    ///    history, so a change that snapshot sees has its events in what the history read
    ///    finds (and the key would not be in this case).
    ///
    /// A TRUNCATE in `[from, seq]` that no later event of the key follows removed the row. A
    /// TRUNCATE after `seq` would hide the state before it from 2 and 3: then, as when the
    /// live row cannot be looked up, the whole state is replayed.
    ///
    /// `snap` was taken before any of the history was read; `truncates` are the TRUNCATEs from
    /// `from` on (none after `seq`: the caller replays then).
    #[allow(clippy::too_many_arguments)]
    fn key_state_since(
        &self,
        key: &[Value],
        k: &[u8],
        seq: i64,
        from: i64,
        table_id: i32,
        snap: &super::live::CommittedSnapshot,
        truncates: &[i64],
    ) -> Option<Row> {
        // case 1, as without a change: the key's newest seq at or below `seq`, if from `from` on
        let mut newest: Option<(i64, Option<Row>)> = None;
        reader::key_images_newest(&self.cat, table_id, k, seq, |s, op, (_, new)| {
            if s < from {
                return false; // filed under an earlier identity's key that happens to match
            }
            let image = if op == b'i' || op == b'u' { new } else { None };
            match &mut newest {
                Some((at, _)) if *at != s => return false,
                Some((_, row)) => {
                    if image.is_some() {
                        *row = image;
                    }
                }
                None => newest = Some((s, image)),
            }
            true
        });
        if let Some((at, row)) = newest {
            return if truncates.iter().any(|&t| t > at && t <= seq) { None } else { row };
        }
        if !truncates.is_empty() {
            return None; // truncated in [from, seq], and nothing since up to seq brought it back
        }
        // case 2: the oldest seq above `seq` that changed the key (read newest first)
        let mut above: Option<(i64, Vec<(u8, Event)>)> = None;
        reader::key_events_desc(&self.cat, table_id, k, i64::MAX, |s, op, e| {
            if s <= seq {
                return false;
            }
            match &mut above {
                Some((at, evs)) if *at == s => evs.push((op, e)),
                _ => above = Some((s, vec![(op, e)])),
            }
            true
        });
        if let Some((_, evs)) = above {
            // the image the first later transaction found under the key (an update that moved
            // another row onto the key found none there)
            let cols = self.key_cols().unwrap_or_default();
            return evs
                .into_iter()
                .filter(|(op, _)| matches!(op, b'u' | b'd' | b'm'))
                .filter_map(|(_, e)| e.old)
                .find(|old| encode_key(&old.project(&cols)) == k);
        }
        // case 3
        // SAFETY: `rel` is open (Source::new's contract); its identity is `key`'s (checked by
        // keyed_lookup_at through keys_current).
        match unsafe { super::live::row_for_key(self.rel, key, snap) } {
            Ok(row) => row,
            Err(()) => self.rows_for_keys_by_replay(&[(&key.to_vec(), k.to_vec())], seq, REPLAY_NO_LIVE).pop(),
        }
    }

    /// Per key in `ranges` (inclusive encoded-key ranges): its newest seq at or below `seq`,
    /// and the frame that wrote its image in that seq (None: the key was left empty then).
    /// Caller holds the table's read lock.
    fn newest_in_ranges(&self, table_id: i32, ranges: &[(Vec<u8>, Vec<u8>)], seq: i64) -> std::collections::BTreeMap<Vec<u8>, (i64, Option<Vec<u8>>)> {
        let mut newest: std::collections::BTreeMap<Vec<u8>, (i64, Option<Vec<u8>>)> = Default::default();
        for (lo, hi) in ranges {
            reader::key_range_newest(&self.cat, table_id, lo, hi, seq, |key, s, op, frame| {
                let image = matches!(op, b'i' | b'u');
                match newest.get_mut(key) {
                    Some((at, _)) if *at > s => {}
                    Some((at, f)) if *at == s => {
                        if image {
                            *f = Some(frame.to_vec());
                        }
                    }
                    Some(e) => *e = (s, image.then(|| frame.to_vec())),
                    None => {
                        newest.insert(key.to_vec(), (s, image.then(|| frame.to_vec())));
                    }
                }
            });
        }
        newest
    }

    /// The rows whose encoded identity key lies in one of `ranges` (inclusive byte ranges) at
    /// settled `seq`, in key order: per key, its newest event at or below `seq` decides, as in
    /// `row_for_key`. Reads only the events filed under those keys. Caller checked `keyed()`.
    pub fn rows_for_key_ranges(&self, ranges: &[(Vec<u8>, Vec<u8>)], seq: i64, marks: &Marks) -> Vec<Row> {
        let Some(info) = &self.info else { return Vec::new() };
        // one state of the history throughout: each event is in the events table or a segment
        let _lock = crate::segments::read_lock(&self.cat, info.table_id);
        let Some(info) = &self.fresh_info(seq) else { return Vec::new() };
        let newest = self.newest_in_ranges(info.table_id, ranges, seq);
        assert_eq!(marks.truncates_from, 0, "driftdb: the TRUNCATEs of a table keyed since an identity change are partial");
        newest
            .into_values()
            // a TRUNCATE after the key's last event (and at or before `seq`) removed the row
            .filter(|(at, _)| !marks.truncates.iter().any(|&(t, _)| t > *at && t <= seq))
            .filter_map(|(at, frame)| reader::decode_image(&frame?, at).1)
            .collect()
    }

    /// The rows whose (single, integer) identity key is in `[lo, hi]` at settled `seq`: from
    /// the key index (`rows_for_key_ranges`), or after an identity change as `row_for_key` finds
    /// one key's row — the live rows of the range whose keys no event touched since the change,
    /// and a lookup for each key that was. Caller checked `keyed_lookup_at(seq)`.
    pub fn rows_for_int_range(&self, lo: i64, hi: i64, seq: i64, marks: &Marks) -> Vec<Row> {
        let ranges = driftdb_core::int_key_ranges(lo, hi);
        let from = match &self.info {
            Some(i) if i.keyed_from > 0 => i.keyed_from,
            _ => return self.rows_for_key_ranges(&ranges, seq, marks),
        };
        let Some(info) = &self.info else { return Vec::new() };
        let table_id = info.table_id;
        let _lock = crate::segments::read_lock(&self.cat, table_id);
        let from = self.fresh_info(seq).map_or(from, |i| i.keyed_from);
        let cols = self.key_cols().unwrap_or_default();
        let in_range = |r: &Row| matches!(r.project(&cols).first(), Some(Value::Int(v)) if *v >= lo && *v <= hi);
        let replay = |why: &'static str| {
            self.lookup_replayed.set(Some(why));
            self.rows_at(seq).0.into_iter().filter(in_range).collect()
        };
        if from > seq {
            return replay(REPLAY_BEFORE); // as in rows_for_keys
        }
        let Some(snap) = super::live::CommittedSnapshot::take() else { return replay(REPLAY_SERIALIZABLE) };
        let truncates = reader::truncates_from(&self.cat, table_id, from);
        if truncates.iter().any(|&t| t > seq) {
            return replay(REPLAY_TRUNCATE);
        }
        // the live rows first (the snapshot is older than anything the history read finds)
        // SAFETY: `rel` is open (Source::new's contract); its identity is one integer column
        // (the planner offers key ranges for no other).
        let Ok(live) = (unsafe { super::live::rows_in_int_range(self.rel, lo, hi, &snap) }) else { return replay(REPLAY_NO_LIVE) };
        // case 1 for the whole range at once: each key's newest seq at or below `seq`, if from
        // `from` on (an older one is filed under an earlier identity's key)
        let mut out = Vec::new();
        let mut decided = std::collections::BTreeSet::new();
        for (k, (at, frame)) in self.newest_in_ranges(table_id, &ranges, seq) {
            if at < from {
                continue;
            }
            if !truncates.iter().any(|&t| t > at && t <= seq) {
                out.extend(frame.and_then(|f| reader::decode_image(&f, at).1));
            }
            decided.insert(k);
        }
        // the other keys of the range that an event touched since the change: case 2 (or
        // gone, after a TRUNCATE in [from, seq]), one by one
        let mut touched = std::collections::BTreeSet::new();
        for (klo, khi) in &ranges {
            reader::key_range_newest(&self.cat, table_id, klo, khi, i64::MAX, |key, s, _, _| {
                if s >= from && !decided.contains(key) {
                    touched.insert(key.to_vec());
                }
            });
        }
        for k in &touched {
            let Ok(key) = driftdb_core::decode_key(k) else { return replay(REPLAY_NO_LIVE) };
            out.extend(self.key_state_since(&key, k, seq, from, table_id, &snap, &truncates));
        }
        // case 3: the live rows of the keys nothing touched since the change (gone if a
        // TRUNCATE came in [from, seq])
        if truncates.is_empty() {
            out.extend(live.into_iter().filter(|r| {
                let k = encode_key(&r.project(&cols));
                !decided.contains(&k) && !touched.contains(&k)
            }));
        }
        out
    }

    /// Every version of every row (`key` None), or of the row(s) with one identity key,
    /// oldest first per row; `f` gets each version.
    pub fn versions(&self, key: Option<&[Value]>, settled: i64, marks: &Marks, mut f: impl FnMut(Version)) {
        let Some(info) = &self.info else { return };
        self.note_purged(info, "versions that had ended before it are gone; each version current at the horizon is shown with its true start");
        match key {
            Some(key) if self.keyed() => {
                let k = encode_key(key);
                let mut evs = Vec::new();
                reader::key_images_desc(&self.cat, info.table_id, &k, settled, |seq, op, e| {
                    evs.push((seq, op, e));
                    true
                });
                // oldest first; within one seq, what closes (delete, moved away) comes before what opens
                evs.sort_by_key(|(seq, op, _)| (*seq, matches!(op, b'i' | b'u')));
                let mut open: Option<Version> = None;
                assert_eq!(marks.truncates_from, 0, "driftdb: the TRUNCATEs of a table keyed since an identity change are partial");
                let mut truncs = marks.truncates.iter().filter(|(t, _)| *t <= settled).peekable();
                for (seq, op, (committed_at, new)) in evs {
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
                        v.end_at = Some(committed_at);
                        f(v);
                    }
                    if matches!(op, b'i' | b'u') {
                        if let Some(row) = new {
                            open = Some(Version { start_seq: seq as u64, start_at: committed_at, end_seq: None, end_at: None, row });
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
                let _lock = crate::segments::read_lock(&self.cat, info.table_id);
                let Some(info) = &self.fresh_info(settled) else { return };
                let key_cols = self.key_cols().unwrap_or_default();
                let wanted = |v: &Version| key.is_none_or(|k| v.row.project(&key_cols) == k);
                let mut b = VersionBuilder::new(self.key_cols());
                if info.history_purged {
                    b.set_base_upto(info.history_start_seq as u64);
                }
                reader::events_between(&self.cat, info.table_id, 0, settled, |e| {
                    if let Err(err) = b.apply(&e) {
                        reader::corrupted(format!("replaying history: {err}"));
                    }
                    for v in b.take_closed().into_iter().filter(wanted) {
                        f(v);
                    }
                    true
                });
                for v in b.finish().into_iter().filter(wanted) {
                    f(v);
                }
            }
        }
    }

    /// The versions that start after seq `after` and, when `upto` is below `settled`, end at
    /// or before `upto` (SQL:2011 CONTAINED IN, and its one-sided forms): only the events in
    /// `(after, min(upto, settled)]` are read. Each version comes with its true start and end.
    /// A table whose events do not name rows by a unique key reads every version and filters
    /// (of two identical rows, which one an update took is not recorded, so a window could
    /// not tell a version from before it).
    pub fn versions_window(&self, after: i64, upto: i64, settled: i64, marks: &Marks, mut f: impl FnMut(Version)) {
        let closed_only = upto < settled;
        let wanted = |v: &Version| v.start_seq as i64 > after && (!closed_only || v.end_seq.is_some_and(|e| e as i64 <= upto));
        if !self.keyed() {
            return self.versions(None, settled, marks, |v| {
                if wanted(&v) {
                    f(v)
                }
            });
        }
        let Some(info) = &self.info else { return };
        let after = after.max(0);
        let upto = upto.min(settled);
        if upto <= after {
            return;
        }
        let _lock = crate::segments::read_lock(&self.cat, info.table_id);
        let Some(info) = &self.fresh_info(settled) else { return };
        if after < info.history_start_seq {
            self.note_purged(info, "versions that had ended before it are gone; each version current at the horizon is shown with its true start");
        }
        let mut b = VersionBuilder::new(self.key_cols());
        if info.history_purged {
            b.set_base_upto(info.history_start_seq as u64);
        }
        b.set_window_after(after as u64);
        reader::events_between(&self.cat, info.table_id, after, upto, |e| {
            if let Err(err) = b.apply(&e) {
                reader::corrupted(format!("replaying history: {err}"));
            }
            b.drain_closed().filter(&wanted).for_each(&mut f);
            true
        });
        b.finish().into_iter().filter(wanted).for_each(f);
    }

    /// Every committed change up to `settled`, in seq order: (seq, committed_at, op, old, new).
    /// With `after`, only the changes with seq > after (read from there on).
    pub fn changes(&self, after: Option<i64>, settled: i64, mut f: impl FnMut(i64, i64, Op, Option<Row>, Option<Row>)) {
        let Some(info) = &self.info else { return };
        let _lock = crate::segments::read_lock(&self.cat, info.table_id);
        let Some(info) = &self.fresh_info(settled) else { return };
        if let Some(a) = after {
            self.check_changes_after_of(info, a);
        }
        // after a purge, the changes from the horizon on (what survived below it is the state
        // at the horizon, not the changes that led there)
        let from = if info.history_purged { info.history_start_seq } else { 0 };
        if after.is_none() {
            self.note_purged(info, "the changes shown start after it");
        }
        let from = from.max(after.unwrap_or(0));
        reader::events_between(&self.cat, info.table_id, from, settled, |e| {
            if e.op != Op::Schema {
                f(e.seq as i64, e.committed_at, e.op, e.old, e.new);
            }
            true
        });
    }
}
