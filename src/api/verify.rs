//! `driftdb.verify(regclass)` — the doctor.
//!
//! 1. frames: every event frame of the table passes its CRC and decodes;
//! 2. replay: the events apply cleanly in seq order (each UPDATE/DELETE finds the row it names,
//!    with the old image it recorded);
//! 3. live:   history replayed to now equals the live table, as a multiset of rows;
//! 4. chain:  (once history was compacted) every link of the table's chain matches its hash
//!    and its predecessor (`segments::chain`), naming the first link that does not.
//!
//! Events and live rows are read with the same snapshot (the statement's), so concurrent
//! commits cannot produce false alarms: a transaction's events and its rows become visible
//! together.
use driftdb_core::{decode_frame, multiset_diff, ImageReplay, Row};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgRelation;

use super::{require_driftdb_table, require_owner};
use crate::history::catalog::Catalog;
use crate::history::codec;
use crate::history::commit::lookup_table_id;
use crate::history::identity::{self, Identity};

/// Every event row of table `id` in (seq, ord) order — the events table and the compacted
/// segments: seq, ord, op and frame bytes.
unsafe fn scan_events(cat: &Catalog, id: i32, snapshot: pg_sys::Snapshot, mut f: impl FnMut(i64, i32, u8, &[u8])) {
    crate::segments::for_each_event(cat, id, i64::MIN, i64::MAX, snapshot, true, |seq, ord, op, _, bytes| {
        f(seq, ord, op, bytes);
        true
    });
}

/// The live rows of `rel`, encoded, in the table's current shape.
unsafe fn live_rows(rel: pg_sys::Relation, snapshot: pg_sys::Snapshot) -> Vec<Row> {
    let scan = pg_sys::table_beginscan(rel, snapshot, 0, std::ptr::null_mut());
    let slot = pg_sys::table_slot_create(rel, std::ptr::null_mut());
    let mut rows = Vec::new();
    while pg_sys::table_scan_getnextslot(scan, pg_sys::ScanDirection::ForwardScanDirection, slot) {
        rows.push(codec::row_from_slot((*rel).rd_att, slot));
    }
    pg_sys::ExecDropSingleTupleTableSlot(slot);
    pg_sys::table_endscan(scan);
    rows
}

/// A replayed row in the table's current shape: dropped columns removed, columns added later
/// read as existing rows read them (their missing value or NULL).
unsafe fn current_shape(tupdesc: pg_sys::TupleDesc, live_attnums: &[u16], row: Row) -> Row {
    let mut cols = Vec::with_capacity(live_attnums.len());
    for &a in live_attnums {
        let v = match row.get(a) {
            Some(v) => v.clone(),
            None => codec::missing_value(tupdesc, a),
        };
        cols.push((a, v));
    }
    Row(cols)
}

fn describe(rows: &[Row]) -> String {
    let shown: Vec<String> = rows.iter().take(3).map(|r| format!("{:?}", r.0)).collect();
    let more = if rows.len() > 3 { format!(" and {} more", rows.len() - 3) } else { String::new() };
    format!("{}{more}", shown.join("; "))
}

#[pg_extern(name = "verify")]
fn verify(
    table: PgRelation,
) -> TableIterator<'static, (name!(item, String), name!(ok, bool), name!(detail, String))> {
    require_driftdb_table(&table);
    require_owner(&table, "verify its history");
    let cat = Catalog::require();
    let mut report: Vec<(String, bool, String)> = Vec::new();
    // SAFETY: catalog-style reads of driftdb's tables and a table scan of `table`, which
    // PgRelation keeps open and locked for the whole call.
    unsafe {
        let rel = table.as_ptr();
        let snapshot = pg_sys::GetActiveSnapshot();
        let id = lookup_table_id(&cat, table.oid());
        let key_cols = match identity::of(rel) {
            Identity::Key(cols) => Some(cols),
            Identity::Full | Identity::None => None,
        };
        let mut replay = ImageReplay::new(key_cols);
        let info = crate::timetravel::reader::table_info(&cat, table.oid());
        if let Some(i) = info.as_ref().filter(|i| i.history_purged) {
            replay.set_base_upto(i.history_start_seq as u64);
        }
        // 4. the chain first, read uncached: a damaged segment is reported here, by link,
        // instead of failing the event scan below
        let mut chain_ok = true;
        if let Some(id) = id.filter(|&id| crate::segments::head_seg_id(&cat, id) > 0) {
            report.push(match crate::segments::chain::verify_chain(&cat, id) {
                Ok(s) => ("chain".into(), true, s),
                Err(e) => {
                    chain_ok = false;
                    ("chain".into(), false, e)
                }
            });
        }
        if !chain_ok {
            for item in ["frames", "replay", "live"] {
                report.push((item.into(), false, "not checked: the chain is broken (see the chain item)".into()));
            }
            return TableIterator::new(report);
        }
        let (mut frames, mut bad_frames, mut first_bad, mut replay_err) = (0u64, 0u64, None, None);
        if let Some(id) = id {
            scan_events(&cat, id, snapshot, |seq, ord, op, bytes| {
                if op == b'm' {
                    // a moved-key marker repeats its update's frame: check the CRC only
                    if let Err(e) = driftdb_core::check_frame(bytes) {
                        bad_frames += 1;
                        first_bad.get_or_insert(format!("event seq {seq} #{ord}: {e}"));
                    }
                    return;
                }
                frames += 1;
                match decode_frame(bytes) {
                    Err(e) => {
                        bad_frames += 1;
                        first_bad.get_or_insert(format!("event seq {seq} #{ord}: {e}"));
                    }
                    Ok(ev) => {
                        if replay_err.is_none() {
                            if ev.seq as i64 != seq {
                                replay_err = Some(format!("event seq {seq} #{ord}: frame says seq {}", ev.seq));
                            } else if let Err(e) = replay.apply(&ev) {
                                replay_err = Some(e.to_string());
                            }
                        }
                    }
                }
            });
        }
        report.push(match &first_bad {
            None => ("frames".into(), true, format!("{frames} event frames, every CRC valid")),
            Some(e) => ("frames".into(), false, format!("{bad_frames} of {frames} frames are damaged; first: {e}")),
        });
        let replayed_len = replay.len();
        report.push(match &replay_err {
            None => ("replay".into(), true, format!("{frames} events replay cleanly into {replayed_len} rows")),
            Some(e) => ("replay".into(), false, e.clone()),
        });
        let tupdesc = (*rel).rd_att;
        let natts = (*tupdesc).natts as usize;
        let live_attnums: Vec<u16> = (*tupdesc)
            .attrs
            .as_slice(natts)
            .iter()
            .enumerate()
            .filter(|(_, a)| !a.attisdropped)
            .map(|(i, _)| (i + 1) as u16)
            .collect();
        let live = live_rows(rel, snapshot);
        let nlive = live.len();
        let replayed: Vec<Row> = replay.into_rows().map(|r| current_shape(tupdesc, &live_attnums, r)).collect();
        // multiset_diff(a, b) returns (rows of b missing in a, rows of a missing in b)
        let (only_table, only_history) = multiset_diff(replayed, live);
        report.push(if only_history.is_empty() && only_table.is_empty() && replay_err.is_none() {
            ("live".into(), true, format!("history replayed to now equals the live table ({nlive} rows)"))
        } else {
            let mut d = format!(
                "history replayed to now differs from the live table ({nlive} rows): {} rows only in history, {} only in the table",
                only_history.len(),
                only_table.len()
            );
            if !only_history.is_empty() {
                d.push_str(&format!("; only in history: {}", describe(&only_history)));
            }
            if !only_table.is_empty() {
                d.push_str(&format!("; only in the table: {}", describe(&only_table)));
            }
            ("live".into(), false, d)
        });
    }
    TableIterator::new(report)
}
