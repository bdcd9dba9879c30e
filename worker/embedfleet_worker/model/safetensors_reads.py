"""Reads tensors from a safetensors file straight into device memory: the file's bytes in large
reads on a few threads, each into a pinned buffer of its own that is copied to the device while
the thread reads its next chunk.

safetensors' own loader copies one tensor at a time from its memory map, through pageable
memory, holding the interpreter: a 4B checkpoint (7.5 GB) took 3-4 s on an H200 machine, and
8-11 s while the HTTP process started beside it (BENCHMARKS.md). The format is simple enough to
read directly: 8 bytes of header length, a JSON header of dtypes, shapes and byte ranges, then
the data."""

from __future__ import annotations

import json
import os
import struct
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

CHUNK_BYTES = 64 << 20
READ_THREADS = 4
_MAX_HEADER_BYTES = 100 << 20  # as safetensors itself refuses larger headers

_DTYPES = {
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "F32": torch.float32,
    "F64": torch.float64,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass(frozen=True)
class TensorSpan:
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # byte offsets in the file
    end: int


# A chunk: its file offset, its length, and its pieces: (tensor, offset in the chunk, offset in
# the tensor's bytes, length).
_Chunk = tuple[int, int, list[tuple[str, int, int, int]]]


def read_header(path: Path) -> dict[str, TensorSpan]:
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) != 8:
            raise ValueError(f"{path} is not a safetensors file (too short)")
        (size,) = struct.unpack("<Q", prefix)
        if size > _MAX_HEADER_BYTES:
            raise ValueError(f"{path}: safetensors header of {size} bytes is too large")
        header = json.loads(handle.read(size))
    spans: dict[str, TensorSpan] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES.get(info["dtype"])
        if dtype is None:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        spans[name] = TensorSpan(dtype, tuple(info["shape"]), 8 + size + begin, 8 + size + end)
    return spans


def read_tensors(path: Path, names: Iterable[str], device: torch.device) -> dict[str, torch.Tensor]:
    """The named tensors of one safetensors file, on `device`, in the file's dtypes."""
    spans = read_header(path)
    wanted = {name: spans[name] for name in names}
    raw = {
        name: torch.empty(span.end - span.start, dtype=torch.uint8, device=device)
        for name, span in wanted.items()
    }
    chunks = plan_chunks(wanted, CHUNK_BYTES)
    fd = os.open(path, os.O_RDONLY)
    try:
        if device.type == "cuda":
            _read_through_pinned(fd, chunks, raw, device)
        else:
            for offset, _, pieces in chunks:
                for name, at, into, count in pieces:
                    _read_exact(fd, raw[name].numpy()[into : into + count], offset + at)
    finally:
        os.close(fd)
    return {name: raw[name].view(span.dtype).reshape(span.shape) for name, span in wanted.items()}


def read_rows(path: Path, name: str, rows: list[int], device: torch.device) -> torch.Tensor:
    """Rows of one 2-D tensor (a few of an LM head's 151K), without reading the rest."""
    span = read_header(path)[name]
    if len(span.shape) != 2:
        raise ValueError(f"{path}: {name} is not a matrix")
    width = span.shape[1] * span.dtype.itemsize
    out = torch.empty(len(rows), width, dtype=torch.uint8)
    fd = os.open(path, os.O_RDONLY)
    try:
        for i, row in enumerate(rows):
            if not 0 <= row < span.shape[0]:
                raise ValueError(f"{path}: {name} has no row {row}")
            _read_exact(fd, out[i].numpy(), span.start + row * width)
    finally:
        os.close(fd)
    return out.view(span.dtype).to(device)


def plan_chunks(spans: dict[str, TensorSpan], limit: int) -> list[_Chunk]:
    """The wanted tensors' bytes as reads of at most `limit` bytes, in file order: a read
    spans neighbouring tensors, a tensor larger than `limit` spans several reads, and the
    bytes of tensors not wanted are skipped."""
    chunks: list[_Chunk] = []
    start, length = -1, 0
    pieces: list[tuple[str, int, int, int]] = []
    for name, span in sorted(spans.items(), key=lambda item: item[1].start):
        position = span.start
        while position < span.end:
            if start + length != position or length == limit:
                if pieces:
                    chunks.append((start, length, pieces))
                start, length, pieces = position, 0, []
            count = min(span.end - position, limit - length)
            pieces.append((name, length, position - span.start, count))
            length += count
            position += count
    if pieces:
        chunks.append((start, length, pieces))
    return chunks


def _read_through_pinned(
    fd: int, chunks: list[_Chunk], raw: dict[str, torch.Tensor], device: torch.device
) -> None:
    taken = iter(range(len(chunks)))
    lock = threading.Lock()
    # Inference mode is per thread: the reading threads copy into tensors the caller's mode
    # made (inference tensors under the loader's torch.inference_mode).
    inference = torch.is_inference_mode_enabled()

    def reader() -> None:
        with torch.inference_mode(inference):
            read_chunks()

    def read_chunks() -> None:
        size = max((length for _, length, _ in chunks), default=0)
        buffer = torch.empty(size, dtype=torch.uint8, pin_memory=True)
        stream = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]
        while True:
            with lock:
                index = next(taken, None)
            if index is None:
                break
            offset, length, pieces = chunks[index]
            stream.synchronize()  # its last copies are done
            _read_exact(fd, buffer.numpy()[:length], offset)
            with torch.cuda.stream(stream):
                for name, at, into, count in pieces:
                    raw[name][into : into + count].copy_(buffer[at : at + count], non_blocking=True)
        stream.synchronize()

    with ThreadPoolExecutor(READ_THREADS, thread_name_prefix="embedfleet-read") as pool:
        for done in [pool.submit(reader) for _ in range(min(READ_THREADS, len(chunks)))]:
            done.result()


def _read_exact(fd: int, into: npt.NDArray[np.uint8], offset: int) -> None:
    view = memoryview(into.data)
    while view:
        got = os.preadv(fd, [view], offset)
        if got == 0:
            raise ValueError("safetensors file ends before its header says")
        view, offset = view[got:], offset + got
