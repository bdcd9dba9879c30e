"""`POST /v1/rerank` (the Cohere/Jina shape, as vLLM and TEI serve it): a query scored against
each document by the worker's reranker (engine/reranking.py), best first."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

import numpy as np

from embedfleet_worker.engine.errors import InvalidInputError
from embedfleet_worker.engine.options import EmbedOptions, with_truncation
from embedfleet_worker.engine.reranking import PairEncoder
from embedfleet_worker.http.api_models import (
    RerankDocument,
    RerankRequest,
    RerankResponse,
    RerankResult,
    TokenizeRequest,
    Usage,
)
from embedfleet_worker.http.embeddings import (
    engine_of,
    model_name,
    require_input_limit,
    require_unicode,
)
from embedfleet_worker.http.errors import wrong_task
from embedfleet_worker.model.files import Task

if TYPE_CHECKING:
    from embedfleet_worker.engine.client import EngineClient
    from embedfleet_worker.http.worker_state import WorkerState

RERANK_PATH = "/v1/rerank"


class RerankEndpoint:
    def __init__(self, state: WorkerState) -> None:
        self.state = state
        self._pairs: PairEncoder | None = None

    async def respond(self, body: RerankRequest) -> RerankResponse:
        state = self.state
        engine = engine_of(state)
        if engine.task is not Task.RERANK:
            raise wrong_task(engine.task, RERANK_PATH)
        require_unicode(body.documents, "documents", model=body.model, query=body.query,
                        instruction=body.instruction)  # fmt: skip
        name = model_name(state, body.model)
        if not body.documents:
            raise InvalidInputError("documents must not be empty", param="documents")
        require_input_limit(state, len(body.documents), "documents", param="documents")
        options = _options(body)
        sequences = await asyncio.to_thread(
            self._pairs_of(engine).encode, body.query, body.documents, options, body.instruction
        )
        result = await engine.run(sequences, options)
        state.metrics.inputs.inc(len(sequences))
        state.metrics.input_tokens.inc(result.total_tokens)
        scores = result.vectors[:, 0]
        order = np.argsort(-scores, kind="stable")[: body.top_n]
        return RerankResponse(
            id=f"rerank-{uuid.uuid4().hex}",
            model=name,
            results=[
                RerankResult(
                    index=int(i),
                    relevance_score=float(scores[i]),
                    document=RerankDocument(text=body.documents[i])
                    if body.return_documents
                    else None,
                )
                for i in order
            ],
            usage=Usage(prompt_tokens=result.total_tokens, total_tokens=result.total_tokens),
        )

    async def tokenize(
        self, engine: EngineClient, body: TokenizeRequest, documents: list[str]
    ) -> list[list[int]]:
        """/tokenize on a reranker worker: the tokens of each (query, document) prompt, as
        /v1/rerank would score them; elsewhere a `query` is refused rather than ignored."""
        if engine.task is not Task.RERANK:
            raise InvalidInputError(
                f"query is for a reranker worker's /tokenize; this worker serves task "
                f"'{engine.task}': send input alone",
                param="query",
            )
        if body.query is None:
            raise InvalidInputError(
                "this worker reranks: /tokenize counts (query, document) prompts as /v1/rerank "
                "scores them; give the query as `query` and the documents as `input`",
                param="query",
            )
        return await asyncio.to_thread(
            self._pairs_of(engine).encode, body.query, documents, _options(body), body.instruction
        )

    def _pairs_of(self, engine: EngineClient) -> PairEncoder:
        if self._pairs is None:
            self._pairs = PairEncoder(engine.encoder)
        return self._pairs


def _options(body: RerankRequest | TokenizeRequest) -> EmbedOptions:
    return with_truncation(
        EmbedOptions(normalize=False),
        body.truncate,
        body.truncate_prompt_tokens,
        body.truncation_side,
    )
