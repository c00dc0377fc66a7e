#!/usr/bin/env python3
"""Checks of the rendered Kubernetes manifests (deploy/) that need no cluster.

    python3 tests/deploy/check_manifests.py --rendered DIR --checkov DIR \
        --min-kubernetes 1.32 dev production

For each overlay named, DIR/<overlay>.yaml is its `kubectl kustomize`
output and DIR/<overlay>.json checkov's JSON report on it (tests/deploy/run.sh
makes both). Three groups of checks:

* security: every pod non-root, read-only root filesystem, no capabilities,
  RuntimeDefault seccomp, no service account token, requests and limits on
  every container; the NetworkPolicies, evaluated, let only the gateway reach
  stream-server and only the gateway and the migration Job reach Postgres.
* cross-references with the repository, read from the files that hold the
  truth: images (compose/compose.yaml, compose/Dockerfile, the crates'
  versions), subcommands (the clap enums), environment variables (.env.sample,
  the README's tables, the telemetry code), ports and probe paths (the
  defaults and the routers), and the settings that must agree with each other.
* checkov: the checks that fail are exactly the ones deploy/README.md lists
  with a reason, and none of them is one of the security points above.

Prints one line per check and a closing "N passed, N failed"; exits 1 if any
check failed. Needs Python 3.11 and PyYAML.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import urlsplit

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY_README = ROOT / "deploy" / "README.md"
NAMESPACE = "durable-streams"

# The project's two binaries: the source directory each is built from.
SERVICES = {
    "stream-server": ROOT / "services" / "stream-server",
    "auth-gateway": ROOT / "services" / "auth-gateway",
}
COMMON_SRC = ROOT / "services" / "common" / "src"
# Which settings prefix belongs to which binary.
PREFIX = {"stream-server": "DS_", "auth-gateway": "GW_"}

# checkov's checks for the security points the issue asks for: none may fail,
# none may be listed as left failing, and each must have passed somewhere.
REQUIRED_CHECKOV = {
    "CKV_K8S_10": "CPU requests",
    "CKV_K8S_11": "CPU limits",
    "CKV_K8S_12": "memory requests",
    "CKV_K8S_13": "memory limits",
    "CKV_K8S_20": "no privilege escalation",
    "CKV_K8S_21": "not the default namespace",
    "CKV_K8S_22": "read-only root filesystem",
    "CKV_K8S_23": "non-root containers",
    "CKV_K8S_28": "no NET_RAW",
    "CKV_K8S_31": "RuntimeDefault seccomp",
    "CKV_K8S_37": "no capabilities",
    "CKV_K8S_38": "no service account token",
    "CKV_K8S_40": "high UID",
    "CKV2_K8S_6": "every pod under a NetworkPolicy",
}

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}


class Fail(Exception):
    """A check failed; the message says why."""


# --- Reading the repository --------------------------------------------------

def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def rust_sources(*dirs: Path) -> str:
    return "\n".join(read(p) for d in dirs for p in sorted(d.rglob("*.rs")))


def env_sample() -> dict[str, str | None]:
    """Every variable .env.sample names: its default, or None when the line
    is commented out (optional, no default)."""
    out: dict[str, str | None] = {}
    for line in read(ROOT / ".env.sample").splitlines():
        m = re.match(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$", line.strip())
        if m:
            out[m.group(2)] = None if m.group(1) else m.group(3).strip()
    return out


def readme_section(text: str, heading: str) -> str:
    """The text under a `## heading` up to the next heading of that level."""
    m = re.search(rf"^(#+) {re.escape(heading)}\s*$", text, re.M)
    if not m:
        return ""
    level = len(m.group(1))
    rest = text[m.end():]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.M)
    return rest[: end.start()] if end else rest


def readme_table_names(text: str) -> set[str]:
    """Variable names in the first cell of `| `NAME` | ...` table rows."""
    names = set()
    for line in text.splitlines():
        if line.startswith("| `"):
            names.update(re.findall(r"`([A-Z][A-Z0-9_]+)`", line.split("|")[1]))
    return names


def known_variables() -> dict[str, set[str]]:
    """The environment variables each binary reads, from where the project
    documents and reads them."""
    sample = env_sample()
    readme = read(ROOT / "README.md")
    tables = readme_table_names(readme)
    common_src = rust_sources(COMMON_SRC)
    # Standard variables the shared telemetry and logging code reads, and
    # the OpenTelemetry ones the README documents (the SDK reads them).
    common = set(re.findall(r"\bOTEL_[A-Z0-9_]*[A-Z0-9]\b", common_src))
    common |= set(re.findall(r"\bOTEL_[A-Z0-9_]*[A-Z0-9]\b", readme_section(readme, "Observability")))
    common = {n for n in common if not n.endswith("_")}
    common |= {n for n in ("RUST_LOG", "LOG_FORMAT") if n in common_src}
    documented = set(sample) | tables
    other_prefixes = tuple(PREFIX.values())
    known = {}
    for service, directory in SERVICES.items():
        src = rust_sources(directory / "src")
        names = {n for n in documented if n.startswith(PREFIX[service])}
        # Documented unprefixed variables this binary names (DATABASE_URL,
        # MIMALLOC_ALLOW_THP).
        names |= {n for n in documented
                  if not n.startswith(other_prefixes) and f'"{n}"' in src}
        # clap's `env = "..."` arguments (DS_CONFIG, GW_CONFIG).
        names |= set(re.findall(r'env\s*=\s*"([A-Z][A-Z0-9_]+)"', src))
        known[service] = names | common
    return known


def defaults() -> dict[str, str]:
    return {k: v for k, v in env_sample().items() if v is not None}


def subcommands(service: str) -> dict[str, set[str]]:
    """The binary's clap subcommands: name -> its own subcommands (empty if
    none), from `enum Command` and the enums its variants nest."""
    src = rust_sources(SERVICES[service] / "src")
    enums = {}
    for m in re.finditer(r"pub enum (\w+)\s*\{", src):
        depth, i = 1, m.end()
        while depth and i < len(src):
            depth += {"{": 1, "}": -1}.get(src[i], 0)
            i += 1
        enums[m.group(1)] = src[m.end(): i - 1]

    def variants(body: str) -> dict[str, str | None]:
        out, depth = {}, 0
        for line in body.splitlines():
            stripped = line.strip()
            if depth == 0:
                m = re.match(r"([A-Z][A-Za-z0-9]*)\s*(\{|,|\(|$)", stripped)
                if m and not stripped.startswith("///"):
                    out[m.group(1)] = None
                    last = m.group(1)
            if depth >= 1:
                nested = re.search(r"action:\s*(\w+)", stripped)
                if nested:
                    out[last] = nested.group(1)
            depth += stripped.count("{") - stripped.count("}")
        return out

    def kebab(name: str) -> str:
        return re.sub(r"(?<!^)([A-Z])", r"-\1", name).lower()

    top = variants(enums.get("Command", ""))
    return {
        kebab(v): {kebab(s) for s in variants(enums.get(sub, ""))} if sub else set()
        for v, sub in top.items()
    }


def routes(service: str) -> set[str]:
    return set(re.findall(r'\.route\(\s*"([^"]+)"', rust_sources(SERVICES[service] / "src")))


def compose_images() -> dict[str, tuple[str, str | None]]:
    """Compose service -> (default image, Dockerfile target or None)."""
    compose = yaml.safe_load(read(ROOT / "compose" / "compose.yaml"))
    out = {}
    for name, service in compose["services"].items():
        m = re.fullmatch(r"\$\{[A-Z_]+:-([^}]+)\}", service.get("image", ""))
        image = m.group(1) if m else service.get("image", "")
        out[name] = (image, (service.get("build") or {}).get("target"))
    return out


def dockerfile_targets() -> dict[str, dict]:
    """Dockerfile stage -> its ENTRYPOINT and the uid of its USER."""
    text = read(ROOT / "compose" / "Dockerfile")
    uids = {m.group(2): int(m.group(1))
            for m in re.finditer(r"useradd\b[^\n]*?--uid (\d+)[^\n]*?\s(\w+)\s*$", text, re.M)}
    stages: dict[str, dict] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"FROM\s+(\S+)\s+AS\s+(\S+)", line, re.I)
        if m:
            parent = stages.get(m.group(1), {})
            current = stages.setdefault(m.group(2), dict(parent))
            continue
        if current is None:
            continue
        m = re.match(r"ENTRYPOINT\s+(\[.*\])", line)
        if m:
            current["entrypoint"] = json.loads(m.group(1))
        m = re.match(r"USER\s+(\S+)", line)
        if m:
            user = m.group(1)
            current["uid"] = int(user) if user.isdigit() else uids.get(user)
    return stages


def crate_version(service: str) -> str:
    m = re.search(r'^version\s*=\s*"([^"]+)"', read(SERVICES[service] / "Cargo.toml"), re.M)
    return m.group(1) if m else ""


# --- The rendered manifests ---------------------------------------------------

class Manifests:
    def __init__(self, overlay: str, path: Path):
        self.overlay = overlay
        self.docs = [d for d in yaml.safe_load_all(read(path)) if d]

    def of(self, kind: str) -> list[dict]:
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind: str, name: str) -> dict:
        for d in self.of(kind):
            if d["metadata"]["name"] == name:
                return d
        raise Fail(f"no {kind} {name}")

    def workloads(self) -> list[dict]:
        return [d for d in self.docs if d["kind"] in WORKLOAD_KINDS]

    def configmap(self, name: str) -> dict[str, str]:
        for d in self.of("ConfigMap"):
            if d["metadata"]["name"] == name:
                return d.get("data", {})
        raise Fail(f"ConfigMap {name} is referenced but not rendered")

    def env(self, container: dict) -> dict[str, str | None]:
        """The container's environment: envFrom ConfigMaps, then `env`
        (a value from a Secret or field is None)."""
        out: dict[str, str | None] = {}
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                out.update(self.configmap(source["configMapRef"]["name"]))
            else:
                raise Fail(f"{container['name']}: envFrom other than a ConfigMap hides names")
        for var in container.get("env", []):
            out[var["name"]] = var.get("value")
        return out


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def pod_labels(workload: dict) -> dict:
    return workload["spec"]["template"]["metadata"].get("labels", {})


def containers(spec: dict) -> list[dict]:
    return spec.get("initContainers", []) + spec.get("containers", [])


def ours(container: dict) -> str | None:
    """The service whose image the container runs, if it is one of ours."""
    repo = container["image"].split("@")[0].rsplit(":", 1)[0]
    for service in SERVICES:
        if repo == f"durable-streams/{service}" or repo.endswith(f"/durable-streams/{service}"):
            return service
    return None


def name_of(workload: dict) -> str:
    return f"{workload['kind']}/{workload['metadata']['name']}"


def seconds(value) -> float:
    return float(value)


# --- Checks --------------------------------------------------------------------

class Checks:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def run(self, title: str, check: Callable[[], None]) -> None:
        try:
            check()
        except Fail as e:
            self.failed += 1
            print(f"FAIL  {title}\n      {e}")
        except Exception as e:  # a bug or a malformed manifest: report, go on
            self.failed += 1
            print(f"FAIL  {title}\n      {type(e).__name__}: {e}")
        else:
            self.passed += 1
            print(f"ok    {title}")


def problems(found: Iterable[str]) -> None:
    found = list(found)
    if found:
        raise Fail("\n      ".join(found))


def check_namespace(m: Manifests) -> None:
    ns = m.get("Namespace", NAMESPACE)
    labels = ns["metadata"].get("labels", {})
    found = []
    if labels.get("pod-security.kubernetes.io/enforce") != "restricted":
        found.append("the namespace does not enforce the restricted Pod Security Standard")
    for d in m.docs:
        if d["kind"] != "Namespace" and d["metadata"].get("namespace") != NAMESPACE:
            found.append(f"{d['kind']}/{d['metadata']['name']} is not in {NAMESPACE}")
    problems(found)


def check_pod_security(m: Manifests) -> None:
    problems(pod_security_problems(m.workloads()))


def pod_security_problems(workloads: list[dict]) -> list[str]:
    found = []
    for w in workloads:
        spec, where = pod_spec(w), name_of(w)
        pod_ctx = spec.get("securityContext", {})
        if spec.get("automountServiceAccountToken") is not False:
            found.append(f"{where}: automountServiceAccountToken is not false")
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(flag):
                found.append(f"{where}: {flag}")
        for c in containers(spec):
            ctx, at = c.get("securityContext", {}), f"{where} container {c['name']}"
            if not (ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) is True):
                found.append(f"{at}: runAsNonRoot is not true")
            if ctx.get("runAsUser", pod_ctx.get("runAsUser")) in (0, None):
                found.append(f"{at}: no non-zero runAsUser")
            if ctx.get("readOnlyRootFilesystem") is not True:
                found.append(f"{at}: root filesystem is writable")
            if ctx.get("allowPrivilegeEscalation") is not False:
                found.append(f"{at}: allowPrivilegeEscalation is not false")
            if ctx.get("privileged"):
                found.append(f"{at}: privileged")
            caps = ctx.get("capabilities", {})
            if "ALL" not in caps.get("drop", []) or caps.get("add"):
                found.append(f"{at}: capabilities are not all dropped")
            seccomp = ctx.get("seccompProfile", pod_ctx.get("seccompProfile", {}))
            if seccomp.get("type") != "RuntimeDefault":
                found.append(f"{at}: seccompProfile is not RuntimeDefault")
            resources = c.get("resources", {})
            for part in ("requests", "limits"):
                for res in ("cpu", "memory"):
                    if res not in resources.get(part, {}):
                        found.append(f"{at}: no {res} {part}")
    return found


# NetworkPolicy, evaluated for the pods of this namespace.

def selects(selector: dict, labels: dict) -> bool:
    for k, v in selector.get("matchLabels", {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions", []):
        key, op, values = e["key"], e["operator"], e.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


class Pod:
    def __init__(self, workload: dict):
        self.name = pod_labels(workload).get("app.kubernetes.io/name", workload["metadata"]["name"])
        self.labels = pod_labels(workload)
        self.ports = {p.get("name"): p["containerPort"]
                      for c in containers(pod_spec(workload)) for p in c.get("ports", [])}


EXTERNAL = "(outside the namespace)"
ANYONE = "(anyone)"


def port_matches(rule: dict, port: int, protocol: str, pod: Pod | None) -> bool:
    if not rule.get("ports"):
        return True
    for p in rule["ports"]:
        if p.get("protocol", "TCP") != protocol:
            continue
        if "port" not in p:
            return True  # every port of this protocol
        number = p["port"]
        if isinstance(number, str):  # a named port of the destination pod
            number = pod.ports.get(number) if pod else None
        if number == port:
            return True
    return False


class Policies:
    def __init__(self, m: Manifests):
        self.policies = [p["spec"] for p in m.of("NetworkPolicy")]
        self.pods = [Pod(w) for w in m.workloads()]

    def pod(self, name: str) -> Pod | None:
        return next((p for p in self.pods if p.name == name), None)

    def _applying(self, pod: Pod, direction: str) -> list[dict]:
        return [p for p in self.policies
                if direction in p.get("policyTypes", ["Ingress"]) and selects(p["podSelector"], pod.labels)]

    def isolated(self, pod: Pod, direction: str) -> bool:
        return bool(self._applying(pod, direction))

    def ingress_sources(self, dst: Pod, port: int, protocol: str = "TCP") -> set[str]:
        """Who may open connections to `dst` on `port`: pod names, or
        EXTERNAL / ANYONE."""
        policies = self._applying(dst, "Ingress")
        if not policies:
            return {ANYONE}
        out: set[str] = set()
        for policy in policies:
            for rule in policy.get("ingress", []):
                if not port_matches(rule, port, protocol, dst):
                    continue
                peers = rule.get("from")
                if not peers:
                    out.add(ANYONE)
                for peer in peers or []:
                    if "podSelector" in peer and "namespaceSelector" not in peer:
                        out |= {p.name for p in self.pods if selects(peer["podSelector"], p.labels)}
                    else:
                        out.add(EXTERNAL)
        return out

    def egress_allowed(self, src: Pod, dst: Pod | None, port: int, protocol: str = "TCP") -> bool:
        """Whether `src` may connect to `dst` (None: a destination outside
        the namespace) on `port`."""
        policies = self._applying(src, "Egress")
        if not policies:
            return True
        for policy in policies:
            for rule in policy.get("egress", []):
                if not port_matches(rule, port, protocol, dst):
                    continue
                peers = rule.get("to")
                if not peers:
                    return True
                for peer in peers:
                    if dst is not None and "podSelector" in peer and "namespaceSelector" not in peer:
                        if selects(peer["podSelector"], dst.labels):
                            return True
                    if dst is None and ("ipBlock" in peer or "namespaceSelector" in peer):
                        return True
        return False

    def can_connect(self, src: Pod, dst: Pod, port: int) -> bool:
        sources = self.ingress_sources(dst, port)
        return self.egress_allowed(src, dst, port) and (src.name in sources or ANYONE in sources)


def check_network_policies(m: Manifests) -> None:
    net = Policies(m)
    found = []
    for pod in net.pods:
        for direction in ("Ingress", "Egress"):
            if not net.isolated(pod, direction):
                found.append(f"{pod.name}: no NetworkPolicy restricts its {direction.lower()}")
        if not net.egress_allowed(pod, None, 53, "UDP"):
            found.append(f"{pod.name}: cannot reach DNS")
    server = net.pod("stream-server")
    gateway = net.pod("auth-gateway")
    migrate = net.pod("auth-gateway-migrate")
    if not (server and gateway and migrate):
        raise Fail("stream-server, auth-gateway and auth-gateway-migrate pods are expected")
    server_port = server.ports["http"]
    sources = net.ingress_sources(server, server_port)
    if sources != {"auth-gateway"}:
        found.append(f"stream-server:{server_port} is reachable from {sorted(sources)}, not the gateway alone")
    senders = {p.name for p in net.pods if p is not server and net.egress_allowed(p, server, server_port)}
    if senders != {"auth-gateway"}:
        found.append(f"pods allowed to send to stream-server:{server_port}: {sorted(senders)}")
    if not net.can_connect(gateway, server, server_port):
        found.append("the gateway cannot reach stream-server")
    if ANYONE not in net.ingress_sources(gateway, gateway.ports["http"]):
        found.append("the Ingress controller (another namespace) cannot reach the gateway")
    # Postgres: the dev overlay's pod, or a database outside the cluster.
    database = net.pod("postgres")
    allowed = {"auth-gateway", "auth-gateway-migrate"}
    senders = {p.name for p in net.pods
               if p is not database and (net.egress_allowed(p, database, 5432) if database
                                         else net.egress_allowed(p, None, 5432))}
    if senders != allowed:
        found.append(f"pods allowed to send to Postgres (5432): {sorted(senders)}, expected {sorted(allowed)}")
    if database:
        sources = net.ingress_sources(database, 5432)
        if sources != allowed:
            found.append(f"Postgres accepts connections from {sorted(sources)}, expected {sorted(allowed)}")
        for pod in (gateway, migrate):
            if not net.can_connect(pod, database, 5432):
                found.append(f"{pod.name} cannot reach Postgres")
    problems(found)


def check_images(m: Manifests) -> None:
    compose = compose_images()
    targets = dockerfile_targets()
    by_target = {target: image for image, target in compose.values() if target}
    third_party = {image.rsplit(":", 1)[0]: image for image, target in compose.values() if not target}
    found = []
    for w in m.workloads():
        spec = pod_spec(w)
        for c in containers(spec):
            image, service, at = c["image"], ours(c), f"{name_of(w)} container {c['name']}"
            if service is None:
                repo = image.rsplit(":", 1)[0]
                if repo in third_party and image != third_party[repo]:
                    found.append(f"{at}: {image}, but compose/compose.yaml runs {third_party[repo]}")
                elif repo not in third_party:
                    found.append(f"{at}: {image} is neither ours nor an image compose/compose.yaml runs")
                continue
            if service not in by_target:
                found.append(f"{at}: compose/compose.yaml builds no target {service}")
                continue
            built = by_target[service]
            stage = targets.get(service)
            if not stage or stage.get("entrypoint") != [service]:
                found.append(f"{at}: compose/Dockerfile has no target {service} with ENTRYPOINT [\"{service}\"]")
            tag = image.split("@")[0].rsplit(":", 1)[1] if ":" in image.split("/")[-1] else ""
            if m.overlay == "production":
                if tag != crate_version(service):
                    found.append(f"{at}: tag {tag!r}, but the release is {crate_version(service)} "
                                 f"(services/{service}/Cargo.toml)")
                if not image.endswith(f"/{built.rsplit(':', 1)[0]}:{tag}"):
                    found.append(f"{at}: {image} is not a registry copy of {built.rsplit(':', 1)[0]}")
            elif image != built:
                found.append(f"{at}: {image}, but `docker compose build` makes {built}")
            uid = spec.get("securityContext", {}).get("runAsUser")
            uid = c.get("securityContext", {}).get("runAsUser", uid)
            if stage and uid != stage.get("uid"):
                found.append(f"{at}: runs as uid {uid}, the image's user is {stage.get('uid')}")
            if c.get("command"):
                found.append(f"{at}: overrides the image's entrypoint ({c['command']})")
    problems(found)


def check_commands(m: Manifests) -> None:
    found = []
    for w in m.workloads():
        for c in containers(pod_spec(w)):
            service = ours(c)
            if not service:
                continue
            commands = subcommands(service)
            args = c.get("args", [])
            if args and args[0] not in commands:
                found.append(f"{name_of(w)}: `{service} {args[0]}` is not a subcommand "
                             f"({', '.join(sorted(commands))})")
    migrate = m.get("Job", "auth-gateway-migrate")
    if [c.get("args") for c in containers(pod_spec(migrate))] != [["migrate"]]:
        found.append("the migration Job does not run `auth-gateway migrate`")
    problems(found)


def check_environment(m: Manifests) -> None:
    known = known_variables()
    found = []
    for w in m.workloads():
        for c in containers(pod_spec(w)):
            service = ours(c)
            if not service:
                continue
            for var in m.env(c):
                if var not in known[service]:
                    found.append(f"{name_of(w)} container {c['name']}: {var} is not read by {service}")
    problems(found)


def effective(m: Manifests, container: dict) -> dict[str, str]:
    """Environment with the binary's defaults (.env.sample) for what is unset."""
    env = {k: v for k, v in defaults().items()}
    env.update({k: v for k, v in m.env(container).items() if v is not None})
    return env


def the_container(m: Manifests, kind: str, name: str) -> tuple[dict, dict]:
    w = m.get(kind, name)
    found = [c for c in pod_spec(w)["containers"] if ours(c) == name]
    if not found:
        raise Fail(f"{kind}/{name} has no container running the {name} image")
    return w, found[0]


def check_ports_and_probes(m: Manifests) -> None:
    found = []
    for kind, service, prefix in (("StatefulSet", "stream-server", "DS_SERVER__"),
                                  ("Deployment", "auth-gateway", "GW_SERVER__")):
        w, c = the_container(m, kind, service)
        env = effective(m, c)
        port = int(env[prefix + "PORT"])
        named = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        if named.get("http") != port:
            found.append(f"{service}: containerPort http is {named.get('http')}, the binary listens on {port}")
        if env[prefix + "HOST"] not in ("0.0.0.0", "::"):
            found.append(f"{service}: listens on {env[prefix + 'HOST']}, unreachable from outside the pod")
        served = routes(service)
        expected = {"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/healthz"}
        for probe, path in expected.items():
            spec = c.get(probe)
            if not spec:
                found.append(f"{service}: no {probe}")
                continue
            get = spec.get("httpGet", {})
            if get.get("path") != path or path not in served:
                found.append(f"{service}: {probe} on {get.get('path')!r}; expected {path} "
                             f"(served: {', '.join(sorted(p for p in served if not p.startswith('/admin')))})")
            if get.get("port") not in named and get.get("port") != port:
                found.append(f"{service}: {probe} on port {get.get('port')!r}, which the container does not expose")
    problems(found)


def check_services(m: Manifests) -> None:
    found = []
    pods = [(w, pod_labels(w)) for w in m.workloads()]
    for svc in m.of("Service"):
        name = svc["metadata"]["name"]
        selected = [w for w, labels in pods if selects({"matchLabels": svc["spec"].get("selector", {})}, labels)]
        if not selected:
            found.append(f"Service {name} selects no pod")
            continue
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            exposed = {p.get("name") for w in selected for c in containers(pod_spec(w)) for p in c.get("ports", [])}
            exposed |= {p["containerPort"] for w in selected for c in containers(pod_spec(w)) for p in c.get("ports", [])}
            if target not in exposed:
                found.append(f"Service {name}: targetPort {target!r} is no port of {name_of(selected[0])}")
    sts = m.get("StatefulSet", "stream-server")
    if sts["spec"].get("serviceName") not in {s["metadata"]["name"] for s in m.of("Service")
                                              if s["spec"].get("clusterIP") == "None"}:
        found.append("stream-server's serviceName is not a headless Service")
    problems(found)


def service_for(m: Manifests, url: str) -> tuple[dict | None, int]:
    parts = urlsplit(url)
    host = (parts.hostname or "").split(".")[0]
    port = parts.port or (443 if parts.scheme == "https" else 80)
    svc = next((s for s in m.of("Service") if s["metadata"]["name"] == host), None)
    return svc, port


def check_wiring(m: Manifests) -> None:
    """Settings that name other objects, and settings that must agree."""
    found = []
    sts, server = the_container(m, "StatefulSet", "stream-server")
    dep, gateway = the_container(m, "Deployment", "auth-gateway")
    ds, gw = effective(m, server), effective(m, gateway)

    # The gateway's upstream is the ClusterIP Service of stream-server.
    svc, port = service_for(m, gw["GW_UPSTREAM__URL"])
    if not svc or svc["spec"].get("clusterIP") == "None":
        found.append(f"GW_UPSTREAM__URL {gw['GW_UPSTREAM__URL']} names no ClusterIP Service")
    elif not selects({"matchLabels": svc["spec"]["selector"]}, pod_labels(sts)):
        found.append(f"GW_UPSTREAM__URL's Service {svc['metadata']['name']} does not select stream-server")
    elif port not in [p["port"] for p in svc["spec"]["ports"]]:
        found.append(f"GW_UPSTREAM__URL port {port} is not a port of Service {svc['metadata']['name']}")

    # Both services export to an endpoint the network policy lets them reach.
    for who, env in (("stream-server", ds), ("auth-gateway", gw)):
        endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        if not endpoint:
            continue
        svc, port = service_for(m, endpoint)
        if svc and port not in [p["port"] for p in svc["spec"]["ports"]]:
            found.append(f"{who}: OTEL_EXPORTER_OTLP_ENDPOINT port {port} is not a port of Service "
                         f"{svc['metadata']['name']}")
        expected = {"http/protobuf": 4318, "grpc": 4317}.get(env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"))
        if svc and port != expected:
            found.append(f"{who}: OTEL_EXPORTER_OTLP_ENDPOINT port {port} does not speak "
                         f"{env.get('OTEL_EXPORTER_OTLP_PROTOCOL', 'http/protobuf')}")
        net = Policies(m)
        pod = net.pod(who)
        target = None
        if svc:
            target = next((p for p in net.pods if selects({"matchLabels": svc["spec"]["selector"]}, p.labels)), None)
        if not net.egress_allowed(pod, target, port):
            found.append(f"{who}: NetworkPolicy blocks export to {endpoint}")
        if target and pod.name not in net.ingress_sources(target, port):
            found.append(f"{who}: the collector's NetworkPolicy refuses it")

    # Data on the volume, in a directory of its own below the mount point.
    if ds["DS_STORAGE__MODE"] not in ("acid", "redb"):
        found.append(f"DS_STORAGE__MODE is {ds['DS_STORAGE__MODE']}, not acid")
    claims = {t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])}
    mounts = [v["mountPath"].rstrip("/") for v in server.get("volumeMounts", []) if v["name"] in claims]
    data_dir = ds["DS_STORAGE__DATA_DIR"].rstrip("/")
    if not any(data_dir.startswith(mount + "/") for mount in mounts):
        found.append(f"DS_STORAGE__DATA_DIR {data_dir} is not a directory below the volume's mount {mounts}")
    if sts["spec"].get("replicas") != 1:
        found.append("stream-server must run exactly one replica (single writer)")
    if any(h["spec"]["scaleTargetRef"]["name"] == "stream-server" for h in m.of("HorizontalPodAutoscaler")):
        found.append("an autoscaler targets stream-server, which must stay at one replica")

    # The signing key file is inside the mounted Secret.
    key_file = gw.get("GW_JWT__KEY_FILE", "")
    secret_volumes = {v["name"]: v["secret"]["secretName"] for v in pod_spec(dep).get("volumes", []) if "secret" in v}
    if not any(key_file.startswith(v["mountPath"].rstrip("/") + "/")
               for v in gateway.get("volumeMounts", []) if v["name"] in secret_volumes):
        found.append(f"GW_JWT__KEY_FILE {key_file} is not inside a mounted Secret")

    # Grace periods: the kubelet waits longer than the services drain.
    server_grace = seconds(ds["DS_SERVER__SHUTDOWN_GRACE_SECS"])
    if pod_spec(sts).get("terminationGracePeriodSeconds", 30) <= server_grace:
        found.append(f"stream-server: terminationGracePeriodSeconds is not above DS_SERVER__SHUTDOWN_GRACE_SECS "
                     f"({server_grace})")
    pre_stop = gateway.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    gateway_grace = seconds(gw["GW_SERVER__SHUTDOWN_GRACE_SECS"]) + pre_stop
    if pod_spec(dep).get("terminationGracePeriodSeconds", 30) <= gateway_grace:
        found.append(f"auth-gateway: terminationGracePeriodSeconds is not above preStop + "
                     f"GW_SERVER__SHUTDOWN_GRACE_SECS ({gateway_grace})")

    # The gateway checks paths as the server does.
    for gw_name, ds_name in (("GW_HTTP__STREAM_BASE_PATH", "DS_HTTP__STREAM_BASE_PATH"),
                             ("GW_LIMITS__MAX_PATH_BYTES", "DS_LIMITS__MAX_PATH_BYTES"),
                             ("GW_LIMITS__MAX_PATH_SEGMENTS", "DS_LIMITS__MAX_PATH_SEGMENTS")):
        if gw[gw_name] != ds[ds_name]:
            found.append(f"{gw_name} ({gw[gw_name]}) differs from {ds_name} ({ds[ds_name]})")
    if seconds(gw["GW_UPSTREAM__POOL_IDLE_TIMEOUT_SECS"]) >= seconds(ds["DS_SERVER__HEADER_READ_TIMEOUT_SECS"]):
        found.append("GW_UPSTREAM__POOL_IDLE_TIMEOUT_SECS is not below DS_SERVER__HEADER_READ_TIMEOUT_SECS")

    # Replicas: at least two, and all of them at their connection limit fit
    # in stream-server's.
    hpa = next((h for h in m.of("HorizontalPodAutoscaler")
                if h["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                                   "name": "auth-gateway"}), None)
    if not hpa:
        found.append("no HorizontalPodAutoscaler for the gateway")
    else:
        if hpa["spec"].get("minReplicas", 1) < 2:
            found.append("the gateway's autoscaler allows fewer than 2 replicas")
        total = hpa["spec"]["maxReplicas"] * int(gw["GW_SERVER__MAX_CONNECTIONS"])
        if total > int(ds["DS_SERVER__MAX_CONNECTIONS"]):
            found.append(f"maxReplicas x GW_SERVER__MAX_CONNECTIONS = {total} exceeds "
                         f"DS_SERVER__MAX_CONNECTIONS ({ds['DS_SERVER__MAX_CONNECTIONS']})")
    if "replicas" in dep["spec"]:
        found.append("the gateway Deployment sets replicas, which the autoscaler owns")
    if not any(selects(p["spec"]["selector"], pod_labels(dep)) for p in m.of("PodDisruptionBudget")):
        found.append("no PodDisruptionBudget covers the gateway")
    if not pod_spec(dep).get("topologySpreadConstraints"):
        found.append("the gateway's replicas are not spread (topologySpreadConstraints)")
    problems(found)


def nginx_size(value: str) -> int:
    m = re.fullmatch(r"(\d+)([kKmMgG]?)", value.strip())
    if not m:
        raise Fail(f"cannot read size {value!r}")
    return int(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2).lower()]


def check_ingress(m: Manifests) -> None:
    found = []
    _, gateway = the_container(m, "Deployment", "auth-gateway")
    _, server = the_container(m, "StatefulSet", "stream-server")
    gw, ds = effective(m, gateway), effective(m, server)
    ingresses = m.of("Ingress")
    if not ingresses:
        raise Fail("no Ingress")
    for ing in ingresses:
        name, spec = ing["metadata"]["name"], ing["spec"]
        notes = ing["metadata"].get("annotations", {})
        tls_hosts = {h for t in spec.get("tls", []) for h in t.get("hosts", [])}
        for rule in spec.get("rules", []):
            if rule.get("host") not in tls_hosts:
                found.append(f"Ingress {name}: host {rule.get('host')} has no TLS")
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                svc = next((s for s in m.of("Service") if s["metadata"]["name"] == backend["name"]), None)
                port = backend["port"].get("name", backend["port"].get("number"))
                if not svc or port not in {p.get("name") for p in svc["spec"]["ports"]} | {
                        p["port"] for p in svc["spec"]["ports"]}:
                    found.append(f"Ingress {name}: backend {backend} is no Service port")
        prefix = "nginx.ingress.kubernetes.io/"
        if notes.get(prefix + "proxy-buffering") != "off":
            found.append(f"Ingress {name}: response buffering is on (SSE and long-poll would stall)")
        if notes.get(prefix + "proxy-request-buffering") != "off":
            found.append(f"Ingress {name}: request buffering is on (uploads would not stream)")
        live = max(seconds(ds["DS_SERVER__SSE_RECONNECT_INTERVAL_SECS"]),
                   seconds(ds["DS_SERVER__LONG_POLL_TIMEOUT_SECS"]))
        for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
            if seconds(notes.get(prefix + timeout, 60)) <= live:
                found.append(f"Ingress {name}: {timeout} is not above the longest live read ({live} s)")
        body = nginx_size(notes.get(prefix + "proxy-body-size", "1m"))
        if body < int(gw["GW_LIMITS__MAX_REQUEST_BODY_BYTES"]):
            found.append(f"Ingress {name}: proxy-body-size {body} is below GW_LIMITS__MAX_REQUEST_BODY_BYTES")
        routed = {path["path"].rstrip("/") for rule in spec.get("rules", []) for path in rule["http"]["paths"]
                  if path["backend"]["service"]["name"] == "auth-gateway"}
        for needed in (gw["GW_HTTP__STREAM_BASE_PATH"], "/admin"):
            if not any(needed == r or needed.startswith(r + "/") or r == "" for r in routed):
                found.append(f"Ingress {name}: {needed} is not routed to the gateway")
        public = gw.get("GW_SERVER__PUBLIC_URL")
        if public:
            parts = urlsplit(public)
            if parts.scheme != "https" or parts.hostname not in tls_hosts:
                found.append(f"GW_SERVER__PUBLIC_URL {public} is not https on the Ingress host {sorted(tls_hosts)}")
    if m.overlay == "production" and not gw.get("GW_SERVER__PUBLIC_URL"):
        found.append("production leaves GW_SERVER__PUBLIC_URL unset (Location would follow the client's Host)")
    problems(found)


def check_secrets_documented(m: Manifests) -> None:
    """Every Secret the manifests use is one the README says how to create."""
    readme = read(DEPLOY_README)
    names = set()
    for w in m.workloads():
        spec = pod_spec(w)
        names |= {v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}
        for c in containers(spec):
            names |= {e["valueFrom"]["secretKeyRef"]["name"] for e in c.get("env", [])
                      if "secretKeyRef" in e.get("valueFrom", {})}
    names |= {t["secretName"] for i in m.of("Ingress") for t in i["spec"].get("tls", [])}
    if any(d["kind"] == "Secret" for d in m.docs):
        raise Fail("a Secret is committed in the manifests")
    problems(f"Secret {name} is used but deploy/README.md never creates it (`kubectl ... create secret ... {name}`)"
             for name in sorted(names)
             if not re.search(rf"create secret \w+ {re.escape(name)}\b", readme))


def readme_invocations(text: str) -> list[tuple[str, str, list[str]]]:
    """Our binaries as the README's code blocks run them: the binary's name
    at the start of a command or after `--` (kubectl exec/run), or an image
    of ours followed by arguments (docker run). -> (line, binary, the words
    after it that are not options)."""
    out = []
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", text, re.M | re.S)
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S))
    for line in "\n".join(blocks).splitlines() + spans:
        tokens = line.split()
        for i, token in enumerate(tokens):
            image = "/" in token and ":" in token
            name = token.split("@")[0].rsplit(":", 1)[0].rsplit("/", 1)[-1] if image else token
            if name not in SERVICES:
                continue
            if not (image or i == 0 or tokens[i - 1] in ("--", "$", "$(")):
                continue
            words = []
            for word in tokens[i + 1:]:
                if not re.fullmatch(r"[a-z][a-z-]*", word):
                    break
                words.append(word)
            if words:  # a name or an image alone runs nothing
                out.append((line, name, words[:2]))
    return out


def check_readme(min_kubernetes: str) -> None:
    readme = read(DEPLOY_README)
    found = []
    if f"Kubernetes {min_kubernetes}" not in readme:
        found.append(f"deploy/README.md does not name Kubernetes {min_kubernetes}, the version validated against")
    if "kubectl apply -k deploy/overlays/production" not in readme:
        found.append("deploy/README.md does not show `kubectl apply -k deploy/overlays/production`")
    # Every command of ours the README runs is a real subcommand.
    for line, service, words in readme_invocations(readme):
        commands = subcommands(service)
        if words[0] not in commands:
            found.append(f"deploy/README.md runs `{service} {' '.join(words)}`: no such subcommand "
                         f"({', '.join(sorted(commands))})")
        elif commands[words[0]] and (len(words) < 2 or words[1] not in commands[words[0]]):
            found.append(f"deploy/README.md runs `{service} {' '.join(words)}`: "
                         f"{words[0]} takes {', '.join(sorted(commands[words[0]]))}")
    problems(found)


# checkov

def readme_skips() -> dict[str, str]:
    """Checks deploy/README.md lists as left failing: id -> reason."""
    section = readme_section(read(DEPLOY_README), "Policy checks left failing")
    out = {}
    for line in section.splitlines():
        m = re.match(r"\|\s*`(CKV2?_K8S_\d+)`[^|]*\|(.*)\|\s*$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def checkov_results(path: Path) -> tuple[dict[str, set[str]], set[str]]:
    """Failed check id -> resources, and the ids that passed."""
    if not path.is_file():
        raise Fail(f"{path} is missing: did checkov run?")
    report = json.loads(read(path))
    reports = report if isinstance(report, list) else [report]
    failed: dict[str, set[str]] = {}
    passed: set[str] = set()
    for r in reports:
        if r.get("check_type") != "kubernetes":
            continue
        if r["summary"].get("parsing_errors"):
            raise Fail(f"checkov could not parse {path.name}")
        for c in r["results"]["failed_checks"]:
            failed.setdefault(c["check_id"], set()).add(c["resource"])
        passed |= {c["check_id"] for c in r["results"]["passed_checks"]}
    if not passed:
        raise Fail(f"checkov ran no Kubernetes check on {path.name}")
    return failed, passed


def check_checkov(path: Path) -> None:
    failed, passed = checkov_results(path)
    listed = readme_skips()
    found = []
    for check, resources in sorted(failed.items()):
        if check in REQUIRED_CHECKOV:
            found.append(f"{check} ({REQUIRED_CHECKOV[check]}) fails on {', '.join(sorted(resources))}")
        elif check not in listed:
            found.append(f"{check} fails on {', '.join(sorted(resources))} and is not listed in deploy/README.md "
                         f"(\"Policy checks left failing\")")
    for check in REQUIRED_CHECKOV:
        if check in listed:
            found.append(f"{check} ({REQUIRED_CHECKOV[check]}) is a security point and may not be left failing")
        elif check not in passed:
            found.append(f"{check} ({REQUIRED_CHECKOV[check]}) did not run on any resource")
    problems(found)
    for check in sorted(failed):
        print(f"      left failing, as deploy/README.md says: {check} ({len(failed[check])} resources)")


def check_listed_skips_still_fail(paths: list[Path]) -> None:
    failing = set()
    for path in paths:
        failing |= set(checkov_results(path)[0])
    problems(f"{check} is listed in deploy/README.md as left failing but passes everywhere: remove the row"
             for check in sorted(set(readme_skips()) - failing))


def check_tools(path: Path, production: Manifests) -> None:
    """deploy/tools/: the helper pod mounts stream-server's claim, runs the
    production overlay's image, and keeps the pods' security settings."""
    found = []
    pod = yaml.safe_load(read(path))
    sts = production.get("StatefulSet", "stream-server")
    claim = f"{sts['spec']['volumeClaimTemplates'][0]['metadata']['name']}-{sts['metadata']['name']}-0"
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v]
    if claims != [claim]:
        found.append(f"{path.name} mounts {claims}, stream-server's claim is {claim}")
    _, server = the_container(production, "StatefulSet", "stream-server")
    images = [c["image"] for c in pod["spec"]["containers"]]
    if images != [server["image"]]:
        found.append(f"{path.name} runs {images}, the production overlay deploys {server['image']}")
    mounts = {m["mountPath"] for c in pod["spec"]["containers"] for m in c.get("volumeMounts", [])}
    if {m["mountPath"] for m in server["volumeMounts"]} - mounts:
        found.append(f"{path.name} mounts the volume elsewhere than stream-server ({sorted(mounts)})")
    # The pod as the template of a workload, for the same security checks.
    as_workload = {"kind": "Pod", "metadata": pod["metadata"],
                   "spec": {"template": {"metadata": pod["metadata"], "spec": pod["spec"]}}}
    found += pod_security_problems([as_workload])
    problems(found)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rendered", type=Path, required=True)
    parser.add_argument("--checkov", type=Path, required=True)
    parser.add_argument("--min-kubernetes", required=True)
    parser.add_argument("overlays", nargs="+")
    args = parser.parse_args()

    checks = Checks()
    for overlay in args.overlays:
        print(f"\n-- overlay {overlay}")
        m = Manifests(overlay, args.rendered / f"{overlay}.yaml")
        for title, check in (
            ("namespace: restricted Pod Security, everything inside it", check_namespace),
            ("pods: non-root, read-only root, no capabilities, RuntimeDefault seccomp, no token, "
             "requests and limits", check_pod_security),
            ("network policies: only the gateway reaches stream-server, only the gateway and the "
             "migration Job reach Postgres", check_network_policies),
            ("images match compose/compose.yaml and compose/Dockerfile", check_images),
            ("container args are the binaries' subcommands", check_commands),
            ("every environment variable set is one the binary reads", check_environment),
            ("ports and probe paths match the binaries", check_ports_and_probes),
            ("Services select pods and target their ports", check_services),
            ("settings that name objects or must agree do", check_wiring),
            ("Ingress: TLS, no buffering, timeouts above live reads, body size", check_ingress),
            ("every Secret used is created in deploy/README.md", check_secrets_documented),
        ):
            checks.run(title, lambda check=check: check(m))
        checks.run("checkov: only the checks deploy/README.md lists fail",
                   lambda overlay=overlay: check_checkov(args.checkov / f"{overlay}.json"))
    if "production" in args.overlays:
        print("\n-- deploy/tools")
        production = Manifests("production", args.rendered / "production.yaml")
        for tool in sorted((ROOT / "deploy" / "tools").glob("*.yaml")):
            checks.run(f"{tool.name}: stream-server's volume and image, restricted pod",
                       lambda tool=tool: check_tools(tool, production))
    print("\n-- deploy/README.md")
    checks.run("names the Kubernetes version and commands that exist", lambda: check_readme(args.min_kubernetes))
    checks.run("every check listed as left failing still fails somewhere",
               lambda: check_listed_skips_still_fail([args.checkov / f"{o}.json" for o in args.overlays]))
    print(f"\n{checks.passed} passed, {checks.failed} failed")
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
