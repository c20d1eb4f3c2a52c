//! replay.rs — rebuilds one table's contents from its history, checking consistency.
//!
//! `State` maps the canonical key bytes (`frame::encode_key`) of each live row to its latest
//! image. Applying events in seq order reproduces the table as of any point in history; every
//! event is also checked against the state it applies to (insert of a present key, update or
//! delete of an absent key, a recorded old image that disagrees with the replayed one), which
//! is how the doctor detects tampering or lost events. `multiset_diff` compares the replayed
//! rows with the live table.
//!
//! Old-image check: the stored row and the event's `old` image must hold equal values on
//! every attnum *both* carry. Columns only one side carries are ignored, because ADD/DROP
//! COLUMN do not rewrite history: a row inserted before `ADD COLUMN c` has no `c`, while the
//! old image of its first later update does (and vice versa after `DROP COLUMN`).

use std::collections::HashMap;

use thiserror::Error;

use crate::event::{Event, Op};
use crate::frame::encode_key;
use crate::row::Row;
use crate::value::Value;

#[derive(Debug, Error, PartialEq)]
pub enum ReplayError {
    #[error("event seq {seq}: {op:?} without a key")]
    MissingKey { seq: u64, op: Op },
    #[error("event seq {seq}: {op:?} without a new row image")]
    MissingImage { seq: u64, op: Op },
    #[error("event seq {seq}: {op:?} of key {key:?}, which is already present")]
    DuplicateKey { seq: u64, op: Op, key: Vec<Value> },
    #[error("event seq {seq}: {op:?} of key {key:?}, which is not present")]
    KeyNotFound { seq: u64, op: Op, key: Vec<Value> },
    #[error("event seq {seq}: {op:?} of key {key:?}: recorded old image {recorded:?} disagrees with replayed row {replayed:?}")]
    OldImageMismatch {
        seq: u64,
        op: Op,
        key: Vec<Value>,
        recorded: Row,
        replayed: Row,
    },
    #[error("event seq {seq} follows seq {prev}: history must be applied in seq order")]
    OutOfOrder { seq: u64, prev: u64 },
    #[error("event seq {seq} is for table {found}, this state replays table {expected}")]
    WrongTable { seq: u64, expected: u32, found: u32 },
}

/// Replayed contents of one table.
#[derive(Clone, Debug, Default)]
pub struct State {
    rows: HashMap<Vec<u8>, Row>,
    table_id: Option<u32>,
    last_seq: Option<u64>,
}

impl State {
    /// A state that accepts events of any table (the caller filters).
    pub fn new() -> State {
        State::default()
    }

    /// A state that rejects events of other tables with `ReplayError::WrongTable`.
    pub fn for_table(table_id: u32) -> State {
        State {
            table_id: Some(table_id),
            ..State::default()
        }
    }

    /// Seq of the last event applied successfully.
    pub fn last_seq(&self) -> Option<u64> {
        self.last_seq
    }

    /// Applies one event. On error the state is unchanged.
    pub fn apply(&mut self, e: &Event) -> Result<(), ReplayError> {
        let seq = e.seq;
        if let Some(expected) = self.table_id {
            if e.table_id != expected {
                return Err(ReplayError::WrongTable {
                    seq,
                    expected,
                    found: e.table_id,
                });
            }
        }
        if let Some(prev) = self.last_seq {
            // all events of one transaction share its seq
            if seq < prev {
                return Err(ReplayError::OutOfOrder { seq, prev });
            }
        }
        let op = e.op;
        let key = || e.key.as_ref().ok_or(ReplayError::MissingKey { seq, op });
        match op {
            Op::Insert => {
                let key = key()?;
                let new = e
                    .new
                    .as_ref()
                    .ok_or(ReplayError::MissingImage { seq, op })?;
                let k = encode_key(key);
                if self.rows.contains_key(&k) {
                    return Err(ReplayError::DuplicateKey {
                        seq,
                        op,
                        key: key.clone(),
                    });
                }
                self.rows.insert(k, new.clone());
            }
            Op::Update => {
                let key = key()?;
                let new = e
                    .new
                    .as_ref()
                    .ok_or(ReplayError::MissingImage { seq, op })?;
                let old_key = e.old_key.as_ref().unwrap_or(key);
                let ok = encode_key(old_key);
                let stored = self.rows.get(&ok).ok_or_else(|| ReplayError::KeyNotFound {
                    seq,
                    op,
                    key: old_key.clone(),
                })?;
                self.check_old(e, old_key, stored)?;
                let nk = if e.old_key.is_some() {
                    encode_key(key)
                } else {
                    ok.clone()
                };
                if nk != ok {
                    if self.rows.contains_key(&nk) {
                        return Err(ReplayError::DuplicateKey {
                            seq,
                            op,
                            key: key.clone(),
                        });
                    }
                    self.rows.remove(&ok);
                }
                self.rows.insert(nk, new.clone());
            }
            Op::Delete => {
                let key = key()?;
                let k = encode_key(key);
                let stored = self.rows.get(&k).ok_or_else(|| ReplayError::KeyNotFound {
                    seq,
                    op,
                    key: key.clone(),
                })?;
                self.check_old(e, key, stored)?;
                self.rows.remove(&k);
            }
            Op::Truncate => self.rows.clear(),
            Op::Schema => {}
        }
        self.last_seq = Some(seq);
        Ok(())
    }

    fn check_old(&self, e: &Event, key: &[Value], stored: &Row) -> Result<(), ReplayError> {
        match &e.old {
            Some(old) if !stored.agrees_with(old) => Err(ReplayError::OldImageMismatch {
                seq: e.seq,
                op: e.op,
                key: key.to_vec(),
                recorded: old.clone(),
                replayed: stored.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// Looks up a row by its identity key.
    pub fn get(&self, key: &[Value]) -> Option<&Row> {
        self.rows.get(&encode_key(key))
    }

    /// Live rows with their canonical key bytes, in no particular order.
    pub fn rows(&self) -> impl Iterator<Item = (&[u8], &Row)> {
        self.rows.iter().map(|(k, r)| (k.as_slice(), r))
    }

    /// Consumes the state, yielding its rows (e.g. for `multiset_diff`).
    pub fn into_rows(self) -> impl Iterator<Item = Row> {
        self.rows.into_values()
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// Compares two multisets of rows (duplicates count). Returns `(missing_in_a, missing_in_b)`:
/// rows of `b` without a counterpart in `a`, and rows of `a` without a counterpart in `b`.
/// Rows compare with `Row`'s `==` (exact: same attnums, values equal with NaN == NaN). Output
/// order follows the input order, so it is deterministic for deterministic inputs.
pub fn multiset_diff(
    a: impl IntoIterator<Item = Row>,
    b: impl IntoIterator<Item = Row>,
) -> (Vec<Row>, Vec<Row>) {
    let a: Vec<Row> = a.into_iter().collect();
    let b: Vec<Row> = b.into_iter().collect();
    fn unmatched(xs: &[Row], ys: &[Row]) -> Vec<Row> {
        // Rows of xs beyond their multiplicity in ys.
        let mut budget: HashMap<&Row, usize> = HashMap::with_capacity(ys.len());
        for y in ys {
            *budget.entry(y).or_insert(0) += 1;
        }
        xs.iter()
            .filter(|x| match budget.get_mut(x) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    false
                }
                _ => true,
            })
            .cloned()
            .collect()
    }
    let missing_in_a = unmatched(&b, &a);
    let missing_in_b = unmatched(&a, &b);
    (missing_in_a, missing_in_b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(id: i64, name: &str) -> Row {
        Row::new(vec![(1, Value::Int(id)), (2, Value::Text(name.into()))])
    }
    fn k(id: i64) -> Option<Vec<Value>> {
        Some(vec![Value::Int(id)])
    }
    fn ins(seq: u64, id: i64, name: &str) -> Event {
        let mut e = Event::new(seq, 0, 10, Op::Insert);
        e.key = k(id);
        e.new = Some(r(id, name));
        e
    }
    fn upd(seq: u64, old: (i64, &str), new: (i64, &str)) -> Event {
        let mut e = Event::new(seq, 0, 10, Op::Update);
        e.key = k(new.0);
        if old.0 != new.0 {
            e.old_key = k(old.0);
        }
        e.old = Some(r(old.0, old.1));
        e.new = Some(r(new.0, new.1));
        e
    }
    fn del(seq: u64, id: i64, name: &str) -> Event {
        let mut e = Event::new(seq, 0, 10, Op::Delete);
        e.key = k(id);
        e.old = Some(r(id, name));
        e
    }
    fn sorted_rows(s: &State) -> Vec<Row> {
        let mut v: Vec<Row> = s.rows().map(|(_, r)| r.clone()).collect();
        v.sort_by_key(|r| match r.get(1) {
            Some(Value::Int(i)) => *i,
            _ => i64::MIN,
        });
        v
    }

    #[test]
    fn replays_to_hand_computed_state() {
        let mut s = State::for_table(10);
        let events = vec![
            ins(1, 1, "a"),
            ins(2, 2, "b"),
            ins(3, 3, "c"),
            upd(4, (2, "b"), (2, "B")),  // plain update
            upd(5, (3, "c"), (30, "c")), // key change
            del(6, 1, "a"),
            ins(7, 1, "a again"),         // key reuse after delete
            upd(8, (30, "c"), (3, "c3")), // key change back to a freed key
        ];
        for e in &events {
            s.apply(e).unwrap();
        }
        assert_eq!(s.len(), 3);
        assert_eq!(
            sorted_rows(&s),
            vec![r(1, "a again"), r(2, "B"), r(3, "c3")]
        );
        assert_eq!(s.get(&[Value::Int(3)]), Some(&r(3, "c3")));
        assert_eq!(s.get(&[Value::Int(30)]), None);
        assert_eq!(s.last_seq(), Some(8));
        // Each key maps to the right row.
        for (kb, row) in s.rows() {
            assert_eq!(kb, encode_key(&row.project(&[1])).as_slice());
        }

        // Truncate clears; later inserts start afresh; schema events change nothing.
        s.apply(&Event::new(9, 0, 10, Op::Truncate)).unwrap();
        assert!(s.is_empty());
        s.apply(&ins(10, 2, "x")).unwrap();
        s.apply(&Event::new(11, 0, 10, Op::Schema)).unwrap();
        assert_eq!(sorted_rows(&s), vec![r(2, "x")]);
    }

    #[test]
    fn update_without_old_image_and_swap_keys() {
        let mut s = State::new();
        s.apply(&ins(1, 1, "a")).unwrap();
        s.apply(&ins(2, 2, "b")).unwrap();
        let mut e = upd(3, (1, "a"), (1, "z"));
        e.old = None;
        s.apply(&e).unwrap();
        assert_eq!(s.get(&[Value::Int(1)]), Some(&r(1, "z")));
        // Moving 1 onto 2's key while 2 exists is a duplicate.
        let err = s.apply(&upd(4, (1, "z"), (2, "z"))).unwrap_err();
        assert_eq!(
            err,
            ReplayError::DuplicateKey {
                seq: 4,
                op: Op::Update,
                key: vec![Value::Int(2)]
            }
        );
        // A state is unchanged by a failed apply.
        assert_eq!(sorted_rows(&s), vec![r(1, "z"), r(2, "b")]);
        assert_eq!(s.last_seq(), Some(3));
    }

    #[test]
    fn consistency_errors_name_seq_and_key() {
        let mut s = State::for_table(10);
        s.apply(&ins(1, 1, "a")).unwrap();

        let err = s.apply(&ins(2, 1, "dup")).unwrap_err();
        assert_eq!(
            err,
            ReplayError::DuplicateKey {
                seq: 2,
                op: Op::Insert,
                key: vec![Value::Int(1)]
            }
        );
        let msg = err.to_string();
        assert!(msg.contains("seq 2") && msg.contains("Int(1)"), "{msg}");

        let err = s.apply(&upd(3, (9, "?"), (9, "!"))).unwrap_err();
        assert_eq!(
            err,
            ReplayError::KeyNotFound {
                seq: 3,
                op: Op::Update,
                key: vec![Value::Int(9)]
            }
        );

        let err = s.apply(&upd(3, (9, "?"), (1, "!"))).unwrap_err();
        assert_eq!(
            err,
            ReplayError::KeyNotFound {
                seq: 3,
                op: Op::Update,
                key: vec![Value::Int(9)]
            }
        );

        let err = s.apply(&del(4, 5, "x")).unwrap_err();
        assert_eq!(
            err,
            ReplayError::KeyNotFound {
                seq: 4,
                op: Op::Delete,
                key: vec![Value::Int(5)]
            }
        );

        // Tampered old image on update and on delete.
        let err = s.apply(&upd(5, (1, "tampered"), (1, "b"))).unwrap_err();
        assert!(
            matches!(&err, ReplayError::OldImageMismatch { seq: 5, op: Op::Update, key, recorded, replayed }
                if key == &vec![Value::Int(1)] && recorded == &r(1, "tampered") && replayed == &r(1, "a")),
            "{err:?}"
        );
        let err = s.apply(&del(6, 1, "tampered")).unwrap_err();
        assert!(matches!(
            err,
            ReplayError::OldImageMismatch {
                seq: 6,
                op: Op::Delete,
                ..
            }
        ));

        let mut e = Event::new(7, 0, 10, Op::Insert);
        e.new = Some(r(3, "c"));
        assert_eq!(
            s.apply(&e).unwrap_err(),
            ReplayError::MissingKey {
                seq: 7,
                op: Op::Insert
            }
        );
        let mut e = Event::new(7, 0, 10, Op::Update);
        e.key = k(1);
        assert_eq!(
            s.apply(&e).unwrap_err(),
            ReplayError::MissingImage {
                seq: 7,
                op: Op::Update
            }
        );
        let e = Event::new(7, 0, 11, Op::Truncate);
        assert_eq!(
            s.apply(&e).unwrap_err(),
            ReplayError::WrongTable {
                seq: 7,
                expected: 10,
                found: 11
            }
        );

        // Nothing above changed the state.
        assert_eq!(sorted_rows(&s), vec![r(1, "a")]);

        s.apply(&del(8, 1, "a")).unwrap();
        assert_eq!(
            s.apply(&ins(3, 2, "b")).unwrap_err(),
            ReplayError::OutOfOrder { seq: 3, prev: 8 }
        );
        assert!(s.is_empty());
        // several events of one transaction share its seq
        s.apply(&ins(8, 2, "b")).unwrap();
        assert_eq!(sorted_rows(&s), vec![r(2, "b")]);
    }

    #[test]
    fn old_image_check_tolerates_added_and_dropped_columns() {
        let mut s = State::new();
        s.apply(&ins(1, 1, "a")).unwrap(); // attnums 1, 2
                                           // After ADD COLUMN 3: old image carries attnum 3.
        let mut e = upd(2, (1, "a"), (1, "b"));
        let mut old = r(1, "a");
        old.0.push((3, Value::Int(0)));
        e.old = Some(old);
        e.new = Some(Row::new(vec![
            (1, Value::Int(1)),
            (2, Value::Text("b".into())),
            (3, Value::Int(0)),
        ]));
        s.apply(&e).unwrap();
        // After DROP COLUMN 2: old image lacks attnum 2.
        let mut e = Event::new(3, 0, 10, Op::Delete);
        e.key = k(1);
        e.old = Some(Row::new(vec![(1, Value::Int(1)), (3, Value::Int(0))]));
        s.apply(&e).unwrap();
        assert!(s.is_empty());
    }

    #[test]
    fn nan_keys_and_values() {
        let mut s = State::new();
        let mut e = Event::new(1, 0, 1, Op::Insert);
        e.key = Some(vec![Value::Float(f64::NAN)]);
        e.new = Some(Row::new(vec![(1, Value::Float(f64::NAN))]));
        s.apply(&e).unwrap();
        let mut d = Event::new(2, 0, 1, Op::Delete);
        d.key = Some(vec![Value::Float(-f64::NAN)]);
        d.old = Some(Row::new(vec![(
            1,
            Value::Float(f64::from_bits(0x7ff0_0000_0000_0002)),
        )]));
        s.apply(&d).unwrap();
        assert!(s.is_empty());
    }

    #[test]
    fn multiset_diff_counts_duplicates() {
        let a = vec![r(1, "a"), r(2, "b"), r(2, "b"), r(3, "c"), r(5, "e")];
        let b = vec![r(2, "b"), r(1, "a"), r(4, "d"), r(3, "c"), r(4, "d")];
        let (missing_in_a, missing_in_b) = multiset_diff(a.clone(), b.clone());
        assert_eq!(missing_in_a, vec![r(4, "d"), r(4, "d")]);
        assert_eq!(missing_in_b, vec![r(2, "b"), r(5, "e")]);
        let (x, y) = multiset_diff(a.clone(), a.iter().rev().cloned());
        assert!(x.is_empty() && y.is_empty());
        let (x, y) = multiset_diff(Vec::new(), a.clone());
        assert_eq!((x, y), (a, vec![]));
        // NaN rows are equal to themselves.
        let n = Row::new(vec![(1, Value::Float(f64::NAN))]);
        let (x, y) = multiset_diff(vec![n.clone()], vec![n]);
        assert!(x.is_empty() && y.is_empty());
    }

    #[test]
    fn replay_then_diff_against_live() {
        let mut s = State::new();
        for e in [ins(1, 1, "a"), ins(2, 2, "b"), upd(3, (2, "b"), (2, "c"))] {
            s.apply(&e).unwrap();
        }
        let live = vec![r(2, "c"), r(1, "a")];
        let (x, y) = multiset_diff(s.clone().into_rows(), live);
        assert!(x.is_empty() && y.is_empty());
        let live = vec![r(2, "b"), r(1, "a")];
        let (missing_in_replay, missing_in_live) = multiset_diff(s.into_rows(), live);
        assert_eq!(missing_in_replay, vec![r(2, "b")]);
        assert_eq!(missing_in_live, vec![r(2, "c")]);
    }
}

/// Rows written before a column was added read it as its recorded "missing" value: give the
/// row that value (rows that already carry the column are left alone).
pub fn fill_missing(row: &mut Row, change: &crate::event::SchemaChange) {
    let mut added = false;
    for c in &change.columns {
        if let (false, Some(v)) = (c.dropped, &c.missing) {
            if row.get(c.attnum).is_none() {
                row.0.push((c.attnum, v.clone()));
                added = true;
            }
        }
    }
    if added {
        row.0.sort_by_key(|c| c.0);
    }
}

/// Identity of a row image under `key_cols` (None = the whole row), as the values...
pub(crate) fn image_key_values(key_cols: Option<&[u16]>, row: &Row) -> Vec<Value> {
    match key_cols {
        Some(cols) => row.project(cols),
        None => row.0.iter().map(|(_, v)| v.clone()).collect(),
    }
}

/// ... and as canonical key bytes, for hashing: the same bytes as
/// `frame::encode_key(&image_key_values(..))`, written without copying the values.
pub(crate) fn image_key(key_cols: Option<&[u16]>, row: &Row) -> Vec<u8> {
    struct Key<'a>(Option<&'a [u16]>, &'a Row);
    fn put<S: serde::ser::SerializeSeq>(seq: &mut S, v: &Value) -> Result<(), S::Error> {
        if v.has_noncanonical_nan() {
            let mut v = v.clone();
            v.canonicalize();
            seq.serialize_element(&v)
        } else {
            seq.serialize_element(v)
        }
    }
    impl serde::Serialize for Key<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeSeq;
            match self.0 {
                Some(cols) => {
                    let mut seq = s.serialize_seq(Some(cols.len()))?;
                    for &a in cols {
                        put(&mut seq, self.1.get(a).unwrap_or(&Value::Null))?;
                    }
                    seq.end()
                }
                None => {
                    let mut seq = s.serialize_seq(Some(self.1.len()))?;
                    for (_, v) in &self.1 .0 {
                        put(&mut seq, v)?;
                    }
                    seq.end()
                }
            }
        }
    }
    let mut k = rmp_serde::to_vec(&Key(key_cols, row)).expect("key serialization is infallible");
    crate::frame::fold_long_key(&mut k);
    k
}

/// After a schema change, give a row the table's new column set: columns added since read as
/// their recorded "missing" value, or NULL; dropped columns go. Later images carry exactly
/// these columns, so a whole-row identity (REPLICA IDENTITY FULL, or none) computed from a
/// normalized stored row matches the old image of the row's next update or delete.
pub fn normalize_for_schema(row: &mut Row, change: &crate::event::SchemaChange) {
    let mut changed = false;
    for c in &change.columns {
        if c.dropped {
            if let Some(i) = row.0.iter().position(|(a, _)| *a == c.attnum) {
                row.0.remove(i);
                changed = true;
            }
        } else if row.get(c.attnum).is_none() {
            row.0.push((c.attnum, c.missing.clone().unwrap_or(Value::Null)));
            changed = true;
        }
    }
    if changed {
        row.0.sort_by_key(|c| c.0);
    }
}

/// Replay by row images under a caller-chosen identity.
///
/// The doctor replays a table's whole history and compares it with the live rows. The key
/// recorded in each event is the identity *at the time* (rows loaded before a primary key
/// existed carry none), so this replay instead keys every row by the table's *current*
/// identity columns, projected from the images, and matches UPDATE/DELETE by their old image
/// (which must agree with the replayed row on every column both carry). With no identity
/// columns (`None`, REPLICA IDENTITY FULL) the whole row is the key and equal rows are kept
/// as a multiset.
#[derive(Clone, Debug, Default)]
pub struct ImageReplay {
    key_cols: Option<Vec<u16>>,
    rows: HashMap<Vec<u8>, Vec<Row>>,
    len: usize,
    last_seq: Option<u64>,
    /// Events at or below this seq are what a purge left: each row's image current at the
    /// horizon, its earlier events gone (see `set_base_upto`).
    base_upto: Option<u64>,
}

impl ImageReplay {
    pub fn new(key_cols: Option<Vec<u16>>) -> ImageReplay {
        ImageReplay { key_cols, ..Default::default() }
    }

    /// A replay whose state starts from a snapshot: `rows` are the table's contents after
    /// event `last_seq` (None = before any event), and later events apply on top of them.
    pub fn from_rows(
        key_cols: Option<Vec<u16>>,
        rows: impl IntoIterator<Item = Row>,
        last_seq: Option<u64>,
    ) -> ImageReplay {
        let mut s = ImageReplay::new(key_cols);
        for row in rows {
            s.add(row);
        }
        s.last_seq = last_seq;
        s
    }

    /// History was purged up to `horizon`: the events at or below it are, per row, the one
    /// that wrote its image current at the horizon. An UPDATE among them whose row is not
    /// there (its insert was purged) adds the new image.
    pub fn set_base_upto(&mut self, horizon: u64) {
        self.base_upto = Some(horizon);
    }

    fn key(&self, row: &Row) -> Vec<u8> {
        image_key(self.key_cols.as_deref(), row)
    }

    fn key_values(&self, row: &Row) -> Vec<Value> {
        image_key_values(self.key_cols.as_deref(), row)
    }

    fn remove_matching(&mut self, seq: u64, op: Op, old: &Row) -> Result<(), ReplayError> {
        let k = self.key(old);
        let key = self.key_values(old);
        let Some(bucket) = self.rows.get_mut(&k) else {
            return Err(ReplayError::KeyNotFound { seq, op, key });
        };
        let Some(i) = bucket.iter().position(|r| r.agrees_with(old)) else {
            let replayed = bucket[0].clone();
            return Err(ReplayError::OldImageMismatch { seq, op, key, recorded: old.clone(), replayed });
        };
        bucket.swap_remove(i);
        if bucket.is_empty() {
            self.rows.remove(&k);
        }
        self.len -= 1;
        Ok(())
    }

    fn add(&mut self, row: Row) {
        let k = self.key(&row);
        self.rows.entry(k).or_default().push(row);
        self.len += 1;
    }

    /// Apply one event; on error the state is unchanged.
    pub fn apply(&mut self, e: &Event) -> Result<(), ReplayError> {
        let seq = e.seq;
        if let Some(prev) = self.last_seq {
            if seq < prev {
                return Err(ReplayError::OutOfOrder { seq, prev });
            }
        }
        let op = e.op;
        match op {
            Op::Insert => {
                let new = e.new.clone().ok_or(ReplayError::MissingImage { seq, op })?;
                self.add(new);
            }
            Op::Update => {
                let old = e.old.as_ref().ok_or(ReplayError::MissingImage { seq, op })?;
                let new = e.new.clone().ok_or(ReplayError::MissingImage { seq, op })?;
                match self.remove_matching(seq, op, old) {
                    Err(ReplayError::KeyNotFound { .. }) if self.base_upto.is_some_and(|h| seq <= h) => {}
                    r => r?,
                }
                self.add(new);
            }
            Op::Delete => {
                let old = e.old.as_ref().ok_or(ReplayError::MissingImage { seq, op })?;
                self.remove_matching(seq, op, old)?;
            }
            Op::Truncate => {
                self.rows.clear();
                self.len = 0;
            }
            Op::Schema => {
                if let Some(change) = &e.schema {
                    if self.key_cols.is_some() {
                        for row in self.rows.values_mut().flatten() {
                            fill_missing(row, change);
                        }
                    } else {
                        // whole-row keys change with the row's columns: re-key every row
                        let rows: Vec<Row> = std::mem::take(&mut self.rows).into_values().flatten().collect();
                        self.len = 0;
                        for mut row in rows {
                            normalize_for_schema(&mut row, change);
                            self.add(row);
                        }
                    }
                }
            }
        }
        self.last_seq = Some(seq);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Seq of the last event applied successfully (or the snapshot's, see `from_rows`).
    pub fn last_seq(&self) -> Option<u64> {
        self.last_seq
    }

    /// The replayed rows, in no particular order.
    pub fn rows(&self) -> impl Iterator<Item = &Row> {
        self.rows.values().flatten()
    }

    pub fn into_rows(self) -> impl Iterator<Item = Row> {
        self.rows.into_values().flatten()
    }
}

#[cfg(test)]
mod image_replay_tests {
    use super::*;

    fn row(id: i64, v: &str) -> Row {
        Row(vec![(1, Value::Int(id)), (2, Value::Text(v.into()))])
    }
    fn ev(seq: u64, op: Op, old: Option<Row>, new: Option<Row>) -> Event {
        let mut e = Event::new(seq, 0, 1, op);
        e.old = old;
        e.new = new;
        e
    }

    #[test]
    fn rows_loaded_before_the_key_existed_are_matched_by_the_current_key() {
        let mut s = ImageReplay::new(Some(vec![1]));
        // inserted without a key (no primary key yet), then updated under the key
        s.apply(&ev(1, Op::Insert, None, Some(row(1, "a")))).unwrap();
        s.apply(&ev(1, Op::Insert, None, Some(row(2, "b")))).unwrap();
        s.apply(&ev(2, Op::Update, Some(row(1, "a")), Some(row(1, "a2")))).unwrap();
        s.apply(&ev(3, Op::Delete, Some(row(2, "b")), None)).unwrap();
        let rows: Vec<Row> = s.into_rows().collect();
        assert_eq!(rows, vec![row(1, "a2")]);
    }

    #[test]
    fn a_schema_event_gives_older_rows_the_added_columns_missing_value() {
        use crate::event::{ColumnDef, SchemaChange};
        let mut s = ImageReplay::new(Some(vec![1]));
        s.apply(&ev(1, Op::Insert, None, Some(row(1, "a")))).unwrap();
        let mut schema = ev(2, Op::Schema, None, None);
        let col = |attnum: u16, missing: Option<Value>| ColumnDef {
            attnum,
            name: format!("c{attnum}"),
            type_name: "integer".into(),
            typmod: -1,
            dropped: false,
            missing,
        };
        schema.schema = Some(SchemaChange {
            description: "ADD COLUMN".into(),
            columns: vec![col(1, None), col(2, None), col(3, Some(Value::Int(0)))],
        });
        s.apply(&schema).unwrap();
        // a later row carries its own value and is not overwritten
        let mut later = row(2, "b");
        later.0.push((3, Value::Int(5)));
        s.apply(&ev(3, Op::Insert, None, Some(later.clone()))).unwrap();
        schema.seq = 4; // a later ALTER TABLE lists the column again: applying it is idempotent
        s.apply(&schema).unwrap();
        let mut rows: Vec<Row> = s.into_rows().collect();
        rows.sort_by_key(|r| format!("{:?}", r.0));
        let mut first = row(1, "a");
        first.0.push((3, Value::Int(0)));
        assert_eq!(rows, vec![first, later]);
    }

    #[test]
    fn image_key_is_encode_key_of_the_projected_values() {
        let r = Row(vec![
            (1, Value::Float(f64::from_bits(0x7ff0_0000_0000_0001))),
            (2, Value::Text("t".into())),
            (4, Value::Record(vec![Value::Float(-f64::NAN), Value::Int(3)])),
        ]);
        for cols in [None, Some(vec![]), Some(vec![2]), Some(vec![4, 3, 1]), Some((0..20).collect())] {
            let cols = cols.as_deref();
            assert_eq!(image_key(cols, &r), encode_key(&image_key_values(cols, &r)));
        }
        assert_eq!(image_key(None, &Row::default()), encode_key(&[]));
    }

    #[test]
    fn seeded_from_a_snapshot() {
        let mut s = ImageReplay::from_rows(Some(vec![1]), vec![row(1, "a"), row(2, "b")], Some(5));
        assert_eq!((s.len(), s.last_seq()), (2, Some(5)));
        assert!(matches!(
            s.apply(&ev(4, Op::Insert, None, Some(row(3, "c")))),
            Err(ReplayError::OutOfOrder { seq: 4, prev: 5 })
        ));
        s.apply(&ev(6, Op::Update, Some(row(2, "b")), Some(row(2, "b2")))).unwrap();
        s.apply(&ev(7, Op::Delete, Some(row(1, "a")), None)).unwrap();
        assert_eq!(s.rows().collect::<Vec<_>>(), vec![&row(2, "b2")]);
        assert_eq!(s.last_seq(), Some(7));
        let empty = ImageReplay::from_rows(None, Vec::new(), None);
        assert!(empty.is_empty() && empty.last_seq().is_none() && empty.rows().next().is_none());
    }

    #[test]
    fn full_identity_keeps_duplicates_as_a_multiset() {
        let mut s = ImageReplay::new(None);
        s.apply(&ev(1, Op::Insert, None, Some(row(1, "x")))).unwrap();
        s.apply(&ev(1, Op::Insert, None, Some(row(1, "x")))).unwrap();
        s.apply(&ev(2, Op::Delete, Some(row(1, "x")), None)).unwrap();
        assert_eq!(s.len(), 1);
        assert!(matches!(
            s.apply(&ev(3, Op::Delete, Some(row(1, "y")), None)),
            Err(ReplayError::KeyNotFound { .. })
        ));
    }

    #[test]
    fn a_tampered_old_image_is_reported() {
        let mut s = ImageReplay::new(Some(vec![1]));
        s.apply(&ev(1, Op::Insert, None, Some(row(1, "a")))).unwrap();
        let err = s.apply(&ev(2, Op::Update, Some(row(1, "zzz")), Some(row(1, "b")))).unwrap_err();
        assert!(matches!(err, ReplayError::OldImageMismatch { seq: 2, .. }));
        assert_eq!(s.len(), 1);
        assert!(matches!(
            s.apply(&ev(1, Op::Insert, None, Some(row(5, "late")))),
            Ok(())
        ));
        assert!(matches!(
            s.apply(&ev(0, Op::Insert, None, Some(row(6, "early")))),
            Err(ReplayError::OutOfOrder { seq: 0, prev: 1 })
        ));
    }
}

#[cfg(test)]
mod schema_change_tests {
    use super::*;
    use crate::event::{ColumnDef, Event, Op, SchemaChange};
    use crate::versions::VersionBuilder;

    fn col(attnum: u16, dropped: bool, missing: Option<Value>) -> ColumnDef {
        ColumnDef { attnum, name: format!("c{attnum}"), type_name: "int".into(), typmod: -1, dropped, missing }
    }

    /// Whole-row identity across ADD COLUMN (no default) and DROP COLUMN: the next update's old
    /// image carries the new column set, and must still find its row.
    #[test]
    fn whole_row_identity_survives_add_and_drop_column() {
        let mut ins = Event::new(1, 0, 1, Op::Insert);
        ins.new = Some(Row::new(vec![(1, Value::Int(1)), (2, Value::Text("x".into()))]));
        let mut add = Event::new(2, 0, 1, Op::Schema);
        add.schema = Some(SchemaChange { description: "add".into(), columns: vec![col(1, false, None), col(2, false, None), col(3, false, None)] });
        let mut upd = Event::new(3, 0, 1, Op::Update);
        upd.old = Some(Row::new(vec![(1, Value::Int(1)), (2, Value::Text("x".into())), (3, Value::Null)]));
        upd.new = Some(Row::new(vec![(1, Value::Int(1)), (2, Value::Text("z".into())), (3, Value::Null)]));
        let mut drop = Event::new(4, 0, 1, Op::Schema);
        drop.schema = Some(SchemaChange { description: "drop".into(), columns: vec![col(1, false, None), col(2, true, None), col(3, false, None)] });
        let mut del = Event::new(5, 0, 1, Op::Delete);
        del.old = Some(Row::new(vec![(1, Value::Int(1)), (3, Value::Null)]));
        let events = [ins, add, upd, drop, del];

        let mut s = ImageReplay::new(None);
        let mut v = VersionBuilder::new(None);
        for e in &events {
            s.apply(e).unwrap_or_else(|err| panic!("ImageReplay at seq {}: {err}", e.seq));
            v.apply(e).unwrap_or_else(|err| panic!("VersionBuilder at seq {}: {err}", e.seq));
        }
        assert!(s.is_empty());
        let mut all = v.take_closed();
        all.extend(v.finish());
        assert_eq!(all.iter().map(|x| (x.start_seq, x.end_seq)).collect::<Vec<_>>(), vec![(1, Some(3)), (3, Some(5))]);
    }
}
