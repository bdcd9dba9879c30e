"""Latency through the Service with the activation path present, against a service without one.

On the local control plane (tests/cluster), the real operator and real all-MiniLM-L6-v2 CPU
workers run two EmbeddingServices with the same worker settings: `direct` (minReplicas 1, no
activator) and `zero` (minReplicas 0). `zero` is first taken through a real scale to zero and
back: it goes to zero when idle, its Service points at the activator, one request wakes it, and
the Service points back at its worker. Its idle timeout is then raised so it stays up while it
is measured; its activator Deployment stays, ready. The script checks (and prints) that `zero`'s
Service then selects its worker pod only, and afterwards that no measured request reached the
activator (its forwarded count is still the one wake-up request).

Both are then measured through their Service address (tests/cluster/service_proxy.py, the
kube-proxy stand-in, on the ClusterIP), interleaved in rounds (order alternating) so drift hits
both alike, with the official openai client (default keep-alive pool, max_retries=0):
sequential single-text requests, then a concurrent load. Noise: the spread of each service's
per-round figures (the same service measured again: an A/A comparison).

    .venv/bin/python -m bench.activation_path --json bench/results/2026-12-02-activation-path.json

About 3.5-4.5 minutes on this 2-core machine; `--rounds 2 --requests 40 --concurrent-requests 64`
checks the script in about 2.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes
import numpy as np
import openai

from embedfleet_operator.crd import GROUP, PLURAL, VERSION
from tests.cluster.controlplane import LocalCluster
from tests.cluster.kubelet import REAL_PROCESS_ANNOTATION, LoopbackKubelet
from tests.cluster.processes import ComponentDied, wait_until
from tests.cluster.service_proxy import ServiceProxy
from tests.modelzoo import minilm_dir
from tests.operator.operator_process import OperatorProcess, create_peering, install_crds

NAMESPACE = "bench"
DIRECT, ZERO = "direct", "zero"
MODEL = str(minilm_dir())


def manifest(name: str, min_replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "EmbeddingService",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": MODEL},
            "resources": {"gpus": 0, "cpu": "1", "memory": "2Gi"},
            "podAnnotations": {REAL_PROCESS_ANNOTATION: "true"},
            "autoscaling": {
                "minReplicas": min_replicas, "maxReplicas": 1,
                "targetRequestsPerSecondPerReplica": 1000,
                "idleTimeoutSeconds": 4, "scaleDownStabilizationSeconds": 6,
            },
        },
    }  # fmt: skip


def say(line: str) -> None:
    print(line, flush=True)


class Fleet:
    """Reads of the local cluster the setup waits on."""

    def __init__(self, cluster: LocalCluster, kubelet: LoopbackKubelet) -> None:
        api = cluster.api_client()
        self.kubelet = kubelet
        self.core = kubernetes.client.CoreV1Api(api)
        self.apps = kubernetes.client.AppsV1Api(api)
        self.custom = kubernetes.client.CustomObjectsApi(api)

    def ready(self, deployment: str) -> int:
        if failed := self.kubelet.failed_loads():
            raise ComponentDied(f"a worker could not load its model: {failed[0]}")
        found = self.apps.read_namespaced_deployment(deployment, NAMESPACE)
        return int(found.status.ready_replicas or 0)

    def status(self, name: str) -> dict[str, Any]:
        found = self.custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name)
        return dict(found.get("status") or {})

    def replicas(self, deployment: str) -> int:
        return int(self.apps.read_namespaced_deployment(deployment, NAMESPACE).spec.replicas or 0)

    def selector(self, service: str) -> dict[str, str]:
        return dict(self.core.read_namespaced_service(service, NAMESPACE).spec.selector)

    def pod_ips(self, label_selector: str) -> set[str]:
        pods = self.core.list_namespaced_pod(NAMESPACE, label_selector=label_selector).items
        return {p.status.pod_ip for p in pods if p.status.pod_ip}


def wake_from_zero(fleet: Fleet, zero: ServiceProxy) -> float:
    """Takes `zero` to zero and back with one request; its idle timeout is then raised so it
    stays up. The seconds that first request took."""
    wait_until(lambda: fleet.ready(f"{ZERO}-activator") == 1, 90, "the activator ready")
    try:
        wait_until(lambda: fleet.replicas(ZERO) == 0, 300, "zero's idle fleet at zero")
    except TimeoutError as error:
        raise TimeoutError(f"{error}; zero's status: {fleet.status(ZERO)}") from None
    wait_until(lambda: fleet.selector(ZERO) == {"embedfleet.dev/activator": ZERO}, 30,
               "zero's Service pointing at the activator")  # fmt: skip
    # As tests/operator/test_scale_from_zero.py: the last worker gone, not still draining.
    wait_until(lambda: not [p for p in fleet.kubelet.running()
                            if p.name.startswith(f"{ZERO}-") and "activator" not in p.name],
               60, "no worker process of zero's")  # fmt: skip
    with openai.OpenAI(base_url=f"{zero.url}/v1", api_key="unused", max_retries=0) as client:
        sent = time.monotonic()
        client.embeddings.create(model=MODEL, input="wake up")
        took = time.monotonic() - sent
    raised = {"spec": {"autoscaling": {"idleTimeoutSeconds": 86400}}}
    fleet.custom.patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, ZERO, raised)
    wait_until(lambda: fleet.selector(ZERO) == {"embedfleet.dev/service": ZERO}, 30,
               "zero's Service pointing back at its worker")  # fmt: skip
    return took


def check_no_extra_hop(fleet: Fleet, zero: ServiceProxy) -> dict[str, Any]:
    """zero's Service selects its worker pod only, and the activator is present and ready."""
    zero.refresh()
    workers = fleet.pod_ips(f"embedfleet.dev/service={ZERO}")
    activators = fleet.pod_ips(f"embedfleet.dev/activator={ZERO}")
    found = {
        "selector": zero.selector,
        "endpoints": [f"{host}:{port}" for host, port in zero.endpoints],
        "worker_pods": sorted(workers),
        "activator_pods": sorted(activators),
        "activator_ready_replicas": fleet.ready(f"{ZERO}-activator"),
    }
    say(f"zero's Service: selector {found['selector']}, endpoints {found['endpoints']}; worker "
        f"pods {found['worker_pods']}, activator pods {found['activator_pods']} (ready: "
        f"{found['activator_ready_replicas']})")  # fmt: skip
    assert zero.selector == {"embedfleet.dev/service": ZERO}, found
    assert len(workers) == 1, found
    assert {host for host, _ in zero.endpoints} == workers, found  # the worker only
    assert activators, found  # the activator is present...
    assert not activators & {host for host, _ in zero.endpoints}, found  # ...not in the path
    assert found["activator_ready_replicas"] == 1, found
    return found


def activator_forwarded(fleet: Fleet) -> float:
    [activator] = [p for p in fleet.kubelet.running() if p.name.startswith(f"{ZERO}-activator")]
    with urllib.request.urlopen(f"{activator.base_url}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    for line in text.splitlines():
        if line.startswith('embedfleet_activator_requests_total{outcome="forwarded"}'):
            return float(line.split()[-1])
    return 0.0


def sequential(client: openai.OpenAI, count: int) -> tuple[list[float], float]:
    latencies = []
    started = time.perf_counter()
    for index in range(count):
        sent = time.perf_counter()
        client.embeddings.create(model=MODEL, input=f"a short sentence number {index}")
        latencies.append(time.perf_counter() - sent)
    return latencies, count / (time.perf_counter() - started)


def concurrent(client: openai.OpenAI, count: int, threads: int) -> tuple[list[float], float]:
    latencies: list[float] = []
    lock = threading.Lock()
    left = [count]
    errors: list[BaseException] = []

    def loop() -> None:
        while True:
            with lock:
                if left[0] == 0:
                    return
                left[0] -= 1
                index = left[0]
            sent = time.perf_counter()
            try:
                client.embeddings.create(model=MODEL, input=f"a short sentence number {index}")
            except openai.OpenAIError as error:
                errors.append(error)
                return
            with lock:
                latencies.append(time.perf_counter() - sent)

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed: {errors[0]!r}")
    return latencies, count / elapsed


def summarize(rounds: list[tuple[list[float], float]]) -> dict[str, Any]:
    def ms(values: list[float], q: float) -> float:
        return round(float(np.percentile(values, q)) * 1000, 2)

    pooled = [x for latencies, _ in rounds for x in latencies]
    per_round = {
        "p50_ms": [ms(latencies, 50) for latencies, _ in rounds],
        "p99_ms": [ms(latencies, 99) for latencies, _ in rounds],
        "rps": [round(rps, 1) for _, rps in rounds],
    }
    return {
        "requests": len(pooled),
        "p50_ms": ms(pooled, 50),
        "p99_ms": ms(pooled, 99),
        "rps": round(float(np.median(per_round["rps"])), 1),
        "per_round": per_round,
        # The same service measured again, round after round: what counts as noise.
        "spread": {k: round(max(v) - min(v), 2) for k, v in per_round.items()},
    }


def measure(urls: dict[str, str], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    clients = {
        name: openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        for name, url in urls.items()
    }
    for client in clients.values():
        sequential(client, 30)  # warm-up: connections, tokenizer and model caches
    modes: dict[str, Callable[[openai.OpenAI], tuple[list[float], float]]] = {
        "sequential": lambda c: sequential(c, args.requests),
        f"concurrent {args.concurrency}": lambda c: concurrent(
            c, args.concurrent_requests, args.concurrency
        ),
    }
    raw: dict[str, dict[str, list[tuple[list[float], float]]]] = {
        mode: {name: [] for name in urls} for mode in modes
    }
    for index in range(args.rounds):
        order = list(urls) if index % 2 == 0 else list(reversed(urls))
        for mode, run in modes.items():
            for name in order:
                raw[mode][name].append(run(clients[name]))
        say(f"round {index + 1}/{args.rounds} done ({' then '.join(order)})")
    for client in clients.values():
        client.close()
    return {mode: {name: summarize(r) for name, r in by.items()} for mode, by in raw.items()}


def verdicts(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """zero against direct per figure: the pooled difference; each round's difference (the
    two measured back to back, so drift over the run cancels); and the noise, the larger of
    the two services' own round-to-round spreads (the A/A comparison). Within noise when the
    pooled difference is no larger than that noise and the rounds' differences differ in sign
    (or one is zero): no consistent direction."""
    found: dict[str, dict[str, Any]] = {}
    for mode, by in results.items():
        found[mode] = {}
        for figure in ("p50_ms", "p99_ms", "rps"):
            difference = by[ZERO][figure] - by[DIRECT][figure]
            noise = max(by[ZERO]["spread"][figure], by[DIRECT]["spread"][figure])
            rounds = zip(by[ZERO]["per_round"][figure], by[DIRECT]["per_round"][figure],
                         strict=True)  # fmt: skip
            paired = [round(z - d, 2) for z, d in rounds]
            mixed = min(paired) <= 0 <= max(paired)
            found[mode][figure] = {
                "difference": round(difference, 2),
                "per_round": paired,
                "noise": noise,
                "within_noise": abs(difference) <= noise and mixed,
            }
    return found


def table(results: dict[str, dict[str, Any]], judged: dict[str, dict[str, Any]]) -> str:
    lines = [
        f"{'load':<14} {'service':<28} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8}   "
        "per-round p50 / p99 spread (A/A)",
    ]
    labels = {DIRECT: "direct (minReplicas 1)", ZERO: "zero (activator present)"}
    for mode, by in results.items():
        for name in (DIRECT, ZERO):
            r = by[name]
            lines.append(f"{mode:<14} {labels[name]:<28} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
                         f"{r['rps']:>8.1f}   {r['spread']['p50_ms']:.2f} / "
                         f"{r['spread']['p99_ms']:.2f} ms")  # fmt: skip
        v = judged[mode]
        lines.append(
            f"{'':<14} {'zero - direct':<28} {v['p50_ms']['difference']:>+8.2f} "
            f"{v['p99_ms']['difference']:>+8.2f} {v['rps']['difference']:>+8.1f}   within noise: "
            + ", ".join(f"{k} {'yes' if x['within_noise'] else 'NO'}" for k, x in v.items())
        )
        lines.append(f"{'':<14} {'  per round (p50, p99 ms)':<28} "
                     f"{v['p50_ms']['per_round']}, {v['p99_ms']['per_round']}")  # fmt: skip
    return "\n".join(lines)


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    cluster = LocalCluster(workdir / "cluster")
    cluster.start()
    try:
        api = cluster.api_client()
        kubernetes.client.CoreV1Api(api).create_namespace({"metadata": {"name": NAMESPACE}})
        install_crds(cluster)
        create_peering(cluster, NAMESPACE)
        operator = OperatorProcess(
            cluster, NAMESPACE, workdir / "operator.log", "--resync-seconds", "5",
            "--autoscale-seconds", "2", "--scrape-timeout-seconds", "1",
        )  # fmt: skip
        kubelet = LoopbackKubelet(api, NAMESPACE, workdir / "pods")
        try:
            with kubelet:
                return _measured(cluster, kubelet, args)
        finally:
            if operator.stop() != 0:
                say(f"the operator exited uncleanly; its log ends:\n{operator.log()[-4000:]}")
    finally:
        cluster.stop()


def _measured(
    cluster: LocalCluster, kubelet: LoopbackKubelet, args: argparse.Namespace
) -> dict[str, Any]:
    api = cluster.api_client()
    fleet = Fleet(cluster, kubelet)
    for name, low in ((DIRECT, 1), (ZERO, 0)):
        fleet.custom.create_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, PLURAL, manifest(name, low)
        )
    wait_until(lambda: fleet.ready(DIRECT) == 1 and fleet.ready(ZERO) == 1, 240, "both workers")
    with ServiceProxy(api, NAMESPACE, f"{ZERO}-workers"), ServiceProxy(api, NAMESPACE, ZERO) as zp:
        wake = wake_from_zero(fleet, zp)
    say(f"zero went to zero and back: the waking request took {wake:.1f} s")
    with ServiceProxy(api, NAMESPACE, DIRECT) as direct, ServiceProxy(api, NAMESPACE, ZERO) as zero:
        hop = check_no_extra_hop(fleet, zero)
        forwarded = activator_forwarded(fleet)
        results = measure({DIRECT: direct.url, ZERO: zero.url}, args)
        after = activator_forwarded(fleet)
        assert after == forwarded, f"the activator forwarded {after - forwarded} measured requests"
        assert fleet.selector(ZERO) == {"embedfleet.dev/service": ZERO}
    say(f"the activator's forwarded requests: {forwarded:.0f} before and {after:.0f} after")
    judged = verdicts(results)
    say(table(results, judged))
    return {
        "setup": {"model": "all-MiniLM-L6-v2 (CPU, 1 thread per worker)", "rounds": args.rounds,
                  "sequential_requests_per_round": args.requests,
                  "concurrency": args.concurrency,
                  "concurrent_requests_per_round": args.concurrent_requests,
                  "client": "openai.OpenAI, default keep-alive pool, max_retries=0"},
        "wake_seconds": round(wake, 2), "no_extra_hop": hop,
        "activator_forwarded": {"before": forwarded, "after": after},
        "results": results, "verdicts": judged,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="even: each order as often")
    parser.add_argument("--requests", type=int, default=200, help="sequential, per round")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--concurrent-requests", type=int, default=320, help="per round")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--workdir", type=Path, help="keep the cluster's and pods' logs here")
    args = parser.parse_args(argv)
    if args.workdir is not None:  # kept: the operator's and the pods' logs
        args.workdir.mkdir(parents=True, exist_ok=True)
        found = run(args, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="embedfleet-activation-path-") as folder:
            found = run(args, Path(folder))
    if args.json:
        args.json.write_text(json.dumps(found, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
