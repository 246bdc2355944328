"""docker-compose.yml, checked offline (no Docker engine or Compose plugin runs here).

First the Compose Specification's JSON Schema, then what a schema cannot see: the build
context and every mounted file exist; every LAMINA_* variable is a setting the service's
process reads, and parses; every host:port a service dials names a service, on a network
they share, and a port that service listens on; health checks and Prometheus' scrape targets
use the ports the settings listen on; only the gateway and Grafana are published, on
127.0.0.1; images are pinned. The Prometheus and Grafana provisioning files and the strict
override in docs/compose.md are checked against the same model.

Each check is a function returning the problems it found, so the negative cases at the end
can show that every one of them fails on a broken copy of the file.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from lamina.cluster_token import check_token
from lamina.core import settings as cfg
from tests.conftest import required_tool
from tests.deploy.test_dockerfile import image_env

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA_PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"
COMPOSE_DOC = ROOT / "docs" / "compose.md"
#: A copy of the Compose Specification's schema (compose-spec/compose-spec,
#: schema/compose-spec.json, Apache-2.0), taken from ../shared/schemas/compose-spec.json so
#: that the test runs on a fresh clone without ../shared.
SCHEMA = Path(__file__).resolve().parent / "schemas" / "compose-spec.json"

#: The variables Compose must be given (.env): any value makes the file complete.
REQUIRED_ENV = {"POSTGRES_PASSWORD": "pw", "GRAFANA_ADMIN_PASSWORD": "pw", "LAMINA_CLUSTER_TOKEN": "t" * 48}

#: Lamina's commands and the settings each reads.
SETTINGS = {"controller": cfg.ControllerSettings, "gateway": cfg.GatewaySettings, "invoker": cfg.InvokerSettings}
#: The ports the third-party images listen on (their defaults; NATS' come from its command).
IMAGE_PORTS = {"postgres": {5432}, "prometheus": {9090}, "grafana": {3000}}
#: Only these may publish ports, and only on this address.
PUBLISHED = {"gateway", "grafana"}
LOOPBACK = "127.0.0.1"
#: Prometheus jobs the rules and the dashboard select on (docs/monitoring.md), by command.
SCRAPE_JOBS = {"lamina-gateway": "gateway", "lamina-controller": "controller", "lamina-invoker": "invoker"}

# -- Compose's variable interpolation -------------------------------------------------------

_VARIABLE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|-|:\?|\?|:\+|\+)(?P<arg>.*))?$", re.S)


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """``text`` with ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``,
    ``${VAR:?error}``, ``${VAR?error}``, ``${VAR:+alt}``, ``${VAR+alt}`` and ``$$`` replaced as
    Compose does; ``ValueError`` with Compose's message for a missing required variable."""

    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        if match["named"]:
            return env.get(match["named"], "")
        parts = _BRACED.match(match["braced"])
        if parts is None:
            raise ValueError(f"invalid interpolation format: ${{{match['braced']}}}")
        name, op, arg = parts["name"], parts["op"], parts["arg"] or ""
        value, unset_or_empty = env.get(name), not env.get(name)
        missing = unset_or_empty if op and op.startswith(":") else value is None
        if op in (":-", "-"):
            return arg if missing else value or ""
        if op in (":?", "?"):
            if missing:
                raise ValueError(f"required variable {name} is missing a value: {arg}")
            return value or ""
        if op in (":+", "+"):
            return "" if missing else arg
        return value or ""

    return _VARIABLE.sub(replace, text)


def resolve(node: Any, env: Mapping[str, str]) -> Any:
    """The document with every string value interpolated (keys are not, as in Compose)."""
    if isinstance(node, dict):
        return {key: resolve(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve(value, env) for value in node]
    return interpolate(node, env) if isinstance(node, str) else node


def load_compose(env: Mapping[str, str] = REQUIRED_ENV) -> dict[str, Any]:
    """docker-compose.yml as Compose sees it with ``env`` (anchors and merge keys resolved)."""
    return resolve(yaml.safe_load(COMPOSE.read_text()), env)


# -- reading a service ----------------------------------------------------------------------


def own_environment(service: Mapping[str, Any]) -> dict[str, str]:
    """The variables the compose file sets for the service."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    """The service's environment: the image's ENV (for the image built here), then its own."""
    return {**(image_env() if "build" in service else {}), **own_environment(service)}


def command(service: Mapping[str, Any]) -> list[str]:
    cmd = service.get("command") or []
    return cmd.split() if isinstance(cmd, str) else [str(part) for part in cmd]


def lamina_command(service: Mapping[str, Any]) -> str | None:
    """``controller``, ``gateway`` or ``invoker`` for a service of the Lamina image."""
    cmd = command(service)
    return cmd[0] if "build" in service and cmd and cmd[0] in SETTINGS else None


def settings_of(service: Mapping[str, Any]) -> Any:
    """The service's settings, loaded from its environment exactly as the process would."""
    return cfg.load(SETTINGS[lamina_command(service)], env=environment(service))


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def flag(cmd: list[str], *names: str) -> str | None:
    for i, part in enumerate(cmd[:-1]):
        if part in names:
            return cmd[i + 1]
    return None


def listening_ports(name: str, service: Mapping[str, Any]) -> dict[str, int]:
    """What the service listens on, by role: from its settings for Lamina, from its command
    for NATS, else the image's default port."""
    role = lamina_command(service)
    if role is not None:
        s = settings_of(service)
        ports = {"controller": {"grpc": port_of(getattr(s, "controller_listen", ":0"))},
                 "gateway": {"http": getattr(s, "port", 0)},
                 "invoker": {"grpc": port_of(getattr(s, "invoker_listen", ":0")),
                             "stream": port_of(getattr(s, "invoker_stream_listen", "") or ":0")}}[role]
        if role != "gateway" and s.metrics_listen:
            ports["metrics"] = port_of(s.metrics_listen)
        return ports
    if name == "nats":
        cmd = command(service)
        ports = {"client": int(flag(cmd, "-p", "--port") or 4222)}
        if monitoring := flag(cmd, "-m", "--http_port"):
            ports["monitoring"] = int(monitoring)
        return ports
    return {str(port): port for port in IMAGE_PORTS.get(name, set())}


def metrics_port(service: Mapping[str, Any]) -> int | None:
    """Where the service serves Prometheus' /metrics: the gateway's HTTP port, the
    controller's and invokers' LAMINA_METRICS_LISTEN."""
    if lamina_command(service) is None:
        return None
    ports = listening_ports("", service)
    return ports.get("http") or ports.get("metrics")


def networks(service: Mapping[str, Any]) -> set[str]:
    nets = service.get("networks")
    return set(nets or ["default"]) if not isinstance(nets, dict) else set(nets)


def mounts(service: Mapping[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read-only) of each volume; a bind's source starts with . or /."""
    found = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            parts = volume.split(":")
            if len(parts) == 1:
                continue  # an anonymous volume
            found.append((parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")))
        else:
            found.append((volume.get("source", ""), volume["target"], bool(volume.get("read_only"))))
    return found


def is_bind(source: str) -> bool:
    return source.startswith((".", "/", "~"))


def healthcheck_url(service: Mapping[str, Any]) -> tuple[int, str] | None:
    """(port, path) of the first local http:// URL in the service's health check."""
    test = (service.get("healthcheck") or {}).get("test") or []
    text = " ".join(test) if isinstance(test, list) else test
    match = re.search(r"http://(?:127\.0\.0\.1|localhost):(\d+)(/[^\s'\"?]*)", text)
    return (int(match[1]), match[2]) if match else None


def published_ports(service: Mapping[str, Any]) -> list[tuple[str, str, int]]:
    """(host ip, host port, container port) of each published port."""
    found = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            found.append((str(port.get("host_ip", "")), str(port.get("published", "")), int(port["target"])))
            continue
        parts = str(port).split("/")[0].rsplit(":", 2)
        if len(parts) == 3:
            found.append((parts[0], parts[1], int(parts[2])))
        elif len(parts) == 2:
            found.append(("", parts[0], int(parts[1])))
        else:
            found.append(("", "", int(parts[0])))
    return found


def dialed_addresses(service: Mapping[str, Any]) -> list[tuple[str, str, int]]:
    """(setting, host, port) of every address the service dials through its settings."""
    env, found = environment(service), []
    for key in ("LAMINA_CONTROLLER_URL", "LAMINA_QUEUE_URL", "LAMINA_DATABASE_URL"):
        value = env.get(key)
        if not value:
            continue
        split = urlsplit(value if "://" in value else f"tcp://{value}")
        found.append((key, split.hostname or "", split.port or 0))
    return found


# -- the checks -----------------------------------------------------------------------------


#: Validators by the draft named in a schema's ``$schema``. The Compose schema spells it
#: https://json-schema.org/draft-07/schema, which jsonschema's lookup does not know.
DRAFTS = {"draft-04": jsonschema.Draft4Validator, "draft-06": jsonschema.Draft6Validator,
          "draft-07": jsonschema.Draft7Validator, "2019-09": jsonschema.Draft201909Validator,
          "2020-12": jsonschema.Draft202012Validator}


def validator_for(schema: Mapping[str, Any]) -> type[jsonschema.protocols.Validator]:
    drafts = [cls for draft, cls in DRAFTS.items() if draft in schema.get("$schema", "")]
    assert len(drafts) == 1, f"cannot tell the draft of $schema {schema.get('$schema')!r}"
    return drafts[0]


def schema_problems(config: Mapping[str, Any]) -> list[str]:
    schema = json.loads(SCHEMA.read_text())
    validator_class = validator_for(schema)
    validator_class.check_schema(schema)
    validator = validator_class(schema)
    return [f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(config)]


def file_problems(config: Mapping[str, Any]) -> list[str]:
    """Build contexts, Dockerfiles and bind-mounted files exist; named volumes are declared;
    configuration is mounted read-only."""
    problems = []
    declared = set(config.get("volumes") or {})
    for name, service in config["services"].items():
        build = service.get("build")
        if build is not None:
            context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = context / ("Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile"))
            if not context.is_dir():
                problems.append(f"{name}: build context {context} does not exist")
            elif not dockerfile.is_file():
                problems.append(f"{name}: {dockerfile} does not exist")
        for source, target, read_only in mounts(service):
            if is_bind(source):
                if not (ROOT / source).exists():
                    problems.append(f"{name}: mounts {source}, which does not exist")
                if not read_only:
                    problems.append(f"{name}: {source} is mounted writable at {target}")
            elif source not in declared:
                problems.append(f"{name}: volume {source!r} is not declared under volumes")
    return problems


def settings_problems(config: Mapping[str, Any]) -> list[str]:
    """Every LAMINA_* variable is a setting of the service's own process and parses."""
    problems, known = [], cfg.all_env_names()
    for name, service in config["services"].items():
        env = own_environment(service)
        role = lamina_command(service)
        for key in (k for k in env if k.startswith("LAMINA_")):
            if key not in known:
                problems.append(f"{name}: {key} is not a setting (lamina/core/settings.py)")
            elif role is not None and key not in {cfg.env_name(f) for f in SETTINGS[role].__dataclass_fields__}:
                problems.append(f"{name}: {key} is not read by `lamina {role}`")
        if role is not None:
            try:
                settings_of(service)
            except Exception as exc:  # InvalidSpec names the variable and its value
                problems.append(f"{name}: {exc}")
    return problems


def token_problems(config: Mapping[str, Any]) -> list[str]:
    """The controller, listening beyond loopback, and everything that dials it share one
    cluster token, long enough to be a secret, given through .env."""
    problems, tokens = [], {}
    for name, service in config["services"].items():
        role = lamina_command(service)
        if role is None:
            continue
        s = settings_of(service)
        if role == "controller" or "LAMINA_CONTROLLER_URL" in own_environment(service):
            tokens[name] = s.cluster_token
        try:
            check_token(s.cluster_token)
        except ValueError as exc:
            problems.append(f"{name}: {exc}")
    if "" in tokens.values() or len(set(tokens.values())) != 1:
        problems.append(f"the controller and its callers do not share one cluster token: {sorted(tokens)}")
    return problems


def address_problems(config: Mapping[str, Any]) -> list[str]:
    """Every host:port a service dials names a service it shares a network with, and a port
    that service listens on; the gateway publishes its own HTTP port; an invoker advertises
    itself on its own ports."""
    services, problems = config["services"], []
    for name, service in services.items():
        for key, host, port in dialed_addresses(service):
            target = services.get(host)
            if target is None:
                problems.append(f"{name}: {key} dials {host}:{port}, but there is no service {host!r}")
                continue
            if port not in listening_ports(host, target).values():
                problems.append(f"{name}: {key} dials {host}:{port}, but {host} listens on "
                                f"{sorted(listening_ports(host, target).values())}")
            if not networks(service) & networks(target):
                problems.append(f"{name}: {key} dials {host}, which is on no network of {name}")
        role = lamina_command(service)
        if role == "gateway":
            for _, _, target_port in published_ports(service):
                if target_port != settings_of(service).port:
                    problems.append(f"{name}: publishes container port {target_port}, but LAMINA_PORT is "
                                    f"{settings_of(service).port}")
        if role == "invoker":
            s = settings_of(service)
            host, _, port = s.invoker_advertise.rpartition(":")
            if host != name or int(port) != port_of(s.invoker_listen):
                problems.append(f"{name}: LAMINA_INVOKER_ADVERTISE={s.invoker_advertise}, not {name}:"
                                f"{port_of(s.invoker_listen)}")
            if s.invoker_stream_listen in ("", "off") or port_of(s.invoker_stream_listen) == 0:
                problems.append(f"{name}: the invocation stream needs a fixed port in a container")
    return problems


def healthcheck_problems(config: Mapping[str, Any]) -> list[str]:
    """Each service dependency on service_healthy has a health check; the health checks of
    HTTP services call a port the service listens on (the probes' port for Lamina)."""
    services, problems = config["services"], []
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        for dependency, condition in (depends.items() if isinstance(depends, dict) else ()):
            if condition.get("condition") == "service_healthy" and not (services.get(dependency) or {}).get(
                    "healthcheck"):
                problems.append(f"{name}: waits for {dependency} to be healthy, which has no healthcheck")
        if not service.get("healthcheck"):
            problems.append(f"{name}: no healthcheck")
            continue
        url = healthcheck_url(service)
        role = lamina_command(service)
        if role is not None:
            expected = metrics_port(service)
            if url is None or url[0] != expected or url[1] not in ("/healthz", "/readyz"):
                problems.append(f"{name}: healthcheck calls {url}, not /healthz or /readyz on port {expected}")
        elif url is not None and url[0] not in listening_ports(name, service).values():
            problems.append(f"{name}: healthcheck calls port {url[0]}, not one it listens on")
        if name == "postgres":
            test = service["healthcheck"]["test"]
            if "pg_isready" not in test or flag(test, "-p") not in {str(p) for p in IMAGE_PORTS["postgres"]}:
                problems.append(f"{name}: healthcheck is not pg_isready on its port")
    return problems


#: Who must wait for whom to be healthy.
START_ORDER = {"controller": {"postgres"}, "gateway": {"controller", "nats"}, "invoker-1": {"controller"},
               "invoker-2": {"controller"}, "grafana": {"prometheus"}}


def order_problems(config: Mapping[str, Any]) -> list[str]:
    problems = []
    for name, needed in START_ORDER.items():
        depends = config["services"].get(name, {}).get("depends_on") or {}
        for dependency in needed:
            condition = depends.get(dependency) if isinstance(depends, dict) else None
            if not condition or condition.get("condition") != "service_healthy":
                problems.append(f"{name}: does not wait for {dependency} to be healthy")
    return problems


def publishing_problems(config: Mapping[str, Any]) -> list[str]:
    problems = []
    for name, service in config["services"].items():
        ports = published_ports(service)
        if ports and name not in PUBLISHED:
            problems.append(f"{name}: publishes {ports}; only {sorted(PUBLISHED)} may")
        for host_ip, _, _ in ports:
            if host_ip != LOOPBACK:
                problems.append(f"{name}: publishes on {host_ip or 'every address'}, not {LOOPBACK}")
        if service.get("network_mode") == "host":
            problems.append(f"{name}: network_mode host bypasses publishing")
    for name in PUBLISHED:
        if not published_ports(config["services"].get(name, {})):
            problems.append(f"{name}: is not published")
    return problems


#: Services function code must not reach: it runs in the invokers and shares their network.
PRIVATE_SERVICES = {"postgres", "nats"}


def network_problems(config: Mapping[str, Any]) -> list[str]:
    """PostgreSQL and NATS sit on internal networks that no invoker joins."""
    services, problems = config["services"], []
    declared = config.get("networks") or {}
    invoker_nets = set().union(*(networks(s) for s in services.values() if lamina_command(s) == "invoker"))
    for name in PRIVATE_SERVICES:
        for net in networks(services[name]):
            if net in invoker_nets:
                problems.append(f"{name}: on network {net}, which the invokers (and so function code) join")
            if not (declared.get(net) or {}).get("internal"):
                problems.append(f"{name}: network {net} is not internal")
    return problems


_VERSION_TAG = re.compile(r"^v?\d+\.\d+(\.\d+)?(-[a-z0-9.]+)?$")


def image_problems(config: Mapping[str, Any]) -> list[str]:
    """Pulled images carry an exact version tag; built ones are never pulled."""
    problems = []
    for name, service in config["services"].items():
        if "build" in service:
            if service.get("pull_policy") != "build":
                problems.append(f"{name}: built here, but without pull_policy: build a registry image "
                                f"named {service.get('image')!r} could be pulled instead")
            continue
        image = service.get("image", "")
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        if not _VERSION_TAG.match(tag):
            problems.append(f"{name}: image {image!r} is not pinned to a version (major.minor[.patch])")
    return problems


def invoker_problems(config: Mapping[str, Any]) -> list[str]:
    """Two invokers with distinct ids, tier B by default, capacity within the container."""
    invokers = {n: s for n, s in config["services"].items() if lamina_command(s) == "invoker"}
    problems = [] if len(invokers) == 2 else [f"expected two invokers, found {sorted(invokers)}"]
    ids = [settings_of(s).invoker_id for s in invokers.values()]
    if len(set(ids)) != len(ids) or "" in ids:
        problems.append(f"invoker ids are not set and distinct: {ids}")
    for name, service in invokers.items():
        s = settings_of(service)
        if s.isolation != "pod":
            problems.append(f"{name}: LAMINA_ISOLATION is {s.isolation!r}, not the documented default 'pod'")
        limit = str(service.get("mem_limit", ""))
        match = re.fullmatch(r"(\d+)([mg])", limit.lower())
        if match is None:
            problems.append(f"{name}: no mem_limit in m or g bounds its workers")
        elif s.memory_capacity_mb >= int(match[1]) * (1024 if match[2] == "g" else 1):
            problems.append(f"{name}: LAMINA_MEMORY_CAPACITY_MB {s.memory_capacity_mb} leaves nothing of "
                            f"mem_limit {limit} to the invoker itself")
    return problems


def prometheus_problems(config: Mapping[str, Any], prometheus: Mapping[str, Any]) -> list[str]:
    """Every scrape target is a service:port that serves /metrics, on a network Prometheus
    shares; every Lamina process is scraped under its job; the rule files are mounted."""
    services, problems = config["services"], []
    own = services["prometheus"]
    scraped: dict[str, set[str]] = {}
    for job in prometheus.get("scrape_configs") or []:
        if job.get("metrics_path", "/metrics") != "/metrics":
            problems.append(f"job {job['job_name']}: metrics_path {job['metrics_path']}")
        for static in job.get("static_configs") or []:
            for target in static.get("targets") or []:
                host, port = target.rsplit(":", 1)
                if host == "localhost" and job["job_name"] == "prometheus":
                    if int(port) not in listening_ports("prometheus", own).values():
                        problems.append(f"job prometheus: scrapes itself on {port}")
                    continue
                service = services.get(host)
                if service is None:
                    problems.append(f"job {job['job_name']}: target {target} is no service")
                    continue
                if metrics_port(service) != int(port):
                    problems.append(f"job {job['job_name']}: {target}, but {host} serves /metrics on "
                                    f"{metrics_port(service)}")
                if not networks(service) & networks(own):
                    problems.append(f"job {job['job_name']}: {host} shares no network with prometheus")
                scraped.setdefault(job["job_name"], set()).add(host)
    for job, role in SCRAPE_JOBS.items():
        expected = {n for n, s in services.items() if lamina_command(s) == role}
        if scraped.get(job, set()) != expected:
            problems.append(f"job {job}: scrapes {sorted(scraped.get(job, set()))}, expected {sorted(expected)}")
    mounted = {target: source for source, target, _ in mounts(own)}
    for rule_file in prometheus.get("rule_files") or []:
        source = mounted.get(rule_file)
        if source is None:
            problems.append(f"rule file {rule_file} is not mounted into prometheus")
        elif not (ROOT / source).is_file():
            problems.append(f"rule file {rule_file} comes from {source}, which does not exist")
    config_file = flag([a for part in command(own) for a in part.split("=", 1)], "--config.file")
    if config_file not in mounted or (ROOT / mounted[config_file]).resolve() != PROMETHEUS_CONFIG:
        problems.append(f"prometheus reads {config_file}, which is not {PROMETHEUS_CONFIG.relative_to(ROOT)}")
    return problems


def grafana_problems(config: Mapping[str, Any], datasources: Mapping[str, Any],
                     dashboards: Mapping[str, Any]) -> list[str]:
    """The data source is the stack's Prometheus; the provisioning directories are mounted
    where Grafana reads them; the dashboard provider's path holds a mounted dashboard."""
    services, problems = config["services"], []
    grafana = services["grafana"]
    mounted = {target: source for source, target, _ in mounts(grafana)}
    for source in datasources.get("datasources") or []:
        url = urlsplit(source.get("url", ""))
        target = services.get(url.hostname or "")
        if source.get("type") != "prometheus" or target is None or \
                url.port not in listening_ports(url.hostname, target).values():
            problems.append(f"data source {source.get('name')}: {source.get('url')} is not the stack's Prometheus")
        elif not networks(target) & networks(grafana):
            problems.append(f"data source {source.get('name')}: grafana shares no network with {url.hostname}")
    for kind in ("datasources", "dashboards"):
        target = f"/etc/grafana/provisioning/{kind}"
        if (ROOT / mounted.get(target, "/nonexistent")).resolve() != GRAFANA_PROVISIONING / kind:
            problems.append(f"{target} is not deploy/grafana/provisioning/{kind}")
    for provider in dashboards.get("providers") or []:
        path = provider.get("options", {}).get("path", "")
        files = [ROOT / source for target, source in mounted.items()
                 if target.startswith(path.rstrip("/") + "/") and target.endswith(".json")]
        if provider.get("type") != "file" or not files:
            problems.append(f"dashboard provider {provider.get('name')}: no dashboard is mounted under {path!r}")
        for file in files:
            if file.is_file() and "panels" not in json.loads(file.read_text()):
                problems.append(f"{file.relative_to(ROOT)} is not a dashboard")
    home = environment(grafana).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home and home not in mounted:
        problems.append(f"the home dashboard {home} is not mounted")
    return problems


def strict_override() -> dict[str, Any]:
    """The tier A override of docs/compose.md (the YAML block after its marker)."""
    text = COMPOSE_DOC.read_text()
    match = re.search(r"<!-- strict-override -->\s*```yaml\n(.*?)```", text, re.S)
    assert match, "docs/compose.md has no strict override block"
    return yaml.safe_load(match[1])


def merged(base: Any, override: Any) -> Any:
    """Compose's merge of an override file, for mappings (enough for the override above)."""
    if isinstance(base, dict) and isinstance(override, dict):
        return {**base, **{key: merged(base.get(key), value) for key, value in override.items()}}
    return copy.deepcopy(override)


# -- the tests ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def prometheus() -> dict[str, Any]:
    return yaml.safe_load(PROMETHEUS_CONFIG.read_text())


@pytest.fixture(scope="module")
def datasources() -> dict[str, Any]:
    return yaml.safe_load((GRAFANA_PROVISIONING / "datasources" / "prometheus.yaml").read_text())


@pytest.fixture(scope="module")
def dashboards() -> dict[str, Any]:
    return yaml.safe_load((GRAFANA_PROVISIONING / "dashboards" / "lamina.yaml").read_text())


#: sha256 of ../shared/schemas/compose-spec.json when it was vendored: the copy is checked
#: against it in a fresh clone (where ../shared is absent), and against the file itself beside it.
SCHEMA_SHA256 = "1f91e091f16b2dd50ab8860e02bb391d22df553d91c145eacedb1b6eff9c3f0e"


def test_the_vendored_schema_is_the_shared_one():
    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() == SCHEMA_SHA256, \
        "tests/deploy/schemas/compose-spec.json was edited: copy ../shared/schemas/compose-spec.json again"
    shared = ROOT.parent / "shared" / "schemas" / "compose-spec.json"
    if shared.exists():
        assert hashlib.sha256(shared.read_bytes()).hexdigest() == SCHEMA_SHA256, \
            f"{shared} changed: copy it to tests/deploy/schemas/ and update SCHEMA_SHA256"


def test_matches_the_compose_specification(config):
    assert validator_for(json.loads(SCHEMA.read_text())) is jsonschema.Draft7Validator
    assert schema_problems(config) == []


@pytest.mark.parametrize("variable", sorted(REQUIRED_ENV))
def test_a_missing_secret_stops_compose_with_a_pointer_to_the_docs(variable):
    rest = {key: value for key, value in REQUIRED_ENV.items() if key != variable}
    with pytest.raises(ValueError, match=rf"{variable} is missing a value: .*docs/compose\.md"):
        load_compose(rest)
    with pytest.raises(ValueError, match=rf"{variable} is missing a value"):
        load_compose({**rest, variable: ""})


def test_the_controller_and_its_callers_share_the_cluster_token(config):
    assert token_problems(config) == []


def test_the_admin_key_is_minted_unless_given(config):
    controller = environment(config["services"]["controller"])
    assert controller["LAMINA_ADMIN_KEY"] == "", "unset in .env, the controller must mint the key itself"
    given = load_compose({**REQUIRED_ENV, "LAMINA_ADMIN_KEY": "k" * 40})
    assert environment(given["services"]["controller"])["LAMINA_ADMIN_KEY"] == "k" * 40
    assert any(target == str(settings_of(config["services"]["controller"]).data_dir)
               for _, target, _ in mounts(config["services"]["controller"])), "admin.key must be on a volume"


def test_build_contexts_and_mounted_files_exist(config):
    assert file_problems(config) == []


def test_every_lamina_variable_is_a_setting_of_its_process(config):
    assert settings_problems(config) == []


def test_addresses_name_a_service_and_its_port(config):
    assert address_problems(config) == []


def test_healthchecks_call_the_listening_ports(config):
    assert healthcheck_problems(config) == []


def test_services_start_after_what_they_need_is_healthy(config):
    assert order_problems(config) == []


def test_only_the_gateway_and_grafana_are_published_on_loopback(config):
    assert publishing_problems(config) == []


def test_function_code_cannot_reach_the_database_or_the_queue(config):
    assert network_problems(config) == []


def test_images_are_pinned(config):
    assert image_problems(config) == []


def test_two_invokers_on_tier_b(config):
    assert invoker_problems(config) == []


def test_the_controller_migrates_postgresql_and_the_gateway_queues_on_nats(config):
    controller = settings_of(config["services"]["controller"])
    gateway = settings_of(config["services"]["gateway"])
    assert controller.database_url.startswith("postgresql+psycopg://") and controller.migrate
    assert gateway.queue_url.startswith("nats://")
    nats = command(config["services"]["nats"])
    assert {"-js", "--jetstream"} & set(nats) and flag(nats, "-sd", "--store_dir") in {
        target for _, target, _ in mounts(config["services"]["nats"])}, "JetStream must store on the volume"


def test_stateful_services_keep_their_data_on_named_volumes(config):
    where = {"postgres": "/var/lib/postgresql/data", "nats": "/data", "controller": "/var/lib/lamina",
             "prometheus": "/prometheus", "grafana": "/var/lib/grafana"}
    for name, target in where.items():
        sources = [source for source, mounted_at, _ in mounts(config["services"][name]) if mounted_at == target]
        assert sources and not is_bind(sources[0]), f"{name}: {target} is not a named volume"


def test_prometheus_scrapes_every_process_where_it_serves_metrics(config, prometheus):
    assert prometheus_problems(config, prometheus) == []


def test_promtool_accepts_the_prometheus_config(config, prometheus, tmp_path):
    promtool = required_tool("promtool", "Debian: apt-get install prometheus")
    mounted = {target: source for source, target, _ in mounts(config["services"]["prometheus"])}
    local = dict(prometheus, rule_files=[str(ROOT / mounted[path]) for path in prometheus["rule_files"]])
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(local))
    done = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_grafana_is_provisioned_from_the_repository(config, datasources, dashboards):
    assert grafana_problems(config, datasources, dashboards) == []


def test_the_documented_strict_override_merges_into_a_valid_file(config):
    override = strict_override()
    both = merged(config, override)
    assert schema_problems(both) == []
    assert settings_problems(both) == []
    for name in override["services"]:
        assert lamina_command(both["services"][name]) == "invoker", f"{name} is not an invoker"
        service = both["services"][name]
        assert settings_of(service).isolation == "strict"
        assert service["privileged"] is True and str(service["user"]).split(":")[0] == "0"


# -- each check fails on a broken copy ------------------------------------------------------


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    *parents, last = path.split(".")

    def mutate(config: dict[str, Any]) -> None:
        node = config
        for key in parents:
            node = node[key]
        node[last] = value

    return mutate


def _delete(path: str) -> Callable[[dict[str, Any]], None]:
    *parents, last = path.split(".")

    def mutate(config: dict[str, Any]) -> None:
        node = config
        for key in parents:
            node = node[key]
        del node[last]

    return mutate


BROKEN = {
    "unknown service key": (_set("services.gateway.portz", ["8080"]), schema_problems),
    "ports not a list": (_set("services.gateway.ports", "127.0.0.1:8080:8080"), schema_problems),
    "missing build context": (_set("services.controller.build", {"context": "nowhere"}), file_problems),
    "missing mounted file": (_set("services.prometheus.volumes", [
        "./deploy/prometheus/missing.yml:/etc/prometheus/prometheus.yml:ro"]), file_problems),
    "writable config mount": (_set("services.grafana.volumes", [
        "./deploy/grafana/provisioning/datasources:/etc/grafana/provisioning/datasources"]), file_problems),
    "undeclared volume": (_set("services.nats.volumes", ["jetstream:/data"]), file_problems),
    "unknown setting": (_set("services.gateway.environment.LAMINA_QUEUE_URI", "nats://nats:4222"), settings_problems),
    "setting of another process": (_set("services.gateway.environment.LAMINA_DATABASE_URL", "sqlite://"),
                                   settings_problems),
    "unparsable setting": (_set("services.invoker-1.environment.LAMINA_MEMORY_CAPACITY_MB", "2g"),
                           settings_problems),
    "controller url wrong port": (_set("services.gateway.environment.LAMINA_CONTROLLER_URL", "controller:50052"),
                                  address_problems),
    "queue url unknown host": (_set("services.gateway.environment.LAMINA_QUEUE_URL", "nats://queue:4222"),
                               address_problems),
    "database url wrong port": (_set("services.controller.environment.LAMINA_DATABASE_URL",
                                     "postgresql+psycopg://lamina@postgres:5433/lamina"), address_problems),
    "no shared network": (_set("services.controller.networks", ["backend"]), address_problems),
    "gateway port moved": (_set("services.gateway.environment.LAMINA_PORT", "9000"), address_problems),
    "invoker advertises another": (_set("services.invoker-2.environment.LAMINA_INVOKER_ADVERTISE",
                                        "invoker-1:50052"), address_problems),
    "stream on a random port": (_delete("services.invoker-1.environment.LAMINA_INVOKER_STREAM_LISTEN"),
                                address_problems),
    "healthcheck on the grpc port": (_set("services.controller.healthcheck.test", [
        "CMD", "python", "-c", "urlopen('http://127.0.0.1:50051/healthz')"]), healthcheck_problems),
    "metrics moved, healthcheck not": (_set("services.invoker-1.environment.LAMINA_METRICS_LISTEN", "0.0.0.0:9101"),
                                       healthcheck_problems),
    "healthy dependency without check": (_delete("services.postgres.healthcheck"), healthcheck_problems),
    "nats healthcheck off its port": (_set("services.nats.healthcheck.test", [
        "CMD", "wget", "-q", "http://127.0.0.1:8223/healthz"]), healthcheck_problems),
    "started, not healthy": (_set("services.controller.depends_on", {"postgres": {"condition": "service_started"}}),
                             order_problems),
    "postgres published": (_set("services.postgres.ports", ["127.0.0.1:5432:5432"]), publishing_problems),
    "gateway on every address": (_set("services.gateway.ports", ["8080:8080"]), publishing_problems),
    "grafana long syntax elsewhere": (_set("services.grafana.ports", [
        {"target": 3000, "published": "3000", "host_ip": "0.0.0.0"}]), publishing_problems),
    "token differs": (_set("services.gateway.environment.LAMINA_CLUSTER_TOKEN", "u" * 48), token_problems),
    "token missing": (_delete("services.invoker-2.environment.LAMINA_CLUSTER_TOKEN"), token_problems),
    "token too short": (lambda c: [c["services"][n]["environment"].update(LAMINA_CLUSTER_TOKEN="short")
                                   for n in ("controller", "gateway", "invoker-1", "invoker-2")], token_problems),
    "invoker joins the data network": (_set("services.invoker-1.networks", ["backend", "data"]), network_problems),
    "queue network not internal": (_set("networks.queue", {}), network_problems),
    "latest image": (_set("services.postgres.image", "postgres:latest"), image_problems),
    "major only": (_set("services.nats.image", "nats:2-alpine"), image_problems),
    "untagged": (_set("services.grafana.image", "grafana/grafana"), image_problems),
    "built but pullable": (_delete("services.gateway.pull_policy"), image_problems),
    "same invoker id": (_set("services.invoker-2.environment.LAMINA_INVOKER_ID", "invoker-1"), invoker_problems),
    "capacity over the limit": (_set("services.invoker-1.mem_limit", "1g"), invoker_problems),
}


@pytest.mark.parametrize("mutate, check", BROKEN.values(), ids=BROKEN.keys())
def test_each_check_fails_on_a_broken_copy(config, mutate, check):
    broken = copy.deepcopy(config)
    mutate(broken)
    assert check(broken) != []


PROMETHEUS_BROKEN = {
    "target on the grpc port": lambda p: p["scrape_configs"][2]["static_configs"][0].update(
        targets=["invoker-1:50052", "invoker-2:9100"]),
    "invoker not scraped": lambda p: p["scrape_configs"][2]["static_configs"][0].update(targets=["invoker-1:9100"]),
    "unknown host": lambda p: p["scrape_configs"][0]["static_configs"][0].update(targets=["gw:8080"]),
    "job renamed": lambda p: p["scrape_configs"][1].update(job_name="controller"),
    "rules not mounted": lambda p: p.update(rule_files=["/etc/prometheus/rules/other.yaml"]),
}


@pytest.mark.parametrize("mutate", PROMETHEUS_BROKEN.values(), ids=PROMETHEUS_BROKEN.keys())
def test_the_prometheus_check_fails_on_a_broken_copy(config, prometheus, mutate):
    broken = copy.deepcopy(prometheus)
    mutate(broken)
    assert prometheus_problems(config, broken) != []


def test_the_grafana_check_fails_on_a_broken_copy(config, datasources, dashboards):
    wrong_port = copy.deepcopy(datasources)
    wrong_port["datasources"][0]["url"] = "http://prometheus:9091"
    assert grafana_problems(config, wrong_port, dashboards) != []
    elsewhere = copy.deepcopy(dashboards)
    elsewhere["providers"][0]["options"]["path"] = "/var/lib/grafana/dashboards"
    assert grafana_problems(config, datasources, elsewhere) != []
