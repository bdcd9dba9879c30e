"""Reading a checkpoint's weights onto the GPU: safetensors' own loader (`safe_open` with a
device, one tensor at a time, as the worker read them before) against the worker's reader
(model/safetensors_reads.py: large reads on a few threads through pinned buffers), alternately,
on the same files (in the page cache after the first read, as on a node that served the model
before).

    PYTHONPATH=worker:. python3 -m bench.weights_read --model-dir /tmp/m4b --repeats 3
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from safetensors import safe_open

from embedfleet_worker.model.safetensors_reads import read_header, read_tensors


def _safetensors(files: list[Path], device: torch.device) -> dict[str, torch.Tensor]:
    out = {}
    for path in files:
        with safe_open(str(path), framework="pt", device=str(device)) as handle:
            for name in handle.keys():  # noqa: SIM118  (safe_open is not a mapping)
                out[name] = handle.get_tensor(name)
    return out


def _ours(files: list[Path], device: torch.device) -> dict[str, torch.Tensor]:
    out = {}
    for path in files:
        out.update(read_tensors(path, read_header(path), device))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device("cuda")
    files = sorted(args.model_dir.glob("*.safetensors"))
    size = sum(path.stat().st_size for path in files)
    torch.zeros(1, device=device)  # CUDA's start is not the reader's
    rows = []
    for repeat in range(args.repeats):
        for name, read in (("safetensors", _safetensors), ("embedfleet", _ours)):
            torch.cuda.synchronize()
            started = time.perf_counter()
            weights = read(files, device)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - started
            rows.append({"repeat": repeat, "reader": name, "seconds": round(seconds, 3),
                         "gb_per_s": round(size / seconds / 1e9, 2)})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
            del weights
            torch.cuda.empty_cache()
    report = {"gpu": torch.cuda.get_device_name(), "bytes": size, "rows": rows}
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
