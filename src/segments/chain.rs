//! Tamper evidence: the chain of a table's links, and the digest of its history.
//!
//! Two hashes, for two questions:
//! - **The chain** (stored): each link of `driftdb.segments` carries `hash = chain_hash(prev_hash,
//!   data)`. `verify_chain` recomputes every link and names the first one whose data, hash or
//!   predecessor does not match. Purge and erasure records list the links they removed (seg_id
//!   and hash), so a chain with removed links still checks from its first link to its head.
//! - **The digest** (computed): `driftdb.digest(t, upto_seq)` folds every event of the table in
//!   (seq, ord) order with `chain_hash`, starting from the anchor of the latest purge (the digest
//!   of the history it removed, kept in its record) or 32 zero bytes. It does not depend on how
//!   events are stored (compaction leaves it unchanged; a purge too), so a digest written down
//!   outside the database proves later that history up to that seq is unchanged. An erasure
//!   changes it; its record keeps the digest before and after.
use std::collections::HashMap;

use driftdb_core::{chain_hash, Hash, GENESIS};
use pgrx::pg_sys;
use pgrx::prelude::*;
use serde::{Deserialize, Serialize};

use super::{directory, hex, link_data, Link, ERASURE, PURGE, SEGMENT};
use crate::history::catalog::Catalog;

/// The JSON body of a purge or erasure record (link data).
#[derive(Serialize, Deserialize, Debug, Default, Clone)]
pub struct Record {
    pub action: String,
    pub at: String,
    pub by: String,
    pub session_user: String,
    /// purge: history before this seq is gone (AS OF earlier points fails)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub horizon_seq: Option<i64>,
    /// purge: the digest of the history up to horizon_seq (the next digests start from it)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor: Option<String>,
    /// erasure: SHA-256 of the erased key's canonical bytes (not the key itself)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_sha256: Option<String>,
    pub events_removed: i64,
    pub snapshots_removed: i64,
    /// links this action removed: [seg_id, hash hex]
    pub removed_links: Vec<(i64, String)>,
    /// links it appended (rewritten segments), before this record
    pub added_links: Vec<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest_before: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest_after: Option<String>,
}

pub fn parse_record(link: &Link, data: &[u8]) -> Result<Record, String> {
    serde_json::from_slice(data).map_err(|e| format!("record {} is not readable: {e}", link.seg_id))
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok())).collect()
}

fn to_hash(v: &[u8]) -> Hash {
    let mut h = GENESIS;
    if v.len() == 32 {
        h.copy_from_slice(v);
    }
    h
}

/// The latest purge of the table: (horizon seq, anchor digest).
pub fn purge_anchor(cat: &Catalog, table_id: i32) -> (i64, Hash) {
    let dir = directory(cat, table_id);
    for l in dir.iter().rev().filter(|l| l.kind == PURGE) {
        if let Ok(r) = parse_record(l, &link_data(cat, table_id, l.seg_id)) {
            if let (Some(h), Some(a)) = (r.horizon_seq, r.anchor.as_deref().and_then(unhex)) {
                return (h, to_hash(&a));
            }
        }
    }
    (i64::MIN, GENESIS)
}

/// The digest of the table's history up to `upto` (see the module comment).
pub fn digest(cat: &Catalog, table_id: i32, upto: i64, snapshot: pg_sys::Snapshot) -> Hash {
    let (from, anchor) = purge_anchor(cat, table_id);
    fold(cat, table_id, from, upto, anchor, snapshot)
}

/// `anchor` folded with the events `from < seq <= upto` (markers excluded: they repeat a frame).
pub fn fold(cat: &Catalog, table_id: i32, from: i64, upto: i64, anchor: Hash, snapshot: pg_sys::Snapshot) -> Hash {
    let mut h = anchor;
    super::for_each_event(cat, table_id, from, upto, snapshot, false, |_, _, _, _, frame| {
        h = chain_hash(&h, frame);
        true
    });
    h
}

/// Check every link of the table's chain. Ok: a summary; Err: the first break.
pub fn verify_chain(cat: &Catalog, table_id: i32) -> Result<String, String> {
    let dir = super::load_links(cat, table_id);
    // seg_id → hash of links removed by purges and erasures
    let mut removed: HashMap<i64, Vec<u8>> = HashMap::new();
    let mut datas: Vec<Vec<u8>> = Vec::with_capacity(dir.len());
    for l in dir.iter() {
        let data = link_data(cat, table_id, l.seg_id);
        if l.kind == PURGE || l.kind == ERASURE {
            // an unreadable record shows up below as a hash mismatch or here
            if let Ok(r) = parse_record(l, &data) {
                for (id, h) in r.removed_links {
                    if let Some(h) = unhex(&h) {
                        removed.insert(id, h);
                    }
                }
            }
        }
        datas.push(data);
    }
    let mut expected_prev = GENESIS.to_vec();
    let mut last_id = 0i64;
    let (mut segments, mut records, mut events) = (0, 0, 0i64);
    for (l, data) in dir.iter().zip(&datas) {
        for id in last_id + 1..l.seg_id {
            match removed.get(&id) {
                Some(h) => expected_prev = h.clone(),
                None => return Err(format!("link {id} is missing: it was removed without a purge or erasure record")),
            }
        }
        let what = describe(l);
        if l.prev_hash != expected_prev {
            return Err(format!("{what}: its previous-link hash does not match link {} (links removed or reordered)", l.seg_id - 1));
        }
        let computed = chain_hash(&to_hash(&l.prev_hash), data);
        if computed.as_slice() != l.hash.as_slice() {
            return Err(format!("{what}: its contents do not match its hash (changed after it was written)"));
        }
        match l.kind {
            SEGMENT => {
                let entries = driftdb_core::decode_segment(data).map_err(|e| format!("{what}: {e}"))?;
                if entries.len() != l.nevents as usize {
                    return Err(format!("{what}: holds {} events, its header says {}", entries.len(), l.nevents));
                }
                if let (Some(f), Some(la)) = (entries.first(), entries.last()) {
                    if f.key != l.key_lo || la.key != l.key_hi {
                        return Err(format!("{what}: its key range does not match its events"));
                    }
                }
                if entries.iter().any(|e| e.seq < l.seq_lo || e.seq > l.seq_hi) {
                    return Err(format!("{what}: holds events outside its seq range"));
                }
                segments += 1;
                events += entries.len() as i64;
            }
            PURGE | ERASURE => {
                parse_record(l, data)?;
                records += 1;
            }
            k => return Err(format!("link {}: unknown kind {:?}", l.seg_id, k as char)),
        }
        expected_prev = l.hash.clone();
        last_id = l.seg_id;
    }
    Ok(if dir.is_empty() {
        "no compacted segments yet".into()
    } else {
        format!(
            "{segments} segments ({events} events) and {records} purge/erasure records; every link matches its hash; head {}",
            hex(&expected_prev)
        )
    })
}

fn describe(l: &Link) -> String {
    match l.kind {
        SEGMENT => format!("link {} (segment of seqs {}..{}, {} events)", l.seg_id, l.seq_lo, l.seq_hi, l.nevents),
        PURGE => format!("link {} (purge record)", l.seg_id),
        ERASURE => format!("link {} (erasure record)", l.seg_id),
        _ => format!("link {}", l.seg_id),
    }
}

/// `driftdb.digest(regclass, upto_seq)`: the digest of the table's history up to a settled seq
/// (default: the newest). Needs SELECT on the table.
#[pg_extern(name = "digest", volatile)]
fn digest_sql(
    table: pgrx::PgRelation,
    upto_seq: default!(Option<i64>, "NULL"),
) -> TableIterator<'static, (name!(seq, i64), name!(digest, String))> {
    crate::api::require_driftdb_table(&table);
    // SAFETY: privilege check on an open relation.
    unsafe { crate::timetravel::srf::check_read(table.oid(), "digest") };
    let cat = Catalog::require();
    let settled = crate::timetravel::engine::resolve(&cat, crate::timetravel::engine::Point::Seq(upto_seq.unwrap_or(i64::MAX)));
    // SAFETY: the relation is open for the call.
    let src = unsafe { crate::timetravel::engine::Source::new(cat, table.as_ptr()) };
    src.check_start(settled);
    let Some(info) = &src.info else { return TableIterator::once((settled, hex(&GENESIS))) };
    let h = digest(&cat, info.table_id, settled, crate::history::catalog::snapshot_self());
    TableIterator::once((settled, hex(&h)))
}

extension_sql!(
    r#"
COMMENT ON FUNCTION driftdb.digest(regclass, bigint) IS 'SHA-256 digest of the table''s history up to a seq (default: now); unchanged by compaction and purge, so a digest kept elsewhere proves history has not been altered since';
"#,
    name = "digest_comment",
    requires = [digest_sql]
);
