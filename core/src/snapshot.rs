//! snapshot.rs — the DriftDB block: a versioned, checksummed, optionally compressed batch of
//! rows. A snapshot (a table's full contents as of one seq) is stored as a sequence of
//! blocks of about 1 MiB of uncompressed rows each; compacted event segments (segment.rs) use the
//! same container with another kind.
//!
//! Block layout (all integers little-endian):
//!
//! ```text
//! offset 0  2 bytes  magic  b"DS"
//! offset 2  1 byte   BLOCK_FORMAT_VERSION (= 1)
//! offset 3  1 byte   kind: 1 = snapshot rows, 2 = event segment (segment.rs)
//! offset 4  1 byte   codec: 0 = none, 1 = zstd
//! offset 5  3 bytes  reserved (= 0)
//! offset 8  4 bytes  CRC-32 (IEEE, crc32fast) over every byte from offset 12 to the end
//! offset 12 4 bytes  row count (for an event segment: its number of entries)
//! offset 16 4 bytes  raw_len: payload length uncompressed
//! offset 20 4 bytes  stored_len: payload length as stored (= raw_len for codec 0)
//! offset 24 ...      payload: a MessagePack array of rows (each as in row.rs), zstd-compressed
//!                    (level 3, one zstd frame) for codec 1 (an event segment's payload is
//!                    described in segment.rs)
//! ```
//!
//! The encoder compresses a payload only when that makes it smaller. `decode_snapshot_block`
//! checks, in this order: header present, magic, version, kind, codec, reserved bytes, CRC,
//! lengths, decompression (to exactly raw_len bytes), payload decode (which must consume the
//! payload exactly), row count. As in frame.rs, magic, version, kind and codec come before
//! the CRC, which covers only what follows it: a different version may lay out the rest of
//! the header differently, and each of these bytes is checked against its few valid values.
//!
//! Writing: `BlockSplitter` cuts a stream of rows (e.g. a table scan) into blocks as they
//! arrive, buffering one block's encoded rows; `split_into_blocks` does the same for an
//! iterator. Reading is on the hot path of full AS OF reads, so the payload is decoded by a
//! direct MessagePack reader (`fast` below) rather than through serde, falling back to serde
//! — the authority on the format — for anything that reader does not handle.

use std::borrow::Cow;
use std::cell::RefCell;

use thiserror::Error;

use crate::row::Row;

pub const BLOCK_MAGIC: [u8; 2] = *b"DS";
pub const BLOCK_FORMAT_VERSION: u8 = 1;
pub const BLOCK_HEADER_LEN: usize = 24;
/// zstd level the encoder uses (the zstd CLI default: fast to write, very fast to read).
pub const ZSTD_LEVEL: i32 = 3;

/// What a block holds (header byte 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum BlockKind {
    /// Rows of a snapshot.
    Snapshot = 1,
    /// A compacted event segment (segment.rs).
    EventSegment = 2,
}

impl BlockKind {
    pub fn from_u8(v: u8) -> Option<BlockKind> {
        match v {
            1 => Some(BlockKind::Snapshot),
            2 => Some(BlockKind::EventSegment),
            _ => None,
        }
    }
}

/// How a block's payload is stored (header byte 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Codec {
    Uncompressed = 0,
    Zstd = 1,
}

impl Codec {
    pub fn from_u8(v: u8) -> Option<Codec> {
        match v {
            0 => Some(Codec::Uncompressed),
            1 => Some(Codec::Zstd),
            _ => None,
        }
    }
}

/// A block's header, as `check_block` validated it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockInfo {
    pub kind: BlockKind,
    pub codec: Codec,
    pub row_count: u32,
    pub raw_len: u32,
    pub stored_len: u32,
}

#[derive(Debug, Error)]
pub enum BlockError {
    #[error("block truncated: {len} bytes, shorter than the {BLOCK_HEADER_LEN}-byte header")]
    TruncatedHeader { len: usize },
    #[error("bad block magic {found:02x?}, expected \"DS\"")]
    BadMagic { found: [u8; 2] },
    #[error("unsupported block format version {found} (this build reads version {BLOCK_FORMAT_VERSION})")]
    UnsupportedVersion { found: u8 },
    #[error("unknown block kind {found}")]
    UnknownKind { found: u8 },
    #[error("block holds {found:?}, expected {expected:?}")]
    WrongKind {
        expected: BlockKind,
        found: BlockKind,
    },
    #[error("unknown block codec {found}")]
    UnknownCodec { found: u8 },
    #[error("reserved block header bytes are {found:02x?}, expected zeros")]
    ReservedNotZero { found: [u8; 3] },
    #[error("block CRC mismatch: header says {expected:#010x}, contents hash to {actual:#010x}")]
    CrcMismatch { expected: u32, actual: u32 },
    #[error("block length mismatch: header declares a {declared}-byte stored payload, {available} bytes follow the header")]
    LengthMismatch { declared: u32, available: usize },
    #[error(
        "block raw length mismatch: header declares {declared} bytes, the payload has {actual}"
    )]
    RawLengthMismatch { declared: u32, actual: usize },
    #[error("block payload does not decompress: {0}")]
    Decompress(std::io::Error),
    #[error("block payload does not decode: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("block payload has {trailing} trailing bytes after the rows")]
    TrailingBytes { trailing: usize },
    #[error("block header declares {declared} rows, the payload holds {decoded}")]
    RowCountMismatch { declared: u32, decoded: usize },
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// Checks everything up to and including the lengths (not the payload's content); returns
/// the header and the stored payload.
fn checked_block(
    bytes: &[u8],
    expect: Option<BlockKind>,
) -> Result<(BlockInfo, &[u8]), BlockError> {
    if bytes.len() < BLOCK_HEADER_LEN {
        // Still report a bad magic if we can see it: that is the more useful diagnosis.
        if bytes.len() >= 2 && bytes[..2] != BLOCK_MAGIC {
            return Err(BlockError::BadMagic {
                found: [bytes[0], bytes[1]],
            });
        }
        return Err(BlockError::TruncatedHeader { len: bytes.len() });
    }
    if bytes[..2] != BLOCK_MAGIC {
        return Err(BlockError::BadMagic {
            found: [bytes[0], bytes[1]],
        });
    }
    if bytes[2] != BLOCK_FORMAT_VERSION {
        return Err(BlockError::UnsupportedVersion { found: bytes[2] });
    }
    let kind = BlockKind::from_u8(bytes[3]).ok_or(BlockError::UnknownKind { found: bytes[3] })?;
    if let Some(expected) = expect {
        if kind != expected {
            return Err(BlockError::WrongKind {
                expected,
                found: kind,
            });
        }
    }
    let codec = Codec::from_u8(bytes[4]).ok_or(BlockError::UnknownCodec { found: bytes[4] })?;
    if bytes[5..8] != [0, 0, 0] {
        return Err(BlockError::ReservedNotZero {
            found: [bytes[5], bytes[6], bytes[7]],
        });
    }
    let expected = u32_at(bytes, 8);
    let actual = crc32fast::hash(&bytes[12..]);
    if actual != expected {
        return Err(BlockError::CrcMismatch { expected, actual });
    }
    let info = BlockInfo {
        kind,
        codec,
        row_count: u32_at(bytes, 12),
        raw_len: u32_at(bytes, 16),
        stored_len: u32_at(bytes, 20),
    };
    let payload = &bytes[BLOCK_HEADER_LEN..];
    if info.stored_len as usize != payload.len() {
        return Err(BlockError::LengthMismatch {
            declared: info.stored_len,
            available: payload.len(),
        });
    }
    if codec == Codec::Uncompressed && info.raw_len != info.stored_len {
        return Err(BlockError::RawLengthMismatch {
            declared: info.raw_len,
            actual: payload.len(),
        });
    }
    Ok((info, payload))
}

/// Checks a block's header, CRC and lengths without decompressing or decoding its payload
/// (for the doctor); accepts every known kind.
pub fn check_block(bytes: &[u8]) -> Result<BlockInfo, BlockError> {
    checked_block(bytes, None).map(|(info, _)| info)
}

/// Checks a block of the expected kind (everything `check_block` checks, plus the kind) and
/// returns its header and its raw payload, decompressed to exactly `raw_len` bytes. Shared by
/// snapshot blocks and event segments (segment.rs).
pub(crate) fn open_block(
    bytes: &[u8],
    kind: BlockKind,
) -> Result<(BlockInfo, Cow<'_, [u8]>), BlockError> {
    let (info, stored) = checked_block(bytes, Some(kind))?;
    let raw = match info.codec {
        Codec::Uncompressed => Cow::Borrowed(stored),
        Codec::Zstd => {
            let decompressed =
                decompress(stored, info.raw_len as usize).map_err(BlockError::Decompress)?;
            if decompressed.len() != info.raw_len as usize {
                return Err(BlockError::RawLengthMismatch {
                    declared: info.raw_len,
                    actual: decompressed.len(),
                });
            }
            Cow::Owned(decompressed)
        }
    };
    Ok((info, raw))
}

thread_local! {
    /// One zstd decompression context per thread, reused: creating one (with zstd's CPU
    /// feature probe, slow on VMs) cost ~40% as much again as decompressing a 64 KiB segment.
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

/// zstd-decompresses a block payload of at most `capacity` bytes.
fn decompress(stored: &[u8], capacity: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|cell| match cell.try_borrow_mut() {
        Ok(mut d) => {
            if d.is_none() {
                *d = Some(zstd::bulk::Decompressor::new()?);
            }
            d.as_mut().expect("set above").decompress(stored, capacity)
        }
        Err(_) => zstd::bulk::decompress(stored, capacity),
    })
}

/// Decodes a snapshot block produced by `encode_snapshot_block` (or `split_into_blocks`).
pub fn decode_snapshot_block(bytes: &[u8]) -> Result<Vec<Row>, BlockError> {
    let (info, raw) = open_block(bytes, BlockKind::Snapshot)?;
    let raw: &[u8] = &raw;
    let rows = match fast::decode_rows(raw) {
        Some(rows) => rows,
        None => decode_rows_serde(raw)?,
    };
    if rows.len() != info.row_count as usize {
        return Err(BlockError::RowCountMismatch {
            declared: info.row_count,
            decoded: rows.len(),
        });
    }
    Ok(rows)
}

/// Reads a snapshot block's rows one at a time into a caller's `Row`, reusing its storage
/// (a full AS OF read decodes 100k rows: no allocation per row or per text value). Checks the
/// block as `decode_snapshot_block` does when opened; rows the fast reader does not handle
/// make it decode the rest of the block with serde.
pub struct SnapshotCursor {
    raw: Vec<u8>,
    pos: usize,
    left: u32,
    /// Set when the fast reader declined: the remaining rows, decoded with serde.
    rest: Option<std::vec::IntoIter<Row>>,
}

impl SnapshotCursor {
    pub fn open(bytes: &[u8]) -> Result<SnapshotCursor, BlockError> {
        let (info, raw) = open_block(bytes, BlockKind::Snapshot)?;
        let raw = raw.into_owned();
        let mut r = fast::Reader::new(&raw);
        match r.array_len() {
            Some(n) if n == info.row_count as usize => {
                let pos = raw.len() - r.remaining();
                Ok(SnapshotCursor { raw, pos, left: info.row_count, rest: None })
            }
            _ => {
                // let the authoritative decoder name the problem (or decode what we cannot)
                let rows = decode_rows_serde(&raw)?;
                if rows.len() != info.row_count as usize {
                    return Err(BlockError::RowCountMismatch { declared: info.row_count, decoded: rows.len() });
                }
                Ok(SnapshotCursor { raw: Vec::new(), pos: 0, left: 0, rest: Some(rows.into_iter()) })
            }
        }
    }

    /// The next row into `row` (its previous contents reused); false at the end.
    pub fn next_into(&mut self, row: &mut Row) -> Result<bool, BlockError> {
        if let Some(rest) = &mut self.rest {
            return Ok(match rest.next() {
                Some(r) => {
                    *row = r;
                    true
                }
                None => false,
            });
        }
        if self.left == 0 {
            if self.pos != self.raw.len() {
                return Err(BlockError::TrailingBytes { trailing: self.raw.len() - self.pos });
            }
            return Ok(false);
        }
        let mut r = fast::Reader::new(&self.raw[self.pos..]);
        if r.row_into(row).is_some() {
            self.pos = self.raw.len() - r.remaining();
            self.left -= 1;
            return Ok(true);
        }
        // the fast reader declined: decode the remaining rows with serde
        let mut tail = Vec::with_capacity(self.raw.len() - self.pos + 5);
        let n = self.left;
        tail.push(0xdd);
        tail.extend_from_slice(&n.to_be_bytes());
        tail.extend_from_slice(&self.raw[self.pos..]);
        let rows = decode_rows_serde(&tail)?;
        if rows.len() != n as usize {
            return Err(BlockError::RowCountMismatch { declared: n, decoded: rows.len() });
        }
        self.rest = Some(rows.into_iter());
        self.next_into(row)
    }
}

/// The authoritative payload decoder: rmp-serde with the `Row`/`Value` serde impls. Used
/// when the fast path declines (input it does not handle, or invalid input: then this one
/// names the error).
fn decode_rows_serde(raw: &[u8]) -> Result<Vec<Row>, BlockError> {
    let mut rest = raw;
    let mut de = rmp_serde::Deserializer::new(&mut rest);
    let rows: Vec<Row> = serde::Deserialize::deserialize(&mut de)?;
    if !rest.is_empty() {
        return Err(BlockError::TrailingBytes {
            trailing: rest.len(),
        });
    }
    Ok(rows)
}

/// The fast path of `decode_snapshot_block`: a direct MessagePack reader for exactly the
/// forms rmp-serde writes for rows (see row.rs and value.rs), nearly twice as fast as
/// rmp-serde's reader (the rest of the cost is allocating the rows). It is an optimisation only: whenever it meets anything else — an unknown
/// value tag, an unusual marker, invalid UTF-8, an out-of-range integer, a duplicate attnum,
/// deep nesting, truncation, trailing bytes — it returns None and the caller decodes with
/// serde, which gives the authoritative result or error. So it must accept nothing serde
/// rejects and decode everything it accepts exactly as serde would (a test checks both on
/// mutated payloads); a value variant added later without a case here still decodes, via
/// serde.
pub(crate) mod fast {
    use crate::row::Row;
    use crate::value::Value;

    /// Nesting of arrays/records accepted before deferring to serde (whose own limit is 1024
    /// MessagePack containers; each array or record level is two of them).
    const MAX_DEPTH: u32 = 64;

    pub(super) fn decode_rows(raw: &[u8]) -> Option<Vec<Row>> {
        let mut r = Reader { b: raw, depth: 0 };
        let n = r.array_len()?;
        // every row takes at least one byte: a declared count cannot make us over-allocate
        let mut rows = Vec::with_capacity(n.min(r.b.len()));
        for _ in 0..n {
            rows.push(r.row()?);
        }
        r.b.is_empty().then_some(rows)
    }

    pub(crate) struct Reader<'a> {
        b: &'a [u8],
        depth: u32,
    }

    impl<'a> Reader<'a> {
        pub(crate) fn new(b: &'a [u8]) -> Reader<'a> {
            Reader { b, depth: 0 }
        }

        pub(super) fn remaining(&self) -> usize {
            self.b.len()
        }

        /// Skips one MessagePack value of any kind (nested up to MAX_DEPTH).
        pub(crate) fn skip(&mut self) -> Option<()> {
            let m = self.byte()?;
            let (n, inner) = match m {
                0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
                0x80..=0x8f => (0, 2 * (m & 0x0f) as usize),
                0x90..=0x9f => (0, (m & 0x0f) as usize),
                0xa0..=0xbf => ((m & 0x1f) as usize, 0),
                0xc4 | 0xd9 => (self.byte()? as usize, 0),
                0xc5 | 0xda => (u16::from_be_bytes(self.be()?) as usize, 0),
                0xc6 | 0xdb => (u32::from_be_bytes(self.be()?) as usize, 0),
                0xc7 => (self.byte()? as usize + 1, 0),
                0xc8 => (u16::from_be_bytes(self.be()?) as usize + 1, 0),
                0xc9 => (u32::from_be_bytes(self.be()?) as usize + 1, 0),
                0xca => (4, 0),
                0xcb => (8, 0),
                0xcc | 0xd0 => (1, 0),
                0xcd | 0xd1 => (2, 0),
                0xce | 0xd2 => (4, 0),
                0xcf | 0xd3 => (8, 0),
                0xd4 => (2, 0),
                0xd5 => (3, 0),
                0xd6 => (5, 0),
                0xd7 => (9, 0),
                0xd8 => (17, 0),
                0xdc => (0, u16::from_be_bytes(self.be()?) as usize),
                0xdd => (0, u32::from_be_bytes(self.be()?) as usize),
                0xde => (0, 2 * u16::from_be_bytes(self.be()?) as usize),
                0xdf => (0, 2 * u32::from_be_bytes(self.be()?) as usize),
                0xc1 => return None,
            };
            self.take(n)?;
            if inner > 0 {
                self.depth += 1;
                if self.depth > MAX_DEPTH * 2 {
                    return None;
                }
                for _ in 0..inner {
                    self.skip()?;
                }
                self.depth -= 1;
            }
            Some(())
        }

        /// The `committed_at` and `new` fields of an event payload (frame.rs: a 9-element array
        /// seq, committed_at, table_id, op, key, old_key, old, new, schema), skipping the rest.
        pub(crate) fn event_new_image(&mut self) -> Option<(i64, Option<Row>)> {
            if self.array_len()? != 9 {
                return None;
            }
            self.skip()?; // seq
            let at: i64 = self.int()?;
            for _ in 0..5 {
                self.skip()?; // table_id, op, key, old_key, old
            }
            let new = if self.b.first() == Some(&0xc0) {
                self.byte()?;
                None
            } else {
                Some(self.row()?)
            };
            self.skip()?; // schema
            self.b.is_empty().then_some((at, new))
        }

        /// The entry count of a map (a row is a map attnum → value).
        fn map_len(&mut self) -> Option<usize> {
            let m = self.byte()?;
            Some(match m {
                0x80..=0x8f => (m & 0x0f).into(),
                0xde => u16::from_be_bytes(self.be()?).into(),
                0xdf => u32::from_be_bytes(self.be()?) as usize,
                _ => return None,
            })
        }

        /// A row into `row`, reusing its column vector and the strings of its text values.
        pub(super) fn row_into(&mut self, row: &mut Row) -> Option<()> {
            let n = self.map_len()?;
            let cols = &mut row.0;
            let mut last: Option<u16> = None;
            for i in 0..n {
                let attnum: u16 = self.int()?;
                if last.is_some_and(|l| l >= attnum) {
                    return None; // unsorted or repeated: the serde path normalizes or refuses
                }
                last = Some(attnum);
                if i < cols.len() {
                    cols[i].0 = attnum;
                    self.value_into(&mut cols[i].1)?;
                } else {
                    cols.push((attnum, self.value()?));
                }
            }
            cols.truncate(n);
            Some(())
        }

        /// A value into `slot`, reusing its string when both are strings of the same kind.
        fn value_into(&mut self, slot: &mut Value) -> Option<()> {
            let m = *self.b.first()?;
            match (m, &mut *slot) {
                (0xa0..=0xbf | 0xd9..=0xdb, Value::Text(s)) => {
                    self.byte()?;
                    let t = self.str_ref(m)?;
                    s.clear();
                    s.push_str(t);
                }
                (0x92, Value::Numeric(s)) if self.b.get(1) == Some(&6) => {
                    self.b = &self.b[2..];
                    let m2 = self.byte()?;
                    let t = self.str_ref(m2)?;
                    s.clear();
                    s.push_str(t);
                }
                _ => *slot = self.value()?,
            }
            Some(())
        }

        fn str_ref(&mut self, m: u8) -> Option<&'a str> {
            let len = match m {
                0xa0..=0xbf => (m & 0x1f).into(),
                0xd9 => self.byte()?.into(),
                0xda => u16::from_be_bytes(self.be()?).into(),
                0xdb => u32::from_be_bytes(self.be()?) as usize,
                _ => return None,
            };
            std::str::from_utf8(self.take(len)?).ok()
        }
        #[inline]
        fn byte(&mut self) -> Option<u8> {
            let (&x, rest) = self.b.split_first()?;
            self.b = rest;
            Some(x)
        }

        #[inline]
        fn take(&mut self, n: usize) -> Option<&'a [u8]> {
            if n > self.b.len() {
                return None;
            }
            let (a, rest) = self.b.split_at(n);
            self.b = rest;
            Some(a)
        }

        #[inline]
        fn be<const N: usize>(&mut self) -> Option<[u8; N]> {
            self.take(N).map(|s| s.try_into().expect("N bytes"))
        }

        /// The body of an integer whose marker was `m`, or None if `m` is no integer marker.
        #[inline]
        fn int_body(&mut self, m: u8) -> Option<i128> {
            Some(match m {
                0x00..=0x7f => m.into(),
                0xe0..=0xff => (m as i8).into(),
                0xcc => self.byte()?.into(),
                0xcd => u16::from_be_bytes(self.be()?).into(),
                0xce => u32::from_be_bytes(self.be()?).into(),
                0xcf => u64::from_be_bytes(self.be()?).into(),
                0xd0 => i8::from_be_bytes(self.be()?).into(),
                0xd1 => i16::from_be_bytes(self.be()?).into(),
                0xd2 => i32::from_be_bytes(self.be()?).into(),
                0xd3 => i64::from_be_bytes(self.be()?).into(),
                _ => return None,
            })
        }

        #[inline]
        fn int<T: TryFrom<i128>>(&mut self) -> Option<T> {
            let m = self.byte()?;
            self.int_body(m)?.try_into().ok()
        }

        #[inline]
        pub(super) fn array_len(&mut self) -> Option<usize> {
            let m = self.byte()?;
            self.array_len_body(m)
        }

        #[inline]
        fn array_len_body(&mut self, m: u8) -> Option<usize> {
            Some(match m {
                0x90..=0x9f => (m & 0x0f).into(),
                0xdc => u16::from_be_bytes(self.be()?).into(),
                0xdd => u32::from_be_bytes(self.be()?) as usize,
                _ => return None,
            })
        }

        fn str_body(&mut self, m: u8) -> Option<String> {
            self.str_ref(m).map(str::to_owned)
        }

        fn string(&mut self) -> Option<String> {
            let m = self.byte()?;
            self.str_body(m)
        }

        fn bin_body(&mut self, m: u8) -> Option<&'a [u8]> {
            let len = match m {
                0xc4 => self.byte()?.into(),
                0xc5 => u16::from_be_bytes(self.be()?).into(),
                0xc6 => u32::from_be_bytes(self.be()?) as usize,
                _ => return None,
            };
            self.take(len)
        }

        fn ints_i32(&mut self) -> Option<Vec<i32>> {
            let n = self.array_len()?;
            let mut v = Vec::with_capacity(n.min(self.b.len()));
            for _ in 0..n {
                v.push(self.int()?);
            }
            Some(v)
        }

        fn values(&mut self) -> Option<Vec<Value>> {
            let n = self.array_len()?;
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                return None;
            }
            let mut v = Vec::with_capacity(n.min(self.b.len()));
            for _ in 0..n {
                v.push(self.value()?);
            }
            self.depth -= 1;
            Some(v)
        }

        fn row(&mut self) -> Option<Row> {
            let n = self.map_len()?;
            // as row.rs's Deserialize: sorted input is taken as is, other input is sorted
            // and must not repeat an attnum
            let mut cols: Vec<(u16, Value)> = Vec::with_capacity(n.min(1600));
            let mut sorted = true;
            for _ in 0..n {
                let attnum: u16 = self.int()?;
                if let Some(last) = cols.last() {
                    sorted &= last.0 < attnum;
                }
                cols.push((attnum, self.value()?));
            }
            if sorted {
                return Some(Row(cols));
            }
            let row = Row::new(cols);
            (row.len() == n).then_some(row)
        }

        fn value(&mut self) -> Option<Value> {
            let m = self.byte()?;
            Some(match m {
                0xc0 => Value::Null,
                0xc2 => Value::Bool(false),
                0xc3 => Value::Bool(true),
                0xca => Value::Float(f32::from_be_bytes(self.be()?).into()),
                0xcb => Value::Float(f64::from_be_bytes(self.be()?)),
                0xa0..=0xbf | 0xd9..=0xdb => Value::Text(self.str_body(m)?),
                0xc4..=0xc6 => Value::Bytes(self.bin_body(m)?.to_vec()),
                0x90..=0x9f | 0xdc | 0xdd => {
                    let len = self.array_len_body(m)?;
                    self.tagged(len)?
                }
                _ => Value::Int(self.int_body(m)?.try_into().ok()?),
            })
        }

        /// A tagged value, `[tag, field...]` of `len` elements (value.rs).
        fn tagged(&mut self, len: usize) -> Option<Value> {
            let tag: u8 = self.int()?;
            let fields = match tag {
                9 => 2,
                12 => 3,
                14 => 3,
                6..=16 => 1,
                _ => return None,
            };
            if len != fields + 1 {
                return None;
            }
            Some(match tag {
                6 => Value::Numeric(self.string()?),
                7 => Value::Date(self.int()?),
                8 => Value::Time(self.int()?),
                9 => Value::TimeTz(self.int()?, self.int()?),
                10 => Value::Timestamp(self.int()?),
                11 => Value::TimestampTz(self.int()?),
                12 => Value::Interval {
                    months: self.int()?,
                    days: self.int()?,
                    micros: self.int()?,
                },
                13 => {
                    let m = self.byte()?;
                    Value::Uuid(self.bin_body(m)?.try_into().ok()?)
                }
                14 => {
                    self.depth += 1;
                    if self.depth > MAX_DEPTH {
                        return None;
                    }
                    let v = Value::Array {
                        lower: self.ints_i32()?,
                        dims: self.ints_i32()?,
                        elems: self.values()?,
                    };
                    self.depth -= 1;
                    v
                }
                15 => Value::Record(self.values()?),
                16 => Value::Other(self.string()?),
                _ => unreachable!("tags checked above"),
            })
        }
    }
}

/// Room kept in front of the encoded rows for the MessagePack array header (at most 5 bytes),
/// so the raw payload is contiguous without copying the rows.
const ARRAY_HEADER_ROOM: usize = 5;

/// Accumulates encoded rows and turns them into blocks.
struct BlockBuilder {
    /// `ARRAY_HEADER_ROOM` placeholder bytes, then the rows' MessagePack.
    buf: Vec<u8>,
    count: usize,
    compressor: Option<zstd::bulk::Compressor<'static>>,
}

impl BlockBuilder {
    fn new(codec: Codec) -> BlockBuilder {
        let compressor = (codec == Codec::Zstd).then(new_compressor);
        BlockBuilder {
            buf: vec![0; ARRAY_HEADER_ROOM],
            count: 0,
            compressor,
        }
    }

    fn raw_len(&self) -> usize {
        self.buf.len() - ARRAY_HEADER_ROOM
    }

    fn push(&mut self, row: &Row) {
        // Writing into a Vec cannot fail and a Row is always serializable.
        rmp_serde::encode::write(&mut self.buf, row).expect("row serialization is infallible");
        self.count += 1;
    }

    /// Encodes the rows pushed so far as one block and starts afresh. Compresses (when the
    /// builder has a compressor) unless that would not make the payload smaller; with
    /// `force`, keeps the compressed form regardless.
    fn take_block(&mut self, force: bool) -> Vec<u8> {
        let count = u32::try_from(self.count).expect("more than u32::MAX rows in one block");
        let mut hdr = [0u8; ARRAY_HEADER_ROOM];
        let h = array_header(count, &mut hdr);
        let start = ARRAY_HEADER_ROOM - h.len();
        self.buf[start..ARRAY_HEADER_ROOM].copy_from_slice(h);
        let raw = &self.buf[start..];
        let out = seal_block(
            BlockKind::Snapshot,
            count,
            raw,
            self.compressor.as_mut(),
            force,
        );
        self.buf.truncate(ARRAY_HEADER_ROOM);
        self.count = 0;
        out
    }
}

/// A zstd compression context at `ZSTD_LEVEL`, reusable across blocks.
pub(crate) fn new_compressor() -> zstd::bulk::Compressor<'static> {
    zstd::bulk::Compressor::new(ZSTD_LEVEL).expect("zstd context with a valid level")
}

/// Builds a block of `kind` holding `count` items whose raw payload is `raw`: compressed with
/// `compressor`, if given, unless that would not make the payload smaller (with `force`, kept
/// compressed regardless); header and CRC as in the module comment. Shared by snapshot blocks
/// and event segments (segment.rs).
pub(crate) fn seal_block(
    kind: BlockKind,
    count: u32,
    raw: &[u8],
    compressor: Option<&mut zstd::bulk::Compressor<'static>>,
    force: bool,
) -> Vec<u8> {
    let raw_len = u32::try_from(raw.len()).expect("block payload exceeds 4 GiB");
    let mut out = Vec::new();
    let mut codec = Codec::Uncompressed;
    if let Some(c) = compressor {
        let bound = zstd::zstd_safe::compress_bound(raw.len());
        out.resize(BLOCK_HEADER_LEN + bound, 0);
        let n = c
            .compress_to_buffer(raw, &mut out[BLOCK_HEADER_LEN..])
            .expect("zstd output buffer of compress_bound size");
        if force || n < raw.len() {
            out.truncate(BLOCK_HEADER_LEN + n);
            codec = Codec::Zstd;
        }
    }
    if codec == Codec::Uncompressed {
        out.clear();
        out.reserve_exact(BLOCK_HEADER_LEN + raw.len());
        out.resize(BLOCK_HEADER_LEN, 0);
        out.extend_from_slice(raw);
    }
    let stored_len = (out.len() - BLOCK_HEADER_LEN) as u32;
    out[..2].copy_from_slice(&BLOCK_MAGIC);
    out[2] = BLOCK_FORMAT_VERSION;
    out[3] = kind as u8;
    out[4] = codec as u8;
    out[5..8].fill(0);
    out[12..16].copy_from_slice(&count.to_le_bytes());
    out[16..20].copy_from_slice(&raw_len.to_le_bytes());
    out[20..24].copy_from_slice(&stored_len.to_le_bytes());
    let crc = crc32fast::hash(&out[12..]);
    out[8..12].copy_from_slice(&crc.to_le_bytes());
    out
}

/// MessagePack array header for `n` elements (as rmp-serde writes it for a sequence).
fn array_header(n: u32, buf: &mut [u8; ARRAY_HEADER_ROOM]) -> &[u8] {
    if n < 16 {
        buf[0] = 0x90 | n as u8;
        &buf[..1]
    } else if n <= u32::from(u16::MAX) {
        buf[0] = 0xdc;
        buf[1..3].copy_from_slice(&(n as u16).to_be_bytes());
        &buf[..3]
    } else {
        buf[0] = 0xdd;
        buf[1..5].copy_from_slice(&n.to_be_bytes());
        &buf[..5]
    }
}

/// Encodes rows as one snapshot block, zstd-compressed unless that does not make it smaller.
pub fn encode_snapshot_block(rows: &[Row]) -> Vec<u8> {
    let mut b = BlockBuilder::new(Codec::Zstd);
    rows.iter().for_each(|r| b.push(r));
    b.take_block(false)
}

/// Encodes rows as one snapshot block stored with exactly the given codec.
pub fn encode_snapshot_block_with(rows: &[Row], codec: Codec) -> Vec<u8> {
    let mut b = BlockBuilder::new(codec);
    rows.iter().for_each(|r| b.push(r));
    b.take_block(true)
}

/// Cuts a stream of rows into snapshot blocks as the rows arrive (e.g. from a table scan),
/// so that only one block's rows are buffered: `push` returns a finished block whenever the
/// next row would take the current one past the target, `finish` the last one.
pub struct BlockSplitter {
    target_raw_bytes: usize,
    builder: BlockBuilder,
    row_buf: Vec<u8>,
}

impl BlockSplitter {
    /// `target_raw_bytes`: the uncompressed payload size to aim for (the extension uses
    /// 1 MiB). A block's raw payload stays within it, except a single row that alone is
    /// larger, which gets a block of its own.
    pub fn new(target_raw_bytes: usize) -> BlockSplitter {
        BlockSplitter {
            target_raw_bytes,
            builder: BlockBuilder::new(Codec::Zstd),
            row_buf: Vec::new(),
        }
    }

    /// Adds a row; returns the previous block if this row starts a new one.
    pub fn push(&mut self, row: &Row) -> Option<Vec<u8>> {
        self.row_buf.clear();
        rmp_serde::encode::write(&mut self.row_buf, row).expect("row serialization is infallible");
        let b = &mut self.builder;
        let full = b.count > 0
            && (ARRAY_HEADER_ROOM + b.raw_len() + self.row_buf.len() > self.target_raw_bytes
                || b.count == u32::MAX as usize);
        let done = full.then(|| b.take_block(false));
        b.buf.extend_from_slice(&self.row_buf);
        b.count += 1;
        done
    }

    /// The last block, if any row is pending.
    pub fn finish(mut self) -> Option<Vec<u8>> {
        (self.builder.count > 0).then(|| self.builder.take_block(false))
    }
}

/// Encodes rows, in order, into snapshot blocks of about `target_raw_bytes` uncompressed
/// payload each (see `BlockSplitter`). No rows give no blocks.
pub fn split_into_blocks(
    rows: impl IntoIterator<Item = Row>,
    target_raw_bytes: usize,
) -> Vec<Vec<u8>> {
    let mut s = BlockSplitter::new(target_raw_bytes);
    let mut blocks: Vec<Vec<u8>> = rows.into_iter().filter_map(|r| s.push(&r)).collect();
    blocks.extend(s.finish());
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Value;

    /// The cursor yields exactly what decode_snapshot_block does, row after row into one
    /// reused Row, across values of changing kinds, widths and column counts.
    #[test]
    fn cursor_matches_block_decode() {
        let vals = every_value();
        let mut rows = Vec::new();
        for i in 0..200usize {
            let ncols = 1 + i % 7;
            let cols = (0..ncols)
                .map(|c| ((c * 2 + 1) as u16, vals[(i * 7 + c * 3) % vals.len()].clone()))
                .collect();
            rows.push(Row(cols));
        }
        for codec in [Codec::Uncompressed, Codec::Zstd] {
            let block = encode_snapshot_block_with(&rows, codec);
            let want = decode_snapshot_block(&block).unwrap();
            let mut cur = SnapshotCursor::open(&block).unwrap();
            let mut got = Vec::new();
            let mut buf = Row(Vec::new());
            while cur.next_into(&mut buf).unwrap() {
                got.push(buf.clone());
            }
            assert_eq!(format!("{got:?}"), format!("{want:?}"));
        }
        // a damaged block is refused when opened
        let mut block = encode_snapshot_block(&rows);
        let n = block.len();
        block[n - 1] ^= 1;
        assert!(SnapshotCursor::open(&block).is_err());
    }

    fn every_value() -> Vec<Value> {
        crate::testdata::every_value(70000)
    }

    /// Bitwise float identity on top of `==` (NaN payloads and the sign of zero included).
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

    fn same_rows(a: &[Row], b: &[Row]) -> bool {
        a.len() == b.len()
            && a.iter().zip(b).all(|(x, y)| {
                x.0.len() == y.0.len()
                    && x.0
                        .iter()
                        .zip(&y.0)
                        .all(|(p, q)| p.0 == q.0 && identical(&p.1, &q.1))
            })
    }

    /// Rows of every value variant, the variants rotated through the columns.
    fn varied_rows(n: usize) -> Vec<Row> {
        let values = every_value();
        (0..n)
            .map(|i| {
                let mut cols: Vec<(u16, Value)> = (0..5)
                    .map(|c| (c as u16 * 2 + 1, values[(i * 5 + c) % values.len()].clone()))
                    .collect();
                cols.push((20, Value::Int(i as i64)));
                Row::new(cols)
            })
            .collect()
    }

    fn round_trip(rows: &[Row]) {
        for block in [
            encode_snapshot_block(rows),
            encode_snapshot_block_with(rows, Codec::Uncompressed),
            encode_snapshot_block_with(rows, Codec::Zstd),
        ] {
            let info = check_block(&block).unwrap();
            assert_eq!(info.kind, BlockKind::Snapshot);
            assert_eq!(info.row_count as usize, rows.len());
            assert_eq!(info.stored_len as usize, block.len() - BLOCK_HEADER_LEN);
            // the raw payload is exactly rmp-serde's encoding of the rows
            let raw = rmp_serde::to_vec(rows).unwrap();
            assert_eq!(info.raw_len as usize, raw.len());
            if info.codec == Codec::Uncompressed {
                assert_eq!(&block[BLOCK_HEADER_LEN..], raw.as_slice());
            }
            let back = decode_snapshot_block(&block).unwrap();
            assert!(same_rows(&back, rows), "round trip changed the rows");
        }
    }

    #[test]
    fn round_trips() {
        round_trip(&[]);
        round_trip(&[Row::default()]);
        round_trip(&[Row::new(vec![
            (1, Value::Int(1)),
            (2, Value::Text("one".into())),
        ])]);
        round_trip(&varied_rows(15));
        round_trip(&varied_rows(16));
        round_trip(&varied_rows(300));
        // array header sizes: fixarray, array16, array32
        for n in [15usize, 16, 65_535, 65_536] {
            round_trip(&vec![Row::default(); n]);
        }
    }

    #[test]
    fn codec_choice_and_header() {
        // Tiny payloads do not shrink under zstd: stored uncompressed.
        let b = encode_snapshot_block(&[]);
        assert_eq!(b.len(), BLOCK_HEADER_LEN + 1);
        assert_eq!(&b[..8], &[b'D', b'S', 1, 1, 0, 0, 0, 0]);
        assert_eq!(&b[12..], &[0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0x90]);
        assert_eq!(
            u32::from_le_bytes(b[8..12].try_into().unwrap()),
            crc32fast::hash(&b[12..])
        );
        // Repetitive rows do.
        let rows = vec![Row::new(vec![(1, Value::Text("same text again".into()))]); 1000];
        let b = encode_snapshot_block(&rows);
        let info = check_block(&b).unwrap();
        assert_eq!(info.codec, Codec::Zstd);
        assert!(info.stored_len * 10 < info.raw_len, "{info:?}");
        assert_eq!(decode_snapshot_block(&b).unwrap(), rows);
    }

    fn reseal(b: &mut [u8]) {
        let crc = crc32fast::hash(&b[12..]);
        b[8..12].copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn every_error() {
        let rows = varied_rows(50);
        for codec in [Codec::Uncompressed, Codec::Zstd] {
            let good = encode_snapshot_block_with(&rows, codec);
            let err = |b: &[u8]| decode_snapshot_block(b).unwrap_err();

            // A flipped payload byte (anywhere after the CRC): CRC error, in check_block too.
            for at in [12, 17, 22, BLOCK_HEADER_LEN, good.len() / 2, good.len() - 1] {
                let mut b = good.clone();
                b[at] ^= 0x20;
                assert!(
                    matches!(err(&b), BlockError::CrcMismatch { .. }),
                    "byte {at}"
                );
                assert!(matches!(
                    check_block(&b),
                    Err(BlockError::CrcMismatch { .. })
                ));
            }
            // Truncated: header, then payload.
            assert!(matches!(
                err(&good[..10]),
                BlockError::TruncatedHeader { len: 10 }
            ));
            assert!(matches!(err(&[]), BlockError::TruncatedHeader { len: 0 }));
            assert!(matches!(
                err(&good[..good.len() - 1]),
                BlockError::CrcMismatch { .. }
            ));
            assert!(matches!(
                err(&good[..BLOCK_HEADER_LEN]),
                BlockError::CrcMismatch { .. }
            ));
            // Header bytes, each checked before the CRC.
            let mut b = good.clone();
            b[0] = b'X';
            assert!(matches!(
                err(&b),
                BlockError::BadMagic {
                    found: [b'X', b'S']
                }
            ));
            assert!(matches!(err(&b[..5]), BlockError::BadMagic { .. }));
            let mut b = good.clone();
            b[2] = 2;
            assert!(matches!(
                err(&b),
                BlockError::UnsupportedVersion { found: 2 }
            ));
            let mut b = good.clone();
            b[3] = 9;
            assert!(matches!(err(&b), BlockError::UnknownKind { found: 9 }));
            b[3] = 2;
            assert!(matches!(
                err(&b),
                BlockError::WrongKind {
                    expected: BlockKind::Snapshot,
                    found: BlockKind::EventSegment
                }
            ));
            assert_eq!(check_block(&b).unwrap().kind, BlockKind::EventSegment);
            let mut b = good.clone();
            b[4] = 7;
            assert!(matches!(err(&b), BlockError::UnknownCodec { found: 7 }));
            let mut b = good.clone();
            b[6] = 1;
            assert!(matches!(
                err(&b),
                BlockError::ReservedNotZero { found: [0, 1, 0] }
            ));

            // Lengths, counts and content that pass the CRC (a buggy writer): resealed.
            let mut b = good.clone();
            b[20] ^= 1;
            reseal(&mut b);
            assert!(matches!(err(&b), BlockError::LengthMismatch { .. }));
            let mut b = good.clone();
            b[12] ^= 1;
            reseal(&mut b);
            assert!(matches!(
                err(&b),
                BlockError::RowCountMismatch {
                    declared: 51,
                    decoded: 50
                }
            ));
            assert_eq!(check_block(&b).unwrap().row_count, 51);
            let mut b = good.clone();
            b[16] ^= 1;
            reseal(&mut b);
            match codec {
                Codec::Uncompressed => {
                    assert!(matches!(err(&b), BlockError::RawLengthMismatch { .. }))
                }
                // a zstd frame records its content size: a wrong raw_len fails to decompress
                Codec::Zstd => assert!(matches!(
                    err(&b),
                    BlockError::RawLengthMismatch { .. } | BlockError::Decompress(_)
                )),
            }
            // The codec byte swapped for the other one.
            let mut b = good.clone();
            b[4] ^= 1;
            match codec {
                Codec::Uncompressed => assert!(matches!(err(&b), BlockError::Decompress(_))),
                Codec::Zstd => assert!(matches!(err(&b), BlockError::RawLengthMismatch { .. })),
            }
        }

        // Payloads that are not (exactly) an array of rows.
        let block_of = |raw: &[u8], count: u32| {
            let mut b = vec![b'D', b'S', 1, 1, 0, 0, 0, 0, 0, 0, 0, 0];
            b.extend_from_slice(&count.to_le_bytes());
            b.extend_from_slice(&(raw.len() as u32).to_le_bytes());
            b.extend_from_slice(&(raw.len() as u32).to_le_bytes());
            b.extend_from_slice(raw);
            reseal(&mut b);
            b
        };
        let mut raw = rmp_serde::to_vec(&rows).unwrap();
        assert_eq!(decode_snapshot_block(&block_of(&raw, 50)).unwrap(), rows);
        raw.push(0xc0);
        assert!(matches!(
            decode_snapshot_block(&block_of(&raw, 50)),
            Err(BlockError::TrailingBytes { trailing: 1 })
        ));
        assert!(matches!(
            decode_snapshot_block(&block_of(&[0x91, 0x05], 1)),
            Err(BlockError::Decode(_))
        ));
        assert!(matches!(
            decode_snapshot_block(&block_of(&raw[..raw.len() - 10], 50)),
            Err(BlockError::Decode(_))
        ));
    }

    #[test]
    fn split_preserves_order_and_count() {
        let rows = varied_rows(2_000);
        let target = 64 * 1024;
        let blocks = split_into_blocks(rows.clone(), target);
        assert!(blocks.len() > 3, "{} blocks", blocks.len());
        let mut back = Vec::new();
        for b in &blocks {
            let info = check_block(b).unwrap();
            // within the target, unless one row alone exceeds it
            assert!(
                info.raw_len as usize <= target || info.row_count == 1,
                "{info:?}"
            );
            back.extend(decode_snapshot_block(b).unwrap());
        }
        assert!(same_rows(&back, &rows));
        // blocks are filled: each one plus the next block's first row would exceed the target
        for w in blocks.windows(2) {
            let next_first = decode_snapshot_block(&w[1]).unwrap().remove(0);
            let grown = check_block(&w[0]).unwrap().raw_len as usize
                + rmp_serde::to_vec(&next_first).unwrap().len();
            assert!(grown + ARRAY_HEADER_ROOM > target);
        }

        assert!(split_into_blocks(Vec::new(), target).is_empty());
        // a tiny target: one row per block
        let blocks = split_into_blocks(rows[..10].to_vec(), 1);
        assert_eq!(blocks.len(), 10);
        let back: Vec<Row> = blocks
            .iter()
            .flat_map(|b| decode_snapshot_block(b).unwrap())
            .collect();
        assert!(same_rows(&back, &rows[..10]));
        // a huge target: one block
        assert_eq!(split_into_blocks(rows.clone(), usize::MAX).len(), 1);
    }
    /// Decodes a raw payload both ways; where the fast path accepts, serde must agree exactly.
    /// Returns whether the fast path accepted.
    fn fast_agrees_with_serde(raw: &[u8]) -> bool {
        let slow = decode_rows_serde(raw);
        match fast::decode_rows(raw) {
            None => false,
            Some(rows) => {
                match &slow {
                    Ok(s) => assert!(
                        same_rows(&rows, s),
                        "fast {rows:?} serde {s:?} on {raw:02x?}"
                    ),
                    Err(e) => panic!("fast path accepted what serde rejects ({e}): {raw:02x?}"),
                }
                true
            }
        }
    }

    #[test]
    fn fast_path_decodes_exactly_what_serde_decodes() {
        // Every variant, unsorted rows included, takes the fast path.
        let mut rows = varied_rows(40);
        rows.push(Row(vec![(9, Value::Int(9)), (2, Value::Int(2))]));
        let raw = rmp_serde::to_vec(&rows).unwrap();
        assert!(fast_agrees_with_serde(&raw));
        let back = fast::decode_rows(&raw).unwrap();
        assert_eq!(
            back.last().unwrap().0,
            vec![(2, Value::Int(2)), (9, Value::Int(9))]
        );

        // Hand-made forms the encoder does not write, but serde reads.
        let f32_nan = f32::from_bits(0x7fc0_0123).to_be_bytes();
        let cases: Vec<(Vec<u8>, bool)> = vec![
            (vec![0x91, 0x81, 0x01, 0xca, 0x3f, 0xc0, 0, 0], true), // float32 1.5
            (
                vec![
                    0x91, 0x81, 0x01, 0xca, f32_nan[0], f32_nan[1], f32_nan[2], f32_nan[3],
                ],
                true,
            ),
            (
                vec![0x91, 0x81, 0xcd, 0x00, 0x01, 0xd3, 0, 0, 0, 0, 0, 0, 0, 7],
                true,
            ), // wide ints
            (
                vec![0x91, 0x81, 0x01, 0x92, 0xcc, 7, 0xd2, 0, 0, 0, 3],
                true,
            ), // Date, wide tag
            (vec![0xdc, 0, 1, 0xde, 0, 1, 1, 0xc0], true), // array16, map16
            (
                vec![0x91, 0x81, 0x01, 0xcf, 0x80, 0, 0, 0, 0, 0, 0, 0],
                false,
            ), // u64 > i64::MAX
            (vec![0x91, 0x81, 0x01, 0xa1, 0xff], false),   // invalid UTF-8: serde makes Bytes
            (vec![0x91, 0x82, 0x01, 0xc0, 0x01, 0xc0], false), // duplicate attnum
            (vec![0x91, 0x81, 0xff, 0xc0], false),         // negative attnum
            (vec![0x91, 0x81, 0x01, 0x92, 0x05, 0x01], false), // unknown tag
            (vec![0x91, 0x81, 0x01, 0x93, 0x07, 0x01, 0x02], false), // extra field
            (
                vec![0x91, 0x81, 0x01, 0x92, 0x07, 0xcf, 0, 0, 0, 1, 0, 0, 0, 0],
                false,
            ), // Date > i32
            (vec![0x91, 0x81, 0x01, 0x92, 0x0d, 0xc4, 1, 0], false), // 1-byte uuid
            (vec![0x91, 0x81, 0x01, 0x81, 0x01, 0x01], false), // a map as a value
            (vec![0x91, 0x81, 0x01, 0xd4, 0x01, 0x00], false), // ext
            (vec![0x92, 0x80], false),                     // truncated
            (vec![0x91, 0x80, 0xc0], false),               // trailing byte
        ];
        for (raw, fast_ok) in &cases {
            assert_eq!(fast_agrees_with_serde(raw), *fast_ok, "{raw:02x?}");
        }
        let block_of = |raw: &[u8]| {
            let mut b = vec![b'D', b'S', 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];
            b.extend_from_slice(&(raw.len() as u32).to_le_bytes());
            b.extend_from_slice(&(raw.len() as u32).to_le_bytes());
            b.extend_from_slice(raw);
            reseal(&mut b);
            b
        };
        // what the fast path declines still decodes, through serde
        assert_eq!(
            decode_snapshot_block(&block_of(&cases[6].0)).unwrap(),
            vec![Row(vec![(1, Value::Bytes(vec![0xff]))])]
        );
        assert!(matches!(
            decode_snapshot_block(&block_of(&cases[7].0)),
            Err(BlockError::Decode(_))
        ));
        // nesting deeper than the fast path's limit: decided by serde
        let mut deep = Value::Null;
        for _ in 0..80 {
            deep = Value::Record(vec![deep]);
        }
        let raw = rmp_serde::to_vec(&[Row(vec![(1, deep)])]).unwrap();
        assert!(!fast_agrees_with_serde(&raw));
        assert_eq!(decode_snapshot_block(&block_of(&raw)).unwrap().len(), 1);

        // Mutated payloads: wherever the fast path accepts, serde agrees.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        const MARKERS: [u8; 24] = [
            0x00, 0x7f, 0x80, 0x90, 0xa0, 0xc0, 0xc2, 0xc3, 0xc4, 0xca, 0xcb, 0xcc, 0xcd, 0xcf,
            0xd0, 0xd3, 0xd9, 0xdc, 0xdd, 0xde, 0xe0, 0xff, 0x06, 0x0e,
        ];
        let (mut accepted, mut tried) = (0, 0);
        for round in 0..3_000 {
            let rows = varied_rows(1 + round % 4);
            let mut raw = rmp_serde::to_vec(&rows).unwrap();
            for _ in 0..1 + rnd(3) {
                let at = rnd(raw.len());
                match rnd(5) {
                    0 => raw[at] ^= 1 << rnd(8),
                    1 => raw[at] = MARKERS[rnd(MARKERS.len())],
                    2 => raw[at] = rnd(256) as u8,
                    3 => {
                        raw.remove(at);
                    }
                    _ => raw.insert(at, MARKERS[rnd(MARKERS.len())]),
                }
                if raw.is_empty() {
                    break;
                }
            }
            tried += 1;
            accepted += fast_agrees_with_serde(&raw) as usize;
        }
        // many mutations stay valid (a changed value, a wider int form): both paths saw them
        assert!(accepted > tried / 10, "{accepted} of {tried}");
    }
}
