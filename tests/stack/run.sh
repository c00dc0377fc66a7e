#!/usr/bin/env bash
# The stack test: compose/compose.yaml on a real Docker engine.
#
#   tests/stack/run.sh
#
# 1. tests/stack/setup.sh: the engine, Compose v2 and local base images
#    (installed or started when missing; needs root or sudo).
# 2. tests/stack/check_configs.py: the collector, Tempo, Prometheus and
#    Grafana configurations, checked offline (their images cannot be had
#    here).
# 3. tests/stack/test_stack.py: `docker compose up --build`, the README's
#    walkthrough, a trace across both services, durability, non-root.
# A Docker daemon this script started is stopped again at the end.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
export STATE_DIR="$root/target/stack"
say() { echo "stack: $*" >&2; }

rm -f "$STATE_DIR/started-dockerd"
stop_started_daemon() {
  if [ -f "$STATE_DIR/started-dockerd" ]; then
    say "stopping the dockerd this run started"
    if [ "$(id -u)" = 0 ]; then pkill -x dockerd || true; else sudo pkill -x dockerd || true; fi
    rm -f "$STATE_DIR/started-dockerd"
  fi
}
trap stop_started_daemon EXIT

"$here/setup.sh"

python3 -c 'import yaml' 2>/dev/null || python3 -m pip install --quiet pyyaml
python3 "$here/check_configs.py"

say "building the OTLP receiver that stands in for the collector"
(cd "$root" && cargo build --quiet -p otlp-receiver)
export OTLP_RECEIVER_BIN="$root/target/debug/otlp-receiver"
python3 "$here/test_stack.py"
