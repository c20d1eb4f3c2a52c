//! net.rs — reducing one transaction's changes to one net change per row.
//!
//! The extension reads a transaction's changes of a table as row lineages (by TID); one row can
//! still yield several events: deleted and inserted again (the new row has a new TID), or
//! changed before and after a rewrite (ALTER TABLE, CLUSTER) that gave it a new TID. With a row
//! identity at most one live row has a key at any moment, so consecutive events of one key
//! compose:
//!
//! | earlier | later  | net                                   |
//! |---------|--------|---------------------------------------|
//! | insert  | update | insert (the later image)              |
//! | insert  | delete | nothing                               |
//! | update  | update | update (nothing if back where it was) |
//! | update  | delete | delete (the earlier old image)        |
//! | delete  | insert | update (nothing if back where it was) |
//!
//! Identity-changing updates (`old_key` set), TRUNCATE and schema events are left alone and end
//! the folding of the keys they touch.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::event::{Event, Op};
use crate::frame::encode_key;

/// The encoded identity keys of one event (`encode_key` of `key` and of `old_key`), computed
/// once by the caller, which also stores them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventKeys {
    pub key: Option<Vec<u8>>,
    pub old_key: Option<Vec<u8>>,
}

impl EventKeys {
    pub fn of(event: &Event) -> EventKeys {
        EventKeys { key: event.key.as_deref().map(encode_key), old_key: event.old_key.as_deref().map(encode_key) }
    }
}

/// Fold `events[from..]` (one table's events of one transaction, in order) in place.
pub fn fold(events: &mut Vec<Event>, from: usize) {
    let mut keys: Vec<EventKeys> = events.iter().map(EventKeys::of).collect();
    fold_keyed(events, &mut keys, from);
}

/// FxHash (rustc's): the keys are encoded keys of one transaction's rows, hashed in-process
/// only; SipHash's DoS resistance buys nothing here and costs a third of a bulk load's fold.
#[derive(Default, Clone, Copy)]
pub struct FxHasher(u64);

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut h = self.0;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            h = (h.rotate_left(5) ^ u64::from_le_bytes(c.try_into().unwrap())).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            h = (h.rotate_left(5) ^ b as u64).wrapping_mul(K);
        }
        self.0 = h;
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// `fold` with the events' encoded keys given (`keys[i]` belongs to `events[i]`); `keys` is
/// kept in step with `events` (entries of dropped events are removed).
pub fn fold_keyed(events: &mut Vec<Event>, keys: &mut Vec<EventKeys>, from: usize) {
    assert_eq!(events.len(), keys.len(), "one EventKeys per event");
    if events.len() - from.min(events.len()) < 2 {
        return; // nothing to compose
    }
    let mut drop = vec![false; events.len()];
    {
        let mut last: HashMap<&[u8], usize, BuildHasherDefault<FxHasher>> =
            HashMap::with_capacity_and_hasher(events.len() - from, Default::default());
        for i in from..events.len() {
            let op = events[i].op;
            if matches!(op, Op::Truncate | Op::Schema) {
                last.clear();
                continue;
            }
            let Some(key) = keys[i].key.as_deref() else { continue };
            if let Some(old) = keys[i].old_key.as_deref() {
                last.remove(key);
                last.remove(old);
                continue;
            }
            let Some(&p) = last.get(key) else {
                last.insert(key, i);
                continue;
            };
            let composed = match (events[p].op, op) {
                (Op::Insert, Op::Update) => Some(Op::Insert),
                (Op::Update, Op::Update) | (Op::Delete, Op::Insert) => Some(Op::Update),
                (Op::Update, Op::Delete) => Some(Op::Delete),
                (Op::Insert, Op::Delete) => None,
                _ => {
                    last.insert(key, i); // not a sequence one row can produce: keep both
                    continue;
                }
            };
            drop[i] = true;
            let new = events[i].new.take();
            match composed {
                Some(c) => {
                    events[p].op = c;
                    events[p].new = new;
                    if c == Op::Update && events[p].old == events[p].new {
                        drop[p] = true; // back where it started
                        last.remove(key);
                    }
                }
                None => {
                    drop[p] = true;
                    last.remove(key);
                }
            }
        }
    }
    if !drop.contains(&true) {
        return;
    }
    let mut i = 0;
    events.retain(|_| {
        i += 1;
        !drop[i - 1]
    });
    let mut i = 0;
    keys.retain(|_| {
        i += 1;
        !drop[i - 1]
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row::Row;
    use crate::value::Value;

    fn row(id: i64, v: &str) -> Row {
        Row(vec![(1, Value::Int(id)), (2, Value::Text(v.into()))])
    }
    fn ev(op: Op, old: Option<Row>, new: Option<Row>) -> Event {
        let mut e = Event::new(0, 0, 1, op);
        let r = new.as_ref().or(old.as_ref()).unwrap();
        e.key = Some(vec![r.get(1).unwrap().clone()]);
        e.old = old;
        e.new = new;
        e
    }
    fn ops(events: &[Event]) -> Vec<(Op, i64)> {
        events
            .iter()
            .map(|e| (e.op, match e.key.as_ref().map(|k| &k[0]) { Some(Value::Int(i)) => *i, _ => -1 }))
            .collect()
    }

    #[test]
    fn delete_then_reinsert_is_an_update_or_nothing() {
        let mut e = vec![ev(Op::Delete, Some(row(2, "b")), None), ev(Op::Insert, None, Some(row(2, "b2")))];
        fold(&mut e, 0);
        assert_eq!(ops(&e), vec![(Op::Update, 2)]);
        assert_eq!((e[0].old.clone(), e[0].new.clone()), (Some(row(2, "b")), Some(row(2, "b2"))));

        let mut e = vec![ev(Op::Delete, Some(row(2, "b")), None), ev(Op::Insert, None, Some(row(2, "b")))];
        fold(&mut e, 0);
        assert!(e.is_empty());
    }

    #[test]
    fn changes_before_and_after_a_rewrite_compose() {
        // row 1 updated twice, row 100 inserted then updated, row 2 updated then deleted,
        // row 3 updated and back
        let mut e = vec![
            ev(Op::Update, Some(row(1, "a")), Some(row(1, "b"))),
            ev(Op::Insert, None, Some(row(100, "n"))),
            ev(Op::Update, Some(row(2, "x")), Some(row(2, "y"))),
            ev(Op::Update, Some(row(3, "p")), Some(row(3, "q"))),
            ev(Op::Update, Some(row(1, "b")), Some(row(1, "c"))),
            ev(Op::Update, Some(row(100, "n")), Some(row(100, "m"))),
            ev(Op::Delete, Some(row(2, "y")), None),
            ev(Op::Update, Some(row(3, "q")), Some(row(3, "p"))),
        ];
        fold(&mut e, 0);
        assert_eq!(ops(&e), vec![(Op::Update, 1), (Op::Insert, 100), (Op::Delete, 2)]);
        assert_eq!(e[0].old, Some(row(1, "a")));
        assert_eq!(e[0].new, Some(row(1, "c")));
        assert_eq!(e[1].new, Some(row(100, "m")));
        assert_eq!(e[2].old, Some(row(2, "x")));
    }

    #[test]
    fn insert_then_delete_vanishes_and_barriers_stop_folding() {
        let mut e = vec![ev(Op::Insert, None, Some(row(5, "a"))), ev(Op::Delete, Some(row(5, "a")), None)];
        fold(&mut e, 0);
        assert!(e.is_empty());

        // a TRUNCATE between two events of a key: both stay
        let mut e = vec![
            ev(Op::Update, Some(row(1, "a")), Some(row(1, "b"))),
            Event::new(0, 0, 1, Op::Truncate),
            ev(Op::Insert, None, Some(row(1, "c"))),
        ];
        fold(&mut e, 0);
        assert_eq!(e.len(), 3);

        // an identity change is left alone and ends folding of both keys
        let mut moved = ev(Op::Update, Some(row(1, "a")), Some(row(9, "a")));
        moved.old_key = Some(vec![Value::Int(1)]);
        let mut e = vec![ev(Op::Insert, None, Some(row(9, "z"))), moved, ev(Op::Update, Some(row(9, "a")), Some(row(9, "b")))];
        e[0].key = Some(vec![Value::Int(7)]); // unrelated key
        fold(&mut e, 0);
        assert_eq!(e.len(), 3);
    }

    #[test]
    fn only_the_tail_from_the_given_index_is_folded() {
        let mut e = vec![
            ev(Op::Update, Some(row(1, "a")), Some(row(1, "b"))),
            ev(Op::Update, Some(row(1, "b")), Some(row(1, "c"))),
            ev(Op::Update, Some(row(1, "c")), Some(row(1, "d"))),
        ];
        fold(&mut e, 1);
        assert_eq!(e.len(), 2);
        assert_eq!(e[1].old, Some(row(1, "b")));
        assert_eq!(e[1].new, Some(row(1, "d")));
    }

    #[test]
    fn keyed_fold_keeps_the_keys_in_step() {
        let mut e = vec![
            ev(Op::Update, Some(row(1, "a")), Some(row(1, "b"))),
            ev(Op::Insert, None, Some(row(100, "n"))),
            ev(Op::Delete, Some(row(2, "x")), None),
            ev(Op::Update, Some(row(1, "b")), Some(row(1, "c"))),
            ev(Op::Delete, Some(row(100, "n")), None),
            ev(Op::Insert, None, Some(row(2, "y"))),
        ];
        let mut keys: Vec<EventKeys> = e.iter().map(EventKeys::of).collect();
        fold_keyed(&mut e, &mut keys, 0);
        assert_eq!(ops(&e), vec![(Op::Update, 1), (Op::Update, 2)]);
        assert_eq!(keys, e.iter().map(EventKeys::of).collect::<Vec<_>>());
    }
}
