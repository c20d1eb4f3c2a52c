//! Settled seqs: making "everything up to seq N" a stable notion.
//!
//! Seqs are drawn at pre-commit (D4), so a transaction with a higher seq can become visible
//! before one with a lower seq that is still finishing its commit. A reader that asks "what is
//! the newest seq?" must not be told N while some seq below N may still appear — a change feed
//! reading `seq > last_seen` would skip it, and AS OF N would not be repeatable.
//!
//! `settled_seq()` returns the newest seq N such that every seq ≤ N is settled (committed or
//! rolled back), waiting for the few that are in flight:
//! 1. take the allocation lock in share mode: every seq drawn so far now has its seq lock held
//!    by its transaction (or that transaction has ended); read the sequence's last value L;
//! 2. a seq still in flight is one of the newest `MaxBackends` drawn (each backend holds at
//!    most one): for each seq in that window with no visible commit row, wait on its seq lock;
//! 3. every seq ≤ L is now settled: return the newest committed one.
//! Commit rows are read with SnapshotSelf (latest committed state; no predicate locks, so
//! SERIALIZABLE readers do not conflict with writers over driftdb's bookkeeping).
use std::collections::HashSet;

use pgrx::pg_sys;
use pgrx::prelude::*;

use super::catalog::{self, Catalog, Order};
use super::commit::seq_lock_tag;

/// Committed seqs in `(lo, hi]`.
unsafe fn committed_seqs(cat: &Catalog, lo: i64, hi: i64) -> HashSet<i64> {
    let mut out = HashSet::new();
    let keys = [
        (1, pg_sys::BTGreaterStrategyNumber as u16, pg_sys::F_INT8GT, pg_sys::Datum::from(lo as usize)),
        (1, pg_sys::BTLessEqualStrategyNumber as u16, pg_sys::F_INT8LE, pg_sys::Datum::from(hi as usize)),
    ];
    catalog::scan(cat.commits, cat.commits_pkey, &keys, catalog::snapshot_self(), Order::Any, pg_sys::AccessShareLock, |tup, rel| {
        out.extend(catalog::attr(tup, rel, 1).map(|d| d.value() as i64));
        true
    });
    out
}

/// The sequence's last drawn value (0 if none was drawn yet).
unsafe fn last_drawn(cat: &Catalog) -> i64 {
    // pg_sequence_last_value checks the caller's privileges on the sequence, which PUBLIC
    // lacks; driftdb reads it for any role that may read a table's history, as the bootstrap
    // superuser (an ERROR restores the user id at abort).
    let (mut uid, mut ctx) = (pg_sys::InvalidOid, 0);
    pg_sys::GetUserIdAndSecContext(&mut uid, &mut ctx);
    pg_sys::SetUserIdAndSecContext(pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID), ctx | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32);
    let v = pgrx::direct_function_call::<i64>(pg_sys::pg_sequence_last_value, &[cat.commit_seq.into_datum()]).unwrap_or(0);
    pg_sys::SetUserIdAndSecContext(uid, ctx);
    v
}

/// The newest seq at or below which every seq is settled (see the module comment).
pub fn settled_seq(cat: &Catalog) -> i64 {
    settled_upto(cat, i64::MAX)
}

/// Like `settled_seq`, but waits only for seqs ≤ `upto`: returns the newest settled seq when
/// that is below `upto`, else `upto` itself once every seq up to it is settled. AS OF an old
/// seq does not wait for transactions committing newer ones.
pub fn settled_upto(cat: &Catalog, upto: i64) -> i64 {
    // SAFETY: heavyweight lock calls and catalog-style reads of driftdb's own tables.
    unsafe {
        let share = pg_sys::ShareLock as i32;
        pg_sys::LockDatabaseObject(cat.commits, pg_sys::Oid::from(0u32), 0, share);
        let last = last_drawn(cat);
        pg_sys::UnlockDatabaseObject(cat.commits, pg_sys::Oid::from(0u32), 0, share);
        if last == 0 {
            return 0;
        }
        let lo = (last - pg_sys::MaxBackends as i64).max(0);
        if upto <= lo {
            return upto; // below the in-flight window: settled
        }
        let seen = committed_seqs(cat, lo, last);
        for s in (lo + 1)..=last.min(upto) {
            if !seen.contains(&s) {
                let (objid, subid) = seq_lock_tag(s);
                pg_sys::LockDatabaseObject(cat.commits, objid, subid, share);
                pg_sys::UnlockDatabaseObject(cat.commits, objid, subid, share);
            }
        }
        if upto < last {
            return upto;
        }
        let seen = committed_seqs(cat, lo, last);
        match seen.iter().max() {
            Some(&m) => m,
            None => newest_committed_at_most(cat, lo),
        }
    }
}

/// The newest committed seq ≤ `hi` (all of them are settled: used below the in-flight window).
unsafe fn newest_committed_at_most(cat: &Catalog, hi: i64) -> i64 {
    let mut seq = 0;
    let keys = [(1, pg_sys::BTLessEqualStrategyNumber as u16, pg_sys::F_INT8LE, pg_sys::Datum::from(hi as usize))];
    catalog::scan(cat.commits, cat.commits_pkey, &keys, catalog::snapshot_self(), Order::Backward, pg_sys::AccessShareLock, |tup, rel| {
        seq = catalog::attr(tup, rel, 1).map_or(0, |d| d.value() as i64);
        false
    });
    seq
}

/// `driftdb._settled_seq()`: called by `driftdb.current_seq()` (SECURITY DEFINER: reading the
/// commit sequence needs privileges PUBLIC does not have).
#[pg_extern(name = "_settled_seq", volatile)]
fn settled_seq_sql() -> i64 {
    settled_seq(&Catalog::require())
}

extension_sql!(
    r#"
REVOKE EXECUTE ON FUNCTION driftdb._settled_seq() FROM PUBLIC;
-- The newest committed seq such that no lower seq can still appear (waits briefly for
-- transactions that drew a lower seq and are finishing their commit); 0 if none yet.
CREATE FUNCTION driftdb.current_seq() RETURNS bigint
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$ SELECT driftdb._settled_seq() $$;
COMMENT ON FUNCTION driftdb.current_seq() IS 'newest committed driftdb commit seq with every lower seq settled (0 if none)';
"#,
    name = "current_seq",
    requires = [settled_seq_sql]
);

/// The commit time of the first committed seq ≥ `seq` (with that seq), if any.
unsafe fn first_commit_from(cat: &Catalog, seq: i64) -> Option<(i64, i64)> {
    let mut found = None;
    let keys = [(1, pg_sys::BTGreaterEqualStrategyNumber as u16, pg_sys::F_INT8GE, pg_sys::Datum::from(seq as usize))];
    catalog::scan(cat.commits, cat.commits_pkey, &keys, catalog::snapshot_self(), Order::Forward, pg_sys::AccessShareLock, |tup, rel| {
        let s = catalog::attr(tup, rel, 1).map_or(0, |d| d.value() as i64);
        let t = catalog::attr(tup, rel, 2).map_or(0, |d| d.value() as i64);
        found = Some((s, t));
        false
    });
    found
}

/// The newest settled seq committed at or before `at` (µs since 2000-01-01 UTC): the state
/// AS OF that time.
pub fn seq_at(cat: &Catalog, at: i64) -> i64 {
    seq_at_upto(cat, at, settled_seq(cat))
}

thread_local! {
    /// (commits table OID, seq → commit time) of every commit a binary search has probed:
    /// commit times never change, so later searches start from the nearest known points.
    static TIMES: std::cell::RefCell<(pg_sys::Oid, std::collections::BTreeMap<i64, i64>)> =
        std::cell::RefCell::new((pg_sys::InvalidOid, std::collections::BTreeMap::new()));
}

/// The newest committed seq ≤ `top` (a settled seq) committed at or before `at`; 0 if none.
/// Commit times are non-decreasing in seq (D4), so this is a binary search over the seq index
/// — no index on commit time is needed — seeded with the commit times this backend knows.
pub fn seq_at_upto(cat: &Catalog, at: i64, top: i64) -> i64 {
    TIMES.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.0 != cat.commits || cell.1.len() > 1_000_000 {
            *cell = (cat.commits, std::collections::BTreeMap::new());
        }
        let known = &mut cell.1;
        // invariant: every committed seq ≤ lo has time ≤ at, lo is committed (or 0);
        //            every committed seq in [hi, top] has time > at
        let mut lo = 0i64;
        let mut hi = top + 1;
        if let Some((&s, _)) = known.range(..=top).rev().find(|(_, &t)| t <= at) {
            lo = s;
        }
        if lo >= top {
            return lo;
        }
        if let Some((&s, _)) = known.range(lo + 1..=top).find(|(_, &t)| t > at) {
            hi = s;
        }
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            // SAFETY: catalog-style read of driftdb.commits.
            match unsafe { first_commit_from(cat, mid) } {
                Some((s, t)) if s < hi => {
                    known.insert(s, t);
                    if t <= at {
                        lo = s;
                    } else {
                        hi = s;
                    }
                }
                _ => hi = mid, // no commit in [mid, hi)
            }
        }
        lo
    })
}

#[pg_extern(name = "_seq_at", volatile, strict)]
fn seq_at_sql(at: pgrx::datum::TimestampWithTimeZone) -> i64 {
    let micros: i64 = at.into_inner();
    seq_at(&Catalog::require(), micros)
}

extension_sql!(
    r#"
REVOKE EXECUTE ON FUNCTION driftdb._seq_at(timestamptz) FROM PUBLIC;
-- The newest seq committed at or before a time (0 if none): the state AS OF that time.
-- Like current_seq(), it waits for transactions still finishing a lower seq.
CREATE FUNCTION driftdb.seq_at(at timestamptz) RETURNS bigint
LANGUAGE sql VOLATILE STRICT SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$ SELECT driftdb._seq_at(at) $$;
COMMENT ON FUNCTION driftdb.seq_at(timestamptz) IS 'newest driftdb commit seq committed at or before the given time (0 if none)';
"#,
    name = "seq_at",
    requires = [seq_at_sql]
);
