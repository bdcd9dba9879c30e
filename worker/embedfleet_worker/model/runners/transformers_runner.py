"""Any Hugging Face encoder (BERT family first) through transformers' AutoModel, on padded
batches, pooled as the model's sentence-transformers configuration says."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from embedfleet_worker.engine.pooling import PoolingMode, pool_padded


class TransformersRunner:
    def __init__(
        self,
        model: Any,
        *,
        pooling: PoolingMode,
        pad_token_id: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.model = model
        self.pooling = pooling
        self.pad_token_id = pad_token_id
        self.device = device
        self.dtype = dtype
        self.hidden_size = int(model.config.hidden_size)
        self.max_positions = int(getattr(model.config, "max_position_embeddings", 1 << 30))

    @classmethod
    def from_pretrained(
        cls,
        model_dir: Path,
        *,
        pooling: PoolingMode,
        pad_token_id: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> TransformersRunner:
        from transformers import AutoModel

        model = AutoModel.from_pretrained(
            str(model_dir),
            dtype=dtype,
            trust_remote_code=False,
            attn_implementation="sdpa",
            local_files_only=True,
        )
        model.to(device).eval()
        return cls(model, pooling=pooling, pad_token_id=pad_token_id, device=device, dtype=dtype)

    def preparation(self) -> Iterator[bool]:
        """Nothing to build ahead: transformers runs eagerly (the engine's warm-up pass still
        runs on the compute thread)."""
        return iter(())

    def prepare(self) -> None:
        pass

    @torch.inference_mode()
    def embed(self, sequences: Sequence[Sequence[int]]) -> torch.Tensor:
        if not sequences:
            return torch.empty(0, self.hidden_size)
        if any(len(s) == 0 for s in sequences):
            raise ValueError("empty sequence")
        longest = max(len(s) for s in sequences)
        if longest > self.max_positions:
            raise ValueError(f"sequence of {longest} tokens exceeds {self.max_positions} positions")
        # Right padding: absolute positions stay 0.. for every sequence, as in training.
        ids = torch.full((len(sequences), longest), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), longest), dtype=torch.long)
        for row, sequence in enumerate(sequences):
            ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
            mask[row, : len(sequence)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return pool_padded(hidden, mask, self.pooling).cpu()
