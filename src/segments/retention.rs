//! Retention and erasure: removing history on purpose, leaving a record in the chain.
//!
//! - `driftdb.purge_history(t, before)` removes the history before a horizon H (the newest seq
//!   committed at or before `before`): every event at or below H except, per key, the one that
//!   wrote the row's image current at H (so the state at every seq ≥ H stays exact, and each
//!   surviving row keeps its true start); TRUNCATEs at or below H, superseded versions, deleted
//!   rows and snapshots older than H go. `history_start_seq` becomes H: AS OF earlier points
//!   fails, naming the horizon. Replays read the survivors as the state at H (they are inserts
//!   or updates of rows whose earlier events are gone: `ImageReplay::set_base_upto`).
//! - `driftdb.set_retention(t, interval)`: the maintenance round purges history older than it.
//! - `driftdb.history_start(t)`: where history begins, and why.
//! - `driftdb.erase(t, VARIADIC key text[])`: removes every event and snapshot row of one
//!   identity key (a privacy request), after the row itself was deleted.
//!
//! Both rewrite the segments that hold removed events (remove the link, append the rewritten
//! segment) and append a record to the chain listing the removed links' hashes, so the chain
//! still verifies, and who did what when is in history itself.
use std::collections::{HashMap, HashSet};

use driftdb_core::{encode_key, SegmentBuilder, SegmentEntry, Value};
use pgrx::prelude::*;
use pgrx::{pg_sys, PgRelation};

use super::chain::{self, Record};
use super::compact::{head_hash, Progress, SEGMENT_SIZE};
use super::{append_link, directory, entries, head_seg_id, hex, lock_chain, remove_link, seal_chain, SEGMENT};
use crate::error::DriftError;
use crate::history::catalog::{self, Catalog, Order};
use crate::history::identity::Identity;
use crate::timetravel::engine::{self, Point, Source};
use crate::timetravel::reader;

/// What a purge did.
#[derive(Default, Debug)]
pub struct PurgeOutcome {
    pub horizon_seq: Option<i64>,
    pub events_removed: i64,
    pub snapshots_removed: i64,
    /// Nothing was purged: rows recorded without a row identity lie before the horizon (only
    /// with `refuse_keyless` false; otherwise that is an ERROR).
    pub keyless: bool,
}

fn role_names() -> (String, String) {
    // SAFETY: role name lookups of the current and session users.
    unsafe {
        let n = |oid| {
            let p = pg_sys::GetUserNameFromId(oid, true);
            if p.is_null() { String::new() } else { std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned() }
        };
        (n(pg_sys::GetUserId()), n(pg_sys::GetSessionUserId()))
    }
}

fn now_text() -> String {
    // SAFETY: formatting this transaction's start timestamp.
    unsafe {
        let ts = pg_sys::GetCurrentTransactionStartTimestamp();
        let p = pg_sys::timestamptz_to_str(ts);
        std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

/// Remove the events `drop` selects (by (seq, ord)) from the events table (seqs in (lo, hi])
/// and from the segments, rewriting the segments that held some. Returns (events removed,
/// removed links, added links) and advances `head`/`prev` past the added links.
fn remove_events(
    cat: &Catalog,
    table_id: i32,
    lo: i64,
    hi: i64,
    drop: &dyn Fn(i64, i32, u8, Option<&[u8]>) -> bool,
    head: &mut i64,
    prev: &mut Vec<u8>,
) -> (i64, Vec<(i64, String)>, Vec<i64>) {
    let mut removed = 0i64;
    let keys = [
        (1, pg_sys::BTEqualStrategyNumber as u16, pg_sys::F_INT4EQ, pg_sys::Datum::from(table_id)),
        (2, pg_sys::BTGreaterStrategyNumber as u16, pg_sys::F_INT8GT, pg_sys::Datum::from(lo)),
        (2, pg_sys::BTLessEqualStrategyNumber as u16, pg_sys::F_INT8LE, pg_sys::Datum::from(hi)),
    ];
    // SAFETY: catalog-style scan and delete by TID of driftdb.events rows.
    unsafe {
        catalog::scan(cat.events, cat.events_pkey, &keys, catalog::snapshot_self(), Order::Forward, pg_sys::RowExclusiveLock, |tup, rel| {
            let seq = catalog::attr(tup, rel, 2).map_or(0, |d| d.value() as i64);
            let ord = catalog::attr(tup, rel, 3).map_or(0, |d| d.value() as i32);
            let op = catalog::attr(tup, rel, 4).map_or(0, |d| d.value() as u8);
            let key = catalog::attr(tup, rel, 5).map(|d| super::bytea_of(Some(d)));
            if drop(seq, ord, op, key.as_deref()) {
                pg_sys::simple_heap_delete(rel, &mut (*tup).t_self);
                if op != b'm' {
                    removed += 1;
                }
            }
            true
        });
    }
    removed += crate::history::packs::remove(cat, table_id, lo, hi, drop);
    let mut removed_links = Vec::new();
    let mut added = Vec::new();
    let dir = directory(cat, table_id);
    let target = SEGMENT_SIZE.get().max(4096) as usize;
    for l in dir.iter().filter(|l| l.kind == SEGMENT && l.seq_lo <= hi && l.seq_hi > lo) {
        let es = entries(cat, table_id, l);
        let keep: Vec<SegmentEntry> = es.iter().filter(|e| !drop(e.seq, e.ord, e.op, Some(&e.key))).cloned().collect();
        if keep.len() == es.len() {
            continue;
        }
        removed += es.iter().filter(|e| e.op != b'm').count() as i64 - keep.iter().filter(|e| e.op != b'm').count() as i64;
        remove_link(cat, table_id, l.seg_id);
        removed_links.push((l.seg_id, hex(&l.hash)));
        let mut b = SegmentBuilder::new(target);
        let mut segs = Vec::new();
        for e in &keep {
            segs.extend(b.push(e).unwrap_or_else(|err| reader::corrupted(format!("rewriting segment {}: {err}", l.seg_id))));
        }
        segs.extend(b.finish());
        for (data, info) in segs {
            *head += 1;
            *prev = append_link(cat, table_id, *head, SEGMENT, Some(&info), prev, &data);
            added.push(*head);
        }
    }
    (removed, removed_links, added)
}

/// Delete the table's snapshots selected by `f(seq)`; returns how many (seqs) went.
fn remove_snapshots(cat: &Catalog, table_id: i32, f: impl Fn(i64) -> bool) -> i64 {
    let mut seqs = HashSet::new();
    let keys = [(1, pg_sys::BTEqualStrategyNumber as u16, pg_sys::F_INT4EQ, pg_sys::Datum::from(table_id))];
    // SAFETY: catalog-style scan and delete by TID of driftdb.snapshots rows.
    unsafe {
        catalog::scan(cat.snapshots, cat.snapshots_pkey, &keys, catalog::snapshot_self(), Order::Forward, pg_sys::RowExclusiveLock, |tup, rel| {
            let seq = catalog::attr(tup, rel, 2).map_or(0, |d| d.value() as i64);
            if f(seq) {
                pg_sys::simple_heap_delete(rel, &mut (*tup).t_self);
                seqs.insert(seq);
            }
            true
        });
    }
    seqs.len() as i64
}

/// Append a purge/erasure record and finish a chain-changing transaction.
fn finish(cat: &Catalog, relid: pg_sys::Oid, table_id: i32, kind: u8, rec: &Record, head: &mut i64, prev: &[u8]) {
    let data = serde_json::to_vec(rec).expect("records serialize");
    *head += 1;
    append_link(cat, table_id, *head, kind, None, prev, &data);
    seal_chain(cat, table_id);
    // SAFETY: relcache invalidation of the user table: every backend drops its cached
    // registration, marks and directory of it.
    unsafe { pg_sys::CacheInvalidateRelcacheByRelid(relid) };
}

/// Purge table `relid`'s history before `before` (µs since 2000-01-01). Caller checked rights.
/// `refuse_keyless`: rows recorded without a row identity before the horizon make the purge an
/// ERROR (a user's call), or (the maintenance round, which must go on with its other tables and
/// actions) an outcome with `keyless` set and nothing purged.
pub fn purge_table(cat: &Catalog, relid: pg_sys::Oid, before: i64, refuse_keyless: bool) -> PurgeOutcome {
    let mut out = PurgeOutcome::default();
    let Some(info) = reader::table_info(cat, relid) else { return out };
    let table_id = info.table_id;
    lock_chain(cat, table_id);
    // SAFETY: name lookup for messages.
    let name = unsafe { crate::timetravel::srf::rel_name(relid) };
    let horizon = engine::resolve(cat, Point::Time(before));
    // re-read after the lock: another purge may have committed since the cache was filled
    let start = reader::table_info(cat, relid).map_or(0, |i| i.history_start_seq);
    if horizon <= start || horizon == 0 {
        return out;
    }
    // rows recorded without a key before the horizon, found without reading every event (the
    // maintenance round asks every time)
    if reader::keyless_rows_upto(cat, table_id, horizon) {
        if !refuse_keyless {
            out.keyless = true;
            return out;
        }
        DriftError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("cannot purge the history of table \"{name}\": some of its rows were recorded without a row identity"),
        )
        .detail("Rows written while the table had no primary key or replica identity cannot be told apart in history, so which of them were still current at the horizon is not known.")
        .hint("History that holds such rows is kept whole. A table loaded before its primary key was added can start a purgeable history as a copy: CREATE TABLE ... (LIKE ...) USING driftdb, then INSERT ... SELECT.")
        .raise();
    }
    let mut progress = Progress::new(format!("driftdb.purge_history({name})"));
    // the digest of everything up to the horizon: the anchor later digests start from
    let anchor = chain::digest(cat, table_id, horizon, catalog::snapshot_self());
    // per key, the newest event at or below the horizon; and the TRUNCATEs
    let mut latest: HashMap<Vec<u8>, (i64, i32, u8)> = HashMap::new();
    let mut truncates: Vec<i64> = Vec::new();
    super::for_each_event(cat, table_id, i64::MIN, horizon, catalog::snapshot_self(), true, |seq, ord, op, key, _| {
        match (op, key) {
            (b't', _) => truncates.push(seq),
            (b's', _) => {}
            (_, Some(k)) => {
                // within one seq, an event that wrote the key's image wins over one that took a
                // row away from it (a row left the key and another arrived in one transaction)
                let keep_old = latest.get(k).is_some_and(|&(s, _, o)| s == seq && matches!(o, b'i' | b'u') && !matches!(op, b'i' | b'u'));
                if !keep_old {
                    latest.insert(k.to_vec(), (seq, ord, op));
                }
            }
            (_, None) => {} // none: checked above
        }
        progress.tick(0.3 * seq.max(0) as f64 / horizon as f64, || format!("{} keys read", latest.len()));
        true
    });
    let last_truncate = truncates.last().copied();
    // survivors: the newest event per key, if it left the row in place and no TRUNCATE followed
    // (a TRUNCATE comes first in its transaction: rows written in its seq survive it)
    let survivors: HashSet<(i64, i32)> = latest
        .values()
        .filter(|(seq, _, op)| matches!(op, b'i' | b'u') && last_truncate.is_none_or(|t| t <= *seq))
        .map(|(s, o, _)| (*s, *o))
        .collect();
    let drop = |seq: i64, ord: i32, op: u8, _key: Option<&[u8]>| seq <= horizon && op != b's' && !survivors.contains(&(seq, ord));
    let mut head = head_seg_id(cat, table_id);
    let mut prev = head_hash(cat, table_id, head);
    let (events_removed, removed_links, added_links) = remove_events(cat, table_id, i64::MIN, horizon, &drop, &mut head, &mut prev);
    let snapshots_removed = remove_snapshots(cat, table_id, |s| s < horizon);
    // the registration: history starts at the horizon, which a purge set
    catalog::update_table_row(cat, table_id, &[(4, pg_sys::Datum::from(horizon), false), (10, pg_sys::Datum::from(true), false)]);
    let (by, session_user) = role_names();
    let rec = Record {
        action: "purge".into(),
        at: now_text(),
        by,
        session_user,
        horizon_seq: Some(horizon),
        anchor: Some(hex(&anchor)),
        events_removed,
        snapshots_removed,
        removed_links,
        added_links,
        ..Record::default()
    };
    finish(cat, relid, table_id, super::PURGE, &rec, &mut head, &prev);
    out.horizon_seq = Some(horizon);
    out.events_removed = events_removed;
    out.snapshots_removed = snapshots_removed;
    out
}

#[pg_extern(name = "purge_history", volatile, strict)]
fn purge_history_sql(
    table: PgRelation,
    before: pgrx::datum::TimestampWithTimeZone,
) -> TableIterator<'static, (name!(horizon_seq, Option<i64>), name!(events_removed, i64), name!(snapshots_removed, i64))> {
    crate::api::require_driftdb_table(&table);
    crate::api::require_owner(&table, "purge its history");
    let cat = Catalog::require();
    let o = purge_table(&cat, table.oid(), before.into_inner(), true);
    TableIterator::once((o.horizon_seq, o.events_removed, o.snapshots_removed))
}

#[pg_extern(name = "set_retention", volatile)]
fn set_retention_sql(table: PgRelation, keep: Option<pgrx::datum::Interval>) {
    crate::api::require_driftdb_table(&table);
    crate::api::require_owner(&table, "set its history retention");
    let cat = Catalog::require();
    // SAFETY: the relation is open for the call.
    let src = unsafe { Source::new(cat, table.as_ptr()) };
    let Some(info) = src.info else {
        DriftError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("table \"{}\" has no history yet", table.name()),
        )
        .hint("Set the retention after the table's first committed change.")
        .raise()
    };
    if keep.is_some() && reader::keyless_rows_upto(&cat, info.table_id, i64::MAX) {
        DriftError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("cannot set a history retention for table \"{}\": some of its rows were recorded without a row identity", table.name()),
        )
        .detail("Rows written while the table had no primary key or replica identity cannot be told apart in history, so no purge can keep exactly the rows current at a horizon; their history is kept whole.")
        .hint("A table loaded before its primary key was added can start a purgeable history as a copy: CREATE TABLE ... (LIKE ...) USING driftdb, then INSERT ... SELECT.")
        .raise();
    }
    let d = keep.map(|i| i.into_datum().unwrap());
    catalog::update_table_row(&cat, info.table_id, &[(7, d.unwrap_or(pg_sys::Datum::from(0usize)), d.is_none())]);
    // SAFETY: relcache invalidation of the user table (its cached registration).
    unsafe { pg_sys::CacheInvalidateRelcacheByRelid(table.oid()) };
}

#[pg_extern(name = "history_start", volatile, strict)]
fn history_start_sql(
    table: PgRelation,
) -> TableIterator<'static, (name!(seq, i64), name!(committed_at, Option<pgrx::datum::TimestampWithTimeZone>), name!(reason, String))> {
    crate::api::require_driftdb_table(&table);
    // SAFETY: privilege check on an open relation.
    unsafe { crate::timetravel::srf::check_read(table.oid(), "history_start") };
    let cat = Catalog::require();
    let info = reader::table_info(&cat, table.oid());
    let (seq, reason) = match &info {
        None => (0, "no history yet"),
        Some(i) if i.history_purged => (i.history_start_seq, "purged"),
        Some(i) if i.history_start_seq > 0 => (i.history_start_seq, "converted"),
        Some(_) => (0, "complete since creation"),
    };
    let at = (seq > 0).then(|| crate::timetravel::engine::commit_time(&cat, seq)).filter(|t| *t != i64::MIN);
    // SAFETY: a timestamptz datum from µs since 2000-01-01.
    let at = at.map(|t| unsafe { pgrx::datum::TimestampWithTimeZone::from_datum(pg_sys::Datum::from(t), false).unwrap() });
    TableIterator::once((seq, at, reason.into()))
}

/// `texts` read as the table's identity columns: their values, and the key bytes they are
/// filed under.
unsafe fn key_from_texts(rel: pg_sys::Relation, texts: &[Option<String>]) -> (Vec<Value>, Vec<u8>) {
    let name = crate::timetravel::srf::rel_name((*rel).rd_id);
    let cols = match reader::identity_of(rel) {
        Identity::Key(cols) => cols,
        _ => DriftError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("table \"{name}\" has no identity key to erase by"),
        )
        .hint("driftdb.erase works on tables with a primary key or REPLICA IDENTITY USING INDEX.")
        .raise(),
    };
    if cols.len() != texts.len() {
        DriftError::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("the identity key of \"{name}\" has {} columns, {} values given", cols.len(), texts.len()),
        )
        .hint("Pass one value per key column, in key order, as text.")
        .raise();
    }
    let tupdesc = (*rel).rd_att;
    let mut vals = Vec::with_capacity(cols.len());
    for (a, t) in cols.iter().zip(texts) {
        let att = (*tupdesc).attrs.as_slice((*tupdesc).natts as usize)[*a as usize - 1];
        let Some(t) = t else {
            DriftError::new(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, "key values must not be NULL").raise()
        };
        let (mut input, mut ioparam) = (pg_sys::InvalidOid, pg_sys::InvalidOid);
        pg_sys::getTypeInputInfo(att.atttypid, &mut input, &mut ioparam);
        let c = std::ffi::CString::new(t.as_str()).unwrap_or_default();
        let d = pg_sys::OidInputFunctionCall(input, c.as_ptr() as *mut _, ioparam, att.atttypmod);
        vals.push(crate::history::codec::datum_to_value(d, att.atttypid));
    }
    let key = encode_key(&vals);
    (vals, key)
}

#[pg_extern(name = "erase", volatile)]
fn erase_sql(
    table: PgRelation,
    key: pgrx::VariadicArray<String>,
) -> TableIterator<'static, (name!(events_removed, i64), name!(snapshots_rewritten, i64), name!(key_sha256, String))> {
    crate::api::require_driftdb_table(&table);
    crate::api::require_owner(&table, "erase history");
    let cat = Catalog::require();
    let texts: Vec<Option<String>> = key.iter().collect();
    // SAFETY: the relation is open (PgRelation) for the call.
    let (removed, snaps, sha) = unsafe { erase_key(&cat, table.as_ptr(), &texts) };
    TableIterator::once((removed, snaps, sha))
}

unsafe fn erase_key(cat: &Catalog, rel: pg_sys::Relation, texts: &[Option<String>]) -> (i64, i64, String) {
    let relid = (*rel).rd_id;
    let name = crate::timetravel::srf::rel_name(relid);
    let (key_vals, key) = key_from_texts(rel, texts);
    let key_hash = hex(&driftdb_core::sha256(&key));
    let src = Source::new(*cat, rel);
    let Some(info) = src.info.clone() else { return (0, 0, key_hash) };
    let table_id = info.table_id;
    lock_chain(cat, table_id);
    if !src.keyed() {
        DriftError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("cannot erase by key in table \"{name}\": its identity changed since history was recorded"),
        )
        .raise();
    }
    let settled = engine::resolve(cat, Point::Seq(i64::MAX));
    let marks = src.marks(settled);
    if src.row_for_key(&key_vals, settled, &marks).is_some() {
        DriftError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("the row with this key still exists in table \"{name}\""),
        )
        .detail("Erasure removes a row's history; the row itself is removed by DELETE, which history records.")
        .hint("DELETE the row first, then erase its history.")
        .raise();
    }
    // the key's events; a key that moved to or from another key cannot be erased alone
    let mut seqs = Vec::new();
    let mut moved = false;
    reader::key_events_desc(cat, table_id, &key, settled, |seq, op, e| {
        moved |= op == b'm' || e.old_key.is_some();
        seqs.push(seq);
        true
    });
    if moved {
        DriftError::new(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("the row with this key in table \"{name}\" changed its key during its history"),
        )
        .detail("Its history continues under another key, which would keep copies of its old images.")
        .hint("Erase is limited to rows whose key never changed.")
        .raise();
    }
    let digest_before = chain::digest(cat, table_id, settled, catalog::snapshot_self());
    let mut head = head_seg_id(cat, table_id);
    let mut prev = head_hash(cat, table_id, head);
    let target = key.clone();
    let drop = |_: i64, _: i32, op: u8, k: Option<&[u8]>| op != b's' && op != b't' && k == Some(target.as_slice());
    let (lo, hi) = (seqs.iter().min().copied().unwrap_or(0) - 1, seqs.iter().max().copied().unwrap_or(0));
    let (events_removed, removed_links, added_links) = if seqs.is_empty() {
        (0, Vec::new(), Vec::new())
    } else {
        remove_events(cat, table_id, lo, hi, &drop, &mut head, &mut prev)
    };
    let snapshots = rewrite_snapshots_without(cat, rel, table_id, &key_vals);
    let digest_after = chain::digest(cat, table_id, settled, catalog::snapshot_self());
    let (by, session_user) = role_names();
    let rec = Record {
        action: "erase".into(),
        at: now_text(),
        by,
        session_user,
        key_sha256: Some(key_hash.clone()),
        events_removed,
        snapshots_removed: snapshots,
        removed_links,
        added_links,
        digest_before: Some(hex(&digest_before)),
        digest_after: Some(hex(&digest_after)),
        ..Record::default()
    };
    finish(cat, relid, table_id, super::ERASURE, &rec, &mut head, &prev);
    (events_removed, snapshots, key_hash)
}

/// Rewrite the snapshot blocks holding the row with identity `key`; returns blocks rewritten.
unsafe fn rewrite_snapshots_without(cat: &Catalog, rel: pg_sys::Relation, table_id: i32, key: &[Value]) -> i64 {
    let cols = match reader::identity_of(rel) {
        Identity::Key(c) => c,
        _ => return 0,
    };
    let mut n = 0;
    let keys = [(1, pg_sys::BTEqualStrategyNumber as u16, pg_sys::F_INT4EQ, pg_sys::Datum::from(table_id))];
    let mut tmp = pgrx::PgMemoryContexts::new("driftdb erase");
    catalog::scan(cat.snapshots, cat.snapshots_pkey, &keys, catalog::snapshot_self(), Order::Forward, pg_sys::RowExclusiveLock, |tup, srel| {
        tmp.switch_to(|_| {
            let data = super::bytea_of(catalog::attr(tup, srel, 5));
            let seq = catalog::attr(tup, srel, 2).map_or(0, |d| d.value() as i64);
            let rows = reader::decode_block(&data, seq);
            if !rows.iter().any(|r| r.project(&cols) == key) {
                return;
            }
            let kept: Vec<_> = rows.into_iter().filter(|r| r.project(&cols) != key).collect();
            let block = driftdb_core::encode_snapshot_block(&kept);
            let natts = (*(*srel).rd_att).natts as usize;
            let mut values = vec![pg_sys::Datum::from(0usize); natts];
            let mut nulls = vec![false; natts];
            let mut repl = vec![false; natts];
            values[3] = (kept.len() as i32).into_datum().unwrap();
            repl[3] = true;
            values[4] = block.as_slice().into_datum().unwrap();
            repl[4] = true;
            let newtup = pg_sys::heap_modify_tuple(tup, (*srel).rd_att, values.as_mut_ptr(), nulls.as_mut_ptr(), repl.as_mut_ptr());
            pg_sys::CatalogTupleUpdate(srel, &mut (*newtup).t_self, newtup);
            n += 1;
        });
        tmp.reset();
        true
    });
    n
}

extension_sql!(
    r#"
COMMENT ON FUNCTION driftdb.purge_history(regclass, timestamptz) IS 'remove the table''s history before a time (AS OF earlier points then fails, naming the horizon); recorded in the chain; table owner only';
COMMENT ON FUNCTION driftdb.set_retention(regclass, interval) IS 'keep this much history; the maintenance worker purges older history (NULL: keep all); table owner only';
COMMENT ON FUNCTION driftdb.history_start(regclass) IS 'where the table''s history begins: seq, its commit time, and why (complete since creation, converted, purged)';
COMMENT ON FUNCTION driftdb.erase(regclass, text[]) IS 'erase every recorded version of one deleted row, by its identity key (values as text, in key order); leaves an audit record; table owner only';
"#,
    name = "retention_comments",
    requires = [purge_history_sql, set_retention_sql, history_start_sql, erase_sql]
);
