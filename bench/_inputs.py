"""The inputs of bench/engine.py: seeded English-ish texts built from the Qwen3 tokenizer's
own plain-word tokens, cut to exact token counts for each workload, and their description."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from bench._workloads import WORKLOADS, Sizes


class TextMaker:
    """Seeded English-ish text from the tokenizer's own plain-word tokens, cut to an exact
    token count (content tokens; the end-of-text that both systems append comes on top)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        ids = sorted(i for t, i in tokenizer.get_vocab().items() if re.fullmatch(r"Ġ[a-z]{3,}", t))
        self.words = [tokenizer.decode([i]).strip() for i in ids]

    def _raw(self, words: int, rng: np.random.Generator) -> str:
        picked = [self.words[i] for i in rng.integers(0, len(self.words), words)]
        out: list[str] = []
        for index, word in enumerate(picked):
            sentence_start = index == 0 or out[-1].endswith(".")
            out.append(word.capitalize() if sentence_start else word)
            if rng.random() < 0.07:
                out[-1] += "."
        return " ".join(out)

    def make(self, content_tokens: Sequence[int], rng: np.random.Generator) -> list[str]:
        texts = [self._raw(n, rng) for n in content_tokens]
        for _ in range(4):  # decode(cut) rarely re-tokenises to a different count
            encoded = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
            if all(len(e) == n for e, n in zip(encoded, content_tokens, strict=True)):
                break
            texts = [
                self.tokenizer.decode(e[:n]) if len(e) != n else t
                for t, e, n in zip(texts, encoded, content_tokens, strict=True)
            ]
        return texts


def _rng(seed: int, workload: str) -> np.random.Generator:
    return np.random.default_rng([seed, WORKLOADS.index(workload)])


def query_lengths(count: int, rng: np.random.Generator) -> list[int]:
    return [int(n) for n in rng.integers(8, 49, count)]  # total tokens, EOS included


def passage_lengths(count: int, rng: np.random.Generator) -> list[int]:
    raw = rng.lognormal(mean=np.log(180.0), sigma=0.6, size=count)
    return [int(n) for n in np.clip(np.rint(raw), 16, 1024)]


def make_texts(maker: TextMaker, totals: Sequence[int], rng: np.random.Generator) -> list[str]:
    """Texts whose token sequences, with the appended end-of-text, have `totals` tokens."""
    return maker.make([n - 1 for n in totals], rng)


def make_inputs(
    maker: TextMaker, workloads: list[str], sizes: Sizes, seed: int
) -> dict[str, list[str]]:
    texts: dict[str, list[str]] = {}
    if "queries" in workloads:
        rng = _rng(seed, "queries")
        texts["queries"] = make_texts(maker, query_lengths(sizes.queries, rng), rng)
    if "passages" in workloads:
        rng = _rng(seed, "passages")
        texts["passages"] = make_texts(maker, passage_lengths(sizes.passages, rng), rng)
    if "long" in workloads:
        rng = _rng(seed, "long")
        texts["long"] = make_texts(maker, sizes.long_lengths, rng)
    if "latency" in workloads:
        texts["latency"] = make_texts(maker, [16], _rng(seed, "latency"))
    if "mixed" in workloads:
        rng = _rng(seed, "mixed")
        texts["mixed_bulk"] = make_texts(maker, passage_lengths(sizes.mixed_bulk, rng), rng)
        texts["mixed_queries"] = make_texts(maker, [16] * 64, rng)
    return texts


def describe_inputs(tokenizer: Any, texts: dict[str, list[str]]) -> dict[str, Any]:
    described = {}
    for name, items in texts.items():
        counts = [len(ids) + 1 for ids in tokenizer(items, add_special_tokens=False)["input_ids"]]
        described[name] = {
            "count": len(items),
            "tokens_total": sum(counts),
            "tokens_min": min(counts),
            "tokens_mean": sum(counts) / len(counts),
            "tokens_max": max(counts),
        }
    return described
