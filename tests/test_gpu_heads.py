"""Medusa and EAGLE drafting, chains and trees, on the CUDA fast path in float32 (TF32 off): greedy output equals the
target's own greedy output, token for token, on the zoo target with its trained heads and on random Llama and Qwen2
targets with random heads. Skipped without a CUDA GPU; run on the device by `PARTS=heads bash scripts/gpu_check.sh`."""

from __future__ import annotations

import pytest
import torch
from test_gpu import CUDA, no_tf32, on_cuda  # noqa: F401  (no_tf32 is an autouse fixture)
from test_head_generation import GREEDY, IDS, METHODS, random_heads
from tiny_models import make_model

from specdec import SpeculationConfig, SpeculativeEngine, load_model, make_drafter
from specdec.zoo.prompts import load_prompts

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def autoregressive(target, prompt) -> list[int]:
    return SpeculativeEngine(target).generate(prompt, GREEDY).token_ids[0]


@pytest.mark.parametrize(("method", "options"), METHODS, ids=IDS)
def test_zoo_heads_keep_the_greedy_output_on_cuda(method, options):
    target = load_model("zoo:tiny-code-target", device="cuda", dtype="float32")
    engine = SpeculativeEngine(target, make_drafter(method, **options))
    assert engine.target.path == "fast-llama"
    for prompt in load_prompts()[:3]:
        for k in (2, 4, 6):
            result = engine.generate(prompt, GREEDY, SpeculationConfig(k=k))
            assert result.token_ids[0] == autoregressive(target, prompt), f"k={k}"
            assert result.metrics.accepted_tokens > 0


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize(("method", "options"), METHODS, ids=IDS)
def test_random_heads_keep_the_greedy_output_on_cuda(family, method, options, tmp_path):
    model = make_model(family, seed=5)
    heads = random_heads(model, tmp_path / method, method)  # written from the CPU model, loaded onto the GPU
    target = on_cuda(model, family)
    engine = SpeculativeEngine(target, make_drafter(method, heads=heads, **options))
    for prompt in ([5, 17, 99, 240, 31, 8, 77], [42, 7]):
        result = engine.generate(prompt, GREEDY, SpeculationConfig(k=3))
        assert result.token_ids[0] == autoregressive(target, prompt)
