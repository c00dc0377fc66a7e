#!/usr/bin/env bash
# Runs the Durable Streams conformance suite against stream-server.
#
#   tests/conformance/run.sh [MODE]
#
# MODE is a storage mode (memory, file-fast, file-durable, acid; default
# memory), or `gateway`: stream-server (memory) behind auth-gateway, with the
# suite sending a token that holds read, write, delete and subscribe on every
# stream.
# The gateway mode needs Postgres at DATABASE_URL (default
# postgres://postgres@127.0.0.1:5432/postgres); it creates and drops a scratch
# database there when psql is available.
#
# Servers start on free loopback ports with a 1-second long-poll timeout and
# scratch data directories; the script waits until they are ready, runs the
# suite, stops them and prints the suite's summary.
# Set CONFORMANCE_BASE_URL (and CONFORMANCE_TOKEN if it needs one) to test an
# already running server instead; then nothing is built or started.
set -euo pipefail

mode="${1:-memory}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
profile="${CARGO_PROFILE:-debug}"

if [ ! -d "$here/node_modules/@durable-streams/server-conformance-tests" ]; then
  echo "conformance: installing the pinned suite (npm ci)"
  (cd "$here" && npm ci --no-audit --no-fund)
fi

pids=()
work_dir="$(mktemp -d)"
scratch_db=""
database_url="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
cleanup() {
  for pid in "${pids[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  done
  if [ -n "$scratch_db" ]; then
    psql -q "$database_url" -c "DROP DATABASE IF EXISTS $scratch_db WITH (FORCE)" >/dev/null 2>&1 || true
  fi
  rm -rf "$work_dir"
}
trap cleanup EXIT

# start VAR NAME LOG COMMAND... — runs COMMAND in the background, waits until
# it logs "listening on <url>" and answers /readyz, and sets VAR to the URL.
# (Not called in a subshell, so cleanup knows every pid.)
start() {
  local var="$1" name="$2" log="$3"
  shift 3
  NO_COLOR=1 "$@" >"$log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  local url=""
  for _ in $(seq 1 300); do
    if [ -z "$url" ]; then
      url="$(sed -n 's/\x1b\[[0-9;]*m//g; s|.*listening on \(http://[^/ ]*\).*|\1|p' "$log" | head -n 1)"
    fi
    if [ -n "$url" ] && curl -fsS "$url/readyz" >/dev/null 2>&1; then
      printf -v "$var" '%s' "$url"
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "conformance: $name exited during startup:" >&2
      cat "$log" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "conformance: $name did not become ready:" >&2
  cat "$log" >&2
  return 1
}

if [ -z "${CONFORMANCE_BASE_URL:-}" ]; then
  storage="$mode"
  [ "$mode" = "gateway" ] && storage="memory"
  packages=(-p stream-server)
  [ "$mode" = "gateway" ] && packages+=(-p auth-gateway)
  cargo_flags=()
  [ "$profile" = "release" ] && cargo_flags+=(--release)
  (cd "$root" && cargo build --quiet "${packages[@]}" "${cargo_flags[@]}")

  # The suite's webhook receivers listen on 127.0.0.1 over http; behind
  # the gateway, callback URLs must name the gateway (X-Forwarded-Host).
  trust_forwarded=false
  [ "$mode" = "gateway" ] && trust_forwarded=true
  server_url=""
  start server_url stream-server "$work_dir/stream-server.log" env \
    DS_SERVER__HOST=127.0.0.1 \
    DS_SERVER__PORT=0 \
    DS_SERVER__LONG_POLL_TIMEOUT_SECS=1 \
    DS_SUBSCRIPTIONS__ALLOW_INSECURE_LOCAL_WEBHOOKS=true \
    DS_HTTP__TRUST_FORWARDED_HEADERS="$trust_forwarded" \
    DS_STORAGE__MODE="$storage" \
    DS_STORAGE__DATA_DIR="$work_dir/data" \
    RUST_LOG="${RUST_LOG:-stream_server=info}" \
    "$root/target/$profile/stream-server"
  echo "conformance: stream-server ($storage) at $server_url"
  CONFORMANCE_BASE_URL="$server_url"

  if [ "$mode" = "gateway" ]; then
    gateway="$root/target/$profile/auth-gateway"
    gateway_db_url="$database_url"
    if command -v psql >/dev/null; then
      scratch_db="ds_conformance_$$"
      psql -q "$database_url" -c "CREATE DATABASE $scratch_db" >/dev/null
      gateway_db_url="${database_url%/*}/$scratch_db"
    else
      echo "conformance: psql not found; using DATABASE_URL's database for the token table"
    fi
    "$gateway" keygen >"$work_dir/gateway-key.pem"
    export DATABASE_URL="$gateway_db_url" GW_JWT__KEY_FILE="$work_dir/gateway-key.pem"
    "$gateway" migrate
    CONFORMANCE_TOKEN="$("$gateway" token create --subject conformance \
      --scope read --scope write --scope delete --scope subscribe --stream '**' --ttl 2h \
      --description "conformance run")"
    export CONFORMANCE_TOKEN
    start CONFORMANCE_BASE_URL auth-gateway "$work_dir/auth-gateway.log" env \
      GW_SERVER__HOST=127.0.0.1 \
      GW_SERVER__PORT=0 \
      GW_UPSTREAM__URL="$server_url" \
      GW_LIMITS__RATE_PER_SECOND=0 \
      RUST_LOG="${RUST_LOG:-auth_gateway=info}" \
      "$gateway"
    echo "conformance: auth-gateway at $CONFORMANCE_BASE_URL"
  fi
  export CONFORMANCE_BASE_URL
fi

# The subscription tests (§6–7) run unless CONFORMANCE_SUBSCRIPTIONS=0.
export CONFORMANCE_SUBSCRIPTIONS="${CONFORMANCE_SUBSCRIPTIONS:-1}"
cd "$here"
log_file="$work_dir/vitest.log"
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
if [ "$failed" != 0 ] || [ "$status" != 0 ]; then
  # What the services said (a crash, a refusal) is often the answer.
  for log in "$work_dir"/stream-server.log "$work_dir"/auth-gateway.log; do
    [ -f "$log" ] || continue
    echo "conformance: the last lines of $(basename "$log"):"
    tail -n 40 "$log"
  done
fi
echo "conformance ($mode): $passed passed, $failed failed, $skipped skipped"
if [ "$status" -eq 0 ] && [ "$passed" -eq 0 ]; then
  echo "conformance: the suite ran no test" >&2
  status=1
fi
exit "$status"
