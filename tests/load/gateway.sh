#!/usr/bin/env bash
# What auth-gateway costs, next to nginx as a plain reverse proxy: the same
# ds-load runs sent straight to stream-server (memory mode), through nginx
# (no auth) and through the gateway (warm token cache), both proxies in front
# of the same stream-server. The gateway's target is to be at least as fast
# and as lean as nginx without auth, so every gateway figure has nginx's
# beside it.
#
#   tests/load/gateway.sh                        # 10 s per run, one round
#   DURATION=5s ROUNDS=3 tests/load/gateway.sh   # medians over three rounds
#   CASES=fanout FANOUT_SUBSCRIBERS=5000 tests/load/gateway.sh
#
# Cases (CASES, all by default); each round runs every case against direct,
# nginx and gateway in turn, so the three runs of a case are neighbours in time:
#   latency     1 connection, 1 stream, 256-byte appends: the latency a proxy
#               adds (p50, p99) without queueing
#   throughput  16 connections x 16 streams, 256-byte appends
#   read        full catch-up reads of a 1 MiB stream, 8 connections
#   live100     live SSE, 100 subscribers, writer at 100 messages/s: delivery p99
#   live1000    the same with 1,000 subscribers
#   fanout      FANOUT_SUBSCRIBERS (2,000) SSE subscribers on one stream, each
#               target on freshly started processes: each proxy's resident
#               memory before and at its peak, for the memory per proxied
#               subscriber
# Every run also records the CPU time (user + system, /proc/<pid>/stat) of
# stream-server, nginx (master and workers) and the gateway, for CPU per append
# and per delivered message: the machine's cores are shared with ds-load, so
# throughput alone hides what each process spends.
#
# Needs Postgres at DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres)
# and psql; a scratch database is created and dropped. Needs nginx: Debian's
# nginx-light is installed when it is missing and the script runs as root or
# has sudo. The script starts its own nginx from a config in its temporary
# directory, never the system service. Results (JSON lines, per-run process
# figures, a markdown table with the ratios) go to RESULTS_DIR (default
# target/load-results/gateway-<timestamp>/).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
DURATION="${DURATION:-10s}"
ROUNDS="${ROUNDS:-1}"
CASES="${CASES:-latency throughput read live100 live1000 fanout}"
FANOUT_SUBSCRIBERS="${FANOUT_SUBSCRIBERS:-2000}"
RESULTS_DIR="${RESULTS_DIR:-$root/target/load-results/gateway-$(date +%Y%m%d-%H%M%S)}"
database_url="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
say() { echo "gateway bench: $*" >&2; }

command -v psql >/dev/null || { say "psql is required (to create a scratch database)"; exit 1; }
# Debian puts nginx in /usr/sbin, which is not on every user's PATH.
nginx="$(command -v nginx || true)"
[ -z "$nginx" ] && [ -x /usr/sbin/nginx ] && nginx=/usr/sbin/nginx
if [ -z "$nginx" ]; then
  if [ "$(id -u)" = 0 ]; then
    apt=(env DEBIAN_FRONTEND=noninteractive apt-get)
  elif command -v sudo >/dev/null; then
    apt=(sudo env DEBIAN_FRONTEND=noninteractive apt-get)
  else
    say "nginx is missing and this is neither root nor a user with sudo:"
    say "install Debian's nginx-light (or nginx), then run again"
    exit 1
  fi
  say "nginx is missing; installing Debian's nginx-light"
  "${apt[@]}" install -y -q nginx-light >&2 ||
    { "${apt[@]}" update -q >&2 && "${apt[@]}" install -y -q nginx-light >&2; } ||
    { say "could not install nginx-light"; exit 1; }
  nginx=/usr/sbin/nginx
fi

# Fan-out holds two sockets per subscriber in each proxy.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[ "$(ulimit -n)" -gt $((3 * FANOUT_SUBSCRIBERS)) ] ||
  say "the open-files limit ($(ulimit -n)) may be too low for $FANOUT_SUBSCRIBERS subscribers"

mkdir -p "$RESULTS_DIR/logs"
work="$(mktemp -d)"
pids=()
sampler=""
declare -A url_of
scratch_db="ds_gateway_bench_$$"
# shellcheck disable=SC2317  # only the EXIT trap calls it
cleanup() {
  if [ -n "$sampler" ]; then kill "$sampler" 2>/dev/null || true; fi
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  psql -q "$database_url" -c "DROP DATABASE IF EXISTS $scratch_db WITH (FORCE)" >/dev/null 2>&1 || true
  # nginx appends to its log across restarts; the other two hold the last start.
  cp "$work"/*.log "$RESULTS_DIR/logs/" 2>/dev/null || true
  cp "$work/nginx/error.log" "$RESULTS_DIR/logs/nginx-error.log" 2>/dev/null || true
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

psql -q "$database_url" -c "CREATE DATABASE $scratch_db" >/dev/null
export DATABASE_URL="${database_url%/*}/$scratch_db" GW_JWT__KEY_FILE="$work/key.pem"
"$bin/auth-gateway" keygen >"$GW_JWT__KEY_FILE"
"$bin/auth-gateway" migrate 2>/dev/null
token="$("$bin/auth-gateway" token create --subject bench --scope read --scope write \
  --scope delete --stream '**' --ttl 2h 2>/dev/null)"

# nginx as one would put it in front of stream-server without auth: kept-alive
# upstream connections, and nothing buffered either way, so SSE and long-poll
# responses and appends stream through.
ngx="$work/nginx"
mkdir -p "$ngx"
# A worker may take every connection; each subscriber holds a client and an
# upstream one. 8192 is the gateway's default GW_SERVER__MAX_CONNECTIONS.
nginx_connections=$((2 * FANOUT_SUBSCRIBERS + 1024))
[ "$nginx_connections" -lt 8192 ] && nginx_connections=8192
# write_nginx_conf PORT UPSTREAM — UPSTREAM as host:port
write_nginx_conf() {
  local port="$1" upstream="$2"
  # As root, nginx would run its workers as nobody, who cannot enter the
  # temporary directory.
  [ "$(id -u)" = 0 ] && echo "user root;"
  cat <<EOF
worker_processes auto;
pid $ngx/nginx.pid;
error_log $ngx/error.log warn;
events { worker_connections $nginx_connections; }
http {
  access_log off;
  client_body_temp_path $ngx/client_body;
  proxy_temp_path $ngx/proxy;
  # Large enough for any append stream-server takes (DS_LIMITS__MAX_REQUEST_BODY_BYTES).
  client_max_body_size 64m;
  # ds-load keeps one connection per worker for the whole run; nginx's default
  # (1,000 requests) would close it every 1,000 appends.
  keepalive_requests 1000000;
  upstream stream_server {
    server $upstream;
    keepalive 64;
    keepalive_requests 1000000;
    # Below stream-server's idle-connection timeout, as the gateway's
    # GW_UPSTREAM__POOL_IDLE_TIMEOUT_SECS: an append is not retried on a
    # connection the server closed.
    keepalive_timeout 5s;
  }
  server {
    listen 127.0.0.1:$port;
    location / {
      proxy_pass http://stream_server;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$http_host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_buffering off;
      proxy_request_buffering off;
      # Unbuffered, nginx relays a response through one buffer of this size;
      # the default, one memory page, costs a read and a write per 4 KiB of a
      # catch-up read. (proxy_buffers only satisfies the config check.)
      proxy_buffer_size 64k;
      proxy_buffers 4 64k;
      proxy_busy_buffers_size 128k;
      # Long-poll waits 30 s and an SSE response stays open far longer.
      proxy_read_timeout 1h;
      proxy_send_timeout 1h;
    }
  }
}
EOF
}

# start_nginx — nginx in front of $server; sets nginx_url, nginx_pid and
# nginx_pids (the master and its workers). The port comes from the kernel; if
# something takes it before nginx binds it, nginx exits and another is tried.
start_nginx() {
  local port
  nginx_url=""
  for _ in 1 2 3; do
    port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    write_nginx_conf "$port" "${server#http://}" >"$ngx/nginx.conf"
    "$nginx" -c "$ngx/nginx.conf" -p "$ngx/" -e "$ngx/error.log" -g 'daemon off;' >"$ngx/stdout.log" 2>&1 &
    nginx_pid="$!"
    pids+=("$nginx_pid")
    for _ in $(seq 1 100); do
      kill -0 "$nginx_pid" 2>/dev/null || break
      if curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; then
        nginx_url="http://127.0.0.1:$port"
        # No cache manager without proxy_cache_path: these are all.
        mapfile -t nginx_pids < <(echo "$nginx_pid"; pgrep -P "$nginx_pid")
        return 0
      fi
      sleep 0.1
    done
    kill -TERM "$nginx_pid" 2>/dev/null || true
    wait "$nginx_pid" 2>/dev/null || true
  done
  say "nginx did not start:"; cat "$ngx/error.log" "$ngx/stdout.log" >&2; return 1
}

# start_stack — a fresh stream-server (memory mode) with the gateway and nginx
# in front of it; sets their URLs and process ids.
start_stack() {
  server=""
  start server "$work/stream-server.log" env DS_SERVER__PORT=0 RUST_LOG=stream_server=warn,stream_server::server=info "$bin/stream-server"
  server_pid="${pids[-1]}"
  gateway=""
  start gateway "$work/auth-gateway.log" env GW_SERVER__PORT=0 GW_UPSTREAM__URL="$server" \
    GW_LIMITS__RATE_PER_SECOND=0 RUST_LOG=auth_gateway=warn,auth_gateway::server=info "$bin/auth-gateway"
  gateway_pid="${pids[-1]}"
  start_nginx
  url_of=([direct]="$server" [nginx]="$nginx_url" [gateway]="$gateway")
}
stop_stack() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  pids=()
}

results="$RESULTS_DIR/results.jsonl"
processes="$RESULTS_DIR/processes.txt"
: >"$results"
echo "# label round record cpu_ticks_server cpu_ticks_nginx cpu_ticks_gateway proxy_rss_kb_idle proxy_rss_kb_peak" >"$processes"

# CPU time (user + system, clock ticks) the given processes have used so far.
cpu_ticks() {
  local pid total=0
  for pid; do total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat"))); done
  echo "$total"
}
# Resident memory (VmRSS, kB) of the given processes together.
rss_kb() {
  local pid key value total=0
  for pid; do
    [ -r "/proc/$pid/status" ] || continue
    while read -r key value _; do
      [ "$key" = VmRSS: ] && { total=$((total + value)); break; }
    done <"/proc/$pid/status"
  done
  echo "$total"
}
# Writes the highest rss_kb of the given processes to FILE, sampled every
# 250 ms until killed. Plain bash, so sampling adds no processes to the run.
sample_peak_rss() {
  local file="$1" now peak=0
  shift
  while :; do
    now="$(rss_kb "$@")"
    [ "$now" -gt "$peak" ] && { peak="$now"; echo "$peak" >"$file"; }
    sleep 0.25
  done
}

failed=0
# run CASE TARGET ROUND DS-LOAD-ARGS... — one ds-load run; its record goes to
# results.jsonl, the processes' CPU time (and for fanout the proxy's memory)
# to processes.txt.
run() {
  local case="$1" target="$2" round="$3"
  shift 3
  local auth=() proxy=() idle="-" peak="-" status=0
  [ "$target" = gateway ] && auth=(--token "$token") proxy=("$gateway_pid")
  [ "$target" = nginx ] && proxy=("${nginx_pids[@]}")
  say "round $round: $case via $target"
  local record
  record="$(wc -l <"$results")"
  if [ "$case" = fanout ] && [ "${#proxy[@]}" -gt 0 ]; then
    idle="$(rss_kb "${proxy[@]}")"
    echo "$idle" >"$work/peak"
    sample_peak_rss "$work/peak" "${proxy[@]}" &
    sampler="$!"
  fi
  local before=("$(cpu_ticks "$server_pid")" "$(cpu_ticks "${nginx_pids[@]}")" "$(cpu_ticks "$gateway_pid")")
  "$bin/ds-load" "$@" --url "${url_of[$target]}/v1/stream" "${auth[@]}" --duration "$DURATION" \
    --label "$case/$target" --json "$results" --quiet --strict \
    >"$RESULTS_DIR/logs/$round-$case-$target.txt" 2>&1 || status=$?
  local after=("$(cpu_ticks "$server_pid")" "$(cpu_ticks "${nginx_pids[@]}")" "$(cpu_ticks "$gateway_pid")")
  if [ -n "$sampler" ]; then
    kill "$sampler"; wait "$sampler" 2>/dev/null || true; sampler=""
    peak="$(cat "$work/peak")"
  fi
  [ "$(wc -l <"$results")" -gt "$record" ] || record=-1
  echo "$case/$target $round $record $((after[0] - before[0])) $((after[1] - before[1])) $((after[2] - before[2])) $idle $peak" >>"$processes"
  if [ "$status" -ne 0 ]; then
    say "$case via $target exited with status $status (see logs/$round-$case-$target.txt)"
    failed=1
  fi
}

targets=(direct nginx gateway)
# warm_up — short appends through each target, so the gateway's token cache
# and both proxies' upstream connections are warm.
warm_up() {
  local target auth
  for target in "${targets[@]}"; do
    auth=()
    [ "$target" = gateway ] && auth=(--token "$token")
    "$bin/ds-load" append --connections 4 --streams 4 --url "${url_of[$target]}/v1/stream" "${auth[@]}" \
      --duration 2s --quiet >/dev/null
  done
}
start_stack
say "stream-server at $server, nginx at $nginx_url (${#nginx_pids[@]} processes), auth-gateway at $gateway"
say "warm-up"
warm_up
fresh=0
for round in $(seq 1 "$ROUNDS"); do
  for case in $CASES; do
    case "$case" in
      latency) args=(append --connections 1 --streams 1 --body-size 256) ;;
      throughput) args=(append --connections 16 --streams 16 --body-size 256) ;;
      read) args=(read --connections 8 --stream-size 1MiB) ;;
      live100) args=(live --transport sse --subscribers 100 --rate 100) ;;
      live1000) args=(live --transport sse --subscribers 1000 --rate 100) ;;
      fanout) args=(fanout --subscribers "$FANOUT_SUBSCRIBERS") ;;
      *) say "unknown case $case (CASES: latency throughput read live100 live1000 fanout)"; exit 1 ;;
    esac
    for target in "${targets[@]}"; do
      if [ "$case" = fanout ]; then
        # Memory per subscriber needs processes that never held connections:
        # an allocator keeps what earlier runs freed, and reuses it unseen.
        say "fresh processes for fanout via $target"
        stop_stack; start_stack; fresh=1
        run "$case" "$target" "$round" "${args[@]}" --server-pid "$server_pid"
        continue
      fi
      if [ "$fresh" = 1 ]; then say "warm-up"; warm_up; fresh=0; fi
      run "$case" "$target" "$round" "${args[@]}"
    done
  done
done

python3 - "$results" "$processes" "$RESULTS_DIR/results.md" "$DURATION" "$ROUNDS" \
  "$FANOUT_SUBSCRIBERS" "$(getconf CLK_TCK)" <<'EOF'
import json, statistics, sys
from collections import defaultdict

results, processes, out, duration, rounds, fanout_subs, ticks_per_s = sys.argv[1:]
records = [json.loads(line) for line in open(results) if line.strip()]
ticks_per_s = int(ticks_per_s)
# label ("case/target") -> list of runs: (record or None, cpu ticks per process, proxy rss)
runs = defaultdict(list)
for line in open(processes):
    if line.startswith("#"):
        continue
    label, _round, index, server, nginx, gateway, idle, peak = line.split()
    index = int(index)
    runs[label].append({
        "record": records[index] if index >= 0 else None,
        "ticks": {"stream-server": int(server), "nginx": int(nginx), "gateway": int(gateway)},
        "rss_kb": None if idle == "-" else (int(idle), int(peak)),
    })

def median(case, target, value):
    """The median of value(run) over the runs of case/target where it is known."""
    values = []
    for run in runs.get(f"{case}/{target}", []):
        try:
            v = value(run) if run["record"] else None
        except (KeyError, TypeError, ZeroDivisionError):
            v = None
        if v is not None:
            values.append(v)
    return statistics.median(values) if values else None

def headline(key, q=None):
    if q:
        return lambda run: run["record"]["headline"]["latency"][q]
    return lambda run: run["record"]["headline"][key]

def cpu_us_per(process, count):
    """CPU microseconds of process per unit counted by count(results)."""
    return lambda run: 1e6 * run["ticks"][process] / ticks_per_s / count(run["record"]["results"])

appends = lambda results: results["appends"]
deliveries = lambda results: results["subscribers"]["deliveries"]

def proxy_bytes_per_subscriber(run):
    idle, peak = run["rss_kb"]
    return 1024 * (peak - idle) / run["record"]["results"]["subscribers"]["peak_connected"]

def fmt(value, unit):
    if value is None:
        return "-"
    if unit == "/s":
        return f"{value:,.0f}"
    if unit == "MB/s":
        return f"{value:,.1f}"
    if unit == "ms":
        return f"{value:.3f} ms"
    if unit == "us":
        return f"{value:.1f} us"
    if unit == "MiB":
        return f"{value / 1024:.1f} MiB"
    if unit == "KiB":
        return f"{value / 1024:.1f} KiB"
    return f"{value}"

def ratio(a, b):
    return f"{a / b:.2f}" if a is not None and b else "-"

# (name, case, target -> value of a run, unit, the targets that have it)
all_targets = ("direct", "nginx", "gateway")
proxies = ("nginx", "gateway")
fanout = f"{int(fanout_subs):,} subscribers"
same = lambda value: lambda target: value
own_cpu = lambda count: lambda target: cpu_us_per(target, count)
measures = [
    ("append latency p50, 1 connection", "latency", same(headline("latency", "p50_ms")), "ms", all_targets),
    ("append latency p99, 1 connection", "latency", same(headline("latency", "p99_ms")), "ms", all_targets),
    ("appends/s, 1 connection", "latency", same(headline("throughput")), "/s", all_targets),
    ("appends/s, 16 connections x 16 streams", "throughput", same(headline("throughput")), "/s", all_targets),
    ("catch-up read MB/s, 1 MiB stream, 8 connections", "read", same(headline("throughput")), "MB/s", all_targets),
    ("SSE delivery p99, 100 subscribers, 100 msg/s", "live100", same(headline("latency", "p99_ms")), "ms", all_targets),
    ("SSE delivery p99, 1,000 subscribers, 100 msg/s", "live1000", same(headline("latency", "p99_ms")), "ms", all_targets),
    (f"SSE delivery p99, fanout, {fanout}", "fanout", same(headline("latency", "p99_ms")), "ms", all_targets),
    ("proxy CPU per append, 1 connection", "latency", own_cpu(appends), "us", proxies),
    ("proxy CPU per append, 16 connections", "throughput", own_cpu(appends), "us", proxies),
    ("proxy CPU per delivered message, 1,000 subscribers", "live1000", own_cpu(deliveries), "us", proxies),
    ("stream-server CPU per append, 16 connections", "throughput",
     same(cpu_us_per("stream-server", appends)), "us", all_targets),
    (f"proxy RSS before {fanout}", "fanout", same(lambda run: run["rss_kb"][0]), "MiB", proxies),
    (f"proxy RSS peak with {fanout}", "fanout", same(lambda run: run["rss_kb"][1]), "MiB", proxies),
    ("proxy memory per proxied subscriber, (peak - before) / connected", "fanout",
     same(proxy_bytes_per_subscriber), "KiB", proxies),
    ("stream-server memory per subscriber, (connected - before) / connected", "fanout",
     same(lambda run: run["record"]["results"]["server_memory"]["per_subscriber_bytes"]), "KiB", all_targets),
]
title = f"Proxy cost, {duration} per run"
title += f", medians over {rounds} rounds" if int(rounds) > 1 else ", one round"
lines = [
    f"{title} (tests/load/gateway.sh)", "",
    "| measure | direct | nginx | gateway | gateway / direct | gateway / nginx |",
    "|---|---|---|---|---|---|",
]
for name, case, value, unit, targets in measures:
    if not any(f"{case}/{t}" in runs for t in targets):
        continue
    cells = {target: median(case, target, value(target)) for target in targets}
    row = [name] + [fmt(cells.get(t), unit) for t in all_targets]
    row += [ratio(cells.get("gateway"), cells.get("direct")), ratio(cells.get("gateway"), cells.get("nginx"))]
    lines.append("| " + " | ".join(row) + " |")
lines += [
    "",
    "Ratios are the gateway's figure over the other's: above 1 is better for rates,",
    "below 1 for latency, CPU and memory. Proxy CPU and RSS: nginx's master and",
    "workers added up, so pages they share are counted once per process.",
]
problems = {label: sum(r["record"]["headline"]["problems"] for r in rs if r["record"])
            for label, rs in runs.items()}
missing = [label for label, rs in runs.items() if any(r["record"] is None for r in rs)]
lines += ["", f"errors, losses or corrupt reads in all runs: {sum(problems.values())}"]
lines += [f"- {label}: {n}" for label, n in problems.items() if n]
if missing:
    lines.append("runs without a record (ds-load failed): " + ", ".join(missing))
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
say "results in $RESULTS_DIR"
exit "$failed"
