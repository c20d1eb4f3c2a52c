//! frame.rs — the DriftDB frame: the versioned, checksummed on-disk form of one `Event`,
//! plus the canonical byte form of identity keys.
//!
//! Frame layout (all integers little-endian):
//!
//! ```text
//! offset 0  2 bytes  magic  b"DF"
//! offset 2  1 byte   FORMAT_VERSION (= 1)
//! offset 3  1 byte   flags (= 0; reserved)
//! offset 4  4 bytes  CRC-32 (IEEE, crc32fast) over: version, flags, payload_len bytes, payload
//! offset 8  4 bytes  payload_len
//! offset 12 ...      payload: the Event as compact MessagePack (see event.rs / value.rs)
//! ```
//!
//! `decode_frame` checks, in this order: header present, magic, version, length, CRC, flags,
//! payload decode (which must consume the payload exactly). Magic and version come before
//! the CRC because a different version may lay out the rest of the header differently.

use std::io::Cursor;

use thiserror::Error;

use crate::row::Row;
use crate::event::{Event, Op};
use crate::value::Value;

pub const MAGIC: [u8; 2] = *b"DF";
pub const FORMAT_VERSION: u8 = 1;
pub const HEADER_LEN: usize = 12;

#[derive(Debug, Error)]
pub enum FrameError {
    #[error("frame truncated: {len} bytes, shorter than the {HEADER_LEN}-byte header")]
    TruncatedHeader { len: usize },
    #[error("bad magic {found:02x?}, expected \"DF\"")]
    BadMagic { found: [u8; 2] },
    #[error(
        "unsupported frame format version {found} (this build reads version {FORMAT_VERSION})"
    )]
    UnsupportedVersion { found: u8 },
    #[error(
        "frame truncated: header declares a {declared}-byte payload, {available} bytes present"
    )]
    TruncatedPayload { declared: u32, available: usize },
    #[error("frame length mismatch: header declares a {declared}-byte payload, {available} bytes follow the header")]
    LengthMismatch { declared: u32, available: usize },
    #[error("CRC mismatch: header says {expected:#010x}, contents hash to {actual:#010x}")]
    CrcMismatch { expected: u32, actual: u32 },
    #[error("unsupported frame flags {found:#04x}")]
    UnsupportedFlags { found: u8 },
    #[error("payload does not decode: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("payload has {trailing} trailing bytes after the event")]
    TrailingBytes { trailing: usize },
    #[error("a key longer than {LONG_KEY_BYTES} bytes is filed under its digest, which cannot be decoded")]
    DigestKey,
    #[error("payload does not start with an event's commit fields in their shortest form")]
    Prefix,
}

fn frame_crc(version: u8, flags: u8, len_le: [u8; 4], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&[version, flags]);
    h.update(&len_le);
    h.update(payload);
    h.finalize()
}

/// Encodes an event as a frame.
pub fn encode_frame(event: &Event) -> Vec<u8> {
    let mut buf = Vec::with_capacity(256);
    encode_frame_into(event, &mut buf);
    buf
}

/// `encode_frame` into a buffer the caller reuses (its contents are replaced).
pub fn encode_frame_into(event: &Event, buf: &mut Vec<u8>) {
    buf.clear();
    buf.extend_from_slice(&[
        MAGIC[0],
        MAGIC[1],
        FORMAT_VERSION,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
    ]);
    // Writing into a Vec cannot fail and every type in `Event` is serializable.
    rmp_serde::encode::write(buf, event).expect("event serialization is infallible");
    seal_frame(buf);
}

/// The part of an event's payload that does not depend on its commit: the MessagePack of
/// `key`, `old_key`, `old`, `new` and `schema`, one after the other, appended to `buf`. With
/// `encode_frame_from_tail` it makes exactly the frame `encode_frame` makes of the whole
/// event; the extension encodes row images this way before the transaction's seq is drawn
/// and keeps only these bytes.
pub fn encode_event_tail(event: &Event, buf: &mut Vec<u8>) {
    // An `Event` serializes as a 9-element array of its fields in declaration order (event.rs);
    // each field as an element is the same bytes as the field serialized on its own. Keys and
    // rows are written directly (`write_msgpack`, the same bytes as serde's); schema changes
    // are rare and go through serde.
    let nil = |buf: &mut Vec<u8>| rmp::encode::write_nil(buf).unwrap();
    for key in [&event.key, &event.old_key] {
        match key {
            Some(k) => crate::value::write_values(k, buf),
            None => nil(buf),
        }
    }
    for row in [&event.old, &event.new] {
        match row {
            Some(r) => r.write_msgpack(buf),
            None => nil(buf),
        }
    }
    match &event.schema {
        Some(schema) => {
            let mut ser = rmp_serde::Serializer::new(buf);
            serde::Serialize::serialize(schema, &mut ser).expect("schema serialization is infallible");
        }
        None => nil(buf),
    }
}

/// The tail `encode_event_tail` makes of a row event (no schema change), from its fields
/// already in MessagePack: `[key, old_key, old, new]`, each None written as nil. The extension
/// encodes rows straight from their tuples and assembles the tail with this.
pub fn encode_row_event_tail(parts: [Option<&[u8]>; 4], buf: &mut Vec<u8>) {
    for part in parts {
        match part {
            Some(bytes) => buf.extend_from_slice(bytes),
            None => rmp::encode::write_nil(buf).unwrap(),
        }
    }
    rmp::encode::write_nil(buf).unwrap(); // schema
}

/// The frame of an event given its commit fields and the tail `encode_event_tail` made of
/// the rest, into `buf` (its contents are replaced).
pub fn encode_frame_from_tail(seq: u64, committed_at: i64, table_id: u32, op: Op, tail: &[u8], buf: &mut Vec<u8>) {
    buf.clear();
    buf.extend_from_slice(&[MAGIC[0], MAGIC[1], FORMAT_VERSION, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    buf.push(0x99); // fixarray of the event's 9 fields
    // the first four fields as serde writes them (the test below compares): writes into a Vec
    // cannot fail
    rmp::encode::write_uint(buf, seq).unwrap();
    rmp::encode::write_sint(buf, committed_at).unwrap();
    rmp::encode::write_uint(buf, table_id as u64).unwrap();
    rmp::encode::write_uint(buf, op.as_u8() as u64).unwrap();
    buf.extend_from_slice(tail);
    seal_frame(buf);
}

/// A frame taken apart as `encode_frame_from_tail` put it together: its commit fields and
/// the tail (`encode_event_tail`'s bytes) they were written before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameParts<'a> {
    pub seq: u64,
    pub committed_at: i64,
    pub table_id: u32,
    pub op: Op,
    pub tail: &'a [u8],
}

/// Check a frame (as `check_frame`) and take it apart; `encode_frame_from_tail` of the parts
/// makes exactly `frame` again. A payload whose first four fields are not an event's commit
/// fields in the shortest MessagePack form (the only form driftdb writes) is refused, so that
/// the round trip is exact.
pub fn split_frame(frame: &[u8]) -> Result<FrameParts<'_>, FrameError> {
    let payload = checked_payload(frame)?;
    let (&first, mut rd) = payload.split_first().ok_or(FrameError::Prefix)?;
    if first != 0x99 {
        return Err(FrameError::Prefix);
    }
    let seq: u64 = rmp::decode::read_int(&mut rd).map_err(|_| FrameError::Prefix)?;
    let committed_at: i64 = rmp::decode::read_int(&mut rd).map_err(|_| FrameError::Prefix)?;
    let table_id: u32 = rmp::decode::read_int(&mut rd).map_err(|_| FrameError::Prefix)?;
    let op: u8 = rmp::decode::read_int(&mut rd).map_err(|_| FrameError::Prefix)?;
    let op = Op::from_u8(op).ok_or(FrameError::Prefix)?;
    let tail = rd;
    let mut canonical = Vec::with_capacity(32);
    canonical.push(0x99);
    rmp::encode::write_uint(&mut canonical, seq).unwrap();
    rmp::encode::write_sint(&mut canonical, committed_at).unwrap();
    rmp::encode::write_uint(&mut canonical, table_id as u64).unwrap();
    rmp::encode::write_uint(&mut canonical, op.as_u8() as u64).unwrap();
    if canonical[..] != payload[..payload.len() - tail.len()] {
        return Err(FrameError::Prefix);
    }
    Ok(FrameParts { seq, committed_at, table_id, op, tail })
}

/// Fills in the header of `buf`: a frame whose payload, from `HEADER_LEN` on, is already in
/// place (segment.rs rebuilds frames from stored payloads with it).
pub(crate) fn seal_frame(buf: &mut [u8]) {
    let payload_len = u32::try_from(buf.len() - HEADER_LEN).expect("event payload exceeds 4 GiB");
    let len_le = payload_len.to_le_bytes();
    let crc = frame_crc(FORMAT_VERSION, 0, len_le, &buf[HEADER_LEN..]);
    buf[..4].copy_from_slice(&[MAGIC[0], MAGIC[1], FORMAT_VERSION, 0]);
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
    buf[8..12].copy_from_slice(&len_le);
}

/// Validates everything except the payload's MessagePack content; returns the payload.
fn checked_payload(frame: &[u8]) -> Result<&[u8], FrameError> {
    if frame.len() < HEADER_LEN {
        // Still report a bad magic if we can see it: that is the more useful diagnosis.
        if frame.len() >= 2 && frame[..2] != MAGIC {
            return Err(FrameError::BadMagic {
                found: [frame[0], frame[1]],
            });
        }
        return Err(FrameError::TruncatedHeader { len: frame.len() });
    }
    if frame[..2] != MAGIC {
        return Err(FrameError::BadMagic {
            found: [frame[0], frame[1]],
        });
    }
    let version = frame[2];
    if version != FORMAT_VERSION {
        return Err(FrameError::UnsupportedVersion { found: version });
    }
    let flags = frame[3];
    let expected = u32::from_le_bytes(frame[4..8].try_into().unwrap());
    let len_le: [u8; 4] = frame[8..12].try_into().unwrap();
    let declared = u32::from_le_bytes(len_le);
    let available = frame.len() - HEADER_LEN;
    if (declared as usize) > available {
        return Err(FrameError::TruncatedPayload {
            declared,
            available,
        });
    }
    if (declared as usize) < available {
        return Err(FrameError::LengthMismatch {
            declared,
            available,
        });
    }
    let payload = &frame[HEADER_LEN..];
    let actual = frame_crc(version, flags, len_le, payload);
    if actual != expected {
        return Err(FrameError::CrcMismatch { expected, actual });
    }
    if flags != 0 {
        return Err(FrameError::UnsupportedFlags { found: flags });
    }
    Ok(payload)
}

/// Checks a frame's header, length and CRC without decoding the payload (for the doctor).
pub fn check_frame(frame: &[u8]) -> Result<(), FrameError> {
    checked_payload(frame).map(|_| ())
}

/// The commit time and the `new` row image of a frame (None for a delete or a frame without
/// one): what a key lookup or the versions of a key need, read without building the rest of
/// the event. The frame is checked (CRC and all) as by `decode_frame`, which decides whenever
/// the direct reader declines.
pub fn decode_new_image(frame: &[u8]) -> Result<(i64, Option<Row>), FrameError> {
    let payload = checked_payload(frame)?;
    if let Some(r) = crate::snapshot::fast::Reader::new(payload).event_new_image() {
        return Ok(r);
    }
    decode_frame(frame).map(|e| (e.committed_at, e.new))
}

/// Decodes a frame produced by `encode_frame`.
pub fn decode_frame(frame: &[u8]) -> Result<Event, FrameError> {
    let payload = checked_payload(frame)?;
    let mut de = rmp_serde::Deserializer::new(Cursor::new(payload));
    let event: Event = serde::Deserialize::deserialize(&mut de)?;
    let consumed = de.position() as usize;
    if consumed != payload.len() {
        return Err(FrameError::TrailingBytes {
            trailing: payload.len() - consumed,
        });
    }
    Ok(event)
}

/// Canonical bytes of an identity key: values that are `==` (see `Value`'s equality, under
/// which all NaNs are equal) give identical bytes, and different keys give different bytes.
/// Usable as a bytea/btree key for equality lookups and as a hash-map key. The encoding is a
/// MessagePack array of values (smallest int forms, NaNs rewritten to one bit pattern); one
/// longer than `LONG_KEY_BYTES` is replaced by its digest (`fold_long_key`).
pub fn encode_key(key: &[Value]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(16);
    if key.iter().any(Value::has_noncanonical_nan) {
        let mut owned = key.to_vec();
        owned.iter_mut().for_each(Value::canonicalize);
        crate::value::write_values(&owned, &mut buf);
    } else {
        crate::value::write_values(key, &mut buf);
    }
    fold_long_key(&mut buf);
    buf
}

/// Keys whose canonical encoding is longer than this are filed under their digest: the key
/// columns of `driftdb.events` and `driftdb.packs` are B-tree indexed, and a B-tree entry holds
/// at most about 2.7 kB (a REPLICA IDENTITY FULL key is the whole row).
pub const LONG_KEY_BYTES: usize = 1024;

/// The first byte of a digest key: 0xc1 is the one byte MessagePack never uses, so no encoded
/// key (an array, 0x90..=0x9f or 0xdc..=0xdd) starts with it.
pub const LONG_KEY_MARK: u8 = 0xc1;

/// Replace an encoded key longer than `LONG_KEY_BYTES` by `LONG_KEY_MARK` and the SHA-256 of
/// its encoding (33 bytes). Equal keys keep equal bytes and different keys different ones (up
/// to a SHA-256 collision); the order of long keys among the others is arbitrary but fixed,
/// which is all packs, segments and equality lookups need (range lookups are for integer keys
/// only). The event's frame keeps the key's values: only where a key is filed changes.
pub fn fold_long_key(encoded: &mut Vec<u8>) {
    if let Some(digest) = long_key_digest(encoded) {
        encoded.clear();
        encoded.extend_from_slice(&digest);
    }
}

/// The digest an encoded key is filed under (`fold_long_key`), or None if it is filed as it is.
pub fn long_key_digest(encoded: &[u8]) -> Option<[u8; 33]> {
    if encoded.len() <= LONG_KEY_BYTES {
        return None;
    }
    let mut digest = [LONG_KEY_MARK; 33];
    digest[1..].copy_from_slice(&crate::segment::sha256(encoded));
    Some(digest)
}

// a filed key always fits a pack entry, whose key length is a u16
const _: () = assert!(LONG_KEY_BYTES <= u16::MAX as usize);

/// Byte ranges (inclusive) of `encode_key` images that together hold the key of every
/// one-integer identity `k` with `lo <= k <= hi`, in the order bytea (and `[u8]`) compares.
///
/// MessagePack writes a non-negative integer as a fixint (`0x00..=0x7f`) or as `0xcc..=0xcf`
/// followed by the value big-endian, so non-negative keys sort as their values do. Negative
/// integers (`0xd0..=0xd3`, `0xe0..=0xff`) sort after them but not in value order, so any
/// negative part of the range is one range over every negative key: a superset, which the
/// caller rechecks. Empty when `lo > hi`.
pub fn int_key_ranges(lo: i64, hi: i64) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    if lo > hi {
        return out;
    }
    if lo < 0 {
        // 0x91 (a one-element array), then the first negative marker .. the largest (-1)
        out.push((vec![0x91, 0xd0], vec![0x91, 0xff]));
    }
    if hi >= 0 {
        out.push((encode_key(&[Value::Int(lo.max(0))]), encode_key(&[Value::Int(hi)])));
    }
    out
}

/// Inverse of `encode_key`, for keys not folded into a digest (`fold_long_key`).
pub fn decode_key(bytes: &[u8]) -> Result<Vec<Value>, FrameError> {
    if bytes.first() == Some(&LONG_KEY_MARK) {
        return Err(FrameError::DigestKey);
    }
    let mut de = rmp_serde::Deserializer::new(Cursor::new(bytes));
    let key: Vec<Value> = serde::Deserialize::deserialize(&mut de)?;
    let consumed = de.position() as usize;
    if consumed != bytes.len() {
        return Err(FrameError::TrailingBytes {
            trailing: bytes.len() - consumed,
        });
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int_key_ranges_hold_exactly_the_keys_in_range() {
        let probes: Vec<i64> = [i64::MIN, -1 << 40, -70000, -129, -128, -33, -32, -1, 0, 1, 127, 128, 255, 256, 65535, 65536, 1 << 33, i64::MAX]
            .into_iter()
            .collect();
        let inside = |ranges: &[(Vec<u8>, Vec<u8>)], k: i64| {
            let e = encode_key(&[Value::Int(k)]);
            ranges.iter().any(|(a, b)| a.as_slice() <= e.as_slice() && e.as_slice() <= b.as_slice())
        };
        for &lo in &probes {
            for &hi in &probes {
                let r = int_key_ranges(lo, hi);
                for &k in &probes {
                    let want = lo <= k && k <= hi;
                    if want {
                        assert!(inside(&r, k), "[{lo}, {hi}] misses {k}");
                    } else if k >= 0 {
                        // non-negative keys outside the range are never included
                        assert!(!inside(&r, k), "[{lo}, {hi}] includes {k}");
                    }
                }
                if lo >= 0 {
                    assert_eq!(r.len(), usize::from(lo <= hi));
                }
            }
        }
        // non-negative keys order as their values
        let mut v: Vec<i64> = probes.iter().copied().filter(|&k| k >= 0).collect();
        v.sort();
        let enc: Vec<Vec<u8>> = v.iter().map(|&k| encode_key(&[Value::Int(k)])).collect();
        assert!(enc.windows(2).all(|w| w[0] < w[1]));
    }
    use crate::event::{ColumnDef, Op, SchemaChange};
    use crate::row::Row;

    fn every_value() -> Vec<Value> {
        let mut all = crate::testdata::every_value(70000);
        // Nesting: array of records of arrays.
        let inner = Value::Array {
            lower: vec![1],
            dims: vec![2],
            elems: vec![Value::Text("a".into()), Value::Uuid([1; 16])],
        };
        all.push(Value::Array {
            lower: vec![1],
            dims: vec![2],
            elems: vec![
                Value::Record(vec![inner.clone(), Value::Null]),
                Value::Record(vec![
                    Value::Record(vec![inner]),
                    Value::Float(f64::NEG_INFINITY),
                ]),
            ],
        });
        all
    }

    /// Bitwise float identity on top of `==`, so the round trip is checked exactly (NaN payload
    /// and sign of zero included).
    fn identical(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Float(x), Value::Float(y)) => x.to_bits() == y.to_bits(),
            (Value::Array { elems: e1, .. }, Value::Array { elems: e2, .. })
            | (Value::Record(e1), Value::Record(e2)) => {
                a == b && e1.len() == e2.len() && e1.iter().zip(e2).all(|(x, y)| identical(x, y))
            }
            _ => a == b,
        }
    }

    fn sample_event() -> Event {
        let row = Row::new(vec![
            (1, Value::Int(42)),
            (2, Value::Text("some text".into())),
            (4, Value::Numeric("12.50".into())),
            (5, Value::TimestampTz(800_000_000_000_000)),
        ]);
        let mut e = Event::new(7, 812_345_678_901_234, 16_384, Op::Update);
        e.key = Some(vec![Value::Int(42)]);
        e.old_key = Some(vec![Value::Int(41)]);
        e.old = Some(Row::new(vec![(1, Value::Int(41))]));
        e.new = Some(row);
        e
    }

    #[test]
    fn round_trip_every_value_variant() {
        let values = every_value();
        for (i, v) in values.iter().enumerate() {
            let mut e = Event::new(i as u64, -5, 1, Op::Insert);
            e.key = Some(vec![v.clone()]);
            e.new = Some(Row::new(vec![(1, v.clone()), (1600, Value::Int(i as i64))]));
            let frame = encode_frame(&e);
            check_frame(&frame).unwrap();
            let back = decode_frame(&frame).unwrap();
            assert_eq!(back, e, "variant #{i}: {v:?}");
            assert!(
                identical(&back.key.as_ref().unwrap()[0], v),
                "bits of #{i}: {v:?}"
            );
            assert!(identical(back.new.as_ref().unwrap().get(1).unwrap(), v));
        }
        // All of them in one row, too.
        let mut e = sample_event();
        e.new = Some(Row::new(
            values
                .iter()
                .enumerate()
                .map(|(i, v)| (i as u16 + 1, v.clone()))
                .collect(),
        ));
        assert_eq!(decode_frame(&encode_frame(&e)).unwrap(), e);
    }

    /// encode_event_tail + encode_frame_from_tail make encode_frame's bytes, for every op,
    /// every kind of value, and seqs/times/table ids of every MessagePack integer width.
    #[test]
    fn frame_from_tail_is_encode_frame() {
        let values = every_value();
        let mut events = event_of_every_op();
        for (i, v) in values.iter().enumerate() {
            let mut e = Event::new(i as u64, -5, 1, Op::Update);
            e.key = Some(vec![v.clone()]);
            e.old = Some(Row::new(vec![(1, v.clone())]));
            e.new = Some(Row::new(vec![(1, v.clone()), (1600, Value::Int(i as i64))]));
            events.push(e);
        }
        let ints: [(u64, i64, u32); 7] = [
            (0, 0, 0),
            (1, -1, 127),
            (200, -33, 255),
            (70_000, 812_345_678_901_234, 65_536),
            (u32::MAX as u64 + 1, -812_345_678_901_234, u32::MAX),
            (u64::MAX, i64::MIN, 16_384),
            (5, i64::MAX, 1),
        ];
        let (mut tail, mut frame) = (Vec::new(), Vec::new());
        for mut e in events {
            for &(seq, ts, table_id) in &ints {
                (e.seq, e.committed_at, e.table_id) = (seq, ts, table_id);
                tail.clear();
                encode_event_tail(&e, &mut tail);
                encode_frame_from_tail(seq, ts, table_id, e.op, &tail, &mut frame);
                assert_eq!(frame, encode_frame(&e), "{e:?}");
                // and split_frame takes it apart again (event packs store tails)
                let parts = split_frame(&frame).unwrap();
                assert_eq!(parts, FrameParts { seq, committed_at: ts, table_id, op: e.op, tail: &tail });
            }
        }
    }

    /// split_frame refuses what it cannot give back byte for byte: commit fields in a longer
    /// MessagePack form than the shortest, a payload that is not a 9-element array, a bad op.
    #[test]
    fn split_frame_refuses_what_it_cannot_rebuild() {
        let seal = |payload: &[u8]| {
            let mut f = vec![0; HEADER_LEN];
            f.extend_from_slice(payload);
            seal_frame(&mut f);
            f
        };
        let tail = [0xc0u8; 5];
        let ok = seal(&[&[0x99, 0x05, 0x07, 0x01, 0x00][..], &tail].concat());
        assert_eq!(split_frame(&ok).unwrap().tail, &tail);
        // seq 5 as a uint8 (0xcc 0x05): a valid MessagePack integer, not the shortest form
        let long = seal(&[&[0x99, 0xcc, 0x05, 0x07, 0x01, 0x00][..], &tail].concat());
        assert!(matches!(split_frame(&long), Err(FrameError::Prefix)));
        let not_array = seal(&[&[0x98, 0x05, 0x07, 0x01, 0x00][..], &tail].concat());
        assert!(matches!(split_frame(&not_array), Err(FrameError::Prefix)));
        let bad_op = seal(&[&[0x99, 0x05, 0x07, 0x01, 0x09][..], &tail].concat());
        assert!(matches!(split_frame(&bad_op), Err(FrameError::Prefix)));
        assert!(matches!(split_frame(&seal(&[0x99, 0x05])), Err(FrameError::Prefix)));
        let mut flipped = ok.clone();
        flipped[HEADER_LEN + 1] ^= 1;
        assert!(matches!(split_frame(&flipped), Err(FrameError::CrcMismatch { .. })));
    }

    /// encode_row_event_tail of a row event's encoded fields is encode_event_tail's tail.
    #[test]
    fn row_event_tail_from_parts_is_encode_event_tail() {
        let key = vec![Value::Int(7), Value::Text("k".into())];
        let old_key = vec![Value::Int(6), Value::Text("k".into())];
        let old = Row::new(vec![(1, Value::Int(6)), (2, Value::Text("k".into())), (3, Value::Null)]);
        let new = Row::new(vec![(1, Value::Int(7)), (2, Value::Text("k".into())), (3, Value::Float(1.5))]);
        let enc_values = |v: &[Value]| {
            let mut b = Vec::new();
            crate::value::write_values(v, &mut b);
            b
        };
        let enc_row = |r: &Row| {
            let mut b = Vec::new();
            r.write_msgpack(&mut b);
            b
        };
        let (k, ok, o, n) = (enc_values(&key), enc_values(&old_key), enc_row(&old), enc_row(&new));
        for (op, with_key, with_old_key, with_old, with_new) in [
            (Op::Insert, true, false, false, true),
            (Op::Insert, false, false, false, true),
            (Op::Update, true, false, true, true),
            (Op::Update, true, true, true, true),
            (Op::Delete, true, false, true, false),
        ] {
            let mut e = Event::new(1, 2, 3, op);
            e.key = with_key.then(|| key.clone());
            e.old_key = with_old_key.then(|| old_key.clone());
            e.old = with_old.then(|| old.clone());
            e.new = with_new.then(|| new.clone());
            let (mut want, mut got) = (Vec::new(), Vec::new());
            encode_event_tail(&e, &mut want);
            let parts = [with_key.then_some(&k[..]), with_old_key.then_some(&ok[..]), with_old.then_some(&o[..]), with_new.then_some(&n[..])];
            encode_row_event_tail(parts, &mut got);
            assert_eq!(got, want, "{op:?}");
        }
    }

    /// Value::write_msgpack, write_scalar_msgpack and Row::write_msgpack (the commit path's encoders) write exactly
    /// serde's bytes, at every MessagePack length and integer width.
    #[test]
    fn direct_msgpack_is_serde_at_every_width() {
        let ints = [i64::MIN, -(1 << 31) - 1, -(1 << 31), -32769, -32768, -129, -128, -33, -32, -1, 0, 127, 128, 255, 256, 65535, 65536, (1 << 32) - 1, 1 << 32, i64::MAX];
        let lens = [0usize, 15, 16, 31, 32, 255, 256, 65535, 65536];
        let mut values = every_value();
        for &i in &ints {
            values.push(Value::Int(i));
            values.push(Value::Date(i as i32));
            values.push(Value::Time(i));
            values.push(Value::Timestamp(i));
            values.push(Value::TimestampTz(i));
            values.push(Value::TimeTz(i, i as i32));
            values.push(Value::Interval { months: i as i32, days: (i as i32).wrapping_neg(), micros: i });
            values.push(Value::Array { lower: vec![i as i32], dims: vec![1], elems: vec![Value::Int(i)] });
        }
        for &n in &lens {
            values.push(Value::Text("é".repeat(n / 2) + &"x".repeat(n % 2)));
            values.push(Value::Bytes(vec![7; n]));
            values.push(Value::Other("o".repeat(n)));
            values.push(Value::Numeric("9".repeat(n)));
            values.push(Value::Record(vec![Value::Null; n]));
            values.push(Value::Array { lower: vec![1], dims: vec![n as i32], elems: vec![Value::Bool(true); n] });
        }
        let mut buf = Vec::new();
        for v in &values {
            buf.clear();
            v.write_msgpack(&mut buf);
            assert_eq!(buf, rmp_serde::to_vec(v).unwrap(), "{v:?}");
            buf.clear();
            v.write_scalar_msgpack(&mut buf);
            assert_eq!(buf, rmp_serde::to_vec(v).unwrap(), "{v:?} (write_scalar_msgpack)");
        }
        buf.clear();
        crate::value::write_values(&values, &mut buf);
        assert_eq!(buf, rmp_serde::to_vec(&values).unwrap(), "a list of values (as keys are)");
        for n in [0usize, 1, 15, 16, 300] {
            let cols: Vec<(u16, Value)> = (0..n).map(|i| ((i * 7 + 1) as u16, values[i % values.len()].clone())).collect();
            let row = Row::new(cols);
            buf.clear();
            row.write_msgpack(&mut buf);
            assert_eq!(buf, rmp_serde::to_vec(&row).unwrap(), "row of {n} columns");
        }
    }

    /// decode_new_image reads exactly the commit time and new image decode_frame does, for
    /// events with every kind of value in every field, and refuses what decode_frame refuses.
    #[test]
    fn new_image_matches_full_decode() {
        let values = every_value();
        for (i, v) in values.iter().enumerate() {
            for op in [Op::Insert, Op::Update, Op::Delete, Op::Truncate, Op::Schema] {
                let mut e = Event::new(i as u64, -5 - i as i64 * 1_000_003, 7, op);
                e.key = Some(vec![v.clone()]);
                e.old_key = (i % 3 == 0).then(|| vec![v.clone(), Value::Null]);
                e.old = (op != Op::Insert).then(|| Row::new(vec![(2, v.clone())]));
                e.new = matches!(op, Op::Insert | Op::Update).then(|| Row::new(vec![(1, v.clone()), (9, Value::Int(i as i64))]));
                let frame = encode_frame(&e);
                let (at, new) = decode_new_image(&frame).unwrap();
                let full = decode_frame(&frame).unwrap();
                assert_eq!(at, full.committed_at);
                assert_eq!(format!("{new:?}"), format!("{:?}", full.new), "#{i} {op:?}");
            }
        }
        let mut frame = encode_frame(&sample_event());
        let n = frame.len();
        frame[n - 1] ^= 0x40;
        assert!(matches!(decode_new_image(&frame), Err(FrameError::CrcMismatch { .. })));
    }

    /// `sample_event()` with each op; the schema event lists a live and a dropped column.
    fn event_of_every_op() -> Vec<Event> {
        [Op::Insert, Op::Update, Op::Delete, Op::Truncate, Op::Schema]
            .into_iter()
            .map(|op| {
                let mut e = sample_event();
                e.op = op;
                if op == Op::Schema {
                    e.schema = Some(SchemaChange {
                        description: "ALTER TABLE t ADD COLUMN c int".into(),
                        columns: vec![
                            ColumnDef {
                                attnum: 1,
                                name: "id".into(),
                                type_name: "bigint".into(),
                                typmod: -1,
                                dropped: false,
                                missing: Some(Value::Int(7)),
                            },
                            ColumnDef {
                                attnum: 2,
                                name: "........pg.dropped.2........".into(),
                                type_name: "character varying(10)".into(),
                                typmod: 14,
                                dropped: true,
                                missing: None,
                            },
                        ],
                    });
                }
                e
            })
            .collect()
    }

    #[test]
    fn round_trip_every_op_and_schema() {
        for e in event_of_every_op() {
            assert_eq!(decode_frame(&encode_frame(&e)).unwrap(), e);
        }
    }

    #[test]
    fn header_layout() {
        let f = encode_frame(&sample_event());
        assert_eq!(&f[..4], &[b'D', b'F', 1, 0]);
        let len = u32::from_le_bytes(f[8..12].try_into().unwrap()) as usize;
        assert_eq!(len, f.len() - HEADER_LEN);
        let mut h = crc32fast::Hasher::new();
        h.update(&f[2..4]);
        h.update(&f[8..]);
        assert_eq!(
            u32::from_le_bytes(f[4..8].try_into().unwrap()),
            h.finalize()
        );
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let f = encode_frame(&sample_event());
        for byte in 0..f.len() {
            for bit in 0..8 {
                let mut g = f.clone();
                g[byte] ^= 1 << bit;
                let err = decode_frame(&g).expect_err("flip must be detected");
                assert!(
                    check_frame(&g).is_err(),
                    "check_frame missed byte {byte} bit {bit}"
                );
                match byte {
                    0 | 1 => assert!(matches!(err, FrameError::BadMagic { .. }), "{err}"),
                    2 => assert!(
                        matches!(err, FrameError::UnsupportedVersion { .. }),
                        "{err}"
                    ),
                    3..=7 => assert!(matches!(err, FrameError::CrcMismatch { .. }), "{err}"),
                    8..=11 => assert!(
                        matches!(
                            err,
                            FrameError::TruncatedPayload { .. } | FrameError::LengthMismatch { .. }
                        ),
                        "{err}"
                    ),
                    _ => match err {
                        FrameError::CrcMismatch { expected, actual } => {
                            assert_eq!(expected, u32::from_le_bytes(f[4..8].try_into().unwrap()));
                            assert_ne!(expected, actual);
                        }
                        other => panic!("payload flip at {byte}: {other}"),
                    },
                }
            }
        }
    }

    #[test]
    fn crc_mismatch_reports_both_values() {
        let mut f = encode_frame(&sample_event());
        let last = f.len() - 1;
        f[last] ^= 0x80;
        let err = decode_frame(&f).unwrap_err();
        let msg = err.to_string();
        match err {
            FrameError::CrcMismatch { expected, actual } => {
                assert!(msg.contains(&format!("{expected:#010x}")));
                assert!(msg.contains(&format!("{actual:#010x}")));
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn truncated_and_overlong_frames() {
        let f = encode_frame(&sample_event());
        for cut in 0..f.len() {
            let err = decode_frame(&f[..cut]).unwrap_err();
            if cut < HEADER_LEN {
                assert!(
                    matches!(err, FrameError::TruncatedHeader { len } if len == cut),
                    "{err}"
                );
            } else {
                assert!(
                    matches!(err, FrameError::TruncatedPayload { available, .. } if available == cut - HEADER_LEN),
                    "{err}"
                );
            }
        }
        let mut longer = f.clone();
        longer.push(0);
        assert!(matches!(
            decode_frame(&longer),
            Err(FrameError::LengthMismatch { .. })
        ));
        assert!(
            matches!(decode_frame(b"XY"), Err(FrameError::BadMagic { found }) if &found == b"XY")
        );
    }

    #[test]
    fn wrong_version_and_flags() {
        let f = encode_frame(&sample_event());
        // Rewrite with version 2 and a *valid* CRC: still refused, by version.
        let mut g = f.clone();
        g[2] = 2;
        let crc = frame_crc(2, 0, g[8..12].try_into().unwrap(), &g[12..]);
        g[4..8].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            decode_frame(&g),
            Err(FrameError::UnsupportedVersion { found: 2 })
        ));
        assert!(matches!(
            check_frame(&g),
            Err(FrameError::UnsupportedVersion { found: 2 })
        ));
        // Nonzero flags with a valid CRC.
        let mut g = f.clone();
        g[3] = 1;
        let crc = frame_crc(1, 1, g[8..12].try_into().unwrap(), &g[12..]);
        g[4..8].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            decode_frame(&g),
            Err(FrameError::UnsupportedFlags { found: 1 })
        ));
    }

    fn frame_around(payload: &[u8]) -> Vec<u8> {
        let len_le = (payload.len() as u32).to_le_bytes();
        let crc = frame_crc(1, 0, len_le, payload);
        let mut f = vec![b'D', b'F', 1, 0];
        f.extend_from_slice(&crc.to_le_bytes());
        f.extend_from_slice(&len_le);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn bad_payloads_with_valid_crc() {
        // Not an event at all.
        assert!(matches!(
            decode_frame(&frame_around(&[0xc0])),
            Err(FrameError::Decode(_))
        ));
        assert!(matches!(
            decode_frame(&frame_around(&[])),
            Err(FrameError::Decode(_))
        ));
        // A valid event followed by garbage.
        let mut payload = rmp_serde::to_vec(&sample_event()).unwrap();
        payload.push(0x01);
        assert!(check_frame(&frame_around(&payload)).is_ok());
        assert!(matches!(
            decode_frame(&frame_around(&payload)),
            Err(FrameError::TrailingBytes { trailing: 1 })
        ));
        // Event array with an unknown op code.
        let mut e = rmp_serde::to_vec(&Event::new(1, 1, 1, Op::Insert)).unwrap();
        e[4] = 9;
        assert!(matches!(
            decode_frame(&frame_around(&e)),
            Err(FrameError::Decode(_))
        ));
    }

    #[test]
    fn key_encoding_is_canonical() {
        let k = |v: Vec<Value>| encode_key(&v);
        // Equal keys, equal bytes — including NaNs with different bit patterns, nested.
        assert_eq!(
            k(vec![Value::Float(f64::NAN)]),
            k(vec![Value::Float(-f64::NAN)])
        );
        assert_eq!(
            k(vec![Value::Record(vec![Value::Float(f64::from_bits(
                0x7ff0_0000_0000_0001
            ))])]),
            k(vec![Value::Record(vec![Value::Float(f64::NAN)])])
        );
        // Integers use the smallest form whatever their origin (int2/int4/int8 all map to Int).
        assert_eq!(k(vec![Value::Int(1)]), vec![0x91, 0x01]);
        // Different keys, different bytes.
        let distinct = vec![
            vec![Value::Int(1)],
            vec![Value::Int(-1)],
            vec![Value::Float(1.0)],
            vec![Value::Float(0.0)],
            vec![Value::Float(-0.0)],
            vec![Value::Text("1".into())],
            vec![Value::Numeric("1".into())],
            vec![Value::Other("1".into())],
            vec![Value::Bytes(b"1".to_vec())],
            vec![Value::Int(1), Value::Null],
            vec![Value::Null, Value::Int(1)],
            vec![Value::Record(vec![Value::Int(1)])],
            vec![Value::Timestamp(1)],
            vec![Value::TimestampTz(1)],
            vec![],
        ];
        let encoded: Vec<Vec<u8>> = distinct.iter().map(|v| encode_key(v)).collect();
        for i in 0..encoded.len() {
            for j in 0..encoded.len() {
                assert_eq!(
                    encoded[i] == encoded[j],
                    i == j,
                    "{:?} vs {:?}",
                    distinct[i],
                    distinct[j]
                );
            }
            assert_eq!(decode_key(&encoded[i]).unwrap(), distinct[i]);
        }
        // Deterministic across calls, and every value variant is encodable and decodable.
        // (a key longer than LONG_KEY_BYTES is filed under its digest: long_keys_are_filed...)
        for v in every_value() {
            let key = vec![v.clone(), Value::Int(3)];
            let mut raw = Vec::new();
            crate::value::write_values(&key, &mut raw);
            assert_eq!(encode_key(&key), encode_key(&key.clone()));
            if raw.len() > LONG_KEY_BYTES {
                assert!(matches!(decode_key(&encode_key(&key)), Err(FrameError::DigestKey)));
            } else {
                assert_eq!(decode_key(&encode_key(&key)).unwrap(), key);
            }
        }
        assert!(matches!(
            decode_key(&[0x91, 0x01, 0x00]),
            Err(FrameError::TrailingBytes { .. })
        ));
    }

    #[test]
    fn long_keys_are_filed_under_their_digest() {
        use crate::segment::sha256;
        // the longest key kept as it is, and the shortest folded: a text of n bytes encodes
        // as 0x91, a str8/str16 header and the bytes
        let text = |n: usize| vec![Value::Text("k".repeat(n))];
        let raw = |k: &[Value]| {
            let mut b = Vec::new();
            crate::value::write_values(k, &mut b);
            b
        };
        let n_max = (0..2000).rev().find(|&n| raw(&text(n)).len() <= LONG_KEY_BYTES).unwrap();
        assert_eq!(encode_key(&text(n_max)), raw(&text(n_max)));
        assert_eq!(decode_key(&encode_key(&text(n_max))).unwrap(), text(n_max));
        let long = text(n_max + 1);
        let filed = encode_key(&long);
        assert_eq!(filed.len(), 33);
        assert_eq!(filed[0], LONG_KEY_MARK);
        assert_eq!(&filed[1..], &sha256(&raw(&long))[..]);
        assert!(matches!(decode_key(&filed), Err(FrameError::DigestKey)));
        // equal long keys (NaNs included) file alike; different ones apart
        let with_nan = |bits: u64| vec![Value::Float(f64::from_bits(bits)), Value::Text("x".repeat(3000))];
        assert_eq!(encode_key(&with_nan(0x7ff8_0000_0000_0001)), encode_key(&with_nan(0x7ff8_0000_0000_0002)));
        assert_ne!(encode_key(&text(5000)), encode_key(&text(5001)));
        // a short key never starts with the mark (every key is a MessagePack array), and a
        // long one always does
        for v in every_value() {
            let k = [v];
            assert_eq!(encode_key(&k)[0] == LONG_KEY_MARK, raw(&k).len() > LONG_KEY_BYTES);
        }
        // the replay's image key files a long whole-row key the same way
        let row = Row::new(vec![(1, Value::Int(1)), (2, Value::Text("y".repeat(4000)))]);
        assert_eq!(crate::replay::image_key(None, &row), encode_key(&[Value::Int(1), Value::Text("y".repeat(4000))]));
    }

    #[test]
    fn typical_event_is_small() {
        // 4-column update with old key: guard against accidental format bloat.
        let n = encode_frame(&sample_event()).len();
        assert!(n < 80, "frame is {n} bytes");
    }
}
