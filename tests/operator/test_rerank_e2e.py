"""A reranker EmbeddingService end to end on the local control plane: the operator's Deployment
runs a real worker (tests/cluster/kubelet.py) on a tiny random Qwen3 reranker with the real
Qwen3 tokenizer, and plain HTTP at the Service reranks a few documents: the results come best
first with the scores the runner computes, and the worker's metrics and the service's status
say task "rerank"."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from embedfleet_operator.crd import GROUP, PLURAL, VERSION
from embedfleet_worker.engine.options import EmbedOptions
from embedfleet_worker.engine.reranking import PairEncoder
from embedfleet_worker.model.loader import ModelSpec, load_encoder, load_model
from tests.cluster.controlplane import LocalCluster
from tests.cluster.kubelet import LoopbackKubelet
from tests.cluster.processes import ComponentDied, wait_until
from tests.cluster.service_proxy import ServiceProxy
from tests.modelzoo import make_tiny_qwen3_reranker
from tests.operator.operator_process import OperatorProcess, create_peering, install_crds
from tests.operator.test_faults import real_worker_service

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

QUERY = "Which city is the capital of France?"
DOCUMENTS = [
    "Bananas are rich in potassium.",
    "Paris is the capital and largest city of France.",
    "The Eiffel Tower is in Paris.",
    "Berlin is the capital of Germany.",
]


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return dict(json.loads(response.read()))


def test_a_reranker_service_reranks_through_the_service(
    cluster: LocalCluster, namespace: str, tmp_path: Path
) -> None:
    model = make_tiny_qwen3_reranker(tmp_path / "reranker")
    install_crds(cluster)
    create_peering(cluster, namespace)
    api = cluster.api_client()
    custom = kubernetes.client.CustomObjectsApi(api)
    operator = OperatorProcess(
        cluster, namespace, tmp_path / "operator.log",
        "--resync-seconds", "5", "--autoscale-seconds", "2", "--scrape-timeout-seconds", "1",
    )  # fmt: skip
    kubelet = LoopbackKubelet(api, namespace, tmp_path / "pods")
    body = real_worker_service("reranker", model={"name": str(model), "task": "rerank"})
    try:
        with kubelet:
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

            def ready() -> bool:
                if failed := kubelet.failed_loads():
                    raise ComponentDied(f"a worker could not load its model: {failed[0]}")
                return any(p.ready for p in kubelet.running())

            wait_until(ready, 180, "the reranker worker ready")
            with ServiceProxy(api, namespace, "reranker") as proxy:
                answer = _post(f"{proxy.url}/v1/rerank", {
                    "query": QUERY, "documents": DOCUMENTS, "return_documents": True,
                })  # fmt: skip
            worker = next(p for p in kubelet.running() if p.ready)
            with urllib.request.urlopen(f"{worker.base_url}/metrics", timeout=10) as response:
                metrics = response.read().decode()

            def served() -> str | None:
                body = custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, "reranker"
                )
                return ((body.get("status") or {}).get("metrics") or {}).get("task")

            wait_until(lambda: served() == "rerank", 120, "status.metrics.task rerank")
    finally:
        assert operator.stop() == 0
    assert not kubelet.errors, kubelet.errors
    print("reranked:")
    for result in answer["results"]:
        print(f"  {result['relevance_score']:.4f}  {result['document']['text']}")
    spec = ModelSpec(model=str(model), device="cpu")
    sequences = PairEncoder(load_encoder(spec).encoder).encode(QUERY, DOCUMENTS, EmbedOptions())
    truth = load_model(spec, with_encoder=False).runner.embed(sequences)[:, 0].tolist()
    assert [r["index"] for r in answer["results"]] == sorted(range(4), key=lambda i: -truth[i])
    for result in answer["results"]:
        assert abs(result["relevance_score"] - truth[result["index"]]) <= 1e-4
    assert 'task="rerank"' in metrics
