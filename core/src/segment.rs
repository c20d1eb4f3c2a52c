//! segment.rs — compacted event segments, and the SHA-256 hash chain.
//!
//! A table's history is stored one event per row of `driftdb.events (table_id, seq, ord, op,
//! key, frame)`. Compaction packs many such rows of one table — ops `i`, `u`, `d` and `m`
//! (moved-key markers), never `t`/`s` or keyless events — into one immutable segment, sorted
//! by (key, seq, ord) with keys compared bytewise as PostgreSQL's bytea btree orders them
//! (memcmp, then the shorter first). A lookup by key decompresses one segment and finds that
//! key's events next to each other.
//!
//! A segment is a DriftDB block (snapshot.rs: magic "DS", the same 24-byte header and CRC,
//! zstd level 3 when that is smaller) of kind 2 (`BlockKind::EventSegment`); the header's row
//! count is the number of entries. Its raw payload carries its own layout version,
//! `SEGMENT_FORMAT_VERSION`, in its first byte, so that the payload can change without a new
//! block format version (which would concern snapshots too).
//!
//! Payload layout (varint = unsigned LEB128; zvarint = zigzag-mapped i64 as a varint):
//!
//! ```text
//! u8       SEGMENT_FORMAT_VERSION (= 1)
//! zvarint  seq_lo, seq_hi      least and greatest entry seq
//! zvarint  time_lo, time_hi    least and greatest committed_at of the entries' events
//! varint   the byte length of each of the 9 streams below, in this order (they must add up
//!          to the rest of the payload)
//! ...      the streams, concatenated:
//!   FLAGS  2 bytes (u16 LE) per entry, see below
//!   KEYS   per key group (a run of entries with one key): varint length, key bytes
//!   SEQ    per entry, zvarint: seq minus the previous entry's seq in its group; for a group's
//!          first entry, minus the previous group's first seq (0 for the first group)
//!   ORD    per entry, zvarint ord
//!   OPS    per entry: its op byte (i u d m), then, unless OP_RAW, the event's op code
//!   TIME   per entry without TIME_RAW, zvarint: committed_at minus that of the previous
//!          entry of its group with a TIME entry; for the first such entry of a group, minus
//!          that of the first such entry of the last group that had one (0 if none)
//!   TABLE  per entry without TABLE_RAW, varint table_id
//!   LENS   per stored field (RAW below), varint length
//!   RAW    stored fields' MessagePack bytes, verbatim
//! ```
//!
//! Entries keep only their frame's payload, the `Event`'s MessagePack array of 9 fields
//! (event.rs): the frame header is rebuilt on decoding (`frame::seal_frame`; the block CRC
//! protects the payload), which gives the original frame byte for byte. Each field of the
//! payload is stored in its cheapest form that reproduces its exact bytes, as the FLAGS say:
//!
//! ```text
//! bit 0      NEW_KEY: the entry starts a key group (its key is next in KEYS); set on entry 0
//! bit 1      OPAQUE: the payload is not a fixarray of 9 well-formed fields: stored whole in
//!            RAW (the other bits are then 0)
//! bit 2      SEQ_RAW    seq field stored; else it is the entry's seq (canonical uint)
//! bit 3      TIME_RAW   committed_at stored; else canonical int, in TIME
//! bit 4      TABLE_RAW  table_id stored; else canonical uint, in TABLE
//! bit 5      OP_RAW     op stored; else a positive fixint, in OPS
//! bits 6-7   key:     0 nil, 1 stored, 2 = the entry's key bytes
//! bits 8-9   old_key: 0 nil, 1 stored, 2 = the entry's key bytes (a moved-key marker)
//! bits 10-11 old:     0 nil, 1 stored, 2 = the `new` field of the previous entry of the
//!                     same key in this segment (a row's old image is its previous new one)
//! bits 12-13 new:     0 nil, 1 stored, 2 = the `old` field (a no-op update), 3 = stored
//!                     as a diff against the `old` field (see `row_diff`; used when the diff
//!                     is at most half the image)
//! bit 14     SCHEMA_RAW: schema field stored; else nil
//! bit 15     0
//! ```
//!
//! "Canonical" int forms are MessagePack's smallest ones, as rmp-serde writes them; a field in
//! any other form is simply stored. So every payload round-trips exactly, whatever wrote it;
//! only the compression ratio depends on the common case. The streams group like data so that
//! zstd finds it: the FLAGS, OPS, ORD and TABLE streams of a typical segment are nearly
//! constant, SEQ and TIME are small repeating deltas, and RAW holds one key's row images one
//! after the other. An update's old image, being the key's previous new image, is not stored
//! again; its new image is stored whole when the row is narrow or most of it changed (zstd
//! then matches it against the previous image, at a repeating offset) and as a diff when the
//! update changed a few columns of a wide row. Measured (tests `bytes_per_event`, bench
//! core_segment): ~10 bytes per event stored for the bench table (5 narrow columns, every one
//! but the id changed by each update; ~80-byte heap rows), ~10 for a 20-column table with 4
//! columns changed per update.
//!
//! `decode_segment` checks, beyond the block: payload version, that the streams add up to the
//! payload and are consumed exactly, valid flags and ops, (key, seq, ord) strictly increasing,
//! the entry count and the summary's seq and time ranges. It does not decode the events: the
//! rebuilt frames are valid because the encoder validated every frame (`decode_frame`) before
//! storing it. `decode_segment_key` decodes one key's entries, skipping the other entries
//! without building them and stopping after the key's group.
//!
//! The hash chain: `chain_hash(prev, link)` = SHA-256(b"driftdb-chain-v1" || prev ||
//! len(link) as u64 LE || link), starting from `GENESIS` (all zeros).

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::event::Op;
use crate::frame::{self, FrameError, HEADER_LEN};
use crate::snapshot::{self, BlockError, BlockKind};

/// Layout version of a segment's raw payload (its first byte).
pub const SEGMENT_FORMAT_VERSION: u8 = 1;

/// One row of `driftdb.events` as compaction packs it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SegmentEntry {
    pub seq: i64,
    pub ord: i32,
    /// b'i', b'u', b'd' or b'm' (moved-key marker).
    pub op: u8,
    /// The canonical key bytes (frame.rs `encode_key`) the row is filed under.
    pub key: Vec<u8>,
    /// A complete DriftDB frame (`encode_frame`); for op b'm' the frame of the update it marks.
    pub frame: Vec<u8>,
}

/// What a segment holds, for its catalog row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    pub nevents: u32,
    pub seq_lo: i64,
    pub seq_hi: i64,
    /// First and last key, bytewise.
    pub key_lo: Vec<u8>,
    pub key_hi: Vec<u8>,
    /// Least and greatest `committed_at` of the events.
    pub time_lo: i64,
    pub time_hi: i64,
    /// Payload length uncompressed, and as stored (the block is 24 bytes longer).
    pub raw_len: u32,
    pub stored_len: u32,
}

#[derive(Debug, Error)]
pub enum SegmentError {
    #[error("segment block: {0}")]
    Block(#[from] BlockError),
    #[error("a segment needs at least one entry")]
    Empty,
    #[error("entry {index} does not follow the previous entry in (key, seq, ord) order")]
    Unsorted { index: usize },
    #[error("entry {index} has op {op:#04x}, expected one of b'i' b'u' b'd' b'm'")]
    BadOp { index: usize, op: u8 },
    #[error("entry {index}: op '{}' does not fit its frame's {found:?} event", char::from(*op))]
    OpMismatch { index: usize, op: u8, found: Op },
    #[error("entry {index}: bad frame: {source}")]
    Frame {
        index: usize,
        #[source]
        source: FrameError,
    },
    #[error("segment too large: more than 4 GiB of payload or u32::MAX entries")]
    TooLarge,
    #[error("unsupported segment payload version {found} (this build reads version {SEGMENT_FORMAT_VERSION})")]
    UnsupportedPayloadVersion { found: u8 },
    #[error("corrupt segment payload: {0}")]
    Corrupt(&'static str),
    #[error("segment header declares {declared} entries, the payload holds {decoded}")]
    CountMismatch { declared: u32, decoded: usize },
}

// ---------------------------------------------------------------------------------------------
// Layout constants and small codecs
// ---------------------------------------------------------------------------------------------

const S_FLAGS: usize = 0;
const S_KEYS: usize = 1;
const S_SEQ: usize = 2;
const S_ORD: usize = 3;
const S_OPS: usize = 4;
const S_TIME: usize = 5;
const S_TABLE: usize = 6;
const S_LENS: usize = 7;
const S_RAW: usize = 8;
const NSTREAMS: usize = 9;

const F_NEW_KEY: u16 = 1 << 0;
const F_OPAQUE: u16 = 1 << 1;
const F_SEQ_RAW: u16 = 1 << 2;
const F_TIME_RAW: u16 = 1 << 3;
const F_TABLE_RAW: u16 = 1 << 4;
const F_OP_RAW: u16 = 1 << 5;
const SH_KEY: u32 = 6;
const SH_OLD_KEY: u32 = 8;
const SH_OLD: u32 = 10;
const SH_NEW: u32 = 12;
const F_SCHEMA_RAW: u16 = 1 << 14;
const F_UNUSED: u16 = 1 << 15;

const M_NIL: u16 = 0;
const M_RAW: u16 = 1;
/// key/old_key: the entry's key; old: the previous `new` of the group; new: the `old` field.
const M_DERIVED: u16 = 2;
/// new only: a diff against the `old` field.
const M_DIFF: u16 = 3;

const NIL: u8 = 0xc0;
/// MessagePack fixarray of 9: an `Event` as rmp-serde writes it.
const EVENT_ARRAY: u8 = 0x99;

/// Upper bound of the payload's bytes before the streams: version, 4 zvarints, 9 varints.
const PREFIX_MAX: usize = 1 + 4 * 10 + NSTREAMS * 5;
/// Upper bound of what an entry adds to the streams beyond its payload and key bytes.
const ENTRY_OVERHEAD_MAX: usize = 2 + 5 + 10 + 5 + 2 + 10 + 10 + 10 * 5;

#[inline]
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[inline]
fn zz(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

#[inline]
fn unzz(u: u64) -> i64 {
    ((u >> 1) as i64) ^ -((u & 1) as i64)
}

fn corrupt<T>(what: &'static str) -> Result<T, SegmentError> {
    Err(SegmentError::Corrupt(what))
}

/// A cursor over one stream of the payload.
#[derive(Clone, Copy)]
struct Cur<'a> {
    b: &'a [u8],
}

impl<'a> Cur<'a> {
    #[inline]
    fn byte(&mut self) -> Result<u8, SegmentError> {
        match self.b.split_first() {
            Some((&x, rest)) => {
                self.b = rest;
                Ok(x)
            }
            None => corrupt("a stream ends early"),
        }
    }

    #[inline]
    fn take(&mut self, n: usize) -> Result<&'a [u8], SegmentError> {
        if n > self.b.len() {
            return corrupt("a stream ends early");
        }
        let (a, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(a)
    }

    #[inline]
    fn u16le(&mut self) -> Result<u16, SegmentError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    #[inline]
    fn varint(&mut self) -> Result<u64, SegmentError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let x = self.byte()?;
            if shift == 63 && x > 1 {
                return corrupt("varint overflows 64 bits");
            }
            v |= u64::from(x & 0x7f) << shift;
            if x < 0x80 {
                return Ok(v);
            }
        }
        corrupt("varint overflows 64 bits")
    }

    #[inline]
    fn len(&mut self) -> Result<usize, SegmentError> {
        usize::try_from(self.varint()?).or_else(|_| corrupt("length out of range"))
    }

    #[inline]
    fn zvarint(&mut self) -> Result<i64, SegmentError> {
        self.varint().map(unzz)
    }
}

/// MessagePack's smallest form of an unsigned int (as rmp-serde writes u8..u64).
fn put_uint(out: &mut Vec<u8>, v: u64) {
    if v < 0x80 {
        out.push(v as u8);
    } else if v <= 0xff {
        out.extend_from_slice(&[0xcc, v as u8]);
    } else if v <= 0xffff {
        out.push(0xcd);
        out.extend_from_slice(&(v as u16).to_be_bytes());
    } else if v <= 0xffff_ffff {
        out.push(0xce);
        out.extend_from_slice(&(v as u32).to_be_bytes());
    } else {
        out.push(0xcf);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

fn uint_len(v: u64) -> usize {
    match v {
        0..=0x7f => 1,
        0x80..=0xff => 2,
        0x100..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

/// MessagePack's smallest form of a signed int (as rmp-serde writes i8..i64: non-negative
/// values in the unsigned forms).
fn put_int(out: &mut Vec<u8>, v: i64) {
    if v >= 0 {
        put_uint(out, v as u64);
    } else if v >= -32 {
        out.push(v as u8);
    } else if v >= -128 {
        out.extend_from_slice(&[0xd0, v as u8]);
    } else if v >= -32_768 {
        out.push(0xd1);
        out.extend_from_slice(&(v as i16).to_be_bytes());
    } else if v >= i64::from(i32::MIN) {
        out.push(0xd2);
        out.extend_from_slice(&(v as i32).to_be_bytes());
    } else {
        out.push(0xd3);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

fn int_len(v: i64) -> usize {
    if v >= 0 {
        uint_len(v as u64)
    } else if v >= -32 {
        1
    } else if v >= -128 {
        2
    } else if v >= -32_768 {
        3
    } else if v >= i64::from(i32::MIN) {
        5
    } else {
        9
    }
}

/// The value of a MessagePack int occupying exactly `b`, in any int form.
fn read_int(b: &[u8]) -> Option<i128> {
    let (&m, rest) = b.split_first()?;
    let be = |n: usize| -> Option<u64> {
        (rest.len() == n).then(|| rest.iter().fold(0u64, |a, &x| a << 8 | u64::from(x)))
    };
    Some(match m {
        0x00..=0x7f if rest.is_empty() => m.into(),
        0xe0..=0xff if rest.is_empty() => (m as i8).into(),
        0xcc => be(1)?.into(),
        0xcd => be(2)?.into(),
        0xce => be(4)?.into(),
        0xcf => be(8)?.into(),
        0xd0 => (be(1)? as u8 as i8).into(),
        0xd1 => (be(2)? as u16 as i16).into(),
        0xd2 => (be(4)? as u32 as i32).into(),
        0xd3 => (be(8)? as i64).into(),
        _ => return None,
    })
}

/// The end of the one MessagePack object starting at `pos` (of any type, nested to any depth:
/// iterative), or None if `b` ends first or holds the never-used marker 0xc1.
#[inline]
fn skip_object(b: &[u8], pos: usize) -> Option<usize> {
    // the most common objects of row images: small ints, nil, bools, short strings
    let m = *b.get(pos)?;
    match m {
        0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => Some(pos + 1),
        0xa0..=0xbf => {
            let end = pos + 1 + usize::from(m & 0x1f);
            (end <= b.len()).then_some(end)
        }
        _ => skip_nested(b, pos),
    }
}

fn skip_nested(b: &[u8], mut pos: usize) -> Option<usize> {
    let mut pending: u64 = 1;
    while pending > 0 {
        pending -= 1;
        let m = *b.get(pos)?;
        pos += 1;
        let len_at = |pos: usize, n: usize| -> Option<usize> {
            let s = b.get(pos..pos + n)?;
            Some(s.iter().fold(0usize, |a, &x| a << 8 | usize::from(x)))
        };
        // (bytes to skip after the marker, child objects)
        let (skip, children): (usize, u64) = match m {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
            0x80..=0x8f => (0, 2 * u64::from(m & 0x0f)),
            0x90..=0x9f => (0, u64::from(m & 0x0f)),
            0xa0..=0xbf => (usize::from(m & 0x1f), 0),
            0xc1 => return None,
            0xc4 | 0xd9 => (1 + len_at(pos, 1)?, 0),
            0xc5 | 0xda => (2 + len_at(pos, 2)?, 0),
            0xc6 | 0xdb => (4 + len_at(pos, 4)?, 0),
            0xc7 => (2 + len_at(pos, 1)?, 0),
            0xc8 => (3 + len_at(pos, 2)?, 0),
            0xc9 => (5 + len_at(pos, 4)?, 0),
            0xca | 0xce | 0xd2 => (4, 0),
            0xcb | 0xcf | 0xd3 => (8, 0),
            0xcc | 0xd0 => (1, 0),
            0xcd | 0xd1 => (2, 0),
            0xd4 => (2, 0),
            0xd5 => (3, 0),
            0xd6 => (5, 0),
            0xd7 => (9, 0),
            0xd8 => (17, 0),
            0xdc => (2, len_at(pos, 2)? as u64),
            0xdd => (4, len_at(pos, 4)? as u64),
            0xde => (2, 2 * len_at(pos, 2)? as u64),
            0xdf => (4, 2 * len_at(pos, 4)? as u64),
        };
        pos = pos.checked_add(skip)?;
        if pos > b.len() {
            return None;
        }
        pending += children;
    }
    Some(pos)
}

/// The 9 fields of an event payload, if it is a fixarray of exactly 9 objects.
fn split_event(payload: &[u8]) -> Option<[&[u8]; 9]> {
    if payload.first() != Some(&EVENT_ARRAY) {
        return None;
    }
    let mut fields: [&[u8]; 9] = [&[]; 9];
    let mut pos = 1;
    for f in &mut fields {
        let end = skip_object(payload, pos)?;
        *f = &payload[pos..end];
        pos = end;
    }
    (pos == payload.len()).then_some(fields)
}

// ---------------------------------------------------------------------------------------------
// Row diffs
// ---------------------------------------------------------------------------------------------

/// A row image (row.rs: a MessagePack map attnum -> value) split into its map header and its
/// (attnum, value) entries, or None if it is no well-formed map.
fn map_entries(b: &[u8]) -> Option<(&[u8], Vec<(&[u8], &[u8])>)> {
    let (&m, _) = b.split_first()?;
    let (hlen, n) = match m {
        0x80..=0x8f => (1, usize::from(m & 0x0f)),
        0xde => (
            3,
            usize::from(u16::from_be_bytes(b.get(1..3)?.try_into().ok()?)),
        ),
        0xdf => (
            5,
            u32::from_be_bytes(b.get(1..5)?.try_into().ok()?) as usize,
        ),
        _ => return None,
    };
    let mut pos = hlen;
    let mut out = Vec::with_capacity(n.min(b.len()));
    for _ in 0..n {
        let k = skip_object(b, pos)?;
        let v = skip_object(b, k)?;
        out.push((&b[pos..k], &b[k..v]));
        pos = v;
    }
    (pos == b.len()).then_some((&b[..hlen], out))
}

/// `row_diff(old, new)`: `new` as changes to `old`, for update events (which carry both full
/// images) whose images have the same columns, map header and attnum bytes — the common case.
/// The diff is a bitmap of the entries whose value bytes changed (ceil(n/8) bytes, bit i of
/// byte i/8 for entry i), followed by those values' bytes in entry order; unchanged entries
/// are copied from `old`. None if the images do not qualify (then `new` is stored whole).
fn row_diff(old: &[u8], new: &[u8], out: &mut Vec<u8>) -> Option<()> {
    let (oh, oe) = map_entries(old)?;
    let (nh, ne) = map_entries(new)?;
    if oh != nh || oe.len() != ne.len() || oe.iter().zip(&ne).any(|(o, n)| o.0 != n.0) {
        return None;
    }
    let start = out.len();
    out.resize(start + ne.len().div_ceil(8), 0);
    for (i, (o, n)) in oe.iter().zip(&ne).enumerate() {
        if o.1 != n.1 {
            out[start + i / 8] |= 1 << (i % 8);
            out.extend_from_slice(n.1);
        }
    }
    Some(())
}

/// Inverse of `row_diff`: appends the new image to `out`. `diff` must be exactly the diff.
fn apply_row_diff(old: &[u8], diff: &[u8], out: &mut Vec<u8>) -> Result<(), SegmentError> {
    let bad = || SegmentError::Corrupt("row diff against a value that is no row image");
    let (&m, _) = old.split_first().ok_or_else(bad)?;
    let (hlen, n) = match m {
        0x80..=0x8f => (1, usize::from(m & 0x0f)),
        0xde if old.len() >= 3 => (3, usize::from(u16::from_be_bytes([old[1], old[2]]))),
        0xdf if old.len() >= 5 => (
            5,
            u32::from_be_bytes([old[1], old[2], old[3], old[4]]) as usize,
        ),
        _ => return Err(bad()),
    };
    let mut d = Cur { b: diff };
    let bitmap = d.take(n.div_ceil(8))?;
    out.extend_from_slice(&old[..hlen]);
    let mut pos = hlen;
    for i in 0..n {
        let k = skip_object(old, pos).ok_or_else(bad)?;
        let v = skip_object(old, k).ok_or_else(bad)?;
        out.extend_from_slice(&old[pos..k]);
        if bitmap[i / 8] & (1 << (i % 8)) != 0 {
            let Some(end) = skip_object(d.b, 0) else {
                return corrupt("row diff value is no MessagePack object");
            };
            out.extend_from_slice(d.take(end)?);
        } else {
            out.extend_from_slice(&old[k..v]);
        }
        pos = v;
    }
    if pos != old.len() {
        return Err(bad());
    }
    if !d.b.is_empty() {
        return corrupt("trailing bytes in a row diff");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

/// Validates an entry on its own (op, frame); returns its event's committed_at.
fn check_entry(e: &SegmentEntry, index: usize) -> Result<i64, SegmentError> {
    let expected = match e.op {
        b'i' => Op::Insert,
        b'u' | b'm' => Op::Update,
        b'd' => Op::Delete,
        op => return Err(SegmentError::BadOp { index, op }),
    };
    let event =
        frame::decode_frame(&e.frame).map_err(|source| SegmentError::Frame { index, source })?;
    if event.op != expected {
        return Err(SegmentError::OpMismatch {
            index,
            op: e.op,
            found: event.op,
        });
    }
    Ok(event.committed_at)
}

/// Upper bound of the raw payload bytes an entry adds.
fn entry_bound(e: &SegmentEntry) -> usize {
    e.frame.len().saturating_sub(HEADER_LEN) + e.key.len() + ENTRY_OVERHEAD_MAX
}

/// True if `e` sorts strictly after (key, seq, ord).
fn follows(e: &SegmentEntry, key: &[u8], seq: i64, ord: i32) -> bool {
    (e.key.as_slice(), e.seq, e.ord) > (key, seq, ord)
}

/// The streams of one segment being built, and the state their delta codings need.
struct Enc {
    s: [Vec<u8>; NSTREAMS],
    count: u32,
    key_lo: Vec<u8>,
    last_key: Vec<u8>,
    seq_lo: i64,
    seq_hi: i64,
    time_lo: i64,
    time_hi: i64,
    seq_group_first: i64,
    seq_prev: i64,
    time_group_first: i64,
    time_cur_group_first: Option<i64>,
    time_prev: Option<i64>,
    /// The `new` field of the previous entry of the current group, if it had one.
    prev_new: Option<Vec<u8>>,
}

impl Enc {
    fn new() -> Enc {
        Enc {
            s: Default::default(),
            count: 0,
            key_lo: Vec::new(),
            last_key: Vec::new(),
            seq_lo: i64::MAX,
            seq_hi: i64::MIN,
            time_lo: i64::MAX,
            time_hi: i64::MIN,
            seq_group_first: 0,
            seq_prev: 0,
            time_group_first: 0,
            time_cur_group_first: None,
            time_prev: None,
            prev_new: None,
        }
    }

    /// Bytes of the raw payload so far, at most `PREFIX_MAX - prefix` too many.
    fn raw_bound(&self) -> usize {
        PREFIX_MAX + self.s.iter().map(Vec::len).sum::<usize>()
    }

    fn starts_group(&self, e: &SegmentEntry) -> bool {
        self.count == 0 || e.key != self.last_key
    }

    fn stored(&mut self, field: &[u8]) {
        put_varint(&mut self.s[S_LENS], field.len() as u64);
        self.s[S_RAW].extend_from_slice(field);
    }

    /// Appends an entry that `check_entry` accepted and that sorts after the previous one.
    fn append(&mut self, e: &SegmentEntry, committed_at: i64) {
        let new_group = self.starts_group(e);
        let mut flags = 0u16;
        if new_group {
            flags |= F_NEW_KEY;
            put_varint(&mut self.s[S_KEYS], e.key.len() as u64);
            self.s[S_KEYS].extend_from_slice(&e.key);
            if self.count == 0 {
                self.key_lo.clone_from(&e.key);
            }
            self.last_key.clone_from(&e.key);
            self.prev_new = None;
            if let Some(t) = self.time_cur_group_first.take() {
                self.time_group_first = t;
            }
            self.time_prev = None;
        }
        let seq_ref = if new_group {
            std::mem::replace(&mut self.seq_group_first, e.seq)
        } else {
            self.seq_prev
        };
        self.seq_prev = e.seq;
        put_varint(&mut self.s[S_SEQ], zz(e.seq.wrapping_sub(seq_ref)));
        put_varint(&mut self.s[S_ORD], zz(e.ord.into()));
        self.s[S_OPS].push(e.op);

        let payload = &e.frame[HEADER_LEN..];
        match split_event(payload) {
            None => {
                flags |= F_OPAQUE;
                self.stored(payload);
                self.prev_new = None;
            }
            Some(f) => flags |= self.fields(e, &f),
        }
        self.s[S_FLAGS].extend_from_slice(&flags.to_le_bytes());

        self.seq_lo = self.seq_lo.min(e.seq);
        self.seq_hi = self.seq_hi.max(e.seq);
        self.time_lo = self.time_lo.min(committed_at);
        self.time_hi = self.time_hi.max(committed_at);
        self.count += 1;
    }

    /// Stores the fields of a well-formed event payload; returns their flags.
    fn fields(&mut self, e: &SegmentEntry, f: &[&[u8]; 9]) -> u16 {
        let mut flags = 0u16;
        let mut canon = Vec::with_capacity(9);

        // seq
        canon.clear();
        if e.seq >= 0 {
            put_uint(&mut canon, e.seq as u64);
        }
        if canon.as_slice() != f[0] {
            flags |= F_SEQ_RAW;
            self.stored(f[0]);
        }
        // committed_at
        let t = read_int(f[1]).and_then(|v| i64::try_from(v).ok());
        canon.clear();
        if let Some(t) = t {
            put_int(&mut canon, t);
        }
        match t {
            Some(t) if canon.as_slice() == f[1] => {
                let r = self.time_prev.unwrap_or(self.time_group_first);
                put_varint(&mut self.s[S_TIME], zz(t.wrapping_sub(r)));
                self.time_prev = Some(t);
                self.time_cur_group_first.get_or_insert(t);
            }
            _ => {
                flags |= F_TIME_RAW;
                self.stored(f[1]);
            }
        }
        // table_id
        let id = read_int(f[2]).and_then(|v| u64::try_from(v).ok());
        canon.clear();
        if let Some(id) = id {
            put_uint(&mut canon, id);
        }
        match id {
            Some(id) if canon.as_slice() == f[2] => put_varint(&mut self.s[S_TABLE], id),
            _ => {
                flags |= F_TABLE_RAW;
                self.stored(f[2]);
            }
        }
        // op
        match f[3] {
            [op @ 0x00..=0x7f] => self.s[S_OPS].push(*op),
            _ => {
                flags |= F_OP_RAW;
                self.stored(f[3]);
            }
        }
        // key, old_key
        for (field, shift) in [(f[4], SH_KEY), (f[5], SH_OLD_KEY)] {
            let mode = if field == [NIL] {
                M_NIL
            } else if field == e.key.as_slice() {
                M_DERIVED
            } else {
                self.stored(field);
                M_RAW
            };
            flags |= mode << shift;
        }
        // old
        let old = f[6];
        let mode = if old == [NIL] {
            M_NIL
        } else if self.prev_new.as_deref() == Some(old) {
            M_DERIVED
        } else {
            self.stored(old);
            M_RAW
        };
        flags |= mode << SH_OLD;
        // new
        let new = f[7];
        let mode = if new == [NIL] {
            M_NIL
        } else if old != [NIL] && new == old {
            M_DERIVED
        } else {
            canon.clear();
            // a diff only where it drops most of the image: zstd compresses whole images of
            // narrow rows better (repeated offsets between consecutive images) than their diffs
            if old != [NIL]
                && row_diff(old, new, &mut canon).is_some()
                && canon.len() * 2 <= new.len()
            {
                self.stored(&canon);
                M_DIFF
            } else {
                self.stored(new);
                M_RAW
            }
        };
        flags |= mode << SH_NEW;
        match &mut self.prev_new {
            _ if new == [NIL] => self.prev_new = None,
            Some(buf) => {
                buf.clear();
                buf.extend_from_slice(new);
            }
            None => self.prev_new = Some(new.to_vec()),
        }
        // schema
        if f[8] != [NIL] {
            flags |= F_SCHEMA_RAW;
            self.stored(f[8]);
        }
        flags
    }

    /// Seals the entries appended so far into a segment and starts afresh.
    fn take(&mut self, compressor: &mut zstd::bulk::Compressor<'static>) -> (Vec<u8>, SegmentInfo) {
        debug_assert!(self.count > 0);
        let mut raw = Vec::with_capacity(self.raw_bound());
        raw.push(SEGMENT_FORMAT_VERSION);
        for v in [self.seq_lo, self.seq_hi, self.time_lo, self.time_hi] {
            put_varint(&mut raw, zz(v));
        }
        for s in &self.s {
            put_varint(&mut raw, s.len() as u64);
        }
        for s in &self.s {
            raw.extend_from_slice(s);
        }
        let block = snapshot::seal_block(
            BlockKind::EventSegment,
            self.count,
            &raw,
            Some(compressor),
            false,
        );
        let info = SegmentInfo {
            nevents: self.count,
            seq_lo: self.seq_lo,
            seq_hi: self.seq_hi,
            key_lo: std::mem::take(&mut self.key_lo),
            key_hi: self.last_key.clone(),
            time_lo: self.time_lo,
            time_hi: self.time_hi,
            raw_len: raw.len() as u32,
            stored_len: (block.len() - snapshot::BLOCK_HEADER_LEN) as u32,
        };
        let streams = std::mem::take(&mut self.s);
        *self = Enc::new();
        // keep the streams' capacity for the next segment
        self.s = streams;
        self.s.iter_mut().for_each(Vec::clear);
        (block, info)
    }
}

/// Encodes entries, which must be non-empty and strictly increasing in (key, seq, ord), as
/// one segment; every frame must decode (`decode_frame`) to an event of the entry's op
/// (i: insert; u, m: update; d: delete).
pub fn encode_segment(entries: &[SegmentEntry]) -> Result<(Vec<u8>, SegmentInfo), SegmentError> {
    if entries.is_empty() {
        return Err(SegmentError::Empty);
    }
    let mut enc = Enc::new();
    let mut bound = PREFIX_MAX;
    for (index, e) in entries.iter().enumerate() {
        if index > 0 {
            let p = &entries[index - 1];
            if !follows(e, &p.key, p.seq, p.ord) {
                return Err(SegmentError::Unsorted { index });
            }
        }
        let t = check_entry(e, index)?;
        bound += entry_bound(e);
        if bound > u32::MAX as usize || index >= u32::MAX as usize {
            return Err(SegmentError::TooLarge);
        }
        enc.append(e, t);
    }
    Ok(enc.take(&mut snapshot::new_compressor()))
}

/// Cuts a stream of entries, sorted as for `encode_segment` (e.g. an index scan of one table's
/// events by key), into segments of about `target_raw_bytes` of raw payload as they arrive,
/// buffering only the current segment's encoded streams. A segment is cut only between two
/// keys — a key's entries all go to one segment — before the first entry of a key that could
/// take it past the target; so a segment exceeds the target only by (part of) its last key's
/// entries.
pub struct SegmentBuilder {
    target_raw_bytes: usize,
    enc: Enc,
    compressor: zstd::bulk::Compressor<'static>,
    /// (key, seq, ord) of the last entry pushed, for the order check across segments.
    last: Option<(Vec<u8>, i64, i32)>,
    pushed: usize,
}

impl SegmentBuilder {
    /// `target_raw_bytes`: the raw (uncompressed) payload size to aim for.
    pub fn new(target_raw_bytes: usize) -> SegmentBuilder {
        SegmentBuilder {
            target_raw_bytes,
            enc: Enc::new(),
            compressor: snapshot::new_compressor(),
            last: None,
            pushed: 0,
        }
    }

    /// Adds an entry; returns the previous segment if this entry starts a new one. On error
    /// (an invalid entry, or one out of order) nothing changes: the entry is not added.
    pub fn push(
        &mut self,
        entry: &SegmentEntry,
    ) -> Result<Option<(Vec<u8>, SegmentInfo)>, SegmentError> {
        let index = self.pushed;
        if let Some((key, seq, ord)) = &self.last {
            if !follows(entry, key, *seq, *ord) {
                return Err(SegmentError::Unsorted { index });
            }
        }
        let t = check_entry(entry, index)?;
        let bound = entry_bound(entry);
        if PREFIX_MAX.saturating_add(bound) > u32::MAX as usize {
            return Err(SegmentError::TooLarge);
        }
        let fits = |enc: &Enc, target: usize| {
            enc.raw_bound().saturating_add(bound) <= target && enc.count < u32::MAX
        };
        let group = self.enc.starts_group(entry);
        if !group && !fits(&self.enc, u32::MAX as usize) {
            return Err(SegmentError::TooLarge);
        }
        let target = self.target_raw_bytes.min(u32::MAX as usize);
        let done = (self.enc.count > 0 && group && !fits(&self.enc, target))
            .then(|| self.enc.take(&mut self.compressor));
        self.enc.append(entry, t);
        match &mut self.last {
            Some((key, seq, ord)) => {
                if *key != entry.key {
                    key.clone_from(&entry.key);
                }
                *seq = entry.seq;
                *ord = entry.ord;
            }
            None => self.last = Some((entry.key.clone(), entry.seq, entry.ord)),
        }
        self.pushed += 1;
        Ok(done)
    }

    /// Entries added to the current, unfinished segment.
    pub fn pending(&self) -> usize {
        self.enc.count as usize
    }

    /// The last segment, if any entry is pending.
    pub fn finish(mut self) -> Option<(Vec<u8>, SegmentInfo)> {
        (self.enc.count > 0).then(|| self.enc.take(&mut self.compressor))
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

/// The payload's summary and streams.
struct Parsed<'a> {
    seq_lo: i64,
    seq_hi: i64,
    time_lo: i64,
    time_hi: i64,
    s: [Cur<'a>; NSTREAMS],
}

fn parse_payload(raw: &[u8]) -> Result<Parsed<'_>, SegmentError> {
    let mut c = Cur { b: raw };
    let version = c.byte()?;
    if version != SEGMENT_FORMAT_VERSION {
        return Err(SegmentError::UnsupportedPayloadVersion { found: version });
    }
    let (seq_lo, seq_hi) = (c.zvarint()?, c.zvarint()?);
    let (time_lo, time_hi) = (c.zvarint()?, c.zvarint()?);
    let mut lens = [0usize; NSTREAMS];
    for l in &mut lens {
        *l = c.len()?;
    }
    if lens.iter().try_fold(0usize, |a, &l| a.checked_add(l)) != Some(c.b.len()) {
        return corrupt("stream lengths do not add up to the payload");
    }
    let mut s = [Cur { b: &[] }; NSTREAMS];
    for (cur, &l) in s.iter_mut().zip(&lens) {
        cur.b = c.take(l)?;
    }
    Ok(Parsed {
        seq_lo,
        seq_hi,
        time_lo,
        time_hi,
        s,
    })
}

/// Where a field's bytes come from.
#[derive(Clone, Copy)]
enum Src<'a> {
    Nil,
    Bytes(&'a [u8]),
    Uint(u64),
    Int(i64),
    Byte(u8),
    /// The `new` field of the previous entry (already in `out`): index, byte range.
    PrevNew(usize, usize, usize),
    /// `row_diff` bytes against the `old` field.
    Diff(&'a [u8]),
}

/// Decodes the entries; with `only`, just that key's (stopping after them, and skipping the
/// checks that need the whole segment).
fn decode_entries(bytes: &[u8], only: Option<&[u8]>) -> Result<Vec<SegmentEntry>, SegmentError> {
    let (info, raw) = snapshot::open_block(bytes, BlockKind::EventSegment)?;
    let p = parse_payload(&raw)?;
    let [mut flags_s, mut keys_s, mut seq_s, mut ord_s, mut ops_s, mut time_s, mut table_s, mut lens_s, mut raw_s] =
        p.s;
    let n = info.row_count as usize;
    if flags_s.b.len() != 2 * n {
        return Err(SegmentError::CountMismatch {
            declared: info.row_count,
            decoded: flags_s.b.len() / 2,
        });
    }
    let full = only.is_none();
    let mut out: Vec<SegmentEntry> = Vec::with_capacity(if full { n } else { 0 });

    let mut group_key: &[u8] = &[];
    let mut materialize = full;
    let (mut seq_group_first, mut seq_prev, mut ord_prev) = (0i64, 0i64, 0i32);
    let (mut time_group_first, mut time_cur_group_first, mut time_prev) = (0i64, None, None);
    let (mut time_lo, mut time_hi) = (i64::MAX, i64::MIN);
    let (mut seq_lo, mut seq_hi) = (i64::MAX, i64::MIN);
    // previous entry of the group had a `new` field; where it is, if materialized
    let mut prev_new: Option<Src> = None;
    let mut opaque_seen = false;

    for i in 0..n {
        let flags = flags_s.u16le()?;
        if flags & F_UNUSED != 0 {
            return corrupt("unknown flag bits");
        }
        let new_group = flags & F_NEW_KEY != 0;
        if new_group {
            let len = keys_s.len()?;
            let key = keys_s.take(len)?;
            if i > 0 && key <= group_key {
                return corrupt("key groups out of order");
            }
            group_key = key;
            prev_new = None;
            if let Some(t) = time_cur_group_first.take() {
                time_group_first = t;
            }
            time_prev = None;
            if let Some(k) = only {
                if group_key > k {
                    break;
                }
                materialize = group_key == k;
            }
        } else if i == 0 {
            return corrupt("the first entry does not start a key group");
        }
        let seq_ref = if new_group { seq_group_first } else { seq_prev };
        let seq = seq_ref.wrapping_add(seq_s.zvarint()?);
        if new_group {
            seq_group_first = seq;
        }
        let ord = i32::try_from(ord_s.zvarint()?).or_else(|_| corrupt("ord out of range"))?;
        if full && !new_group && (seq, ord) <= (seq_prev, ord_prev) {
            return corrupt("entries out of (seq, ord) order within a key");
        }
        seq_prev = seq;
        ord_prev = ord;
        seq_lo = seq_lo.min(seq);
        seq_hi = seq_hi.max(seq);
        let op = ops_s.byte()?;
        if !matches!(op, b'i' | b'u' | b'd' | b'm') {
            return corrupt("unknown entry op");
        }

        // the fields (or, for an opaque entry, the whole payload in field 0)
        let mut src = [Src::Nil; 9];
        let opaque = flags & F_OPAQUE != 0;
        let new_src;
        if opaque {
            if flags & !(F_OPAQUE | F_NEW_KEY) != 0 {
                return corrupt("flags of an opaque entry");
            }
            src[0] = Src::Bytes(stored(&mut lens_s, &mut raw_s)?);
            new_src = Src::Nil;
            opaque_seen = true;
        } else {
            src[0] = if flags & F_SEQ_RAW != 0 {
                Src::Bytes(stored(&mut lens_s, &mut raw_s)?)
            } else if seq >= 0 {
                Src::Uint(seq as u64)
            } else {
                return corrupt("negative seq without a stored seq field");
            };
            src[1] = if flags & F_TIME_RAW != 0 {
                let b = stored(&mut lens_s, &mut raw_s)?;
                if full {
                    match read_int(b).and_then(|v| i64::try_from(v).ok()) {
                        Some(t) => {
                            time_lo = time_lo.min(t);
                            time_hi = time_hi.max(t);
                        }
                        None => return corrupt("stored committed_at is no i64"),
                    }
                }
                Src::Bytes(b)
            } else {
                let r = time_prev.unwrap_or(time_group_first);
                let t = r.wrapping_add(time_s.zvarint()?);
                time_prev = Some(t);
                time_cur_group_first.get_or_insert(t);
                time_lo = time_lo.min(t);
                time_hi = time_hi.max(t);
                Src::Int(t)
            };
            src[2] = if flags & F_TABLE_RAW != 0 {
                Src::Bytes(stored(&mut lens_s, &mut raw_s)?)
            } else {
                Src::Uint(table_s.varint()?)
            };
            src[3] = if flags & F_OP_RAW != 0 {
                Src::Bytes(stored(&mut lens_s, &mut raw_s)?)
            } else {
                match ops_s.byte()? {
                    b @ 0x00..=0x7f => Src::Byte(b),
                    _ => return corrupt("event op is no positive fixint"),
                }
            };
            for (k, shift) in [(4, SH_KEY), (5, SH_OLD_KEY)] {
                src[k] = match (flags >> shift) & 3 {
                    M_NIL => Src::Nil,
                    M_RAW => Src::Bytes(stored(&mut lens_s, &mut raw_s)?),
                    M_DERIVED => Src::Bytes(group_key),
                    _ => return corrupt("unknown key field mode"),
                };
            }
            src[6] = match (flags >> SH_OLD) & 3 {
                M_NIL => Src::Nil,
                M_RAW => Src::Bytes(stored(&mut lens_s, &mut raw_s)?),
                M_DERIVED => match prev_new {
                    Some(s) => s,
                    None => return corrupt("old image refers to a missing previous new image"),
                },
                _ => return corrupt("unknown old image mode"),
            };
            let has_old = !matches!(src[6], Src::Nil);
            src[7] = match (flags >> SH_NEW) & 3 {
                M_NIL => Src::Nil,
                M_RAW => Src::Bytes(stored(&mut lens_s, &mut raw_s)?),
                M_DERIVED if has_old => src[6],
                M_DIFF if has_old => Src::Diff(stored(&mut lens_s, &mut raw_s)?),
                _ => return corrupt("new image refers to a missing old image"),
            };
            new_src = src[7];
            if flags & F_SCHEMA_RAW != 0 {
                src[8] = Src::Bytes(stored(&mut lens_s, &mut raw_s)?);
            }
        }

        if !materialize {
            // remember only that there is a previous new image (a placeholder: no entry of
            // this group is built, so its bytes are not needed)
            prev_new = (!matches!(new_src, Src::Nil)).then_some(Src::Bytes(&[]));
            continue;
        }
        let (frame, new_at) = build_frame(&src, opaque, &out)?;
        prev_new = match new_src {
            Src::Nil => None,
            _ => Some(Src::PrevNew(out.len(), new_at.0, new_at.1)),
        };
        out.push(SegmentEntry {
            seq,
            ord,
            op,
            key: group_key.to_vec(),
            frame,
        });
    }

    if full {
        if out.len() != n {
            return Err(SegmentError::CountMismatch {
                declared: info.row_count,
                decoded: out.len(),
            });
        }
        let leftover = [keys_s, seq_s, ord_s, ops_s, time_s, table_s, lens_s, raw_s]
            .iter()
            .any(|c| !c.b.is_empty());
        if leftover {
            return corrupt("trailing bytes in a stream");
        }
        if (seq_lo, seq_hi) != (p.seq_lo, p.seq_hi) {
            return corrupt("seq range differs from the entries'");
        }
        // an opaque entry's time is not known without decoding its event: then the entries'
        // other times need only lie within the range
        let exact = (time_lo, time_hi) == (p.time_lo, p.time_hi);
        let within = time_lo > time_hi || (p.time_lo <= time_lo && time_hi <= p.time_hi);
        if !(exact || opaque_seen && within) {
            return corrupt("time range differs from the entries'");
        }
    }
    Ok(out)
}

/// The next stored field.
#[inline]
fn stored<'a>(lens: &mut Cur<'a>, raw: &mut Cur<'a>) -> Result<&'a [u8], SegmentError> {
    let len = lens.len()?;
    raw.take(len)
}

/// The bytes of a field source that has them.
#[inline]
fn resolve<'a>(s: &Src<'a>, out: &'a [SegmentEntry]) -> Option<&'a [u8]> {
    match *s {
        Src::Bytes(b) => Some(b),
        Src::PrevNew(i, a, b) => Some(&out[i].frame[a..b]),
        _ => None,
    }
}

/// Rebuilds an entry's frame from its field sources; returns it and the byte range of its
/// `new` field.
fn build_frame(
    src: &[Src; 9],
    opaque: bool,
    out: &[SegmentEntry],
) -> Result<(Vec<u8>, (usize, usize)), SegmentError> {
    let bytes_of = |s: &Src<'_>| -> usize {
        match *s {
            Src::Nil | Src::Byte(_) => 1,
            Src::Bytes(b) => b.len(),
            Src::Uint(v) => uint_len(v),
            Src::Int(v) => int_len(v),
            Src::PrevNew(_, a, b) => b - a,
            // about as long as the old image
            Src::Diff(d) => d.len() + resolve(&src[6], out).map_or(0, <[u8]>::len),
        }
    };
    let len = if opaque {
        bytes_of(&src[0])
    } else {
        1 + src.iter().map(bytes_of).sum::<usize>()
    };
    let mut f = Vec::with_capacity(HEADER_LEN + len);
    f.resize(HEADER_LEN, 0);
    let mut new_at = (0, 0);
    if opaque {
        f.extend_from_slice(resolve(&src[0], out).unwrap_or_default());
    } else {
        f.push(EVENT_ARRAY);
        for (k, s) in src.iter().enumerate() {
            let start = f.len();
            match *s {
                Src::Nil => f.push(NIL),
                Src::Bytes(b) => f.extend_from_slice(b),
                Src::Uint(v) => put_uint(&mut f, v),
                Src::Int(v) => put_int(&mut f, v),
                Src::Byte(b) => f.push(b),
                Src::PrevNew(i, a, b) => f.extend_from_slice(&out[i].frame[a..b]),
                Src::Diff(d) => {
                    let Some(old) = resolve(&src[6], out) else {
                        return corrupt("row diff without an old image");
                    };
                    apply_row_diff(old, d, &mut f)?;
                }
            }
            if k == 7 {
                new_at = (start, f.len());
            }
        }
    }
    if f.len() - HEADER_LEN > u32::MAX as usize {
        return corrupt("rebuilt frame exceeds 4 GiB");
    }
    frame::seal_frame(&mut f);
    Ok((f, new_at))
}

/// Decodes a segment made by `encode_segment` or `SegmentBuilder`: its entries exactly as
/// given (frames byte for byte), in the same order.
pub fn decode_segment(bytes: &[u8]) -> Result<Vec<SegmentEntry>, SegmentError> {
    decode_entries(bytes, None)
}

/// The entries of one key (empty if the segment has none), as `decode_segment` would return
/// them; the other keys' entries are skipped without being built.
pub fn decode_segment_key(bytes: &[u8], key: &[u8]) -> Result<Vec<SegmentEntry>, SegmentError> {
    decode_entries(bytes, Some(key))
}

/// A segment's summary: checks the block (header, CRC, lengths) and decompresses it to read
/// the payload's summary and key list, without rebuilding any entry.
pub fn segment_info(bytes: &[u8]) -> Result<SegmentInfo, SegmentError> {
    let (info, raw) = snapshot::open_block(bytes, BlockKind::EventSegment)?;
    let p = parse_payload(&raw)?;
    let mut keys = p.s[S_KEYS];
    let (mut key_lo, mut key_hi): (Option<&[u8]>, &[u8]) = (None, &[]);
    while !keys.b.is_empty() {
        let len = keys.len()?;
        key_hi = keys.take(len)?;
        key_lo.get_or_insert(key_hi);
    }
    let Some(key_lo) = key_lo else {
        return corrupt("a segment without keys");
    };
    Ok(SegmentInfo {
        nevents: info.row_count,
        seq_lo: p.seq_lo,
        seq_hi: p.seq_hi,
        key_lo: key_lo.to_vec(),
        key_hi: key_hi.to_vec(),
        time_lo: p.time_lo,
        time_hi: p.time_hi,
        raw_len: info.raw_len,
        stored_len: info.stored_len,
    })
}

// ---------------------------------------------------------------------------------------------
// Hash chain
// ---------------------------------------------------------------------------------------------

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// The hash a chain starts from.
pub const GENESIS: Hash = [0u8; 32];

/// Domain tag of `chain_hash`, so its inputs cannot be confused with other SHA-256 uses.
pub const CHAIN_DOMAIN: &[u8] = b"driftdb-chain-v1";

/// The next link of a hash chain: SHA-256(CHAIN_DOMAIN || prev || len(link) as u64 LE || link).
pub fn chain_hash(prev: &Hash, link_bytes: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update(CHAIN_DOMAIN);
    h.update(prev);
    h.update((link_bytes.len() as u64).to_le_bytes());
    h.update(link_bytes);
    h.finalize().into()
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> Hash {
    Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::event::Event;
    use crate::frame::{decode_frame, encode_frame, encode_key};
    use crate::row::Row;
    use crate::snapshot::{check_block, decode_snapshot_block, encode_snapshot_block, Codec};
    use crate::value::Value;

    use crate::testdata::Rng;

    fn every_value() -> Vec<Value> {
        crate::testdata::every_value(300)
    }

    fn frame_of_payload(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; HEADER_LEN];
        f.extend_from_slice(payload);
        frame::seal_frame(&mut f);
        f
    }

    /// A random history of one table (identity: attnum 1) as `driftdb.events` rows, sorted by
    /// (key, seq, ord): inserts, updates (some changing the key: 'u' under the new key and an
    /// 'm' marker under the old one; some without old image, some no-ops, some adding a
    /// column), deletes, several events per seq; values of every variant and NULLs; keys
    /// include NaNs with non-canonical bits (whose key field differs from the entry key).
    fn random_history(seed: u64, txs: usize) -> Vec<SegmentEntry> {
        let mut rng = Rng(seed | 1);
        let values = every_value();
        let mut live: BTreeMap<Vec<u8>, Row> = BTreeMap::new();
        let mut out = Vec::new();
        let mut seq: i64 = if rng.chance(10) { 1 } else { 1 << 33 };
        let mut at: i64 = if rng.chance(20) {
            -5_000_000
        } else {
            820_000_000_000_000
        };
        let table_id = if rng.chance(50) { 16_384 } else { 7 };
        let new_key_value = |rng: &mut Rng| match rng.below(10) {
            0 => Value::Text(format!("k{}", rng.below(1000))),
            1 => Value::Float(f64::from_bits(0x7ff8_0000_0000_0000 | rng.below(4) as u64)),
            2 => Value::Int(-(rng.below(100) as i64)),
            _ => Value::Int(rng.below(5000) as i64),
        };
        let random_row = |rng: &mut Rng, key: &Value, ncols: u16| {
            let mut cols = vec![(1u16, key.clone())];
            for a in 2..=ncols {
                let v = if rng.chance(15) {
                    Value::Null
                } else {
                    values[rng.below(values.len())].clone()
                };
                cols.push((a, v));
            }
            Row::new(cols)
        };
        for _ in 0..txs {
            seq += 1 + rng.below(3) as i64;
            at += rng.below(2_000_000) as i64;
            for ord in 0..1 + rng.below(4) {
                let mut ev;
                let mut moved_from = None;
                let op;
                let kind = rng.below(10);
                if live.is_empty() || kind < 3 {
                    let k = new_key_value(&mut rng);
                    if live.contains_key(&encode_key(&[k.clone()])) {
                        continue;
                    }
                    ev = Event::new(seq as u64, at, table_id, Op::Insert);
                    ev.key = Some(vec![k.clone()]);
                    let ncols = 2 + rng.below(5) as u16;
                    ev.new = Some(random_row(&mut rng, &k, ncols));
                    op = b'i';
                } else {
                    let pick = rng.below(live.len());
                    let kb = live.keys().nth(pick).unwrap().clone();
                    let old = live[&kb].clone();
                    let key = vec![old.get(1).unwrap().clone()];
                    if kind < 5 {
                        ev = Event::new(seq as u64, at, table_id, Op::Delete);
                        ev.key = Some(key);
                        ev.old = (!rng.chance(10)).then_some(old);
                        op = b'd';
                    } else {
                        ev = Event::new(seq as u64, at, table_id, Op::Update);
                        let mut new = old.clone();
                        if kind == 5 {
                            // the key changes
                            let k = new_key_value(&mut rng);
                            if live.contains_key(&encode_key(&[k.clone()])) {
                                continue;
                            }
                            new.0[0].1 = k;
                            ev.old_key = Some(key);
                            moved_from = Some(kb.clone());
                        }
                        match rng.below(10) {
                            0 => {} // no-op update
                            1 => new = Row::new([new.0, vec![(40, Value::Int(1))]].concat()),
                            _ => {
                                for _ in 0..1 + rng.below(3) {
                                    let i = 1 + rng.below(new.len().max(2) - 1);
                                    if i < new.len() {
                                        new.0[i].1 = values[rng.below(values.len())].clone();
                                    }
                                }
                            }
                        }
                        ev.key = Some(vec![new.get(1).unwrap().clone()]);
                        ev.old = (!rng.chance(10)).then_some(old);
                        ev.new = Some(new);
                        op = b'u';
                    }
                }
                let frame = encode_frame(&ev);
                let key_bytes = encode_key(ev.key.as_ref().unwrap());
                match op {
                    b'd' => {
                        live.remove(&key_bytes);
                    }
                    _ => {
                        if let Some(from) = &moved_from {
                            live.remove(from);
                        }
                        live.insert(key_bytes.clone(), ev.new.clone().unwrap());
                    }
                }
                let ord = 2 * ord as i32;
                out.push(SegmentEntry {
                    seq,
                    ord,
                    op,
                    key: key_bytes,
                    frame: frame.clone(),
                });
                if let Some(from) = moved_from {
                    out.push(SegmentEntry {
                        seq,
                        ord: ord + 1,
                        op: b'm',
                        key: from,
                        frame,
                    });
                }
            }
        }
        sort(&mut out);
        out
    }

    fn sort(entries: &mut [SegmentEntry]) {
        entries.sort_by(|a, b| (&a.key, a.seq, a.ord).cmp(&(&b.key, b.seq, b.ord)));
    }

    /// Entries whose frames are not what rmp-serde writes: wider int forms, a seq differing
    /// from the entry's, a 9-array under an array16 marker (opaque), a negative seq.
    fn odd_entries() -> Vec<SegmentEntry> {
        let mut ev = Event::new(5, -1, 3, Op::Update);
        ev.key = Some(vec![Value::Int(1)]);
        ev.old = Some(Row::new(vec![
            (1, Value::Int(1)),
            (2, Value::Text("a".into())),
        ]));
        ev.new = Some(Row::new(vec![
            (1, Value::Int(1)),
            (2, Value::Text("b".into())),
        ]));
        let key = encode_key(&[Value::Int(1)]);
        let payload = rmp_serde::to_vec(&ev).unwrap();
        let f = split_event(&payload).unwrap();
        let with = |i: usize, bytes: &[u8]| {
            let mut p = vec![EVENT_ARRAY];
            for (k, field) in f.iter().enumerate() {
                p.extend_from_slice(if k == i { bytes } else { field });
            }
            frame_of_payload(&p)
        };
        let entry = |seq: i64, ord: i32, frame: Vec<u8>| SegmentEntry {
            seq,
            ord,
            op: b'u',
            key: key.clone(),
            frame,
        };
        let mut opaque = vec![0xdc, 0, 9];
        opaque.extend_from_slice(&payload[1..]);
        let mut ev_neg = ev.clone();
        ev_neg.committed_at = i64::MIN;
        let mut ev_big = ev.clone();
        ev_big.table_id = u32::MAX;
        ev_big.committed_at = i64::MAX;
        let all = vec![
            entry(1, 0, encode_frame(&ev)), // the frame's seq (5) is not the entry's
            entry(3, 0, with(0, &[0xcf, 0, 0, 0, 0, 0, 0, 0, 5])),
            entry(
                4,
                0,
                with(1, &[0xd3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            ),
            entry(5, 0, encode_frame(&ev)),
            entry(5, 1, with(2, &[0xce, 0, 0, 0, 3])),
            entry(5, 2, with(3, &[0xcc, 1])),
            entry(6, 0, frame_of_payload(&opaque)),
            entry(7, 0, encode_frame(&ev_neg)),
            entry(8, 0, encode_frame(&ev_big)),
            entry(9, 0, encode_frame(&ev)),
        ];
        for e in &all {
            check_entry(e, 0).unwrap();
        }
        let mut neg = all[0].clone();
        neg.seq = -7;
        neg.key = vec![0x90];
        let mut all = all;
        all.insert(0, neg);
        all
    }

    fn flags_of(block: &[u8]) -> Vec<u16> {
        let (_, raw) = snapshot::open_block(block, BlockKind::EventSegment).unwrap();
        let p = parse_payload(&raw).unwrap();
        p.s[S_FLAGS]
            .b
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect()
    }

    fn expected_info(entries: &[SegmentEntry]) -> (i64, i64, i64, i64) {
        let times: Vec<i64> = entries
            .iter()
            .map(|e| decode_frame(&e.frame).unwrap().committed_at)
            .collect();
        (
            entries.iter().map(|e| e.seq).min().unwrap(),
            entries.iter().map(|e| e.seq).max().unwrap(),
            *times.iter().min().unwrap(),
            *times.iter().max().unwrap(),
        )
    }

    fn check_round_trip(entries: &[SegmentEntry]) -> Vec<u8> {
        let (block, info) = encode_segment(entries).unwrap();
        let back = decode_segment(&block).unwrap();
        assert_eq!(back.len(), entries.len());
        for (i, (a, b)) in back.iter().zip(entries).enumerate() {
            assert_eq!(a, b, "entry {i}");
        }
        // the frames are as encode_frame makes them from their events (deterministic)
        for e in &back {
            if e.frame[HEADER_LEN] == EVENT_ARRAY && e.frame[HEADER_LEN + 1] < 0x80 {
                let ev = decode_frame(&e.frame).unwrap();
                if ev.seq == e.seq as u64 {
                    let _ = encode_frame(&ev); // (identity asserted for generated histories)
                }
            }
        }
        let (seq_lo, seq_hi, time_lo, time_hi) = expected_info(entries);
        assert_eq!(info.nevents as usize, entries.len());
        assert_eq!((info.seq_lo, info.seq_hi), (seq_lo, seq_hi));
        assert_eq!((info.time_lo, info.time_hi), (time_lo, time_hi));
        assert_eq!(info.key_lo, entries[0].key);
        assert_eq!(info.key_hi, entries.last().unwrap().key);
        assert_eq!(
            info.stored_len as usize,
            block.len() - snapshot::BLOCK_HEADER_LEN
        );
        assert_eq!(segment_info(&block).unwrap(), info);
        let hdr = check_block(&block).unwrap();
        assert_eq!(hdr.kind, BlockKind::EventSegment);
        assert_eq!(hdr.row_count, info.nevents);
        assert_eq!(hdr.raw_len, info.raw_len);
        // every key's lookup, and absent keys
        let mut keys: Vec<&Vec<u8>> = entries.iter().map(|e| &e.key).collect();
        keys.dedup();
        let step = keys.len().div_ceil(40);
        for k in keys.iter().step_by(step).chain(keys.last()).copied() {
            let want: Vec<&SegmentEntry> = entries.iter().filter(|e| &e.key == k).collect();
            let got = decode_segment_key(&block, k).unwrap();
            assert_eq!(got.iter().collect::<Vec<_>>(), want);
        }
        for absent in [&[][..], &[0x00], &[0xff, 0xff, 0xff]] {
            if !entries.iter().any(|e| e.key == absent) {
                assert!(decode_segment_key(&block, absent).unwrap().is_empty());
            }
        }
        block
    }

    #[test]
    fn round_trips_random_histories() {
        let mut modes = [0usize; 4];
        for seed in 1..=25u64 {
            let entries = random_history(
                seed.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                20 + 40 * seed as usize,
            );
            // generated frames are encode_frame's output for their events
            for e in entries.iter().take(50) {
                assert_eq!(encode_frame(&decode_frame(&e.frame).unwrap()), e.frame);
            }
            assert!(entries.iter().any(|e| e.op == b'm') || seed < 3);
            let block = check_round_trip(&entries);
            for f in flags_of(&block) {
                modes[usize::from((f >> SH_NEW) & 3)] += 1;
            }
            // a single entry, and each prefix of a few
            check_round_trip(&entries[..1]);
            check_round_trip(&entries[..entries.len().min(7)]);
        }
        // every mode of the new image was exercised
        assert!(modes.iter().all(|&m| m > 0), "{modes:?}");
    }

    #[test]
    fn odd_frames_round_trip() {
        let entries = odd_entries();
        let block = check_round_trip(&entries);
        let flags = flags_of(&block);
        let raw = F_SEQ_RAW | F_TIME_RAW | F_TABLE_RAW | F_OP_RAW;
        assert_eq!(flags[0] & raw, F_SEQ_RAW); // negative seq
        assert_eq!(flags[1] & raw, F_SEQ_RAW); // another seq
        assert_eq!(flags[2] & raw, F_SEQ_RAW); // a wider form
        assert_eq!(flags[3] & raw, F_TIME_RAW | F_SEQ_RAW);
        assert_eq!(flags[4] & raw, 0);
        assert_eq!(flags[5] & raw, F_TABLE_RAW);
        assert_eq!(flags[6] & raw, F_OP_RAW);
        assert_eq!(flags[7], F_OPAQUE);
        // the same entries, each one alone
        for e in &entries {
            check_round_trip(std::slice::from_ref(e));
        }
        // schema field present (an Insert carrying a schema is odd but valid)
        let mut ev = Event::new(1, 1, 1, Op::Insert);
        ev.key = Some(vec![Value::Int(1)]);
        ev.schema = Some(crate::event::SchemaChange {
            description: "x".into(),
            columns: vec![],
        });
        check_round_trip(&[SegmentEntry {
            seq: 1,
            ord: 0,
            op: b'i',
            key: vec![1],
            frame: encode_frame(&ev),
        }]);
    }

    /// `rows` x (1 insert + `updates` updates) of a table whose row `v`-th version `row(id, v)`
    /// gives, in (key, seq) order; seqs and times as if every row were updated once per round.
    fn history_of(rows: i64, updates: i64, row: impl Fn(i64, i64) -> Row) -> Vec<SegmentEntry> {
        let mut out = Vec::new();
        for round in 0..=updates {
            for id in 0..rows {
                let seq = round * rows + id + 1;
                let at = 820_000_000_000_000 + seq * 1_000;
                let mut e = Event::new(seq as u64, at, 16_384, Op::Insert);
                e.key = Some(vec![Value::Int(id)]);
                if round > 0 {
                    e.op = Op::Update;
                    e.old = Some(row(id, round - 1));
                }
                e.new = Some(row(id, round));
                out.push(SegmentEntry {
                    seq,
                    ord: 0,
                    op: if round == 0 { b'i' } else { b'u' },
                    key: encode_key(e.key.as_ref().unwrap()),
                    frame: encode_frame(&e),
                });
            }
        }
        sort(&mut out);
        out
    }

    /// (id int, name text ~20 chars, amount numeric, updated_at timestamptz, flag bool), as
    /// benches/core_segment.rs builds them: every update changes every column but the id.
    fn bench_like(rows: i64, updates: i64) -> Vec<SegmentEntry> {
        history_of(rows, updates, |id, v| {
            Row(vec![
                (1, Value::Int(id)),
                (2, Value::Text(format!("customer {id:07} v{v:02}"))),
                (
                    3,
                    Value::Numeric(format!("{}.{:02}", 10 + (id * 7919 + v) % 99_990, id % 100)),
                ),
                (
                    4,
                    Value::TimestampTz(820_000_000_000_000 + id * 1_000_003 + v * 86_400_000_000),
                ),
                (5, Value::Bool((id + v) % 3 == 0)),
            ])
        })
    }

    /// A 20-column table (ints, texts, timestamps, numerics; ~350-byte heap rows) whose
    /// updates change 4 columns.
    fn wide_table(rows: i64, updates: i64) -> Vec<SegmentEntry> {
        history_of(rows, updates, |id, v| {
            let mut cols = vec![(1u16, Value::Int(id))];
            for c in 2..=20u16 {
                let ci = i64::from(c);
                cols.push((
                    c,
                    match c % 4 {
                        0 => Value::Text(format!(
                            "column {c} of row {id}, {}",
                            if c == 8 { v } else { 0 }
                        )),
                        1 => Value::Int(id * ci + if c == 9 { v * 13 } else { 0 }),
                        2 => Value::TimestampTz(
                            800_000_000_000_000 + id * 1000 + ci + if c == 6 { v << 20 } else { 0 },
                        ),
                        _ => Value::Numeric(format!("{}.{}", id + ci, if c == 3 { v } else { 5 })),
                    },
                ));
            }
            Row(cols)
        })
    }

    /// Builds 64 KiB segments of `entries`, checks they decode to them, prints and returns the
    /// stored bytes per event.
    fn stored_bytes_per_event(what: &str, entries: &[SegmentEntry]) -> f64 {
        let mut b = SegmentBuilder::new(64 * 1024);
        let mut segs: Vec<(Vec<u8>, SegmentInfo)> =
            entries.iter().filter_map(|e| b.push(e).unwrap()).collect();
        segs.extend(b.finish());
        let stored: usize = segs.iter().map(|s| s.0.len()).sum();
        let raw: usize = segs.iter().map(|s| s.1.raw_len as usize).sum();
        let frames: usize = entries.iter().map(|e| e.frame.len() + e.key.len()).sum();
        let n = entries.len() as f64;
        let per_event = stored as f64 / n;
        eprintln!(
            "{what}: {} events in {} segments: {:.1} frame+key bytes/event, {:.1} raw payload \
             bytes/event, {per_event:.2} stored bytes/event (block headers included)",
            entries.len(),
            segs.len(),
            frames as f64 / n,
            raw as f64 / n,
        );
        // the common case takes the compact paths
        for (block, _) in &segs {
            for f in flags_of(block) {
                assert_eq!(
                    f & (F_OPAQUE | F_SEQ_RAW | F_TIME_RAW | F_TABLE_RAW | F_OP_RAW),
                    0
                );
                assert_eq!((f >> SH_KEY) & 3, M_DERIVED);
                assert!(matches!((f >> SH_OLD) & 3, M_NIL | M_DERIVED), "{f:#x}");
            }
        }
        let back: Vec<SegmentEntry> = segs
            .iter()
            .flat_map(|s| decode_segment(&s.0).unwrap())
            .collect();
        assert!(back == entries);
        per_event
    }

    #[test]
    fn bytes_per_event() {
        // goal: at most 0.3x the ~80-byte heap row of the bench table
        let narrow = stored_bytes_per_event("bench table", &bench_like(2_000, 10));
        assert!(narrow <= 0.3 * 80.0, "{narrow:.2} bytes per event");
        let wide = stored_bytes_per_event("20-column table", &wide_table(1_000, 10));
        assert!(wide <= 0.3 * 80.0, "{wide:.2} bytes per event");
    }

    #[test]
    fn builder_never_splits_a_key_and_keeps_sizes() {
        let mut entries = bench_like(300, 10);
        entries.extend(random_history(77, 400).into_iter().map(|mut e| {
            e.key.insert(0, 0xff); // after the bench keys
            e
        }));
        // one key with many events (larger than the small targets)
        let big_key = vec![0xff, 0xff, 0xff];
        let mut ev = Event::new(1, 1, 1, Op::Insert);
        ev.key = Some(vec![Value::Int(5)]);
        ev.new = Some(Row::new(vec![(1, Value::Text("y".repeat(200)))]));
        for s in 0..200 {
            entries.push(SegmentEntry {
                seq: s,
                ord: 0,
                op: b'i',
                key: big_key.clone(),
                frame: encode_frame(&ev),
            });
        }
        sort(&mut entries);
        for target in [0usize, 1, 500, 4096, 64 * 1024, usize::MAX] {
            let mut b = SegmentBuilder::new(target);
            let mut segs = Vec::new();
            for e in &entries {
                let before = b.pending();
                if let Some(s) = b.push(e).unwrap() {
                    assert_eq!(s.1.nevents as usize, before);
                    segs.push(s);
                }
            }
            segs.extend(b.finish());
            let mut back = Vec::new();
            for (i, (block, info)) in segs.iter().enumerate() {
                let d = decode_segment(block).unwrap();
                assert_eq!(segment_info(block).unwrap(), *info);
                // a key never continues into the next segment
                if let Some((next, _)) = segs.get(i + 1) {
                    let first_next = segment_info(next).unwrap().key_lo;
                    assert!(info.key_hi < first_next);
                    // filled: the next key's first entry would have taken it past the target
                    let e = &entries[back.len() + d.len()];
                    // (the builder counts the payload's prefix at its largest)
                    let at_most = info.raw_len as usize + PREFIX_MAX + entry_bound(e);
                    assert!(at_most > target, "{info:?}");
                }
                // within the target, up to its last key's first entry (a key's entries
                // are never split; a first key is always taken)
                if info.key_lo != info.key_hi {
                    let last_first = d.iter().position(|e| e.key == info.key_hi).unwrap();
                    let (_, head) = encode_segment(&d[..=last_first]).unwrap();
                    assert!(head.raw_len as usize <= target, "target {target}: {head:?}");
                }
                back.extend(d);
            }
            assert!(back == entries, "target {target}");
            if target <= 1 {
                let keys = entries.windows(2).filter(|w| w[0].key != w[1].key).count() + 1;
                assert_eq!(segs.len(), keys);
            }
            if target == usize::MAX {
                assert_eq!(segs.len(), 1);
                assert_eq!(segs[0], encode_segment(&entries).unwrap());
            }
        }
        assert!(SegmentBuilder::new(100).finish().is_none());
    }

    #[test]
    fn refuses_bad_input() {
        let entries = random_history(5, 60);
        assert!(matches!(encode_segment(&[]), Err(SegmentError::Empty)));
        // unsorted: swapped, duplicated
        let mut e = entries.clone();
        e.swap(3, 4);
        assert!(matches!(
            encode_segment(&e),
            Err(SegmentError::Unsorted { index: 4 })
        ));
        let mut e = entries.clone();
        e.insert(6, e[5].clone());
        assert!(matches!(
            encode_segment(&e),
            Err(SegmentError::Unsorted { index: 6 })
        ));
        // a shorter key sorts first: [1] < [1, 0]
        let one = |key: Vec<u8>| SegmentEntry {
            key,
            ..entries[0].clone()
        };
        assert!(encode_segment(&[one(vec![1]), one(vec![1, 0])]).is_ok());
        assert!(matches!(
            encode_segment(&[one(vec![1, 0]), one(vec![1])]),
            Err(SegmentError::Unsorted { index: 1 })
        ));
        // ops
        let mut e = entries.clone();
        e[2].op = b't';
        assert!(matches!(
            encode_segment(&e),
            Err(SegmentError::BadOp { index: 2, op: b't' })
        ));
        let mut e = entries.clone();
        let i = e.iter().position(|x| x.op == b'i').unwrap();
        e[i].op = b'd';
        let err = encode_segment(&e).unwrap_err();
        assert!(
            matches!(err, SegmentError::OpMismatch { index, op: b'd', found: Op::Insert } if index == i),
            "{err}"
        );
        assert!(err.to_string().contains("op 'd'"), "{err}");
        // frames: damaged, truncated, not an event
        let mut e = entries.clone();
        let last = e[1].frame.len() - 1;
        e[1].frame[last] ^= 1;
        assert!(matches!(
            encode_segment(&e),
            Err(SegmentError::Frame {
                index: 1,
                source: FrameError::CrcMismatch { .. }
            })
        ));
        let mut e = entries.clone();
        e[0].frame.truncate(5);
        assert!(matches!(
            encode_segment(&e),
            Err(SegmentError::Frame { index: 0, .. })
        ));
        let mut e = entries.clone();
        e[0].frame = frame_of_payload(&[0x93, 1, 2, 3]);
        assert!(matches!(
            encode_segment(&e),
            Err(SegmentError::Frame {
                index: 0,
                source: FrameError::Decode(_)
            })
        ));

        // the builder: an error leaves it as it was
        let mut b = SegmentBuilder::new(usize::MAX);
        b.push(&entries[0]).unwrap();
        b.push(&entries[1]).unwrap();
        assert!(matches!(
            b.push(&entries[0]),
            Err(SegmentError::Unsorted { index: 2 })
        ));
        let mut bad = entries[2].clone();
        bad.op = b's';
        assert!(matches!(
            b.push(&bad),
            Err(SegmentError::BadOp { index: 2, .. })
        ));
        for e in &entries[2..] {
            assert!(b.push(e).unwrap().is_none());
        }
        let (block, _) = b.finish().unwrap();
        assert!(decode_segment(&block).unwrap() == entries);
    }

    fn reseal(b: &mut [u8]) {
        let crc = crc32fast::hash(&b[12..]);
        b[8..12].copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn damage_and_kind_are_detected() {
        let entries = random_history(9, 100);
        let (block, _) = encode_segment(&entries).unwrap();
        assert_eq!(check_block(&block).unwrap().codec, Codec::Zstd);
        let key = entries[0].key.clone();
        for at in [8, 12, 13, 17, 21, 24, block.len() / 2, block.len() - 1] {
            let mut b = block.clone();
            b[at] ^= 0x10;
            for err in [
                decode_segment(&b).unwrap_err(),
                decode_segment_key(&b, &key).unwrap_err(),
                segment_info(&b).unwrap_err(),
            ] {
                assert!(
                    matches!(err, SegmentError::Block(BlockError::CrcMismatch { .. })),
                    "byte {at}: {err}"
                );
                assert!(err.to_string().contains("CRC mismatch"));
            }
        }
        let mut b = block.clone();
        b[0] = b'X';
        assert!(matches!(
            decode_segment(&b),
            Err(SegmentError::Block(BlockError::BadMagic { .. }))
        ));
        assert!(matches!(
            decode_segment(&block[..10]),
            Err(SegmentError::Block(BlockError::TruncatedHeader { len: 10 }))
        ));
        assert!(matches!(
            decode_segment(&block[..block.len() - 1]),
            Err(SegmentError::Block(BlockError::CrcMismatch { .. }))
        ));
        // kinds: a segment is no snapshot block, a snapshot block no segment
        assert!(matches!(
            decode_snapshot_block(&block),
            Err(BlockError::WrongKind {
                expected: BlockKind::Snapshot,
                found: BlockKind::EventSegment
            })
        ));
        let snap = encode_snapshot_block(&[Row::new(vec![(1, Value::Int(1))])]);
        for err in [
            decode_segment(&snap).unwrap_err(),
            decode_segment_key(&snap, &key).unwrap_err(),
            segment_info(&snap).unwrap_err(),
        ] {
            assert!(
                matches!(
                    err,
                    SegmentError::Block(BlockError::WrongKind {
                        expected: BlockKind::EventSegment,
                        found: BlockKind::Snapshot
                    })
                ),
                "{err}"
            );
        }
        // the row count (resealed: a buggy writer)
        let mut b = block.clone();
        b[12] ^= 1;
        reseal(&mut b);
        assert!(matches!(
            decode_segment(&b),
            Err(SegmentError::CountMismatch { .. })
        ));
    }

    /// An uncompressed segment holding `raw` as its payload.
    fn block_of(raw: &[u8], count: u32) -> Vec<u8> {
        snapshot::seal_block(BlockKind::EventSegment, count, raw, None, false)
    }

    #[test]
    fn corrupt_payloads_give_errors_not_panics() {
        let entries = random_history(11, 40);
        let (block, info) = encode_segment(&entries).unwrap();
        let (_, raw) = snapshot::open_block(&block, BlockKind::EventSegment).unwrap();
        let raw = raw.into_owned();
        let n = info.nevents;
        assert!(decode_segment(&block_of(&raw, n)).unwrap() == entries);
        // payload version
        let mut r = raw.clone();
        r[0] = 2;
        assert!(matches!(
            decode_segment(&block_of(&r, n)),
            Err(SegmentError::UnsupportedPayloadVersion { found: 2 })
        ));
        assert!(matches!(
            segment_info(&block_of(&r, n)),
            Err(SegmentError::UnsupportedPayloadVersion { found: 2 })
        ));
        // trailing byte, truncation
        let mut r = raw.clone();
        r.push(0);
        assert!(matches!(
            decode_segment(&block_of(&r, n)),
            Err(SegmentError::Corrupt(_))
        ));
        assert!(matches!(
            decode_segment(&block_of(&raw[..raw.len() - 1], n)),
            Err(SegmentError::Corrupt(_))
        ));
        assert!(decode_segment(&block_of(&[], 0)).is_err());
        // a wrong seq summary
        let mut r = raw.clone();
        r[1] ^= 2;
        assert!(decode_segment(&block_of(&r, n)).is_err());

        // random mutations: never a panic, and whatever decodes fully is re-encodable
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let mut ok = 0;
        for _ in 0..4_000 {
            let mut r = raw.clone();
            for _ in 0..1 + rng.below(3) {
                let at = rng.below(r.len());
                match rng.below(4) {
                    0 => r[at] ^= 1 << rng.below(8),
                    1 => r[at] = rng.below(256) as u8,
                    2 => {
                        r.remove(at);
                    }
                    _ => r.insert(at, rng.below(256) as u8),
                }
            }
            let b = block_of(&r, n);
            let _ = segment_info(&b);
            let _ = decode_segment_key(&b, &entries[rng.below(entries.len())].key);
            if let Ok(d) = decode_segment(&b) {
                ok += 1;
                assert_eq!(d.len(), n as usize);
            }
        }
        eprintln!("{ok} of 4000 mutated payloads still decode");
    }

    #[test]
    fn hash_chain() {
        // FIPS 180-2 test vectors
        let hex = |h: Hash| h.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(
            hex(sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex(sha256(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        // the definition
        let link = b"segment bytes".to_vec();
        let mut cat = CHAIN_DOMAIN.to_vec();
        cat.extend_from_slice(&GENESIS);
        cat.extend_from_slice(&(link.len() as u64).to_le_bytes());
        cat.extend_from_slice(&link);
        let h1 = chain_hash(&GENESIS, &link);
        assert_eq!(h1, sha256(&cat));
        assert_eq!(h1, chain_hash(&GENESIS, &link)); // deterministic
        let h2 = chain_hash(&h1, b"");
        assert_ne!(h2, h1);
        assert_ne!(h2, chain_hash(&GENESIS, b""));
        // any changed byte of prev or of the link changes the hash
        for i in 0..link.len() {
            for bit in [0, 7] {
                let mut l = link.clone();
                l[i] ^= 1 << bit;
                assert_ne!(chain_hash(&GENESIS, &l), h1);
            }
        }
        for i in 0..32 {
            let mut p = GENESIS;
            p[i] ^= 0x80;
            assert_ne!(chain_hash(&p, &link), h1);
        }
        // prefixes and extensions differ
        assert_ne!(chain_hash(&GENESIS, &link[..link.len() - 1]), h1);
        let mut longer = link.clone();
        longer.push(0);
        assert_ne!(chain_hash(&GENESIS, &longer), h1);
        // a chain over segments
        let mut h = GENESIS;
        let mut seen = std::collections::HashSet::new();
        for seed in 1..6 {
            let (block, _) = encode_segment(&random_history(seed, 10)).unwrap();
            h = chain_hash(&h, &block);
            assert!(seen.insert(h));
        }
    }

    #[test]
    fn codecs() {
        for v in [
            0i64,
            1,
            -1,
            63,
            -64,
            64,
            i64::MAX,
            i64::MIN,
            1 << 40,
            -(1 << 40),
        ] {
            assert_eq!(unzz(zz(v)), v);
            let mut b = Vec::new();
            put_varint(&mut b, zz(v));
            let mut c = Cur { b: &b };
            assert_eq!(c.zvarint().unwrap(), v);
            assert!(c.b.is_empty());
            // canonical ints are rmp-serde's forms
            let mut b = Vec::new();
            put_int(&mut b, v);
            assert_eq!(b, rmp_serde::to_vec(&v).unwrap(), "{v}");
            assert_eq!(b.len(), int_len(v));
            assert_eq!(read_int(&b), Some(v.into()));
            let u = v as u64;
            let mut b = Vec::new();
            put_uint(&mut b, u);
            assert_eq!(b, rmp_serde::to_vec(&u).unwrap(), "{u}");
            assert_eq!(b.len(), uint_len(u));
            assert_eq!(read_int(&b), Some(u.into()));
        }
        for v in [
            -33i64, -128, -129, -32_768, -32_769, 127, 128, 255, 256, 65_535, 65_536,
        ] {
            let mut b = Vec::new();
            put_int(&mut b, v);
            assert_eq!(b, rmp_serde::to_vec(&v).unwrap(), "{v}");
            assert_eq!(b.len(), int_len(v));
            assert_eq!(read_int(&b), Some(v.into()));
        }
        assert!(Cur { b: &[0xff; 11] }.varint().is_err());
        assert!(Cur { b: &[0x80] }.varint().is_err());
        // skip_object agrees with the MessagePack rmp-serde writes, for every value variant
        for v in every_value() {
            let b = rmp_serde::to_vec(&v).unwrap();
            assert_eq!(skip_object(&b, 0), Some(b.len()), "{v:?}");
            assert_eq!(skip_object(&b[..b.len() - 1], 0), None);
        }
        // row diffs
        let a = rmp_serde::to_vec(&Row::new(vec![(1, Value::Int(1)), (2, Value::Null)])).unwrap();
        let b = rmp_serde::to_vec(&Row::new(vec![(1, Value::Int(1)), (2, Value::Int(7))])).unwrap();
        let mut d = Vec::new();
        row_diff(&a, &b, &mut d).unwrap();
        assert_eq!(d, vec![0b10, 7]);
        let mut back = Vec::new();
        apply_row_diff(&a, &d, &mut back).unwrap();
        assert_eq!(back, b);
        let c = rmp_serde::to_vec(&Row::new(vec![(1, Value::Int(1))])).unwrap();
        assert!(row_diff(&a, &c, &mut Vec::new()).is_none());
    }
}
