"""Rerank parity on the GPU (`pytest -m gpu tests/gpu`): the Qwen3-Reranker-4B architecture with
random weights in bf16, our runner's score head against transformers' Qwen3ForCausalLM in bf16
scoring the same token ids as the model card does (P("yes") over "yes" and "no" at the last
position): Spearman rank correlation >= 0.999 and max abs difference <= 0.01. And shared
prefixes (a reranker's prompt and query computed once) against inputs computed whole."""

from __future__ import annotations

import pytest
import torch

from bench._systems import ARCHS, COMMON_ARCH
from embedfleet_worker.model.runners.qwen3 import Qwen3Runner
from embedfleet_worker.model.runners.qwen3_checkpoint import Qwen3Shape
from tests.gpu.test_qwen3_gpu_parity import bf16_on_cuda, build

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
YES, NO = 9693, 2152  # "yes" and "no" in the Qwen3 tokenizer


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ranks = [t.argsort().argsort().double() for t in (a, b)]
    return float(torch.corrcoef(torch.stack(ranks))[0, 1])


def test_4b_reranker_scores_match_transformers_bf16() -> None:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(**COMMON_ARCH, **ARCHS["4b"], attn_implementation="sdpa")
    assert not config.tie_word_embeddings  # as Qwen3-Reranker-4B: an LM head of its own
    model = bf16_on_cuda(Qwen3ForCausalLM, config)
    state = {k.removeprefix("model."): v for k, v in model.state_dict().items()}
    rows = torch.stack([state["lm_head.weight"][YES], state["lm_head.weight"][NO]])
    runner = Qwen3Runner(
        Qwen3Shape.from_config(config.to_dict()), state, device=torch.device("cuda"),
        dtype=torch.bfloat16, score_rows=rows,
    )  # fmt: skip
    runner.prepare()
    generator = torch.Generator().manual_seed(3)
    lengths = [20, 64, 130, 300, 700, 1500, 33, 90] * 8  # 64 pairs
    sequences = [torch.randint(0, 151643, (n,), generator=generator).tolist() for n in lengths]
    ours = torch.cat([runner.embed(sequences[i : i + 16]) for i in range(0, 64, 16)])[:, 0]
    theirs = []
    with torch.inference_mode():
        for sequence in sequences:
            logits = model(input_ids=torch.tensor([sequence], device="cuda")).logits[0, -1]
            pair = torch.stack([logits[NO], logits[YES]]).float()
            theirs.append(torch.log_softmax(pair, dim=0)[1].exp())
    truth = torch.stack(theirs).cpu()
    ours = ours.float().cpu()
    rho, gap = spearman(ours, truth), (ours - truth).abs().max().item()
    print(f"4B reranker bf16 vs transformers bf16: Spearman {rho:.5f}, max abs {gap:.5f}")
    assert rho >= 0.999
    assert gap <= 0.01


@pytest.mark.parametrize(
    "lengths",
    [[30, 50, 300, 1000] * 4, [5000, 4500, 4200]],  # varlen FlashAttention; per-sequence SDPA
    ids=["flash", "sdpa"],
)
def test_shared_prefixes_match_whole_inputs_on_the_gpu(lengths: list[int]) -> None:
    """Varlen FlashAttention with fewer queries than keys aligns its causal mask at the end;
    the long inputs' SDPA path gets an explicit mask: both as computing each input whole."""
    _, runner = build("0.6b")
    generator = torch.Generator().manual_seed(4)
    prefix = torch.randint(0, 151643, (120,), generator=generator).tolist()
    sequences = [
        prefix + torch.randint(0, 151643, (n,), generator=generator).tolist() for n in lengths
    ]
    with torch.inference_mode():
        whole = runner.start(sequences).result()
        runner.share_prefixes = True
        shared = runner.start(sequences).result()
    cosine = torch.nn.functional.cosine_similarity(shared, whole, dim=-1)
    print(f"shared vs whole, {lengths[:4]}...: min cosine {cosine.min().item():.6f}")
    assert cosine.min().item() >= 0.999, cosine
