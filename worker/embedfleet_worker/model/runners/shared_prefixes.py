"""Pure: a packed batch in which inputs that begin with the same tokens (the query instruction;
a reranker's system prompt, instruction and query) compute that prefix once.

A causal model's states at a prefix's positions depend on the prefix alone, so every input that
begins with it would compute the same keys and values there. The plan packs each input's own
part (after its group's prefix, or all of it), then each shared prefix once; an input's keys are
its prefix's followed by its own, its positions continue after the prefix, and its last token
(the pooled one) stays the last of its own part. A 1-query x 64-document rerank request then
computes its prompt and query once instead of 64 times."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

# Shorter common prefixes are not worth the gathered keys (and are common by chance).
MIN_SHARED_PREFIX = 8


@dataclass(frozen=True)
class PrefixPlan:
    """What the runner packs: `parts[i]` for i < inputs is input i's own part, then one part
    per shared prefix. `first_positions[j]` is part j's first RoPE position; `key_ranges[j]`
    the token ranges, in packed order, that part j attends to (its prefix's, then its own)."""

    inputs: int
    parts: list[list[int]]
    first_positions: list[int]
    key_ranges: list[list[tuple[int, int]]]

    @property
    def offsets(self) -> list[int]:
        return list(itertools.accumulate((len(p) for p in self.parts), initial=0))

    @property
    def computed_tokens(self) -> int:
        return sum(len(p) for p in self.parts)


def plan_shared_prefixes(
    sequences: Sequence[Sequence[int]], min_prefix: int = MIN_SHARED_PREFIX
) -> PrefixPlan | None:
    """The plan, or None when no two inputs share a prefix of `min_prefix` tokens or more.
    Inputs are grouped by their first `min_prefix` tokens; a group shares its members' longest
    common prefix, short of the shortest member's last token (each keeps a token of its own)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, sequence in enumerate(sequences):
        if len(sequence) > min_prefix:
            groups.setdefault(tuple(sequence[:min_prefix]), []).append(index)
    prefixes: list[list[int]] = []
    shared: dict[int, tuple[int, int]] = {}  # input -> (its prefix's number, its length)
    for members in groups.values():
        if len(members) < 2:
            continue
        first = sequences[members[0]]
        length = min(len(sequences[i]) for i in members) - 1
        for i in members[1:]:
            length = _common_length(first, sequences[i], length)
        if length < min_prefix:
            continue
        for i in members:
            shared[i] = (len(prefixes), length)
        prefixes.append(list(first[:length]))
    if not prefixes:
        return None
    parts = [list(s[shared[i][1] :]) if i in shared else list(s) for i, s in enumerate(sequences)]
    parts += prefixes
    first_positions = [shared[i][1] if i in shared else 0 for i in range(len(sequences))]
    first_positions += [0] * len(prefixes)
    offsets = list(itertools.accumulate((len(p) for p in parts), initial=0))

    def span(part: int) -> tuple[int, int]:
        return offsets[part], offsets[part + 1]

    inputs = len(sequences)
    key_ranges = [
        [span(inputs + shared[i][0]), span(i)] if i in shared else [span(i)] for i in range(inputs)
    ]
    key_ranges += [[span(inputs + g)] for g in range(len(prefixes))]
    return PrefixPlan(inputs, parts, first_positions, key_ranges)


def _common_length(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    n = 0
    while n < limit and a[n] == b[n]:
        n += 1
    return n
