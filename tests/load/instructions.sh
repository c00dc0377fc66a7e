#!/usr/bin/env bash
# Counts the user-space instructions a server spends per request, under
# valgrind's callgrind: a count, not a time, so it repeats exactly for the
# same binary and load whatever else the machine is doing. Use it to compare
# two builds (or two servers) where timed runs are too noisy to tell.
#
#   tests/load/instructions.sh append PORT -- SERVER COMMAND...
#   tests/load/instructions.sh live PORT -- SERVER COMMAND...
#
#   tests/load/instructions.sh append 4437 -- target/release/stream-server
#   DS_STORAGE__MODE=file-durable DS_STORAGE__DATA_DIR=/tmp/fd \
#     tests/load/instructions.sh append 4437 -- target/release/stream-server
#
# The server must listen on 127.0.0.1:PORT with streams under /v1/stream.
# It starts under callgrind with instrumentation off; after a warm-up,
# instrumentation is switched on for one ds-load run and off again, so
# start-up and warm-up are not counted (the run's own stream creation and
# deletion are). Scenarios:
#   append  CONNECTIONS connections appending 256-byte bodies to as many
#           streams for DURATION; prints instructions per append
#   live    SUBSCRIBERS SSE subscribers on one JSON stream, a writer at RATE
#           messages/s for DURATION; prints instructions per delivery
#           (the writer's appends are counted in it)
# Settings (environment): DURATION [5s], CONNECTIONS [4], SUBSCRIBERS [300],
# RATE [20], OUT (where callgrind's files go) [a temporary directory, kept
# and printed for callgrind_annotate].
#
# Callgrind runs the server's threads one at a time, about 50 times slower
# than natively: throughput under it means nothing, and neither do lock
# contention and cache misses, which it does not see. Compare counts only
# for the same scenario and settings.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
say() { echo "instructions: $*" >&2; }

scenario="${1:-}"
port="${2:-}"
if [ "${3:-}" != "--" ] || [ $# -lt 4 ] || { [ "$scenario" != append ] && [ "$scenario" != live ]; }; then
  say "usage: $0 append|live PORT -- SERVER COMMAND..."
  exit 2
fi
shift 3
command -v valgrind >/dev/null || { say "valgrind is required (apt-get install valgrind)"; exit 1; }

DURATION="${DURATION:-5s}"
CONNECTIONS="${CONNECTIONS:-4}"
SUBSCRIBERS="${SUBSCRIBERS:-300}"
RATE="${RATE:-20}"
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
url="http://127.0.0.1:$port/v1/stream"
ds_load="$root/target/release/ds-load"
(cd "$root" && cargo build --quiet --release -p ds-load)

valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT/callgrind.out" \
  "$@" >"$OUT/server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
  curl -s -o /dev/null "http://127.0.0.1:$port/" && break
  kill -0 "$server" 2>/dev/null || { say "the server exited:"; cat "$OUT/server.log" >&2; exit 1; }
  sleep 0.2
done
say "warming up"
"$ds_load" append --url "$url" --connections 2 --streams 2 --duration 2s --quiet >/dev/null

callgrind_control --instr=on "$server" >/dev/null 2>&1
say "counting: $scenario for $DURATION"
case "$scenario" in
  append)
    "$ds_load" append --url "$url" --connections "$CONNECTIONS" --streams "$CONNECTIONS" \
      --body-size 256 --duration "$DURATION" --quiet --json "$OUT/run.json" >/dev/null
    ;;
  live)
    "$ds_load" live --url "$url" --subscribers "$SUBSCRIBERS" --rate "$RATE" \
      --duration "$DURATION" --quiet --json "$OUT/run.json" >/dev/null
    ;;
esac
callgrind_control --instr=off "$server" >/dev/null 2>&1
callgrind_control --dump "$server" >/dev/null 2>&1
kill "$server"
wait "$server" 2>/dev/null || true
trap - EXIT

python3 - "$scenario" "$OUT" <<'EOF'
import glob, json, sys
scenario, out = sys.argv[1:]
total = sum(int(line.split()[1])
            for path in glob.glob(f"{out}/callgrind.out*")
            for line in open(path) if line.startswith("totals:"))
results = json.loads(open(f"{out}/run.json").read().splitlines()[-1])["results"]
if scenario == "append":
    count, unit = results["appends"], "append"
else:
    count, unit = results["subscribers"]["deliveries"], "delivery"
if not count:
    sys.exit(f"instructions: the run made no {unit}")
print(f"{total:,} instructions, {count:,} {unit}s: {total / count:,.0f} per {unit}")
EOF
say "callgrind files in $OUT (callgrind_annotate --inclusive=yes $OUT/callgrind.out.1)"
