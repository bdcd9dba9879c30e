"""CUDA graphs for the Qwen3 runner's query batches: replaying one captured graph replaces
~400 kernel launches and their Python. A single query otherwise waits for those launches, and
a batch of 40 concurrent queries over HTTP spent most of its ~46 ms on them (BENCHMARKS.md).

Each bucket has a fixed token count T, a fixed number of sequence slots and a longest sequence
(the attention's static bound). A batch is packed into the smallest bucket that holds it.
Unused slots are empty sequences. The leftover tokens form padding sequences at the end, none
longer than the bound, so attention never mixes real and padding tokens. The real rows come out
exactly as the eager path computes them."""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from embedfleet_worker.model.runners.qwen3 import Qwen3Runner


@dataclass(frozen=True)
class Bucket:
    tokens: int
    slots: int  # sequences at most
    longest: int  # a sequence's length at most (FlashAttention's static max_seqlen)

    @property
    def pad_slots(self) -> int:
        return -(-self.tokens // self.longest)

    def holds(self, lengths: Sequence[int]) -> bool:
        return (
            sum(lengths) <= self.tokens
            and len(lengths) <= self.slots
            and max(lengths) <= self.longest
        )


def _query_batch_sizes() -> list[int]:
    """544 to 3,072 tokens, each at most 6% above the one before: a query batch in a graph pays
    for its bucket's padding, and above ~500 tokens the GPU's time grows with every token (4B,
    H200: ~20 us a token; bench/query_batches.py). With buckets of 1,024 and 2,048 tokens only,
    40 queries (1,186 tokens) took 38 ms, where a 1,280-token bucket takes 25. Above 3,072
    tokens the eager forward is bound by the GPU, not its launches, and is as fast. Their 52
    graphs share one memory pool."""
    return [*range(544, 1537, 32), *range(1600, 2561, 64), *range(2688, 3073, 128)]


# Up to 512 tokens: single queries and a few inputs. Above: the engine's query batches, one
# slot per 4 tokens (the shortest query with its end-of-text is 2), each query at most 512.
BUCKETS = (
    *(Bucket(t, 8, t) for t in (16, 32, 64, 128, 256, 512)),
    *(Bucket(t, t // 4, 512) for t in _query_batch_sizes()),
)


class _Captured:
    """One bucket's static inputs and its graph."""

    def __init__(self, bucket: Bucket, device: torch.device) -> None:
        self.bucket = bucket
        self.ids = torch.zeros(bucket.tokens, dtype=torch.long, device=device)
        self.positions = torch.zeros(bucket.tokens, dtype=torch.long, device=device)
        self.cu_seqlens = torch.zeros(
            bucket.slots + bucket.pad_slots + 1, dtype=torch.int32, device=device
        )
        self.last = torch.zeros(bucket.slots, dtype=torch.long, device=device)
        self.graph: Any = None
        self.output: torch.Tensor | None = None
        # The inputs are staged in pinned host memory and copied without a synchronous copy
        # per tensor: a fill takes 79 us instead of 201 us for 46 queries (CPU). `copied`
        # keeps a fill from overwriting staging buffers an earlier copy may still read.
        pinned = device.type == "cuda"
        self.staged = [torch.zeros_like(t, device="cpu", pin_memory=pinned) for t in self.inputs]
        self.copied: Any = None  # the CUDA event after the last fill's copies

    def fill(self, sequences: Sequence[Sequence[int]]) -> None:
        b = self.bucket
        lengths = [len(s) for s in sequences]
        total = sum(lengths)
        pads = [min(b.longest, b.tokens - start) for start in range(total, b.tokens, b.longest)]
        ids = [*itertools.chain.from_iterable(sequences), *([0] * (b.tokens - total))]
        positions = [i for n in [*lengths, *pads] for i in range(n)]
        ends = list(itertools.accumulate(lengths))
        pad_ends = list(itertools.accumulate(pads, initial=total))[1:]
        cu = [
            0,
            *ends,
            *([total] * (b.slots - len(lengths))),
            *pad_ends,
            *([b.tokens] * (b.pad_slots - len(pads))),
        ]
        last = [end - 1 for end in ends] + [0] * (b.slots - len(lengths))
        if self.copied is not None:
            self.copied.synchronize()  # the last fill's copies have read the staging buffers
        for target, staged, values in zip(
            self.inputs, self.staged, (ids, positions, cu, last), strict=True
        ):
            staged.numpy()[:] = values
            target.copy_(staged, non_blocking=True)
        if self.ids.is_cuda:
            self.copied = torch.cuda.Event()  # type: ignore[no-untyped-call]
            self.copied.record()

    @property
    def inputs(self) -> tuple[torch.Tensor, ...]:
        return (self.ids, self.positions, self.cu_seqlens, self.last)


class SmallBatchGraphs:
    """The buckets' graphs, captured one at a time (`capture_next`) so a worker can serve
    between captures: a batch whose bucket is not captured yet runs eagerly, as before any."""

    def __init__(self, runner: Qwen3Runner, buckets: Sequence[Bucket] = BUCKETS) -> None:
        self.runner = runner
        self.buckets = sorted(buckets, key=lambda b: (b.tokens, b.slots))
        self.captured = [_Captured(bucket, runner.device) for bucket in self.buckets]
        self._pool = torch.cuda.graph_pool_handle()
        # Single queries and small batches first: the commonest requests gain soonest. Then
        # the query batches largest first (as vLLM captures): each smaller graph reuses the
        # pool's blocks rather than growing it. Sharing is safe in any replay order because
        # every output is cloned right after its replay, and the static inputs live outside
        # the pool.
        small = [c for c in self.captured if c.bucket.tokens <= 512]
        self._to_capture = [*small, *reversed([c for c in self.captured if c not in small])]
        # Where the capture's time goes, for the engine's start-up log: the eager warm-up
        # pass per bucket, the capture itself, and the first replays (each uploads its graph).
        self.seconds = {"warm_up": 0.0, "capture": 0.0, "upload": 0.0}

    @property
    def complete(self) -> bool:
        return not self._to_capture

    def capture_all(self) -> None:
        while self.capture_next():
            pass

    def capture_next(self) -> bool:
        """Captures the next bucket's graph (about 0.1 s for the 4B model on an H200); False
        once every bucket has one."""
        if not self._to_capture:
            return False
        captured = self._to_capture.pop(0)
        captured.fill([[0] * min(captured.bucket.tokens, captured.bucket.longest)])
        started = time.perf_counter()
        side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._body(captured)  # warm-up outside the capture: kernels compiled, tuned
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        warmed = time.perf_counter()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            output = self._body(captured)
        captured_at = time.perf_counter()
        # A graph's first replay uploads it to the device (tens of ms for 36 layers): done
        # here, not on a request's replay.
        graph.replay()
        torch.cuda.synchronize()
        captured.output, captured.graph = output, graph  # from now on batches may use it
        self.seconds["warm_up"] += warmed - started
        self.seconds["capture"] += captured_at - warmed
        self.seconds["upload"] += time.perf_counter() - captured_at
        return True

    def fits(self, lengths: Sequence[int]) -> bool:
        return self._bucket_for(lengths) is not None

    def run(self, sequences: Sequence[Sequence[int]], lengths: list[int]) -> torch.Tensor:
        captured = self._bucket_for(lengths)
        assert captured is not None
        assert captured.output is not None
        captured.fill(sequences)
        captured.graph.replay()
        return captured.output[: len(lengths)].clone()

    def _bucket_for(self, lengths: Sequence[int]) -> _Captured | None:
        """The smallest bucket that holds the batch, if its graph is captured: a larger one
        would compute its padding, and eager is what the batch gets once all are."""
        if not lengths:
            return None
        best = next((c for c in self.captured if c.bucket.holds(lengths)), None)
        return best if best is not None and best.graph is not None else None

    def _body(self, captured: _Captured) -> torch.Tensor:
        b = captured.bucket
        forward = self.runner.begin(
            captured.ids, captured.positions, captured.cu_seqlens, [b.longest], max_len=b.longest
        )
        forward.finish()
        return self.runner.final_norm_rows(forward.hidden.index_select(0, captured.last))
