#!/usr/bin/env bash
# Runs the Durable Streams conformance suite against stream-server.
#
#   tests/conformance/run.sh [STORAGE_MODE]      (default: memory)
#
# Builds the server, starts it on a free loopback port with a 1-second
# long-poll timeout and a scratch data directory, waits until /readyz
# answers, runs the suite, stops the server and prints the suite's summary.
# Set CONFORMANCE_BASE_URL to test an already running server instead
# (the gateway, for example); then nothing is built or started.
set -euo pipefail

mode="${1:-memory}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
profile="${CARGO_PROFILE:-debug}"

if [ ! -d "$here/node_modules/@durable-streams/server-conformance-tests" ]; then
  echo "conformance: installing the pinned suite (npm ci)"
  (cd "$here" && npm ci --no-audit --no-fund)
fi

server_pid=""
data_dir=""
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  [ -n "$data_dir" ] && rm -rf "$data_dir"
}
trap cleanup EXIT

if [ -z "${CONFORMANCE_BASE_URL:-}" ]; then
  cargo_flags=()
  [ "$profile" = "release" ] && cargo_flags+=(--release)
  (cd "$root" && cargo build --quiet -p stream-server "${cargo_flags[@]}")
  data_dir="$(mktemp -d)"
  log="$data_dir/server.log"
  # Port 0: the server picks a free port and logs where it listens.
  DS_SERVER__HOST=127.0.0.1 \
  DS_SERVER__PORT=0 \
  DS_SERVER__LONG_POLL_TIMEOUT_SECS=1 \
  DS_STORAGE__MODE="$mode" \
  DS_STORAGE__DATA_DIR="$data_dir/data" \
  NO_COLOR=1 \
  RUST_LOG="${RUST_LOG:-stream_server=info}" \
    "$root/target/$profile/stream-server" >"$log" 2>&1 &
  server_pid=$!
  CONFORMANCE_BASE_URL=""
  for _ in $(seq 1 100); do
    if [ -z "$CONFORMANCE_BASE_URL" ]; then
      CONFORMANCE_BASE_URL="$(sed -n 's/\x1b\[[0-9;]*m//g; s|.*listening on \(http://[^/ ]*\).*|\1|p' "$log" | head -n 1)"
    fi
    if [ -n "$CONFORMANCE_BASE_URL" ] && curl -fsS "$CONFORMANCE_BASE_URL/readyz" >/dev/null 2>&1; then break; fi
    if ! kill -0 "$server_pid" 2>/dev/null; then
      echo "conformance: stream-server exited during startup:" >&2
      cat "$log" >&2
      exit 1
    fi
    sleep 0.1
  done
  if [ -z "$CONFORMANCE_BASE_URL" ]; then
    echo "conformance: stream-server did not report its address:" >&2
    cat "$log" >&2
    exit 1
  fi
  export CONFORMANCE_BASE_URL
  echo "conformance: stream-server ($mode) at $CONFORMANCE_BASE_URL"
fi

cd "$here"
log_file="$(mktemp)"
status=0
NO_COLOR=1 FORCE_COLOR=0 npx vitest run >"$log_file" 2>&1 || status=$?
sed -i "s/\x1b\[[0-9;]*m//g" "$log_file"
# Failures in full, then the suite's own summary and one plain closing line.
grep -E '^\s*(×|FAIL|AssertionError|Error:)' "$log_file" | head -200 || true
grep -E '^\s*(Test Files|Tests|Duration)\s' "$log_file" || tail -20 "$log_file"
summary="$(grep -E '^\s*Tests\s' "$log_file" || true)"
passed="$(grep -oE '[0-9]+ passed' <<<"$summary" | grep -oE '[0-9]+' || echo 0)"
failed="$(grep -oE '[0-9]+ failed' <<<"$summary" | grep -oE '[0-9]+' || echo 0)"
skipped="$(grep -oE '[0-9]+ skipped' <<<"$summary" | grep -oE '[0-9]+' || echo 0)"
rm -f "$log_file"
echo "conformance ($mode): $passed passed, $failed failed, $skipped skipped"
if [ "$status" -eq 0 ] && [ "$passed" -eq 0 ]; then
  echo "conformance: the suite ran no test" >&2
  status=1
fi
exit "$status"
