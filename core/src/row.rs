//! row.rs — one row image: column values keyed by PostgreSQL attribute number.
//!
//! Rows are keyed by attnum rather than by position or name because attnum is stable across
//! ADD / DROP / RENAME COLUMN: an old event stays interpretable against any later schema.
//! Invariant: entries are sorted by attnum, without duplicates (`Row::new` establishes it,
//! decoding re-establishes it); lookups binary-search. A column the row does not carry is
//! absent, not `Null` — e.g. a row image captured before `ADD COLUMN`.
//!
//! On disk a row is a MessagePack map `{attnum: value, ...}` in ascending attnum order.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::value::Value;

/// Column values keyed by attnum, sorted ascending.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Row(pub Vec<(u16, Value)>);

impl Row {
    /// Builds a row from columns in any order. If an attnum appears more than once, the last
    /// occurrence wins.
    pub fn new(mut cols: Vec<(u16, Value)>) -> Row {
        if !is_strictly_sorted(&cols) {
            cols.reverse();
            cols.sort_by_key(|c| c.0); // stable: the originally-last duplicate comes first
            cols.dedup_by_key(|c| c.0); // keeps the first of each run
        }
        Row(cols)
    }

    /// The value of column `attnum`, if the row carries that column.
    pub fn get(&self, attnum: u16) -> Option<&Value> {
        self.0
            .binary_search_by_key(&attnum, |c| c.0)
            .ok()
            .map(|i| &self.0[i].1)
    }

    /// Values of the given columns, in the given order — e.g. the identity key. A column the
    /// row does not carry yields `Value::Null` (as PostgreSQL reads a column added after the
    /// row was written without a default).
    pub fn project(&self, attnums: &[u16]) -> Vec<Value> {
        attnums
            .iter()
            .map(|&a| self.get(a).cloned().unwrap_or(Value::Null))
            .collect()
    }

    /// A copy of this row keeping only the given columns (those it carries).
    pub fn restricted_to(&self, attnums: &[u16]) -> Row {
        Row(self
            .0
            .iter()
            .filter(|c| attnums.contains(&c.0))
            .cloned()
            .collect())
    }

    /// True if both rows hold equal values for every attnum they both carry. Columns carried
    /// by only one side are ignored (ADD/DROP COLUMN do not rewrite old row images).
    pub fn agrees_with(&self, other: &Row) -> bool {
        let (mut i, mut j) = (0, 0);
        let (a, b) = (&self.0, &other.0);
        while i < a.len() && j < b.len() {
            match a[i].0.cmp(&b[j].0) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => j += 1,
                std::cmp::Ordering::Equal => {
                    if a[i].1 != b[j].1 {
                        return false;
                    }
                    i += 1;
                    j += 1;
                }
            }
        }
        true
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Appends this row's MessagePack to `buf`: the bytes of its `Serialize` through
    /// rmp_serde, written directly (see `Value::write_msgpack`).
    pub fn write_msgpack(&self, buf: &mut Vec<u8>) {
        rmp::encode::write_map_len(buf, self.0.len() as u32).unwrap();
        for (attnum, v) in &self.0 {
            rmp::encode::write_uint(buf, *attnum as u64).unwrap();
            v.write_msgpack(buf);
        }
    }

    /// The attnums this row carries, ascending.
    pub fn attnums(&self) -> impl Iterator<Item = u16> + '_ {
        self.0.iter().map(|c| c.0)
    }
}

fn is_strictly_sorted(cols: &[(u16, Value)]) -> bool {
    cols.windows(2).all(|w| w[0].0 < w[1].0)
}

impl Serialize for Row {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (attnum, v) in &self.0 {
            m.serialize_entry(attnum, v)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Row {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Row, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Row;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map from attnum to value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Row, A::Error> {
                let mut cols = Vec::with_capacity(map.size_hint().unwrap_or(0).min(1600));
                while let Some((k, v)) = map.next_entry::<u16, Value>()? {
                    cols.push((k, v));
                }
                if !is_strictly_sorted(&cols) {
                    let n = cols.len();
                    let row = Row::new(cols);
                    if row.len() != n {
                        return Err(de::Error::custom("duplicate attnum in row image"));
                    }
                    return Ok(row);
                }
                Ok(Row(cols))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> Row {
        Row::new(vec![
            (3, Value::Text("c".into())),
            (1, Value::Int(1)),
            (5, Value::Null),
        ])
    }

    #[test]
    fn new_sorts_and_dedups_last_wins() {
        let r = Row::new(vec![
            (2, Value::Int(1)),
            (1, Value::Int(2)),
            (2, Value::Int(3)),
        ]);
        assert_eq!(r.0, vec![(1, Value::Int(2)), (2, Value::Int(3))]);
    }

    #[test]
    fn get_and_project() {
        let r = row();
        assert_eq!(r.attnums().collect::<Vec<_>>(), vec![1, 3, 5]);
        assert_eq!(r.get(1), Some(&Value::Int(1)));
        assert_eq!(r.get(5), Some(&Value::Null));
        assert_eq!(r.get(2), None);
        assert_eq!(
            r.project(&[3, 1, 2]),
            vec![Value::Text("c".into()), Value::Int(1), Value::Null]
        );
        assert_eq!(
            r.restricted_to(&[5, 1]).attnums().collect::<Vec<_>>(),
            vec![1, 5]
        );
    }

    #[test]
    fn agrees_on_common_columns_only() {
        let a = Row::new(vec![(1, Value::Int(1)), (2, Value::Int(2))]);
        let b = Row::new(vec![(1, Value::Int(1)), (3, Value::Int(9))]);
        assert!(a.agrees_with(&b) && b.agrees_with(&a));
        let c = Row::new(vec![(1, Value::Int(7)), (2, Value::Int(2))]);
        assert!(!a.agrees_with(&c));
        assert!(a.agrees_with(&Row::default()));
    }

    #[test]
    fn serde_round_trip_and_unsorted_input() {
        let r = row();
        let bytes = rmp_serde::to_vec(&r).unwrap();
        assert_eq!(bytes[0], 0x83); // fixmap of 3
        assert_eq!(rmp_serde::from_slice::<Row>(&bytes).unwrap(), r);
        // A writer that did not sort: decoding sorts.
        let unsorted = Row(vec![(4, Value::Int(4)), (2, Value::Int(2))]);
        let back: Row = rmp_serde::from_slice(&rmp_serde::to_vec(&unsorted).unwrap()).unwrap();
        assert_eq!(back.0, vec![(2, Value::Int(2)), (4, Value::Int(4))]);
        // Duplicates are corrupt input.
        let dup = Row(vec![(4, Value::Int(4)), (4, Value::Int(5))]);
        assert!(rmp_serde::from_slice::<Row>(&rmp_serde::to_vec(&dup).unwrap()).is_err());
    }
}
