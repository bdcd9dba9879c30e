"""The engine's few CUDA mechanics, kept apart from its scheduling: a high-priority stream for
queries run during a bulk batch, and reading a batch's vectors back without waiting for the
GPU. Each is a no-op on a CPU."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch


def priority_stream(device: torch.device) -> torch.cuda.Stream | None:
    """The device's highest-priority stream (CUDA only): its kernels take SMs as the running
    bulk kernels free them, ahead of the bulk's queued ones."""
    if device.type != "cuda":
        return None
    # a lower number is a higher priority; beyond the device's range torch takes its highest
    return torch.cuda.Stream(device=device, priority=-100)  # type: ignore[no-untyped-call]


def on_stream(stream: torch.cuda.Stream | None) -> contextlib.AbstractContextManager[Any]:
    """Work issued inside runs on `stream` (None: where it would anyway). A query batch's
    inputs, graph replay and read-back all stay on it; nothing it uses is shared with the bulk
    batch, and its `.cpu()` waits for that stream alone."""
    return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()


@dataclass
class ReadBack:
    """A batch's vectors on their way to the host: on a GPU, copied into pinned memory behind
    the batch's kernels, so the engine can launch the next batch before this one is done."""

    host: torch.Tensor
    ready: Any = None  # the CUDA event after the copy; None: already on the host

    @classmethod
    def start(cls, rows: torch.Tensor) -> ReadBack:
        rows = rows.float()
        if not rows.is_cuda:
            return cls(rows)
        host = torch.empty(rows.shape, dtype=torch.float32, pin_memory=True)
        host.copy_(rows, non_blocking=True)
        ready = torch.cuda.Event()  # type: ignore[no-untyped-call]
        ready.record()
        return cls(host, ready)

    def wait(self) -> npt.NDArray[np.float32]:
        if self.ready is not None:
            self.ready.synchronize()
        return self.host.numpy()
