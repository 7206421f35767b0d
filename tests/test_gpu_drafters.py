"""Every drafting method on the CUDA fast path: float32 (TF32 off) greedy output equals the target's own greedy
output, token for token. Skipped without a CUDA GPU; run on the device by `bash scripts/gpu_check.sh`."""

from __future__ import annotations

import pytest
import torch
from test_gpu import CUDA, no_tf32, on_cuda  # noqa: F401  (no_tf32 is an autouse fixture)
from tiny_models import make_model

from specdec import GenerationConfig, SpeculationConfig, SpeculativeEngine, make_drafter

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
PROMPTS = [[5, 17, 99, 240, 31, 5, 17, 99], [250, 4, 4, 61, 9, 13, 200, 77, 120, 3, 45, 4, 61], [42, 42]]
MAX_NEW = 24


def reference(model, prompt: list[int]) -> list[int]:
    ids = torch.tensor([prompt], device=CUDA)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_NEW, do_sample=False)
    return out[0, len(prompt) :].tolist()


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("method", ["model", "ngram", "suffix", "layerskip-1", "layerskip-2"])
def test_every_drafter_is_exact_on_the_cuda_fast_path(family, method):
    target = on_cuda(make_model(family, seed=11, layers=4), family)
    expected = [reference(target.model, p) for p in PROMPTS]
    if method == "model":
        draft = on_cuda(make_model(family, seed=12, layers=1), "draft")
    elif method.startswith("layerskip"):
        draft = make_drafter("layerskip", layers=int(method[-1]))
    else:
        draft = make_drafter(method, **({"min_match": 1} if method == "suffix" else {}))
    engine = SpeculativeEngine(target, draft)
    assert engine.target.path.startswith("fast-")
    drafted = 0
    for k in (1, 3, 5, 8):
        for prompt, want in zip(PROMPTS, expected, strict=True):
            result = engine.generate(prompt, GenerationConfig(max_new_tokens=MAX_NEW), SpeculationConfig(k=k))
            assert result.token_ids[0] == want, f"k={k}"
            drafted += result.metrics.drafted_tokens
        batch = engine.generate(PROMPTS, GenerationConfig(max_new_tokens=MAX_NEW), SpeculationConfig(k=k))
        assert batch.token_ids == expected, f"batch, k={k}"
    assert drafted > 0
    streamed = [t for chunk in engine.stream(PROMPTS[0], GenerationConfig(max_new_tokens=MAX_NEW)) for t in chunk[0]]
    assert streamed == expected[0]
