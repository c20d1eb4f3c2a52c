//! `driftdb.maintain()`: the policy work the maintenance worker runs (callable by hand too).
//!
//! For the first table (in table_id order) that has work due, in this order:
//! 1. retention: history older than the table's retention (`driftdb.set_retention`) is purged;
//! 2. compaction: events older than `driftdb.compact_min_age` are packed into segments, once
//!    at least `driftdb.compact_min_events` of them are waiting;
//! 3. snapshot: a snapshot of the newest state is stored once `driftdb.snapshot_min_events`
//!    events followed the newest snapshot (and more than the table has rows).
//! It returns one row per action taken. Each call does one table's work, so that the worker
//! commits after each table: a chain change holds its table's history readers only until its
//! own commit. The worker calls it until it returns no rows.
use pgrx::prelude::*;
use pgrx::{pg_sys, GucContext, GucFlags, GucRegistry, GucSetting};

use super::compact::{self, now_minus};
use super::retention;
use crate::history::catalog::{self, Catalog, Order};
use crate::timetravel::engine::{self, Point, Source};
use crate::timetravel::{reader, snapshot};

/// `driftdb.compact_min_events`: waiting compactable events that make the worker compact.
pub static COMPACT_MIN_EVENTS: GucSetting<i32> = GucSetting::<i32>::new(10000);

pub fn init() {
    GucRegistry::define_int_guc(
        c"driftdb.compact_min_events",
        c"The maintenance worker compacts a table once this many events older than driftdb.compact_min_age are waiting.",
        c"driftdb.compact(regclass) compacts whatever is old enough, regardless.",
        &COMPACT_MIN_EVENTS,
        1,
        i32::MAX,
        GucContext::Userset,
        GucFlags::default(),
    );
}

/// Registered tables (relid, retention); dropped ones are skipped when opened.
fn tables(cat: &Catalog) -> Vec<(pg_sys::Oid, Option<pgrx::datum::Interval>)> {
    let mut out = Vec::new();
    // SAFETY: catalog-style read of driftdb.tables (2 = relid, 7 = retention).
    unsafe {
        catalog::scan(cat.tables, cat.tables_pkey, &[], catalog::snapshot_self(), Order::Forward, pg_sys::AccessShareLock, |tup, rel| {
            let relid = catalog::attr(tup, rel, 2).map_or(pg_sys::InvalidOid, |d| pg_sys::Oid::from(d.value() as u32));
            let ret = catalog::attr(tup, rel, 7).and_then(|d| pgrx::datum::Interval::from_datum(d, false));
            out.push((relid, ret));
            true
        });
    }
    out
}

/// Events after seq `after` (recent and compacted), counted up to `limit`.
fn events_after(cat: &Catalog, table_id: i32, after: i64, limit: usize) -> usize {
    let mut n = 0usize;
    for l in super::directory(cat, table_id).iter().filter(|l| l.kind == super::SEGMENT && l.seq_lo > after) {
        n += l.nevents as usize;
    }
    let keys = [
        (1, pg_sys::BTEqualStrategyNumber as u16, pg_sys::F_INT4EQ, pg_sys::Datum::from(table_id)),
        (2, pg_sys::BTGreaterStrategyNumber as u16, pg_sys::F_INT8GT, pg_sys::Datum::from(after)),
    ];
    // SAFETY: catalog-style read of driftdb.events.
    unsafe {
        catalog::scan(cat.events, cat.events_pkey, &keys, catalog::snapshot_self(), Order::Forward, pg_sys::AccessShareLock, |_, _| {
            n += 1;
            n < limit
        });
    }
    if n < limit {
        n += crate::history::packs::count(cat, table_id, after, i64::MAX, limit - n);
    }
    n
}

type Action = (String, String, String);

/// Do the work due on one table; the actions taken.
unsafe fn maintain_table(cat: &Catalog, relid: pg_sys::Oid, retention: Option<pgrx::datum::Interval>) -> Vec<Action> {
    let mut done = Vec::new();
    let rel = pg_sys::try_relation_open(relid, pg_sys::AccessShareLock as i32);
    if rel.is_null() {
        return done;
    }
    if (*rel).rd_tableam != crate::am::routine() as *const pg_sys::TableAmRoutine {
        pg_sys::relation_close(rel, pg_sys::AccessShareLock as i32);
        return done;
    }
    let name = crate::timetravel::srf::rel_name(relid);
    if let Some(iv) = retention {
        // the horizon: now() - retention, computed by PostgreSQL's own interval arithmetic
        let now = pgrx::datum::TimestampWithTimeZone::from_datum(pg_sys::Datum::from(pg_sys::GetCurrentTransactionStartTimestamp()), false).unwrap();
        let horizon: Option<pgrx::datum::TimestampWithTimeZone> = pgrx::direct_function_call(
            pg_sys::timestamptz_mi_interval,
            &[now.into_datum(), iv.into_datum()],
        );
        if let Some(h) = horizon {
            let o = retention::purge_table(cat, relid, h.into_inner(), false);
            if o.keyless {
                // not an action (a round would report it every time, and never run dry): a
                // NOTICE to whoever calls maintain() by hand; set_retention refuses such tables
                pgrx::notice!("driftdb: history of table \"{name}\" not purged: rows recorded while it had no row identity lie before the horizon");
            }
            if let Some(hs) = o.horizon_seq {
                done.push((name.clone(), "purge".into(), format!("history before seq {hs} purged: {} events, {} snapshots removed", o.events_removed, o.snapshots_removed)));
            }
        }
    }
    let o = compact::compact_table(cat, relid, now_minus(compact::MIN_AGE.get() as i64), COMPACT_MIN_EVENTS.get().max(1) as usize);
    if o.segments > 0 {
        done.push((
            name.clone(),
            "compact".into(),
            format!("{} events into {} segments, {} bytes raw, {} stored (seqs {}..{})", o.events, o.segments, o.raw_bytes, o.stored_bytes, o.seq_lo.unwrap_or(0), o.seq_hi.unwrap_or(0)),
        ));
    }
    let min = snapshot::MIN_EVENTS.get();
    if min > 0 {
        let src = Source::new(*cat, rel);
        if let Some(info) = src.info.clone() {
            let settled = engine::resolve(cat, Point::Seq(i64::MAX));
            let snap = reader::latest_snapshot(cat, info.table_id, settled).unwrap_or(0);
            let live = (*(*rel).rd_rel).reltuples.max(0.0) as usize;
            if snap < settled && events_after(cat, info.table_id, snap, min as usize + live) >= (min as usize).max(live + 1) {
                let (rows, _) = src.rows_at(settled);
                if snapshot::store(cat, &src, settled, &rows) {
                    done.push((name.clone(), "snapshot".into(), format!("state at seq {settled} stored ({} rows)", rows.len())));
                }
            }
        }
    }
    pg_sys::relation_close(rel, pg_sys::AccessShareLock as i32);
    done
}

#[pg_extern(name = "maintain", volatile)]
fn maintain_sql() -> TableIterator<'static, (name!(table_name, String), name!(action, String), name!(detail, String))> {
    // SAFETY: superuser check of the current user.
    if !unsafe { pg_sys::superuser() } {
        crate::error::DriftError::new(PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE, "must be superuser to run driftdb.maintain()")
            .hint("Table owners can call driftdb.compact, driftdb.snapshot and driftdb.purge_history on their tables.")
            .raise();
    }
    let Some(cat) = Catalog::get() else { return TableIterator::new(Vec::new()) };
    for (relid, retention) in tables(&cat) {
        // SAFETY: opens the table (skipping dropped ones) for the duration of the work.
        let done = unsafe { maintain_table(&cat, relid, retention) };
        if !done.is_empty() {
            return TableIterator::new(done);
        }
    }
    TableIterator::new(Vec::new())
}

extension_sql!(
    r#"
REVOKE EXECUTE ON FUNCTION driftdb.maintain() FROM PUBLIC;
COMMENT ON FUNCTION driftdb.maintain() IS 'do the policy work (retention, compaction, snapshots) due on the first table that has some; returns the actions taken (none: nothing due). The maintenance worker calls it until it returns nothing; superuser only';
"#,
    name = "maintain_grants",
    requires = [maintain_sql]
);
