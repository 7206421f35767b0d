"""Sampling on the CUDA fast path: the engine's speculative samples and its sampled autoregressive steps (one graph
each: forward, distribution, draw) follow the target's joint distribution (the chi-square test of
``test_sampling_lossless.py``, with the distributions from the CUDA kernel set and the accept test and draws from the
Triton kernels), and the test catches a planted bug in the sampling distribution. Skipped without a CUDA GPU; run on
the device by ``PARTS=tests bash scripts/gpu_check.sh``."""

from __future__ import annotations

import copy

import pytest
import torch
from test_gpu import on_cuda
from test_sampling_lossless import (
    ALPHA,
    CALLS,
    CONFIGS,
    ROWS_PER_CALL,
    exact_target_distributions,
    make_tiny_pair,
    sample_first_three_tokens,
    three_token_pvalues,
)
from tiny_models import make_model

from specdec import GenerationConfig, SpeculationConfig, SpeculativeEngine

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def to_cuda(model, name):
    return on_cuda(copy.deepcopy(model), name)


@pytest.fixture(scope="module")
def tiny_pair():
    return make_tiny_pair()


@pytest.mark.parametrize(
    ("config", "batch"),
    [(CONFIGS[0], ROWS_PER_CALL), (CONFIGS[1], ROWS_PER_CALL), (CONFIGS[1], 1)],
    ids=["t1", "t0.7-topk5-topp0.9", "t0.7-topk5-topp0.9-lockstep"],
)
def test_the_fast_path_samples_the_target_joint_distribution(tiny_pair, config, batch):
    """Batches verify per row (the PyTorch function in the step's graph); one row verifies lockstep (the Triton
    accept and residual kernels in the graph). The same number of samples either way."""
    target, draft = tiny_pair
    joint, marginal3 = exact_target_distributions(target, [3, 1, 4], config)  # on the CPU, the reference
    tokens, _ = sample_first_three_tokens(
        target, draft, [3, 1, 4], config, load=to_cuda, batch=batch, calls=CALLS * ROWS_PER_CALL // batch
    )
    assert min(three_token_pvalues(tokens, joint, marginal3)) > ALPHA


def test_the_check_catches_a_sampling_distribution_without_its_top_p_cut(tiny_pair, monkeypatch):
    target, draft = tiny_pair
    config = CONFIGS[1]
    joint, marginal3 = exact_target_distributions(target, [3, 1, 4], config)
    from specdec.kernels import load_triton_kernels, triton_kernels  # needs triton: here, after the skip

    real = triton_kernels.sampling_probs
    monkeypatch.setattr(triton_kernels, "sampling_probs", lambda logits, t, k, p: real(logits, t, k, None))
    load_triton_kernels.cache_clear()  # the registry rebuilds its set with the planted bug
    try:
        tokens, _ = sample_first_three_tokens(target, draft, [3, 1, 4], config, load=to_cuda)
    finally:
        monkeypatch.undo()
        load_triton_kernels.cache_clear()
    assert min(three_token_pvalues(tokens, joint, marginal3)) < 1e-6


def sample_autoregressive(target, prompt, config, calls: int = CALLS):
    """The first three tokens of ``calls`` seeded autoregressive runs of 4 rows each on the fast path: t1 from the
    prefill, t2 and t3 from sampled steps (each one graph: forward, distribution and draw)."""
    engine = SpeculativeEngine(to_cuda(target, "t"))
    rows = []
    for call in range(calls):
        seeded = GenerationConfig(
            max_new_tokens=3, temperature=config.temperature, top_k=config.top_k, top_p=config.top_p,
            seed=config.seed * 100_000 + call, stop_at_eos=False,
        )  # fmt: skip
        rows.extend(engine.generate([prompt] * ROWS_PER_CALL, seeded).token_ids)
    return engine, torch.tensor(rows)


@pytest.mark.parametrize("config", CONFIGS, ids=["t1", "t0.7-topk5-topp0.9"])
def test_sampled_autoregressive_steps_follow_the_target_distribution(tiny_pair, config):
    target, _ = tiny_pair
    joint, marginal3 = exact_target_distributions(target, [3, 1, 4], config)
    engine, tokens = sample_autoregressive(target, [3, 1, 4], config)
    assert engine.target.path == "fast-llama"
    assert min(three_token_pvalues(tokens, joint, marginal3)) > ALPHA


def test_a_sampled_autoregressive_step_replays_the_eager_step_s_draws():
    """With the same seed, the graphed step (forward, distribution and draw replayed as one graph) and the same
    step run eagerly give the same tokens: the graph draws nothing of its own."""
    model = make_model("llama", seed=3, layers=2)
    config = GenerationConfig(max_new_tokens=24, temperature=0.9, top_p=0.95, seed=7, stop_at_eos=False)
    graphed = SpeculativeEngine(to_cuda(model, "g"))
    eager = SpeculativeEngine(to_cuda(model, "e"))
    eager.target._graphs.enabled = False  # type: ignore[attr-defined]
    prompts = [[5, 17, 99, 240], [42, 7, 8, 9]]
    first = graphed.generate(prompts, config).token_ids
    assert graphed.generate(prompts, config).token_ids == first  # replayed, not only captured
    assert eager.generate(prompts, config).token_ids == first
    assert len(graphed.target._graphs) > 0  # type: ignore[attr-defined]


def test_a_sampled_speculative_step_replays_the_eager_step_s_draws():
    """With the same seed, the sampled draft chain and the sampled verification replayed as graphs and the same steps
    run eagerly give the same tokens, and the graphs were used: the drafts and the accept tests draw nothing of
    their own."""
    target = make_model("llama", seed=3, layers=2)
    draft = make_model("llama", seed=4, layers=1)
    config = GenerationConfig(max_new_tokens=24, temperature=0.9, top_p=0.95, seed=7, stop_at_eos=False)
    graphed = SpeculativeEngine(to_cuda(target, "g"), to_cuda(draft, "gd"))
    eager = SpeculativeEngine(to_cuda(target, "e"), to_cuda(draft, "ed"))
    eager.target._graphs.enabled = False  # type: ignore[attr-defined]
    eager.drafter.decoder._graphs.enabled = False  # type: ignore[union-attr]
    prompts = [[5, 17, 99, 240], [42, 7, 8, 9]]
    first = graphed.generate(prompts, config, SpeculationConfig(k=3)).token_ids
    assert graphed.generate(prompts, config, SpeculationConfig(k=3)).token_ids == first
    assert eager.generate(prompts, config, SpeculationConfig(k=3)).token_ids == first
    assert any(key[0] == "then" and key[1] == 4 for key in graphed.target._graphs._graphs)  # type: ignore[attr-defined]
    assert any(key[0] == "sampled-chain" for key in graphed.drafter.decoder._graphs._graphs)  # type: ignore[union-attr]
