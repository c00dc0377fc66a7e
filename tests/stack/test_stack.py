"""The stack on a real Docker engine: `docker compose up --build` with the
project's compose file, then the README's walkthrough as written, a trace
across both services, both services' metrics, durability through a kill -9
and through
`down`/`up`, and non-root containers.

Run by tests/stack/run.sh, which prepares the engine, the local stand-ins
for the base images and the OTLP receiver binary first. The collector is
replaced by that receiver (tests/stack/compose.test.yaml); Tempo,
Prometheus and Grafana are not started.

Everything runs under its own compose project name, with its own image
tags and volumes, and is removed at the end.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "ds-stack-test"
GATEWAY = "http://localhost:8080"
# Everything that runs in the test; Tempo, Prometheus and Grafana do not.
SERVICES = [
    "postgres",
    "gateway-key",
    "gateway-migrate",
    "stream-server",
    "otel-collector",
    "auth-gateway",
]
IMAGES = {
    "STREAM_SERVER_IMAGE": f"{PROJECT}/stream-server:test",
    "AUTH_GATEWAY_IMAGE": f"{PROJECT}/auth-gateway:test",
}
WAIT_SECONDS = 300


def log(message: str) -> None:
    print(f"stack test: {message}", file=sys.stderr, flush=True)


class Failure(Exception):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise Failure(message)


def compose_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(IMAGES)
    env.update(
        {
            # A plain `docker compose` (as the README writes it) reaches
            # the test's project.
            "COMPOSE_FILE": "compose/compose.yaml:tests/stack/compose.test.yaml",
            "COMPOSE_PROJECT_NAME": PROJECT,
            "RUST_IMAGE": env.get("RUST_IMAGE", "ds-local/rust:builder"),
            "RUNTIME_IMAGE": env.get("RUNTIME_IMAGE", "ds-local/debian:bookworm"),
            "POSTGRES_IMAGE": env.get("POSTGRES_IMAGE", "ds-local/postgres:15"),
            "BASE_IMAGE": env.get("BASE_IMAGE", "ds-local/debian:bookworm"),
        }
    )
    check("OTLP_RECEIVER_BIN" in env, "OTLP_RECEIVER_BIN must name the receiver binary")
    return env


ENV: dict[str, str] = {}


def compose(*args: str, timeout: float = WAIT_SECONDS, check_exit: bool = True) -> str:
    command = ["docker", "compose", *args]
    result = subprocess.run(
        command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout
    )
    if check_exit and result.returncode != 0:
        raise Failure(
            f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result.stdout


def up(*services: str) -> None:
    started = time.monotonic()
    compose("up", "--detach", "--wait", "--wait-timeout", str(WAIT_SECONDS), *services,
            timeout=WAIT_SECONDS + 60)
    log(f"healthy in {time.monotonic() - started:.0f} s: {', '.join(services)}")


def request(method: str, path: str, token: str | None, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(GATEWAY + path, data=body, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def walkthrough_commands() -> list[str]:
    """The README's walkthrough: the shell block between its markers, one
    entry per command (continuation lines joined)."""
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- stack-walkthrough -->\s*```sh\n(.*?)```", text, re.S)
    check(match is not None, "README.md has no `<!-- stack-walkthrough -->` block")
    commands, current = [], ""
    for line in match.group(1).splitlines():
        current += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            if current.strip() and not current.lstrip().startswith("#"):
                commands.append(current.strip())
            current = ""
    return commands


def run_walkthrough() -> tuple[str, str]:
    """Runs the walkthrough's commands as written (the stack is already up:
    `docker compose up` is skipped, and a live read is cut off after a few
    seconds); returns the transcript and the token it made."""
    commands = [c for c in walkthrough_commands() if not c.startswith("docker compose up")]
    script = [
        "set -euo pipefail",
        # A live read never ends by itself: stop it after a few seconds.
        'curl() { case " $* " in *" -N "*) timeout 4 curl "$@" || [ $? -eq 124 ];; '
        '*) command curl "$@";; esac; }',
    ]
    for command in commands:
        script.append(f"echo {json.dumps('$ ' + command)}")
        script.append(command)
        script.append("echo")
    script.append('echo "TOKEN=$TOKEN"')
    result = subprocess.run(["bash", "-c", "\n".join(script)], cwd=ROOT, env=ENV,
                            capture_output=True, text=True, timeout=300)
    transcript = result.stdout
    check(result.returncode == 0,
          f"the walkthrough failed ({result.returncode}):\n{transcript}\n{result.stderr}")
    token = re.search(r"^TOKEN=(\S+)$", transcript, re.M)
    check(token is not None, f"the walkthrough made no token:\n{transcript}")
    return transcript, token.group(1)


def received_spans() -> list[dict]:
    return received("spans")


def test_walkthrough_and_trace() -> str:
    transcript, token = run_walkthrough()
    for expected in ["201 Created", "204 No Content", "hello from compose",
                     "event: data", "401 Unauthorized", "traceresponse: 00-"]:
        check(expected in transcript, f"the walkthrough's output lacks {expected!r}:\n{transcript}")
    log("the README walkthrough ran as written")

    # The append's trace: both services, down to the storage commit.
    append = transcript.split("$ curl -i -X POST", 1)[1]
    trace_id = re.search(r"traceresponse: 00-([0-9a-f]{32})-", append).group(1)
    deadline = time.monotonic() + 30
    while True:
        spans = [s for s in received_spans() if s["trace_id"] == trace_id]
        services = {s["service"] for s in spans}
        names = {s["name"] for s in spans}
        if {"auth-gateway", "stream-server"} <= services and "storage commit" in names:
            break
        check(time.monotonic() < deadline,
              f"trace {trace_id} incomplete after 30 s: {sorted((s['service'], s['name']) for s in spans)}")
        time.sleep(1)
    by_id = {s["span_id"]: s for s in spans}
    server = next(s for s in spans if s["service"] == "stream-server" and s["name"].startswith("POST"))
    check(by_id.get(server["parent_id"], {}).get("service") == "auth-gateway",
          "stream-server's span is not a child of the gateway's proxy span")
    log(f"trace {trace_id}: {len(spans)} spans from both services")
    return token


def received(kind: str) -> list[dict]:
    port = compose("port", "otel-collector", "4318").strip().rsplit(":", 1)[-1]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/received/{kind}", timeout=10) as r:
        return json.load(r)


def test_metrics() -> None:
    """Both services' metrics reach the collector's address (every 15 s in
    the compose file)."""
    wanted = {("auth-gateway", "http.server.request.duration"),
              ("auth-gateway", "ds.gateway.auth.decisions"),
              ("stream-server", "http.server.request.duration"),
              ("stream-server", "ds.appended.messages")}
    deadline = time.monotonic() + 45
    while True:
        seen = {(m["service"], m["name"]) for m in received("metrics")}
        if wanted <= seen:
            break
        check(time.monotonic() < deadline, f"metrics missing after 45 s: {sorted(wanted - seen)}")
        time.sleep(2)
    log("metrics of both services arrived")


def test_durability(token: str) -> None:
    stream = "/v1/stream/demo/durable"
    status, _, _ = request("PUT", stream, token, headers={"Content-Type": "application/json"})
    check(status == 201, f"PUT {stream}: {status}")
    messages = [{"n": n} for n in range(200)]
    for message in messages:
        status, _, _ = request("POST", stream, token, json.dumps(message).encode(),
                               {"Content-Type": "application/json"})
        check(status == 204, f"append {message}: {status}")
    compose("kill", "-s", "SIGKILL", "stream-server")
    up(*SERVICES)
    read = read_all(stream, token)
    check(read == messages, f"after kill -9: {len(read)} of {len(messages)} acknowledged appends")
    log(f"kill -9 of stream-server kept all {len(messages)} acknowledged appends")

    compose("down", timeout=120)
    up(*SERVICES)
    read = read_all(stream, token)
    check(read == messages, f"after down and up: {len(read)} of {len(messages)} appends")
    log("down and up kept streams and tokens")


def read_all(stream: str, token: str) -> list:
    # Just after a restart the gateway may still try a connection to the
    # server's previous container once (a 502); a client retries.
    for _ in range(10):
        status, _, body = request("GET", f"{stream}?offset=-1", token)
        if status not in (502, 503):
            break
        time.sleep(1)
    check(status == 200, f"GET {stream}: {status} {body[:200]!r}")
    return json.loads(body)


def test_non_root() -> None:
    for service in ["stream-server", "auth-gateway"]:
        uid = compose("exec", "-T", service, "id", "-u").strip()
        check(uid not in ("", "0"), f"{service} runs as uid {uid!r}")
    log("stream-server and auth-gateway run as a non-root user")


def report_image_sizes() -> None:
    for variable, image in IMAGES.items():
        size = subprocess.run(["docker", "image", "inspect", "--format", "{{.Size}}", image],
                              capture_output=True, text=True).stdout.strip()
        if size:
            log(f"image {image}: {int(size) / 1e6:.1f} MB")


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def main() -> int:
    ENV.update(compose_env())
    check(port_is_free(8080), "port 8080 is in use: the walkthrough needs it")
    outcomes: list[bool] = []

    def attempt(name: str, test, *args):
        try:
            result = test(*args)
        except (Failure, subprocess.TimeoutExpired) as error:
            print(f"FAIL  {name}: {error}", flush=True)
            outcomes.append(False)
            return None
        print(f"PASS  {name}", flush=True)
        outcomes.append(True)
        return result if result is not None else True

    try:
        attempt("docker compose config", test_compose_config)
        if attempt("build and start", build_and_start):
            token = attempt("README walkthrough and its trace", test_walkthrough_and_trace)
            if token:
                attempt("metrics of both services", test_metrics)
                attempt("durability through kill -9 and down/up", test_durability, token)
            attempt("non-root containers", test_non_root)
        if not all(outcomes):
            print(compose("logs", "--no-color", "--tail", "60", check_exit=False))
    finally:
        compose("down", "--volumes", "--remove-orphans", timeout=180, check_exit=False)
        subprocess.run(["docker", "image", "rm", "--force", *IMAGES.values()],
                       capture_output=True)
    print(f"\n{outcomes.count(True)} passed, {outcomes.count(False)} failed")
    return 0 if all(outcomes) else 1


def test_compose_config() -> None:
    """`docker compose config` is clean for the stack as users run it (from
    the root and from compose/) and with the test's override."""
    plain = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    for cwd, files in [(ROOT, []), (ROOT / "compose", []),
                       (ROOT, ["-f", "compose/compose.yaml"])]:
        result = subprocess.run(["docker", "compose", *files, "config", "--quiet"], cwd=cwd,
                                env=plain, capture_output=True, text=True)
        check(result.returncode == 0 and not result.stderr.strip(),
              f"docker compose config in {cwd}: {result.stderr}")
    compose("config", "--quiet")


def build_and_start() -> None:
    log("building the images and starting the stack")
    started = time.monotonic()
    compose("build", "stream-server", "auth-gateway", timeout=1800)
    log(f"images built in {time.monotonic() - started:.0f} s")
    report_image_sizes()
    up(*SERVICES)


if __name__ == "__main__":
    sys.exit(main())
