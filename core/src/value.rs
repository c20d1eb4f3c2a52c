//! value.rs — the portable value model for one column value.
//!
//! A `Value` is what driftdb stores for a column in an event. It must stay readable after
//! pg_dump/restore into another cluster, so it never contains raw PostgreSQL datum images or
//! type OIDs: every type either maps onto one of the native variants below (with the exact
//! PostgreSQL semantics documented per variant) or is kept as its text output (`Other`).
//!
//! On disk a `Value` is MessagePack, written by the hand-written `Serialize` impl below (not
//! serde's derived enum encoding, whose variant tagging differs between rmp-serde versions and
//! spells variant names out as strings). The six most common variants use MessagePack's own
//! types, so they cost no tag at all; the rest are a MessagePack array `[tag, field, ...]`:
//!
//! | variant      | encoding                                   |
//! |--------------|--------------------------------------------|
//! | Null         | nil                                        |
//! | Bool         | true / false                               |
//! | Int          | int (smallest MessagePack int form)        |
//! | Float        | float 64 (bit pattern preserved, NaN payload too) |
//! | Text         | str                                        |
//! | Bytes        | bin                                        |
//! | Numeric      | `[6, str]`                                 |
//! | Date         | `[7, int]`                                 |
//! | Time         | `[8, int]`                                 |
//! | TimeTz       | `[9, int, int]`                            |
//! | Timestamp    | `[10, int]`                                |
//! | TimestampTz  | `[11, int]`                                |
//! | Interval     | `[12, months, days, micros]`               |
//! | Uuid         | `[13, bin(16)]`                            |
//! | Array        | `[14, [lower...], [dims...], [elem...]]`   |
//! | Record       | `[15, [field...]]`                         |
//! | Other        | `[16, str]`                                |
//!
//! Tags are part of the on-disk format (FORMAT_VERSION 1): never renumber, only append.
//!
//! Equality: `PartialEq` (and `Eq`, `Hash`) are implemented by hand for the purpose of "did
//! this value change": floats compare by bit pattern, except that every NaN equals every other
//! NaN. So `-0.0 != 0.0` (PostgreSQL prints them differently: `-0` vs `0`) and `NaN == NaN`
//! (PostgreSQL prints every NaN as `NaN` and treats them as equal). This relation is reflexive,
//! symmetric and transitive, which is why `Eq` and `Hash` are sound.

use std::fmt;
use std::hash::{Hash, Hasher};

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeTuple, Serializer};

/// One column value.
///
/// Time-related variants use PostgreSQL's own integer representations, so a round trip through
/// driftdb is exact:
///
/// * `Date(i32)`: days since 2000-01-01 (PostgreSQL's `DateADT`); `i32::MIN` / `i32::MAX` are
///   `-infinity` / `infinity`.
/// * `Time(i64)`: microseconds since midnight (`TimeADT`).
/// * `TimeTz(micros, zone)`: microseconds since midnight and the zone offset in seconds, with
///   PostgreSQL's sign convention (`TimeTzADT.zone`: positive = west of UTC).
/// * `Timestamp(i64)`: microseconds since 2000-01-01 00:00:00, no zone; `i64::MIN` / `i64::MAX`
///   are `-infinity` / `infinity` as in PostgreSQL.
/// * `TimestampTz(i64)`: microseconds since 2000-01-01 00:00:00 UTC; same infinities.
/// * `Interval { months, days, micros }`: PostgreSQL's three interval fields, unnormalised.
///
/// Other variants:
///
/// * `Int` holds int2/int4/int8 (and oid-like integers); `Float` holds float4/float8 (a float4
///   is widened exactly).
/// * `Text` holds text/varchar/bpchar/name etc. converted to UTF-8.
/// * `Numeric(String)` is PostgreSQL's numeric text output (keeps the display scale, `NaN`,
///   `Infinity`, `-Infinity`).
/// * `Array { lower, dims, elems }`: lower bounds and lengths per dimension, elements in
///   row-major order (`Null` for NULL elements); an empty array has empty `lower`/`dims`.
/// * `Record(fields)`: a composite value, fields in attribute order.
/// * `Other(String)`: the type's text output, for types without a native form (json, inet,
///   ranges, enums, ...).
#[derive(Clone, Debug)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    Bytes(Vec<u8>),
    Numeric(String),
    Date(i32),
    Time(i64),
    TimeTz(i64, i32),
    Timestamp(i64),
    TimestampTz(i64),
    Interval {
        months: i32,
        days: i32,
        micros: i64,
    },
    Uuid([u8; 16]),
    Array {
        lower: Vec<i32>,
        dims: Vec<i32>,
        elems: Vec<Value>,
    },
    Record(Vec<Value>),
    Other(String),
}

// Wire tags of the tagged (array-encoded) variants. Part of the on-disk format.
const TAG_NUMERIC: u8 = 6;
const TAG_DATE: u8 = 7;
const TAG_TIME: u8 = 8;
const TAG_TIMETZ: u8 = 9;
const TAG_TIMESTAMP: u8 = 10;
const TAG_TIMESTAMPTZ: u8 = 11;
const TAG_INTERVAL: u8 = 12;
const TAG_UUID: u8 = 13;
const TAG_ARRAY: u8 = 14;
const TAG_RECORD: u8 = 15;
const TAG_OTHER: u8 = 16;

/// Bit pattern every NaN is mapped to when a canonical form is needed (keys, hashing).
pub(crate) const CANONICAL_NAN_BITS: u64 = 0x7ff8_0000_0000_0000;

/// Float equality used by `Value`'s `PartialEq`: same bits, or both NaN.
#[inline]
fn float_same(a: f64, b: f64) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

#[inline]
fn float_hash_bits(f: f64) -> u64 {
    if f.is_nan() {
        CANONICAL_NAN_BITS
    } else {
        f.to_bits()
    }
}

impl Value {
    /// Variant discriminant as used on the wire for tagged variants (0..=5 for the untagged
    /// ones); also used for hashing.
    fn kind(&self) -> u8 {
        match self {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Int(_) => 2,
            Value::Float(_) => 3,
            Value::Text(_) => 4,
            Value::Bytes(_) => 5,
            Value::Numeric(_) => TAG_NUMERIC,
            Value::Date(_) => TAG_DATE,
            Value::Time(_) => TAG_TIME,
            Value::TimeTz(..) => TAG_TIMETZ,
            Value::Timestamp(_) => TAG_TIMESTAMP,
            Value::TimestampTz(_) => TAG_TIMESTAMPTZ,
            Value::Interval { .. } => TAG_INTERVAL,
            Value::Uuid(_) => TAG_UUID,
            Value::Array { .. } => TAG_ARRAY,
            Value::Record(_) => TAG_RECORD,
            Value::Other(_) => TAG_OTHER,
        }
    }

    /// Same as `==`; spelled out for call sites that want to stress the change-detection
    /// semantics (NaN equals NaN, floats otherwise compare by bit pattern).
    pub fn same_as(&self, other: &Value) -> bool {
        self == other
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// True if this value (or a nested element) is a NaN whose bit pattern is not the
    /// canonical one, i.e. `canonicalize` would change its encoding.
    pub(crate) fn has_noncanonical_nan(&self) -> bool {
        match self {
            Value::Float(f) => f.is_nan() && f.to_bits() != CANONICAL_NAN_BITS,
            Value::Array { elems, .. } => elems.iter().any(Value::has_noncanonical_nan),
            Value::Record(fields) => fields.iter().any(Value::has_noncanonical_nan),
            _ => false,
        }
    }

    /// Rewrites every NaN (recursively) to the canonical NaN bit pattern, so that values that
    /// are `==` also encode to identical bytes.
    pub(crate) fn canonicalize(&mut self) {
        match self {
            Value::Float(f) if f.is_nan() => *f = f64::from_bits(CANONICAL_NAN_BITS),
            Value::Array { elems, .. } => elems.iter_mut().for_each(Value::canonicalize),
            Value::Record(fields) => fields.iter_mut().for_each(Value::canonicalize),
            _ => {}
        }
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        use Value::*;
        match (self, other) {
            (Null, Null) => true,
            (Bool(a), Bool(b)) => a == b,
            (Int(a), Int(b)) => a == b,
            (Float(a), Float(b)) => float_same(*a, *b),
            (Text(a), Text(b)) => a == b,
            (Bytes(a), Bytes(b)) => a == b,
            (Numeric(a), Numeric(b)) => a == b,
            (Date(a), Date(b)) => a == b,
            (Time(a), Time(b)) => a == b,
            (TimeTz(a, za), TimeTz(b, zb)) => a == b && za == zb,
            (Timestamp(a), Timestamp(b)) => a == b,
            (TimestampTz(a), TimestampTz(b)) => a == b,
            (
                Interval {
                    months: m1,
                    days: d1,
                    micros: u1,
                },
                Interval {
                    months: m2,
                    days: d2,
                    micros: u2,
                },
            ) => m1 == m2 && d1 == d2 && u1 == u2,
            (Uuid(a), Uuid(b)) => a == b,
            (
                Array {
                    lower: l1,
                    dims: d1,
                    elems: e1,
                },
                Array {
                    lower: l2,
                    dims: d2,
                    elems: e2,
                },
            ) => l1 == l2 && d1 == d2 && e1 == e2,
            (Record(a), Record(b)) => a == b,
            (Other(a), Other(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Value {}

impl Hash for Value {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u8(self.kind());
        match self {
            Value::Null => {}
            Value::Bool(b) => b.hash(state),
            Value::Int(i) => i.hash(state),
            Value::Float(f) => state.write_u64(float_hash_bits(*f)),
            Value::Text(s) | Value::Numeric(s) | Value::Other(s) => s.hash(state),
            Value::Bytes(b) => b.hash(state),
            Value::Date(d) => d.hash(state),
            Value::Time(t) | Value::Timestamp(t) | Value::TimestampTz(t) => t.hash(state),
            Value::TimeTz(t, z) => {
                t.hash(state);
                z.hash(state);
            }
            Value::Interval {
                months,
                days,
                micros,
            } => {
                months.hash(state);
                days.hash(state);
                micros.hash(state);
            }
            Value::Uuid(u) => u.hash(state),
            Value::Array { lower, dims, elems } => {
                lower.hash(state);
                dims.hash(state);
                elems.hash(state);
            }
            Value::Record(fields) => fields.hash(state),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Serialization
// ---------------------------------------------------------------------------------------------

/// Append the MessagePack `Value::Numeric` of this numeric text (ASCII, as `numeric_out`
/// prints it): for writers that print a numeric without making a Value of it.
pub fn write_numeric_msgpack(buf: &mut Vec<u8>, text: &[u8]) {
    use rmp::encode as e;
    // writes into a Vec cannot fail
    e::write_array_len(buf, 2).unwrap();
    e::write_uint(buf, TAG_NUMERIC as u64).unwrap();
    e::write_str_len(buf, text.len() as u32).unwrap();
    buf.extend_from_slice(text);
}

impl Value {
    /// `write_msgpack` for the values that own no memory (null, booleans, numbers, dates and
    /// times): small enough to inline where a row is encoded column by column, so that a
    /// scalar built there costs only its bytes. Other values go to `write_msgpack`.
    #[inline(always)]
    pub fn write_scalar_msgpack(&self, buf: &mut Vec<u8>) {
        use rmp::encode as e;
        // writes into a Vec cannot fail
        let tagged = |buf: &mut Vec<u8>, tag: u8, v: i64| {
            e::write_array_len(buf, 2).unwrap();
            e::write_uint(buf, tag as u64).unwrap();
            e::write_sint(buf, v).unwrap();
        };
        match self {
            Value::Null => e::write_nil(buf).unwrap(),
            Value::Bool(b) => e::write_bool(buf, *b).unwrap(),
            Value::Int(i) => {
                e::write_sint(buf, *i).unwrap();
            }
            Value::Float(f) => e::write_f64(buf, *f).unwrap(),
            Value::Date(d) => tagged(buf, TAG_DATE, *d as i64),
            Value::Time(t) => tagged(buf, TAG_TIME, *t),
            Value::Timestamp(t) => tagged(buf, TAG_TIMESTAMP, *t),
            Value::TimestampTz(t) => tagged(buf, TAG_TIMESTAMPTZ, *t),
            _ => self.write_msgpack(buf),
        }
    }

    /// Appends this value's MessagePack to `buf`: the same bytes as its `Serialize` through
    /// rmp_serde (checked by the tests below), written directly. The commit path encodes every
    /// changed row this way; serde's generic machinery was a sixth of a bulk load's commit.
    /// Inlined, so that a scalar built where it is written costs only its bytes.
    #[inline]
    pub fn write_msgpack(&self, buf: &mut Vec<u8>) {
        use rmp::encode as e;
        // writes into a Vec cannot fail
        let tag = |buf: &mut Vec<u8>, n: u32, tag: u8| {
            e::write_array_len(buf, n).unwrap();
            e::write_uint(buf, tag as u64).unwrap();
        };
        match self {
            Value::Null | Value::Bool(_) | Value::Int(_) | Value::Float(_) | Value::Date(_) | Value::Time(_) | Value::Timestamp(_) | Value::TimestampTz(_) => {
                self.write_scalar_msgpack(buf)
            }
            Value::Text(t) => e::write_str(buf, t).unwrap(),
            Value::Bytes(b) => e::write_bin(buf, b).unwrap(),
            Value::Numeric(n) => write_numeric_msgpack(buf, n.as_bytes()),
            Value::TimeTz(t, z) => {
                tag(buf, 3, TAG_TIMETZ);
                e::write_sint(buf, *t).unwrap();
                e::write_sint(buf, *z as i64).unwrap();
            }
            Value::Interval { months, days, micros } => {
                tag(buf, 4, TAG_INTERVAL);
                e::write_sint(buf, *months as i64).unwrap();
                e::write_sint(buf, *days as i64).unwrap();
                e::write_sint(buf, *micros).unwrap();
            }
            Value::Uuid(u) => {
                tag(buf, 2, TAG_UUID);
                e::write_bin(buf, u).unwrap();
            }
            Value::Array { lower, dims, elems } => {
                tag(buf, 4, TAG_ARRAY);
                for ints in [lower, dims] {
                    e::write_array_len(buf, ints.len() as u32).unwrap();
                    for &i in ints {
                        e::write_sint(buf, i as i64).unwrap();
                    }
                }
                write_values(elems, buf);
            }
            Value::Record(fields) => {
                tag(buf, 2, TAG_RECORD);
                write_values(fields, buf);
            }
            Value::Other(o) => {
                tag(buf, 2, TAG_OTHER);
                e::write_str(buf, o).unwrap();
            }
        }
    }
}

/// Appends the MessagePack array of `values` to `buf` (as `Vec<Value>` serializes).
pub fn write_values(values: &[Value], buf: &mut Vec<u8>) {
    rmp::encode::write_array_len(buf, values.len() as u32).unwrap();
    values.iter().for_each(|v| v.write_msgpack(buf));
}

/// Serializes a byte slice as MessagePack bin (serde would otherwise write an array of ints).
struct Bin<'a>(&'a [u8]);

impl Serialize for Bin<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// Deserializes MessagePack bin into an owned buffer.
struct ByteBuf(Vec<u8>);

impl<'de> Deserialize<'de> for ByteBuf {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ByteBuf;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v.to_vec()))
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v))
            }
        }
        d.deserialize_bytes(V)
    }
}

fn tagged1<S: Serializer, A: Serialize + ?Sized>(s: S, tag: u8, a: &A) -> Result<S::Ok, S::Error> {
    let mut t = s.serialize_tuple(2)?;
    t.serialize_element(&tag)?;
    t.serialize_element(a)?;
    t.end()
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => s.serialize_i64(*i),
            Value::Float(f) => s.serialize_f64(*f),
            Value::Text(t) => s.serialize_str(t),
            Value::Bytes(b) => s.serialize_bytes(b),
            Value::Numeric(n) => tagged1(s, TAG_NUMERIC, n.as_str()),
            Value::Date(d) => tagged1(s, TAG_DATE, d),
            Value::Time(t) => tagged1(s, TAG_TIME, t),
            Value::TimeTz(t, z) => {
                let mut tup = s.serialize_tuple(3)?;
                tup.serialize_element(&TAG_TIMETZ)?;
                tup.serialize_element(t)?;
                tup.serialize_element(z)?;
                tup.end()
            }
            Value::Timestamp(t) => tagged1(s, TAG_TIMESTAMP, t),
            Value::TimestampTz(t) => tagged1(s, TAG_TIMESTAMPTZ, t),
            Value::Interval {
                months,
                days,
                micros,
            } => {
                let mut tup = s.serialize_tuple(4)?;
                tup.serialize_element(&TAG_INTERVAL)?;
                tup.serialize_element(months)?;
                tup.serialize_element(days)?;
                tup.serialize_element(micros)?;
                tup.end()
            }
            Value::Uuid(u) => tagged1(s, TAG_UUID, &Bin(u)),
            Value::Array { lower, dims, elems } => {
                let mut tup = s.serialize_tuple(4)?;
                tup.serialize_element(&TAG_ARRAY)?;
                tup.serialize_element(lower)?;
                tup.serialize_element(dims)?;
                tup.serialize_element(elems)?;
                tup.end()
            }
            Value::Record(fields) => tagged1(s, TAG_RECORD, fields),
            Value::Other(o) => tagged1(s, TAG_OTHER, o.as_str()),
        }
    }
}

struct ValueVisitor;

fn next<'de, A: SeqAccess<'de>, T: Deserialize<'de>>(seq: &mut A, i: usize) -> Result<T, A::Error> {
    seq.next_element()?
        .ok_or_else(|| de::Error::invalid_length(i, &"more fields of a tagged value"))
}

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a driftdb value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        i64::try_from(v)
            .map(Value::Int)
            .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &"an integer within i64"))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Text(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::Text(v))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::Bytes(v.to_vec()))
    }
    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Value, E> {
        Ok(Value::Bytes(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let tag: u8 = next(&mut seq, 0)?;
        let v = match tag {
            TAG_NUMERIC => Value::Numeric(next(&mut seq, 1)?),
            TAG_DATE => Value::Date(next(&mut seq, 1)?),
            TAG_TIME => Value::Time(next(&mut seq, 1)?),
            TAG_TIMETZ => Value::TimeTz(next(&mut seq, 1)?, next(&mut seq, 2)?),
            TAG_TIMESTAMP => Value::Timestamp(next(&mut seq, 1)?),
            TAG_TIMESTAMPTZ => Value::TimestampTz(next(&mut seq, 1)?),
            TAG_INTERVAL => Value::Interval {
                months: next(&mut seq, 1)?,
                days: next(&mut seq, 2)?,
                micros: next(&mut seq, 3)?,
            },
            TAG_UUID => {
                let ByteBuf(b) = next(&mut seq, 1)?;
                let arr: [u8; 16] = b
                    .as_slice()
                    .try_into()
                    .map_err(|_| de::Error::invalid_length(b.len(), &"a 16-byte uuid"))?;
                Value::Uuid(arr)
            }
            TAG_ARRAY => Value::Array {
                lower: next(&mut seq, 1)?,
                dims: next(&mut seq, 2)?,
                elems: next(&mut seq, 3)?,
            },
            TAG_RECORD => Value::Record(next(&mut seq, 1)?),
            TAG_OTHER => Value::Other(next(&mut seq, 1)?),
            other => {
                return Err(de::Error::invalid_value(
                    de::Unexpected::Unsigned(other.into()),
                    &"a known driftdb value tag (6..=16)",
                ))
            }
        };
        if seq.next_element::<IgnoredAny>()?.is_some() {
            return Err(de::Error::custom(format!(
                "too many fields for value tag {tag}"
            )));
        }
        Ok(v)
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::hash_map::DefaultHasher;

    fn h(v: &Value) -> u64 {
        let mut s = DefaultHasher::new();
        v.hash(&mut s);
        s.finish()
    }

    #[test]
    fn float_equality_semantics() {
        let nan1 = f64::NAN;
        let nan2 = f64::from_bits(0x7ff8_0000_0000_0001);
        let nan3 = -f64::NAN;
        assert!(nan2.is_nan() && nan3.is_nan());
        assert_eq!(Value::Float(nan1), Value::Float(nan2));
        assert_eq!(Value::Float(nan1), Value::Float(nan3));
        assert_eq!(h(&Value::Float(nan1)), h(&Value::Float(nan2)));
        assert_ne!(Value::Float(0.0), Value::Float(-0.0));
        assert_eq!(Value::Float(f64::INFINITY), Value::Float(f64::INFINITY));
        assert_ne!(Value::Float(f64::INFINITY), Value::Float(f64::NEG_INFINITY));
        assert_ne!(Value::Float(1.0), Value::Int(1));
        assert!(Value::Float(nan1).same_as(&Value::Float(nan3)));
        let nested_a = Value::Record(vec![Value::Float(nan1), Value::Null]);
        let nested_b = Value::Record(vec![Value::Float(nan2), Value::Null]);
        assert_eq!(nested_a, nested_b);
        assert_eq!(h(&nested_a), h(&nested_b));
    }

    #[test]
    fn variants_are_distinct() {
        // Same payload, different variant: never equal.
        assert_ne!(Value::Text("1".into()), Value::Numeric("1".into()));
        assert_ne!(Value::Text("1".into()), Value::Other("1".into()));
        assert_ne!(Value::Timestamp(5), Value::TimestampTz(5));
        assert_ne!(Value::Time(5), Value::Timestamp(5));
        assert_ne!(Value::Null, Value::Record(vec![]));
    }

    #[test]
    fn wire_forms_are_compact() {
        let enc = |v: &Value| rmp_serde::to_vec(v).unwrap();
        assert_eq!(enc(&Value::Null), vec![0xc0]);
        assert_eq!(enc(&Value::Bool(true)), vec![0xc3]);
        assert_eq!(enc(&Value::Int(5)), vec![0x05]);
        assert_eq!(enc(&Value::Int(-1)), vec![0xff]);
        assert_eq!(enc(&Value::Text("ab".into())), vec![0xa2, b'a', b'b']);
        assert_eq!(enc(&Value::Bytes(vec![1, 2])), vec![0xc4, 2, 1, 2]);
        assert_eq!(enc(&Value::Date(3)), vec![0x92, TAG_DATE, 3]);
        assert_eq!(enc(&Value::Uuid([7; 16])).len(), 1 + 1 + 2 + 16);
        assert_eq!(enc(&Value::Float(1.5)).len(), 9);
    }

    #[test]
    fn rejects_unknown_tag_and_extra_fields() {
        assert!(rmp_serde::from_slice::<Value>(&[0x92, 99, 1]).is_err());
        assert!(rmp_serde::from_slice::<Value>(&[0x93, TAG_DATE, 1, 2]).is_err());
        assert!(rmp_serde::from_slice::<Value>(&[0x91, TAG_DATE]).is_err());
        // uuid of the wrong length
        assert!(rmp_serde::from_slice::<Value>(&[0x92, TAG_UUID, 0xc4, 1, 0]).is_err());
        // u64 beyond i64
        assert!(rmp_serde::from_slice::<Value>(&[0xcf, 0xff, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }
}
