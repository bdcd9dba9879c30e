"""Pod statuses the loopback kubelet (kubelet.py) writes as a kubelet would: a pod that ends
for good (restartPolicy Never, or OnFailure after a success), phase Succeeded or Failed with
the container terminated with its exit code and termination message, which the job controller
reads to complete or fail a Job; and an image no registry has (ImagePullBackOff)."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

MESSAGE_LIMIT = 4096  # a kubelet keeps at most this much of a termination message
LOG_LINES, LOG_BYTES = 80, 2048  # ...and of the log's tail under FallbackToLogsOnError


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def termination_message(
    code: int, termination_log: Path | None, log_path: Path, *, fallback_to_logs: bool
) -> str:
    """The file at terminationMessagePath; for a failure that left it empty under
    FallbackToLogsOnError, the tail of the container's log."""
    message = ""
    if termination_log is not None and termination_log.exists():
        message = termination_log.read_text(errors="replace")[-MESSAGE_LIMIT:]
    if not message and code != 0 and fallback_to_logs and log_path.exists():
        tail = log_path.read_text(errors="replace").splitlines()[-LOG_LINES:]
        message = "\n".join(tail)[-LOG_BYTES:]
    return message


def ended_status(container: str, code: int, message: str, restarts: int) -> dict[str, Any]:
    """The pod status patch for a container that exited with `code` (negative: a signal)."""
    now = _now()
    terminated = {
        "exitCode": 128 - code if code < 0 else code,
        "reason": "Completed" if code == 0 else "Error",
        "message": message, "startedAt": now, "finishedAt": now,
    }  # fmt: skip
    not_ready = {"status": "False", "lastTransitionTime": now, "reason": "PodCompleted"}
    return {
        "status": {
            "phase": "Succeeded" if code == 0 else "Failed",
            "conditions": [
                {"type": "Ready", **not_ready},
                {"type": "ContainersReady", **not_ready},
            ],
            "containerStatuses": [
                {"name": container, "ready": False, "started": False,
                 "restartCount": restarts, "image": "", "imageID": "",
                 "state": {"terminated": terminated}}
            ],
        }
    }  # fmt: skip


def pull_refused_status(container: str, image: str) -> dict[str, Any]:
    """A pod whose image cannot be pulled stays Pending, its container in ImagePullBackOff."""
    now = _now()
    failure = (
        f'Back-off pulling image "{image}": ErrImagePull: failed to pull and unpack image '
        f'"{image}": failed to resolve reference "{image}": not found'
    )
    return {
        "status": {
            "phase": "Pending",
            "conditions": [
                {"type": "Ready", "status": "False", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": "False", "lastTransitionTime": now},
            ],
            "containerStatuses": [
                {"name": container, "ready": False, "restartCount": 0,
                 "started": False, "image": image, "imageID": "",
                 "state": {"waiting": {"reason": "ImagePullBackOff", "message": failure}}}
            ],
        }
    }  # fmt: skip
