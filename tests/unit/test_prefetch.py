"""Models fetched once (operator side, pure): the prefetch Job's builder, what a Job and its
pods say about the fetch, the plan's gating of the workers on it, and status; then the
reconciler over the fake cache through a Job's life (pending, failed, succeeded)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from embedfleet_operator.prefetch import (
    PREFETCH_LABEL,
    REFUSED_EXIT_CODE,
    build_prefetch_job,
    job_name,
    prefetch_state,
)
from embedfleet_operator.reconcile_plan import Live, plan_objects
from embedfleet_operator.resources import SELECTOR_LABEL, build_deployment
from embedfleet_operator.spec import parse_service
from tests.unit.operator_fakes import body
from tests.unit.test_reconciler import World, conditions

Manifest = dict[str, Any]
TOKEN_SECRET = {"name": "hf-token", "key": "token"}
GATED: Manifest = {
    "model": {
        "name": "acme/gated-embedder",
        "revision": "v2",
        "prefetch": True,
        "cache": {"pvc": "models"},
        "hubTokenSecret": TOKEN_SECRET,
        "hubEndpoint": "http://127.0.0.1:9999",
    },
    "podAnnotations": {"example.com/team": "search"},
}


def service(spec: Manifest | None = None, **meta: Any) -> Any:
    return parse_service(body(spec if spec is not None else GATED, **meta))


def with_model(**model: Any) -> Manifest:
    return {**GATED, "model": {**GATED["model"], **model}}


def env_of(container: Manifest) -> dict[str, Manifest]:
    return {variable["name"]: variable for variable in container["env"]}


def test_the_job_is_named_per_model_and_revision_within_a_dns_label() -> None:
    name = job_name(service())
    assert name.startswith("emb-prefetch-")
    assert len(name) <= 63
    assert job_name(service()) == name  # stable across passes
    assert job_name(service(with_model(revision="v3"))) != name  # a new revision, a new Job
    assert job_name(service(with_model(name="acme/other"))) != name
    long = job_name(service(name="a" * 63))
    assert len(long) <= 63
    assert long[0] == "a"


def test_the_job_runs_prefetch_as_a_non_root_pod_with_the_token_only_by_reference() -> None:
    job = build_prefetch_job(service(), worker_image="registry.local/worker:1")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == [
        "embedfleet-worker", "prefetch", "--model", "acme/gated-embedder", "--revision", "v2",
        "--cache-dir", "/models",
    ]  # fmt: skip
    env = env_of(container)
    assert env["HF_TOKEN"] == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": TOKEN_SECRET}}
    assert env["HF_ENDPOINT"]["value"] == "http://127.0.0.1:9999"
    assert env["HF_HUB_OFFLINE"]["value"] == "0"
    assert {"name": "models", "persistentVolumeClaim": {"claimName": "models"}} in pod["volumes"]
    assert {"name": "models", "mountPath": "/models"} in container["volumeMounts"]
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"]
    assert container["securityContext"]["runAsNonRoot"]
    assert container["terminationMessagePath"] == env["EMBEDFLEET_TERMINATION_LOG"]["value"]
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "FailJob"
    assert rules[0]["onExitCodes"]["values"] == [REFUSED_EXIT_CODE]
    assert 0 < job["spec"]["backoffLimit"] <= 3
    owner = job["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("EmbeddingService", "emb", True)
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert labels[PREFETCH_LABEL] == "emb"
    assert SELECTOR_LABEL not in labels  # a prefetch pod is never one of the Service's endpoints
    assert job["spec"]["template"]["metadata"]["annotations"] == GATED["podAnnotations"]


def test_no_revision_no_token_no_endpoint_means_none_in_the_job() -> None:
    plain = {"model": {"name": "acme/open", "prefetch": True, "cache": {"pvc": "models"}}}
    (container,) = build_prefetch_job(service(plain), worker_image="w")["spec"]["template"]["spec"][
        "containers"
    ]
    assert "--revision" not in container["command"]
    assert not {"HF_TOKEN", "HF_ENDPOINT"} & set(env_of(container))


@pytest.mark.parametrize(
    ("spec", "offline", "token", "endpoint"),
    [
        (GATED, True, False, False),  # prefetched: offline from the cache, no token in the pod
        (with_model(prefetch=False), False, True, True),  # workers download, token by reference
        ({"model": {"name": "acme/open"}}, False, False, False),
        # prefetch of a local folder (a body that skipped admission): nothing to fetch
        (with_model(name="/opt/models/m"), False, True, True),
        # ...or without a PVC: each worker downloads for itself, as without prefetch
        (with_model(cache={}), False, True, True),
    ],
)
def test_workers_of_a_prefetched_model_load_offline_and_others_get_the_hub_settings(
    spec: Manifest, offline: bool, token: bool, endpoint: bool
) -> None:
    deployment = build_deployment(service(spec), worker_image="w")
    env = env_of(deployment["spec"]["template"]["spec"]["containers"][0])
    assert ("EMBEDFLEET_OFFLINE" in env, "HF_TOKEN" in env, "HF_ENDPOINT" in env) == (
        offline, token, endpoint,
    )  # fmt: skip
    if token:
        assert env["HF_TOKEN"] == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": TOKEN_SECRET}}


def workload(applied: Any) -> list[str]:
    """The kinds applied that run pods (the Services and PDB are there all along)."""
    return [m["kind"] for m in applied if m["kind"] in ("Job", "Deployment")]


def job(**status: Any) -> Manifest:
    return {"metadata": {"name": job_name(service())}, "status": status}


def pod(message: str, code: int, finished: str = "2025-01-01T00:00:10Z") -> Manifest:
    terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                  "message": message, "finishedAt": finished}  # fmt: skip
    return {
        "metadata": {"name": f"p{finished[-3:-1]}", "labels": {"job-name": job_name(service())}},
        "status": {"containerStatuses": [{"state": {"terminated": terminated}}]},
    }


COMPLETE = {"type": "Complete", "status": "True"}
FAILED = {"type": "Failed", "status": "True", "reason": "PodFailurePolicy",
          "message": "Container prefetch for pod ml/p failed with exit code 3",
          "lastTransitionTime": "2025-01-01T00:00:11Z"}  # fmt: skip
REFUSAL = "the hub refused acme/gated-embedder: HTTP 401 Invalid credentials"


@pytest.mark.parametrize(
    ("live_job", "pods", "phase", "says"),
    [
        (None, [], "Pending", "being created"),
        (job(), [], "Pending", "waiting for its pod"),
        (job(active=1, startTime="t0"), [], "Running", "fetching acme/gated-embedder@v2"),
        (job(active=1, failed=1), [pod("connection reset", 1)], "Running", "connection reset"),
        (job(conditions=[COMPLETE], completionTime="t9"), [pod("prefetched 7 files", 0)],
         "Succeeded", "prefetched 7 files"),
        (job(conditions=[FAILED]), [pod(REFUSAL, REFUSED_EXIT_CODE)], "Failed", REFUSAL),
        # the pods' watch lags the Job's: the controller's own words meanwhile
        (job(conditions=[FAILED]), [], "Failed", "failed with exit code 3"),
        # the newest attempt's message wins
        (job(conditions=[FAILED]), [pod("old", 1, "2025-01-01T00:00:01Z"), pod(REFUSAL, 3)],
         "Failed", REFUSAL),
    ],
)  # fmt: skip
def test_the_state_of_a_prefetch_is_read_off_its_job_and_pods(
    live_job: Manifest | None, pods: list[Manifest], phase: str, says: str
) -> None:
    state = prefetch_state(service(), live_job, pods)
    assert state.phase == phase
    assert says in state.message
    assert state.holds_workers == (phase != "Succeeded")


@pytest.mark.parametrize(
    ("jobs", "applies", "deletes"),
    [
        ((), ["Job"], []),  # first pass: the Job, no workers yet
        ((job(active=1),), [], []),  # running: still no workers
        ((job(conditions=[FAILED]),), [], []),  # failed: no workers to crash-loop
        ((job(conditions=[COMPLETE]),), ["Deployment"], []),
        # a new revision's Job: the old Job goes only once the new one has succeeded
        ((job(conditions=[COMPLETE]), {"metadata": {"name": "emb-prefetch-old"}}),
         ["Deployment"], [("Job", "emb-prefetch-old")]),
        (({"metadata": {"name": "emb-prefetch-old"}},), ["Job"], []),
    ],
)  # fmt: skip
def test_workers_wait_for_the_prefetch_of_their_model_and_revision(
    jobs: tuple[Manifest, ...], applies: list[str], deletes: list[tuple[str, str]]
) -> None:
    plan = plan_objects(service(), Live(prefetch_jobs=jobs), worker_image="w",
                        activator_image="a", full=True)  # fmt: skip
    assert workload(plan.apply) == applies
    assert list(plan.delete) == deletes


def test_prefetch_turned_off_removes_its_jobs_and_starts_workers() -> None:
    old = {"metadata": {"name": job_name(service())}}
    plan = plan_objects(service(with_model(prefetch=False)), Live(prefetch_jobs=(old,)),
                        worker_image="w", activator_image="a", full=True)  # fmt: skip
    assert workload(plan.apply) == ["Deployment"]
    assert list(plan.delete) == [("Job", job_name(service()))]


def test_a_revision_change_keeps_the_running_workers_until_the_new_revision_is_fetched() -> None:
    live = Live(deployment=build_deployment(service(with_model(revision="v1")), worker_image="w"))
    plan = plan_objects(service(), live, worker_image="w", activator_image="a", full=True)
    assert workload(plan.apply) == ["Job"]  # old workers untouched


def test_the_reconciler_holds_workers_reports_the_job_and_never_writes_the_token() -> None:
    world = World()
    resource = body(GATED)
    world.run(resource)
    assert workload(world.kube.named("apply")) == ["Job"]
    status = world.status()
    assert conditions(status)["Ready"] == ("False", "Prefetching")
    assert status["prefetch"]["phase"] == "Pending"
    assert status["prefetch"]["job"] == job_name(service())
    resource["status"] = status

    # The hub refused: PrefetchFailed, Degraded, a Warning, and still no Deployment.
    live = world.cache.objects[("Job", "ml", job_name(service()))]
    live["status"] = {"conditions": [FAILED]}
    world.cache.prefetch_pod_list[("ml", "emb")] = [pod(REFUSAL, REFUSED_EXIT_CODE)]
    world.reset()
    world.run(resource)
    status = world.status()
    assert conditions(status)["Ready"] == ("False", "PrefetchFailed")
    assert conditions(status)["Degraded"] == ("True", "PrefetchFailed")
    assert status["prefetch"]["phase"] == "Failed"
    assert REFUSAL in status["prefetch"]["message"]
    assert ("Warning", "PrefetchFailed") in [(e.type, e.reason) for _, e in world.events.posted]
    assert "Deployment" not in world.kinds_applied()
    assert not world.kube.named("scale")
    resource["status"] = status

    # Fixed and fetched (the Job re-created after a retry): the workers start, offline.
    live["status"] = {"conditions": [COMPLETE], "completionTime": "2025-01-01T00:01:00Z"}
    world.cache.prefetch_pod_list[("ml", "emb")] = [pod("prefetched 7 files, 1 bytes", 0)]
    world.reset()
    world.run(resource)
    assert workload(world.kube.named("apply")) == ["Deployment"]
    status = world.status()
    assert status["prefetch"]["phase"] == "Succeeded"
    assert conditions(status)["Ready"] == ("False", "WorkersStarting")
    token_variables = [
        variable
        for manifest in world.cache.objects.values()
        if manifest["kind"] in ("Job", "Deployment")
        for container in manifest["spec"]["template"]["spec"]["containers"]
        for variable in container["env"]
        if variable["name"] == "HF_TOKEN"
    ]
    assert token_variables  # the Job's (the workers load offline and have none)
    assert all(set(v) == {"name", "valueFrom"} for v in token_variables)
    assert "HF_TOKEN" not in json.dumps(world.kube.named("apply_status"))
