"""A Qwen3-Embedding model folder with random weights, laid out as users download it: config,
safetensors, the Qwen3 tokenizer files and the sentence-transformers files that say
last-token pooling and normalisation. `embedfleet-worker serve --model <folder>` loads it
through the same code path as the real checkpoint (speed does not depend on weight values)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from bench._systems import DTYPES, build_model, make_config

TOKENIZER_FILES = ("merges.txt", "tokenizer.json", "tokenizer_config.json", "vocab.json")


def write_model_folder(
    folder: Path, arch: str, tokenizer_dir: Path, *, dtype: str = "bfloat16", seed: int = 0
) -> Path:
    if any(folder.glob("model*.safetensors*")):
        return folder  # written by an earlier run
    folder.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(make_config(arch), device, DTYPES[dtype], seed)
    model.save_pretrained(folder, safe_serialization=True)
    del model
    for name in TOKENIZER_FILES:
        shutil.copy(tokenizer_dir / name, folder / name)
    kinds = ("Transformer", "Pooling", "Normalize")
    paths = ("", "1_Pooling", "2_Normalize")
    modules = [
        {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
        for i, (kind, path) in enumerate(zip(kinds, paths, strict=True))
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    pooling = {"word_embedding_dimension": make_config(arch).hidden_size}
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({**pooling, "pooling_mode_lasttoken": True})
    )
    (folder / "2_Normalize").mkdir(exist_ok=True)
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 32768}))
    return folder
