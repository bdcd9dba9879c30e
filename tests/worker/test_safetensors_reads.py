"""Our safetensors reader (model/safetensors_reads.py) against safetensors' own loader: every
dtype the checkpoints use, odd sizes and offsets, tensors split across reads, tensors left out,
and files it must refuse. The pinned-buffer path to a GPU is tested in tests/gpu."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from embedfleet_worker.model import safetensors_reads
from embedfleet_worker.model.safetensors_reads import TensorSpan, plan_chunks, read_tensors


def tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "embed": torch.randn(37, 11, generator=g).to(torch.bfloat16),
        "norm": torch.randn(11, generator=g).to(torch.float16),
        "big": torch.randn(1000, 3, generator=g),
        "scalar": torch.tensor(3.5, dtype=torch.float64),
        "empty": torch.zeros(0, 4),
        "ids": torch.arange(13, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "bytes": torch.arange(7, dtype=torch.uint8),
    }


@pytest.mark.parametrize("chunk_bytes", [5, 64, 1 << 20])  # tensors split across reads, or not
def test_reads_what_safetensors_reads(
    tmp_path: Path, chunk_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(safetensors_reads, "CHUNK_BYTES", chunk_bytes)
    path = tmp_path / "model.safetensors"
    save_file(tensors(), str(path))
    theirs = load_file(str(path))
    ours = read_tensors(path, theirs, torch.device("cpu"))
    assert ours.keys() == theirs.keys()
    for name, tensor in theirs.items():
        assert ours[name].dtype == tensor.dtype, name
        assert ours[name].shape == tensor.shape, name
        assert torch.equal(ours[name], tensor), name


def test_reads_only_the_tensors_asked_for(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_file(tensors(), str(path))
    ours = read_tensors(path, ["norm", "ids"], torch.device("cpu"))
    assert sorted(ours) == ["ids", "norm"]
    assert torch.equal(ours["ids"], torch.arange(13))


def span(start: int, end: int) -> TensorSpan:
    return TensorSpan(torch.uint8, (end - start,), start, end)


@pytest.mark.parametrize(
    ("spans", "limit", "chunks"),
    [
        # neighbours share a read
        ({"a": span(8, 12), "b": span(12, 20)}, 64,
         [(8, 12, [("a", 0, 0, 4), ("b", 4, 0, 8)])]),
        # a tensor larger than a read spans several
        ({"a": span(0, 10)}, 4,
         [(0, 4, [("a", 0, 0, 4)]), (4, 4, [("a", 0, 4, 4)]), (8, 2, [("a", 0, 8, 2)])]),
        # bytes of a tensor not wanted are skipped
        ({"a": span(0, 4), "c": span(10, 12)}, 64,
         [(0, 4, [("a", 0, 0, 4)]), (10, 2, [("c", 0, 0, 2)])]),
        # file order, whatever the order asked; empty tensors need no read
        ({"b": span(4, 6), "e": span(6, 6), "a": span(0, 4)}, 64,
         [(0, 6, [("a", 0, 0, 4), ("b", 4, 0, 2)])]),
        ({}, 64, []),
    ],
)  # fmt: skip
def test_plan_chunks(
    spans: dict[str, TensorSpan], limit: int, chunks: list[tuple[int, int, list[object]]]
) -> None:
    assert plan_chunks(spans, limit) == chunks


def test_refuses_a_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_file(tensors(), str(path))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="ends before"):
        read_tensors(path, list(tensors()), torch.device("cpu"))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"abc", "too short"),
        (struct.pack("<Q", 1 << 40), "too large"),
        (struct.pack("<Q", 54) + b'{"x":{"dtype":"C64","shape":[1],"data_offsets":[0,8]}}',
         "unsupported dtype"),
    ],
)  # fmt: skip
def test_refuses_what_is_not_a_safetensors_file(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        read_tensors(path, [], torch.device("cpu"))
