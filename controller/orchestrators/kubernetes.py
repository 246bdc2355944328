"""The ``kubernetes`` orchestrator: the replicas of the invoker Deployment, through the official
client.

It makes exactly two kinds of request, both on the Deployment's ``scale`` subresource in its
namespace, which is all the RBAC it needs (docs/orchestrator.md gives the Role):

- ``GET /apis/apps/v1/namespaces/<ns>/deployments/<name>/scale`` (``current``);
- ``PATCH`` of the same path with ``{"spec": {"replicas": n}}`` as a JSON merge patch
  (``scale``).

Kubernetes itself replaces dead pods and stops a removed one gracefully (SIGTERM, then the
pod's termination grace), so nothing else is watched. Credentials: the pod's service account
when in a cluster, else the kubeconfig. This is the only module that imports ``kubernetes``;
its types and errors stay here (``ApiException`` becomes a ``LaminaError``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from lamina.core.errors import Conflict, InvalidSpec, LaminaError, NotFound, Unavailable
from lamina.core.settings import ControllerSettings

log = logging.getLogger(__name__)

#: Where a pod's service account is mounted (its namespace, token and CA).
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
#: Seconds to connect to and to read from the API server: a hung server must not stall the
#: scaling loop for long (it retries next tick).
REQUEST_TIMEOUT_S = (5.0, 10.0)
#: Who made the change, as the API server records it (``managedFields``).
FIELD_MANAGER = "lamina-controller"


def namespace_of(settings: ControllerSettings, service_account_dir: Path = SERVICE_ACCOUNT_DIR,
                 kubeconfig_namespace: str = "") -> str:
    """The Deployment's namespace: the setting, else the pod's own (its service account's
    ``namespace`` file), else the kubeconfig context's, else ``default``."""
    if settings.kubernetes_namespace:
        return settings.kubernetes_namespace
    try:
        return (service_account_dir / "namespace").read_text().strip()
    except OSError:
        return kubeconfig_namespace or "default"


class KubernetesOrchestrator:
    """:class:`~controller.orchestrators.Orchestrator` over a Deployment's scale subresource."""

    def __init__(self, api_client: client.ApiClient, namespace: str, deployment: str) -> None:
        self.namespace = namespace
        self.deployment = deployment
        self._client = api_client
        self._apps = client.AppsV1Api(api_client)

    @classmethod
    def from_settings(cls, settings: ControllerSettings, *, controller_url: str = "",
                      kubeconfig: str | None = None) -> KubernetesOrchestrator:
        """In-cluster credentials when running in a pod, else the kubeconfig: ``kubeconfig``,
        or the client's default (``KUBECONFIG``, else ~/.kube/config). Raises ``Unavailable``
        when there are neither."""
        configuration = client.Configuration()
        kubeconfig_namespace = ""
        try:
            config.load_incluster_config(client_configuration=configuration)
            where = "in-cluster service account"
        except config.ConfigException:
            try:
                config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
                _, context = config.list_kube_config_contexts(config_file=kubeconfig)
                kubeconfig_namespace = (context or {}).get("context", {}).get("namespace", "")
                where = "kubeconfig"
            except (config.ConfigException, OSError) as exc:
                raise Unavailable(f"the kubernetes orchestrator has no credentials: not in a pod, and no "
                                  f"usable kubeconfig ({exc})") from exc
        namespace = namespace_of(settings, kubeconfig_namespace=kubeconfig_namespace)
        log.info("kubernetes orchestrator scales deployment %s/%s at %s (%s)",
                 namespace, settings.kubernetes_deployment, configuration.host, where)
        return cls(client.ApiClient(configuration), namespace, settings.kubernetes_deployment)

    def current(self) -> int:
        try:
            scale = self._apps.read_namespaced_deployment_scale(
                self.deployment, self.namespace, _request_timeout=REQUEST_TIMEOUT_S)
        except (ApiException, urllib3.exceptions.HTTPError) as exc:
            raise self._error("read the scale of", exc) from exc
        return int((scale.spec.replicas if scale.spec else 0) or 0)

    def scale(self, count: int) -> None:
        try:
            self._apps.patch_namespaced_deployment_scale(
                self.deployment, self.namespace, {"spec": {"replicas": count}}, field_manager=FIELD_MANAGER,
                _content_type="application/merge-patch+json", _request_timeout=REQUEST_TIMEOUT_S)
        except (ApiException, urllib3.exceptions.HTTPError) as exc:
            raise self._error(f"scale to {count}", exc) from exc

    def close(self) -> None:
        self._client.close()

    def _error(self, doing: str, exc: Exception) -> LaminaError:
        what = f"deployment {self.namespace}/{self.deployment}"
        status = getattr(exc, "status", None)
        if status == 404:
            return NotFound(f"cannot {doing} {what}: it does not exist")
        if status in (401, 403):
            return Unavailable(f"cannot {doing} {what}: the API server refused ({status}); the controller's "
                               f"service account needs get and patch on deployments/scale (docs/orchestrator.md)")
        if status == 409:
            return Conflict(f"cannot {doing} {what}: {getattr(exc, 'reason', exc)}")
        if status in (400, 422):
            return InvalidSpec(f"cannot {doing} {what}: {getattr(exc, 'reason', exc)}")
        detail = f"{status} {getattr(exc, 'reason', '')}".strip() if status else str(exc)
        return Unavailable(f"cannot {doing} {what}: {detail}")
