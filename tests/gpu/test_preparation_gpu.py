"""A fresh worker on the GPU (`pytest -m gpu tests/gpu`): Ready on eager kernels, its
preparation (compiled kernels on their own thread, attention plans and CUDA graphs on the
compute thread) run between requests; every answer before, during and after it equals the
eager one, and the weights read through pinned buffers equal the checkpoint's bytes."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from embedfleet_worker.engine.executor import EmbeddingEngine, EngineConfig
from embedfleet_worker.engine.options import EmbedOptions
from embedfleet_worker.engine.preparation import Preparation
from embedfleet_worker.engine.tokenization import InputEncoder, SequenceTemplate
from embedfleet_worker.model import safetensors_reads
from embedfleet_worker.model.runners.qwen3_checkpoint import load_weights, weight_names
from tests.gpu.test_qwen3_gpu_parity import ENDOFTEXT, build

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_a_fresh_runner_serves_while_it_prepares() -> None:
    _, runner = build("0.6b")
    assert not runner.ops.compiled
    assert runner.graphs is None
    inputs = [
        [100, 200, 300, ENDOFTEXT],  # a single query: a small CUDA graph once captured
        *([[5 + i] * (10 + i) + [ENDOFTEXT] for i in range(40)]),  # a query batch
        [(7 * i) % 151643 for i in range(5000)] + [ENDOFTEXT],  # a long input
    ]
    requests = [inputs[:1], inputs[1:41], inputs[41:]]
    eager = [torch.nn.functional.normalize(runner.embed(r).float().cpu(), dim=-1) for r in requests]
    encoder = InputEncoder(
        None, SequenceTemplate((), (ENDOFTEXT,), ENDOFTEXT), max_input_tokens=32768,
        vocab_size=151669,
    )  # fmt: skip
    prepared = threading.Event()
    engine = EmbeddingEngine(runner, encoder, EngineConfig(max_batch_tokens=16384))
    engine.start()
    engine.prepare_between_batches(
        Preparation(runner.preparation(), on_done=lambda _: prepared.set())
    )

    async def one_round() -> tuple[list[torch.Tensor], float]:
        started = time.perf_counter()
        results = await asyncio.gather(
            *(engine.embed([s[:-1] for s in r], EmbedOptions()) for r in requests)
        )
        return [torch.from_numpy(r.vectors) for r in results], time.perf_counter() - started

    rounds_while_preparing, slowest = 0, 0.0
    try:
        while not prepared.is_set():
            got, seconds = asyncio.run(one_round())
            rounds_while_preparing += not prepared.is_set()
            slowest = max(slowest, seconds)
            for ours, theirs in zip(got, eager, strict=True):
                cosine = torch.nn.functional.cosine_similarity(ours, theirs, dim=-1)
                assert cosine.min().item() >= 0.9999, cosine
        after, _ = asyncio.run(one_round())
    finally:
        engine.stop()
    print(f"rounds served while preparing: {rounds_while_preparing}, slowest {slowest:.2f} s")
    print(f"preparation: {runner.prepare_seconds}")
    assert rounds_while_preparing >= 3
    assert runner.ops.compiled
    assert runner.graphs is not None
    assert runner.graphs.complete
    assert runner.graphs.fits([4])
    assert runner.graphs.fits([11] * 40)
    for ours, theirs in zip(after, eager, strict=True):
        cosine = torch.nn.functional.cosine_similarity(ours, theirs, dim=-1)
        assert cosine.min().item() >= 0.9999, cosine


def test_weights_read_through_pinned_buffers_equal_the_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small reads (1 MiB) so that every tensor spans several, on four threads at once."""
    model, runner = build("0.6b")
    model.save_pretrained(tmp_path, safe_serialization=True)
    shape = runner.shape
    del model, runner
    monkeypatch.setattr(safetensors_reads, "CHUNK_BYTES", 1 << 20)
    names = weight_names(shape)
    with torch.inference_mode():  # as Qwen3Runner.from_pretrained loads them
        ours = load_weights(tmp_path, names, torch.device("cuda"), torch.bfloat16)
    theirs = load_file(str(tmp_path / "model.safetensors"), device="cuda")
    assert sorted(ours) == sorted(names)
    for name in names:
        key = name if name in theirs else f"model.{name}"
        assert ours[name].is_cuda
        assert torch.equal(ours[name], theirs[key]), name
