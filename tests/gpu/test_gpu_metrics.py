"""On a GPU machine the worker's metrics include the NVML gauges the autoscaler reads."""

from __future__ import annotations

import pytest
import torch
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from embedfleet_worker.metrics import GPU_MEMORY_USED, GPU_UTILIZATION, WorkerMetrics

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_nvml_gauges_are_exported() -> None:
    held = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device="cuda")  # 256 MiB in use
    families = {
        f.name: f
        for f in text_string_to_metric_families(generate_latest(WorkerMetrics().registry).decode())
    }
    utilization = families[GPU_UTILIZATION].samples
    memory = families[GPU_MEMORY_USED].samples
    assert utilization
    assert all(0.0 <= s.value <= 1.0 for s in utilization)
    assert memory
    assert max(s.value for s in memory) >= held.numel()
