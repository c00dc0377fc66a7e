#!/usr/bin/env python3
"""Offline consistency checks for the Compose stack's observability configs.

Nothing here starts a container: each check reads the files under compose/
and asserts that the parts that must agree do (ports, service names,
datasource uids, metric names), so a typo is caught before `docker compose
up` hides it in a log.

    python3 tests/stack/check_configs.py

Exit status: 0 when every check passes, 1 when any fails, 2 when PyYAML is
missing. Needs Python 3.11 and PyYAML only.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from functools import cache
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

try:
    import yaml
except ImportError:
    print("check_configs.py needs PyYAML: pip install pyyaml", file=sys.stderr)
    sys.exit(2)

# The repository root, whatever the working directory.
ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
COLLECTOR = COMPOSE_DIR / "otel-collector.yaml"
TEMPO = COMPOSE_DIR / "tempo.yaml"
PROMETHEUS = COMPOSE_DIR / "prometheus.yml"
DATASOURCES = COMPOSE_DIR / "grafana/provisioning/datasources/datasources.yaml"
DASHBOARD_PROVIDERS = COMPOSE_DIR / "grafana/provisioning/dashboards/dashboards.yaml"
DASHBOARD_DIR = COMPOSE_DIR / "grafana/dashboards"

# Compose service names, which are also the hostnames on the stack's network.
SERVICES = {
    "postgres", "auth-gateway", "stream-server", "otel-collector",
    "tempo", "prometheus", "grafana",
}
PROMETHEUS_PORT = 9090  # the image's default --web.listen-address
# Ports the rest of the stack (compose.yaml, its comments, docs) relies on.
COLLECTOR_PORTS = {
    "receivers.otlp.protocols.grpc": 4317,
    "receivers.otlp.protocols.http": 4318,
    "extensions.health_check": 13133,
    "exporters.prometheus": 8889,
}

# The OTLP metrics the services export (OpenTelemetry name: instrument).
METRICS = {
    "http.server.request.duration": "histogram",
    "http.server.active_requests": "updowncounter",
    "ds.appended.bytes": "counter",
    "ds.appended.messages": "counter",
    "ds.streams": "gauge",
    "ds.live.connections": "updowncounter",
    "ds.storage.commit.duration": "histogram",
    "ds.storage.commit.group_size": "histogram",
    "ds.gateway.auth.decisions": "counter",
    "ds.gateway.token_cache.lookups": "counter",
    "db.client.operation.duration": "histogram",
    "ds.gateway.upstream.duration": "histogram",
    "ds.gateway.upstream.errors": "counter",
}
# Their attributes, which become labels of the same name with `_` for `.`.
ATTRIBUTES = {
    "http.request.method", "http.route", "http.response.status_code",
    "ds.live", "ds.storage.mode", "ds.auth.outcome", "ds.auth.cache",
    "db.system.name", "db.operation.name",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
PROM_METRICS = {name.replace(".", "_"): kind for name, kind in METRICS.items()}
PROM_LABELS = {name.replace(".", "_") for name in ATTRIBUTES}
# Names this project owns: anything matching must be one of the above.
OWN_NAME = re.compile(r"\b(?:ds|http|db)_[a-z_]+\b")


class Fail(Exception):
    """A check cannot go on: its message says why."""


class Skip(Exception):
    """A check does not apply: its message says why."""


# --- Loading ---------------------------------------------------------------

class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads Compose's own tags (!reset, !override)."""


def _any_tag(loader, _suffix, node):
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


_Loader.add_multi_constructor("!", _any_tag)


def rel(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


@cache
def load_yaml(path: Path):
    if not path.is_file():
        raise Fail(f"{rel(path)} is missing")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except yaml.YAMLError as e:
        raise Fail(f"{rel(path)} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise Fail(f"{rel(path)} should hold a mapping at the top, not {type(data).__name__}")
    return data


@cache
def load_json(path: Path):
    if not path.is_file():
        raise Fail(f"{rel(path)} is missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise Fail(f"{rel(path)} is not valid JSON: {e}") from e


def dashboards() -> list[Path]:
    found = sorted(DASHBOARD_DIR.glob("*.json"))
    if not found:
        raise Fail(f"no dashboard JSON in {rel(DASHBOARD_DIR)}")
    return found


def compose():
    if not COMPOSE_FILE.is_file():
        raise Skip(f"{rel(COMPOSE_FILE)} absent, nothing to compare")
    return load_yaml(COMPOSE_FILE)


def dig(data, *keys, default=None):
    """data[k1][k2]...; `default` when any step is missing."""
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return default
        data = data[key]
    return data


def walk(data, path=""):
    """Every (path, key, value) of nested dicts and lists."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield path, key, value
            yield from walk(value, f"{path}.{key}" if path else str(key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from walk(value, f"{path}[{i}]")


def host_port(address: str) -> tuple[str, int | None]:
    """Host and port of `host:port` or a URL (port None when absent)."""
    address = str(address).strip()
    parts = urlsplit(address if "://" in address else f"//{address}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None and parts.scheme in ("http", "https") and "://" in address:
        port = 443 if parts.scheme == "https" else 80
    return parts.hostname or "", port


def component_type(component_id: str) -> str:
    return component_id.split("/", 1)[0]


# --- The collector ---------------------------------------------------------

def collector_pipelines() -> dict:
    pipelines = dig(load_yaml(COLLECTOR), "service", "pipelines")
    if not isinstance(pipelines, dict) or not pipelines:
        raise Fail(f"{rel(COLLECTOR)}: service.pipelines is empty")
    return pipelines


def collector_listen_port(*keys) -> int:
    endpoint = dig(load_yaml(COLLECTOR), *keys)
    if not endpoint:
        raise Fail(f"{rel(COLLECTOR)}: {'.'.join(keys)}.endpoint is not set")
    _, port = host_port(endpoint)
    if port is None:
        raise Fail(f"{rel(COLLECTOR)}: {'.'.join(keys)} has no port in {endpoint!r}")
    return port


def otlp_ports() -> dict[str, int]:
    """Port of each OTLP protocol the collector receives: grpc, http."""
    protocols = dig(load_yaml(COLLECTOR), "receivers", "otlp", "protocols") or {}
    return {
        proto: collector_listen_port("receivers", "otlp", "protocols", proto, "endpoint")
        for proto in protocols
    }


def collector_ports() -> set[int]:
    """Every port the collector listens on (OTLP, health, prometheus)."""
    ports = set(otlp_ports().values())
    ports.add(collector_listen_port("extensions", "health_check", "endpoint"))
    ports.add(collector_listen_port("exporters", "prometheus", "endpoint"))
    return ports


def check_files_parse() -> list[str]:
    """Every YAML file under compose/ and every dashboard JSON parses."""
    problems = []
    files = sorted([*COMPOSE_DIR.rglob("*.yaml"), *COMPOSE_DIR.rglob("*.yml")])
    for required in (COLLECTOR, TEMPO, PROMETHEUS, DATASOURCES, DASHBOARD_PROVIDERS):
        if required not in files:
            problems.append(f"{rel(required)} is missing")
    for path in files:
        try:
            load_yaml(path)
        except Fail as e:
            problems.append(str(e))
    try:
        for path in dashboards():
            try:
                if not isinstance(load_json(path), dict):
                    problems.append(f"{rel(path)}: a dashboard is a JSON object")
            except Fail as e:
                problems.append(str(e))
    except Fail as e:
        problems.append(str(e))
    return problems


def check_collector_references() -> list[str]:
    """Collector: every component a pipeline or service.extensions names is defined."""
    config = load_yaml(COLLECTOR)
    problems = []
    for name, pipeline in collector_pipelines().items():
        if component_type(name) not in ("traces", "metrics", "logs"):
            problems.append(f"pipeline {name!r}: type must be traces, metrics or logs")
        if not isinstance(pipeline, dict):
            problems.append(f"pipeline {name!r} is not a mapping")
            continue
        for section in ("receivers", "processors", "exporters"):
            used = pipeline.get(section) or []
            if section != "processors" and not used:
                problems.append(f"pipeline {name!r} has no {section}")
            defined = config.get(section) or {}
            for component in used:
                if component not in defined:
                    problems.append(
                        f"pipeline {name!r} uses {section[:-1]} {component!r}, "
                        f"not defined under {section}: (defined: {sorted(defined)})")
    defined = config.get("extensions") or {}
    for extension in dig(config, "service", "extensions", default=[]) or []:
        if extension not in defined:
            problems.append(f"service.extensions names {extension!r}, not defined under extensions:")
    return problems


def check_collector_memory_limiter_first() -> list[str]:
    """Collector: memory_limiter comes first, and batch after it, in every pipeline."""
    config = load_yaml(COLLECTOR)
    problems = []
    for name, pipeline in collector_pipelines().items():
        processors = list((pipeline or {}).get("processors") or [])
        types = [component_type(p) for p in processors]
        if not types or types[0] != "memory_limiter":
            problems.append(f"pipeline {name!r}: processors {processors} must start with memory_limiter")
        if "batch" not in types:
            problems.append(f"pipeline {name!r}: no batch processor")
    for component, settings in (config.get("processors") or {}).items():
        if component_type(component) != "memory_limiter":
            continue
        settings = settings or {}
        if "check_interval" not in settings:
            problems.append(f"processor {component!r}: check_interval is required")
        if "limit_mib" not in settings and "limit_percentage" not in settings:
            problems.append(f"processor {component!r}: set limit_mib (and spike_limit_mib)")
    return problems


def check_collector_binds_all_interfaces() -> list[str]:
    """Collector: receivers, health_check and the prometheus exporter listen on 0.0.0.0 at the stack's ports."""
    config = load_yaml(COLLECTOR)
    problems = []
    listeners: dict[str, object] = {}
    for receiver, settings in (config.get("receivers") or {}).items():
        protocols = dig(settings, "protocols")
        if isinstance(protocols, dict):
            for proto, proto_settings in protocols.items():
                # An absent endpoint defaults to localhost in recent collectors.
                listeners[f"receivers.{receiver}.protocols.{proto}"] = dig(proto_settings, "endpoint")
        else:
            listeners[f"receivers.{receiver}"] = dig(settings, "endpoint")
    for component, settings in (config.get("extensions") or {}).items():
        if component_type(component) == "health_check":
            listeners[f"extensions.{component}"] = dig(settings, "endpoint")
    for component, settings in (config.get("exporters") or {}).items():
        if component_type(component) == "prometheus":
            listeners[f"exporters.{component}"] = dig(settings, "endpoint")
    if not listeners:
        problems.append("no receivers defined")
    for where, endpoint in listeners.items():
        if not endpoint:
            problems.append(f"{where}: no endpoint; the default is localhost, unreachable "
                            "from other containers: set 0.0.0.0:<port>")
            continue
        host, port = host_port(endpoint)
        if host != "0.0.0.0" or port is None:
            problems.append(f"{where}.endpoint is {endpoint!r}, expected 0.0.0.0:<port>")
        elif where in COLLECTOR_PORTS and port != COLLECTOR_PORTS[where]:
            problems.append(f"{where}.endpoint port is {port}; the stack uses {COLLECTOR_PORTS[where]}")
    for where in COLLECTOR_PORTS.keys() - listeners.keys():
        problems.append(f"{where} is not configured")
    return problems


def check_collector_to_tempo() -> list[str]:
    """Collector's otlp/tempo exporter reaches Tempo's OTLP gRPC receiver."""
    collector = load_yaml(COLLECTOR)
    tempo = load_yaml(TEMPO)
    problems = []
    exporter = dig(collector, "exporters", "otlp/tempo")
    if not isinstance(exporter, dict):
        raise Fail("exporters.otlp/tempo is not defined")
    receiver = dig(tempo, "distributor", "receivers", "otlp", "protocols", "grpc")
    if not isinstance(receiver, dict) or not receiver.get("endpoint"):
        raise Fail(f"{rel(TEMPO)}: distributor.receivers.otlp.protocols.grpc.endpoint is not set")
    _, tempo_port = host_port(receiver["endpoint"])
    host, port = host_port(exporter.get("endpoint", ""))
    if host != "tempo":
        problems.append(f"otlp/tempo endpoint host is {host!r}, expected the service name 'tempo'")
    if port != tempo_port:
        problems.append(f"otlp/tempo endpoint port {port} differs from Tempo's OTLP gRPC "
                        f"receiver port {tempo_port} ({receiver['endpoint']})")
    if "tls" not in receiver and dig(exporter, "tls", "insecure") is not True:
        problems.append("Tempo's receiver has no TLS: otlp/tempo needs tls.insecure: true")
    traces = [name for name, p in collector_pipelines().items()
              if component_type(name) == "traces" and "otlp/tempo" in ((p or {}).get("exporters") or [])]
    if not traces:
        problems.append("no traces pipeline exports to otlp/tempo")
    return problems


def check_collector_prometheus_naming() -> list[str]:
    """Collector's prometheus exporter names series as the dashboard expects."""
    exporter = dig(load_yaml(COLLECTOR), "exporters", "prometheus")
    if not isinstance(exporter, dict):
        raise Fail("exporters.prometheus is not defined")
    problems = []
    if exporter.get("add_metric_suffixes") is not False:
        problems.append("add_metric_suffixes must be false (the dashboard uses no unit/_total suffixes)")
    if dig(exporter, "resource_to_telemetry_conversion", "enabled") is not True:
        problems.append("resource_to_telemetry_conversion.enabled must be true (service_name label)")
    if exporter.get("enable_open_metrics") is True:
        problems.append("enable_open_metrics adds _total to counters, which the dashboard does not expect")
    metrics = [name for name, p in collector_pipelines().items()
               if component_type(name) == "metrics" and "prometheus" in ((p or {}).get("exporters") or [])]
    if not metrics:
        problems.append("no metrics pipeline exports to prometheus")
    return problems


# --- Tempo and Prometheus ----------------------------------------------------

def scrape_jobs() -> list[dict]:
    jobs = load_yaml(PROMETHEUS).get("scrape_configs") or []
    if not jobs:
        raise Fail(f"{rel(PROMETHEUS)}: no scrape_configs")
    return jobs


def job_targets(job: dict) -> list[str]:
    return [str(t) for sc in job.get("static_configs") or [] for t in sc.get("targets") or []]


def check_metrics_path() -> list[str]:
    """Prometheus scrapes the collector's exporter port; Tempo remote-writes to Prometheus."""
    problems = []
    exporter_port = collector_listen_port("exporters", "prometheus", "endpoint")
    jobs = scrape_jobs()
    collector_targets = [t for job in jobs for t in job_targets(job)
                         if host_port(t)[0] == "otel-collector"]
    if not collector_targets:
        problems.append(f"{rel(PROMETHEUS)}: no scrape target otel-collector:{exporter_port}")
    for target in collector_targets:
        if host_port(target)[1] != exporter_port:
            problems.append(f"{rel(PROMETHEUS)}: target {target!r} differs from the collector's "
                            f"prometheus exporter port {exporter_port}")
    self_targets = [t for job in jobs if job.get("job_name") == "prometheus" for t in job_targets(job)]
    if not self_targets:
        problems.append(f"{rel(PROMETHEUS)}: no 'prometheus' job scraping Prometheus itself")
    for target in self_targets:
        if host_port(target)[1] != PROMETHEUS_PORT:
            problems.append(f"{rel(PROMETHEUS)}: self-scrape target {target!r} is not port {PROMETHEUS_PORT}")

    writes = dig(load_yaml(TEMPO), "metrics_generator", "storage", "remote_write") or []
    if not writes:
        problems.append(f"{rel(TEMPO)}: metrics_generator.storage.remote_write is empty")
    for write in writes:
        url = str((write or {}).get("url", ""))
        host, port = host_port(url)
        if host != "prometheus" or port != PROMETHEUS_PORT or urlsplit(url).path != "/api/v1/write":
            problems.append(f"{rel(TEMPO)}: remote_write url {url!r}, expected "
                            f"http://prometheus:{PROMETHEUS_PORT}/api/v1/write")
    return problems


def check_tempo_metrics_generator() -> list[str]:
    """Tempo: the generator's processors are enabled and it stores under /var/tempo."""
    tempo = load_yaml(TEMPO)
    problems = []
    processors = dig(tempo, "overrides", "defaults", "metrics_generator", "processors") or []
    for needed in ("service-graphs", "span-metrics"):
        if needed not in processors:
            problems.append(f"overrides.defaults.metrics_generator.processors lacks {needed!r}")
    paths = {
        "metrics_generator.storage.path": dig(tempo, "metrics_generator", "storage", "path"),
        "storage.trace.wal.path": dig(tempo, "storage", "trace", "wal", "path"),
        "storage.trace.local.path": dig(tempo, "storage", "trace", "local", "path"),
    }
    for where, path in paths.items():
        if not path or not PurePosixPath(str(path)).is_relative_to("/var/tempo"):
            problems.append(f"{where} is {path!r}, expected a path under /var/tempo (the volume)")
    if dig(tempo, "storage", "trace", "backend") != "local":
        problems.append("storage.trace.backend should be local")
    return problems


# --- Grafana -----------------------------------------------------------------

def provisioned() -> dict[str, dict]:
    """Provisioned datasources by uid."""
    sources = load_yaml(DATASOURCES).get("datasources") or []
    by_uid = {}
    for source in sources:
        if not isinstance(source, dict) or not source.get("uid"):
            raise Fail(f"{rel(DATASOURCES)}: datasource {source!r} has no uid")
        by_uid[source["uid"]] = source
    return by_uid


def check_datasource_links() -> list[str]:
    """Datasources: uids the Tempo datasource (and any datasourceUid) refers to are provisioned."""
    sources = provisioned()
    problems = []
    tempo = [s for s in sources.values() if s.get("type") == "tempo"]
    if not tempo:
        problems.append("no datasource of type tempo")
    for source in tempo:
        for link in ("tracesToMetrics", "serviceMap"):
            uid = dig(source, "jsonData", link, "datasourceUid")
            if not uid:
                problems.append(f"Tempo datasource {source['uid']!r}: jsonData.{link}.datasourceUid is not set")
    for path, key, value in walk(load_yaml(DATASOURCES)):
        if key == "datasourceUid" and value not in sources:
            problems.append(f"{path}.datasourceUid {value!r} is not a provisioned uid ({sorted(sources)})")
    # Grafana expands $NAME in provisioned values from its environment, so
    # a Grafana macro such as $__tags must be written $$__tags.
    for path, key, value in walk(load_yaml(DATASOURCES)):
        if isinstance(value, str):
            for match in re.finditer(r"(?<!\$)\$\{?__\w+", value.replace("$$", "")):
                problems.append(f"{path}.{key}: {match.group(0)!r} would be read as an "
                                "environment variable; write $$ for a literal $")
    return problems


def check_datasource_urls() -> list[str]:
    """Datasources point at the prometheus and tempo services' ports."""
    sources = provisioned()
    problems = []
    tempo_port = dig(load_yaml(TEMPO), "server", "http_listen_port")
    expected = {"prometheus": ("prometheus", PROMETHEUS_PORT), "tempo": ("tempo", tempo_port)}
    defaults = [uid for uid, s in sources.items() if s.get("isDefault")]
    if len(defaults) != 1:
        problems.append(f"exactly one datasource should be default, found {defaults}")
    for uid, source in sources.items():
        if source.get("type") not in expected:
            continue
        host, port = host_port(source.get("url", ""))
        want = expected[source["type"]]
        if (host, port) != want:
            problems.append(f"datasource {uid!r} url {source.get('url')!r}, expected http://{want[0]}:{want[1]}")
    # $__rate_interval assumes the scrape interval Grafana is told.
    scrape = dig(load_yaml(PROMETHEUS), "global", "scrape_interval")
    for uid, source in sources.items():
        interval = dig(source, "jsonData", "timeInterval")
        if source.get("type") == "prometheus" and interval != scrape:
            problems.append(f"datasource {uid!r} jsonData.timeInterval {interval!r} differs "
                            f"from Prometheus' scrape_interval {scrape!r}")
    return problems


def check_dashboard_datasources() -> list[str]:
    """Dashboards: every datasource they name, and every target's, is provisioned."""
    sources = provisioned()
    names = {s.get("name") for s in sources.values()}
    problems = []
    for path in dashboards():
        data = load_json(path)
        for where, key, value in walk(data):
            if key == "datasource":
                if isinstance(value, dict):
                    uid = value.get("uid")
                    if uid not in sources:
                        problems.append(f"{path.name}: {where}.datasource uid {uid!r} is not provisioned")
                    elif value.get("type") not in (None, sources[uid].get("type")):
                        problems.append(f"{path.name}: {where}.datasource type {value.get('type')!r} "
                                        f"but {uid!r} is {sources[uid].get('type')!r}")
                elif value is not None and value not in names and value not in sources:
                    problems.append(f"{path.name}: {where}.datasource {value!r} is not provisioned")
            if key == "targets" and isinstance(value, list):
                for i, target in enumerate(value):
                    if not isinstance(dig(target, "datasource"), dict):
                        problems.append(f"{path.name}: {where}.targets[{i}] names no datasource")
    return problems


def dashboard_queries(data) -> list[str]:
    """PromQL of every target and template variable of a dashboard."""
    queries = []
    for _, key, value in walk(data):
        if key == "expr" and isinstance(value, str):
            queries.append(value)
    for variable in dig(data, "templating", "list", default=[]) or []:
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        # `definition` is what the editor shows; keep it honest too.
        for text in (query, variable.get("definition")):
            if isinstance(text, str) and text.strip():
                queries.append(text)
    return queries


def strip_labels(expr: str) -> str:
    """The expression without label matchers, grouping lists and strings."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"label_values\(\s*([^,()]*?)\s*,[^)]*\)", r"label_values(\1)", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    return expr


def used_labels(expr: str) -> set[str]:
    """Label names in matchers, grouping lists and label_values()."""
    labels = set()
    no_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    for matchers in re.findall(r"\{([^}]*)\}", no_strings):
        labels.update(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", matchers))
    for group in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", no_strings):
        labels.update(x.strip() for x in group.split(",") if x.strip())
    labels.update(re.findall(r"label_values\([^,()]*,\s*(\w+)\s*\)", no_strings))
    return labels


def metric_known(name: str) -> bool:
    if name in PROM_METRICS:
        return True
    for suffix in HISTOGRAM_SUFFIXES:
        base = name.removesuffix(suffix)
        if base != name and PROM_METRICS.get(base) == "histogram":
            return True
    return False


def check_dashboard_metric_names() -> list[str]:
    """Dashboards: every ds_/http_/db_ metric and label they query is one the services export."""
    problems = []
    for path in dashboards():
        data = load_json(path)
        queries = dashboard_queries(data)
        if not queries:
            problems.append(f"{path.name}: no queries found")
        for expr in queries:
            for name in sorted(set(OWN_NAME.findall(strip_labels(expr)))):
                if not metric_known(name):
                    problems.append(f"{path.name}: unknown metric {name!r} in: {expr}")
            for label in sorted(used_labels(expr)):
                if OWN_NAME.fullmatch(label) and label not in PROM_LABELS:
                    problems.append(f"{path.name}: unknown label {label!r} in: {expr}")
        for _, key, value in walk(data):
            if key == "legendFormat" and isinstance(value, str):
                for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", value):
                    if OWN_NAME.fullmatch(label) and label not in PROM_LABELS:
                        problems.append(f"{path.name}: legend {value!r} names unknown label {label!r}")
    return problems


def check_dashboard_structure() -> list[str]:
    """Dashboards: uid/title set, unique panel ids, every panel placed, titled, with unit and queries."""
    problems = []
    uids = {}
    for path in dashboards():
        data = load_json(path)
        for field in ("uid", "title", "schemaVersion"):
            if not data.get(field):
                problems.append(f"{path.name}: no {field}")
        if data.get("uid") in uids:
            problems.append(f"{path.name}: uid {data['uid']!r} also used by {uids[data['uid']]}")
        uids[data.get("uid")] = path.name
        panels = list(data.get("panels") or [])
        for row in list(panels):
            panels.extend(row.get("panels") or [])  # collapsed rows hold theirs
        seen_ids = set()
        cells: dict[tuple[int, int], str] = {}
        for panel in panels:
            title = panel.get("title")
            label = f"{path.name}: panel {panel.get('id')} {title!r}"
            if panel.get("id") in seen_ids or not isinstance(panel.get("id"), int):
                problems.append(f"{label}: id missing or not unique")
            seen_ids.add(panel.get("id"))
            if not panel.get("type") or not title:
                problems.append(f"{label}: type and title are required")
            grid = panel.get("gridPos") or {}
            if not all(isinstance(grid.get(k), int) for k in "hwxy"):
                problems.append(f"{label}: gridPos needs integer h, w, x, y")
                continue
            if grid["x"] + grid["w"] > 24:
                problems.append(f"{label}: wider than the 24-column grid")
            for y in range(grid["y"], grid["y"] + grid["h"]):
                for x in range(grid["x"], grid["x"] + grid["w"]):
                    if (x, y) in cells:
                        problems.append(f"{label}: overlaps {cells[(x, y)]!r}")
                        break
                    cells[(x, y)] = title
                else:
                    continue
                break
            if panel.get("type") == "row":
                continue
            if not dig(panel, "fieldConfig", "defaults", "unit"):
                problems.append(f"{label}: fieldConfig.defaults.unit is not set")
            targets = panel.get("targets") or []
            if not targets:
                problems.append(f"{label}: no targets")
            refs = [t.get("refId") for t in targets]
            if len(set(refs)) != len(refs) or not all(refs):
                problems.append(f"{label}: refIds must be set and unique, got {refs}")
            for target in targets:
                if not str(target.get("expr", "")).strip():
                    problems.append(f"{label}: target {target.get('refId')} has no expr")
    return problems


# --- The compose file --------------------------------------------------------

def interpolate(value) -> str:
    """Compose's ${VAR:-default} with the defaults (the shell is not read)."""
    def sub(m):
        if m.group(0) == "$$":
            return "$"
        body = m.group(1) or m.group(2) or ""
        for op in (":-", "-", ":?", "?", ":+", "+"):
            if op in body:
                _, default = body.split(op, 1)
                return default if op in (":-", "-") else ""
        return ""
    return re.sub(r"\$\$|\$\{([^}]*)\}|\$([A-Za-z_]\w*)", sub, str(value))


def services() -> dict:
    found = compose().get("services") or {}
    if not isinstance(found, dict):
        raise Fail(f"{rel(COMPOSE_FILE)}: services is not a mapping")
    return found


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in map(str, env))
    return {str(k): interpolate(v) if v is not None else "" for k, v in env.items()}


def bind_mounts(service: dict) -> list[tuple[str, str]]:
    """(source, target) of each bind mount, sources as written."""
    mounts = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            if volume.get("type", "volume") == "bind" or str(volume.get("source", "")).startswith((".", "/", "~")):
                mounts.append((interpolate(volume.get("source", "")), interpolate(volume.get("target", ""))))
            continue
        parts = interpolate(volume).split(":")
        if len(parts) >= 2 and parts[0].startswith((".", "/", "~")):
            mounts.append((parts[0], parts[1]))
    return mounts


def host_path(source: str) -> Path:
    return (COMPOSE_DIR / source).resolve() if not source.startswith("/") else Path(source)


def command_args(service: dict) -> list[str]:
    command = service.get("command") or []
    return shlex.split(interpolate(command)) if isinstance(command, str) else [interpolate(c) for c in command]


def flag(args: list[str], *names: str) -> str | None:
    """The value of `--name=value` or `--name value` in args."""
    for i, arg in enumerate(args):
        for name in names:
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
            if arg == name and i + 1 < len(args):
                return args[i + 1]
    return None


def container_path(service: dict, file: Path) -> str | None:
    """Where `file` appears inside the service's container, if mounted."""
    for source, target in bind_mounts(service):
        source_path = host_path(source)
        if file.resolve() == source_path:
            return target
        if file.resolve().is_relative_to(source_path):
            return str(PurePosixPath(target) / file.resolve().relative_to(source_path).as_posix())
    return None


def check_compose_services() -> list[str]:
    """compose.yaml defines every service name the configs use as a hostname."""
    missing = SERVICES - set(services())
    return [f"{rel(COMPOSE_FILE)} has no service {name!r}" for name in sorted(missing)]


def check_compose_mount_sources() -> list[str]:
    """compose.yaml: every file or directory it mounts from the repository exists."""
    problems = []
    for name, service in services().items():
        for source, _ in bind_mounts(service or {}):
            path = host_path(source)
            if path.is_relative_to(ROOT) and not path.exists():
                problems.append(f"service {name!r} mounts {source!r}: {rel(path)} does not exist")
    for section in ("configs", "secrets"):
        for name, entry in (compose().get(section) or {}).items():
            source = dig(entry, "file")
            if source and not host_path(interpolate(source)).exists():
                problems.append(f"{section}.{name}.file {source!r} does not exist")
    return problems


def check_compose_config_paths() -> list[str]:
    """compose.yaml mounts each config where its tool reads it (and Prometheus takes remote writes)."""
    svc = services()
    problems = []

    def mounted(service_name: str, file: Path) -> str | None:
        path = container_path(svc.get(service_name) or {}, file)
        if path is None:
            problems.append(f"service {service_name!r} does not mount {rel(file)}")
        return path

    def expect(service_name, file, flag_names, default):
        path = mounted(service_name, file)
        wanted = flag(command_args(svc.get(service_name) or {}), *flag_names) or default
        if path is not None and wanted is None:
            problems.append(f"service {service_name!r} mounts {rel(file)} at {path} "
                            f"but its command has no {flag_names[0]}")
        elif path is not None and path != wanted:
            problems.append(f"service {service_name!r} reads {wanted}, but {rel(file)} is mounted at {path}")

    expect("otel-collector", COLLECTOR, ("--config",), "/etc/otelcol-contrib/config.yaml")
    expect("tempo", TEMPO, ("-config.file", "--config.file"), None)
    expect("prometheus", PROMETHEUS, ("--config.file",), "/etc/prometheus/prometheus.yml")

    prometheus_args = command_args(svc.get("prometheus") or {})
    if "--web.enable-remote-write-receiver" not in prometheus_args:
        problems.append("prometheus' command lacks --web.enable-remote-write-receiver: "
                        "Tempo's remote_write would be refused")
    listen = flag(prometheus_args, "--web.listen-address")
    if listen and host_port(listen)[1] != PROMETHEUS_PORT:
        problems.append(f"prometheus listens on {listen}, the configs assume {PROMETHEUS_PORT}")

    grafana = svc.get("grafana") or {}
    provisioning = environment(grafana).get("GF_PATHS_PROVISIONING") or "/etc/grafana/provisioning"
    for file, kind in ((DATASOURCES, "datasources"), (DASHBOARD_PROVIDERS, "dashboards")):
        path = mounted("grafana", file)
        if path is not None and PurePosixPath(path).parent != PurePosixPath(provisioning) / kind:
            problems.append(f"grafana sees {rel(file)} at {path}, not in {provisioning}/{kind}/")
    provider_paths = [dig(p, "options", "path") for p in load_yaml(DASHBOARD_PROVIDERS).get("providers") or []]
    for dashboard in dashboards():
        path = mounted("grafana", dashboard)
        if path is not None and not any(
                p and PurePosixPath(path).is_relative_to(p) for p in provider_paths):
            problems.append(f"grafana sees {rel(dashboard)} at {path}, outside the dashboard "
                            f"providers' paths {provider_paths}")
    return problems


def check_compose_otel_ports() -> list[str]:
    """compose.yaml: OTLP endpoints and any otel-collector:<port> use ports the collector listens on."""
    problems = []
    otlp = otlp_ports()
    listening = collector_ports()
    exporting = []
    for name, service in services().items():
        env = environment(service or {})
        for key, value in env.items():
            match = re.fullmatch(r"OTEL_EXPORTER_OTLP(?:_(TRACES|METRICS|LOGS))?_ENDPOINT", key)
            if not match or not value.strip():
                continue
            exporting.append(name)
            signal = match.group(1)
            protocol = (env.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL") if signal else None) \
                or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"
            proto = "grpc" if protocol == "grpc" else "http"
            url = urlsplit(value)
            host, port = host_port(value)
            where = f"service {name!r} {key}={value!r}"
            if host != "otel-collector":
                problems.append(f"{where}: host should be the otel-collector service")
            if url.scheme != "http":
                problems.append(f"{where}: the collector's receivers have no TLS, use http://")
            if proto not in otlp:
                problems.append(f"{where}: protocol {protocol} but the collector has no otlp {proto} receiver")
            elif port != otlp[proto]:
                problems.append(f"{where}: protocol {protocol} is received on port {otlp[proto]}, not {port}")
            if signal and proto == "http" and not url.path.rstrip("/").endswith(f"/v1/{signal.lower()}"):
                problems.append(f"{where}: a per-signal HTTP endpoint is used as is; end it with /v1/{signal.lower()}")
    for service_name in ("auth-gateway", "stream-server"):
        if service_name not in exporting:
            problems.append(f"service {service_name!r} sets no OTEL_EXPORTER_OTLP_*ENDPOINT: it exports nothing")
    for where, _, value in walk(compose()):
        if isinstance(value, str):
            for port in re.findall(r"\botel-collector:(\d+)", interpolate(value)):
                if int(port) not in listening:
                    problems.append(f"{where}: otel-collector:{port} is not a port the collector "
                                    f"listens on {sorted(listening)}")
    collector = services().get("otel-collector") or {}
    for entry in [*(collector.get("ports") or []), *(collector.get("expose") or [])]:
        text = interpolate(entry.get("target", "") if isinstance(entry, dict) else entry)
        container_port = text.split("/")[0].rsplit(":", 1)[-1]
        if container_port.isdigit() and int(container_port) not in listening:
            problems.append(f"otel-collector publishes {text!r}: the collector does not listen "
                            f"on {container_port} {sorted(listening)}")
    health_port = collector_listen_port("extensions", "health_check", "endpoint")
    test = dig(collector, "healthcheck", "test")
    test_text = " ".join(map(str, test)) if isinstance(test, list) else str(test or "")
    for port in re.findall(r":(\d+)\b", interpolate(test_text)):
        if int(port) != health_port:
            problems.append(f"otel-collector healthcheck uses port {port}, health_check is on {health_port}")
    return problems


CHECKS = [
    check_files_parse,
    check_collector_references,
    check_collector_memory_limiter_first,
    check_collector_binds_all_interfaces,
    check_collector_to_tempo,
    check_collector_prometheus_naming,
    check_metrics_path,
    check_tempo_metrics_generator,
    check_datasource_links,
    check_datasource_urls,
    check_dashboard_datasources,
    check_dashboard_metric_names,
    check_dashboard_structure,
    check_compose_services,
    check_compose_mount_sources,
    check_compose_config_paths,
    check_compose_otel_ports,
]


def main() -> int:
    passed = failed = skipped = 0
    for check in CHECKS:
        name = check.__name__.removeprefix("check_")
        summary = (check.__doc__ or "").strip().splitlines()[0]
        try:
            problems = check()
        except Skip as e:
            skipped += 1
            print(f"SKIP  {name}: {e}")
            continue
        except Fail as e:
            problems = [str(e)]
        if problems:
            failed += 1
            print(f"FAIL  {name}: {summary}")
            for problem in problems:
                print(f"        - {problem}")
        else:
            passed += 1
            print(f"PASS  {name}: {summary}")
    print()
    print(f"{passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
