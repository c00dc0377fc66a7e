#!/usr/bin/env bash
# The project's whole test run, as CI runs it:
#   formatting, lints, the Rust test suites, the published conformance
#   suite against stream-server in every storage mode and through auth-gateway,
#   the Kubernetes manifests' checks and the Docker stack test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }

# The gateway's tests (and its conformance run) create and drop their own
# databases on this Postgres server; the default is the local one with trust
# authentication.
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (whole workspace, all targets, warnings are errors)"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "sqlx query data (.sqlx/) matches the migrations"
# The gateway's queries are checked at compile time against .sqlx/ (see
# .cargo/config.toml); here that data is checked against a database the
# migrations build from scratch.
if ! command -v sqlx >/dev/null; then
  echo "installing sqlx-cli (first run only)"
  cargo install sqlx-cli --version 0.8.6 --locked --no-default-features --features postgres,rustls --quiet
fi
command -v psql >/dev/null || { echo "psql (PostgreSQL client) is required" >&2; exit 1; }
scratch="sqlx_check_$$"
scratch_url="${DATABASE_URL%/*}/$scratch"
psql "$DATABASE_URL" -qc "CREATE DATABASE $scratch"
trap 'psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS $scratch WITH (FORCE)" || true' EXIT
sqlx migrate run --source migrations --database-url "$scratch_url" >/dev/null
DATABASE_URL="$scratch_url" cargo sqlx prepare --workspace --check -- --workspace

step "Rust tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi

step "conformance suite"
for mode in ${CONFORMANCE_MODES:-memory file-fast file-durable acid gateway}; do
  tests/conformance/run.sh "$mode"
done

step "Kubernetes manifests (tests/deploy/run.sh)"
# Renders deploy/ and checks it without a cluster; installs its Python
# tools into target/deploy on first use.
tests/deploy/run.sh

step "the Docker stack (tests/stack/run.sh)"
# Installs and starts a Docker engine and Compose when missing (as root or
# with sudo). SKIP_STACK=1 skips it where no engine can run.
if [ "${SKIP_STACK:-0}" = 1 ]; then
  echo "skipped: SKIP_STACK=1"
else
  tests/stack/run.sh
fi
