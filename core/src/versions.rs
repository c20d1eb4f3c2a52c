//! versions.rs — every version of every row of one table, from its events applied in seq order
//! (the engine behind `driftdb.versions(NULL::t)`).
//!
//! A version is one row image together with the span of history during which it was the
//! row's current image: it starts at the event that wrote it (INSERT, or UPDATE for the new
//! image) and ends at the event that replaced or removed it (UPDATE, DELETE, TRUNCATE), or is
//! still open. Spans are half-open, `[start_seq, end_seq)`: the rows visible as of seq N are
//! exactly the versions with `start_seq <= N < end_seq`, which is `ImageReplay`'s state after
//! the events up to N. Consecutive versions of one row are contiguous — the end of one is the
//! start of the next — also across an identity change.
//!
//! `VersionBuilder` tracks the open versions under the same identity as `ImageReplay` (see
//! replay.rs): each row is keyed by projecting the table's *current* identity columns out of
//! its image (`None` = the whole row, equal rows kept as a multiset), and an UPDATE or DELETE
//! finds its row by the event's old image, which must agree with the open version on every
//! column both carry. Versions that close are queued as they close, so a caller can stream
//! them out (`drain_closed`) while the builder holds only the open ones; `finish` returns
//! the versions still open at the end of history.
//!
//! Schema events change nothing here: images are kept as recorded, and the caller fills
//! columns an image does not carry (added later) when it outputs the version. Several events
//! of one transaction share its seq; a version that such a transaction both opens and closes
//! spans `[s, s)`, is visible as of no seq, and is not reported.

use std::collections::HashMap;

use crate::event::{Event, Op};
use crate::replay::{image_key, image_key_values, ReplayError};
use crate::row::Row;

/// One version of a row: its image and the span of history it was current for. Times are
/// the events' `committed_at` (microseconds since 2000-01-01 UTC).
#[derive(Clone, Debug, PartialEq)]
pub struct Version {
    /// Seq of the event that wrote this image.
    pub start_seq: u64,
    pub start_at: i64,
    /// Seq of the event that replaced or removed it; None while the version is current.
    pub end_seq: Option<u64>,
    pub end_at: Option<i64>,
    pub row: Row,
}

impl Version {
    /// True if this version is the row's image as of seq `seq` (`start_seq <= seq < end_seq`).
    pub fn visible_at(&self, seq: u64) -> bool {
        self.start_seq <= seq && self.end_seq.is_none_or(|end| seq < end)
    }
}

/// A version that has not closed yet. `id` numbers versions in the order they opened, so
/// that output order does not depend on hash-map order.
#[derive(Clone, Debug)]
struct Open {
    id: u64,
    start_seq: u64,
    start_at: i64,
    row: Row,
}

impl Open {
    fn close(self, end_seq: Option<u64>, end_at: Option<i64>) -> Version {
        Version {
            start_seq: self.start_seq,
            start_at: self.start_at,
            end_seq,
            end_at,
            row: self.row,
        }
    }
}

/// Builds the versions of one table's rows from its events; see the module comment.
#[derive(Clone, Debug, Default)]
pub struct VersionBuilder {
    key_cols: Option<Vec<u16>>,
    open: HashMap<Vec<u8>, Vec<Open>>,
    open_len: usize,
    next_id: u64,
    closed: Vec<Version>,
    last_seq: Option<u64>,
    base_upto: Option<u64>,
    window_after: Option<u64>,
}

impl VersionBuilder {
    /// `key_cols`: the table's current identity columns, None for the whole row (as for
    /// `ImageReplay::new`).
    pub fn new(key_cols: Option<Vec<u16>>) -> VersionBuilder {
        VersionBuilder {
            key_cols,
            ..VersionBuilder::default()
        }
    }

    /// History was purged up to `horizon` (see `ImageReplay::set_base_upto`): an UPDATE at or
    /// below it whose row is not open opens its new image.
    pub fn set_base_upto(&mut self, horizon: u64) {
        self.base_upto = Some(horizon);
    }

    /// A window read: the events at or below `seq` are not applied (the caller replays from
    /// `seq + 1` on). An UPDATE whose row is not open opens its new image, and a DELETE whose
    /// row is not open closes nothing: their rows began before the window. Every version this
    /// builder yields starts after `seq`, with its true start and end.
    pub fn set_window_after(&mut self, seq: u64) {
        self.window_after = Some(seq);
    }

    /// May an UPDATE or DELETE at `seq` find its row missing (its earlier events not applied)?
    fn lenient_at(&self, seq: u64) -> bool {
        self.base_upto.is_some_and(|h| seq <= h) || self.in_window(seq)
    }

    fn in_window(&self, seq: u64) -> bool {
        self.window_after.is_some_and(|w| seq > w)
    }

    /// Seq of the last event applied successfully.
    pub fn last_seq(&self) -> Option<u64> {
        self.last_seq
    }

    /// Number of open versions (the table's row count after the events applied so far).
    pub fn open_len(&self) -> usize {
        self.open_len
    }

    /// Number of closed versions queued and not yet drained.
    pub fn closed_len(&self) -> usize {
        self.closed.len()
    }

    /// Applies one event, queueing every version it closes. On error nothing changes.
    pub fn apply(&mut self, e: &Event) -> Result<(), ReplayError> {
        let (seq, at, op) = (e.seq, e.committed_at, e.op);
        if let Some(prev) = self.last_seq {
            if seq < prev {
                return Err(ReplayError::OutOfOrder { seq, prev });
            }
        }
        match op {
            Op::Insert => {
                let new = e
                    .new
                    .as_ref()
                    .ok_or(ReplayError::MissingImage { seq, op })?;
                self.open_row(
                    image_key(self.key_cols.as_deref(), new),
                    seq,
                    at,
                    new.clone(),
                );
            }
            Op::Update => {
                let old = e
                    .old
                    .as_ref()
                    .ok_or(ReplayError::MissingImage { seq, op })?;
                let new = e
                    .new
                    .as_ref()
                    .ok_or(ReplayError::MissingImage { seq, op })?;
                let ok = image_key(self.key_cols.as_deref(), old);
                let i = match self.find(&ok, seq, op, old) {
                    Err(ReplayError::KeyNotFound { .. }) if self.lenient_at(seq) => {
                        let nk = image_key(self.key_cols.as_deref(), new);
                        self.open_row(nk, seq, at, new.clone());
                        self.last_seq = Some(seq);
                        return Ok(());
                    }
                    // in a window, an old image matching no open row is a row from before it
                    Err(ReplayError::OldImageMismatch { .. }) if self.in_window(seq) => {
                        let nk = image_key(self.key_cols.as_deref(), new);
                        self.open_row(nk, seq, at, new.clone());
                        self.last_seq = Some(seq);
                        return Ok(());
                    }
                    r => r?,
                };
                let nk = image_key(self.key_cols.as_deref(), new);
                // Buckets change exactly as ImageReplay's do (swap_remove, then push), so a
                // multiset bucket picks the same row and an error names the same replayed row.
                if nk == ok {
                    let id = self.next_id;
                    self.next_id += 1;
                    let bucket = self.open.get_mut(&ok).expect("found above");
                    let prev = bucket.swap_remove(i);
                    bucket.push(Open {
                        id,
                        start_seq: seq,
                        start_at: at,
                        row: new.clone(),
                    });
                    self.push_closed(prev, seq, at);
                } else {
                    let prev = self.take(&ok, i);
                    self.push_closed(prev, seq, at);
                    self.open_row(nk, seq, at, new.clone());
                }
            }
            Op::Delete => {
                let old = e
                    .old
                    .as_ref()
                    .ok_or(ReplayError::MissingImage { seq, op })?;
                let k = image_key(self.key_cols.as_deref(), old);
                let i = match self.find(&k, seq, op, old) {
                    Err(ReplayError::KeyNotFound { .. } | ReplayError::OldImageMismatch { .. }) if self.in_window(seq) => {
                        self.last_seq = Some(seq);
                        return Ok(());
                    }
                    r => r?,
                };
                let prev = self.take(&k, i);
                self.push_closed(prev, seq, at);
            }
            Op::Truncate => {
                for prev in self.take_all_open() {
                    self.push_closed(prev, seq, at);
                }
            }
            Op::Schema => {
                // whole-row keys change with the row's columns: re-key the open versions (their
                // rows keep the image they were written with; only the key is normalized)
                if let (None, Some(change)) = (&self.key_cols, &e.schema) {
                    let open = std::mem::take(&mut self.open);
                    for (_, bucket) in open {
                        for o in bucket {
                            let mut probe = o.row.clone();
                            crate::replay::normalize_for_schema(&mut probe, change);
                            let k = image_key(None, &probe);
                            self.open.entry(k).or_default().push(Open { row: probe, ..o });
                        }
                    }
                }
            }
        }
        self.last_seq = Some(seq);
        Ok(())
    }

    /// Removes and yields the closed versions queued so far, in the order they closed (those
    /// closed by one TRUNCATE in the order they opened).
    pub fn drain_closed(&mut self) -> impl Iterator<Item = Version> + '_ {
        self.closed.drain(..)
    }

    /// Like `drain_closed`, as a vector.
    pub fn take_closed(&mut self) -> Vec<Version> {
        std::mem::take(&mut self.closed)
    }

    /// Ends the build: the closed versions not yet drained (in closing order), then the
    /// versions still open (`end_seq` None), in the order they opened.
    pub fn finish(mut self) -> Vec<Version> {
        let mut out = std::mem::take(&mut self.closed);
        out.reserve(self.open_len);
        out.extend(
            self.take_all_open()
                .into_iter()
                .map(|o| o.close(None, None)),
        );
        out
    }

    /// Position, in bucket `k`, of the open version the old image `old` belongs to.
    fn find(&self, k: &[u8], seq: u64, op: Op, old: &Row) -> Result<usize, ReplayError> {
        let key = || image_key_values(self.key_cols.as_deref(), old);
        let Some(bucket) = self.open.get(k) else {
            return Err(ReplayError::KeyNotFound {
                seq,
                op,
                key: key(),
            });
        };
        bucket
            .iter()
            .position(|o| o.row.agrees_with(old))
            .ok_or_else(|| ReplayError::OldImageMismatch {
                seq,
                op,
                key: key(),
                recorded: old.clone(),
                replayed: bucket[0].row.clone(),
            })
    }

    fn take(&mut self, k: &[u8], i: usize) -> Open {
        let bucket = self.open.get_mut(k).expect("bucket found before");
        let o = bucket.swap_remove(i);
        if bucket.is_empty() {
            self.open.remove(k);
        }
        self.open_len -= 1;
        o
    }

    fn open_row(&mut self, k: Vec<u8>, seq: u64, at: i64, row: Row) {
        let id = self.next_id;
        self.next_id += 1;
        self.open.entry(k).or_default().push(Open {
            id,
            start_seq: seq,
            start_at: at,
            row,
        });
        self.open_len += 1;
    }

    /// Every open version, in the order they opened; the builder is left with none.
    fn take_all_open(&mut self) -> Vec<Open> {
        let mut all: Vec<Open> = Vec::with_capacity(self.open_len);
        for (_, bucket) in self.open.drain() {
            all.extend(bucket);
        }
        all.sort_unstable_by_key(|o| o.id);
        self.open_len = 0;
        all
    }

    /// Queues `o` as closed by the event at (`seq`, `at`) — unless it opened at that same seq
    /// (within one transaction), which makes it a version no snapshot can see.
    fn push_closed(&mut self, o: Open, seq: u64, at: i64) {
        if o.start_seq != seq {
            self.closed.push(o.close(Some(seq), Some(at)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::{multiset_diff, ImageReplay};
    use crate::value::Value;

    fn row(id: i64, v: &str) -> Row {
        Row::new(vec![(1, Value::Int(id)), (2, Value::Text(v.into()))])
    }
    fn ev(seq: u64, op: Op, old: Option<Row>, new: Option<Row>) -> Event {
        let mut e = Event::new(seq, 1_000 * seq as i64, 7, op);
        e.old = old;
        e.new = new;
        e
    }
    fn ins(seq: u64, r: Row) -> Event {
        ev(seq, Op::Insert, None, Some(r))
    }
    fn upd(seq: u64, old: Row, new: Row) -> Event {
        ev(seq, Op::Update, Some(old), Some(new))
    }
    fn del(seq: u64, old: Row) -> Event {
        ev(seq, Op::Delete, Some(old), None)
    }
    fn v(start: u64, end: Option<u64>, r: Row) -> Version {
        Version {
            start_seq: start,
            start_at: 1_000 * start as i64,
            end_seq: end,
            end_at: end.map(|e| 1_000 * e as i64),
            row: r,
        }
    }
    fn build(key_cols: Option<Vec<u16>>, events: &[Event]) -> Vec<Version> {
        let mut b = VersionBuilder::new(key_cols);
        let mut out = Vec::new();
        for e in events {
            b.apply(e).unwrap();
            out.extend(b.drain_closed());
        }
        out.extend(b.finish());
        out
    }

    #[test]
    fn insert_update_delete_truncate() {
        let events = vec![
            ins(1, row(1, "a")),
            ins(2, row(2, "b")),
            upd(3, row(1, "a"), row(1, "a2")),
            ins(4, row(3, "c")),
            del(5, row(2, "b")),
            upd(6, row(1, "a2"), row(1, "a3")),
            ev(7, Op::Schema, None, None),
            ev(8, Op::Truncate, None, None),
            ins(9, row(1, "new")),
        ];
        let mut b = VersionBuilder::new(Some(vec![1]));
        let mut closed_by = Vec::new();
        for e in &events {
            b.apply(e).unwrap();
            closed_by.push(b.take_closed().len());
        }
        assert_eq!(closed_by, vec![0, 0, 1, 0, 1, 1, 0, 2, 0]);
        assert_eq!(b.open_len(), 1);
        assert_eq!(b.last_seq(), Some(9));
        assert_eq!(b.finish(), vec![v(9, None, row(1, "new"))]);

        assert_eq!(
            build(Some(vec![1]), &events),
            vec![
                v(1, Some(3), row(1, "a")),
                v(2, Some(5), row(2, "b")),
                v(3, Some(6), row(1, "a2")),
                // the truncate closes the open versions in the order they opened
                v(4, Some(8), row(3, "c")),
                v(6, Some(8), row(1, "a3")),
                v(9, None, row(1, "new")),
            ]
        );
    }

    #[test]
    fn identity_change_keeps_the_lineage_contiguous() {
        let events = vec![
            ins(1, row(1, "a")),
            ins(2, row(2, "b")),
            upd(3, row(1, "a"), row(10, "a")),  // key change
            upd(4, row(10, "a"), row(10, "x")), // found under the new key
            del(5, row(2, "b")),
            upd(6, row(10, "x"), row(2, "x")), // onto the freed key
            upd(7, row(2, "x"), row(2, "y")),
        ];
        let out = build(Some(vec![1]), &events);
        // row 1's lineage: every version but row 2's
        let mut lineage: Vec<&Version> = out
            .iter()
            .filter(|v| v.row.get(2) != Some(&Value::Text("b".into())))
            .collect();
        lineage.sort_by_key(|v| v.start_seq);
        assert_eq!(lineage.len(), 5);
        for w in lineage.windows(2) {
            assert_eq!(w[0].end_seq, Some(w[1].start_seq));
            assert_eq!(w[0].end_at, Some(w[1].start_at));
        }
        assert_eq!(lineage[4], &v(7, None, row(2, "y")));
        assert!(out.contains(&v(2, Some(5), row(2, "b"))));
        // the old key is gone: a delete under it finds nothing
        let mut b = VersionBuilder::new(Some(vec![1]));
        for e in &events[..3] {
            b.apply(e).unwrap();
        }
        assert!(matches!(
            b.apply(&del(4, row(1, "a"))),
            Err(ReplayError::KeyNotFound {
                seq: 4,
                op: Op::Delete,
                ..
            })
        ));
    }

    #[test]
    fn rows_without_identity_are_a_multiset() {
        let events = vec![
            ins(1, row(1, "x")),
            ins(2, row(1, "x")),
            ins(2, row(1, "x")),
            upd(3, row(1, "x"), row(1, "y")),
            del(4, row(1, "x")),
        ];
        let out = build(None, &events);
        assert_eq!(out.len(), 4);
        let open: Vec<&Version> = out.iter().filter(|v| v.end_seq.is_none()).collect();
        assert_eq!(open.len(), 2);
        assert!(open
            .iter()
            .any(|v| v.row == row(1, "y") && v.start_seq == 3));
        assert!(open.iter().any(|v| v.row == row(1, "x")));
        let at = |n: u64| out.iter().filter(|v| v.visible_at(n)).count();
        assert_eq!((at(0), at(1), at(2), at(3), at(4)), (0, 1, 3, 3, 2));
        // a fourth copy was never inserted
        let mut b = VersionBuilder::new(None);
        for e in &events {
            b.apply(e).unwrap();
        }
        b.apply(&del(5, row(1, "x"))).unwrap();
        assert!(matches!(
            b.apply(&del(6, row(1, "x"))),
            Err(ReplayError::KeyNotFound { .. })
        ));
    }

    #[test]
    fn a_version_opened_and_closed_by_one_transaction_is_not_reported() {
        let events = vec![
            ins(1, row(1, "a")),
            upd(2, row(1, "a"), row(1, "b")),
            upd(2, row(1, "b"), row(1, "c")), // same transaction
            ins(2, row(2, "gone")),
            del(2, row(2, "gone")),
            del(3, row(1, "c")),
        ];
        assert_eq!(
            build(Some(vec![1]), &events),
            vec![v(1, Some(2), row(1, "a")), v(2, Some(3), row(1, "c"))]
        );
    }

    #[test]
    fn errors_leave_the_builder_unchanged() {
        let mut b = VersionBuilder::new(Some(vec![1]));
        b.apply(&ins(1, row(1, "a"))).unwrap();
        b.apply(&ins(2, row(2, "b"))).unwrap();
        let before = (b.open_len(), b.closed_len(), b.last_seq());
        let err = b.apply(&upd(3, row(1, "zzz"), row(1, "c"))).unwrap_err();
        assert!(
            matches!(&err, ReplayError::OldImageMismatch { seq: 3, op: Op::Update, recorded, replayed, .. }
                if recorded == &row(1, "zzz") && replayed == &row(1, "a")),
            "{err:?}"
        );
        assert_eq!(
            b.apply(&del(3, row(9, "a"))).unwrap_err(),
            ReplayError::KeyNotFound {
                seq: 3,
                op: Op::Delete,
                key: vec![Value::Int(9)]
            }
        );
        assert_eq!(
            b.apply(&ev(3, Op::Update, None, Some(row(1, "c"))))
                .unwrap_err(),
            ReplayError::MissingImage {
                seq: 3,
                op: Op::Update
            }
        );
        assert_eq!(
            b.apply(&ev(3, Op::Update, Some(row(1, "a")), None))
                .unwrap_err(),
            ReplayError::MissingImage {
                seq: 3,
                op: Op::Update
            }
        );
        assert_eq!(
            b.apply(&ev(3, Op::Insert, None, None)).unwrap_err(),
            ReplayError::MissingImage {
                seq: 3,
                op: Op::Insert
            }
        );
        assert_eq!(
            b.apply(&ev(3, Op::Delete, None, None)).unwrap_err(),
            ReplayError::MissingImage {
                seq: 3,
                op: Op::Delete
            }
        );
        assert_eq!(
            b.apply(&ins(1, row(5, "late"))).unwrap_err(),
            ReplayError::OutOfOrder { seq: 1, prev: 2 }
        );
        assert_eq!((b.open_len(), b.closed_len(), b.last_seq()), before);
        assert_eq!(
            b.finish(),
            vec![v(1, None, row(1, "a")), v(2, None, row(2, "b"))]
        );
    }

    #[test]
    fn old_images_match_across_added_and_dropped_columns() {
        let mut b = VersionBuilder::new(Some(vec![1]));
        b.apply(&ins(1, row(1, "a"))).unwrap();
        // after ADD COLUMN 3: the old image carries it, the version does not (not filled)
        let mut old = row(1, "a");
        old.0.push((3, Value::Int(0)));
        let new = Row::new(vec![(1, Value::Int(1)), (3, Value::Int(5))]); // and DROP COLUMN 2
        b.apply(&upd(2, old, new.clone())).unwrap();
        b.apply(&del(3, Row::new(vec![(1, Value::Int(1))])))
            .unwrap();
        let out = b.take_closed();
        assert_eq!(out, vec![v(1, Some(2), row(1, "a")), v(2, Some(3), new)]);
    }

    use crate::testdata::Rng;

    /// A random but valid history over `live` (the rows a correct replay holds): inserts
    /// (duplicate keys and, without identity, duplicate rows included), updates that sometimes
    /// change the key, deletes, rare truncates and schema events; several events per seq now
    /// and then (one transaction).
    fn random_history(rng: &mut Rng, n: usize, keyed: bool) -> Vec<Event> {
        random_history_with(rng, n, keyed, false)
    }

    /// `random_history`; with `unique`, every row has a key of its own (a primary key).
    fn random_history_with(rng: &mut Rng, n: usize, keyed: bool, unique: bool) -> Vec<Event> {
        let mut live: Vec<Row> = Vec::new();
        let mut events = Vec::with_capacity(n);
        let mut seq = 1u64;
        let mut next_id = 0i64;
        let mut fresh = |rng: &mut Rng| {
            // few distinct values, so duplicates (and, keyed, shared buckets) are common
            let id = if unique || (keyed && rng.below(4) != 0) {
                next_id += 1;
                next_id
            } else {
                rng.below(6) as i64
            };
            row(id, ["p", "q", "r"][rng.below(3)])
        };
        for _ in 0..n {
            if rng.below(4) != 0 {
                seq += 1 + rng.below(2) as u64;
            }
            let roll = rng.below(100);
            let e = if live.is_empty() || roll < 35 {
                let r = fresh(rng);
                live.push(r.clone());
                ins(seq, r)
            } else if roll < 75 {
                let i = rng.below(live.len());
                let old = live[i].clone();
                let new = if rng.below(3) == 0 {
                    fresh(rng) // possibly another key
                } else {
                    let mut r = old.clone();
                    r.0[1].1 = Value::Text(format!("{}{}", rng.below(3), rng.below(3)));
                    r
                };
                live[i] = new.clone();
                upd(seq, old, new)
            } else if roll < 95 {
                let i = rng.below(live.len());
                del(seq, live.swap_remove(i))
            } else if roll < 97 {
                live.clear();
                ev(seq, Op::Truncate, None, None)
            } else {
                ev(seq, Op::Schema, None, None)
            };
            events.push(e);
        }
        events
    }

    fn check_against_image_replay(seed: u64, keyed: bool) {
        let mut rng = Rng(seed);
        let events = random_history(&mut rng, 400, keyed);
        let key_cols = keyed.then(|| vec![1]);
        let mut b = VersionBuilder::new(key_cols.clone());
        let mut versions = Vec::new();
        for e in &events {
            b.apply(e).unwrap();
            versions.extend(b.drain_closed());
        }
        versions.extend(b.finish());

        // Spans are well formed and no version is empty.
        for v in &versions {
            assert!(v.end_seq.is_none_or(|end| v.start_seq < end), "{v:?}");
            assert_eq!(v.end_seq.is_none(), v.end_at.is_none());
        }

        // As of every seq, the visible versions are exactly the replayed state.
        let last = events.last().unwrap().seq;
        let mut replay = ImageReplay::new(key_cols);
        let mut next = 0;
        for n in 0..=last + 1 {
            while next < events.len() && events[next].seq <= n {
                replay.apply(&events[next]).unwrap();
                next += 1;
            }
            let visible = versions
                .iter()
                .filter(|v| v.visible_at(n))
                .map(|v| v.row.clone());
            let (missing, extra) = multiset_diff(visible, replay.rows().cloned());
            assert!(
                missing.is_empty() && extra.is_empty(),
                "seed {seed:#x} keyed {keyed} seq {n}: versions lack {missing:?}, have extra {extra:?}"
            );
        }

        // Contiguity: an update in a seq of its own closes one version and opens its
        // successor at that very seq.
        for (i, e) in events.iter().enumerate() {
            let alone = (i == 0 || events[i - 1].seq != e.seq)
                && events.get(i + 1).is_none_or(|n| n.seq != e.seq);
            if e.op != Op::Update || !alone {
                continue;
            }
            let ended: Vec<&Version> = versions
                .iter()
                .filter(|v| v.end_seq == Some(e.seq))
                .collect();
            let started: Vec<&Version> = versions.iter().filter(|v| v.start_seq == e.seq).collect();
            assert_eq!(ended.len(), 1, "seed {seed:#x} seq {}", e.seq);
            assert_eq!(started.len(), 1, "seed {seed:#x} seq {}", e.seq);
            assert_eq!(Some(&ended[0].row), e.old.as_ref());
            assert_eq!(Some(&started[0].row), e.new.as_ref());
            assert_eq!(ended[0].end_at, Some(started[0].start_at));
        }
    }

    #[test]
    fn randomized_versions_match_image_replay_at_every_seq() {
        for seed in 1..=40u64 {
            let seed = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            check_against_image_replay(seed, true);
            check_against_image_replay(seed, false);
        }
    }

    /// A window read (`set_window_after(a)`, events in (a, b]) yields exactly the versions of
    /// the full build that start after `a` — those ended by `b` when `b` is before the end, all
    /// of them (the open ones too) when the window reaches the end. Rows have unique keys: of
    /// two identical rows, which one an update took is not recorded, so a window cannot know
    /// whether it was one from before the window (neither does the full build; it picks one).
    #[test]
    fn randomized_window_reads_equal_the_filtered_full_build() {
        let sorted = |mut v: Vec<Version>| {
            v.sort_by_key(|v| format!("{v:?}"));
            v
        };
        for seed in 1..=20u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            for keyed in [true, false] {
                let key_cols = keyed.then(|| vec![1]);
                let events = random_history_with(&mut rng, 300, keyed, true);
                let last = events.last().unwrap().seq;
                let full = build(key_cols.clone(), &events);
                for _ in 0..15 {
                    let a = rng.below(last as usize + 1) as u64;
                    let b = if rng.chance(30) { last } else { a + rng.below((last - a) as usize + 1) as u64 };
                    let mut w = VersionBuilder::new(key_cols.clone());
                    w.set_window_after(a);
                    let mut got = Vec::new();
                    for e in events.iter().filter(|e| e.seq > a && e.seq <= b) {
                        w.apply(e).unwrap_or_else(|err| panic!("seed {seed} window ({a}, {b}]: {err:?}"));
                        got.extend(w.drain_closed());
                    }
                    got.extend(w.finish().into_iter().filter(|v| b == last || v.end_seq.is_some()));
                    let want: Vec<Version> = full
                        .iter()
                        .filter(|v| v.start_seq > a && (b == last || v.end_seq.is_some_and(|e| e <= b)))
                        .cloned()
                        .collect();
                    assert_eq!(sorted(got), sorted(want), "seed {seed} keyed {keyed} window ({a}, {b}]");
                }
            }
        }
    }

    #[test]
    fn randomized_errors_match_image_replay_and_change_nothing() {
        let mut rng = Rng(0xdead_beef_cafe_f00d);
        for keyed in [true, false] {
            let key_cols = keyed.then(|| vec![1]);
            let events = random_history(&mut rng, 300, keyed);
            let mut b = VersionBuilder::new(key_cols.clone());
            let mut r = ImageReplay::new(key_cols);
            let mut errors = 0;
            for e in &events {
                // a corrupted copy of the event: wrong old image, or an earlier seq
                let mut bad = e.clone();
                match rng.below(3) {
                    0 => bad.old = Some(row(rng.below(8) as i64, "never")),
                    1 => bad.seq = bad.seq.saturating_sub(1 + rng.below(2) as u64),
                    _ => {}
                }
                let (x, y) = (b.apply(&bad), r.apply(&bad));
                assert_eq!(x, y, "{bad:?}");
                if x.is_err() {
                    errors += 1;
                    b.apply(e).unwrap();
                    r.apply(e).unwrap();
                }
                let open: Vec<Row> = b
                    .clone()
                    .finish()
                    .into_iter()
                    .filter(|v| v.end_seq.is_none())
                    .map(|v| v.row)
                    .collect();
                let (m, x) = multiset_diff(open, r.rows().cloned());
                assert!(m.is_empty() && x.is_empty());
            }
            assert!(errors > 50, "{errors}");
        }
    }
}
