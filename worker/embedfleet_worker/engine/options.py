"""Per-request embedding options (the OpenAI fields plus embedfleet's extensions)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from embedfleet_worker.engine.errors import InvalidInputError

MIN_DIMENSIONS = 32


class InputType(StrEnum):
    QUERY = "query"
    DOCUMENT = "document"


@dataclass(frozen=True)
class EmbedOptions:
    instruction: str | None = None
    input_type: InputType | None = None
    normalize: bool | None = None  # None: the model's configured default
    dimensions: int | None = None  # Matryoshka truncation
    truncate: bool = True  # False: an over-long input is an error instead of being cut

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
