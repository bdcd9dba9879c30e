"""Pure: a model fetched once into the cache PVC by a Job, before workers start. The Job's
builder, what its state is (read off the Job and its pods), and what that means for the workers
(held back until it succeeded) and for status (`status.prefetch`, conditions Prefetching /
PrefetchFailed). The reconciler applies it; the token is a secretKeyRef throughout."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from embedfleet_operator.crd import GROUP
from embedfleet_operator.hub import hub_environment, prefetches
from embedfleet_operator.resources import (
    MANAGED_BY_LABELS,
    MODEL_CACHE_PATH,
    owner_reference,
    worker_placement,
    worker_pod_security,
)
from embedfleet_operator.spec import EmbeddingService
from embedfleet_operator.status import Problem

Manifest = dict[str, Any]

PREFETCH_LABEL = f"{GROUP}/prefetch"  # on the Job and its pods: the service's name
CONTAINER = "prefetch"
TERMINATION_LOG = "/dev/termination-log"
# The worker's exit code for an answer no retry changes (401/403: the token; 404: the repo or
# revision): the Job fails at once through its podFailurePolicy instead of backing off.
REFUSED_EXIT_CODE = 3
BACKOFF_LIMIT = 3  # other failures (a network error, a full volume) are retried this often


def job_name(service: EmbeddingService) -> str:
    """One Job per model and revision: a new revision is a new Job (a DNS label, at most 63
    characters, as its pods' job-name label must be)."""
    model = service.spec.model
    digest = hashlib.sha256(f"{model.name}@{model.revision or ''}".encode()).hexdigest()[:8]
    return f"{service.name[:44].rstrip('-')}-prefetch-{digest}"


def prefetch_labels(name: str) -> dict[str, str]:
    # Never the workers' selector label: a prefetch pod is no endpoint of the Service.
    return {
        "app.kubernetes.io/name": "embedfleet-prefetch",
        "app.kubernetes.io/instance": name,
        **MANAGED_BY_LABELS,
        PREFETCH_LABEL: name,
    }


def build_prefetch_job(service: EmbeddingService, *, worker_image: str) -> Manifest:
    """`embedfleet-worker prefetch` in the worker image, writing into the cache PVC as the
    workers' user, with no Kubernetes API token and the hub token only by reference."""
    spec, name = service.spec, service.name
    model = spec.model
    command = ["embedfleet-worker", "prefetch", "--model", model.name]
    if model.revision is not None:
        command += ["--revision", model.revision]
    command += ["--cache-dir", MODEL_CACHE_PATH]
    env = [
        {"name": "HF_HOME", "value": MODEL_CACHE_PATH},
        {"name": "HF_HUB_OFFLINE", "value": "0"},  # this pod is the one that goes online
        {"name": "EMBEDFLEET_TERMINATION_LOG", "value": TERMINATION_LOG},
        *hub_environment(spec, downloads=True),
    ]
    container: Manifest = {
        "name": CONTAINER,
        "image": spec.image or worker_image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": command,
        "env": env,
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
        "volumeMounts": [
            {"name": "models", "mountPath": MODEL_CACHE_PATH},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        "terminationMessagePath": TERMINATION_LOG,
        # A crash before the summary is written still says why (the log's tail).
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    assert model.cache.pvc is not None  # prefetches(spec): the CRD requires it
    pod_spec: Manifest = {
        "containers": [container],
        "restartPolicy": "Never",  # podFailurePolicy needs it; the Job makes a new pod
        "automountServiceAccountToken": False,
        "volumes": [
            {"name": "models", "persistentVolumeClaim": {"claimName": model.cache.pvc}},
            {"name": "tmp", "emptyDir": {}},
        ],
        "securityContext": worker_pod_security(),
        **worker_placement(spec, affinity=False),
    }
    labels = prefetch_labels(name)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(service),
            "namespace": service.namespace,
            "labels": labels,
            "ownerReferences": [owner_reference(service)],
        },
        "spec": {
            "backoffLimit": BACKOFF_LIMIT,
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": CONTAINER,
                            "operator": "In",
                            "values": [REFUSED_EXIT_CODE],
                        },
                    },
                    # A node drained or a pod preempted is no failure of the download.
                    {
                        "action": "Ignore",
                        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
                    },
                ]
            },
            "template": {
                "metadata": {"labels": labels, "annotations": dict(spec.pod_annotations)},
                "spec": pod_spec,
            },
        },
    }


@dataclass(frozen=True)
class PrefetchState:
    job: str
    phase: str  # Pending | Running | Succeeded | Failed
    message: str
    start_time: str | None = None
    completion_time: str | None = None

    @property
    def holds_workers(self) -> bool:
        return self.phase != "Succeeded"


def _condition(job: Manifest, kind: str) -> Manifest | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind and condition.get("status") == "True":
            return dict(condition)
    return None


def _last_exit(pods: Sequence[Manifest]) -> tuple[str, str] | None:
    """The newest terminated prefetch container's (pod name, message): its summary line, or
    the hub's refusal."""
    ended = []
    for pod in pods:
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (status.get("state") or {}).get("terminated")
            if terminated:
                when = str(terminated.get("finishedAt") or "")
                message = (terminated.get("message") or "").strip()
                detail = message or f"{terminated.get('reason', 'Error')}, exit code " + str(
                    terminated.get("exitCode", "?")
                )
                ended.append((when, pod["metadata"]["name"], detail))
    if not ended:
        return None
    _when, pod, detail = max(ended)
    return pod, detail[-400:]


def prefetch_state(
    service: EmbeddingService, job: Manifest | None, pods: Sequence[Manifest]
) -> PrefetchState:
    """The prefetch of the current model and revision, from its Job (None: not created yet)
    and the Job's pods."""
    name = job_name(service)
    if job is None:
        return PrefetchState(name, "Pending", "the prefetch Job is being created")
    status = job.get("status") or {}
    start, done = status.get("startTime"), status.get("completionTime")
    mine = [p for p in pods if (p.get("metadata") or {}).get("labels", {}).get("job-name") == name]
    last = _last_exit(mine)
    if _condition(job, "Complete") is not None:
        summary = last[1] if last else "the model is in the cache"
        return PrefetchState(name, "Succeeded", summary, start, done)
    failed = _condition(job, "Failed")
    if failed is not None:
        why = last[1] if last else failed.get("message") or failed.get("reason") or "failed"
        where = f"pod {last[0]}: " if last else ""
        ended = failed.get("lastTransitionTime")
        return PrefetchState(name, "Failed", f"job {name} failed: {where}{why}", start, ended)
    if int(status.get("active") or 0) > 0:
        model = service.spec.model
        target = model.name + (f"@{model.revision}" if model.revision else "")
        tries = int(status.get("failed") or 0)
        again = f" (attempt {tries + 1}; last: {last[1]})" if tries and last else ""
        return PrefetchState(name, "Running", f"fetching {target} into the cache{again}", start)
    return PrefetchState(name, "Pending", f"job {name} is waiting for its pod", start)


def prefetch_status(service: EmbeddingService, state: PrefetchState) -> Manifest:
    """status.prefetch (never the token: the spec holds only the Secret's name)."""
    model = service.spec.model
    values = {
        "job": state.job,
        "model": model.name,
        "revision": model.revision,
        "phase": state.phase,
        "message": state.message,
        "startTime": state.start_time,
        "completionTime": state.completion_time,
    }
    return {key: value for key, value in values.items() if value is not None}


def hold_problem(state: PrefetchState) -> Problem | None:
    """Why the workers are held back (None: they are not)."""
    if not state.holds_workers:
        return None
    reason = "PrefetchFailed" if state.phase == "Failed" else "Prefetching"
    return Problem(reason, state.message)


def wanted_prefetch(service: EmbeddingService) -> bool:
    return prefetches(service.spec)
