"""Shared prefixes on the GPU (model/runners/shared_prefixes.py), measured in one run on one
runner: each workload with every input computed whole, then with shared prefixes, and the plain
transformers baseline on the same token ids, as input tokens per second (the tokens the inputs
hold, whatever was computed), with the agreement of the two runner modes.

Workloads: 256 queries with Qwen3-Embedding's recommended retrieval instruction (each text 8-24
tokens), and rerank requests of 1 query x 64 documents (200-400 tokens each) in the reranker's
prompt, cut into engine batches of at most 16,384 tokens. The runner is the embedding runner
(random weights): a reranker's score head is one dot product per input on top.

    PYTHONPATH=worker:. python3 -m bench.shared_prefixes --model 4b [--tokenizer DIR] [--json F]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench._inputs import TextMaker
from bench._measure import timed
from bench._systems import build_model, build_runner, load_tokenizer, make_config
from embedfleet_worker.engine.options import EmbedOptions, InputType
from embedfleet_worker.engine.pooling import PoolingMode
from embedfleet_worker.engine.reranking import PairEncoder
from embedfleet_worker.engine.tokenization import InputEncoder, probe_template
from embedfleet_worker.model.runners.shared_prefixes import plan_shared_prefixes

INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
BATCH_TOKENS = 16384


def batches(sequences: list[list[int]], budget: int = BATCH_TOKENS) -> list[list[list[int]]]:
    """In order, each batch at most `budget` tokens, as the engine plans them."""
    out: list[list[list[int]]] = [[]]
    for sequence in sequences:
        if out[-1] and sum(map(len, out[-1])) + len(sequence) > budget:
            out.append([])
        out[-1].append(sequence)
    return out


def transformers_last_token(model: Any, batch: list[list[int]], pad: int) -> torch.Tensor:
    """The baseline: left-padded batches of 16 through Qwen3Model, the last position pooled."""
    rows = []
    for i in range(0, len(batch), 16):
        part = batch[i : i + 16]
        width = max(map(len, part))
        ids = torch.tensor([[pad] * (width - len(s)) + s for s in part], device="cuda")
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in part], device="cuda")
        rows.append(model(input_ids=ids, attention_mask=mask).last_hidden_state[:, -1].float())
    return torch.cat(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="4b")
    parser.add_argument("--tokenizer", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    device, dtype = torch.device("cuda"), torch.bfloat16
    tokenizer = load_tokenizer(args.tokenizer)
    config = make_config(args.model)
    model = build_model(config, device, dtype, seed=0)
    runner = build_runner(model, config, device, dtype)
    encoder = InputEncoder(
        tokenizer, probe_template(tokenizer, PoolingMode.LAST_TOKEN),
        max_input_tokens=32768, vocab_size=runner.shape.vocab_size,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    maker = TextMaker(tokenizer)
    queries = maker.make(rng.integers(8, 25, 256).tolist(), rng)
    documents = maker.make(rng.integers(200, 401, 64).tolist(), rng)
    workloads = {
        "queries_with_instruction": encoder.encode(
            queries, EmbedOptions(instruction=INSTRUCTION, input_type=InputType.QUERY)
        ),
        "rerank_1x64": PairEncoder(encoder).encode(queries[0], documents, EmbedOptions()),
    }
    report: dict[str, Any] = {"gpu": torch.cuda.get_device_name(), "model": args.model}
    print(f"{report['gpu']}, {args.model} bf16: input tokens/s", flush=True)
    for name, sequences in workloads.items():
        planned = batches(sequences)
        tokens = sum(map(len, sequences))
        computed = sum(
            (plan.computed_tokens if (plan := plan_shared_prefixes(b)) else sum(map(len, b)))
            for b in planned
        )
        results = {}
        with torch.inference_mode():
            for shared in (False, True):
                runner.share_prefixes = shared
                seconds = timed(lambda p=planned: [runner.embed(b) for b in p], args.repeats, 1)  # type: ignore[misc]
                results[shared] = (tokens / seconds, torch.cat([runner.embed(b) for b in planned]))
            baseline = timed(
                lambda p=planned: [transformers_last_token(model, b, 151643) for b in p],  # type: ignore[misc]
                args.repeats, 1,
            )  # fmt: skip
        cosine = torch.nn.functional.cosine_similarity(results[True][1], results[False][1])
        row = {
            "inputs": len(sequences), "tokens": tokens, "computed_with_sharing": computed,
            "whole_tokens_per_s": round(results[False][0]),
            "shared_tokens_per_s": round(results[True][0]),
            "transformers_tokens_per_s": round(tokens / baseline),
            "shared_over_whole": round(results[True][0] / results[False][0], 2),
            "shared_over_transformers": round(results[True][0] * baseline / tokens, 2),
            "min_cosine_shared_vs_whole": round(cosine.min().item(), 6),
        }  # fmt: skip
        report[name] = row
        print(name, json.dumps(row), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
