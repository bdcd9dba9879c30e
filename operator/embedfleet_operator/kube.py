"""Kubernetes API I/O for the operator (kubernetes_asyncio): server-side apply of owned
objects, reads, replica writes and status patches. No decisions live here."""

from __future__ import annotations

from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from embedfleet_operator.crd import GROUP, PLURAL, VERSION

FIELD_MANAGER = "embedfleet"
# Replicas get their own manager so template applies never fight the scaler over them.
REPLICAS_MANAGER = "embedfleet-replicas"
_APPLY = "application/apply-patch+yaml"

Manifest = dict[str, Any]


class Kube:
    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)
        self.policy = client.PolicyV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.discovery = client.DiscoveryV1Api(api)

    async def apply(self, manifest: Manifest) -> None:
        """Server-side apply with force: our manager owns exactly the fields we set."""
        meta = manifest["metadata"]
        name, namespace = meta["name"], meta["namespace"]
        options: dict[str, Any] = {
            "field_manager": FIELD_MANAGER,
            "force": True,
            "_content_type": _APPLY,
        }
        kind = manifest["kind"]
        if kind == "Deployment":
            await self.apps.patch_namespaced_deployment(name, namespace, manifest, **options)
        elif kind == "Service":
            await self.core.patch_namespaced_service(name, namespace, manifest, **options)
        elif kind == "PodDisruptionBudget":
            await self.policy.patch_namespaced_pod_disruption_budget(
                name, namespace, manifest, **options
            )
        else:
            raise ValueError(f"unexpected kind {kind}")

    async def delete_pdb(self, namespace: str, name: str) -> None:
        try:
            await self.policy.delete_namespaced_pod_disruption_budget(name, namespace)
        except ApiException as error:
            if error.status != 404:
                raise

    async def read_deployment(self, namespace: str, name: str) -> Manifest | None:
        try:
            deployment = await self.apps.read_namespaced_deployment(name, namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        result: Manifest = self.api.sanitize_for_serialization(deployment)
        return result

    async def list_pods(self, namespace: str, selector: str) -> list[Manifest]:
        pods = await self.core.list_namespaced_pod(namespace, label_selector=selector)
        return [self.api.sanitize_for_serialization(p) for p in pods.items]

    async def read_service(self, namespace: str, name: str) -> Manifest | None:
        try:
            result: Manifest = await self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return result

    async def patch_status(self, namespace: str, name: str, status: Manifest) -> None:
        await self.custom.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            {"status": status},
            _content_type="application/merge-patch+json",  # type: ignore[call-arg]
        )

    async def scale(self, namespace: str, name: str, replicas: int) -> None:
        """Through the scale subresource, under the replicas manager (as an HPA would)."""
        body = {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": replicas},
        }
        options: dict[str, Any] = {
            "field_manager": REPLICAS_MANAGER,
            "force": True,
            "_content_type": _APPLY,
        }
        await self.apps.patch_namespaced_deployment_scale(name, namespace, body, **options)

    async def list_endpoint_slices(self, namespace: str, service: str) -> list[Manifest]:
        slices = await self.discovery.list_namespaced_endpoint_slice(
            namespace, label_selector=f"kubernetes.io/service-name={service}"
        )
        return [self.api.sanitize_for_serialization(s) for s in slices.items]
