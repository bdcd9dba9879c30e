"""CUDA graphs for the Qwen3 runner's small batches (single queries, a few short inputs):
replaying one captured graph replaces ~400 kernel launches and their Python, which is what a
16-token query otherwise waits for (launch-bound, not compute-bound).

Each bucket is a fixed token count T with a fixed number of sequence slots: a batch is packed
into the smallest bucket that holds it, unused slots are empty sequences and the leftover
tokens form one padding sequence at the end, so attention never mixes real and padding
tokens and the real rows come out exactly as the eager path computes them."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from embedfleet_worker.runners.qwen3 import Qwen3Runner

TOKEN_BUCKETS = (16, 32, 64, 128, 256, 512)
MAX_SEQUENCES = 8


class SmallBatchGraphs:
    def __init__(
        self,
        runner: Qwen3Runner,
        buckets: Sequence[int] = TOKEN_BUCKETS,
        max_sequences: int = MAX_SEQUENCES,
    ) -> None:
        self.runner = runner
        self.buckets = tuple(sorted(buckets))
        self.max_sequences = max_sequences
        device, longest = runner.device, self.buckets[-1]
        # Static inputs every graph reads (bucket T uses the first T entries).
        self.ids = torch.zeros(longest, dtype=torch.long, device=device)
        self.positions = torch.zeros(longest, dtype=torch.long, device=device)
        self.cu_seqlens = torch.zeros(max_sequences + 2, dtype=torch.int32, device=device)
        self.last = torch.zeros(max_sequences, dtype=torch.long, device=device)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        pool = torch.cuda.graph_pool_handle()
        for tokens in self.buckets:
            self._fill([[0] * tokens], tokens)
            side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):  # warm-up outside the capture: kernels compiled, tuned
                    self._body(tokens)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                output = self._body(tokens)
            self.graphs[tokens] = (graph, output)
        torch.cuda.synchronize()

    def fits(self, lengths: Sequence[int]) -> bool:
        return len(lengths) <= self.max_sequences and sum(lengths) <= self.buckets[-1]

    def run(self, sequences: Sequence[Sequence[int]], lengths: list[int]) -> torch.Tensor:
        total = sum(lengths)
        tokens = next(b for b in self.buckets if b >= total)
        self._fill(sequences, tokens)
        graph, output = self.graphs[tokens]
        graph.replay()
        return output[: len(lengths)].clone()

    def _fill(self, sequences: Sequence[Sequence[int]], tokens: int) -> None:
        lengths = [len(s) for s in sequences]
        total = sum(lengths)
        pad = tokens - total
        ids = [*itertools.chain.from_iterable(sequences), *([0] * pad)]
        positions = [i for n in [*lengths, pad] for i in range(n)]
        ends = list(itertools.accumulate(lengths))
        empty = self.max_sequences - len(lengths)
        cu = [0, *ends, *([total] * empty), tokens]
        last = [end - 1 for end in ends] + [0] * empty
        self.ids[:tokens].copy_(torch.tensor(ids, dtype=torch.long))
        self.positions[:tokens].copy_(torch.tensor(positions, dtype=torch.long))
        self.cu_seqlens.copy_(torch.tensor(cu, dtype=torch.int32))
        self.last.copy_(torch.tensor(last, dtype=torch.long))

    def _body(self, tokens: int) -> torch.Tensor:
        forward = self.runner.begin(
            self.ids[:tokens], self.positions[:tokens], self.cu_seqlens, [tokens], max_len=tokens
        )
        forward.finish()
        return self.runner.final_norm_rows(forward.hidden.index_select(0, self.last))
