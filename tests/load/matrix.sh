#!/usr/bin/env bash
# Runs the standard ds-load matrix against stream-server in every storage
# mode and, when available, against peer servers, and writes the results:
#
#   tests/load/matrix.sh                    # everything, 10 s per run
#   DURATION=3s PEERS=0 tests/load/matrix.sh
#   ROUNDS=3 DURATION=5s tests/load/matrix.sh   # the whole matrix 3 times
#
# Results go to RESULTS_DIR (default target/load-results/<timestamp>/):
#   results.jsonl   one JSON record per run, as ds-load --json writes them
#                   (append runs include the server's CPU time per append)
#   results.json    the same records as one JSON array
#   results.md      a markdown table of every run
#   chart.svg       throughput and p99 latency per target and case
#   machine.txt     where and when the matrix ran
#   logs/           each server's log (logs/round-N/ with several rounds)
#
# Settings (environment):
#   DURATION            load time of each run [10s]
#   ROUNDS              times the whole matrix runs, one round after the
#                       other, so each target's runs are spread over the
#                       session [1]; tables and chart give each figure's
#                       median over the rounds, and the throughput's range
#   MODES               stream-server storage modes (empty: none)
#                       ["memory file-fast file-durable acid"]
#   SCENARIOS           runs per target (empty: none)
#                       ["append16 append64 read live100 live1000 churn"]
#   LIVE_RATE           writer rate of the live runs, messages/s [100]
#   FANOUT_SUBSCRIBERS  also run fanout with this many SSE subscribers [0 = no]
#   PEERS               peers to measure too: any of node, electric, ds030;
#                       0 for none ["node electric ds030"]
#   EXTRA_TARGETS       more targets as "label=url ..." (already running)
#   DS_LOAD_TOKEN       bearer token for every request (e.g. for a gateway)
#   RESULTS_DIR         where results go
#
# Peers are installed into target/peers/ when missing (npm and cargo
# install; the cargo ones compile for a few minutes). A peer whose install
# or start fails is skipped with a message. Nothing of theirs is committed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

DURATION="${DURATION:-10s}"
ROUNDS="${ROUNDS:-1}"
MODES="${MODES-memory file-fast file-durable acid}"
SCENARIOS="${SCENARIOS-append16 append64 read live100 live1000 churn}"
LIVE_RATE="${LIVE_RATE:-100}"
FANOUT_SUBSCRIBERS="${FANOUT_SUBSCRIBERS:-0}"
PEERS="${PEERS:-node electric ds030}"
[ "$PEERS" = "0" ] && PEERS=""
[ "$PEERS" = "1" ] && PEERS="node electric ds030"
EXTRA_TARGETS="${EXTRA_TARGETS:-}"
RESULTS_DIR="${RESULTS_DIR:-$root/target/load-results/$(date +%Y%m%d-%H%M%S)}"

NODE_PEER_VERSION="${NODE_PEER_VERSION:-0.3.7}"
ELECTRIC_PEER_VERSION="${ELECTRIC_PEER_VERSION:-0.1.5}"
DS030_PEER_VERSION="${DS030_PEER_VERSION:-0.3.0}"

peers_dir="$root/target/peers"
results="$RESULTS_DIR/results.jsonl"
logs="$RESULTS_DIR/logs"
ds_load="$root/target/release/ds-load"
failures=0

say() { echo "matrix: $*" >&2; }

case "$ROUNDS" in
  '' | *[!0-9]* | 0) say "ROUNDS must be a whole number of at least 1, not '$ROUNDS'"; exit 1 ;;
esac

mkdir -p "$logs"
# Thousands of connections need file descriptors, in ds-load and servers.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || say "could not raise the open-files limit ($(ulimit -n))"

say "building ds-load, stream-server and auth-gateway (release)"
# The same packages as gateway.sh builds: cargo unifies dependency features
# over the packages of one build, so another set would rebuild them all.
(cd "$root" && cargo build --quiet --release -p stream-server -p auth-gateway -p ds-load)

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "git: $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "host: $(uname -srm), $(nproc) cores, $(free -h | awk '/^Mem:/ {print $2}') memory"
  echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "duration per run: $DURATION"
  echo "rounds: $ROUNDS"
  echo "scenarios: $SCENARIOS"
  echo "open-files limit: $(ulimit -n)"
} >"$RESULTS_DIR/machine.txt"

# --- servers ---------------------------------------------------------------

server_pid=""
scratch=""

stop_server() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$server_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  server_pid=""
  if [ -n "$scratch" ]; then rm -rf "$scratch"; fi
  scratch=""
}
trap stop_server EXIT

# A loopback port nothing listens on, below the ephemeral range (where
# ds-load's own connections, and their TIME_WAIT leftovers, take ports).
free_port() {
  local low high port
  read -r low high </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || low=32768
  [ "$low" -gt 11000 ] || low=32768
  for _ in $(seq 1 100); do
    port=$((10000 + RANDOM % (low - 10000)))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return 0
    fi
  done
  return 1
}

# Waits until the server at URL can create and delete a stream; fails at
# once if the server process (PID) has exited.
wait_ready() {
  local label="$1" url="$2" pid="$3"
  for _ in $(seq 1 30); do
    if ! kill -0 "$pid" 2>/dev/null; then
      say "$label exited during startup (log: $logs/$label.log):"
      tail -5 "$logs/$label.log" >&2 || true
      return 1
    fi
    "$ds_load" wait --url "$url" --timeout 1s >/dev/null 2>&1 && return 0
  done
  say "$label did not become ready at $url within 30 s (log: $logs/$label.log)"
  tail -5 "$logs/$label.log" >&2 || true
  return 1
}

# --- scenarios -------------------------------------------------------------

# Runs every scenario against one target.
run_scenarios() {
  local label="$1" url="$2" pid="${3:-}"
  local common=(--url "$url" --label "$label" --duration "$DURATION" --json "$results" --quiet)
  # With the server's pid, append runs also record its CPU time per append.
  local server=()
  [ -n "$pid" ] && server=(--server-pid "$pid")
  say "$label ($url)"
  for scenario in $SCENARIOS; do
    local args
    case "$scenario" in
      append16) args=(append --connections 16 --streams 16 --body-size 256 "${server[@]}") ;;
      append64) args=(append --connections 64 --streams 64 --body-size 256 "${server[@]}") ;;
      read) args=(read --stream-size 1MiB --connections 8) ;;
      live100) args=(live --transport sse --subscribers 100 --rate "$LIVE_RATE") ;;
      live1000) args=(live --transport sse --subscribers 1000 --rate "$LIVE_RATE") ;;
      churn) args=(churn --connections 8) ;;
      *)
        say "unknown scenario $scenario"
        failures=$((failures + 1))
        continue
        ;;
    esac
    if ! "$ds_load" "${args[@]}" "${common[@]}" >>"$logs/$label.ds-load.txt" 2>&1; then
      say "$label: $scenario failed (see $logs/$label.ds-load.txt)"
      failures=$((failures + 1))
    fi
  done
  if [ "$FANOUT_SUBSCRIBERS" -gt 0 ]; then
    if ! "$ds_load" fanout --subscribers "$FANOUT_SUBSCRIBERS" "${server[@]}" "${common[@]}" \
      >>"$logs/$label.ds-load.txt" 2>&1; then
      say "$label: fanout failed (see $logs/$label.ds-load.txt)"
      failures=$((failures + 1))
    fi
  fi
}

# --- our server --------------------------------------------------------------

measure_ours() {
  for mode in $MODES; do
    label="ours-$mode"
    scratch="$(mktemp -d)"
    log="$logs/$label.log"
    DS_SERVER__HOST=127.0.0.1 \
    DS_SERVER__PORT=0 \
    DS_STORAGE__MODE="$mode" \
    DS_STORAGE__DATA_DIR="$scratch/data" \
    NO_COLOR=1 \
    RUST_LOG=stream_server=info \
      "$root/target/release/stream-server" >"$log" 2>&1 &
    server_pid=$!
    url=""
    for _ in $(seq 1 100); do
      url="$(sed -n 's|.*listening on \(http://[^ ]*\).*|\1|p' "$log" | head -n 1)"
      [ -n "$url" ] && break
      kill -0 "$server_pid" 2>/dev/null || break
      sleep 0.1
    done
    if [ -z "$url" ]; then
      say "stream-server ($mode) did not report its address; skipping it"
      tail -5 "$log" >&2 || true
      failures=$((failures + 1))
    elif wait_ready "$label" "$url" "$server_pid"; then
      run_scenarios "$label" "$url" "$server_pid"
    else
      failures=$((failures + 1))
    fi
    stop_server
  done
}

# --- peers -------------------------------------------------------------------

install_node_peer() {
  [ -d "$peers_dir/node/node_modules/@durable-streams/server" ] && return 0
  command -v npm >/dev/null || { say "npm not found"; return 1; }
  say "installing @durable-streams/server@$NODE_PEER_VERSION into target/peers/node (npm)"
  mkdir -p "$peers_dir/node"
  (cd "$peers_dir/node" && npm install --no-audit --no-fund --prefix . \
    "@durable-streams/server@$NODE_PEER_VERSION") >"$logs/install-node.log" 2>&1
}

install_cargo_peer() {
  local crate="$1" version="$2" dir="$3"
  [ -x "$peers_dir/$dir/bin/durable-streams-server" ] && return 0
  say "installing crates.io $crate $version into target/peers/$dir (cargo install, a few minutes)"
  cargo install "$crate" --version "$version" --root "$peers_dir/$dir" \
    >"$logs/install-$dir.log" 2>&1
}

# Starts a peer and runs the scenarios against it:
#   measure_peer LABEL URL command...
# where @PORT@ in URL and the command stands for a free port. A peer that
# exits during startup (say, its port was taken meanwhile) gets two more
# tries on other ports.
measure_peer() {
  local label="$1" url_template="$2"
  shift 2
  local attempt port url command
  for attempt in 1 2 3; do
    port="$(free_port)"
    url="${url_template//@PORT@/$port}"
    command=("${@//@PORT@/$port}")
    scratch="$(mktemp -d)"
    command=("${command[@]//@DATA@/$scratch/data}")
    "${command[@]}" >"$logs/$label.log" 2>&1 &
    server_pid=$!
    if wait_ready "$label" "$url" "$server_pid"; then
      run_scenarios "$label" "$url" "$server_pid"
      stop_server
      return 0
    fi
    if kill -0 "$server_pid" 2>/dev/null; then
      break # running but not answering: another port will not help
    fi
    stop_server
    [ "$attempt" -lt 3 ] && say "$label: trying another port"
  done
  stop_server
  say "skipping $label"
  failures=$((failures + 1))
}

measure_peers() {
  for peer in $PEERS; do
    case "$peer" in
      node)
        if ! install_node_peer; then
          say "could not install the Node reference server; skipping it (log: $logs/install-node.log)"
          continue
        fi
        measure_peer node-memory "http://127.0.0.1:@PORT@" \
          node "$here/peers/node-server.mjs" --prefix "$peers_dir/node" --port @PORT@
        measure_peer node-file "http://127.0.0.1:@PORT@" \
          node "$here/peers/node-server.mjs" --prefix "$peers_dir/node" --port @PORT@ --data-dir @DATA@
        ;;
      electric)
        if ! install_cargo_peer durable-streams "$ELECTRIC_PEER_VERSION" electric; then
          say "could not install durable-streams $ELECTRIC_PEER_VERSION; skipping it (log: $logs/install-electric.log)"
          continue
        fi
        for durability in wal memory; do
          measure_peer "electric-$durability" "http://127.0.0.1:@PORT@" \
            "$peers_dir/electric/bin/durable-streams-server" --host 127.0.0.1 --port @PORT@ \
            --data-dir @DATA@ --durability "$durability"
        done
        ;;
      ds030)
        if ! install_cargo_peer durable-streams-server "$DS030_PEER_VERSION" ds030; then
          say "could not install durable-streams-server $DS030_PEER_VERSION; skipping it (log: $logs/install-ds030.log)"
          continue
        fi
        for mode in memory acid; do
          # Its default limits (100 MB in memory, 10 MiB per stream) would end
          # the append runs early; ours are 4 GiB and none.
          measure_peer "ds030-$mode" "http://127.0.0.1:@PORT@/v1/stream" \
            env DS_SERVER__BIND_ADDRESS="127.0.0.1:@PORT@" \
            DS_STORAGE__MODE="$mode" DS_STORAGE__DATA_DIR=@DATA@ \
            DS_LIMITS__MAX_MEMORY_BYTES=4294967296 DS_LIMITS__MAX_STREAM_BYTES=1073741824 \
            DS_OBSERVABILITY__RUST_LOG=warn RUST_LOG=warn NO_COLOR=1 \
            "$peers_dir/ds030/bin/durable-streams-server"
        done
        ;;
      *) say "unknown peer $peer (known: node electric ds030)" ;;
    esac
  done
}

# --- extra targets -------------------------------------------------------------

measure_extra_targets() {
  for target in $EXTRA_TARGETS; do
    label="${target%%=*}"
    url="${target#*=}"
    if [ "$label" = "$target" ] || [ -z "$url" ]; then
      say "EXTRA_TARGETS entries look like label=url, not $target"
      failures=$((failures + 1))
      continue
    fi
    if "$ds_load" wait --url "$url" --timeout 30s >/dev/null; then
      run_scenarios "$label" "$url"
    else
      say "$label is not ready at $url; skipping it"
      failures=$((failures + 1))
    fi
  done
}

# --- rounds --------------------------------------------------------------------

for round in $(seq 1 "$ROUNDS"); do
  if [ "$ROUNDS" -gt 1 ]; then
    say "round $round of $ROUNDS"
    logs="$RESULTS_DIR/logs/round-$round"
    mkdir -p "$logs"
  fi
  measure_ours
  measure_peers
  measure_extra_targets
done

# --- results -------------------------------------------------------------------

if [ ! -s "$results" ]; then
  say "no run produced results"
  exit 1
fi
title="ds-load matrix, $DURATION per run ($(date -u +%Y-%m-%d))"
[ "$ROUNDS" -gt 1 ] && title="ds-load matrix, median of $ROUNDS rounds, $DURATION per run ($(date -u +%Y-%m-%d))"
"$ds_load" chart --title "$title" \
  --out "$RESULTS_DIR/chart.svg" --markdown "$RESULTS_DIR/results.md" \
  --combined "$RESULTS_DIR/results.json" "$results" >/dev/null
cat "$RESULTS_DIR/results.md"
say "results in $RESULTS_DIR ($(wc -l <"$results") runs, $failures failures)"
[ "$failures" -eq 0 ]
