//! event.rs — one committed change of a system-versioned table, as stored in history.
//!
//! Every committed INSERT/UPDATE/DELETE of a row, every TRUNCATE and every schema change of a
//! versioned table becomes one `Event`. Events are serialized with rmp-serde's default
//! (compact) configuration: structs become MessagePack arrays in field-declaration order, so
//! the field order below is part of the on-disk format (FORMAT_VERSION 1) — append new fields
//! only together with a format version bump. `Op` is written as a single small integer.

use serde::de::{self, Deserialize, Deserializer};
use serde::ser::{Serialize, Serializer};

use crate::row::Row;
use crate::value::Value;

/// Kind of change. Serialized as its `u8` discriminant (part of the on-disk format).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Op {
    Insert = 0,
    Update = 1,
    Delete = 2,
    Truncate = 3,
    Schema = 4,
}

impl Op {
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    pub fn from_u8(v: u8) -> Option<Op> {
        Some(match v {
            0 => Op::Insert,
            1 => Op::Update,
            2 => Op::Delete,
            3 => Op::Truncate,
            4 => Op::Schema,
            _ => return None,
        })
    }

    /// Upper-case SQL-ish name, e.g. for a history view.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "INSERT",
            Op::Update => "UPDATE",
            Op::Delete => "DELETE",
            Op::Truncate => "TRUNCATE",
            Op::Schema => "SCHEMA",
        }
    }
}

impl Serialize for Op {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(self.as_u8())
    }
}

impl<'de> Deserialize<'de> for Op {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Op, D::Error> {
        let v = u8::deserialize(d)?;
        Op::from_u8(v).ok_or_else(|| {
            de::Error::invalid_value(de::Unexpected::Unsigned(v.into()), &"an op code 0..=4")
        })
    }
}

/// One column of a table's schema, as of a schema-change event.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ColumnDef {
    pub attnum: u16,
    pub name: String,
    /// Type name as `format_type` renders it (never an OID: OIDs do not survive dump/restore).
    pub type_name: String,
    pub typmod: i32,
    pub dropped: bool,
    /// The value rows written before the column was added read for it (ADD COLUMN with a
    /// constant DEFAULT); None = NULL. Recorded because PostgreSQL forgets it when a later
    /// rewrite (VACUUM FULL, CLUSTER) stores the value in every row.
    pub missing: Option<crate::value::Value>,
}

/// Payload of an `Op::Schema` event: what happened and the table's columns afterwards.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SchemaChange {
    pub description: String,
    pub columns: Vec<ColumnDef>,
}

/// One committed change.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Event {
    /// Position in history; strictly increasing in commit order.
    pub seq: u64,
    /// Commit time, microseconds since 2000-01-01 00:00:00 UTC (PostgreSQL's epoch).
    pub committed_at: i64,
    pub table_id: u32,
    pub op: Op,
    /// Identity of the row after the event (before it, for `Delete`); None for
    /// `Truncate`/`Schema`.
    pub key: Option<Vec<Value>>,
    /// Identity before the event; set only when an `Update` changed the identity.
    pub old_key: Option<Vec<Value>>,
    /// Row image before the event (`Update`, `Delete`), if recorded.
    pub old: Option<Row>,
    /// Row image after the event (`Insert`, `Update`).
    pub new: Option<Row>,
    /// Set for `Op::Schema` only.
    pub schema: Option<SchemaChange>,
}

impl Event {
    /// An event with every optional part empty; fill in what the op needs.
    pub fn new(seq: u64, committed_at: i64, table_id: u32, op: Op) -> Event {
        Event {
            seq,
            committed_at,
            table_id,
            op,
            key: None,
            old_key: None,
            old: None,
            new: None,
            schema: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_is_one_byte_and_round_trips() {
        for v in 0..=4u8 {
            let op = Op::from_u8(v).unwrap();
            let bytes = rmp_serde::to_vec(&op).unwrap();
            assert_eq!(bytes, vec![v]);
            assert_eq!(rmp_serde::from_slice::<Op>(&bytes).unwrap(), op);
        }
        assert!(Op::from_u8(5).is_none());
        assert!(rmp_serde::from_slice::<Op>(&[5]).is_err());
    }

    #[test]
    fn event_is_an_array() {
        let e = Event::new(1, 2, 3, Op::Truncate);
        let bytes = rmp_serde::to_vec(&e).unwrap();
        // fixarray(9), 1, 2, 3, op 3, five nils
        assert_eq!(bytes, vec![0x99, 1, 2, 3, 3, 0xc0, 0xc0, 0xc0, 0xc0, 0xc0]);
        assert_eq!(rmp_serde::from_slice::<Event>(&bytes).unwrap(), e);
    }
}
