"""`make demo`: the whole product on a local control plane, end to end, in a few minutes.

Starts the local Kubernetes (etcd, apiserver, controller-manager, scheduler, kwok GPU nodes),
installs the Helm chart, runs the operator with the chart's ServiceAccount credentials, applies
the CPU sample EmbeddingService (all-MiniLM-L6-v2), runs real workers for its pods on their
loopback IPs, embeds sentences through the `openai` client at the Service's address, drives a
burst of load and prints the autoscaler's decisions as it scales up and back down, then cleans
up, leaving no process behind. Only loopback addresses are used.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import yaml

from embedfleet_operator.crd import GROUP, PLURAL, VERSION
from tests.cluster.binaries import helm_path
from tests.cluster.controlplane import LocalCluster
from tests.cluster.kubelet import REAL_PROCESS_ANNOTATION, LoopbackKubelet
from tests.cluster.processes import ComponentDied, wait_until
from tests.cluster.service_proxy import ServiceProxy
from tests.cluster.traffic import Traffic, served_by
from tests.modelzoo import minilm_dir

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "embedfleet"
SAMPLE = REPO / "deploy" / "samples" / "minilm-cpu.yaml"
SYSTEM_NAMESPACE, NAMESPACE = "embedfleet-system", "demo"
SENTENCES = [
    "The cat sits on the mat.",
    "A kitten is resting on a rug.",
    "Stock markets fell sharply on Monday.",
    "Equities dropped at the start of the week.",
]
HUB_COMMIT = "0" * 40


def say(text: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {text}", flush=True)


def seed_hub_cache(volume: str, folder: Path) -> None:
    """The pods' /models volume as a pre-filled model cache (a PVC would be in a cluster), so
    the sample's hub id resolves with no network."""
    if volume != "models":
        return
    repo = folder / "models--sentence-transformers--all-MiniLM-L6-v2"
    snapshot = repo / "snapshots" / HUB_COMMIT
    if snapshot.exists():
        return
    snapshot.mkdir(parents=True)
    for item in minilm_dir().iterdir():
        (snapshot / item.name).symlink_to(item)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(HUB_COMMIT)


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


@contextlib.contextmanager
def operator_process(cluster: LocalCluster, kubeconfig: Path, log: Path) -> Iterator[None]:
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "embedfleet_operator.cli", "run", "--log-format", "plain",
             "--autoscale-seconds", "3", "--resync-seconds", "10"],
            stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
            env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        )  # fmt: skip
    try:
        yield
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


class ScaleWatcher:
    """Prints each autoscaling decision that changed the fleet, with its reason."""

    def __init__(self, custom: Any, apps: Any, name: str) -> None:
        self.custom, self.apps, self.name = custom, apps, name
        self.ups = self.downs = 0
        self._last: tuple[Any, ...] | None = None
        self._replicas: int | None = None

    def poll(self) -> None:
        status = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, PLURAL, self.name
        ).get("status", {})
        replicas = int(self.apps.read_namespaced_deployment(self.name, NAMESPACE).spec.replicas)
        if status.get("desiredReplicas") != replicas:
            return  # scaled, but the status with its reason is not written yet: next poll
        key = (replicas, status.get("lastScaleTime"))
        if key == self._last:
            return
        if self._replicas is not None and replicas != self._replicas:
            direction = "up" if replicas > self._replicas else "down"
            self.ups += direction == "up"
            self.downs += direction == "down"
            rps = (status.get("metrics") or {}).get("requestsPerSecond", 0)
            say(f"scaled {direction}: {self._replicas} -> {replicas} replicas "
                f"({status.get('lastScaleReason')}: {status.get('lastScaleMessage')}; "
                f"fleet at {rps:.1f} requests/s)")  # fmt: skip
        self._last, self._replicas = key, replicas

    def watch(self, seconds: float, until: Any = None) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.poll()
            if until is not None and until():
                return
            time.sleep(1)


def run_demo(workdir: Path) -> int:
    started = time.monotonic()
    say("starting a local Kubernetes control plane (loopback only) ...")
    cluster = LocalCluster(workdir / "cluster")
    cluster.start()
    try:
        return _with_cluster(cluster, workdir, started)
    finally:
        cluster.stop()
        left = cluster.running_pids()
        say("control plane stopped" + (f"; LEFT RUNNING: {left}" if left else ""))


def _with_cluster(cluster: LocalCluster, workdir: Path, started: float) -> int:
    api = cluster.api_client()
    kubeconfig = str(cluster.admin_kubeconfig)
    say("helm install embedfleet charts/embedfleet (the operator runs here, as the chart's "
        "ServiceAccount)")  # fmt: skip
    subprocess.run(
        [str(helm_path()), "install", "embedfleet", str(CHART), "--kubeconfig", kubeconfig,
         "--namespace", SYSTEM_NAMESPACE, "--create-namespace", "--set", "replicaCount=0"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    account_kubeconfig = cluster.service_account_kubeconfig(SYSTEM_NAMESPACE, "embedfleet-operator")
    core = kubernetes.client.CoreV1Api(api)
    custom = kubernetes.client.CustomObjectsApi(api)
    apps = kubernetes.client.AppsV1Api(api)
    core.create_namespace({"metadata": {"name": NAMESPACE}})
    sample = yaml.safe_load(SAMPLE.read_text())
    name = sample["metadata"]["name"]
    sample["spec"]["podAnnotations"] = {REAL_PROCESS_ANNOTATION: "true"}
    # Demo-sized timings (the sample's own are minutes).
    sample["spec"]["autoscaling"].update(
        targetRequestsPerSecondPerReplica=8, scaleDownStabilizationSeconds=20
    )
    kubelet = LoopbackKubelet(
        api, NAMESPACE, workdir / "pods", prepare_volume=seed_hub_cache,
        extra_env={"HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    with operator_process(cluster, account_kubeconfig, workdir / "operator.log"), kubelet:
        model = sample["spec"]["model"]["name"]
        say(f"kubectl apply -f deploy/samples/minilm-cpu.yaml (model {model}, 1-3 CPU workers; "
            "demo timing: stabilisation 20 s)")  # fmt: skip
        custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, sample)

        def ready() -> bool:
            if failed := kubelet.failed_loads():
                raise ComponentDied(f"the worker could not load its model: {failed[0]}")
            status = custom.get_namespaced_custom_object(
                GROUP, VERSION, NAMESPACE, PLURAL, name
            ).get("status", {})
            return int(status.get("readyReplicas") or 0) >= 1

        wait_until(ready, 240, "the first worker ready")
        status = custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name)
        say(f"EmbeddingService {name} is Ready; endpoint {status['status']['endpoint']}")
        with ServiceProxy(api, NAMESPACE, name) as proxy:
            _embed(proxy.url, model)
            watcher = ScaleWatcher(custom, apps, name)
            watcher.poll()
            say("a burst of load: one openai client (keep-alive pool, no retries), 8 threads, "
                "40 requests/s for 45 s ...")  # fmt: skip
            start = served_by({p.name: p.base_url for p in kubelet.running()})
            with Traffic(proxy.url, rate=40, model=model) as burst:
                watcher.watch(25)
                pool = {p.name: p.base_url for p in kubelet.running()}
                middle = served_by(pool)
                watcher.watch(20)
                end = served_by(pool)
            say(f"burst over: {burst.ok} requests answered, {len(burst.failed)} failed")
            say("requests each worker served (whole burst / its last 20 s):")
            for pod in sorted(pool):
                whole = end[pod] - start.get(pod, 0.0)
                print(f"    {pod}: {whole:5.0f} / {end[pod] - middle[pod]:4.0f}", flush=True)
            say("no more traffic: waiting for the fleet to come back down (the window) ...")
            watcher.watch(120, until=lambda: watcher.downs and watcher._replicas == 1)
        say(f"scale-ups: {watcher.ups}, scale-downs: {watcher.downs}")
        custom.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name)
    leftovers = [p.name for p in kubelet.finished if p.process and p.process.poll() is None]
    say(f"cleaned up in {time.monotonic() - started:.0f}s total"
        + (f"; workers LEFT RUNNING: {leftovers}" if leftovers else ""))  # fmt: skip
    return 0 if watcher.ups and watcher.downs and not burst.failed and not leftovers else 1


def _embed(base_url: str, model: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=2)
    result = client.embeddings.create(model=model, input=SENTENCES)
    vectors = [item.embedding for item in result.data]
    say(f"openai client at {base_url}/v1: {len(vectors)} embeddings of {len(vectors[0])} "
        f"dimensions ({result.usage.prompt_tokens} tokens); cosine similarities:")  # fmt: skip
    for i, sentence in enumerate(SENTENCES):
        row = " ".join(f"{cosine(vectors[i], v):5.2f}" for v in vectors)
        print(f"    {row}   {sentence}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="embedfleet-demo-"))
    try:
        return run_demo(workdir)
    finally:
        if args.keep:
            say(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
