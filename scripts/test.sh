#!/usr/bin/env bash
# test.sh — every driftdb test tier, in order, from a fresh machine or a warm one:
#   1. core      pure-Rust unit tests of the storage core (cargo test -p driftdb-core)
#   2. pg_test   #[pg_test] in-backend tests (cargo pgrx test)
#   3. regress   SQL golden files (cargo pgrx regress, tests/pg_regress/)
#   4. pytest    integration tests against throwaway clusters (tests/integration/)
#      pytest_packed  the history readers' tests again with driftdb.pack_min_events = 2, so
#                     that nearly every multi-row transaction's history is stored as packs
#   5. isolation PostgreSQL isolation specs for concurrency semantics (tests/isolation/)
#   6. pgsuite   PostgreSQL's own regression suite, heap vs default_table_access_method=driftdb
# Usage: scripts/test.sh [tier ...]   (default: all). Exits non-zero if any tier fails.
set -uo pipefail
source "$(dirname "$0")/lib.sh"
set +e

TIERS=("$@"); [ ${#TIERS[@]} -gt 0 ] || TIERS=(core pg_test regress pytest pytest_packed isolation pgsuite)
LIBDIR=$($PG_CONFIG --pkglibdir)
RUNAS=$(server_user)
PGRX_RUNAS=(); [ "$(id -u)" = 0 ] && PGRX_RUNAS=(--runas "$RUNAS")

install_deps || exit 1
install_python || exit 1

# cargo pgrx test/regress copy driftdb.so over the installed file in place; unlink it first so
# that running servers (which have it mapped) are not disturbed.
unlink_so() { $SUDO rm -f "$LIBDIR/driftdb.so"; }

tier_core()    { (cd "$ROOT" && cargo test -p driftdb-core --quiet); }
tier_pg_test() { unlink_so; (cd "$ROOT" && cargo pgrx test pg15 "${PGRX_RUNAS[@]}" --pgdata /tmp/driftdb-pgtest); }
tier_regress() {
  if [ "$(id -u)" = 0 ]; then
    bash "$ROOT/tests/pg_regress/run.sh"      # same golden files, pg_regress as the server's user
  else
    unlink_so
    (cd "$ROOT" && cargo pgrx regress pg15 --resetdb --postgresql-conf "shared_preload_libraries='driftdb'" --postgresql-conf "driftdb.maintenance_naptime=0")
  fi
}
tier_pytest()  { (cd "$ROOT" && "$VENV/bin/pytest" -q -p no:cacheprovider tests/integration); }
PACKED_FILES=(test_time_travel_model test_time_travel_ranges test_time_travel_api test_segments
              test_history_capture test_history_concurrency test_history_dump test_history_ddl
              test_history_identity)
tier_pytest_packed() {
  local files=() f
  for f in "${PACKED_FILES[@]}"; do files+=("tests/integration/$f.py"); done
  (cd "$ROOT" && DRIFTDB_EXTRA_CONF="driftdb.pack_min_events = 2" \
     "$VENV/bin/pytest" -q -p no:cacheprovider "${files[@]}")
}
tier_isolation() {
  if [ -x "$ROOT/tests/isolation/run.sh" ]; then bash "$ROOT/tests/isolation/run.sh"; else echo "no isolation specs yet"; fi
}
tier_pgsuite() { PGSUITE_REQUIRE_DRIFTDB=1 bash "$ROOT/tests/pg_suite/run.sh"; }

# DRIFTDB_TEST_DISK_REPORT=1 (.ci/run sets it): free space before the tiers and after each one
disk_report() {
  [ "${DRIFTDB_TEST_DISK_REPORT:-0}" = 1 ] || return 0
  log "disk $1: $(df -h --output=avail /tmp | tail -1 | tr -d ' ') free in /tmp, $(df -h --output=avail "$ROOT" | tail -1 | tr -d ' ') beside the checkout; target $(du -sh "$ROOT/target" 2>/dev/null | cut -f1)"
}
disk_report "before the tiers"

passed=(); failed=()
for t in "${TIERS[@]}"; do
  case "$t" in
    pytest|pytest_packed|isolation|pgsuite|regress)
      # these run against the release build installed by build_and_install
      [ -n "${_INSTALLED:-}" ] || { build_and_install || exit 1; _INSTALLED=1; } ;;
    *) _INSTALLED= ;;
  esac
  log "tier: $t"
  if "tier_$t"; then passed+=("$t"); else failed+=("$t"); log "tier $t FAILED"; fi
  disk_report "after $t"
done
# leave the release build installed (pg_test/regress install a test build)
[ -n "${_INSTALLED:-}" ] || build_and_install >/dev/null 2>&1

echo
echo "tiers passed: ${passed[*]:-none}"
echo "tiers failed: ${failed[*]:-none}"
echo "tiers: ${#passed[@]} passed, ${#failed[@]} failed"
[ ${#failed[@]} -eq 0 ]
