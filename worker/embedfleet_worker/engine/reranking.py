"""A Qwen3 reranker's input: each (query, document) pair in the prompt its authors publish
(Qwen/Qwen3-Reranker model card), its score P("yes") over "yes" and "no" at the last
position (the runner's score head). A document too long for the context is cut at its end,
and the prompt's closing tokens (the assistant turn and the empty think block) stay."""

from __future__ import annotations

from collections.abc import Sequence

from embedfleet_worker.engine.errors import InvalidInputError
from embedfleet_worker.engine.options import EmbedOptions
from embedfleet_worker.engine.tokenization import (
    InputEncoder,
    SequenceTemplate,
    common_prefix,
    fit,
)

SYSTEM = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".'
)
PREFIX = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n"
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


def pair_text(instruction: str, query: str, document: str) -> str:
    return f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}"


class PairEncoder:
    """Token sequences for a query against each document, from the worker's input encoder
    (its tokenizer and context)."""

    def __init__(self, encoder: InputEncoder) -> None:
        self.encoder = encoder
        prefix, suffix = encoder.tokenize([PREFIX, SUFFIX])
        self.template = SequenceTemplate(tuple(prefix), tuple(suffix))

    def encode(
        self,
        query: str,
        documents: Sequence[str],
        options: EmbedOptions,
        instruction: str | None = None,
    ) -> list[list[int]]:
        if not query:
            raise InvalidInputError("query must not be empty", param="query")
        for index, document in enumerate(documents):
            if not document:
                raise InvalidInputError(f"document {index} is an empty string", param="documents")
        task = instruction if instruction is not None else DEFAULT_INSTRUCTION
        limit = self.encoder.limit(options, self.template)
        head, *contents = self.encoder.tokenize(
            [pair_text(task, query, ""), *(pair_text(task, query, d) for d in documents)]
        )
        # A left cut keeps the instruction and the query, and cuts the document's start.
        return [
            fit(content, self.template, limit, options, index, common_prefix(head, content))
            for index, content in enumerate(contents)
        ]
