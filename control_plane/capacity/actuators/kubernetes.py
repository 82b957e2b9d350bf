"""The ``kubernetes`` actuator: sets the agent Deployment's replicas (scale subresource)."""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import orjson

from control_plane.capacity.actuators.delivery import Delivery, retryable
from control_plane.db.engine import Database
from control_plane.settings import Settings, SettingsError

if TYPE_CHECKING:
    from control_plane.capacity.actuators import ScaleAction

log = logging.getLogger("krako.autoscaler")

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubernetesActuator(Delivery):
    """Sets ``spec.replicas`` of the agent Deployment through its scale subresource::

        PATCH {api}/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale
        Content-Type: application/merge-patch+json
        {"spec": {"replicas": <to>}}

    with the pod's ServiceAccount token (re-read at every call: bound tokens rotate). The
    Role in ``deploy/k8s/rbac.yaml`` grants exactly this. Kubernetes picks the pods to remove;
    each gets SIGTERM, stops polling and finishes or hands back what it holds within its
    grace period, so a scale-down loses no unit. A 403 means the RBAC is missing.
    """

    name = "kubernetes"

    def __init__(
        self,
        *,
        deployment: str,
        namespace: str,
        api_url: str,
        token_path: Path = SA_DIR / "token",
        ca_path: Path | None = SA_DIR / "ca.crt",
        timeout_s: float = 5.0,
        retries: int = 4,
        backoff_s: float = 0.5,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(retries=retries, backoff_s=backoff_s)
        self.deployment = deployment
        self.namespace = namespace
        self.token_path = token_path
        self.url = (
            f"{api_url.rstrip('/')}/apis/apps/v1/namespaces/{namespace}"
            f"/deployments/{deployment}/scale"
        )
        verify: ssl.SSLContext | bool = True
        if transport is None and ca_path is not None and ca_path.exists():
            verify = ssl.create_default_context(cafile=str(ca_path))
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout_s), transport=transport, verify=verify
        )

    def _close_client(self) -> None:
        self._client.close()

    def _attempt(self, action: ScaleAction) -> str:
        try:
            token = self.token_path.read_text().strip()
        except OSError as exc:
            log.error("kubernetes: no ServiceAccount token at %s: %s", self.token_path, exc)
            return "fail"
        try:
            r = self._client.patch(
                self.url,
                content=orjson.dumps({"spec": {"replicas": action.to_nodes}}),
                headers={
                    "Authorization": f"Bearer {token}",
                    "Content-Type": "application/merge-patch+json",
                    "User-Agent": "krako-autoscaler",
                },
            )
        except httpx.HTTPError as exc:
            log.warning("kubernetes: scaling %s failed: %s", self.deployment, exc)
            return "retry"
        if r.is_success:
            return "ok"
        hint = " (is deploy/k8s/rbac.yaml applied?)" if r.status_code in (401, 403) else ""
        log.warning(
            "kubernetes: PATCH %s answered %d%s: %s",
            self.url,
            r.status_code,
            hint,
            r.text[:300],
        )
        return "retry" if retryable(r.status_code) else "fail"


def from_settings(settings: Settings, db: Database) -> KubernetesActuator:
    """``KRAKO_AUTOSCALER_ACTUATOR=kubernetes``: in a pod it finds its namespace and the API
    server itself; outside one it needs both. Attempts are timed and retried like the
    webhook's (``KRAKO_AUTOSCALER_WEBHOOK_TIMEOUT_S`` / ``_RETRIES`` / ``_BACKOFF_S``)."""
    kube, delivery = settings.autoscaler.kubernetes, settings.autoscaler.webhook
    return KubernetesActuator(
        deployment=kube.deployment,
        namespace=kube.namespace or _sa_namespace(),
        api_url=kube.api_url or _in_cluster_api_url(),
        timeout_s=delivery.timeout_s,
        retries=delivery.retries,
        backoff_s=delivery.backoff_s,
    )


def _sa_namespace() -> str:
    try:
        return (SA_DIR / "namespace").read_text().strip()
    except OSError:
        raise SettingsError(
            "KRAKO_AUTOSCALER_ACTUATOR=kubernetes outside a pod needs "
            "KRAKO_AUTOSCALER_K8S_NAMESPACE (and KRAKO_AUTOSCALER_K8S_API_URL)"
        ) from None


def _in_cluster_api_url() -> str:
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise SettingsError(
            "KRAKO_AUTOSCALER_ACTUATOR=kubernetes outside a pod needs KRAKO_AUTOSCALER_K8S_API_URL"
        )
    if ":" in host:  # IPv6
        host = f"[{host}]"
    return f"https://{host}:{port}"
