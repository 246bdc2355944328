"""The Helm chart (charts/lamina), rendered by the real helm over several value sets.

Each render is validated object by object against the strict schemas of the oldest and the
newest Kubernetes the chart supports (kubernetes-validate). Those schemas cover the built-in
kinds only: the Prometheus Operator's ServiceMonitor and PrometheusRule are checked here for
the shape the operator's CRDs require instead. The Pod Security "restricted" check is written
out below (the profile's rules, https://kubernetes.io/docs/concepts/security/pod-security-standards/),
and the orchestrator's Role is compared with the requests the kubernetes backend really makes
against kmock. helm is `.venv/bin/helm` (make .venv/bin/helm) or on PATH: without it these
tests skip locally and fail under CI.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import ipaddress
import json
import os
import re
import sqlite3
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import kmock
import kubernetes_validate
import pytest
import yaml
from alembic.script import ScriptDirectory
from kubernetes import client

from controller import migrate
from controller.orchestrators.kubernetes import KubernetesOrchestrator, namespace_of
from lamina.core import settings as cfg
from tests.conftest import required_tool

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "lamina"
# Not the chart's name, so a name written into a template instead of derived would show.
RELEASE, NAMESPACE = "prod", "faas"
FULLNAME = f"{RELEASE}-lamina"

#: Value set -> its values file under charts/lamina/ci/ (None: the chart's defaults).
VALUE_SETS: dict[str, str | None] = {
    "defaults": None,
    "external-db": "external-db-values.yaml",
    "existing-secrets": "existing-secrets-values.yaml",
    "ingress": "ingress-values.yaml",
    "node-isolation": "node-isolation-values.yaml",
    "hpa-off": "hpa-off-values.yaml",
    "monitoring": "monitoring-values.yaml",
}
CHART_META = yaml.safe_load((CHART / "Chart.yaml").read_text())
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
#: The oldest Kubernetes the chart states (kubeVersion ">=1.29.0-0") and the newest with schemas.
OLDEST = re.fullmatch(r">=(\d+\.\d+)\.0-0", CHART_META["kubeVersion"]).group(1)  # type: ignore[union-attr]
NEWEST = kubernetes_validate.utils.major_minor(kubernetes_validate.utils.latest_version())
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}
COMPONENT_SETTINGS = {"controller": cfg.ControllerSettings, "migrate": cfg.ControllerSettings,
                      "gateway": cfg.GatewaySettings, "invoker": cfg.InvokerSettings}


@cache
def helm_binary() -> str:
    return required_tool("helm", "make .venv/bin/helm", beside=ROOT / ".venv" / "bin")


@pytest.fixture(scope="module", autouse=True)
def _helm_present() -> None:
    helm_binary()


@pytest.fixture(scope="module")
def _schemas_parsed_once() -> Iterator[None]:
    """kubernetes-validate parses its 1.8 MB definitions file on every call: ten times the
    cost of the validation itself. The files never change, so parse each once."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(kubernetes_validate.utils, "schema_contents", cache(kubernetes_validate.utils.schema_contents))
        yield


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm_binary() or "helm", *args], capture_output=True, text=True, timeout=60)


def values_args(value_set: str) -> list[str]:
    name = VALUE_SETS[value_set]
    return ["-f", str(CHART / "ci" / name)] if name else []


@cache
def render(value_set: str, *flags: str) -> tuple[dict[str, Any], ...]:
    """The objects `helm template` renders (hooks included) for a value set plus extra flags."""
    done = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", f"{NEWEST}.0",
                *values_args(value_set), *flags)
    assert done.returncode == 0, done.stderr
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def find(docs: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    [doc] = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def pod_templates(docs: tuple[dict[str, Any], ...]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(component, pod template) of every object that makes pods."""
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            template = doc["spec"]["template"]
        elif doc["kind"] == "CronJob":
            template = doc["spec"]["jobTemplate"]["spec"]["template"]
        else:
            continue
        yield template["metadata"]["labels"]["app.kubernetes.io/component"], template


def pod_specs(docs: tuple[dict[str, Any], ...]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(component, pod spec) of every object that makes pods."""
    for component, template in pod_templates(docs):
        yield component, template["spec"]


def pod_security(docs: tuple[dict[str, Any], ...]) -> dict[str, list[str]]:
    """Component -> what in its pods breaks the restricted profile."""
    return {component: restricted_violations(t["spec"], t["metadata"].get("annotations"))
            for component, t in pod_templates(docs)}


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"], *spec.get("ephemeralContainers", [])]


def plain_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def component_container(docs: tuple[dict[str, Any], ...], component: str) -> dict[str, Any]:
    [spec] = [spec for c, spec in pod_specs(docs) if c == component]
    [container] = spec["containers"]
    return container


# -- helm's own checks ------------------------------------------------------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_helm_lint_strict_passes(value_set: str) -> None:
    done = helm("lint", "--strict", str(CHART), *values_args(value_set))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


@pytest.mark.parametrize(("flag", "complaint"), [
    ("invoker.isolation=vm", "at '/invoker/isolation': value must be one of 'pod', 'node'"),
    ("logLevel=loud", "at '/logLevel'"),
    ("gateway.env.QUEUE_DEPTH=5", "QUEUE_DEPTH"),
    ("invoker.resources.limits=null", "at '/invoker/resources"),
    ("database.url=mysql://db/lamina", "at '/database/url'"),
    ("podSecurityContext.runAsUser=0", "at '/podSecurityContext/runAsUser'"),
    ("gateway.replica=3", "additional properties 'replica' not allowed"),
])
def test_the_values_schema_rejects_a_bad_value(flag: str, complaint: str) -> None:
    done = helm("template", RELEASE, str(CHART), "--set", flag)
    assert done.returncode != 0
    assert "values don't meet the specifications of the schema" in done.stderr
    assert complaint in done.stderr


def test_kubernetes_older_than_the_supported_range_is_refused() -> None:
    major, minor = OLDEST.split(".")
    older = helm("template", RELEASE, str(CHART), "--kube-version", f"{major}.{int(minor) - 1}.0")
    assert older.returncode != 0
    assert "incompatible with Kubernetes" in older.stderr
    assert helm("template", RELEASE, str(CHART), "--kube-version", f"{OLDEST}.0").returncode == 0


@pytest.mark.parametrize(("flags", "complaint"), [
    (["invoker.resources.limits.memory=300Mi"], "(300 MiB) minus invoker.memoryReserveMB (256) leaves 44 MB for workers"),
    (["invoker.autoscaling.minReplicas=5", "invoker.autoscaling.maxReplicas=2"],
     "invoker.autoscaling.minReplicas (5) is above maxReplicas (2)"),
])
def test_values_that_cannot_work_together_are_refused(flags: list[str], complaint: str) -> None:
    done = helm("template", RELEASE, str(CHART), *[arg for flag in flags for arg in ("--set", flag)])
    assert done.returncode != 0
    assert complaint in done.stderr


def test_the_packaged_chart_carries_the_rules_and_the_dashboard(tmp_path: Path) -> None:
    done = helm("package", str(CHART), "--destination", str(tmp_path))
    assert done.returncode == 0, done.stderr
    [package] = tmp_path.glob("lamina-*.tgz")
    with tarfile.open(package) as archive:
        names = set(archive.getnames())
    assert {"lamina/files/prometheus/rules.yaml", "lamina/files/dashboards/lamina.json",
            "lamina/values.schema.json", "lamina/templates/NOTES.txt"} <= names
    assert not [n for n in names if n.startswith(("lamina/ci/", "lamina/files/prometheus/tests/"))]


# -- every object against the Kubernetes schemas ------------------------------------------------


@pytest.mark.usefixtures("_schemas_parsed_once")
@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_object_is_valid_for_the_oldest_and_newest_kubernetes(value_set: str) -> None:
    assert OLDEST in {kubernetes_validate.utils.major_minor(v) for v in kubernetes_validate.utils.all_versions()}
    assert OLDEST != NEWEST
    errors = []
    for doc in render(value_set):
        if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
            continue  # no schema in kubernetes-validate: test_the_prometheus_operator_objects
        for version in (OLDEST, NEWEST):
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as exc:
                errors.append(f"{doc['kind']}/{doc['metadata']['name']} on {version}: {exc.message}")
    assert errors == []


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_what_each_value_set_renders(value_set: str) -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in render(value_set)}
    always = {("ServiceAccount", f"{FULLNAME}-controller"), ("ServiceAccount", FULLNAME),
              ("Deployment", f"{FULLNAME}-controller"), ("Service", f"{FULLNAME}-controller"),
              ("Deployment", f"{FULLNAME}-gateway"), ("Service", f"{FULLNAME}-gateway"),
              ("Deployment", f"{FULLNAME}-invoker"), ("Service", f"{FULLNAME}-invoker"),
              ("ConfigMap", f"{FULLNAME}-dashboard")}
    assert always <= kinds
    expect = {
        ("Secret", f"{FULLNAME}-admin-key"): value_set != "existing-secrets",
        ("Secret", f"{FULLNAME}-database"): value_set == "external-db",
        ("Secret", f"{FULLNAME}-queue"): value_set == "external-db",
        ("Secret", f"{FULLNAME}-migrate"): value_set == "external-db",
        ("Job", f"{FULLNAME}-migrate"): value_set in ("external-db", "existing-secrets"),
        ("PersistentVolumeClaim", f"{FULLNAME}-controller"): value_set not in ("existing-secrets", "hpa-off"),
        ("HorizontalPodAutoscaler", f"{FULLNAME}-gateway"): value_set != "hpa-off",
        ("PodDisruptionBudget", f"{FULLNAME}-gateway"): True,
        ("Ingress", f"{FULLNAME}-gateway"): value_set == "ingress",
        ("Role", f"{FULLNAME}-controller-scaler"): value_set != "hpa-off",
        ("RoleBinding", f"{FULLNAME}-controller-scaler"): value_set != "hpa-off",
        ("NetworkPolicy", f"{FULLNAME}-invoker"): True,
        ("NetworkPolicy", f"{FULLNAME}-controller"): True,
        ("NetworkPolicy", f"{FULLNAME}-gateway"): True,
        ("ServiceMonitor", FULLNAME): value_set == "monitoring",
        ("PrometheusRule", FULLNAME): value_set == "monitoring",
    }
    assert {key: key in kinds for key in expect} == expect
    assert not {kind for kind, _ in kinds} & {"ClusterRole", "ClusterRoleBinding"}


def test_the_gateway_scales_on_cpu_and_is_reached_through_its_service_or_ingress() -> None:
    docs = render("ingress")
    deployment = find(docs, "Deployment", f"{FULLNAME}-gateway")
    hpa = find(docs, "HorizontalPodAutoscaler", f"{FULLNAME}-gateway")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    assert "replicas" not in deployment["spec"]  # the HPA owns it
    [metric] = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert component_container(docs, "gateway")["resources"]["requests"]["cpu"]  # utilization needs a request
    service = find(docs, "Service", f"{FULLNAME}-gateway")
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    ingress = find(docs, "Ingress", f"{FULLNAME}-gateway")
    backends = [p["backend"]["service"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]]
    assert backends == [{"name": service["metadata"]["name"], "port": {"name": "http"}}] * 2
    assert [r.get("host") for r in ingress["spec"]["rules"]] == ["functions.example.com", None]
    fixed = find(render("hpa-off"), "Deployment", f"{FULLNAME}-gateway")
    assert fixed["spec"]["replicas"] == 3


# -- Pod Security "restricted" -------------------------------------------------------------------

RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}


def restricted_violations(spec: dict[str, Any], annotations: dict[str, str] | None = None) -> list[str]:
    """What in a pod spec breaks the Pod Security Standards' "restricted" profile (which
    includes "baseline"), as messages; empty when it passes."""
    found = []
    pod = spec.get("securityContext", {})
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            found.append(f"{field}: true")
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            found.append(f"volume {volume['name']}: type {sorted(kinds - RESTRICTED_VOLUMES)}")
    found += [f"sysctl {s['name']}" for s in pod.get("sysctls", []) if s["name"] not in SAFE_SYSCTLS]
    found += [f"annotation {k}: unconfined" for k, v in (annotations or {}).items()
              if k.startswith("container.apparmor.security.beta.kubernetes.io/") and v == "unconfined"]
    pod_seccomp = pod.get("seccompProfile", {}).get("type")
    if pod_seccomp not in (None, "RuntimeDefault", "Localhost"):
        found.append(f"pod seccompProfile {pod_seccomp}")
    if pod.get("runAsUser") == 0:
        found.append("pod runAsUser: 0")
    for where, context in [("pod", pod)] + [(c["name"], c.get("securityContext", {})) for c in containers(spec)]:
        selinux = context.get("seLinuxOptions", {})
        if selinux.get("type", "") not in SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
            found.append(f"{where}: seLinuxOptions {selinux}")
        if context.get("appArmorProfile", {}).get("type") == "Unconfined":
            found.append(f"{where}: appArmorProfile Unconfined")
        if context.get("windowsOptions", {}).get("hostProcess"):
            found.append(f"{where}: hostProcess")
    for container in containers(spec):
        name, context = container["name"], container.get("securityContext", {})
        if context.get("privileged"):
            found.append(f"{name}: privileged")
        if context.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation is not false")
        run_as_non_root = context.get("runAsNonRoot", pod.get("runAsNonRoot"))
        if run_as_non_root is not True:
            found.append(f"{name}: runAsNonRoot is not true")
        if context.get("runAsUser") == 0:
            found.append(f"{name}: runAsUser: 0")
        seccomp = context.get("seccompProfile", {}).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name}: seccompProfile {seccomp}")
        capabilities = context.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            found.append(f"{name}: capabilities do not drop ALL")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            found.append(f"{name}: capabilities add {capabilities['add']}")
        if context.get("procMount", "Default") != "Default":
            found.append(f"{name}: procMount {context['procMount']}")
        found += [f"{name}: hostPort {p['hostPort']}" for p in container.get("ports", []) if p.get("hostPort")]
    return found


@pytest.mark.parametrize("value_set", [s for s in VALUE_SETS if s != "node-isolation"])
def test_every_pod_passes_the_restricted_pod_security_profile(value_set: str) -> None:
    violations = pod_security(render(value_set))
    assert violations == {component: [] for component in violations}
    assert {"controller", "gateway", "invoker"} <= set(violations)


def test_node_isolation_is_a_privileged_invoker_and_fails_the_restricted_profile() -> None:
    docs = render("node-isolation")
    violations = pod_security(docs)
    assert violations["controller"] == violations["gateway"] == []
    assert set(violations["invoker"]) >= {"invoker: privileged", "invoker: allowPrivilegeEscalation is not false",
                                          "invoker: runAsNonRoot is not true", "pod runAsUser: 0"}
    assert plain_env(component_container(docs, "invoker"))["LAMINA_ISOLATION"] == "strict"
    assert plain_env(component_container(render("defaults"), "invoker"))["LAMINA_ISOLATION"] == "pod"


def test_the_restricted_check_catches_each_rule() -> None:
    [(_, good)] = [(c, s) for c, s in pod_specs(render("defaults")) if c == "gateway"]
    assert restricted_violations(good) == []

    def broken(change: dict[str, Any], container: dict[str, Any] | None = None) -> list[str]:
        spec = json.loads(json.dumps(good))
        spec.update(change)
        spec["containers"][0]["securityContext"].update(container or {})
        return restricted_violations(spec)

    assert broken({"hostNetwork": True}) == ["hostNetwork: true"]
    assert broken({"volumes": [{"name": "h", "hostPath": {"path": "/"}}]}) == ["volume h: type ['hostPath']"]
    assert broken({}, {"capabilities": {"drop": ["ALL"], "add": ["SYS_ADMIN"]}}) == [
        "gateway: capabilities add ['SYS_ADMIN']"]
    assert broken({}, {"capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}) == []
    assert broken({}, {"seccompProfile": {"type": "Unconfined"}}) == ["gateway: seccompProfile Unconfined"]
    assert broken({}, {"runAsNonRoot": False}) == ["gateway: runAsNonRoot is not true"]


# -- settings and wiring --------------------------------------------------------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_environment_key_is_a_setting_the_component_reads(value_set: str) -> None:
    known = cfg.all_env_names()
    for component, spec in pod_specs(render(value_set)):
        reads = {cfg.env_name(f.name) for f in dataclasses.fields(COMPONENT_SETTINGS[component])}
        for container in containers(spec):
            names = [e["name"] for e in container.get("env", [])]
            assert len(names) == len(set(names)), f"{component}: duplicate env {names}"
            lamina = {n for n in names if n.startswith("LAMINA_")}
            assert lamina <= known, f"{component}: not settings: {lamina - known}"
            assert lamina <= reads, f"{component} does not read {lamina - reads}"
            assert set(names) - lamina <= {"POD_IP", "POD_NAME"}
            # The values parse as the settings' types (no 6.291456e+06 for an int, say).
            cfg.load(COMPONENT_SETTINGS[component], env={
                k: v for k, v in plain_env(container).items() if k.startswith("LAMINA_") and "$(" not in v})


def test_extra_settings_from_values_reach_the_component_and_override_the_chart() -> None:
    docs = render("hpa-off", "--set", "gateway.env.LAMINA_PORT=9090")
    env = plain_env(component_container(docs, "gateway"))
    assert (env["LAMINA_QUEUE_DEPTH"], env["LAMINA_MAX_SYNC_PAYLOAD_BYTES"], env["LAMINA_PORT"]) == (
        "50", "6291456", "9090")
    assert plain_env(component_container(docs, "invoker"))["LAMINA_IDLE_TIMEOUT_S"] == "300"


def port_of(container: dict[str, Any], name: str) -> int:
    [port] = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    return port


def test_the_components_find_each_other() -> None:
    docs = render("defaults")
    controller, gateway, invoker = (component_container(docs, c) for c in ("controller", "gateway", "invoker"))
    c_env, g_env, i_env = plain_env(controller), plain_env(gateway), plain_env(invoker)
    service = find(docs, "Service", f"{FULLNAME}-controller")
    [grpc] = [p for p in service["spec"]["ports"] if p["name"] == "grpc"]
    assert g_env["LAMINA_CONTROLLER_URL"] == i_env["LAMINA_CONTROLLER_URL"] == f"{FULLNAME}-controller:{grpc['port']}"
    assert c_env["LAMINA_CONTROLLER_LISTEN"] == f"0.0.0.0:{port_of(controller, 'grpc')}"
    assert g_env["LAMINA_PORT"] == str(port_of(gateway, "http")) and g_env["LAMINA_HOST"] == "0.0.0.0"
    # The gateways dial the address each invoker registers: its pod IP and fixed ports.
    names = [e["name"] for e in invoker["env"]]
    assert names.index("POD_IP") < names.index("LAMINA_INVOKER_ADVERTISE")
    assert i_env["LAMINA_INVOKER_ADVERTISE"] == f"$(POD_IP):{port_of(invoker, 'grpc')}"
    assert i_env["LAMINA_INVOKER_LISTEN"] == f"0.0.0.0:{port_of(invoker, 'grpc')}"
    assert i_env["LAMINA_INVOKER_STREAM_LISTEN"] == f"0.0.0.0:{port_of(invoker, 'stream')}"
    for container, env in ((controller, c_env), (invoker, i_env)):
        assert env["LAMINA_METRICS_LISTEN"] == f"0.0.0.0:{port_of(container, 'metrics')}"
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    image = f"{VALUES['image']['repository']}:{CHART_META['appVersion']}"
    assert {c["image"] for _, spec in pod_specs(docs) for c in containers(spec)} == {image}
    assert [c["args"] for c in (controller, gateway, invoker)] == [["controller"], ["gateway"], ["invoker"]]


@pytest.mark.parametrize(("value_set", "limit_mib"), [("defaults", 2048), ("node-isolation", 8192)])
def test_the_invokers_worker_memory_is_bounded_by_its_pod(value_set: str, limit_mib: int) -> None:
    invoker = component_container(render(value_set), "invoker")
    assert invoker["resources"]["limits"]["memory"] == f"{limit_mib // 1024}Gi"
    capacity = int(plain_env(invoker)["LAMINA_MEMORY_CAPACITY_MB"])
    assert capacity == limit_mib - VALUES["invoker"]["memoryReserveMB"]


def test_without_a_database_the_controller_migrates_sqlite_on_its_volume() -> None:
    docs = render("defaults")
    controller = component_container(docs, "controller")
    env = plain_env(controller)
    assert env["LAMINA_MIGRATE"] == "true" and "LAMINA_DATABASE_URL" not in {e["name"] for e in controller["env"]}
    assert env["LAMINA_DATA_DIR"] == "/var/lib/lamina"
    deployment = find(docs, "Deployment", f"{FULLNAME}-controller")
    assert (deployment["spec"]["replicas"], deployment["spec"]["strategy"]) == (1, {"type": "Recreate"})
    [data] = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "data"]
    assert data["persistentVolumeClaim"]["claimName"] == f"{FULLNAME}-controller"


@pytest.mark.parametrize("value_set", ["external-db", "existing-secrets"])
def test_with_postgresql_a_hook_job_migrates_before_install_and_upgrade(value_set: str) -> None:
    docs = render(value_set)
    job = find(docs, "Job", f"{FULLNAME}-migrate")
    hook = job["metadata"]["annotations"]
    assert hook["helm.sh/hook"] == "pre-install,pre-upgrade"
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["migrate"]
    [url] = [e for e in container["env"] if e["name"] == "LAMINA_DATABASE_URL"]
    ref = url["valueFrom"]["secretKeyRef"]
    controller = component_container(docs, "controller")
    assert plain_env(controller)["LAMINA_MIGRATE"] == "false"
    [controller_url] = [e for e in controller["env"] if e["name"] == "LAMINA_DATABASE_URL"]
    assert controller_url["valueFrom"]["secretKeyRef"]["key"] == ref["key"]
    # Hooks run before the release's own objects exist: the Job's Secret is either a hook
    # created before it (a lower weight) or one made outside the chart.
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    if value_set == "external-db":
        secret = secrets[ref["name"]]["metadata"]["annotations"]
        assert secret["helm.sh/hook"] == hook["helm.sh/hook"]
        assert int(secret["helm.sh/hook-weight"]) < int(hook["helm.sh/hook-weight"])
    else:
        assert ref == {"name": "lamina-postgres", "key": "sqlalchemy-url"} and ref["name"] not in secrets
    assert job["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_lamina_migrate_brings_a_database_to_the_newest_revision(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'lamina.db'}"
    for _ in range(2):  # the second run finds nothing to do
        done = subprocess.run([sys.executable, "-m", "lamina", "migrate"], capture_output=True, text=True,
                              timeout=120, env={**os.environ, "LAMINA_DATABASE_URL": url})
        assert done.returncode == 0, done.stderr
        assert "is at the newest revision" in done.stderr
    with sqlite3.connect(tmp_path / "lamina.db") as db:
        [(revision,)] = db.execute("SELECT version_num FROM alembic_version").fetchall()
        assert {"functions", "api_keys"} <= {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert revision == ScriptDirectory.from_config(migrate.config(url)).get_current_head()


def test_secrets_come_from_secrets() -> None:
    docs = render("existing-secrets")
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for _, spec in pod_specs(docs)
            for c in containers(spec) for e in c["env"] if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]}
    assert refs == {"LAMINA_ADMIN_KEY": {"name": "lamina-bootstrap", "key": "admin-key"},
                    "LAMINA_CLUSTER_TOKEN": {"name": "lamina-bootstrap", "key": "cluster-token"},
                    "LAMINA_DATABASE_URL": {"name": "lamina-postgres", "key": "sqlalchemy-url"},
                    "LAMINA_QUEUE_URL": {"name": "lamina-nats", "key": "url"}}
    generated = find(render("defaults"), "Secret", f"{FULLNAME}-admin-key")
    assert generated["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    key = base64.b64decode(generated["data"]["admin-key"]).decode()
    assert re.fullmatch(r"lmn_[0-9a-f]{12}_[A-Za-z0-9]{43}", key)  # the controller's own key format



def test_every_component_that_talks_to_the_controller_sends_the_cluster_token() -> None:
    docs = render("defaults")
    token = find(docs, "Secret", f"{FULLNAME}-cluster-token")
    assert len(base64.b64decode(token["data"]["token"])) >= 22  # what the controller accepts
    for component in ("controller", "gateway", "invoker"):
        spec = find(docs, "Deployment", f"{FULLNAME}-{component}")["spec"]["template"]["spec"]
        env = {e["name"]: e for c in containers(spec) for e in c["env"]}
        assert env["LAMINA_CLUSTER_TOKEN"]["valueFrom"]["secretKeyRef"] == {
            "name": f"{FULLNAME}-cluster-token", "key": "token"}, component


# -- the orchestrator's RBAC against the requests it makes ----------------------------------------


def rbac_attributes(method: str, path: str, query: dict[str, str]) -> tuple[str, str, str, str, str]:
    """(apiGroup, resource[/subresource], verb, name, namespace) of a resource request, as the
    API server derives them (k8s.io/apiserver/pkg/endpoints/request/requestinfo.go)."""
    parts = path.strip("/").split("/")
    if parts[0] == "api":
        group, rest = "", parts[2:]
    else:
        assert parts[0] == "apis", path
        group, rest = parts[1], parts[3:]
    namespace = ""
    if rest[0] == "namespaces" and len(rest) > 2:
        namespace, rest = rest[1], rest[2:]
    resource, name, sub = rest[0], rest[1] if len(rest) > 1 else "", rest[2] if len(rest) > 2 else ""
    verb = {"GET": "get", "HEAD": "get", "POST": "create", "PUT": "update", "PATCH": "patch",
            "DELETE": "delete"}[method]
    if not name:
        verb = {"get": "list", "delete": "deletecollection"}.get(verb, verb)
    if query.get("watch") in ("1", "true"):
        verb = "watch"
    return group, f"{resource}/{sub}" if sub else resource, verb, name, namespace


def granted(role: dict[str, Any]) -> set[tuple[str, str, str, str]]:
    """(apiGroup, resource, verb, resourceName) a Role grants; checks it names every one."""
    grants = set()
    for rule in role["rules"]:
        assert "nonResourceURLs" not in rule
        lists = [rule["apiGroups"], rule["resources"], rule["verbs"], rule.get("resourceNames", [])]
        assert all(lists), f"a rule without resourceNames (or another list empty) grants too much: {rule}"
        assert not any("*" in item for values in lists for item in values), f"wildcard in {rule}"
        grants |= {(g, r, v, n) for g in lists[0] for r in lists[1] for v in lists[2] for n in lists[3]}
    return grants


async def test_the_controllers_role_allows_exactly_what_the_kubernetes_backend_requests(tmp_path: Path) -> None:
    docs = render("defaults")
    deployment = find(docs, "Deployment", f"{FULLNAME}-controller")
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    settings = cfg.load(cfg.ControllerSettings, env=plain_env(container))
    assert settings.orchestrator == "kubernetes"
    assert settings.kubernetes_deployment == f"{FULLNAME}-invoker"
    find(docs, "Deployment", settings.kubernetes_deployment)  # it names the chart's invoker Deployment
    namespace = namespace_of(settings, service_account_dir=tmp_path / "no-service-account")
    scale_path = f"/apis/apps/v1/namespaces/{namespace}/deployments/{settings.kubernetes_deployment}/scale"
    replicas = {"n": 1}

    def scale(request: kmock.Request) -> dict[str, Any]:
        if request.method.value == "PATCH":
            replicas["n"] = request.data["spec"]["replicas"]
        return {"apiVersion": "autoscaling/v1", "kind": "Scale",
                "metadata": {"name": settings.kubernetes_deployment, "namespace": namespace},
                "spec": {"replicas": replicas["n"]}, "status": {"replicas": replicas["n"]}}

    # Every method of the Orchestrator interface that reaches the API server (close does not).
    async with kmock.RawHandler() as handler, kmock.Server(handler) as server:
        handler[f"get {scale_path}"] << scale
        handler[f"patch {scale_path}"] << scale
        orchestrator = KubernetesOrchestrator(client.ApiClient(client.Configuration(host=str(server.url).rstrip("/"))),
                                              namespace, settings.kubernetes_deployment)
        try:
            assert await asyncio.to_thread(orchestrator.current) == 1
            await asyncio.to_thread(orchestrator.scale, 3)
            assert await asyncio.to_thread(orchestrator.current) == 3
        finally:
            orchestrator.close()
        requests = list(handler)

    seen = [rbac_attributes(r.method.value, r.url.path, dict(r.url.query)) for r in requests]
    for request, (group, resource, _, name, ns) in zip(requests, seen, strict=True):  # kmock parses alike
        assert (request.resource.group, request.resource.plural, request.subresource, request.name,
                request.namespace) == (group, resource.split("/")[0], resource.split("/")[1], name, ns)
    role = find(docs, "Role", f"{FULLNAME}-controller-scaler")
    binding = find(docs, "RoleBinding", f"{FULLNAME}-controller-scaler")
    assert {ns for *_, ns in seen} == {role["metadata"]["namespace"]} == {binding["metadata"]["namespace"]} == {
        NAMESPACE}
    # Every request allowed, nothing granted that was not requested.
    assert granted(role) == {(group, resource, verb, name) for group, resource, verb, name, _ in seen} == {
        ("apps", "deployments/scale", "get", f"{FULLNAME}-invoker"),
        ("apps", "deployments/scale", "patch", f"{FULLNAME}-invoker")}
    # Bound to the service account the controller runs as, which exists and gets its token.
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": pod["serviceAccountName"],
                                    "namespace": NAMESPACE}]
    find(docs, "ServiceAccount", pod["serviceAccountName"])
    assert pod["automountServiceAccountToken"] is True


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_only_the_orchestrating_controller_gets_a_service_account_token(value_set: str) -> None:
    docs = render(value_set)
    orchestrating = any(d["kind"] == "Role" for d in docs)
    tokens = {component: spec.get("automountServiceAccountToken") for component, spec in pod_specs(docs)}
    assert tokens.pop("controller") is orchestrating
    assert set(tokens.values()) == {False}
    env = plain_env(component_container(docs, "controller"))
    assert env["LAMINA_ORCHESTRATOR"] == ("kubernetes" if orchestrating else "none")
    invoker = find(docs, "Deployment", f"{FULLNAME}-invoker")
    # The controller owns the replica count when it orchestrates: an upgrade must not reset it.
    assert ("replicas" in invoker["spec"]) is not orchestrating


# -- network policies -----------------------------------------------------------------------------


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def pod_labels(docs: tuple[dict[str, Any], ...], component: str) -> dict[str, str]:
    return find(docs, "Deployment", f"{FULLNAME}-{component}")["spec"]["template"]["metadata"]["labels"]


def egress_allows(policy: dict[str, Any], address: str) -> bool:
    ip = ipaddress.ip_address(address)
    for rule in policy["spec"]["egress"]:
        for peer in rule.get("to", []):
            block = peer.get("ipBlock")
            if block and ip.version == ipaddress.ip_network(block["cidr"]).version \
                    and ip in ipaddress.ip_network(block["cidr"]) \
                    and not any(ip in ipaddress.ip_network(e) for e in block.get("except", [])
                                if ipaddress.ip_network(e).version == ip.version):
                return True
    return False


@pytest.mark.parametrize("value_set", ["defaults", "hpa-off"])
def test_invokers_talk_only_to_gateways_prometheus_dns_the_controller_and_the_internet(value_set: str) -> None:
    docs = render(value_set)
    policy = find(docs, "NetworkPolicy", f"{FULLNAME}-invoker")
    invoker = component_container(docs, "invoker")
    assert selects(policy["spec"]["podSelector"], pod_labels(docs, "invoker"))
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    ingress = {tuple(sorted(p["port"] for p in rule["ports"])): rule["from"] for rule in policy["spec"]["ingress"]}
    assert set(ingress) == {("grpc", "stream"), ("metrics",)}
    assert [selects(peer["podSelector"], pod_labels(docs, "gateway")) for peer in ingress[("grpc", "stream")]] == [
        True]
    assert ingress[("metrics",)] == VALUES["networkPolicy"]["metricsFrom"]
    for port in ("grpc", "stream", "metrics"):
        port_of(invoker, port)  # every port the policy names is one of the pod's
    controller_rules = [rule for rule in policy["spec"]["egress"] for peer in rule["to"]
                        if "podSelector" in peer and selects(peer["podSelector"], pod_labels(docs, "controller"))]
    assert [rule["ports"] for rule in controller_rules] == [
        [{"port": port_of(component_container(docs, "controller"), "grpc"), "protocol": "TCP"}]]
    # Workers share the invoker's network: never the cluster's pods, services, nodes or metadata.
    for internal in ("10.96.0.1", "10.244.3.7", "172.20.0.10", "192.168.1.20", "100.64.0.5", "169.254.169.254",
                     "fd00::1", "fe80::1"):
        assert not egress_allows(policy, internal), internal
    internet = value_set == "defaults"  # hpa-off sets workerInternetEgress: false
    assert [egress_allows(policy, a) for a in ("1.1.1.1", "2606:4700::1111")] == [internet, internet]


def test_the_controller_accepts_gateways_and_invokers_and_the_gateway_everyone() -> None:
    docs = render("defaults")
    controller = find(docs, "NetworkPolicy", f"{FULLNAME}-controller")["spec"]
    assert selects(controller["podSelector"], pod_labels(docs, "controller"))
    [grpc, metrics] = controller["ingress"]
    assert grpc["ports"] == [{"port": "grpc", "protocol": "TCP"}]
    assert [[selects(p["podSelector"], pod_labels(docs, c)) for c in ("gateway", "invoker")] for p in grpc["from"]] == [
        [True, False], [False, True]]
    assert metrics["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    gateway = find(docs, "NetworkPolicy", f"{FULLNAME}-gateway")["spec"]
    assert gateway["ingress"] == [{"ports": [{"port": "http", "protocol": "TCP"}]}]
    assert gateway["policyTypes"] == ["Ingress"]


# -- monitoring -------------------------------------------------------------------------------------


def test_the_prometheus_operator_objects() -> None:
    """ServiceMonitor and PrometheusRule have no schema in kubernetes-validate: their shape is
    checked against what the operator's CRDs require."""
    docs = render("monitoring")
    monitor = find(docs, "ServiceMonitor", FULLNAME)
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    services = [d for d in docs if d["kind"] == "Service"]
    selected = [s for s in services if selects({"matchLabels": monitor["spec"]["selector"]["matchLabels"]},
                                               s["metadata"]["labels"])
                and all(s["metadata"]["labels"][e["key"]] in e["values"]
                        for e in monitor["spec"]["selector"]["matchExpressions"])]
    assert {s["metadata"]["name"] for s in selected} == {f"{FULLNAME}-{c}" for c in ("controller", "gateway", "invoker")}
    endpoint_ports = {e["port"] for e in monitor["spec"]["endpoints"]}
    for service in selected:  # each Service exposes /metrics on a port an endpoint names
        assert {p["name"] for p in service["spec"]["ports"]} & endpoint_ports, service["metadata"]["name"]
    for endpoint in monitor["spec"]["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "relabelings"} and endpoint["path"] == "/metrics"
        assert re.fullmatch(r"[0-9]+(ms|s|m|h)", endpoint["interval"])
        # The rules select on job="lamina-<component>", whatever the release is called.
        assert endpoint["relabelings"] == [{
            "sourceLabels": ["__meta_kubernetes_service_label_app_kubernetes_io_component"],
            "targetLabel": "job", "replacement": "lamina-$1"}]

    rule = find(docs, "PrometheusRule", FULLNAME)
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    rules_file = yaml.safe_load((CHART / "files" / "prometheus" / "rules.yaml").read_text())
    assert rule["spec"] == {"groups": rules_file["groups"]}  # embedded unchanged, templates included
    for group in rule["spec"]["groups"]:
        assert group["name"] and group["rules"]
        for r in group["rules"]:
            assert ("record" in r) != ("alert" in r) and r["expr"]


@pytest.mark.parametrize("value_set", ["defaults", "monitoring"])
def test_the_grafana_dashboard_is_a_configmap_for_the_sidecar(value_set: str) -> None:
    configmap = find(render(value_set), "ConfigMap", f"{FULLNAME}-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["namespace"] == ("monitoring" if value_set == "monitoring" else NAMESPACE)
    dashboard = (CHART / "files" / "dashboards" / "lamina.json").read_text()
    assert configmap["data"]["lamina.json"] == dashboard.rstrip("\n")
    assert json.loads(configmap["data"]["lamina.json"])["panels"]
