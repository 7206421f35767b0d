"""The long-query attention (``reference.sdpa_attention``: a prefill's, through torch's fused attention) against the
reference attention, on the CPU in CI and in float32 and bfloat16 on CUDA."""

from __future__ import annotations

import pytest
import torch

from specdec.kernels import reference

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPES = [torch.float32, torch.bfloat16] if DEVICE.type == "cuda" else [torch.float32]
TOLERANCE = {torch.float32: 2e-5, torch.bfloat16: 2e-2}


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert not torch.isnan(out).any()
    return float((out.double() - ref.double()).norm() / ref.double().norm())


def inputs(batch: int, seq: int, heads: int, kv_heads: int, max_length: int, dtype: torch.dtype, seed: int):
    g = torch.Generator(DEVICE).manual_seed(seed)
    q = torch.randn(batch, seq, heads, 64, generator=g, device=DEVICE).to(dtype)
    shape = (batch, kv_heads, max_length, 64)
    cache_k, cache_v = (torch.randn(*shape, generator=g, device=DEVICE).to(dtype) for _ in "kv")
    return q, cache_k, cache_v


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("heads", "kv_heads", "seq", "start", "padded", "max_length"),
    [(4, 4, 128, 0, False, 130), (8, 2, 130, 0, True, 300), (8, 2, 40, 100, True, 300), (12, 3, 1, 77, False, 91)],
)
def test_sdpa_attention_equals_the_reference(dtype, heads, kv_heads, seq, start, padded, max_length):
    """Queries at columns [start, start + seq), keys beyond the last one junk that must stay unseen; with padding,
    row 1's first 17 keys are invalid (a padding query still sees its own key). Grouped heads (G = 4) catch a
    mask or output laid out for the wrong head of a group."""
    q, cache_k, cache_v = inputs(2, seq, heads, kv_heads, max_length, dtype, seed=heads + seq)
    columns = torch.arange(start, start + seq, device=DEVICE)
    key_valid = None
    if padded:
        key_valid = torch.ones(2, max_length, dtype=torch.bool, device=DEVICE)
        key_valid[1, :17] = False
    out = reference.sdpa_attention(q, cache_k, cache_v, columns, key_valid, 0.125)
    ref = reference.decode_attention(q, cache_k, cache_v, columns, key_valid, 0.125)
    assert out.shape == ref.shape == (2, seq, heads, 64)
    assert relative_error(out, ref) < TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_sdpa_attention_over_a_token_tree(dtype):
    parents = [-1, 0, 0, 1, 1, 2, 5, 3, 0, 8, 9]  # the root, then nodes in topological order
    tree = torch.eye(len(parents), dtype=torch.bool)
    for node, parent in enumerate(parents):
        if parent >= 0:
            tree[node] |= tree[parent]
    q, cache_k, cache_v = inputs(2, len(parents), 8, 2, 150, dtype, seed=3)
    columns = torch.arange(70, 70 + len(parents), device=DEVICE)
    key_valid = torch.ones(2, 150, dtype=torch.bool, device=DEVICE)
    key_valid[1, :17] = False
    tree = tree.to(DEVICE)
    out = reference.sdpa_attention(q, cache_k, cache_v, columns, key_valid, 0.125, tree)
    ref = reference.decode_attention(q, cache_k, cache_v, columns, key_valid, 0.125, tree)
    assert relative_error(out, ref) < TOLERANCE[dtype]
    chain = reference.sdpa_attention(q, cache_k, cache_v, columns, key_valid, 0.125)
    assert relative_error(out[:, 8:9], chain[:, 8:9]) > 10 * TOLERANCE[dtype]  # node 8 sees 0 and 8 alone
