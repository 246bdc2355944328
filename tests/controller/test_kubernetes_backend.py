"""The kubernetes orchestrator against kmock: the official client over real HTTP on a loopback
port. The requests asserted here are all it makes, so they are the RBAC it needs
(docs/orchestrator.md): get and patch on deployments/scale of one Deployment."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import kmock
import pytest
from kubernetes import client

from controller.metrics import ControllerMetrics
from controller.orchestrators import FleetScaler, open_orchestrator
from controller.orchestrators.autoscaler import Autoscaler
from controller.orchestrators.kubernetes import KubernetesOrchestrator, namespace_of
from lamina.core.errors import InvalidSpec, NotFound, Unavailable
from lamina.core.settings import ControllerSettings

NAMESPACE, DEPLOYMENT = "lamina", "lamina-invoker"
SCALE = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{DEPLOYMENT}/scale"
MERGE_PATCH = "application/merge-patch+json"


@dataclass
class Cluster:
    """A fake API server holding one Deployment's scale, and every request it received."""

    handler: kmock.RawHandler
    url: str
    replicas: int = 1
    status: int = 200
    requests: list[tuple[str, str, Any]] = field(default_factory=list)

    def scale(self, request: kmock.Request) -> Any:
        if self.status != 200:
            return kmock.Response(status=self.status, payload={
                "apiVersion": "v1", "kind": "Status", "status": "Failure", "code": self.status})
        if request.method == "PATCH":
            self.replicas = request.data["spec"]["replicas"]
        return {"apiVersion": "autoscaling/v1", "kind": "Scale",
                "metadata": {"name": DEPLOYMENT, "namespace": NAMESPACE},
                "spec": {"replicas": self.replicas}, "status": {"replicas": self.replicas}}

    def seen(self) -> list[tuple[str, str, Any]]:
        """(method, path with query, JSON body) of every request, in order."""
        return [(str(r.method.value), r.url.path_qs, r.data) for r in self.handler]


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with kmock.RawHandler() as handler, kmock.Server(handler) as server:
        fake = Cluster(handler, str(server.url).rstrip("/"))
        handler[f"get {SCALE}"] << fake.scale
        handler[f"patch {SCALE}"] << fake.scale
        yield fake


def backend(cluster: Cluster) -> KubernetesOrchestrator:
    return KubernetesOrchestrator(client.ApiClient(client.Configuration(host=cluster.url)), NAMESPACE, DEPLOYMENT)


async def test_the_loop_reads_the_scale_and_patches_only_the_replicas(cluster: Cluster) -> None:
    metrics = ControllerMetrics()
    scaler = FleetScaler(backend(cluster), Autoscaler(min_invokers=2, max_invokers=5), live=list,
                         metrics=metrics, interval_s=1.0)
    try:
        first = await scaler.tick()
        second = await scaler.tick()
    finally:
        await scaler.close()

    assert (first.current, first.desired) == (1, 2)
    assert (second.current, second.desired) == (2, 2)
    assert cluster.replicas == 2
    # Exactly these requests, hence exactly this RBAC: get + patch on deployments/scale.
    assert cluster.seen() == [
        ("GET", SCALE, None),
        ("PATCH", f"{SCALE}?fieldManager=lamina-controller", {"spec": {"replicas": 2}}),
        ("GET", SCALE, None),
    ]
    patch = list(cluster.handler)[1]
    assert patch.headers["Content-Type"] == MERGE_PATCH
    assert metrics.registry.get_sample_value("lamina_controller_invokers", {"state": "desired"}) == 2
    assert metrics.registry.get_sample_value("lamina_controller_scaling_decisions_total", {"direction": "up"}) == 1


async def test_a_missing_deployment_is_not_found_and_a_refusal_names_the_rbac(cluster: Cluster) -> None:
    orchestrator = backend(cluster)
    try:
        cluster.status = 404
        with pytest.raises(NotFound, match=f"deployment {NAMESPACE}/{DEPLOYMENT}.*does not exist"):
            await asyncio.to_thread(orchestrator.current)
        cluster.status = 403
        with pytest.raises(Unavailable, match="needs get and patch on deployments/scale"):
            await asyncio.to_thread(orchestrator.scale, 3)
    finally:
        orchestrator.close()
    assert [method for method, _, _ in cluster.seen()] == ["GET", "PATCH"]


async def test_an_unreachable_api_server_is_unavailable() -> None:
    async with kmock.RawHandler() as handler, kmock.Server(handler) as server:
        url = str(server.url).rstrip("/")
    orchestrator = KubernetesOrchestrator(
        client.ApiClient(client.Configuration(host=url, retries=0)), NAMESPACE, DEPLOYMENT)
    try:
        with pytest.raises(Unavailable, match=f"cannot read the scale of deployment {NAMESPACE}/{DEPLOYMENT}"):
            await asyncio.to_thread(orchestrator.current)
    finally:
        orchestrator.close()


async def test_outside_a_cluster_it_uses_the_kubeconfig_and_its_namespace(cluster, tmp_path, monkeypatch) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "c", "cluster": {"server": cluster.url}}],
        "users": [{"name": "u", "user": {"token": "s3cret"}}],
        "contexts": [{"name": "test", "context": {"cluster": "c", "user": "u", "namespace": NAMESPACE}}],
    }))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # not in a pod
    settings = ControllerSettings(orchestrator="kubernetes", kubernetes_deployment=DEPLOYMENT)

    orchestrator = await asyncio.to_thread(KubernetesOrchestrator.from_settings, settings, kubeconfig=str(kubeconfig))
    try:
        assert orchestrator.namespace == NAMESPACE
        assert await asyncio.to_thread(orchestrator.current) == 1
    finally:
        orchestrator.close()
    [request] = list(cluster.handler)
    assert request.url.path == SCALE
    assert request.headers["Authorization"] == "Bearer s3cret"


def test_the_namespace_is_the_setting_else_the_pods_own_else_the_kubeconfigs(tmp_path) -> None:
    (tmp_path / "namespace").write_text("from-pod\n")
    assert namespace_of(ControllerSettings(kubernetes_namespace="set"), tmp_path) == "set"
    assert namespace_of(ControllerSettings(), tmp_path, kubeconfig_namespace="ctx") == "from-pod"
    assert namespace_of(ControllerSettings(), tmp_path / "absent", kubeconfig_namespace="ctx") == "ctx"
    assert namespace_of(ControllerSettings(), tmp_path / "absent") == "default"


def test_an_unknown_orchestrator_is_an_invalid_setting() -> None:
    with pytest.raises(InvalidSpec, match="LAMINA_ORCHESTRATOR='nomad' is invalid: expected none, local, kubernetes"):
        open_orchestrator(ControllerSettings(orchestrator="nomad"), "127.0.0.1:50051")
