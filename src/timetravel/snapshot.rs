//! Snapshots: a driftdb table's full state at one settled seq, stored as compressed blocks in
//! `driftdb.snapshots` (block format: `driftdb_core::snapshot`). A full AS OF read starts from
//! the newest snapshot at or below its seq and replays only the events after it.
//!
//! Taken on demand (`driftdb.snapshot(regclass)`) and automatically: a full AS OF read that had
//! to replay more than `driftdb.snapshot_min_events` events beyond its starting snapshot (and
//! more than the table has rows) stores the state it computed, unless the transaction is
//! read-only, the server is a standby, or another backend is already storing one for the
//! table. Snapshots are derived data: each is rebuilt exactly from the events.
use driftdb_core::{BlockSplitter, Row};
use pgrx::prelude::*;
use pgrx::{pg_sys, GucContext, GucFlags, GucRegistry, GucSetting};

use super::engine::{Point, Source};
use super::{engine, reader};
use crate::history::catalog::{Catalog, Writer};

/// `driftdb.snapshot_min_events`: replayed events that make a full AS OF read store a snapshot.
pub static MIN_EVENTS: GucSetting<i32> = GucSetting::<i32>::new(10000);
/// Target uncompressed size of one snapshot block.
const BLOCK_BYTES: usize = 1 << 20;

pub fn init() {
    GucRegistry::define_int_guc(
        c"driftdb.snapshot_min_events",
        c"A full AS OF read that replays more events than this (and more than the table has rows) stores a snapshot.",
        c"0 disables automatic snapshots; driftdb.snapshot(regclass) still takes them on demand.",
        &MIN_EVENTS,
        0,
        i32::MAX,
        GucContext::Userset,
        GucFlags::default(),
    );
}

/// Store `state` (the table at settled `seq`) as a snapshot, unless one exists or another
/// backend is storing one. Returns whether it stored.
pub unsafe fn store(cat: &Catalog, src: &Source, seq: i64, rows: &[Row]) -> bool {
    let Some(info) = &src.info else { return false };
    // one writer per table at a time; others skip (the lock is held until their transaction ends)
    if !pg_sys::ConditionalLockDatabaseObject(cat.snapshots, src.relid, 0, pg_sys::ExclusiveLock as i32) {
        return false;
    }
    if reader::latest_snapshot(cat, info.table_id, seq) == Some(seq) {
        return false;
    }
    let mut splitter = BlockSplitter::new(BLOCK_BYTES);
    let mut blocks: Vec<Vec<u8>> = rows.iter().filter_map(|r| splitter.push(r)).collect();
    blocks.extend(splitter.finish());
    let mut w = Writer::open(cat.snapshots);
    let mut tmp = pgrx::PgMemoryContexts::new("driftdb snapshot write");
    let mut progress = crate::segments::compact::Progress::new(format!("driftdb snapshot of {}", super::srf::rel_name(src.relid)));
    for (i, b) in blocks.iter().enumerate() {
        progress.tick(i as f64 / blocks.len() as f64, || format!("{i} of {} blocks written", blocks.len()));
        let nrows = driftdb_core::check_block(b).map_or(0, |info| info.row_count as i32);
        tmp.switch_to(|_| {
            let mut values = [
                info.table_id.into_datum().unwrap(),
                seq.into_datum().unwrap(),
                (i as i32).into_datum().unwrap(),
                nrows.into_datum().unwrap(),
                b.as_slice().into_datum().unwrap(),
            ];
            w.insert(&mut values, &mut [false; 5]);
        });
        tmp.reset();
    }
    true
}

/// After a full read replayed `replayed` events beyond its snapshot: store one if due.
pub unsafe fn maybe_store(cat: &Catalog, src: &Source, seq: i64, rows: &[Row], replayed: usize) {
    let min = MIN_EVENTS.get();
    if min <= 0 || replayed < min as usize || replayed < rows.len() {
        return;
    }
    if pg_sys::XactReadOnly || pg_sys::RecoveryInProgress() || pg_sys::IsInParallelMode() {
        return;
    }
    store(cat, src, seq, rows);
}

/// `driftdb.snapshot(regclass)`: store the table's state at the newest settled seq; returns
/// that seq. Owner only.
#[pg_extern(name = "snapshot", volatile, strict)]
fn snapshot_sql(table: pgrx::PgRelation) -> i64 {
    crate::api::require_driftdb_table(&table);
    crate::api::require_owner(&table, "take a snapshot");
    let cat = Catalog::require();
    // SAFETY: the relation is open (PgRelation) for the whole call; catalog-style reads and
    // writes of driftdb's own tables.
    unsafe {
        let src = Source::new(cat, table.as_ptr());
        let seq = engine::resolve(&cat, Point::Seq(i64::MAX));
        if let Some(info) = &src.info {
            if reader::latest_snapshot(&cat, info.table_id, seq) != Some(seq) {
                let (rows, _) = src.rows_at(seq);
                store(&cat, &src, seq, &rows);
            }
        }
        seq
    }
}

extension_sql!(
    r#"
COMMENT ON FUNCTION driftdb.snapshot(regclass) IS 'store the table''s full state at the newest settled seq (returned), so full AS OF reads near it replay little; table owner only';
"#,
    name = "snapshot_grants",
    requires = [snapshot_sql]
);
