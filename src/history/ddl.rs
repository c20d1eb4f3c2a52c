//! History across DDL: what ALTER TABLE does to a driftdb table's history.
//!
//! Called around every ALTER TABLE by the utility hook (`hooks/utility.rs`):
//! * before: if this transaction already changed the table, its buffered TIDs are turned into
//!   row images now, because a rewriting ALTER gives every row a new TID;
//! * after: compare the table's shape before and after —
//!   - heap → driftdb (`SET ACCESS METHOD driftdb`): the existing rows become the first
//!     versions; a schema event marks where history starts;
//!   - driftdb → another access method: refused (the history would be orphaned);
//!   - a column's type changed: refused (history stores values of the old type);
//!   - a column added whose existing rows got per-row values (volatile DEFAULT, identity,
//!     generated column): refused, with the way to do it that history can follow; a
//!     non-volatile default is recorded as the value older rows read, also when the statement
//!     rewrote the table and PostgreSQL kept no "missing" value;
//!   - columns added, dropped or renamed: one schema event records the new columns.
//! Refusals are ERRORs, so the ALTER TABLE rolls back with nothing lost.
use std::collections::HashMap;
use std::ffi::CStr;

use driftdb_core::{ColumnDef, SchemaChange, Value};
use pgrx::pg_sys;
use pgrx::prelude::*;

use super::capture;
use super::catalog::Catalog;
use super::codec;
use super::commit::lookup_table_id;
use crate::error::DriftError;

#[derive(Clone, Debug, PartialEq)]
struct Col {
    attnum: u16,
    name: String,
    typid: pg_sys::Oid,
    typmod: i32,
    dropped: bool,
    hasmissing: bool,
    hasdef: bool,
    /// GENERATED ... AS IDENTITY
    identity: bool,
    /// GENERATED ALWAYS AS (...) STORED
    generated: bool,
}

/// What the table looked like before the command.
pub struct Before {
    relid: pg_sys::Oid,
    am: pg_sys::Oid,
    persistence: u8,
    cols: Vec<Col>,
}

unsafe fn shape(rel: pg_sys::Relation) -> (pg_sys::Oid, Vec<Col>) {
    let desc = (*rel).rd_att;
    let natts = (*desc).natts as usize;
    let cols = (*desc)
        .attrs
        .as_slice(natts)
        .iter()
        .enumerate()
        .map(|(i, a)| Col {
            attnum: (i + 1) as u16,
            name: pgrx::name_data_to_str(&a.attname).to_string(),
            typid: a.atttypid,
            typmod: a.atttypmod,
            dropped: a.attisdropped,
            hasmissing: a.atthasmissing,
            hasdef: a.atthasdef,
            identity: a.attidentity != 0,
            generated: a.attgenerated != 0,
        })
        .collect();
    ((*(*rel).rd_rel).relam, cols)
}

fn driftdb_am() -> pg_sys::Oid {
    // SAFETY: catalog lookup by name.
    unsafe { pg_sys::get_table_am_oid(c"driftdb".as_ptr(), true) }
}

/// Before an ALTER TABLE or CLUSTER on `relid` (InvalidOid when the table does not exist).
pub fn before_alter(relid: pg_sys::Oid) -> Option<Before> {
    if relid == pg_sys::InvalidOid {
        return None;
    }
    // SAFETY: relcache access by OID; no lock is taken here (the ALTER takes its own, stronger
    // lock right after), the entry is only read and closed again.
    unsafe {
        let rel = pg_sys::RelationIdGetRelation(relid);
        if rel.is_null() {
            return None;
        }
        if (*(*rel).rd_rel).relkind as u8 != pg_sys::RELKIND_RELATION {
            pg_sys::RelationClose(rel);
            return None;
        }
        let (am, cols) = shape(rel);
        let persistence = (*(*rel).rd_rel).relpersistence as u8;
        if am == driftdb_am() && capture::touches(relid.to_u32()) {
            capture::resolve(rel);
        }
        pg_sys::RelationClose(rel);
        Some(Before { relid, am, persistence, cols })
    }
}

fn refuse(table: &str, message: String, detail: &str, hint: String) -> ! {
    DriftError::new(PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED, message)
        .detail(format!("\"{table}\" is a driftdb table: {detail}"))
        .hint(hint)
        .raise()
}

unsafe fn type_name(typid: pg_sys::Oid, typmod: i32) -> String {
    CStr::from_ptr(pg_sys::format_type_with_typemod(typid, typmod)).to_string_lossy().into_owned()
}

/// After the ALTER TABLE succeeded.
pub fn after_alter(before: Before) {
    let dd = driftdb_am();
    // SAFETY: the ALTER holds AccessExclusiveLock on the table until commit; relcache access.
    unsafe {
        let rel = pg_sys::RelationIdGetRelation(before.relid);
        if rel.is_null() {
            return;
        }
        let name = pgrx::name_data_to_str(&(*(*rel).rd_rel).relname).to_string();
        let (am, cols) = shape(rel);
        let has_history = || {
            capture::touches(before.relid.to_u32())
                || Catalog::get().is_some_and(|c| lookup_table_id(&c, before.relid).is_some())
        };
        let persistence = (*(*rel).rd_rel).relpersistence as u8;
        if am == dd
            && before.persistence == pg_sys::RELPERSISTENCE_PERMANENT
            && persistence != pg_sys::RELPERSISTENCE_PERMANENT
            && has_history()
        {
            pg_sys::RelationClose(rel);
            refuse(
                &name,
                format!("cannot make driftdb table \"{name}\" unlogged"),
                "unlogged tables lose their rows in a crash, which their history would outlive, so driftdb does not version them.",
                format!("Keep \"{name}\" logged; for an unversioned unlogged copy use CREATE UNLOGGED TABLE {name}_copy (LIKE {name}) USING heap."),
            );
        }
        if before.am != dd && am == dd {
            if capture::is_captured(rel) {
                baseline(rel, &name, &cols);
            }
        } else if before.am == dd && am != dd {
            if has_history() {
                pg_sys::RelationClose(rel);
                refuse(
                    &name,
                    format!("cannot change the access method of driftdb table \"{name}\""),
                    "its history would no longer be kept in step with its rows.",
                    format!("Keep \"{name}\" as it is, or copy its rows into a new table: CREATE TABLE {name}_copy (LIKE {name}) USING heap; INSERT INTO {name}_copy SELECT * FROM {name};"),
                );
            }
        } else if am == dd && cols != before.cols && has_history() {
            let mut rewritten = HashMap::new();
            for c in &cols {
                let Some(old) = before.cols.iter().find(|o| o.attnum == c.attnum) else {
                    if !c.dropped {
                        if let Err(kind) = classify_new_column(rel, c, &mut rewritten) {
                            if table_has_rows(rel) {
                                pg_sys::RelationClose(rel);
                                refuse(
                                    &name,
                                    format!("cannot add column \"{}\" to driftdb table \"{name}\" with a per-row value", c.name),
                                    &format!("its existing rows would get values that their history does not have ({}).", kind.why()),
                                    kind.hint(&name, &c.name),
                                );
                            }
                        }
                    }
                    continue;
                };
                if !c.dropped && !old.dropped && (c.typid != old.typid || c.typmod != old.typmod) {
                    let (from, to) = (type_name(old.typid, old.typmod), type_name(c.typid, c.typmod));
                    pg_sys::RelationClose(rel);
                    refuse(
                        &name,
                        format!("cannot change the type of column \"{}\" of driftdb table \"{name}\" from {from} to {to}", c.name),
                        "its history holds values of the old type.",
                        format!("Add a new column of type {to}, fill it with UPDATE {name} SET new_col = {}::{to}, then drop the old column and rename the new one.", c.name),
                    );
                }
            }
            note_columns(rel, &cols, &rewritten, "ALTER TABLE");
        }
        pg_sys::RelationClose(rel);
    }
}

/// Why a column just added would give the existing rows values of their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PerRow {
    Identity,
    Generated,
    Volatile,
}

impl PerRow {
    fn why(self) -> &'static str {
        match self {
            PerRow::Identity => "an identity column numbers them",
            PerRow::Generated => "a generated column computes a value for each",
            PerRow::Volatile => "a volatile DEFAULT such as serial, random() or clock_timestamp()",
        }
    }

    /// The way to the same column that history can follow: add it plain, fill it with an
    /// UPDATE (recorded), then give it its default or identity.
    fn hint(self, table: &str, col: &str) -> String {
        match self {
            PerRow::Identity => format!(
                "Add the column without IDENTITY, number the rows with UPDATE (recorded as history), then ALTER TABLE {table} ALTER COLUMN {col} SET NOT NULL, ALTER COLUMN {col} ADD GENERATED BY DEFAULT AS IDENTITY (START WITH n, n above the largest value)."
            ),
            PerRow::Generated => format!(
                "PostgreSQL 15 cannot make an existing column generated. Add {col} as a plain column, fill it with UPDATE {table} SET {col} = <expression> (recorded as history) and keep it current with a BEFORE INSERT OR UPDATE trigger; or add generated columns while the table has no rows."
            ),
            PerRow::Volatile => format!(
                "Add the column without that default, set its values with UPDATE (recorded as history), then ALTER TABLE {table} ALTER COLUMN {col} SET DEFAULT ... . Constant defaults work directly."
            ),
        }
    }
}

/// A column just added: what do the rows that existed before read for it?
/// * nothing special (no default) or a stored "missing" value: fine;
/// * a default that is not volatile, but stored in every row because the statement rewrote the
///   table anyway (another subcommand, a domain with constraints): fine — evaluated once here
///   and recorded in `rewritten` as the value older rows read;
/// * identity, generated, or a volatile default (serial, random(), clock_timestamp()): a value
///   per row, which history cannot follow: Err(which).
unsafe fn classify_new_column(rel: pg_sys::Relation, c: &Col, rewritten: &mut HashMap<u16, Value>) -> Result<(), PerRow> {
    if c.identity {
        return Err(PerRow::Identity);
    }
    if c.generated {
        return Err(PerRow::Generated);
    }
    if !c.hasdef || c.hasmissing {
        return Ok(());
    }
    let expr = pg_sys::build_column_default(rel, c.attnum as i32);
    if expr.is_null() {
        return Ok(());
    }
    if pg_sys::contain_volatile_functions(expr) {
        return Err(PerRow::Volatile);
    }
    let planned = pg_sys::expression_planner(expr as *mut pg_sys::Expr);
    let node = planned as *mut pg_sys::Node;
    let k = pg_sys::evaluate_expr(planned, pg_sys::exprType(node), pg_sys::exprTypmod(node), pg_sys::exprCollation(node))
        as *mut pg_sys::Const;
    if !(*k).constisnull {
        rewritten.insert(c.attnum, codec::datum_to_value((*k).constvalue, c.typid));
    }
    Ok(())
}

unsafe fn table_has_rows(rel: pg_sys::Relation) -> bool {
    pg_sys::CommandCounterIncrement();
    let snap = pg_sys::RegisterSnapshot(pg_sys::GetLatestSnapshot());
    let scan = pg_sys::table_beginscan(rel, snap, 0, std::ptr::null_mut());
    let slot = pg_sys::table_slot_create(rel, std::ptr::null_mut());
    let any = pg_sys::table_scan_getnextslot(scan, pg_sys::ScanDirection::ForwardScanDirection, slot);
    pg_sys::ExecDropSingleTupleTableSlot(slot);
    pg_sys::table_endscan(scan);
    pg_sys::UnregisterSnapshot(snap);
    any
}

unsafe fn column_defs(rel: pg_sys::Relation, cols: &[Col], rewritten: &HashMap<u16, Value>) -> Vec<ColumnDef> {
    cols.iter()
        .map(|c| ColumnDef {
            attnum: c.attnum,
            name: c.name.clone(),
            type_name: if c.dropped { String::new() } else { type_name(c.typid, c.typmod) },
            typmod: c.typmod,
            dropped: c.dropped,
            // the value older rows read for the column; recorded now, because a later rewrite
            // makes PostgreSQL forget it
            missing: if c.dropped {
                None
            } else if c.hasmissing {
                Some(codec::missing_value((*rel).rd_att, c.attnum)).filter(|v| !v.is_null())
            } else {
                rewritten.get(&c.attnum).cloned()
            },
        })
        .collect()
}

unsafe fn note_columns(rel: pg_sys::Relation, cols: &[Col], rewritten: &HashMap<u16, Value>, description: &str) {
    let change = SchemaChange { description: description.to_string(), columns: column_defs(rel, cols, rewritten) };
    capture::note_schema((*rel).rd_id.to_u32(), change, false);
}

/// `SET ACCESS METHOD driftdb`: the rows the table has now are its first versions.
unsafe fn baseline(rel: pg_sys::Relation, name: &str, cols: &[Col]) {
    let change = SchemaChange {
        description: format!("SET ACCESS METHOD driftdb: history of \"{name}\" starts here; earlier states are unknown"),
        columns: column_defs(rel, cols, &HashMap::new()),
    };
    capture::note_schema((*rel).rd_id.to_u32(), change, true);
    pg_sys::CommandCounterIncrement();
    let snap = pg_sys::RegisterSnapshot(pg_sys::GetLatestSnapshot());
    let scan = pg_sys::table_beginscan(rel, snap, 0, std::ptr::null_mut());
    let slot = pg_sys::table_slot_create(rel, std::ptr::null_mut());
    while pg_sys::table_scan_getnextslot(scan, pg_sys::ScanDirection::ForwardScanDirection, slot) {
        capture::on_insert(rel, &(*slot).tts_tid);
    }
    pg_sys::ExecDropSingleTupleTableSlot(slot);
    pg_sys::table_endscan(scan);
    pg_sys::UnregisterSnapshot(snap);
}
