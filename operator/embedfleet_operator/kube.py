"""Kubernetes API writes for the operator (kubernetes_asyncio): server-side apply of owned
objects, replica writes through the scale subresource, and each writer's part of status. No
decisions live here, and no reads: those come from the watch-fed caches (cache.py).

Answers are not decoded into kubernetes_asyncio's models (`_preload_content=False`): the
operator does not use them, and decoding a Deployment costs milliseconds of CPU."""

from __future__ import annotations

from typing import Any, Protocol

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from embedfleet_operator.crd import GROUP, KIND, PLURAL, VERSION
from embedfleet_operator.resources import FIELD_MANAGER, REPLICAS_MANAGER

_APPLY = "application/apply-patch+yaml"

Manifest = dict[str, Any]


class KubeWrites(Protocol):
    """The writes the reconciler and the autoscaler make (a fake stands in for it in tests)."""

    async def apply(self, manifest: Manifest) -> None: ...

    async def delete(self, kind: str, namespace: str, name: str) -> None: ...

    async def scale(self, namespace: str, name: str, replicas: int) -> None: ...

    async def apply_status(
        self, namespace: str, name: str, status: Manifest, *, manager: str
    ) -> None: ...


async def _done(response: Any) -> None:
    """Reads an undecoded answer to its end (which hands its connection back to the pool) and
    raises ApiException for an error, as a decoded call would: the client checks the status
    only when it decodes."""
    data = await response.read()
    if not 200 <= response.status <= 299:
        error = ApiException(status=response.status, reason=response.reason)
        error.body = data.decode("utf-8", "replace")
        error.headers = response.headers
        raise error


class Kube:
    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)
        self.policy = client.PolicyV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.batch = client.BatchV1Api(api)

    async def apply(self, manifest: Manifest) -> None:
        """Server-side apply with force: our manager owns exactly the fields we set."""
        meta = manifest["metadata"]
        name, namespace = meta["name"], meta["namespace"]
        options: dict[str, Any] = {
            "field_manager": FIELD_MANAGER,
            "force": True,
            "_content_type": _APPLY,
            "_preload_content": False,
        }
        kind = manifest["kind"]
        patch: Any
        if kind == "Deployment":
            patch = self.apps.patch_namespaced_deployment
        elif kind == "Service":
            patch = self.core.patch_namespaced_service
        elif kind == "PodDisruptionBudget":
            patch = self.policy.patch_namespaced_pod_disruption_budget
        elif kind == "ServiceAccount":  # the activator's (build_activator_account)
            patch = self.core.patch_namespaced_service_account
        elif kind == "Job":  # a model's prefetch (prefetch.py)
            patch = self.batch.patch_namespaced_job
        else:
            raise ValueError(f"unexpected kind {kind}")
        await _done(await patch(name, namespace, manifest, **options))

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        """Deletes an owned object the spec no longer wants; one already gone is fine."""
        remove: Any = {
            "PodDisruptionBudget": self.policy.delete_namespaced_pod_disruption_budget,
            "Deployment": self.apps.delete_namespaced_deployment,
            "Service": self.core.delete_namespaced_service,
            "Job": self.batch.delete_namespaced_job,
        }[kind]
        # A Job's pods go with it (the API's default for Jobs orphans them).
        options = {"propagation_policy": "Background"} if kind == "Job" else {}
        try:
            await _done(await remove(name, namespace, _preload_content=False, **options))
        except ApiException as error:
            if error.status != 404:
                raise

    async def scale(self, namespace: str, name: str, replicas: int) -> None:
        """Through the scale subresource, under the replicas manager (as an HPA would)."""
        body = {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": replicas},
        }
        options: dict[str, Any] = {
            "field_manager": REPLICAS_MANAGER, "force": True,
            "_content_type": _APPLY, "_preload_content": False,
        }  # fmt: skip
        response = await self.apps.patch_namespaced_deployment_scale(
            name, namespace, body, **options
        )
        await _done(response)

    async def apply_status(
        self, namespace: str, name: str, status: Manifest, *, manager: str
    ) -> None:
        """Server-side apply of one writer's part of status: conditions are a map keyed by
        type in the CRD, so the reconciler's and the autoscaler's conditions merge entry by
        entry, and neither overwrites the other's from a stale copy."""
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "metadata": {"name": name, "namespace": namespace},
            "status": status,
        }
        options: dict[str, Any] = {
            "field_manager": manager, "force": True,
            "_content_type": _APPLY, "_preload_content": False,
        }  # fmt: skip
        response = await self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, body, **options
        )
        await _done(response)
