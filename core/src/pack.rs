//! Event packs: many row events of one table and one transaction in one stored value.
//!
//! A transaction that changes many rows of one table (COPY, a bulk INSERT or UPDATE) would
//! otherwise store one `driftdb.events` row, with two index entries, per changed row; that is
//! most of a bulk load's history cost. The extension stores such a table's row events as
//! packs instead (`driftdb.packs`): each pack holds a run of the events sorted by key, with
//! the lowest and highest key beside it, so a lookup by key reads one pack and finds its
//! entries by binary search here.
//!
//! Each entry keeps its event exactly as `driftdb.events` would: the canonical key bytes, the
//! event's position in the transaction (`ord`), its op code (`b'i'`, `b'u'`, `b'd'`), and the
//! DriftDB frame itself (with its own CRC). Entries are sorted by (key, ord); the writer numbers
//! a packed table's events in key order, so ords ascend too.
//!
//! Layout (version 1), integers little-endian:
//!
//! ```text
//! offset 0   2 bytes  magic "DP"
//! offset 2   1 byte   version (PACK_FORMAT_VERSION)
//! offset 3   1 byte   reserved, 0
//! offset 4   4 bytes  entry count n
//! offset 8   4 bytes  CRC-32 (IEEE, crc32fast) over every byte from offset 12 to the end
//! offset 12  4n bytes the entries' offsets, relative to the end of this table, ascending
//! then, per entry:    ord (i32), op (u8), key length (u16), key, frame length (u32), frame
//! ```
use thiserror::Error;

pub const PACK_MAGIC: [u8; 2] = *b"DP";
pub const PACK_FORMAT_VERSION: u8 = 1;
const HEADER: usize = 12;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PackError {
    #[error("not an event pack (magic {0:02x?})")]
    Magic([u8; 2]),
    #[error("event pack format version {0} is not supported (this build reads version {PACK_FORMAT_VERSION})")]
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
}

/// One event in a pack, borrowed from the pack's bytes (or, when building, the caller's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackEntry<'a> {
    pub ord: i32,
    pub op: u8,
    pub key: &'a [u8],
    pub frame: &'a [u8],
}

/// Builds packs from entries pushed in (key, ord) order, cutting a pack once its entries reach
/// `target` bytes. Each finished pack comes back as (bytes, first entry's ord, entry count,
/// lowest key, highest key).
pub struct PackBuilder {
    target: usize,
    offsets: Vec<u32>,
    body: Vec<u8>,
    first_ord: i32,
    key_lo: Vec<u8>,
    key_hi: Vec<u8>,
    versions: i32,
    last: Option<(Vec<u8>, i32)>,
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
        PackBuilder { target: target.max(1), offsets: Vec::new(), body: Vec::new(), first_ord: 0, key_lo: Vec::new(), key_hi: Vec::new(), versions: 0, last: None }
    }

    /// Add an entry (in (key, ord) order: out-of-order entries are an error, since lookups
    /// binary-search the keys); returns a pack when this entry completed one.
    pub fn push(&mut self, e: PackEntry<'_>) -> Result<Option<BuiltPack>, PackError> {
        if e.key.len() > u16::MAX as usize {
            return Err(PackError::KeyTooLong(e.key.len()));
        }
        if let Some((k, o)) = &self.last {
            if (k.as_slice(), *o) >= (e.key, e.ord) {
                return Err(PackError::Order(self.offsets.len()));
            }
        }
        if self.offsets.is_empty() {
            self.first_ord = e.ord;
            self.key_lo.clear();
            self.key_lo.extend_from_slice(e.key);
        }
        self.offsets.push(self.body.len() as u32);
        if matches!(e.op, b'i' | b'u') {
            self.versions += 1;
        }
        self.body.extend_from_slice(&e.ord.to_le_bytes());
        self.body.push(e.op);
        self.body.extend_from_slice(&(e.key.len() as u16).to_le_bytes());
        self.body.extend_from_slice(e.key);
        self.body.extend_from_slice(&(e.frame.len() as u32).to_le_bytes());
        self.body.extend_from_slice(e.frame);
        self.key_hi.clear();
        self.key_hi.extend_from_slice(e.key);
        match &mut self.last {
            Some((k, o)) => {
                k.clear();
                k.extend_from_slice(e.key);
                *o = e.ord;
            }
            None => self.last = Some((e.key.to_vec(), e.ord)),
        }
        Ok(if self.body.len() >= self.target { self.take() } else { None })
    }

    /// The last, partial pack (if any entries are left); the builder then starts a new
    /// sequence (of another table or transaction), in which keys start over.
    pub fn finish(&mut self) -> Option<BuiltPack> {
        self.last = None;
        self.take()
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
        for o in &self.offsets {
            data.extend_from_slice(&o.to_le_bytes());
        }
        data.extend_from_slice(&self.body);
        let crc = crc32fast::hash(&data[HEADER..]);
        data[8..12].copy_from_slice(&crc.to_le_bytes());
        self.offsets.clear();
        self.body.clear();
        let versions = std::mem::take(&mut self.versions);
        Some(BuiltPack { data, first_ord: self.first_ord, count: n as i32, versions, key_lo: self.key_lo.clone(), key_hi: self.key_hi.clone() })
    }
}

/// A checked pack, read in place.
#[derive(Clone, Copy, Debug)]
pub struct Pack<'a> {
    offsets: &'a [u8],
    body: &'a [u8],
    n: usize,
}

impl<'a> Pack<'a> {
    /// Check the header and CRC (the frames' own CRCs are checked when they are decoded).
    pub fn parse(bytes: &'a [u8]) -> Result<Pack<'a>, PackError> {
        if bytes.len() < HEADER {
            return Err(PackError::Truncated("header"));
        }
        if bytes[0..2] != PACK_MAGIC {
            return Err(PackError::Magic([bytes[0], bytes[1]]));
        }
        if bytes[2] != PACK_FORMAT_VERSION {
            return Err(PackError::Version(bytes[2]));
        }
        let n = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize;
        let stored = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
        let computed = crc32fast::hash(&bytes[HEADER..]);
        if stored != computed {
            return Err(PackError::Crc { stored, computed });
        }
        let table_end = n.checked_mul(4).and_then(|t| t.checked_add(HEADER)).filter(|&e| e <= bytes.len()).ok_or(PackError::Truncated("offset table"))?;
        let p = Pack { offsets: &bytes[HEADER..table_end], body: &bytes[table_end..], n };
        // every entry must parse, and keys must be sorted: lookups rely on both
        let mut prev: Option<PackEntry> = None;
        for i in 0..n {
            let e = p.entry(i)?;
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

    /// Entry `i` (0-based, in (key, ord) order).
    pub fn entry(&self, i: usize) -> Result<PackEntry<'a>, PackError> {
        let bad = || PackError::Entry(i);
        let at = self.offsets.get(4 * i..4 * i + 4).ok_or_else(bad)?;
        let mut p = u32::from_le_bytes(at.try_into().unwrap()) as usize;
        let b = self.body;
        let take = |p: &mut usize, len: usize| -> Result<&'a [u8], PackError> {
            let s = b.get(*p..p.checked_add(len).ok_or_else(bad)?).ok_or_else(bad)?;
            *p += len;
            Ok(s)
        };
        let ord = i32::from_le_bytes(take(&mut p, 4)?.try_into().unwrap());
        let op = take(&mut p, 1)?[0];
        let klen = u16::from_le_bytes(take(&mut p, 2)?.try_into().unwrap()) as usize;
        let key = take(&mut p, klen)?;
        let flen = u32::from_le_bytes(take(&mut p, 4)?.try_into().unwrap()) as usize;
        let frame = take(&mut p, flen)?;
        Ok(PackEntry { ord, op, key, frame })
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

    fn entries(n: usize) -> Vec<(Vec<u8>, i32, u8, Vec<u8>)> {
        (0..n).map(|i| (format!("k{i:05}").into_bytes(), 2 * i as i32, b'i', vec![i as u8; 10 + i % 7])).collect()
    }

    fn build(es: &[(Vec<u8>, i32, u8, Vec<u8>)], target: usize) -> Vec<BuiltPack> {
        let mut b = PackBuilder::new(target);
        let mut out = Vec::new();
        for (k, o, op, f) in es {
            out.extend(b.push(PackEntry { ord: *o, op: *op, key: k, frame: f }).unwrap());
        }
        out.extend(b.finish());
        out
    }

    #[test]
    fn round_trip_and_cuts_by_size() {
        let es = entries(1000);
        let packs = build(&es, 2000);
        assert!(packs.len() > 5, "a 2000-byte target cuts 1000 entries into several packs");
        let mut all = Vec::new();
        for p in &packs {
            let v = Pack::parse(&p.data).unwrap();
            assert_eq!(v.len(), p.count as usize);
            let got: Vec<_> = v.entries().collect();
            assert_eq!(got[0].key, p.key_lo.as_slice());
            assert_eq!(got.last().unwrap().key, p.key_hi.as_slice());
            assert_eq!(got[0].ord, p.first_ord);
            all.extend(got.into_iter().map(|e| (e.key.to_vec(), e.ord, e.op, e.frame.to_vec())));
        }
        assert_eq!(all, es);
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

    #[test]
    fn refuses_unsorted_input() {
        let mut b = PackBuilder::new(usize::MAX);
        b.push(PackEntry { ord: 2, op: b'i', key: b"b", frame: b"f" }).unwrap();
        assert_eq!(b.push(PackEntry { ord: 4, op: b'i', key: b"a", frame: b"f" }), Err(PackError::Order(1)));
        assert_eq!(b.push(PackEntry { ord: 2, op: b'i', key: b"b", frame: b"f" }), Err(PackError::Order(1)));
    }

    #[test]
    fn detects_corruption() {
        let p = &build(&entries(50), usize::MAX)[0];
        let mut bad = p.data.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(Pack::parse(&bad), Err(PackError::Crc { .. })));
        let mut v2 = p.data.clone();
        v2[2] = 9;
        assert_eq!(Pack::parse(&v2).err(), Some(PackError::Version(9)));
        assert!(matches!(Pack::parse(&p.data[..p.data.len() - 3]), Err(PackError::Crc { .. })));
        assert_eq!(Pack::parse(b"DS\x01").err(), Some(PackError::Truncated("header")));
        assert_eq!(Pack::parse(b"XX\x01\0\0\0\0\0\0\0\0\0").err(), Some(PackError::Magic(*b"XX")));
        // a count that claims more entries than the bytes hold, with a valid CRC
        let mut lie = p.data.clone();
        lie[4..8].copy_from_slice(&100_000u32.to_le_bytes());
        assert_eq!(Pack::parse(&lie).err(), Some(PackError::Truncated("offset table")));
    }

    #[test]
    fn finish_starts_a_new_sequence() {
        let mut b = PackBuilder::new(usize::MAX);
        b.push(PackEntry { ord: 2, op: b'i', key: b"m", frame: b"f" }).unwrap();
        assert_eq!(b.finish().unwrap().count, 1);
        // another table's events: keys start over
        b.push(PackEntry { ord: 4, op: b'i', key: b"a", frame: b"f" }).unwrap();
        assert_eq!(b.finish().unwrap().key_lo, b"a".to_vec());
    }

    #[test]
    fn an_empty_builder_makes_no_pack() {
        assert!(PackBuilder::new(10).finish().is_none());
    }
}
