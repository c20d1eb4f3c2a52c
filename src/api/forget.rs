//! DROP TABLE removes the dropped table's history (called by the `driftdb_drop_history`
//! event trigger with the OIDs of the dropped tables).
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::history::catalog::{self, Catalog, Order};
use crate::history::commit::lookup_table_id;

/// Delete every row of driftdb table `table` whose first column (table_id) equals `id`,
/// through index `index` whose first key column is that table_id.
unsafe fn delete_where_table_id(table: pg_sys::Oid, index: pg_sys::Oid, id: i32) -> usize {
    let mut n = 0;
    let keys = [(1, pg_sys::BTEqualStrategyNumber as u16, pg_sys::F_INT4EQ, pg_sys::Datum::from(id as usize))];
    catalog::scan(table, index, &keys, catalog::snapshot_self(), Order::Any, pg_sys::RowExclusiveLock, |tup, rel| {
        pg_sys::simple_heap_delete(rel, &mut (*tup).t_self);
        n += 1;
        true
    });
    n
}

/// Remove the history of tables that no longer exist. Tables that still exist are left alone,
/// whoever calls this (EXECUTE is revoked from PUBLIC as well).
#[pg_extern(name = "_forget_dropped_tables")]
fn forget_dropped_tables(relids: Vec<pg_sys::Oid>) -> i64 {
    let Some(cat) = Catalog::get() else { return 0 };
    let mut removed = 0i64;
    for relid in relids {
        // SAFETY: syscache and catalog-style scans on driftdb's own tables.
        unsafe {
            let still_there = pg_sys::SearchSysCacheExists(
                pg_sys::SysCacheIdentifier::RELOID as i32,
                pg_sys::Datum::from(relid),
                pg_sys::Datum::from(0usize),
                pg_sys::Datum::from(0usize),
                pg_sys::Datum::from(0usize),
            );
            if still_there {
                continue;
            }
            if let Some(id) = lookup_table_id(&cat, relid) {
                removed += delete_where_table_id(cat.events, cat.events_pkey, id) as i64;
                delete_where_table_id(cat.packs, cat.packs_pkey, id);
                delete_where_table_id(cat.snapshots, cat.snapshots_pkey, id);
                delete_where_table_id(cat.segments, cat.segments_pkey, id);
                // the registry row: found through its primary key (table_id)
                delete_where_table_id(cat.tables, cat.tables_pkey, id);
            }
        }
    }
    removed
}

extension_sql!(
    "REVOKE EXECUTE ON FUNCTION driftdb._forget_dropped_tables(oid[]) FROM PUBLIC;",
    name = "revoke_forget",
    requires = [forget_dropped_tables]
);
