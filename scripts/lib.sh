# lib.sh — shared steps for scripts/setup.sh and scripts/test.sh (sourced, not run).
# Every step is idempotent: it checks first and does nothing when the work is already done.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
PGBIN=/usr/lib/postgresql/15/bin
PGRX_VERSION=0.18.0
export PATH="$HOME/.cargo/bin:$PATH"

if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi

log() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }

# Debian packages: PostgreSQL 15 server and headers, clang for pgrx's bindgen, the periods
# extension (benchmark peer), Python venv for the integration tests, dpkg-dev for apt-get source.
DEB_PACKAGES=(postgresql-15 postgresql-server-dev-15 postgresql-client-15 postgresql-15-periods
  clang libclang-dev sudo python3-venv python3-pip dpkg-dev build-essential pkg-config
  libssl-dev bison flex libreadline-dev zlib1g-dev curl ca-certificates)

install_deps() {
  local missing=()
  for p in "${DEB_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  if ! command -v cargo >/dev/null; then
    echo "cargo (Rust) is required: install Rust with rustup first" >&2; exit 1
  fi
  if [ "$(cargo pgrx --version 2>/dev/null | awk '{print $2}')" != "$PGRX_VERSION" ]; then
    log "installing cargo-pgrx $PGRX_VERSION (about 5 minutes)"
    cargo install cargo-pgrx --version "$PGRX_VERSION" --locked --quiet
  fi
  if ! grep -qs "pg15 = \"$PG_CONFIG\"" "$HOME/.pgrx/config.toml"; then
    log "cargo pgrx init (PostgreSQL 15 from Debian)"
    cargo pgrx init --pg15 "$PG_CONFIG" >/dev/null
  fi
}

# Python environment for the integration tests and benchmark scripts.
VENV="$ROOT/.venv"
install_python() {
  if [ ! -x "$VENV/bin/pytest" ] || ! "$VENV/bin/python" -c 'import psycopg, pytest' 2>/dev/null; then
    log "creating Python venv with pytest and psycopg"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r "$ROOT/tests/integration/requirements.txt"
  fi
}

# Build the release extension and install it into PostgreSQL 15. Files are replaced by rename,
# never overwritten in place, so servers that have the old driftdb.so mapped keep running.
build_and_install() {
  log "building driftdb (release)"
  (cd "$ROOT" && cargo pgrx package --pg-config "$PG_CONFIG" >/dev/null)
  local out="$ROOT/target/release/driftdb-pg15"
  local libdir sharedir
  libdir=$($PG_CONFIG --pkglibdir); sharedir=$($PG_CONFIG --sharedir)/extension
  for f in "$out$libdir"/*.so; do
    $SUDO cp "$f" "$libdir/.$(basename "$f").new" && $SUDO mv -f "$libdir/.$(basename "$f").new" "$libdir/$(basename "$f")"
  done
  for f in "$out$sharedir"/*; do
    $SUDO cp "$f" "$sharedir/.$(basename "$f").new" && $SUDO mv -f "$sharedir/.$(basename "$f").new" "$sharedir/$(basename "$f")"
  done
  log "installed driftdb into $libdir and $sharedir"
}

# The OS user that runs servers: postgres when we are root (PostgreSQL refuses root).
server_user() { if [ "$(id -u)" = 0 ]; then echo postgres; else id -un; fi; }

# A data directory the server's OS user can reach. Prefer the given path inside the project;
# when a parent directory is closed to that user (e.g. a checkout under /root), keep the data in
# /var/tmp and leave a symlink at the requested path.
reachable_datadir() {
  local want=$1 user
  user=$(server_user)
  mkdir -p "$(dirname "$want")"
  if [ "$user" = "$(id -un)" ] || runuser -u "$user" -- test -x "$(dirname "$want")" 2>/dev/null; then
    echo "$want"; return
  fi
  local alt="/var/tmp/driftdb-$(echo "$want" | md5sum | cut -c1-8)"
  mkdir -p "$alt"; chown "$user" "$alt"
  [ -L "$want" ] || ln -sfn "$alt" "$want"
  echo "$alt/data"
}
