//! Event packs: many row events of one table and one transaction in one stored value.
//!
//! A transaction that changes many rows of one table (COPY, a bulk INSERT or UPDATE) would
//! otherwise store one `driftdb.events` row, with two index entries, per changed row; that is
//! most of a bulk load's history cost. The extension stores such a table's row events as
//! packs instead (`driftdb.packs`): each pack holds a run of the events sorted by key, with
//! the lowest and highest key beside it, so a lookup by key reads one pack and finds its
//! entries by binary search here.
//!
//! Each entry stands for exactly the `driftdb.events` row the event would otherwise be: the
//! canonical key bytes, the event's position in the transaction (`ord`), its op code (`b'i'`,
//! `b'u'`, `b'd'`) and the DriftDB frame, which `PackEntry::frame` gives back byte for byte.
//! Entries are sorted by (key, ord); the writer numbers a packed table's events in key order,
//! so ords ascend too.
//!
//! Layout (version 2, written since session 11), integers little-endian:
//!
//! ```text
//! offset 0   2 bytes  magic "DP"
//! offset 2   1 byte   version (2)
//! offset 3   1 byte   reserved, 0
//! offset 4   4 bytes  entry count n
//! offset 8   4 bytes  CRC-32 (IEEE, crc32fast) over every byte from offset 12 to the end
//! offset 12  8 bytes  seq, 8 bytes commit time (µs since 2000-01-01), 4 bytes table id
//! offset 32  4n bytes the entries' offsets, relative to the end of this table, ascending
//! then, per entry:    ord (i32), op (u8), flags (u8), key length (u16), key, tail
//! ```
//!
//! A version 2 entry stores the frame's *tail* (`frame::encode_event_tail`'s bytes: everything
//! after the commit fields); its frame is rebuilt from the pack's seq, commit time and table
//! id, the op and the tail (`frame::encode_frame_from_tail`), CRC included. A tail runs to the
//! next entry's offset (the last one to the end). Flag bit 0: the key is not stored, it is the
//! first `key length` bytes of the tail (the key's values, which open a row event's tail, are
//! already its canonical bytes whenever they fit `LONG_KEY_BYTES` and hold no NaN). This saves
//! the 12-byte frame header, the four commit fields and the second copy of the key of every
//! event: a quarter of the bytes of the benchmark table's packs. The pack's own CRC covers it
//! all.
//!
//! Version 1 (sessions 7–10) stored each entry as ord (i32), op (u8), key length (u16), key,
//! frame length (u32), frame, with no seq, time or table id in the header (offsets at 12).
//! Packs of both versions are read; only version 2 is written.
use std::borrow::Cow;

use thiserror::Error;

use crate::event::Op;
use crate::frame::{encode_frame_from_tail, encode_row_event_tail, split_frame};

pub const PACK_MAGIC: [u8; 2] = *b"DP";
/// The version this build writes; it reads `PACK_FORMAT_V1` too.
pub const PACK_FORMAT_VERSION: u8 = 2;
pub const PACK_FORMAT_V1: u8 = 1;
const HEADER_V1: usize = 12;
const HEADER: usize = 32;
/// Entry flag: the key is the first `key length` bytes of the tail.
const KEY_IN_TAIL: u8 = 1;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PackError {
    #[error("not an event pack (magic {0:02x?})")]
    Magic([u8; 2]),
    #[error("event pack format version {0} is not supported (this build reads versions {PACK_FORMAT_V1} and {PACK_FORMAT_VERSION})")]
    Version(u8),
    #[error("event pack truncated: {0}")]
    Truncated(&'static str),
    #[error("event pack CRC mismatch: stored {stored:08x}, computed {computed:08x}")]
    Crc { stored: u32, computed: u32 },
    #[error("event pack entry {0} is malformed")]
    Entry(usize),
    #[error("event pack entries are not sorted by (key, ord) at entry {0}")]
    Order(usize),
    #[error("a key of {0} bytes does not fit an event pack entry")]
    KeyTooLong(usize),
    #[error("event pack entry with op {0:?} (a pack holds only inserts, updates and deletes)")]
    Op(char),
    #[error("event pack entry {0}: its frame is not one of the pack's transaction and table")]
    Frame(usize),
}

/// The frame op of an entry's op code (packs hold row events only).
fn frame_op(op: u8) -> Result<Op, PackError> {
    match op {
        b'i' => Ok(Op::Insert),
        b'u' => Ok(Op::Update),
        b'd' => Ok(Op::Delete),
        _ => Err(PackError::Op(op as char)),
    }
}

/// What an entry stores of its event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stored<'a> {
    /// Version 1: the whole frame.
    Frame(&'a [u8]),
    /// Version 2: the tail, and the pack's commit fields.
    Tail { tail: &'a [u8], seq: u64, committed_at: i64, table_id: u32 },
}

/// One event in a pack, borrowed from the pack's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackEntry<'a> {
    pub ord: i32,
    pub op: u8,
    pub key: &'a [u8],
    stored: Stored<'a>,
}

impl<'a> PackEntry<'a> {
    /// The event's DriftDB frame, as a `driftdb.events` row would hold it.
    pub fn frame(&self) -> Cow<'a, [u8]> {
        match self.stored {
            Stored::Frame(f) => Cow::Borrowed(f),
            Stored::Tail { tail, seq, committed_at, table_id } => {
                let mut buf = Vec::with_capacity(tail.len() + 40);
                // the op was checked by Pack::parse
                encode_frame_from_tail(seq, committed_at, table_id, frame_op(self.op).expect("checked by parse"), tail, &mut buf);
                Cow::Owned(buf)
            }
        }
    }
}

/// An entry to add to a pack: the event's ord, op code, key and frame tail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewEntry<'a> {
    pub ord: i32,
    pub op: u8,
    pub key: &'a [u8],
    pub tail: &'a [u8],
}

/// Builds packs of one (transaction, table) at a time (`start`) from entries pushed in
/// (key, ord) order, cutting a pack once it reaches `target` bytes. Each finished pack
/// comes back with what its `driftdb.packs` row says about it.
pub struct PackBuilder {
    target: usize,
    offsets: Vec<u32>,
    body: Vec<u8>,
    seq: u64,
    committed_at: i64,
    table_id: u32,
    first_ord: i32,
    key_lo: Vec<u8>,
    versions: i32,
    /// Where the last entry's key is in `body` (while the pack being built has entries).
    last_key_at: Option<(usize, usize)>,
    /// The last key of the previous pack of this sequence (None at its start).
    carry: Option<Vec<u8>>,
    last_ord: i32,
}

/// A finished pack and what its `driftdb.packs` row says about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltPack {
    pub data: Vec<u8>,
    pub first_ord: i32,
    pub count: i32,
    /// Entries that wrote a row version (op `i` or `u`).
    pub versions: i32,
    pub key_lo: Vec<u8>,
    pub key_hi: Vec<u8>,
}

impl PackBuilder {
    pub fn new(target: usize) -> PackBuilder {
        PackBuilder {
            target: target.max(1),
            offsets: Vec::new(),
            body: Vec::new(),
            seq: 0,
            committed_at: 0,
            table_id: 0,
            first_ord: 0,
            key_lo: Vec::new(),
            versions: 0,
            last_key_at: None,
            carry: None,
            last_ord: 0,
        }
    }

    /// The key of the entry pushed last in this sequence, if any.
    fn last_key(&self) -> Option<&[u8]> {
        match self.last_key_at {
            Some((a, b)) => Some(&self.body[a..b]),
            None => self.carry.as_deref(),
        }
    }

    /// Start an entry: its offset, header and (unless it opens the tail) key, and note where
    /// the key's bytes are in `body`. The caller has checked the order and the key's length.
    fn open_entry(&mut self, ord: i32, op: u8, key: &[u8], in_tail: bool) {
        if self.offsets.is_empty() {
            self.first_ord = ord;
            self.key_lo.clear();
            self.key_lo.extend_from_slice(key);
        }
        self.offsets.push(self.body.len() as u32);
        if matches!(op, b'i' | b'u') {
            self.versions += 1;
        }
        let mut head = [0u8; 8];
        head[..4].copy_from_slice(&ord.to_le_bytes());
        head[4] = op;
        head[5] = if in_tail { KEY_IN_TAIL } else { 0 };
        head[6..].copy_from_slice(&(key.len() as u16).to_le_bytes());
        self.body.extend_from_slice(&head);
        let at = self.body.len();
        if !in_tail {
            self.body.extend_from_slice(key);
        }
        // stored or not, the key's bytes start here (a tail that opens with it follows)
        self.last_key_at = Some((at, at + key.len()));
        self.last_ord = ord;
    }

    /// Close an entry: returns the pack it completed, if it did.
    fn close_entry(&mut self) -> Option<BuiltPack> {
        if HEADER + 4 * self.offsets.len() + self.body.len() >= self.target {
            self.take()
        } else {
            None
        }
    }

    /// Start the packs of transaction `seq` (committed at `committed_at`) and table
    /// `table_id`, in which keys start over; returns the last, partial pack of the previous
    /// ones, if any entries are left.
    pub fn start(&mut self, seq: u64, committed_at: i64, table_id: u32) -> Option<BuiltPack> {
        let done = self.finish();
        (self.seq, self.committed_at, self.table_id) = (seq, committed_at, table_id);
        done
    }

    /// Add an entry (in (key, ord) order: out-of-order entries are an error, since lookups
    /// binary-search the keys); returns a pack when this entry completed one.
    pub fn push(&mut self, e: NewEntry<'_>) -> Result<Option<BuiltPack>, PackError> {
        if e.key.len() > u16::MAX as usize {
            return Err(PackError::KeyTooLong(e.key.len()));
        }
        frame_op(e.op)?;
        if let Some(k) = self.last_key() {
            if (k, self.last_ord) >= (e.key, e.ord) {
                return Err(PackError::Order(self.offsets.len()));
            }
        }
        self.open_entry(e.ord, e.op, e.key, e.tail.starts_with(e.key));
        self.body.extend_from_slice(e.tail);
        Ok(self.close_entry())
    }

    /// `push` of an insert whose tail is `encode_row_event_tail([Some(key), None, None,
    /// Some(row)])`, written straight into the pack: the same bytes, without building the
    /// tail first (a bulk load's commit streams its rows this way). `filed` is the key as the
    /// entry files it: `key` itself, or its digest when long. An insert's key is unique in its
    /// transaction, so keys must strictly ascend here: a key not above the last one is
    /// refused (`Order`) and nothing is written.
    pub fn push_insert(&mut self, ord: i32, filed: &[u8], key: &[u8], row: &[u8]) -> Result<Option<BuiltPack>, PackError> {
        if filed.len() > u16::MAX as usize {
            return Err(PackError::KeyTooLong(filed.len()));
        }
        if let Some(k) = self.last_key() {
            if k >= filed || self.last_ord >= ord {
                return Err(PackError::Order(self.offsets.len()));
            }
        }
        // filed is usually key itself: no need to compare it with itself
        let in_tail = std::ptr::eq(filed, key) || key.starts_with(filed);
        self.open_entry(ord, b'i', filed, in_tail);
        encode_row_event_tail([Some(key), None, None, Some(row)], &mut self.body);
        Ok(self.close_entry())
    }

    /// Add the entry of an event given as a whole frame (rewriting a pack), which must be of
    /// the transaction and table `start` named.
    pub fn push_frame(&mut self, ord: i32, op: u8, key: &[u8], frame: &[u8]) -> Result<Option<BuiltPack>, PackError> {
        let index = self.offsets.len();
        let parts = split_frame(frame).map_err(|_| PackError::Frame(index))?;
        if (parts.seq, parts.committed_at, parts.table_id, Some(parts.op)) != (self.seq, self.committed_at, self.table_id, frame_op(op).ok()) {
            return Err(PackError::Frame(index));
        }
        self.push(NewEntry { ord, op, key, tail: parts.tail })
    }

    /// The last, partial pack (if any entries are left); the builder then starts a new
    /// sequence, in which keys start over.
    pub fn finish(&mut self) -> Option<BuiltPack> {
        let done = self.take();
        self.carry = None;
        done
    }

    fn take(&mut self) -> Option<BuiltPack> {
        if self.offsets.is_empty() {
            return None;
        }
        let n = self.offsets.len();
        let mut data = Vec::with_capacity(HEADER + 4 * n + self.body.len());
        data.extend_from_slice(&PACK_MAGIC);
        data.push(PACK_FORMAT_VERSION);
        data.push(0);
        data.extend_from_slice(&(n as u32).to_le_bytes());
        data.extend_from_slice(&[0; 4]);
        data.extend_from_slice(&self.seq.to_le_bytes());
        data.extend_from_slice(&self.committed_at.to_le_bytes());
        data.extend_from_slice(&self.table_id.to_le_bytes());
        for o in &self.offsets {
            data.extend_from_slice(&o.to_le_bytes());
        }
        data.extend_from_slice(&self.body);
        let crc = crc32fast::hash(&data[12..]);
        data[8..12].copy_from_slice(&crc.to_le_bytes());
        let key_hi = self.last_key().map(<[u8]>::to_vec).unwrap_or_default();
        // the next pack of this sequence goes on from this one's last key
        let carry = self.carry.get_or_insert_with(Vec::new);
        carry.clear();
        carry.extend_from_slice(&key_hi);
        self.last_key_at = None;
        self.offsets.clear();
        self.body.clear();
        let versions = std::mem::take(&mut self.versions);
        Some(BuiltPack { data, first_ord: self.first_ord, count: n as i32, versions, key_lo: self.key_lo.clone(), key_hi })
    }
}

/// A checked pack, read in place.
#[derive(Clone, Copy, Debug)]
pub struct Pack<'a> {
    version: u8,
    offsets: &'a [u8],
    body: &'a [u8],
    n: usize,
    /// Version 2: seq, commit time, table id (version 1: zeros).
    seq: u64,
    committed_at: i64,
    table_id: u32,
}

impl<'a> Pack<'a> {
    /// Check the header and CRC, and that every entry parses in (key, ord) order (a version 1
    /// pack's frames keep their own CRCs, checked when they are decoded).
    pub fn parse(bytes: &'a [u8]) -> Result<Pack<'a>, PackError> {
        if bytes.len() < HEADER_V1 {
            return Err(PackError::Truncated("header"));
        }
        if bytes[0..2] != PACK_MAGIC {
            return Err(PackError::Magic([bytes[0], bytes[1]]));
        }
        let version = bytes[2];
        let header = match version {
            PACK_FORMAT_V1 => HEADER_V1,
            PACK_FORMAT_VERSION => HEADER,
            v => return Err(PackError::Version(v)),
        };
        let n = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize;
        let stored = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
        let computed = crc32fast::hash(&bytes[12..]);
        if stored != computed {
            return Err(PackError::Crc { stored, computed });
        }
        if bytes.len() < header {
            return Err(PackError::Truncated("header"));
        }
        let le8 = |at: usize| -> [u8; 8] { bytes[at..at + 8].try_into().unwrap() };
        let (seq, committed_at, table_id) = if version == PACK_FORMAT_V1 {
            (0, 0, 0)
        } else {
            (u64::from_le_bytes(le8(12)), i64::from_le_bytes(le8(20)), u32::from_le_bytes(bytes[28..32].try_into().unwrap()))
        };
        let table_end = n.checked_mul(4).and_then(|t| t.checked_add(header)).filter(|&e| e <= bytes.len()).ok_or(PackError::Truncated("offset table"))?;
        let p = Pack { version, offsets: &bytes[header..table_end], body: &bytes[table_end..], n, seq, committed_at, table_id };
        // every entry must parse, and keys must be sorted: lookups rely on both
        let mut prev: Option<PackEntry> = None;
        for i in 0..n {
            let e = p.entry(i)?;
            if version != PACK_FORMAT_V1 {
                frame_op(e.op).map_err(|_| PackError::Entry(i))?;
            }
            if prev.is_some_and(|q| (q.key, q.ord) >= (e.key, e.ord)) {
                return Err(PackError::Order(i));
            }
            prev = Some(e);
        }
        Ok(p)
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The format version the pack was written in.
    pub fn version(&self) -> u8 {
        self.version
    }

    /// A version 2 pack's seq, commit time and table id (None: version 1, which does not
    /// record them; its frames do).
    pub fn commit_fields(&self) -> Option<(u64, i64, u32)> {
        (self.version != PACK_FORMAT_V1).then_some((self.seq, self.committed_at, self.table_id))
    }

    fn offset(&self, i: usize) -> Option<usize> {
        self.offsets.get(4 * i..4 * i + 4).map(|at| u32::from_le_bytes(at.try_into().unwrap()) as usize)
    }

    /// Entry `i` (0-based, in (key, ord) order).
    pub fn entry(&self, i: usize) -> Result<PackEntry<'a>, PackError> {
        let bad = || PackError::Entry(i);
        let mut p = self.offset(i).ok_or_else(bad)?;
        let b = self.body;
        let take = |p: &mut usize, len: usize| -> Result<&'a [u8], PackError> {
            let s = b.get(*p..p.checked_add(len).ok_or_else(bad)?).ok_or_else(bad)?;
            *p += len;
            Ok(s)
        };
        let ord = i32::from_le_bytes(take(&mut p, 4)?.try_into().unwrap());
        let op = take(&mut p, 1)?[0];
        if self.version == PACK_FORMAT_V1 {
            let klen = u16::from_le_bytes(take(&mut p, 2)?.try_into().unwrap()) as usize;
            let key = take(&mut p, klen)?;
            let flen = u32::from_le_bytes(take(&mut p, 4)?.try_into().unwrap()) as usize;
            let frame = take(&mut p, flen)?;
            return Ok(PackEntry { ord, op, key, stored: Stored::Frame(frame) });
        }
        let flags = take(&mut p, 1)?[0];
        let klen = u16::from_le_bytes(take(&mut p, 2)?.try_into().unwrap()) as usize;
        let key = if flags & KEY_IN_TAIL == 0 { Some(take(&mut p, klen)?) } else { None };
        if flags & !KEY_IN_TAIL != 0 {
            return Err(bad());
        }
        let end = if i + 1 < self.n { self.offset(i + 1).ok_or_else(bad)? } else { b.len() };
        let len = end.checked_sub(p).ok_or_else(bad)?;
        let tail = take(&mut p, len)?;
        let key = match key {
            Some(k) => k,
            None => tail.get(..klen).ok_or_else(bad)?,
        };
        Ok(PackEntry { ord, op, key, stored: Stored::Tail { tail, seq: self.seq, committed_at: self.committed_at, table_id: self.table_id } })
    }

    /// Every entry, in (key, ord) order.
    pub fn entries(&self) -> impl Iterator<Item = PackEntry<'a>> + '_ {
        // parse() checked every entry
        (0..self.n).map(|i| self.entry(i).expect("checked by parse"))
    }

    /// The entries whose key is `key` (in ord order), found by binary search.
    pub fn find(&self, key: &[u8]) -> impl Iterator<Item = PackEntry<'a>> + '_ {
        self.range(key, key)
    }

    /// The entries with `lo <= key <= hi`, in (key, ord) order, found by binary search.
    pub fn range(&self, lo: &[u8], hi: &[u8]) -> impl Iterator<Item = PackEntry<'a>> + '_ {
        let (mut a, mut b) = (0usize, self.n);
        while a < b {
            let mid = a + (b - a) / 2;
            if self.entry(mid).expect("checked by parse").key < lo {
                a = mid + 1;
            } else {
                b = mid;
            }
        }
        let hi = hi.to_vec();
        (a..self.n).map(|i| self.entry(i).expect("checked by parse")).take_while(move |e| e.key <= hi.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEQ: u64 = 77;
    const AT: i64 = 812_345_678_901;
    const TABLE: u32 = 5;

    /// (key, ord, op, tail): every third tail opens with its key (as a row event's does),
    /// the others do not (a key filed under its digest, or a NaN made canonical).
    fn entries(n: usize) -> Vec<(Vec<u8>, i32, u8, Vec<u8>)> {
        (0..n)
            .map(|i| {
                let key = format!("k{i:05}").into_bytes();
                let mut tail = if i % 3 == 0 { key.clone() } else { Vec::new() };
                tail.extend(vec![i as u8; 10 + i % 7]);
                (key, 2 * i as i32, b'i', tail)
            })
            .collect()
    }

    fn build(es: &[(Vec<u8>, i32, u8, Vec<u8>)], target: usize) -> Vec<BuiltPack> {
        let mut b = PackBuilder::new(target);
        assert!(b.start(SEQ, AT, TABLE).is_none());
        let mut out = Vec::new();
        for (k, o, op, t) in es {
            out.extend(b.push(NewEntry { ord: *o, op: *op, key: k, tail: t }).unwrap());
        }
        out.extend(b.finish());
        out
    }

    fn frame_of(op: u8, tail: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        encode_frame_from_tail(SEQ, AT, TABLE, frame_op(op).unwrap(), tail, &mut f);
        f
    }

    /// The version 1 layout of these entries (frames whole), as sessions 7–10 wrote it.
    fn v1_pack(es: &[(Vec<u8>, i32, u8, Vec<u8>)]) -> Vec<u8> {
        let mut body = Vec::new();
        let mut offsets = Vec::new();
        for (k, o, op, frame) in es {
            offsets.extend((body.len() as u32).to_le_bytes());
            body.extend(o.to_le_bytes());
            body.push(*op);
            body.extend((k.len() as u16).to_le_bytes());
            body.extend(k);
            body.extend((frame.len() as u32).to_le_bytes());
            body.extend(frame);
        }
        let mut data = b"DP\x01\x00".to_vec();
        data.extend((es.len() as u32).to_le_bytes());
        data.extend([0; 4]);
        data.extend(offsets);
        data.extend(body);
        let crc = crc32fast::hash(&data[12..]);
        data[8..12].copy_from_slice(&crc.to_le_bytes());
        data
    }

    #[test]
    fn round_trip_and_cuts_by_size() {
        let es = entries(1000);
        let packs = build(&es, 2000);
        assert!(packs.len() > 5, "a 2000-byte target cuts 1000 entries into several packs");
        let mut all = Vec::new();
        for p in &packs {
            let v = Pack::parse(&p.data).unwrap();
            assert_eq!((v.version(), v.commit_fields()), (2, Some((SEQ, AT, TABLE))));
            assert_eq!(v.len(), p.count as usize);
            let got: Vec<_> = v.entries().collect();
            assert_eq!(got[0].key, p.key_lo.as_slice());
            assert_eq!(got.last().unwrap().key, p.key_hi.as_slice());
            assert_eq!(got[0].ord, p.first_ord);
            all.extend(got.into_iter().map(|e| (e.key.to_vec(), e.ord, e.op, e.frame().into_owned())));
        }
        let want: Vec<_> = es.iter().map(|(k, o, op, t)| (k.clone(), *o, *op, frame_of(*op, t))).collect();
        assert_eq!(all, want, "every entry gives back its key, ord, op and the whole frame");
        // a key stored once when the tail opens with it: 4 bytes less than the key twice
        let shared = build(&[(b"k".to_vec(), 0, b'i', b"k-tail".to_vec())], usize::MAX);
        let apart = build(&[(b"k".to_vec(), 0, b'i', b"x-tail".to_vec())], usize::MAX);
        assert_eq!(apart[0].data.len() - shared[0].data.len(), 1);
    }

    #[test]
    fn rebuilt_frames_check_and_split_back_into_their_tails() {
        let mut event = crate::event::Event::new(SEQ, AT, TABLE, Op::Delete);
        event.key = Some(vec![crate::value::Value::Int(7)]);
        let frame = crate::frame::encode_frame(&event);
        let parts = crate::frame::split_frame(&frame).unwrap();
        let key = crate::frame::encode_key(&[crate::value::Value::Int(7)]);
        let p = &build(&[(key.clone(), 4, b'd', parts.tail.to_vec())], usize::MAX)[0];
        let v = Pack::parse(&p.data).unwrap();
        let e = v.entry(0).unwrap();
        assert_eq!(e.key, key.as_slice());
        assert_eq!(e.frame().as_ref(), frame.as_slice(), "the frame encode_frame made, byte for byte");
        assert!(crate::frame::check_frame(&e.frame()).is_ok());
    }

    #[test]
    fn reads_version_1_packs() {
        let es: Vec<_> = entries(40).into_iter().map(|(k, o, op, t)| (k, o, op, frame_of(op, &t))).collect();
        let data = v1_pack(&es);
        let v = Pack::parse(&data).unwrap();
        assert_eq!((v.version(), v.commit_fields(), v.len()), (1, None, 40));
        let got: Vec<_> = v.entries().map(|e| (e.key.to_vec(), e.ord, e.op, e.frame().into_owned())).collect();
        assert_eq!(got, es);
        assert!(matches!(v.entry(3).unwrap().frame(), Cow::Borrowed(_)), "a version 1 frame is read in place");
        assert_eq!(v.find(b"k00007").map(|e| e.ord).collect::<Vec<_>>(), vec![14]);
        // rewritten (purge) into the current version, entry by entry, from the frames
        let mut b = PackBuilder::new(usize::MAX);
        b.start(SEQ, AT, TABLE);
        for e in v.entries().filter(|e| e.ord != 14) {
            assert!(b.push_frame(e.ord, e.op, e.key, &e.frame()).unwrap().is_none());
        }
        let again = b.finish().unwrap();
        let w = Pack::parse(&again.data).unwrap();
        assert_eq!(w.version(), PACK_FORMAT_VERSION);
        let kept: Vec<_> = w.entries().map(|e| (e.key.to_vec(), e.ord, e.op, e.frame().into_owned())).collect();
        assert_eq!(kept, es.iter().filter(|e| e.1 != 14).cloned().collect::<Vec<_>>());
    }

    #[test]
    fn push_frame_refuses_another_transactions_frame() {
        let mut b = PackBuilder::new(usize::MAX);
        b.start(SEQ + 1, AT, TABLE);
        let f = frame_of(b'i', b"\x91\x01\xc0\xc0\xc0\xc0");
        assert_eq!(b.push_frame(0, b'i', b"\x91\x01", &f), Err(PackError::Frame(0)));
        b.start(SEQ, AT, TABLE);
        assert_eq!(b.push_frame(0, b'u', b"\x91\x01", &f), Err(PackError::Frame(0)), "an op other than the frame's");
        let mut bad = f.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(b.push_frame(0, b'i', b"\x91\x01", &bad), Err(PackError::Frame(0)), "a frame whose CRC fails");
        assert!(b.push_frame(0, b'i', b"\x91\x01", &f).unwrap().is_none());
    }

    #[test]
    fn find_and_range_by_binary_search() {
        let mut es = entries(300);
        // a key with two entries (a row deleted and another inserted under its key)
        es.insert(101, (es[100].0.clone(), es[100].1 + 1, b'd', vec![9; 3]));
        let p = &build(&es, usize::MAX)[0];
        let v = Pack::parse(&p.data).unwrap();
        let hit: Vec<_> = v.find(b"k00100").map(|e| (e.ord, e.op)).collect();
        assert_eq!(hit, vec![(200, b'i'), (201, b'd')]);
        assert_eq!(p.versions, 300, "the delete wrote no version");
        assert_eq!(v.find(b"k00000").count(), 1);
        assert_eq!(v.find(b"k00299").count(), 1);
        assert_eq!(v.find(b"k0010").count(), 0, "a prefix of a key is another key");
        assert_eq!(v.find(b"zzz").count(), 0);
        assert_eq!(v.find(b"a").count(), 0);
        let r: Vec<_> = v.range(b"k00010", b"k00012").map(|e| e.key.to_vec()).collect();
        assert_eq!(r, vec![b"k00010".to_vec(), b"k00011".to_vec(), b"k00012".to_vec()]);
        assert_eq!(v.range(b"k00012x", b"k00013").count(), 1);
        assert_eq!(v.range(b"x", b"y").count(), 0);
    }

    /// push_insert writes exactly the packs push writes for the tails encode_row_event_tail
    /// makes, across pack boundaries and sequences, with keys in the tail and filed apart
    /// (a long key's digest); it refuses a key that does not strictly ascend, writing nothing.
    #[test]
    fn push_insert_is_push_of_an_insert_tail() {
        let rows: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> = (0..700u32)
            .map(|i| {
                let key = format!("\u{91}k{i:05}").into_bytes();
                // every 7th key is filed under something else, as a long key is under its digest
                let filed = if i % 7 == 3 { format!("\u{91}k{i:05}#").into_bytes() } else { key.clone() };
                let row = vec![0x81, 0x01, (i % 120) as u8].into_iter().chain(std::iter::repeat(b'r').take((i % 40) as usize)).collect();
                (filed, key, row)
            })
            .collect();
        for target in [300usize, 2000, usize::MAX] {
            let (mut a, mut b) = (PackBuilder::new(target), PackBuilder::new(target));
            let (mut pa, mut pb) = (Vec::new(), Vec::new());
            for (seq, part) in [(SEQ, &rows[..400]), (SEQ + 1, &rows[400..])] {
                pa.extend(a.start(seq, AT, TABLE));
                pb.extend(b.start(seq, AT, TABLE));
                for (i, (filed, key, row)) in part.iter().enumerate() {
                    let mut tail = Vec::new();
                    crate::frame::encode_row_event_tail([Some(key), None, None, Some(row)], &mut tail);
                    pa.extend(a.push(NewEntry { ord: 2 * i as i32, op: b'i', key: filed, tail: &tail }).unwrap());
                    pb.extend(b.push_insert(2 * i as i32, filed, key, row).unwrap());
                }
            }
            pa.extend(a.finish());
            pb.extend(b.finish());
            assert!(target == usize::MAX || pa.len() > 2, "several packs at target {target}");
            assert_eq!(pa, pb, "target {target}");
            for p in &pb {
                Pack::parse(&p.data).unwrap();
            }
        }
        let mut b = PackBuilder::new(300);
        b.start(SEQ, AT, TABLE);
        let mut n = 0;
        for i in 0..40 {
            let k = format!("k{i:03}").into_bytes();
            n += b.push_insert(i, &k, &k, b"\x80").unwrap().map_or(0, |p| p.count);
        }
        assert!(n > 0, "a pack was cut: the next checks run against the carried last key");
        assert_eq!(b.push_insert(40, b"k039", b"k039", b"\x80"), Err(PackError::Order(b.offsets.len())), "an equal key");
        assert_eq!(b.push_insert(40, b"k038", b"k038", b"\x80"), Err(PackError::Order(b.offsets.len())), "a lower key");
        assert_eq!(b.push_insert(39, b"k040", b"k040", b"\x80"), Err(PackError::Order(b.offsets.len())), "a lower ord");
        let total = n + b.finish().map_or(0, |p| p.count);
        assert_eq!(total, 40, "refused entries wrote nothing");
    }

    #[test]
    fn refuses_unsorted_input_and_other_ops() {
        let mut b = PackBuilder::new(usize::MAX);
        b.push(NewEntry { ord: 2, op: b'i', key: b"b", tail: b"t" }).unwrap();
        assert_eq!(b.push(NewEntry { ord: 4, op: b'i', key: b"a", tail: b"t" }), Err(PackError::Order(1)));
        assert_eq!(b.push(NewEntry { ord: 2, op: b'i', key: b"b", tail: b"t" }), Err(PackError::Order(1)));
        assert_eq!(b.push(NewEntry { ord: 6, op: b'm', key: b"c", tail: b"t" }), Err(PackError::Op('m')));
        assert_eq!(b.push(NewEntry { ord: 6, op: b't', key: b"c", tail: b"t" }), Err(PackError::Op('t')));
    }

    #[test]
    fn detects_corruption() {
        let p = &build(&entries(50), usize::MAX)[0];
        let mut bad = p.data.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(Pack::parse(&bad), Err(PackError::Crc { .. })));
        let mut v9 = p.data.clone();
        v9[2] = 9;
        assert_eq!(Pack::parse(&v9).err(), Some(PackError::Version(9)));
        assert!(matches!(Pack::parse(&p.data[..p.data.len() - 3]), Err(PackError::Crc { .. })));
        assert_eq!(Pack::parse(b"DS\x01").err(), Some(PackError::Truncated("header")));
        assert_eq!(Pack::parse(b"XX\x01\0\0\0\0\0\0\0\0\0").err(), Some(PackError::Magic(*b"XX")));
        let reseal = |mut d: Vec<u8>| {
            let crc = crc32fast::hash(&d[12..]);
            d[8..12].copy_from_slice(&crc.to_le_bytes());
            d
        };
        // damage under a valid CRC: a count that claims more entries than the bytes hold, an
        // op no pack holds, a key said to open a tail shorter than it, an unknown flag
        let mut lie = p.data.clone();
        lie[4..8].copy_from_slice(&100_000u32.to_le_bytes());
        assert_eq!(Pack::parse(&reseal(lie)).err(), Some(PackError::Truncated("offset table")));
        let first = HEADER + 4 * 50; // entry 0: ord, op, flags, key length, ...
        let mut op = p.data.clone();
        op[first + 4] = b'm';
        assert_eq!(Pack::parse(&reseal(op)).err(), Some(PackError::Entry(0)));
        let mut klen = p.data.clone();
        assert_eq!(klen[first + 5], KEY_IN_TAIL, "entry 0's tail opens with its key");
        klen[first + 6..first + 8].copy_from_slice(&5000u16.to_le_bytes());
        assert_eq!(Pack::parse(&reseal(klen)).err(), Some(PackError::Entry(0)));
        let mut flags = p.data.clone();
        flags[first + 5] |= 4;
        assert_eq!(Pack::parse(&reseal(flags)).err(), Some(PackError::Entry(0)));
        assert_eq!(Pack::parse(&reseal(p.data[..40].to_vec())).err(), Some(PackError::Truncated("offset table")));
    }

    #[test]
    fn start_begins_a_new_sequence() {
        let mut b = PackBuilder::new(usize::MAX);
        b.start(SEQ, AT, TABLE);
        b.push(NewEntry { ord: 2, op: b'i', key: b"m", tail: b"t" }).unwrap();
        let done = b.start(SEQ, AT, TABLE + 1).unwrap();
        assert_eq!((done.count, Pack::parse(&done.data).unwrap().commit_fields()), (1, Some((SEQ, AT, TABLE))));
        // another table's events: keys start over
        b.push(NewEntry { ord: 4, op: b'i', key: b"a", tail: b"t" }).unwrap();
        let p = b.finish().unwrap();
        assert_eq!((p.key_lo, Pack::parse(&p.data).unwrap().commit_fields()), (b"a".to_vec(), Some((SEQ, AT, TABLE + 1))));
    }

    #[test]
    fn an_empty_builder_makes_no_pack() {
        assert!(PackBuilder::new(10).finish().is_none());
        assert!(PackBuilder::new(10).start(1, 2, 3).is_none());
    }
}
