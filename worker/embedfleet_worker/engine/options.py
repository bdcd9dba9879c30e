"""Per-request embedding options (the OpenAI fields plus embedfleet's extensions)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum

from embedfleet_worker.engine.errors import InvalidInputError

MIN_DIMENSIONS = 32


class InputType(StrEnum):
    QUERY = "query"
    DOCUMENT = "document"


class TruncationSide(StrEnum):
    RIGHT = "right"  # keep the start of the input
    LEFT = "left"  # keep its end (an instruction prompt stays whole)


@dataclass(frozen=True)
class EmbedOptions:
    instruction: str | None = None
    input_type: InputType | None = None
    normalize: bool | None = None  # None: the model's configured default
    dimensions: int | None = None  # Matryoshka truncation
    truncate: bool = True  # False: an over-long input is an error instead of being cut
    max_tokens: int | None = None  # a cap below the model's, its template included
    truncation_side: TruncationSide = TruncationSide.RIGHT

    def validate(self, hidden_size: int) -> None:
        if self.dimensions is not None and not (MIN_DIMENSIONS <= self.dimensions <= hidden_size):
            raise InvalidInputError(
                f"dimensions must be between {MIN_DIMENSIONS} and {hidden_size} for this model, "
                f"got {self.dimensions}",
                param="dimensions",
            )
        if self.input_type is InputType.DOCUMENT and self.instruction is not None:
            raise InvalidInputError(
                "instruction applies to queries only; drop it or use input_type 'query'",
                param="instruction",
            )


def with_truncation(
    options: EmbedOptions,
    truncate: bool,
    truncate_prompt_tokens: int | None,
    truncation_side: str = TruncationSide.RIGHT,
) -> EmbedOptions:
    """`options` with a request's truncation fields: `truncate_prompt_tokens` as vLLM names it
    (k: cut each input to k tokens, the model's template included; -1: to the model's
    maximum; unset: to the maximum, and only if `truncate`), `truncation_side` which end goes."""
    param = "truncate_prompt_tokens"
    if truncate_prompt_tokens is not None:
        if truncate_prompt_tokens == 0 or truncate_prompt_tokens < -1:
            raise InvalidInputError(
                f"{param} must be -1 (the model's maximum) or a positive number of tokens, "
                f"got {truncate_prompt_tokens}",
                param=param,
            )
        if not truncate:
            raise InvalidInputError(
                f"{param} asks to cut inputs, and truncate false forbids it: drop one of them",
                param=param,
            )
    cap = None if truncate_prompt_tokens in (None, -1) else truncate_prompt_tokens
    return dataclasses.replace(
        options,
        truncate=truncate,
        max_tokens=cap,
        truncation_side=TruncationSide(truncation_side),
    )


def query_text(instruction: str, text: str) -> str:
    """The Qwen3-Embedding query format, byte for byte (no space after 'Query:')."""
    return f"Instruct: {instruction}\nQuery:{text}"


def effective_instruction(options: EmbedOptions, default_instruction: str | None) -> str | None:
    """Explicit instruction wins; a query with none gets the service default; documents none."""
    if options.instruction is not None:
        return options.instruction
    if options.input_type is InputType.QUERY:
        return default_instruction
    return None
