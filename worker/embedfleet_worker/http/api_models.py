"""Request and response bodies of the OpenAI-compatible API (they also make the OpenAPI
schema). Field semantics: DESIGN.md's request path."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from embedfleet_worker.engine.options import InputType, TruncationSide

TokenIds = list[Annotated[StrictInt, Field(ge=0)]]
EmbeddingInput = StrictStr | list[StrictStr] | TokenIds | list[TokenIds]


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    input: EmbeddingInput = Field(
        description="A string, a list of strings, a list of token ids, or a list of lists of "
        "token ids."
    )
    model: StrictStr | None = Field(default=None, description="A served model name.")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = Field(default=None, description="Matryoshka truncation.")
    user: StrictStr | None = None
    instruction: StrictStr | None = Field(
        default=None, description="Task text: the input becomes `Instruct: ...\\nQuery:...`."
    )
    input_type: InputType | None = None
    normalize: StrictBool | None = None
    truncate: StrictBool = True
    truncate_prompt_tokens: StrictInt | None = Field(
        default=None,
        description="Cut each input to this many tokens, the model's template included "
        "(-1: to the model's maximum), as vLLM names it.",
    )
    truncation_side: TruncationSide = Field(
        default=TruncationSide.RIGHT,
        description="right: keep an over-long input's start; left: keep its end (an "
        "instruction prompt stays whole).",
    )


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: Usage


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    input: StrictStr | list[StrictStr]
    model: StrictStr | None = None
    # On a reranker worker: the query each input (a document) is paired with, as /v1/rerank
    # scores them; the answer then counts the whole prompt.
    query: StrictStr | None = None
    instruction: StrictStr | None = None
    input_type: InputType | None = None
    truncate: StrictBool = True
    truncate_prompt_tokens: StrictInt | None = None
    truncation_side: TruncationSide = TruncationSide.RIGHT


class TokenizeResponse(BaseModel):
    tokens: list[list[int]]
    counts: list[int]
    model: str


class RerankRequest(BaseModel):
    """The Cohere/Jina rerank request, as vLLM and TEI also take it."""

    model_config = ConfigDict(extra="ignore")

    model: StrictStr | None = Field(default=None, description="A served model name.")
    query: StrictStr
    documents: list[StrictStr]
    top_n: StrictInt | None = Field(
        default=None, ge=1, description="Only the best n results (default: all)."
    )
    return_documents: StrictBool = False
    instruction: StrictStr | None = Field(
        default=None, description="The task (default: web search); in the reranker's prompt."
    )
    truncate: StrictBool = True
    truncate_prompt_tokens: StrictInt | None = None
    truncation_side: TruncationSide = TruncationSide.RIGHT


class RerankDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: RerankDocument | None = None


class RerankResponse(BaseModel):
    id: str
    model: str
    results: list[RerankResult]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "embedfleet"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail
