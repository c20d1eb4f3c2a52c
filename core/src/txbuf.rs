//! txbuf.rs — the per-transaction change buffer: which rows of which tables a transaction
//! changed, reduced to net effects, with exact subtransaction rollback.
//!
//! The extension feeds it from its write callbacks (insert/update/delete/truncate of a row
//! version, identified by an opaque `u64` handle — a packed heap TID — within a table keyed by
//! relation OID) and drains it at pre-commit. Per row *lineage* it keeps the handle of the
//! version that existed before the transaction (`orig`) and of the current version (`cur`,
//! None once deleted); an update or delete of a version this transaction created extends the
//! existing lineage, so draining yields one net change per row.
//!
//! Storage, per table (all lineages of one table live together):
//! * `ends: Vec<[u64; 2]>` — orig / cur payloads (a handle, or an index into `images`);
//! * `kinds: Vec<u8>` — 2 bits per endpoint: none / handle / image;
//! * `images: Vec<Row>` — row images that replaced handles (`resolve_rel`), append-only;
//! * `index` — an open-addressing hash table (linear probing, backward-shift deletion, load
//!   <= 3/4) of `u32` lineage numbers, keyed by the lineage's *current handle*, which it reads
//!   from `ends`; only lineages whose cur is a handle are indexed. O(1) lookup by
//!   (table, cur handle) at 4 bytes per bucket instead of std HashMap's ~17-25 per entry.
//!   Inserts are indexed lazily: an insert whose handle is above every cur handle the table
//!   has had (`max_cur`) cannot be in use, so it is appended unindexed, and the unindexed
//!   tail (`indexed..`) is indexed only when something needs the index (an update, a delete,
//!   an insert at a lower handle, an undo). A bulk load — handles ascending, nothing looked
//!   up — never builds it: its random writes were the capture side's whole cost.
//!
//! Measured memory (see `tests::memory_per_lineage`, `heap_bytes()`): 1,000,000 inserted
//! handles in one table, in ascending order as a bulk load makes them, take 17.8 bytes per
//! lineage (16 ends + 1 kind, Vec capacity rounded up to 2^20; no index). Once indexed, the
//! index adds 8.4 (2^21 buckets x 4 bytes). Outside subtransactions nothing else is
//! kept; inside one, every change also logs a 24-byte undo record until the outermost
//! subtransaction ends.
//!
//! Subtransactions: `begin_sub` pushes a mark on an undo log; every mutation made while a
//! subtransaction is open logs how to revert it (truncate and resolve move the old table
//! contents into the log, so they are O(1) resp. O(lineages) and revert exactly).
//! `abort_sub` replays the log back to the mark in reverse; `commit_sub` just pops the mark,
//! folding the records into the parent (dropping them once no subtransaction is open).

use std::collections::HashMap;

use thiserror::Error;

use crate::row::Row;

/// One end of a lineage: a row version still referenced by its handle, or an image that was
/// materialized before the handle became invalid. Images are rare (DDL resolves them) and
/// boxed, so that a lineage takes 32 bytes, not 48: a 1M-row load drains 32 MB of them.
#[derive(Clone, Debug, PartialEq)]
pub enum Endpoint {
    Handle(u64),
    Image(Box<Row>),
}

const _: () = assert!(std::mem::size_of::<(Option<Endpoint>, Option<Endpoint>)>() == 32);

/// Net changes of one table, as returned by `TxBuf::drain`.
#[derive(Clone, Debug, PartialEq)]
pub struct TableChanges {
    pub rel: u32,
    /// The table was truncated in this transaction: history gets one TRUNCATE event first;
    /// `lineages` then holds only rows written after the (last) truncate.
    pub truncated: bool,
    /// `(orig, cur)` per changed row, in the order the rows were first touched:
    /// `(None, Some)` = insert, `(Some, Some)` = update, `(Some, None)` = delete.
    pub lineages: Vec<(Option<Endpoint>, Option<Endpoint>)>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TxBufError {
    /// A new row version was reported with a handle that is already the current version of
    /// a row in this buffer; recording it would corrupt the net effects.
    #[error("relation {rel}: handle {handle:#x} is already the current version of another row")]
    HandleInUse { rel: u32, handle: u64 },
    #[error("no open subtransaction")]
    NoSubtransaction,
}

const K_NONE: u8 = 0;
const K_HANDLE: u8 = 1;
const K_IMAGE: u8 = 2;
const ORIG: usize = 0;
const CUR: usize = 1;

#[inline]
fn kind_of(k: u8, end: usize) -> u8 {
    (k >> (2 * end)) & 3
}

#[inline]
fn with_kind(k: u8, end: usize, kind: u8) -> u8 {
    (k & !(3 << (2 * end))) | (kind << (2 * end))
}

#[inline]
fn mix(h: u64) -> u64 {
    // murmur3 fmix64: TIDs differ mostly in a few low/middle bits, so mix them all.
    let mut x = h;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    x
}

const EMPTY: u32 = u32::MAX;

/// Open-addressing set of lineage numbers keyed by their current handle (read from `ends`).
#[derive(Clone, Debug, Default)]
struct HandleIndex {
    buckets: Vec<u32>,
    len: usize,
}

impl HandleIndex {
    #[inline]
    fn home(&self, h: u64) -> usize {
        (mix(h) as usize) & (self.buckets.len() - 1)
    }

    /// Bucket position of the lineage whose cur handle is `h`.
    fn find(&self, h: u64, ends: &[[u64; 2]]) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let mask = self.buckets.len() - 1;
        let mut pos = self.home(h);
        loop {
            let e = self.buckets[pos];
            if e == EMPTY {
                return None;
            }
            if ends[e as usize][CUR] == h {
                return Some(pos);
            }
            pos = (pos + 1) & mask;
        }
    }

    /// Adds lineage `idx`, whose cur handle (already stored in `ends`) must not be indexed yet.
    fn insert(&mut self, idx: u32, ends: &[[u64; 2]]) {
        if (self.len + 1) * 4 > self.buckets.len() * 3 {
            self.grow(ends);
        }
        let mask = self.buckets.len() - 1;
        let mut pos = self.home(ends[idx as usize][CUR]);
        while self.buckets[pos] != EMPTY {
            pos = (pos + 1) & mask;
        }
        self.buckets[pos] = idx;
        self.len += 1;
    }

    /// The empty bucket where cur handle `h` would go, or None if `h` is indexed already: one
    /// probe serves both the check and the insert (`fill`). Grows the table first if one more
    /// entry would pass the load factor.
    fn vacancy(&mut self, h: u64, ends: &[[u64; 2]]) -> Option<usize> {
        if (self.len + 1) * 4 > self.buckets.len() * 3 {
            self.grow(ends);
        }
        let mask = self.buckets.len() - 1;
        let mut pos = self.home(h);
        loop {
            let e = self.buckets[pos];
            if e == EMPTY {
                return Some(pos);
            }
            if ends[e as usize][CUR] == h {
                return None;
            }
            pos = (pos + 1) & mask;
        }
    }

    /// Puts lineage `idx` into the bucket `vacancy` returned (nothing changed in between).
    fn fill(&mut self, pos: usize, idx: u32) {
        debug_assert_eq!(self.buckets[pos], EMPTY);
        self.buckets[pos] = idx;
        self.len += 1;
    }

    fn grow(&mut self, ends: &[[u64; 2]]) {
        let cap = (self.buckets.len() * 2).max(16);
        let old = std::mem::replace(&mut self.buckets, vec![EMPTY; cap]);
        let mask = cap - 1;
        for idx in old.into_iter().filter(|&e| e != EMPTY) {
            let mut pos = self.home(ends[idx as usize][CUR]);
            while self.buckets[pos] != EMPTY {
                pos = (pos + 1) & mask;
            }
            self.buckets[pos] = idx;
        }
    }

    /// Removes the entry at `pos` (backward-shift deletion keeps probe chains intact).
    fn remove_at(&mut self, pos: usize, ends: &[[u64; 2]]) {
        let mask = self.buckets.len() - 1;
        let mut hole = pos;
        let mut j = pos;
        loop {
            j = (j + 1) & mask;
            let e = self.buckets[j];
            if e == EMPTY {
                break;
            }
            let home = self.home(ends[e as usize][CUR]);
            // `e` may move into the hole if the hole lies on its probe path home..=j.
            if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(hole) & mask) {
                self.buckets[hole] = e;
                hole = j;
            }
        }
        self.buckets[hole] = EMPTY;
        self.len -= 1;
    }

    /// Removes the entry for cur handle `h` (which must be present).
    fn remove(&mut self, h: u64, ends: &[[u64; 2]]) {
        let pos = self.find(h, ends).expect("txbuf index out of sync");
        self.remove_at(pos, ends);
    }
}

/// Buffered changes of one table.
#[derive(Clone, Debug)]
struct TableBuf {
    rel: u32,
    truncated: bool,
    ends: Vec<[u64; 2]>,
    kinds: Vec<u8>,
    images: Vec<Row>,
    index: HandleIndex,
    /// Lineages `..indexed` are in `index` (those whose cur is a handle); the ones after are
    /// fresh inserts (none, handle) not indexed yet (see the module comment).
    indexed: usize,
    /// At least every cur handle any lineage has had (0 before the first).
    max_cur: u64,
    /// Lineages that are not (None, None).
    live: usize,
}

impl TableBuf {
    fn new(rel: u32, truncated: bool) -> TableBuf {
        TableBuf {
            rel,
            truncated,
            ends: Vec::new(),
            kinds: Vec::new(),
            images: Vec::new(),
            index: HandleIndex::default(),
            indexed: 0,
            max_cur: 0,
            live: 0,
        }
    }

    /// The number the next lineage gets.
    fn next_idx(&self) -> u32 {
        u32::try_from(self.ends.len())
            .ok()
            .filter(|&i| i != EMPTY)
            .expect("more than 2^32-1 changed rows in one table in one transaction")
    }

    /// Indexes the unindexed tail; every index operation comes after this.
    fn catch_up(&mut self) {
        for i in self.indexed..self.ends.len() {
            debug_assert_eq!(kind_of(self.kinds[i], CUR), K_HANDLE);
            self.index.insert(i as u32, &self.ends);
        }
        self.indexed = self.ends.len();
    }

    fn push(&mut self, orig: Option<u64>, cur: Option<u64>) {
        let idx = self.next_idx();
        let mut k = 0;
        if orig.is_some() {
            k = with_kind(k, ORIG, K_HANDLE);
        }
        if cur.is_some() {
            k = with_kind(k, CUR, K_HANDLE);
        }
        self.catch_up();
        self.ends.push([orig.unwrap_or(0), cur.unwrap_or(0)]);
        self.kinds.push(k);
        if let Some(h) = cur {
            self.index.insert(idx, &self.ends);
            self.max_cur = self.max_cur.max(h);
        }
        self.indexed = self.ends.len();
        if k != 0 {
            self.live += 1;
        }
    }

    /// Pushes a new lineage (none, handle `h`) unless `h` is some lineage's cur handle already
    /// (then nothing changes and the answer is false).
    fn push_new(&mut self, h: u64) -> bool {
        let idx = self.next_idx();
        if h > self.max_cur {
            // above every cur handle there has been: not in use; indexed when needed
            self.max_cur = h;
        } else {
            self.catch_up();
            let Some(pos) = self.index.vacancy(h, &self.ends) else {
                return false;
            };
            self.index.fill(pos, idx);
            self.indexed = self.ends.len() + 1;
        }
        self.ends.push([0, h]);
        self.kinds.push(with_kind(0, CUR, K_HANDLE));
        self.live += 1;
        true
    }

    /// The lineage whose cur is handle `h`, if any.
    fn find(&mut self, h: u64) -> Option<usize> {
        if h > self.max_cur {
            return None;
        }
        self.catch_up();
        self.index.find(h, &self.ends).map(|pos| self.index.buckets[pos] as usize)
    }

    /// Reverts the last `push`.
    fn pop(&mut self) {
        let i = self.ends.len() - 1;
        let k = self.kinds[i];
        if i < self.indexed {
            if kind_of(k, CUR) == K_HANDLE {
                self.index.remove(self.ends[i][CUR], &self.ends);
            }
            self.indexed = i;
        }
        if k != 0 {
            self.live -= 1;
        }
        self.ends.pop();
        self.kinds.pop();
    }

    /// Sets lineage `i`'s cur (currently a handle or none) to handle `cur` or none.
    fn set_cur(&mut self, i: usize, cur: Option<u64>) {
        self.catch_up();
        let k = self.kinds[i];
        let was_live = k != 0;
        if kind_of(k, CUR) == K_HANDLE {
            self.index.remove(self.ends[i][CUR], &self.ends);
        }
        debug_assert_ne!(kind_of(k, CUR), K_IMAGE);
        let k = with_kind(k, CUR, if cur.is_some() { K_HANDLE } else { K_NONE });
        self.kinds[i] = k;
        self.ends[i][CUR] = cur.unwrap_or(0);
        if let Some(h) = cur {
            self.index.insert(i as u32, &self.ends);
            self.max_cur = self.max_cur.max(h);
        }
        match (was_live, k != 0) {
            (false, true) => self.live += 1,
            (true, false) => self.live -= 1,
            _ => {}
        }
    }

    fn endpoint(&mut self, i: usize, end: usize) -> Option<Endpoint> {
        match kind_of(self.kinds[i], end) {
            K_HANDLE => Some(Endpoint::Handle(self.ends[i][end])),
            K_IMAGE => Some(Endpoint::Image(Box::new(std::mem::take(
                &mut self.images[self.ends[i][end] as usize],
            )))),
            _ => None,
        }
    }

    fn heap_bytes(&self) -> usize {
        self.ends.capacity() * std::mem::size_of::<[u64; 2]>()
            + self.kinds.capacity()
            + self.images.capacity() * std::mem::size_of::<Row>()
            + self.index.buckets.capacity() * std::mem::size_of::<u32>()
    }
}

/// What `resolve_rel` replaced, to put back on subtransaction abort.
#[derive(Clone, Debug)]
struct ResolveSnapshot {
    ends: Vec<[u64; 2]>,
    kinds: Vec<u8>,
    images_len: usize,
    index: HandleIndex,
}

/// Undo record (logged only while a subtransaction is open).
#[derive(Clone, Debug)]
enum Undo {
    /// A table entry was appended to `tables` (first touch).
    NewTable,
    /// A lineage was pushed onto table `t`.
    Push { t: u32 },
    /// Lineage `i` of table `t` had cur = handle `prev`.
    SetCur { t: u32, i: u32, prev: u64 },
    /// Table `t` was truncated; this is its content before.
    Truncate { t: u32, prev: Box<TableBuf> },
    /// Table `t`'s handles were resolved to images.
    Resolve { t: u32, prev: Box<ResolveSnapshot> },
}

/// The per-transaction change buffer.
#[derive(Clone, Debug, Default)]
pub struct TxBuf {
    tables: Vec<TableBuf>,
    by_rel: HashMap<u32, u32>,
    undo: Vec<Undo>,
    marks: Vec<usize>,
}

impl TxBuf {
    pub fn new() -> TxBuf {
        TxBuf::default()
    }

    /// A buffer created while `depth` subtransactions are already open (so that the matching
    /// `commit_sub`/`abort_sub` calls balance). Same as `new()` followed by `depth` x `begin_sub()`.
    pub fn new_at_depth(depth: usize) -> TxBuf {
        let mut b = TxBuf::new();
        for _ in 0..depth {
            b.begin_sub();
        }
        b
    }

    /// Number of open subtransactions.
    pub fn depth(&self) -> usize {
        self.marks.len()
    }

    #[inline]
    fn logging(&self) -> bool {
        !self.marks.is_empty()
    }

    fn table_index(&self, rel: u32) -> Option<usize> {
        // Linear scan beats hashing for the usual handful of tables.
        if self.tables.len() <= 8 {
            self.tables.iter().position(|t| t.rel == rel)
        } else {
            self.by_rel.get(&rel).map(|&t| t as usize)
        }
    }

    fn table_or_create(&mut self, rel: u32) -> usize {
        if let Some(t) = self.table_index(rel) {
            return t;
        }
        let t = self.tables.len();
        self.tables.push(TableBuf::new(rel, false));
        self.by_rel.insert(rel, t as u32);
        if self.logging() {
            self.undo.push(Undo::NewTable);
        }
        t
    }

    /// A new row version `h` was inserted into `rel`.
    pub fn insert(&mut self, rel: u32, h: u64) -> Result<(), TxBufError> {
        let t = self.table_or_create(rel);
        if !self.tables[t].push_new(h) {
            return Err(TxBufError::HandleInUse { rel, handle: h });
        }
        if self.logging() {
            self.undo.push(Undo::Push { t: t as u32 });
        }
        Ok(())
    }

    /// Row version `old_h` of `rel` was replaced by the new version `new_h`.
    pub fn update(&mut self, rel: u32, old_h: u64, new_h: u64) -> Result<(), TxBufError> {
        let t = self.table_or_create(rel);
        let logging = self.logging();
        let tb = &mut self.tables[t];
        if new_h != old_h && tb.find(new_h).is_some() {
            return Err(TxBufError::HandleInUse { rel, handle: new_h });
        }
        match tb.find(old_h) {
            Some(i) => {
                tb.set_cur(i, Some(new_h));
                if logging {
                    self.undo.push(Undo::SetCur {
                        t: t as u32,
                        i: i as u32,
                        prev: old_h,
                    });
                }
            }
            None => {
                tb.push(Some(old_h), Some(new_h));
                if logging {
                    self.undo.push(Undo::Push { t: t as u32 });
                }
            }
        }
        Ok(())
    }

    /// Row version `h` of `rel` was deleted.
    pub fn delete(&mut self, rel: u32, h: u64) {
        let t = self.table_or_create(rel);
        let logging = self.logging();
        let tb = &mut self.tables[t];
        match tb.find(h) {
            Some(i) => {
                tb.set_cur(i, None);
                if logging {
                    self.undo.push(Undo::SetCur {
                        t: t as u32,
                        i: i as u32,
                        prev: h,
                    });
                }
            }
            None => {
                tb.push(Some(h), None);
                if logging {
                    self.undo.push(Undo::Push { t: t as u32 });
                }
            }
        }
    }

    /// `rel` was truncated: forget its lineages, remember the truncate.
    pub fn truncate(&mut self, rel: u32) {
        let t = self.table_or_create(rel);
        let prev = std::mem::replace(&mut self.tables[t], TableBuf::new(rel, true));
        if self.logging() {
            self.undo.push(Undo::Truncate {
                t: t as u32,
                prev: Box::new(prev),
            });
        }
    }

    /// Replaces every handle endpoint of `rel` by the image `f(handle)` — call before an
    /// operation that invalidates the table's handles within the transaction (a rewrite).
    /// `f` is called once per handle endpoint, in lineage order, orig before cur. Afterwards
    /// no lineage of `rel` is reachable by handle, so later changes start new lineages.
    ///
    /// Panic safety: if `f` panics inside a subtransaction, aborting that subtransaction
    /// restores the buffer exactly; at top level the buffer must be discarded (the
    /// transaction is aborting anyway).
    pub fn resolve_rel(&mut self, rel: u32, mut f: impl FnMut(u64) -> Row) {
        let Some(t) = self.table_index(rel) else {
            return;
        };
        let logging = self.logging();
        let tb = &mut self.tables[t];
        tb.catch_up(); // the snapshot's index must be whole
        let index = std::mem::take(&mut tb.index);
        if logging {
            // Logged before anything changes, so an abort after a panic in `f` is exact.
            self.undo.push(Undo::Resolve {
                t: t as u32,
                prev: Box::new(ResolveSnapshot {
                    ends: tb.ends.clone(),
                    kinds: tb.kinds.clone(),
                    images_len: tb.images.len(),
                    index,
                }),
            });
        }
        let tb = &mut self.tables[t];
        for i in 0..tb.ends.len() {
            for end in [ORIG, CUR] {
                if kind_of(tb.kinds[i], end) == K_HANDLE {
                    let row = f(tb.ends[i][end]);
                    tb.ends[i][end] = tb.images.len() as u64;
                    tb.images.push(row);
                    tb.kinds[i] = with_kind(tb.kinds[i], end, K_IMAGE);
                }
            }
        }
    }

    pub fn begin_sub(&mut self) {
        self.marks.push(self.undo.len());
    }

    /// The innermost subtransaction committed: its changes now belong to the parent.
    pub fn commit_sub(&mut self) -> Result<(), TxBufError> {
        self.marks.pop().ok_or(TxBufError::NoSubtransaction)?;
        if self.marks.is_empty() {
            self.undo = Vec::new();
        }
        Ok(())
    }

    /// The innermost subtransaction aborted: revert everything done since its `begin_sub`.
    pub fn abort_sub(&mut self) -> Result<(), TxBufError> {
        let mark = self.marks.pop().ok_or(TxBufError::NoSubtransaction)?;
        while self.undo.len() > mark {
            let u = self.undo.pop().expect("undo log shorter than its mark");
            self.revert(u);
        }
        if self.marks.is_empty() {
            self.undo = Vec::new();
        }
        Ok(())
    }

    fn revert(&mut self, u: Undo) {
        match u {
            Undo::NewTable => {
                let tb = self.tables.pop().expect("undo: no table to remove");
                self.by_rel.remove(&tb.rel);
            }
            Undo::Push { t } => self.tables[t as usize].pop(),
            Undo::SetCur { t, i, prev } => self.tables[t as usize].set_cur(i as usize, Some(prev)),
            Undo::Truncate { t, prev } => self.tables[t as usize] = *prev,
            Undo::Resolve { t, prev } => {
                let tb = &mut self.tables[t as usize];
                let ResolveSnapshot {
                    ends,
                    kinds,
                    images_len,
                    index,
                } = *prev;
                tb.ends = ends;
                tb.kinds = kinds;
                tb.images.truncate(images_len);
                tb.index = index;
                tb.indexed = tb.ends.len(); // resolve_rel caught up before the snapshot
            }
        }
    }

    /// True if draining would yield nothing (no truncate, no net row change).
    pub fn is_empty(&self) -> bool {
        self.tables.iter().all(|t| !t.truncated && t.live == 0)
    }

    /// Relations touched so far, in first-touch order (including ones whose changes cancelled
    /// out, e.g. insert then delete).
    pub fn tables_touched(&self) -> impl Iterator<Item = u32> + '_ {
        self.tables.iter().map(|t| t.rel)
    }

    /// Number of lineages with a net effect, over all tables.
    pub fn live_lineages(&self) -> usize {
        self.tables.iter().map(|t| t.live).sum()
    }

    /// Approximate heap usage of the buffer in bytes (excluding the contents of row images).
    pub fn heap_bytes(&self) -> usize {
        self.tables.iter().map(TableBuf::heap_bytes).sum::<usize>()
            + self.tables.capacity() * std::mem::size_of::<TableBuf>()
            + self.undo.capacity() * std::mem::size_of::<Undo>()
            + self.marks.capacity() * std::mem::size_of::<usize>()
    }

    /// Takes the net changes (tables in first-touch order, lineages in first-touch order,
    /// skipping lineages that cancelled out and tables left without changes) and resets the
    /// buffer, including any open subtransactions.
    pub fn drain(&mut self) -> Vec<TableChanges> {
        let tables = std::mem::take(&mut self.tables);
        self.clear();
        let mut out = Vec::new();
        for mut tb in tables {
            let mut lineages = Vec::with_capacity(tb.live);
            for i in 0..tb.ends.len() {
                if tb.kinds[i] != 0 {
                    let orig = tb.endpoint(i, ORIG);
                    let cur = tb.endpoint(i, CUR);
                    lineages.push((orig, cur));
                }
            }
            if tb.truncated || !lineages.is_empty() {
                out.push(TableChanges {
                    rel: tb.rel,
                    truncated: tb.truncated,
                    lineages,
                });
            }
        }
        out
    }

    /// Forgets everything (e.g. on top-level abort).
    pub fn clear(&mut self) {
        *self = TxBuf::default();
    }

    /// Test helper: verifies the internal invariants (index <-> lineages, live counts).
    #[cfg(test)]
    fn check_invariants(&self) {
        assert_eq!(self.tables.len(), {
            let mut rels: Vec<u32> = self.tables.iter().map(|t| t.rel).collect();
            rels.sort_unstable();
            rels.dedup();
            rels.len()
        });
        for (ti, tb) in self.tables.iter().enumerate() {
            assert_eq!(self.by_rel.get(&tb.rel), Some(&(ti as u32)));
            assert_eq!(tb.ends.len(), tb.kinds.len());
            let mut indexed = 0;
            let mut live = 0;
            for i in 0..tb.ends.len() {
                if tb.kinds[i] != 0 {
                    live += 1;
                }
                if kind_of(tb.kinds[i], CUR) == K_HANDLE {
                    assert!(tb.ends[i][CUR] <= tb.max_cur, "a cur handle above max_cur");
                }
                if i >= tb.indexed {
                    assert_eq!(tb.kinds[i], with_kind(0, CUR, K_HANDLE), "an unindexed lineage that is not a fresh insert");
                    continue;
                }
                if kind_of(tb.kinds[i], CUR) == K_HANDLE {
                    indexed += 1;
                    let pos = tb
                        .index
                        .find(tb.ends[i][CUR], &tb.ends)
                        .expect("cur not indexed");
                    assert_eq!(tb.index.buckets[pos] as usize, i);
                }
            }
            let images = tb.kinds.iter().map(|&k| {
                usize::from(kind_of(k, ORIG) == K_IMAGE) + usize::from(kind_of(k, CUR) == K_IMAGE)
            });
            assert_eq!(
                tb.images.len(),
                images.sum::<usize>(),
                "orphaned or missing images"
            );
            assert!(tb.indexed <= tb.ends.len());
            assert_eq!(tb.index.len, indexed);
            assert_eq!(
                tb.index.buckets.iter().filter(|&&b| b != EMPTY).count(),
                indexed
            );
            assert_eq!(tb.live, live);
        }
        assert_eq!(self.by_rel.len(), self.tables.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Value;
    use Endpoint::{Handle as H, Image as I};

    fn drain_one(b: &mut TxBuf) -> TableChanges {
        let mut v = b.drain();
        assert_eq!(v.len(), 1, "{v:?}");
        v.pop().unwrap()
    }

    #[test]
    fn insert_then_update_is_one_insert() {
        let mut b = TxBuf::new();
        b.insert(1, 10).unwrap();
        b.update(1, 10, 11).unwrap();
        b.update(1, 11, 12).unwrap();
        b.check_invariants();
        let tc = drain_one(&mut b);
        assert_eq!(
            tc,
            TableChanges {
                rel: 1,
                truncated: false,
                lineages: vec![(None, Some(H(12)))]
            }
        );
        assert!(b.is_empty());
    }

    #[test]
    fn insert_then_delete_is_nothing() {
        let mut b = TxBuf::new();
        b.insert(1, 10).unwrap();
        b.update(1, 10, 11).unwrap();
        b.delete(1, 11);
        b.check_invariants();
        assert!(b.is_empty());
        assert_eq!(b.tables_touched().collect::<Vec<_>>(), vec![1]);
        assert_eq!(b.drain(), vec![]);
    }

    #[test]
    fn update_chains_and_deletes_of_old_rows() {
        let mut b = TxBuf::new();
        b.update(1, 100, 101).unwrap(); // pre-existing row updated
        b.update(1, 101, 102).unwrap(); // ... twice
        b.delete(1, 200); // another pre-existing row deleted
        b.update(1, 300, 301).unwrap(); // updated then deleted
        b.delete(1, 301);
        b.insert(2, 5).unwrap();
        b.update(1, 400, 400).unwrap(); // degenerate same-handle update is accepted
        b.check_invariants();
        assert!(!b.is_empty());
        assert_eq!(b.live_lineages(), 5);
        assert_eq!(
            b.drain(),
            vec![
                TableChanges {
                    rel: 1,
                    truncated: false,
                    lineages: vec![
                        (Some(H(100)), Some(H(102))),
                        (Some(H(200)), None),
                        (Some(H(300)), None),
                        (Some(H(400)), Some(H(400))),
                    ],
                },
                TableChanges {
                    rel: 2,
                    truncated: false,
                    lineages: vec![(None, Some(H(5)))]
                },
            ]
        );
    }

    #[test]
    fn handle_in_use_is_refused_without_change() {
        let mut b = TxBuf::new();
        b.insert(1, 10).unwrap();
        b.update(1, 20, 21).unwrap();
        assert_eq!(
            b.insert(1, 10),
            Err(TxBufError::HandleInUse { rel: 1, handle: 10 })
        );
        assert_eq!(
            b.update(1, 10, 21),
            Err(TxBufError::HandleInUse { rel: 1, handle: 21 })
        );
        assert_eq!(
            b.update(1, 99, 10),
            Err(TxBufError::HandleInUse { rel: 1, handle: 10 })
        );
        // Same handle in another table is fine.
        b.insert(2, 10).unwrap();
        b.check_invariants();
        assert_eq!(b.live_lineages(), 3);
        // After a delete, the handle may be reused (not by PostgreSQL, but harmless).
        b.delete(1, 10);
        b.insert(1, 10).unwrap();
        b.check_invariants();
    }

    #[test]
    fn truncate_drops_lineages_then_records_new_inserts() {
        let mut b = TxBuf::new();
        b.insert(1, 10).unwrap();
        b.delete(1, 50);
        b.insert(2, 7).unwrap();
        b.truncate(1);
        b.insert(1, 11).unwrap();
        b.truncate(3); // untouched table: just the truncate
        b.check_invariants();
        assert_eq!(b.tables_touched().collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(
            b.drain(),
            vec![
                TableChanges {
                    rel: 1,
                    truncated: true,
                    lineages: vec![(None, Some(H(11)))]
                },
                TableChanges {
                    rel: 2,
                    truncated: false,
                    lineages: vec![(None, Some(H(7)))]
                },
                TableChanges {
                    rel: 3,
                    truncated: true,
                    lineages: vec![]
                },
            ]
        );
    }

    #[test]
    fn subtransaction_abort_reverts_exactly() {
        let mut b = TxBuf::new();
        b.insert(1, 10).unwrap();
        b.update(1, 100, 101).unwrap();
        let before = b.clone().drain();

        b.begin_sub();
        b.update(1, 10, 11).unwrap(); // extends a parent lineage
        b.delete(1, 101); // ends a parent lineage
        b.insert(2, 1).unwrap(); // first touch of table 2 inside the sub
        b.truncate(1); // truncate inside the savepoint
        b.insert(1, 12).unwrap();
        b.check_invariants();
        b.abort_sub().unwrap();
        b.check_invariants();

        assert_eq!(b.tables_touched().collect::<Vec<_>>(), vec![1]);
        assert_eq!(b.clone().drain(), before);
        // The parent lineages are reachable by their handles again.
        b.update(1, 10, 13).unwrap();
        b.delete(1, 101);
        assert_eq!(
            drain_one(&mut b).lineages,
            vec![(None, Some(H(13))), (Some(H(100)), None)]
        );
    }

    #[test]
    fn nested_subtransactions_fold_and_revert() {
        let mut b = TxBuf::new();
        b.insert(1, 1).unwrap();
        b.begin_sub(); // A
        b.update(1, 1, 2).unwrap();
        b.begin_sub(); // B
        b.insert(1, 3).unwrap();
        b.begin_sub(); // C
        b.truncate(1);
        b.insert(2, 9).unwrap();
        b.commit_sub().unwrap(); // C folds into B
        assert_eq!(b.depth(), 2);
        b.check_invariants();
        b.abort_sub().unwrap(); // B aborts, taking C's truncate and insert with it
        b.check_invariants();
        assert_eq!(b.clone().drain()[0].lineages, vec![(None, Some(H(2)))]);
        b.begin_sub(); // D
        b.delete(1, 2);
        b.commit_sub().unwrap(); // D folds into A
        b.commit_sub().unwrap(); // A folds into top level
        assert_eq!(b.depth(), 0);
        assert_eq!(b.commit_sub(), Err(TxBufError::NoSubtransaction));
        assert_eq!(b.abort_sub(), Err(TxBufError::NoSubtransaction));
        assert!(b.is_empty());
        assert_eq!(b.drain(), vec![]);
    }

    #[test]
    fn aborted_sub_allows_handle_reuse() {
        // Tuples of an aborted subtransaction are dead and their TIDs can be reused.
        let mut b = TxBuf::new();
        b.begin_sub();
        b.insert(1, 10).unwrap();
        b.abort_sub().unwrap();
        b.insert(1, 10).unwrap();
        b.check_invariants();
        assert_eq!(drain_one(&mut b).lineages, vec![(None, Some(H(10)))]);
    }

    fn img(h: u64) -> Row {
        Row::new(vec![(1, Value::Int(h as i64))])
    }

    #[test]
    fn resolve_replaces_handles_and_detaches_lineages() {
        let mut b = TxBuf::new();
        b.insert(1, 10).unwrap();
        b.update(1, 20, 21).unwrap();
        b.delete(1, 30);
        b.insert(2, 10).unwrap();
        let mut calls = vec![];
        b.resolve_rel(1, |h| {
            calls.push(h);
            img(h)
        });
        b.resolve_rel(99, |_| unreachable!("untouched table"));
        assert_eq!(calls, vec![10, 20, 21, 30]);
        b.check_invariants();
        // After the rewrite, new handles start new lineages (the old TIDs are gone).
        b.update(1, 21, 22).unwrap();
        b.insert(1, 10).unwrap(); // TID 10 may be reused by the rewritten heap
        assert_eq!(
            b.drain(),
            vec![
                TableChanges {
                    rel: 1,
                    truncated: false,
                    lineages: vec![
                        (None, Some(I(Box::new(img(10))))),
                        (Some(I(Box::new(img(20)))), Some(I(Box::new(img(21))))),
                        (Some(I(Box::new(img(30)))), None),
                        (Some(H(21)), Some(H(22))),
                        (None, Some(H(10))),
                    ],
                },
                TableChanges {
                    rel: 2,
                    truncated: false,
                    lineages: vec![(None, Some(H(10)))]
                },
            ]
        );
    }

    #[test]
    fn resolve_inside_aborted_sub_is_reverted() {
        let mut b = TxBuf::new();
        b.insert(1, 10).unwrap();
        b.update(1, 20, 21).unwrap();
        b.resolve_rel(1, img); // top-level resolve: kept
        b.insert(1, 30).unwrap();
        let before = b.clone().drain();
        b.begin_sub();
        b.update(1, 30, 31).unwrap();
        b.resolve_rel(1, |h| img(h + 1000));
        b.insert(1, 40).unwrap();
        b.abort_sub().unwrap();
        b.check_invariants();
        assert_eq!(b.clone().drain(), before);
        b.update(1, 30, 32).unwrap(); // still reachable by handle
        assert_eq!(b.drain()[0].lineages[2], (None, Some(H(32))));
    }

    #[test]
    fn resolve_panic_inside_sub_is_reverted_by_abort() {
        let mut b = TxBuf::new();
        b.insert(1, 10).unwrap();
        b.insert(1, 11).unwrap();
        let before = b.clone().drain();
        b.begin_sub();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            b.resolve_rel(1, |h| {
                if h == 11 {
                    panic!("ERROR while reading tuple")
                } else {
                    img(h)
                }
            })
        }));
        assert!(r.is_err());
        b.abort_sub().unwrap();
        b.check_invariants();
        assert_eq!(b.drain(), before);
    }

    #[test]
    fn many_tables_use_the_rel_map() {
        let mut b = TxBuf::new();
        for rel in (0..50).rev() {
            b.insert(rel, u64::from(rel)).unwrap();
        }
        b.begin_sub();
        for rel in 100..120 {
            b.insert(rel, 1).unwrap();
        }
        b.delete(7, 7);
        b.abort_sub().unwrap();
        b.check_invariants();
        let out = b.drain();
        assert_eq!(out.len(), 50);
        assert_eq!(out[0].rel, 49);
        assert_eq!(out[42].lineages, vec![(None, Some(H(7)))]);
    }

    #[test]
    fn index_survives_heavy_churn() {
        // Exercise growth and backward-shift deletion with clustered TID-like handles.
        let mut b = TxBuf::new();
        let tid = |blk: u64, off: u64| (blk << 16) | off;
        for blk in 0..200 {
            for off in 1..=50 {
                b.insert(1, tid(blk, off)).unwrap();
            }
        }
        for blk in 0..200 {
            for off in (1..=50).step_by(2) {
                b.update(1, tid(blk, off), tid(blk + 1000, off)).unwrap();
            }
            for off in (2..=50).step_by(4) {
                b.delete(1, tid(blk, off));
            }
        }
        b.check_invariants();
        let tc = drain_one(&mut b);
        assert_eq!(tc.lineages.len(), 200 * 50 - 200 * 13);
        assert!(tc.lineages.iter().all(|(o, c)| o.is_none() && c.is_some()));
    }

    #[test]
    fn memory_per_lineage() {
        let n = 1_000_000u64;
        let mut b = TxBuf::new();
        for i in 0..n {
            b.insert(16_384, ((i / 100) << 16) | (i % 100 + 1)).unwrap();
        }
        let per = b.heap_bytes() as f64 / n as f64;
        eprintln!("txbuf: {per:.1} heap bytes per lineage at {n} inserts");
        assert!(per < 32.0, "{per} bytes per lineage");
        assert_eq!(b.live_lineages(), n as usize);
    }

    // ---- randomized comparison against a naive model -----------------------------------

    /// xorshift64* — deterministic, good enough for test case generation.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            x.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    type Lineage = (Option<Endpoint>, Option<Endpoint>);

    /// The obvious implementation: vectors and linear scans; subtransactions by cloning.
    #[derive(Clone, Default)]
    struct Model {
        tables: Vec<(u32, bool, Vec<Lineage>)>,
        saved: Vec<Vec<(u32, bool, Vec<Lineage>)>>,
    }

    impl Model {
        fn table(&mut self, rel: u32) -> &mut (u32, bool, Vec<Lineage>) {
            let i = match self.tables.iter().position(|t| t.0 == rel) {
                Some(i) => i,
                None => {
                    self.tables.push((rel, false, vec![]));
                    self.tables.len() - 1
                }
            };
            &mut self.tables[i]
        }
        fn cur_pos(t: &(u32, bool, Vec<Lineage>), h: u64) -> Option<usize> {
            t.2.iter().position(|l| l.1 == Some(H(h)))
        }
        fn insert(&mut self, rel: u32, h: u64) -> Result<(), TxBufError> {
            let t = self.table(rel);
            if Self::cur_pos(t, h).is_some() {
                return Err(TxBufError::HandleInUse { rel, handle: h });
            }
            t.2.push((None, Some(H(h))));
            Ok(())
        }
        fn update(&mut self, rel: u32, o: u64, n: u64) -> Result<(), TxBufError> {
            let t = self.table(rel);
            if o != n && Self::cur_pos(t, n).is_some() {
                return Err(TxBufError::HandleInUse { rel, handle: n });
            }
            match Self::cur_pos(t, o) {
                Some(i) => t.2[i].1 = Some(H(n)),
                None => t.2.push((Some(H(o)), Some(H(n)))),
            }
            Ok(())
        }
        fn delete(&mut self, rel: u32, h: u64) {
            let t = self.table(rel);
            match Self::cur_pos(t, h) {
                Some(i) => t.2[i].1 = None,
                None => t.2.push((Some(H(h)), None)),
            }
        }
        fn truncate(&mut self, rel: u32) {
            let t = self.table(rel);
            t.1 = true;
            t.2.clear();
        }
        fn resolve(&mut self, rel: u32, f: &mut impl FnMut(u64) -> Row) {
            if let Some(t) = self.tables.iter_mut().find(|t| t.0 == rel) {
                for l in t.2.iter_mut() {
                    for e in [&mut l.0, &mut l.1] {
                        if let Some(H(h)) = e {
                            *e = Some(I(Box::new(f(*h))));
                        }
                    }
                }
            }
        }
        fn changes(&self) -> Vec<TableChanges> {
            self.tables
                .iter()
                .filter_map(|(rel, truncated, ls)| {
                    let lineages: Vec<Lineage> = ls
                        .iter()
                        .filter(|l| l.0.is_some() || l.1.is_some())
                        .cloned()
                        .collect();
                    (*truncated || !lineages.is_empty()).then_some(TableChanges {
                        rel: *rel,
                        truncated: *truncated,
                        lineages,
                    })
                })
                .collect()
        }
    }

    fn random_run(seed: u64, steps: usize) {
        let mut rng = Rng(seed | 1);
        let mut b = TxBuf::new();
        let mut m = Model::default();
        let mut fresh = 1_000u64;
        let mut stamp_b = 0i64;
        let mut stamp_m = 0i64;
        for step in 0..steps {
            let rel = 1 + rng.below(3) as u32;
            // Handle choice: a current handle of the model (hits an existing lineage), a fresh
            // one, or a small number (collisions, pre-existing rows, reuse after abort).
            let mut pick = |rng: &mut Rng, m: &Model| -> u64 {
                match rng.below(10) {
                    0..=4 => {
                        let curs: Vec<u64> = m
                            .tables
                            .iter()
                            .filter(|t| t.0 == rel)
                            .flat_map(|t| t.2.iter())
                            .filter_map(|l| match l.1 {
                                Some(H(h)) => Some(h),
                                _ => None,
                            })
                            .collect();
                        if curs.is_empty() {
                            rng.below(64)
                        } else {
                            curs[rng.below(curs.len() as u64) as usize]
                        }
                    }
                    5..=7 => {
                        fresh += 1;
                        fresh
                    }
                    _ => rng.below(64),
                }
            };
            match rng.below(100) {
                0..=29 => {
                    let h = pick(&mut rng, &m);
                    assert_eq!(b.insert(rel, h), m.insert(rel, h), "step {step}");
                }
                30..=54 => {
                    let o = pick(&mut rng, &m);
                    let n = pick(&mut rng, &m);
                    assert_eq!(b.update(rel, o, n), m.update(rel, o, n), "step {step}");
                }
                55..=71 => {
                    let h = pick(&mut rng, &m);
                    b.delete(rel, h);
                    m.delete(rel, h);
                }
                72..=74 => {
                    b.truncate(rel);
                    m.truncate(rel);
                }
                75..=78 => {
                    // Images record the call order too, so both must call f identically.
                    b.resolve_rel(rel, |h| {
                        stamp_b += 1;
                        Row::new(vec![(1, Value::Int(h as i64)), (2, Value::Int(stamp_b))])
                    });
                    m.resolve(rel, &mut |h| {
                        stamp_m += 1;
                        Row::new(vec![(1, Value::Int(h as i64)), (2, Value::Int(stamp_m))])
                    });
                }
                79..=88 => {
                    if m.saved.len() < 6 {
                        b.begin_sub();
                        let snap = m.tables.clone();
                        m.saved.push(snap);
                    }
                }
                89..=93 => {
                    let r = b.commit_sub();
                    match m.saved.pop() {
                        Some(_) => r.unwrap(),
                        None => assert_eq!(r, Err(TxBufError::NoSubtransaction)),
                    }
                }
                _ => {
                    let r = b.abort_sub();
                    match m.saved.pop() {
                        Some(snap) => {
                            r.unwrap();
                            m.tables = snap;
                        }
                        None => assert_eq!(r, Err(TxBufError::NoSubtransaction)),
                    }
                }
            }
            b.check_invariants();
            assert_eq!(b.depth(), m.saved.len());
            assert_eq!(b.is_empty(), m.changes().is_empty(), "step {step}");
            assert_eq!(
                b.tables_touched().collect::<Vec<_>>(),
                m.tables.iter().map(|t| t.0).collect::<Vec<_>>(),
                "seed {seed} step {step}"
            );
            if step % 16 == 0 {
                assert_eq!(b.clone().drain(), m.changes(), "seed {seed} step {step}");
            }
        }
        // Close whatever is still open, at random, then compare the final drain.
        while b.depth() > 0 {
            if rng.below(2) == 0 {
                b.commit_sub().unwrap();
                m.saved.pop();
            } else {
                b.abort_sub().unwrap();
                m.tables = m.saved.pop().unwrap();
            }
        }
        assert_eq!(b.drain(), m.changes(), "seed {seed} final");
        assert!(b.is_empty() && b.tables_touched().next().is_none());
    }

    #[test]
    fn randomized_against_naive_model() {
        for seed in 1..=300u64 {
            random_run(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15), 400);
        }
    }
}
