#!/usr/bin/env bash
# What auth-gateway costs: the same ds-load appends sent straight to
# stream-server (memory mode) and through the gateway in front of it, with a
# warm token cache.
#
#   tests/load/gateway.sh                 # 10 s per run
#   DURATION=5s tests/load/gateway.sh
#
# Runs, each direct and through the gateway:
#   latency     1 connection, 1 stream, 256-byte appends: the latency the gateway
#               adds (p50, p99) without queueing
#   throughput  16 connections x 16 streams, 256-byte appends
#   read        full catch-up reads of a 1 MiB stream, 8 connections
# Needs Postgres at DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres)
# and psql; a scratch database is created and dropped. Results (JSON lines, a
# markdown table with the ratios) go to RESULTS_DIR
# (default target/load-results/gateway-<timestamp>/).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
DURATION="${DURATION:-10s}"
RESULTS_DIR="${RESULTS_DIR:-$root/target/load-results/gateway-$(date +%Y%m%d-%H%M%S)}"
database_url="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
say() { echo "gateway bench: $*" >&2; }

command -v psql >/dev/null || { say "psql is required (to create a scratch database)"; exit 1; }
mkdir -p "$RESULTS_DIR"
work="$(mktemp -d)"
pids=()
scratch_db="ds_gateway_bench_$$"
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  psql -q "$database_url" -c "DROP DATABASE IF EXISTS $scratch_db WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

say "building release binaries"
(cd "$root" && cargo build --quiet --release -p stream-server -p auth-gateway -p ds-load)
bin="$root/target/release"

# start VAR LOG COMMAND... — background COMMAND, wait for "listening on <url>"
# and /readyz, set VAR to the URL.
start() {
  local var="$1" log="$2"
  shift 2
  NO_COLOR=1 "$@" >"$log" 2>&1 &
  pids+=("$!")
  local url=""
  for _ in $(seq 1 300); do
    [ -z "$url" ] && url="$(sed -n 's|.*listening on \(http://[^/ ]*\).*|\1|p' "$log" | head -n 1)"
    if [ -n "$url" ] && curl -fsS "$url/readyz" >/dev/null 2>&1; then
      printf -v "$var" '%s' "$url"
      return 0
    fi
    sleep 0.1
  done
  say "$log:"; cat "$log" >&2; return 1
}

server=""
start server "$work/stream-server.log" env DS_SERVER__PORT=0 RUST_LOG=stream_server=warn,stream_server::server=info "$bin/stream-server"
psql -q "$database_url" -c "CREATE DATABASE $scratch_db" >/dev/null
export DATABASE_URL="${database_url%/*}/$scratch_db" GW_JWT__KEY_FILE="$work/key.pem"
"$bin/auth-gateway" keygen >"$GW_JWT__KEY_FILE"
"$bin/auth-gateway" migrate 2>/dev/null
token="$("$bin/auth-gateway" token create --subject bench --scope read --scope write \
  --scope delete --stream '**' --ttl 2h 2>/dev/null)"
gateway=""
start gateway "$work/auth-gateway.log" env GW_SERVER__PORT=0 GW_UPSTREAM__URL="$server" \
  GW_LIMITS__RATE_PER_SECOND=0 RUST_LOG=auth_gateway=warn,auth_gateway::server=info "$bin/auth-gateway"
say "stream-server at $server, auth-gateway at $gateway"

results="$RESULTS_DIR/results.jsonl"
cpu="$RESULTS_DIR/cpu.txt"
: >"$cpu"
# CPU time (user + system, clock ticks) a process has used so far.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
run() {
  local case="$1" label="$2" url="$3"
  shift 3
  local auth=()
  [ "$label" = "gateway" ] && auth=(--token "$token")
  say "$case via $label"
  local before=("$(cpu_ticks "${pids[0]}")" "$(cpu_ticks "${pids[1]}")")
  "$bin/ds-load" "$@" --url "$url/v1/stream" "${auth[@]}" --duration "$DURATION" \
    --label "$case/$label" --json "$results" --quiet --strict >/dev/null
  echo "$case/$label $(($(cpu_ticks "${pids[0]}") - before[0])) $(($(cpu_ticks "${pids[1]}") - before[1]))" >>"$cpu"
  [ "$case" = warmup ] && sed -i '$d' "$results"
  return 0
}
for label in direct gateway; do
  url="$server"; [ "$label" = "gateway" ] && url="$gateway"
  # A short warm-up, so the gateway's token cache and upstream pool are warm.
  run warmup "$label" "$url" append --connections 4 --streams 4
  run latency "$label" "$url" append --connections 1 --streams 1 --body-size 256
  run throughput "$label" "$url" append --connections 16 --streams 16 --body-size 256
  run read "$label" "$url" read --connections 8 --stream-size 1MiB
done

python3 - "$results" "$RESULTS_DIR/results.md" "$DURATION" "$cpu" "$(getconf CLK_TCK)" <<'EOF'
import json, sys
records = {r["label"]: r for r in map(json.loads, open(sys.argv[1])) if r}
rows = {label: r["headline"] for label, r in records.items()}
cpu = {label: (int(server), int(gateway))
       for label, server, gateway in (line.split() for line in open(sys.argv[4]))}
ticks_per_s = int(sys.argv[5])
def h(case, via):
    return rows[f"{case}/{via}"]
lat_d, lat_g = h("latency", "direct")["latency"], h("latency", "gateway")["latency"]
lines = [
    f"Gateway cost, {sys.argv[3]} per run (tests/load/gateway.sh)", "",
    "| measure | direct | through gateway | gateway vs direct |",
    "|---|---|---|---|",
]
for q in ("p50_ms", "p99_ms"):
    lines.append(f"| append latency {q[:-3]}, 1 connection | {lat_d[q]:.3f} ms | {lat_g[q]:.3f} ms "
                 f"| +{lat_g[q] - lat_d[q]:.3f} ms |")
for case, name in (("latency", "appends/s, 1 connection"),
                   ("throughput", "appends/s, 16 connections x 16 streams"),
                   ("read", "catch-up read MB/s, 1 MiB stream, 8 connections")):
    d, g = h(case, "direct")["throughput"], h(case, "gateway")["throughput"]
    lines.append(f"| {name} | {d:,.0f} | {g:,.0f} | {100 * g / d:.0f} % |")
# CPU per append in the 16-connection runs: what each process spends on one
# request (the load generator shares the same cores).
lines += ["", "| CPU per append, 16 connections | stream-server | auth-gateway |", "|---|---|---|"]
for via in ("direct", "gateway"):
    appends = records[f"throughput/{via}"]["results"]["appends"]
    server, gateway = cpu[f"throughput/{via}"]
    us = lambda ticks: f"{1e6 * ticks / ticks_per_s / appends:.1f} us"
    lines.append(f"| {via} | {us(server)} | {us(gateway) if via == 'gateway' else '-'} |")
problems = sum(r["problems"] for r in rows.values())
lines += ["", f"errors, losses or corrupt reads in all runs: {problems}"]
open(sys.argv[2], "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
say "results in $RESULTS_DIR"
