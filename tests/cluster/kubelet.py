"""A loopback kubelet for kwok pods annotated `kwok.embedfleet.dev/real-process`: it runs the
pod's container command as a real process bound to the pod's 127.x IP, with the container's
environment (secretKeyRefs read from their Secrets) and a folder per volume (per claim for a
PVC, shared), reports readiness from the readiness probe like a kubelet, restarts a process
that dies (restartPolicy Always; OnFailure unless it succeeded), ends a Job's pod Succeeded or
Failed with its exit code and termination message, and SIGTERMs it when the pod is deleted."""

from __future__ import annotations

import base64
import datetime
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes

from tests.cluster.pod_status import ended_status, pull_refused_status, termination_message

REAL_PROCESS_ANNOTATION = "kwok.embedfleet.dev/real-process"
RESTART_BACKOFF_SECONDS = 1.0
BIN_DIR = Path(sys.executable).parent  # the venv's console scripts stand in for the image


@dataclass
class RunningPod:
    name: str
    uid: str
    ip: str
    port: int
    ready_path: str
    failure_threshold: int  # the readinessProbe's: consecutive failures before NotReady
    probe_timeout: float  # ...and its timeoutSeconds
    command: list[str]
    env: dict[str, str]
    log_path: Path
    restart_policy: str = "Always"
    container_name: str = "worker"
    termination_log: Path | None = None  # the host file behind terminationMessagePath
    fallback_to_logs: bool = False  # terminationMessagePolicy FallbackToLogsOnError
    finished: bool = False  # a Never/OnFailure pod that ended for good
    process: subprocess.Popen[bytes] | None = None
    ready: bool = False
    restarts: int = 0
    probe_failures: int = 0
    died_at: float | None = None
    kill_reason: str | None = None  # why the next death happens, when the kubelet caused it
    last_exit: dict[str, Any] | None = None  # lastState.terminated, as a kubelet reports it
    history: list[str] = field(default_factory=list)
    secret_variables: frozenset[str] = frozenset()  # never written to container.env

    @property
    def base_url(self) -> str:
        return f"http://{self.ip}:{self.port}"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _on_host(value: str, mounts: dict[str, str]) -> str:
    """A variable or argument naming a mount point (HF_HOME=/models, --cache-dir /models) gets
    the volume's folder; a path inside one this machine lacks (/models/.compile-cache), that
    path in the folder. Under a host folder (/tmp, where tests keep models) paths stay."""
    inside = next(
        (m for m in mounts if value.startswith(m.rstrip("/") + "/") and not Path(m).exists()),
        None,
    )
    if value in mounts:
        return mounts[value]
    if inside is not None:
        return mounts[inside] + value[len(inside.rstrip("/")) :]
    return value


def _probe(url: str, timeout: float) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class LoopbackKubelet:
    def __init__(
        self,
        api_client: kubernetes.client.ApiClient,
        namespace: str,
        workdir: Path,
        *,
        extra_env: dict[str, str] | None = None,
        prepare_volume: Callable[[str, Path], None] | None = None,
        missing_images: frozenset[str] = frozenset(),
    ) -> None:
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.namespace = namespace
        self.workdir = workdir
        self.extra_env = extra_env or {}
        self.prepare_volume = prepare_volume  # (volume name, host folder): seed a volume
        # Images no registry has: their pods stay in ImagePullBackOff, as with a real kubelet.
        self.missing_images = missing_images
        self.refused: set[str] = set()  # uids of pods whose image pull was refused
        self.pods: dict[str, RunningPod] = {}  # by uid
        self.finished: list[RunningPod] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="loopback-kubelet", daemon=True)

    def __enter__(self) -> LoopbackKubelet:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)
        with self._lock:
            for pod in list(self.pods.values()):
                self._terminate(pod)
            self.pods.clear()

    def running(self) -> list[RunningPod]:
        with self._lock:
            return [p for p in self.pods.values() if p.process and p.process.poll() is None]

    def failed_loads(self) -> list[str]:
        """Log lines of workers that could not load their model (a crash-looping pod)."""
        with self._lock:
            logs = [p.log_path for p in self.pods.values()]
        return [
            line
            for path in logs
            if path.exists()
            for line in path.read_text(errors="replace").splitlines()
            if "model load failed" in line
        ]

    def kill(self, pod_name: str) -> None:
        """SIGKILL the pod's process, as the kernel's OOM killer would: the kubelet reports
        CrashLoopBackOff with the last exit OOMKilled (137) while it backs off, then restarts
        it."""
        with self._lock:
            pod = next(p for p in self.pods.values() if p.name == pod_name)
            assert pod.process is not None
            pod.kill_reason = "OOMKilled"
            pod.process.kill()

    def signal(self, pod_name: str, number: signal.Signals) -> None:
        """Sends the pod's process a signal: SIGSTOP freezes it (a hung worker: its probes
        time out and it turns NotReady), SIGCONT thaws it."""
        with self._lock:
            pod = next(p for p in self.pods.values() if p.name == pod_name)
            assert pod.process is not None
            pod.process.send_signal(number)

    # ---------------------------------------------------------------------------- loop
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._sync()
            except Exception as error:  # keep running; the test reads `errors`
                self.errors.append(f"{type(error).__name__}: {error}")
            self._stop.wait(0.3)

    def _sync(self) -> None:
        listed = self.core.list_namespaced_pod(self.namespace).items
        seen = set()
        for pod in listed:
            annotations = pod.metadata.annotations or {}
            if REAL_PROCESS_ANNOTATION not in annotations:
                continue
            uid = pod.metadata.uid
            if pod.metadata.deletion_timestamp is not None:
                continue  # terminating: handled below as gone
            seen.add(uid)
            with self._lock:
                known = self.pods.get(uid)
            if known is None:
                image = pod.spec.containers[0].image
                if image in self.missing_images:
                    self._refuse_pull(pod, image)
                elif pod.status.phase == "Running" and pod.status.pod_ip:
                    self._start(self._describe(pod))
                continue
            self._supervise(known)
        with self._lock:
            gone = [p for uid, p in self.pods.items() if uid not in seen]
            for pod in gone:
                del self.pods[pod.uid]
        for pod in gone:
            self._terminate(pod)

    def _describe(self, pod: Any) -> RunningPod:
        container = pod.spec.containers[0]
        port = next((p.container_port for p in container.ports or [] if p.name == "http"), 0)
        probe = container.readiness_probe
        ready_path = probe.http_get.path if probe and probe.http_get else "/"
        failure_threshold = (probe.failure_threshold if probe else None) or 3
        probe_timeout = float((probe.timeout_seconds if probe else None) or 1)
        pod_dir = self.workdir / pod.metadata.name
        claims = {v.name: v.persistent_volume_claim.claim_name for v in pod.spec.volumes or []
                  if v.persistent_volume_claim is not None}  # fmt: skip
        mounts = {}
        for mount in container.volume_mounts or []:
            host = pod_dir / "volumes" / mount.name
            if mount.name in claims:  # a claim's volume is the same folder for every pod
                host = self.workdir / "claims" / claims[mount.name]
            host.mkdir(parents=True, exist_ok=True)
            if self.prepare_volume is not None:
                self.prepare_volume(mount.name, host)
            mounts[mount.mount_path] = str(host)
        # The termination message's file is the pod folder's, like a volume of one file.
        termination_log = pod_dir / "termination-log"
        mounts[container.termination_message_path or "/dev/termination-log"] = str(termination_log)
        env, from_secrets = {}, set()
        for variable in container.env or []:
            value = variable.value or ""
            ref = variable.value_from.secret_key_ref if variable.value_from else None
            if ref is not None:
                value = self._secret_value(ref.name, ref.key)
                from_secrets.add(variable.name)
            env[variable.name] = _on_host(value, mounts)
        env["EMBEDFLEET_HOST"] = pod.status.pod_ip  # 0.0.0.0 in the pod's own namespace
        command = [
            _on_host(a, mounts) for a in [*(container.command or []), *(container.args or [])]
        ]
        executable = BIN_DIR / command[0]
        if executable.exists():
            command[0] = str(executable)
        return RunningPod(
            name=pod.metadata.name,
            uid=pod.metadata.uid,
            ip=pod.status.pod_ip,
            port=port,
            ready_path=ready_path,
            failure_threshold=failure_threshold,
            probe_timeout=probe_timeout,
            command=command,
            env=env,
            log_path=pod_dir / "container.log",
            restart_policy=pod.spec.restart_policy or "Always",
            container_name=container.name,
            termination_log=termination_log,
            fallback_to_logs=container.termination_message_policy == "FallbackToLogsOnError",
            secret_variables=frozenset(from_secrets),
        )

    def _secret_value(self, name: str, key: str) -> str:
        secret = self.core.read_namespaced_secret(name, self.namespace)
        return base64.b64decode((secret.data or {})[key]).decode()

    def _start(self, pod: RunningPod) -> None:
        pod.log_path.parent.mkdir(parents=True, exist_ok=True)
        environment = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1",  # one CPU per pod: several share this machine's cores
            **self.extra_env,
            **pod.env,
        }
        # What ran, for a reader of the logs: the command and the container's environment.
        shown = {k: "<from a Secret>" if k in pod.secret_variables else v
                 for k, v in pod.env.items()}  # fmt: skip
        (pod.log_path.parent / "container.env").write_text(
            " ".join(pod.command) + "\n" + "".join(f"{k}={v}\n" for k, v in shown.items())
        )
        with pod.log_path.open("ab") as log:
            pod.process = subprocess.Popen(
                pod.command, stdout=log, stderr=subprocess.STDOUT, env=environment
            )
        pod.died_at = None
        pod.history.append(f"started pid {pod.process.pid}")
        with self._lock:
            self.pods[pod.uid] = pod

    def _supervise(self, pod: RunningPod) -> None:
        assert pod.process is not None
        if pod.finished:
            return
        code = pod.process.poll()
        if code is not None and (
            pod.restart_policy == "Never" or (pod.restart_policy == "OnFailure" and code == 0)
        ):
            self._finish(pod, code)
            return
        if code is not None:
            if pod.died_at is None:
                pod.died_at = time.monotonic()
                code = pod.process.returncode
                pod.history.append(f"exited {code}")
                pod.last_exit = {
                    "exitCode": 128 - code if code < 0 else code,  # killed by signal N: 128+N
                    "reason": pod.kill_reason or ("Completed" if code == 0 else "Error"),
                    "startedAt": _now(), "finishedAt": _now(),
                }  # fmt: skip
                pod.kill_reason = None
                back_off = (
                    f"back-off {RESTART_BACKOFF_SECONDS:g}s restarting failed container=worker "
                    f"pod={pod.name}"
                )
                self._set_ready(pod, False, waiting={"reason": "CrashLoopBackOff",
                                                     "message": back_off})  # fmt: skip
            elif time.monotonic() - pod.died_at >= RESTART_BACKOFF_SECONDS:
                pod.restarts += 1
                self._start(pod)
                self._set_ready(pod, False)  # running again (not ready yet), no longer waiting
            return
        if not pod.port:  # a Job's pod serves nothing
            return
        # As a kubelet does: Ready after one success, NotReady only after the probe's
        # failureThreshold consecutive failures (one slow probe on a busy machine is not one).
        passed = _probe(pod.base_url + pod.ready_path, pod.probe_timeout)
        pod.probe_failures = 0 if passed else pod.probe_failures + 1
        ready = passed or (pod.ready and pod.probe_failures < pod.failure_threshold)
        if ready != pod.ready:
            self._set_ready(pod, ready)

    def _finish(self, pod: RunningPod, code: int) -> None:
        """A pod that is not restarted ends: phase Succeeded or Failed, its container
        terminated with the exit code and the termination message (the log's tail instead,
        for a failure under FallbackToLogsOnError), which the job controller reads."""
        message = termination_message(code, pod.termination_log, pod.log_path,
                                      fallback_to_logs=pod.fallback_to_logs)  # fmt: skip
        self._patch_status(pod.name, ended_status(pod.container_name, code, message, pod.restarts))
        pod.finished = True
        pod.history.append(f"finished with exit code {code}")

    def _set_ready(
        self, pod: RunningPod, ready: bool, *, waiting: dict[str, str] | None = None
    ) -> None:
        value = "True" if ready else "False"
        now = _now()
        state = {"waiting": waiting} if waiting else {"running": {"startedAt": now}}
        container: dict[str, Any] = {
            "name": "worker", "ready": ready, "restartCount": pod.restarts,
            "started": waiting is None, "image": "", "imageID": "", "state": state,
        }  # fmt: skip
        if pod.last_exit is not None:
            container["lastState"] = {"terminated": pod.last_exit}
        body = {
            "status": {
                "conditions": [
                    {"type": "Ready", "status": value, "lastTransitionTime": now},
                    {"type": "ContainersReady", "status": value, "lastTransitionTime": now},
                ],
                "containerStatuses": [container],
            }
        }
        self._patch_status(pod.name, body)
        pod.ready = ready
        pod.history.append(f"ready={ready}")

    def _patch_status(self, name: str, body: dict[str, Any]) -> None:
        try:
            self.core.patch_namespaced_pod_status(
                name, self.namespace, body, _content_type="application/strategic-merge-patch+json"
            )
        except kubernetes.client.ApiException as error:
            if error.status != 404:
                raise

    def _refuse_pull(self, pod: Any, image: str) -> None:
        """What a kubelet reports for an image no registry has: the pod stays Pending, its
        container waiting in ImagePullBackOff. Written again if kwok's stage raced it: the
        stage leaves such pods alone only once it sees the refusal."""
        statuses = pod.status.container_statuses or []
        waiting = statuses[0].state.waiting if statuses and statuses[0].state else None
        if waiting is not None and waiting.reason == "ImagePullBackOff":
            return
        body = pull_refused_status(pod.spec.containers[0].name, image)
        self.core.patch_namespaced_pod_status(
            pod.metadata.name, self.namespace, body,
            _content_type="application/strategic-merge-patch+json",
        )  # fmt: skip
        self.refused.add(pod.metadata.uid)

    def _terminate(self, pod: RunningPod) -> None:
        process = pod.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        pod.history.append("terminated")
        self.finished.append(pod)
