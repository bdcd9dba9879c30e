"""Turns request inputs (strings or token ids) into the exact token sequences the model's
authors intend: instruction prompt, the model's special-token template, truncation that keeps
the closing token, and for last-token pooling a terminator guaranteed exactly once."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from embedfleet_worker.engine.errors import InputTooLongError, InvalidInputError
from embedfleet_worker.engine.options import (
    EmbedOptions,
    TruncationSide,
    effective_instruction,
    query_text,
)
from embedfleet_worker.engine.pooling import PoolingMode

# Qwen3-Embedding's official tokenizer appends this token; last-token pooling reads it.
QWEN_TERMINATOR = "<|endoftext|>"

Input = str | Sequence[int]


@dataclass(frozen=True)
class SequenceTemplate:
    """Special tokens around one sequence's content, e.g. BERT's [CLS] ... [SEP]."""

    prefix: tuple[int, ...] = ()
    suffix: tuple[int, ...] = ()
    # Last-token pooling: the suffix must end with this id, and the content must not.
    terminator: int | None = None

    @property
    def overhead(self) -> int:
        return len(self.prefix) + len(self.suffix)


def apply_template(
    content: Sequence[int],
    template: SequenceTemplate,
    *,
    max_tokens: int,
    truncate: bool,
    index: int = 0,
    side: TruncationSide = TruncationSide.RIGHT,
    keep_head: int = 0,
) -> list[int]:
    """prefix + content + suffix, cutting the content (never the template) to `max_tokens`:
    its end (`side` right) or its start (left), where the first `keep_head` content tokens (an
    instruction prompt) stay."""
    body = list(content)
    if template.terminator is not None:
        # A terminator the user (or a tokenizer's post-processor) already put at the end
        # would be doubled; it is the template's job to add exactly one.
        while body and body[-1] == template.terminator:
            body.pop()
    room = max_tokens - template.overhead
    if room < 1:
        raise ValueError(f"max_tokens={max_tokens} leaves no room inside the template")
    if len(body) > room:
        if not truncate:
            raise InputTooLongError(
                f"input {index} has {len(body) + template.overhead} tokens, more than the "
                f"maximum of {max_tokens}; shorten it or allow truncation",
                param="input",
            )
        if side is TruncationSide.LEFT:
            head = min(keep_head, room - 1)  # at least one token of the input itself
            body = body[:head] + body[len(body) - (room - head) :]
        else:
            body = body[:room]
    return [*template.prefix, *body, *template.suffix]


def fit(
    content: Sequence[int],
    template: SequenceTemplate,
    limit: int,
    options: EmbedOptions,
    index: int,
    keep_head: int = 0,
) -> list[int]:
    """apply_template with a request's truncation options (`limit`: InputEncoder.limit)."""
    return apply_template(
        content,
        template,
        max_tokens=limit,
        truncate=options.truncate,
        index=index,
        side=options.truncation_side,
        keep_head=keep_head,
    )


def probe_template(tokenizer: Any, pooling: PoolingMode) -> SequenceTemplate:
    """Reads the special-token template off the tokenizer by encoding a probe with and without
    special tokens. For last-token pooling the sequence must end in a terminator: the
    tokenizer's own closing token if its post-processor adds one, else `<|endoftext|>`."""
    probe = "embedfleet"
    bare: list[int] = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full: list[int] = tokenizer(probe, add_special_tokens=True)["input_ids"]
    start = next(
        (i for i in range(len(full) - len(bare) + 1) if full[i : i + len(bare)] == bare), None
    )
    if start is None:
        raise ValueError("cannot locate the content inside the tokenizer's template")
    prefix, suffix = tuple(full[:start]), tuple(full[start + len(bare) :])
    if pooling is not PoolingMode.LAST_TOKEN:
        return SequenceTemplate(prefix, suffix)
    if suffix:
        return SequenceTemplate(prefix, suffix, terminator=suffix[-1])
    terminator = tokenizer.convert_tokens_to_ids(QWEN_TERMINATOR)
    if not isinstance(terminator, int) or terminator == tokenizer.unk_token_id:
        terminator = tokenizer.eos_token_id
    if terminator is None:
        raise ValueError("last-token pooling needs an end-of-text token; the tokenizer has none")
    return SequenceTemplate(prefix, (terminator,), terminator=terminator)


class InputEncoder:
    """Stateless after construction, so it is safe to call from several threads at once."""

    def __init__(
        self,
        tokenizer: Any,
        template: SequenceTemplate,
        *,
        max_input_tokens: int,
        vocab_size: int,
        default_instruction: str | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.rust = _rust_tokenizer(tokenizer)  # what encodes, when the tokenizer is fast
        self.template = template
        self.max_input_tokens = max_input_tokens
        self.vocab_size = vocab_size
        self.default_instruction = default_instruction

    def format_text(self, text: str, options: EmbedOptions) -> str:
        instruction = effective_instruction(options, self.default_instruction)
        return text if instruction is None else query_text(instruction, text)

    def encode(self, inputs: Sequence[Input], options: EmbedOptions) -> list[list[int]]:
        """One token sequence per input, in order; raises InvalidInputError naming the input."""
        limit = self.limit(options, self.template)
        texts: list[str] = []
        for index, item in enumerate(inputs):
            if isinstance(item, str):
                if not item:
                    raise InvalidInputError(f"input {index} is an empty string", param="input")
                texts.append(self.format_text(item, options))
        encoded_texts = iter(self.tokenize(texts)) if texts else iter(())
        instruction = effective_instruction(options, self.default_instruction)
        prompt: list[int] = []
        if instruction is not None and (
            options.truncation_side is TruncationSide.LEFT or len(texts) < len(inputs)
        ):
            prompt = self.tokenize([query_text(instruction, "")])[0]
        sequences: list[list[int]] = []
        for index, item in enumerate(inputs):
            if isinstance(item, str):
                content = next(encoded_texts)
                # The prompt as the whole text's tokens begin (a merge across its end may
                # shorten it): kept whole when the input's start is cut.
                head = common_prefix(prompt, content)
            else:
                content = [*prompt, *self._check_token_ids(item, index)]
                head = len(prompt)
            sequences.append(fit(content, self.template, limit, options, index, head))
        return sequences

    def limit(self, options: EmbedOptions, template: SequenceTemplate) -> int:
        """The most tokens an input may have for this request, `template` included."""
        if options.max_tokens is None:
            return self.max_input_tokens
        least = template.overhead + 1
        if not least <= options.max_tokens <= self.max_input_tokens:
            raise InvalidInputError(
                f"truncate_prompt_tokens must be between {least} and {self.max_input_tokens} "
                f"for this model (its maximum), got {options.max_tokens}",
                param="truncate_prompt_tokens",
            )
        return options.max_tokens

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Texts as token ids, no special tokens, nothing cut."""
        if self.rust is not None:  # the Rust tokenizer itself: no Python per call or token
            if _is_small(texts):
                # encode_batch hands even one text to its thread pool and blocks the caller
                # (here: the event loop) until a pool thread has woken up and done it. But
                # `encode` holds the GIL throughout (an 8K-token text: ~50 ms on the H200's
                # host, stalling the event loop from a pool thread), so only small requests.
                return [self.rust.encode(t, add_special_tokens=False).ids for t in texts]
            return [e.ids for e in self.rust.encode_batch(texts, add_special_tokens=False)]
        ids: list[list[int]] = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return ids

    def _check_token_ids(self, ids: Sequence[int], index: int) -> list[int]:
        if len(ids) == 0:
            raise InvalidInputError(f"input {index} is an empty list of token ids", param="input")
        for token in ids:
            if isinstance(token, bool) or not isinstance(token, int):
                raise InvalidInputError(f"input {index} holds a non-integer token", param="input")
            if not 0 <= token < self.vocab_size:
                raise InvalidInputError(
                    f"input {index} holds token id {token}, outside the vocabulary "
                    f"[0, {self.vocab_size})",
                    param="input",
                )
        return list(ids)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


_SEQUENTIAL_TEXTS = 8  # up to this many texts are tokenised one by one on the caller's thread


class RequestEncoder:
    """Tokenises a request for an async caller: bulk requests on a thread pool (off the event
    loop, overlapping the model), small ones (queries) at once on the caller's thread, where a
    query takes tens of microseconds and a thread hand-off would cost more than that."""

    def __init__(self, encoder: InputEncoder, threads: int) -> None:
        self.encoder = encoder
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="embedfleet-tokenize")

    async def encode(self, inputs: Sequence[Input], options: EmbedOptions) -> list[list[int]]:
        if _is_small(inputs):
            return self.encoder.encode(inputs, options)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.encoder.encode, inputs, options)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _is_small(inputs: Sequence[Input]) -> bool:
    """A request cheap to tokenise: a few short inputs (roughly 4 characters per token)."""
    if len(inputs) > _SEQUENTIAL_TEXTS:
        return False
    return sum(len(i) if isinstance(i, str) else len(i) * 4 for i in inputs) <= 8192


def _rust_tokenizer(tokenizer: Any) -> Any | None:
    """The fast tokenizer's Rust `tokenizers.Tokenizer` (or a copy of one given as it is: see
    model/tokenizer_cache.py), set to neither truncate nor pad (a model's tokenizer.json may
    ask for either; transformers resets that on every call, which costs most of a short
    query's tokenisation time). None for a slow tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    if backend is None or not hasattr(backend, "encode_batch") or not hasattr(backend, "to_str"):
        return None
    try:
        rust = backend.__class__.from_str(backend.to_str())  # a copy: the tokenizer's stays
    except Exception:  # a component that does not serialise: transformers' call it is
        return None
    rust.no_truncation()
    rust.no_padding()
    return rust
