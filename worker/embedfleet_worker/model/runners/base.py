"""The interface every runner implements; the engine knows nothing else about models."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

import torch

from embedfleet_worker.engine.pooling import PoolingMode


class EmbeddingRunner(Protocol):
    """Runs the model on already-formatted token-id sequences (instruction, special tokens and
    EOS applied by the tokenisation layer) and returns one pooled vector per sequence."""

    hidden_size: int
    pooling: PoolingMode
    device: torch.device
    dtype: torch.dtype

    def embed(self, sequences: Sequence[Sequence[int]]) -> torch.Tensor:
        """[N, hidden_size] float32 pooled vectors, not normalised, in input order."""
        ...

    def preparation(self) -> Iterator[bool]:
        """What makes requests faster once built (compilation, kernel plans, CUDA graphs), in
        short steps for the thread that runs the requests (some of it is kept per thread),
        between its batches: each step yields True, or False while only background work
        remains. The runner serves correctly, if slower, before and during it."""
        ...

    def prepare(self) -> None:
        """All of `preparation` at once, on this thread."""
        ...


class Forward(Protocol):
    """A batch in flight, advanced one layer at a time."""

    def step(self) -> bool:
        """Runs the next part of the forward pass (Qwen3: half a layer); True once all have
        run."""
        ...

    def result(self) -> torch.Tensor:
        """[N, hidden_size] float32 pooled vectors, running what is left first."""
        ...


@runtime_checkable
class SteppedRunner(Protocol):
    """A runner whose batches can pause between layers, so the engine can run a waiting
    query in between instead of after a whole bulk batch."""

    def start(self, sequences: Sequence[Sequence[int]]) -> Forward: ...
