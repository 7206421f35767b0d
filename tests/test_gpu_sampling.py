"""Sampling on the CUDA fast path: the engine's speculative samples follow the target's joint distribution (the
chi-square test of ``test_sampling_lossless.py``, with the distributions and the acceptance test computed by the
Triton kernels: no sort of the vocabulary for top-p), and the test catches a planted bug in the sampler. Skipped
without a CUDA GPU; run on the device by ``PARTS=tests bash scripts/gpu_check.sh``."""

from __future__ import annotations

import copy

import pytest
import torch
from test_gpu import on_cuda
from test_sampling_lossless import (
    ALPHA,
    CONFIGS,
    VOCAB,
    chi_square_pvalue,
    exact_target_distributions,
    make_tiny_pair,
    sample_first_three_tokens,
)

from specdec.kernels import triton_kernels

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def to_cuda(model, name):
    return on_cuda(copy.deepcopy(model), name)


@pytest.fixture(scope="module")
def tiny_pair():
    return make_tiny_pair()


@pytest.mark.parametrize("config", CONFIGS, ids=["t1", "t0.7-topk5-topp0.9"])
def test_the_fast_path_samples_the_target_joint_distribution(tiny_pair, config):
    target, draft = tiny_pair
    joint, marginal3 = exact_target_distributions(target, [3, 1, 4], config)  # on the CPU, the reference
    tokens, _ = sample_first_three_tokens(target, draft, [3, 1, 4], config, load=to_cuda)
    assert chi_square_pvalue(tokens[:, 0] * VOCAB + tokens[:, 1], joint) > ALPHA
    assert chi_square_pvalue(tokens[:, 2], marginal3) > ALPHA


def test_the_check_catches_a_sampling_distribution_without_its_top_p_cut(tiny_pair, monkeypatch):
    target, draft = tiny_pair
    config = CONFIGS[1]
    joint, marginal3 = exact_target_distributions(target, [3, 1, 4], config)
    real = triton_kernels.sampling_probs
    monkeypatch.setattr(triton_kernels, "sampling_probs", lambda logits, t, k, p: real(logits, t, k, None))
    from specdec.kernels import load_triton_kernels

    load_triton_kernels.cache_clear()  # the registry rebuilds its set with the planted bug
    try:
        tokens, _ = sample_first_three_tokens(target, draft, [3, 1, 4], config, load=to_cuda)
    finally:
        monkeypatch.undo()
        load_triton_kernels.cache_clear()
    pvalues = (
        chi_square_pvalue(tokens[:, 0] * VOCAB + tokens[:, 1], joint),
        chi_square_pvalue(tokens[:, 2], marginal3),
    )
    assert min(pvalues) < 1e-6
