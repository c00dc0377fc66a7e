#!/usr/bin/env bash
# The project's whole test run, as CI runs it:
#   formatting, lints, the Rust test suites, and the published conformance
#   suite against stream-server in every storage mode and through auth-gateway.
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
