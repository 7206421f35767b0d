"""Every Triton kernel against its PyTorch reference, on fresh random inputs.

Runs on CUDA; on a CPU it runs only in Triton's interpreter (``TRITON_INTERPRET=1`` with triton installed) and is
skipped otherwise, as in CI.
"""

from __future__ import annotations

import pytest
import torch

from specdec import verification
from specdec.kernels import reference, triton_runs_on

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
pytestmark = pytest.mark.skipif(
    not triton_runs_on(DEVICE), reason="Triton kernels need a CUDA GPU (or TRITON_INTERPRET=1 with triton installed)"
)
DTYPES = [torch.float32, torch.bfloat16] if DEVICE.type == "cuda" else [torch.float32]
TOLERANCE = {torch.float32: 2e-5, torch.bfloat16: 2e-2}


@pytest.fixture(scope="module")
def tk():
    from specdec.kernels import triton_kernels  # the module

    return triton_kernels


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert not torch.isnan(out).any()
    return float((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30))


def rand(*shape: int, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(*shape, generator=generator, device=DEVICE).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", [64, 1000, 2048])
def test_rms_norm(tk, dtype, width):
    g = torch.Generator(DEVICE).manual_seed(width)
    x = rand(5, width, dtype=dtype, generator=g)
    weight = rand(width, dtype=dtype, generator=g)
    assert relative_error(tk.rms_norm(x, weight, 1e-5), reference.rms_norm(x, weight, 1e-5)) < TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_mul(tk, dtype):
    g = torch.Generator(DEVICE).manual_seed(1)
    gate_up = rand(3, 2 * 1500, dtype=dtype, generator=g)
    assert relative_error(tk.silu_mul(gate_up), reference.silu_mul(gate_up)) < TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("k_in", "n_out", "norm", "bias", "silu_pair", "residual"),
    [
        (200, 100, True, True, False, False),  # q/k/v: normed input, optional bias; sizes not multiples of a tile
        (256, 192, False, False, False, True),  # o and down: residual added
        (192, 320, True, False, True, False),  # gate/up: normed input, silu(gate) * up
        (1000, 4100, False, False, False, False),  # a plain product, many programs
        (3000, 700, True, False, False, True),  # more inputs than one load takes
        (5000, 300, False, False, False, True),  # long rows, few outputs: one row and four warps per program
        (2500, 96, True, False, True, False),  # gate/up over more inputs than one load takes
        (9000, 40, True, False, False, False),  # a norm over more inputs than its one load takes
    ],
)
def test_the_fused_gemv_computes_the_product_with_its_norm_silu_and_residual(
    dtype, k_in, n_out, norm, bias, silu_pair, residual
):
    """On 5 rows (a short verification's): each row matches the reference, and is bit for bit what a one-row call
    computes for it (so a verified token's logits are its own decoding step's)."""
    from specdec.kernels import triton_gemv

    rows = 5
    g = torch.Generator(DEVICE).manual_seed(k_in)
    x = rand(rows, k_in, dtype=dtype, generator=g)
    weight = (rand(2 * n_out if silu_pair else n_out, k_in, dtype=dtype, generator=g) / k_in**0.5).to(dtype)
    args = {
        "bias": rand(n_out, dtype=dtype, generator=g) if bias else None,
        "norm_weight": rand(k_in, dtype=dtype, generator=g) if norm else None,
        "eps": 1e-6,
        "residual": rand(rows, n_out, dtype=dtype, generator=g) if residual else None,
        "silu_pair": silu_pair,
    }
    out = triton_gemv.fused_linear(x, weight, **args)
    assert out.shape == (rows, n_out) and out.dtype == dtype
    assert relative_error(out, reference.fused_linear(x, weight, **args)) < TOLERANCE[dtype]
    residual = args["residual"]
    for r in (0, 3):
        one = triton_gemv.fused_linear(
            x[r : r + 1], weight, **{**args, "residual": residual[r : r + 1] if residual is not None else None}
        )
        assert torch.equal(one, out[r : r + 1])


def test_the_registry_sends_a_few_contiguous_rows_of_a_small_weight_to_the_fused_gemv(monkeypatch):
    """A row always (contiguous), up to MAX_ROWS rows only of a weight up to MULTI_ROW_MAX_WEIGHT_BYTES, and never
    a strided input: those take the unfused path, with the same result."""
    from specdec.kernels import load_triton_kernels, triton_gemv

    rows_seen: list[int] = []
    fused = triton_gemv.fused_linear
    monkeypatch.setattr(
        triton_gemv, "fused_linear", lambda x, *a, **k: rows_seen.append(x.shape[0]) or fused(x, *a, **k)
    )
    monkeypatch.setattr(triton_gemv, "MULTI_ROW_MAX_WEIGHT_BYTES", 64 * 40 * 4)
    kernels = load_triton_kernels()
    g = torch.Generator(DEVICE).manual_seed(3)
    x = rand(3, 64, dtype=torch.float32, generator=g)
    small, large = rand(40, 64, dtype=torch.float32, generator=g), rand(41, 64, dtype=torch.float32, generator=g)
    strided = rand(64, 3, dtype=torch.float32, generator=g).t()  # [3, 64], not contiguous
    for inputs, weight, expected in [(x, small, [3]), (x, large, []), (x[:1], large, [1]), (strided, small, [])]:
        rows_seen.clear()
        out = kernels.fused_linear(inputs, weight)
        assert rows_seen == expected
        assert relative_error(out, reference.fused_linear(inputs, weight)) < TOLERANCE[torch.float32]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("k_in", "n_out", "layer_norm", "gelu", "residual"),
    [
        (200, 300, True, None, False),  # q/k/v: the layer norm before, the bias after
        (300, 200, False, None, True),  # o and the second MLP product: the bias, then the residual
        (192, 770, True, "tanh", False),  # the first MLP product: layer norm, bias, GELU (GPT-2's tanh form)
        (2100, 100, True, "none", False),  # the exact GELU; more inputs than one load takes
    ],
)
def test_the_fused_gemv_computes_gpt2s_products_with_layer_norm_and_gelu(
    dtype, k_in, n_out, layer_norm, gelu, residual
):
    from specdec.kernels import triton_gemv

    g = torch.Generator(DEVICE).manual_seed(k_in + n_out)
    x = (rand(1, k_in, dtype=torch.float32, generator=g) + 3.0).to(dtype)  # a mean the layer norm must remove
    weight = (rand(n_out, k_in, dtype=dtype, generator=g) / k_in**0.5).to(dtype)
    args = {
        "bias": rand(n_out, dtype=dtype, generator=g),
        "norm_weight": rand(k_in, dtype=dtype, generator=g) if layer_norm else None,
        "eps": 1e-5,
        "residual": rand(1, n_out, dtype=dtype, generator=g) if residual else None,
        "norm_bias": rand(k_in, dtype=dtype, generator=g) if layer_norm else None,
        "gelu": gelu,
    }
    out = triton_gemv.fused_linear(x, weight, **args)
    assert out.shape == (1, n_out) and out.dtype == dtype
    assert relative_error(out, reference.fused_linear(x, weight, **args)) < TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("heads", "kv_heads", "seq"), [(4, 2, 1), (4, 4, 3), (8, 2, 5)])
@pytest.mark.parametrize("rotate", [True, False], ids=["rope", "learned-positions"])
def test_rope_and_store_writes_the_same_cache_and_queries(tk, dtype, heads, kv_heads, seq, rotate):
    g = torch.Generator(DEVICE).manual_seed(heads * 10 + seq)
    batch, head_dim, max_length = 2, 32, 24
    qkv = rand(batch, seq, (heads + 2 * kv_heads) * head_dim, dtype=dtype, generator=g)
    angles = torch.rand(64, head_dim // 2, generator=g, device=DEVICE) * 6.0
    cos = torch.cat([angles.cos(), angles.cos()], -1).to(dtype)
    sin = torch.cat([angles.sin(), angles.sin()], -1).to(dtype)
    columns = torch.arange(7, 7 + seq, device=DEVICE)
    positions = torch.stack([columns, columns - 3])  # the second row has 3 tokens of left padding
    caches = [rand(batch, kv_heads, max_length, head_dim, dtype=dtype, generator=g) for _ in range(2)]
    ours = [c.clone() for c in caches]
    tables = (cos, sin) if rotate else (None, None)
    q_ref = reference.rope_and_store(qkv, positions, *tables, *caches, columns, heads, kv_heads)
    q = tk.rope_and_store(qkv, positions, *tables, *ours, columns, heads, kv_heads)
    assert relative_error(q, q_ref) < TOLERANCE[dtype]
    if not rotate:  # without tables q passes through, and k, v are stored as they are
        torch.testing.assert_close(q_ref.flatten(2), qkv[..., : heads * head_dim])
        assert torch.equal(caches[1][:, :, columns].transpose(1, 2).flatten(2), qkv[..., -kv_heads * head_dim :])
    for mine, theirs in zip(ours, caches, strict=True):
        assert relative_error(mine, theirs) < TOLERANCE[dtype]
        untouched = torch.ones(max_length, dtype=torch.bool, device=DEVICE)
        untouched[columns] = False
        assert torch.equal(mine[:, :, untouched], theirs[:, :, untouched])


def assert_same_one_token_store(q, q_ref, ours, caches, column, dtype) -> None:
    """One token's q [1, 1, H, Dh] matches, and the caches [1, Hkv, M, Dh] match at ``column`` and are untouched
    elsewhere."""
    assert q.shape == q_ref.shape
    assert relative_error(q, q_ref) < TOLERANCE[dtype]
    for mine, theirs in zip(ours, caches, strict=True):
        assert relative_error(mine[:, :, column], theirs[:, :, column]) < TOLERANCE[dtype]
        others = torch.arange(mine.shape[2], device=DEVICE) != column
        assert torch.equal(mine[:, :, others], theirs[:, :, others])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("heads", "kv_heads", "head_dim", "bias", "hidden"),
    [(4, 2, 32, False, 300), (6, 2, 64, True, 300), (4, 2, 32, False, 4200), (4, 2, 4, False, 4200)],
)  # 4200 inputs: the wide tiles (four pairs a program), with a tail; with heads of 4, one pair (four do not fit)
def test_the_one_token_qkv_product_rotates_and_stores_in_one_kernel(dtype, heads, kv_heads, head_dim, bias, hidden):
    from specdec.kernels import triton_gemv

    g = torch.Generator(DEVICE).manual_seed(heads + head_dim)
    max_length, column, position = 24, 9, 6
    width = (heads + 2 * kv_heads) * head_dim
    x = rand(1, hidden, dtype=dtype, generator=g)
    weight = (rand(width, hidden, dtype=dtype, generator=g) / hidden**0.5).to(dtype)
    args = (
        rand(width, dtype=dtype, generator=g) if bias else None,
        rand(hidden, dtype=dtype, generator=g),  # the input's RMS norm
        1e-6,
        torch.tensor([[position]], device=DEVICE),
    )
    angles = torch.rand(16, head_dim // 2, generator=g, device=DEVICE) * 6.0
    tables = (
        torch.cat([angles.cos(), angles.cos()], -1).to(dtype),
        torch.cat([angles.sin(), angles.sin()], -1).to(dtype),
    )
    caches = [rand(1, kv_heads, max_length, head_dim, dtype=dtype, generator=g) for _ in range(2)]
    ours = [c.clone() for c in caches]
    columns = torch.tensor([column], device=DEVICE)
    q_ref = reference.linear_rope_store(x, weight, *args, *tables, *caches, columns, heads, kv_heads)
    q = triton_gemv.linear_rope_store(x, weight, *args, *tables, *ours, columns, heads, kv_heads)
    assert q.shape == (1, 1, heads, head_dim)
    assert_same_one_token_store(q, q_ref, ours, caches, column, dtype)
    # other tiles (for sweeps): two pairs of rows a program, inputs in loads of 128
    ours = [c.clone() for c in caches]
    q = triton_gemv.linear_rope_store(x, weight, *args, *tables, *ours, columns, heads, kv_heads, tiles=(2, 128, 1))
    assert_same_one_token_store(q, q_ref, ours, caches, column, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("batch", "seq"), [(1, 5), (2, 3)])
def test_the_qkv_product_of_a_few_tokens_rotates_and_stores_each_in_one_kernel(dtype, batch, seq):
    """A verification's tokens (one row, 5 tokens) or a small batch's (2 rows of 3): q and both caches as the
    reference computes them, and each token's bit for bit what a one-token call computes for it."""
    from specdec.kernels import triton_gemv

    g = torch.Generator(DEVICE).manual_seed(batch * 10 + seq)
    heads, kv_heads, head_dim, hidden, max_length = 4, 2, 32, 300, 24
    width = (heads + 2 * kv_heads) * head_dim
    x = rand(batch * seq, hidden, dtype=dtype, generator=g)
    weight = (rand(width, hidden, dtype=dtype, generator=g) / hidden**0.5).to(dtype)
    norm = (rand(width, dtype=dtype, generator=g), rand(hidden, dtype=dtype, generator=g), 1e-6)
    columns = torch.arange(9, 9 + seq, device=DEVICE)
    positions = torch.stack([columns - 3 * b for b in range(batch)])  # [B, S]: row b has 3 b tokens of padding
    angles = torch.rand(16, head_dim // 2, generator=g, device=DEVICE) * 6.0
    tables = (
        torch.cat([angles.cos(), angles.cos()], -1).to(dtype),
        torch.cat([angles.sin(), angles.sin()], -1).to(dtype),
    )
    caches = [rand(batch, kv_heads, max_length, head_dim, dtype=dtype, generator=g) for _ in range(2)]
    ours = [c.clone() for c in caches]
    q_ref = reference.linear_rope_store(x, weight, *norm, positions, *tables, *caches, columns, heads, kv_heads)
    q = triton_gemv.linear_rope_store(x, weight, *norm, positions, *tables, *ours, columns, heads, kv_heads)
    assert q.shape == (batch, seq, heads, head_dim)
    assert relative_error(q, q_ref) < TOLERANCE[dtype]
    for mine, theirs in zip(ours, caches, strict=True):
        assert relative_error(mine, theirs) < TOLERANCE[dtype]
        untouched = torch.ones(max_length, dtype=torch.bool, device=DEVICE)
        untouched[columns] = False
        assert torch.equal(mine[:, :, untouched], theirs[:, :, untouched])
    b, s = batch - 1, seq - 1  # the last token alone
    alone = [c[b : b + 1].clone() for c in caches]
    one = triton_gemv.linear_rope_store(
        x[b * seq + s :][:1], weight, *norm, positions[b : b + 1, s : s + 1].contiguous(), *tables, *alone,
        columns[s : s + 1], heads, kv_heads,
    )  # fmt: skip
    assert torch.equal(one[0, 0], q[b, s])
    for mine, single in zip(ours, alone, strict=True):
        assert torch.equal(single[0, :, columns[s]], mine[b, :, columns[s]])


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_one_token_qkv_product_of_gpt2_stores_without_rotation(dtype):
    from specdec.kernels import triton_gemv

    g = torch.Generator(DEVICE).manual_seed(5)
    heads, head_dim, hidden, max_length, column = 4, 32, 200, 24, 9
    width = 3 * heads * head_dim
    x = rand(1, hidden, dtype=dtype, generator=g)
    weight = (rand(width, hidden, dtype=dtype, generator=g) / hidden**0.5).to(dtype)
    bias, norm_weight, norm_bias = (rand(n, dtype=dtype, generator=g) for n in (width, hidden, hidden))
    caches = [rand(1, heads, max_length, head_dim, dtype=dtype, generator=g) for _ in range(2)]
    ours = [c.clone() for c in caches]
    columns = torch.tensor([column], device=DEVICE)
    common = (bias, norm_weight, 1e-5, torch.tensor([[column]], device=DEVICE), None, None)
    q_ref = reference.linear_rope_store(x, weight, *common, *caches, columns, heads, heads, norm_bias=norm_bias)
    q = triton_gemv.linear_rope_store(x, weight, *common, *ours, columns, heads, heads, norm_bias=norm_bias)
    assert q.shape == (1, 1, heads, head_dim)
    assert_same_one_token_store(q, q_ref, ours, caches, column, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("heads", "kv_heads", "seq", "padded", "max_length", "end"),
    [(4, 2, 1, False, 150, 100), (4, 2, 1, False, 150, 130), (8, 2, 5, True, 150, 130), (4, 4, 9, True, 150, 130),
     (4, 2, 1, False, 640, 130), (8, 2, 5, True, 1200, 700), (4, 2, 1, False, 1200, 1025),
     (4, 2, 1, False, 2500, 2400)],
)  # fmt: skip
def test_decode_attention(tk, dtype, heads, kv_heads, seq, padded, max_length, end):
    """The new tokens end at column ``end - 1``. One split of the Triton kernel holds 128 keys: 100 columns used are
    one split, whose program writes the output; 130 are two, merged by the one that finishes last (of 640 columns,
    the three splits past the last key neither compute nor count); 700 are six of ten; ending at 1024, nine, the last
    with one key. A cache of 2500 columns takes splits of 192 keys (at most 16 splits), 13 of them used. A second
    call gives the same bits: the merging program leaves the arrival counts at zero."""
    g = torch.Generator(DEVICE).manual_seed(heads + seq)
    batch, head_dim = 2, 64
    q = rand(batch, seq, heads, head_dim, dtype=dtype, generator=g)
    cache_k = rand(batch, kv_heads, max_length, head_dim, dtype=dtype, generator=g)
    cache_v = rand(batch, kv_heads, max_length, head_dim, dtype=dtype, generator=g)
    columns = torch.arange(end - seq, end, device=DEVICE)  # keys beyond end - 1 hold junk that must stay unseen
    key_valid = None
    if padded:
        key_valid = torch.ones(batch, max_length, dtype=torch.bool, device=DEVICE)
        key_valid[1, :17] = False
    out = tk.decode_attention(q, cache_k, cache_v, columns, key_valid, head_dim**-0.5)
    ref = reference.decode_attention(q, cache_k, cache_v, columns, key_valid, head_dim**-0.5)
    assert relative_error(out, ref) < TOLERANCE[dtype]
    assert torch.equal(tk.decode_attention(q, cache_k, cache_v, columns, key_valid, head_dim**-0.5), out)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("heads", "kv_heads", "padded"), [(4, 2, False), (8, 2, True)])
def test_decode_attention_over_a_token_tree(tk, dtype, heads, kv_heads, padded):
    g = torch.Generator(DEVICE).manual_seed(heads + 7)
    batch, head_dim, max_length = 2, 64, 150
    parents = [-1, 0, 0, 1, 1, 2, 5, 3, 0, 8, 9]  # the root, then nodes in topological order
    seq = len(parents)
    tree = torch.eye(seq, dtype=torch.bool)
    for node, parent in enumerate(parents):
        if parent >= 0:
            tree[node] |= tree[parent]  # a node sees its ancestors and itself
    q = rand(batch, seq, heads, head_dim, dtype=dtype, generator=g)
    cache_k = rand(batch, kv_heads, max_length, head_dim, dtype=dtype, generator=g)
    cache_v = rand(batch, kv_heads, max_length, head_dim, dtype=dtype, generator=g)
    columns = torch.arange(70, 70 + seq, device=DEVICE)  # keys beyond 80 hold junk that must stay unseen
    key_valid = None
    if padded:
        key_valid = torch.ones(batch, max_length, dtype=torch.bool, device=DEVICE)
        key_valid[1, :17] = False
    out = tk.decode_attention(q, cache_k, cache_v, columns, key_valid, head_dim**-0.5, tree.to(DEVICE))
    ref = reference.decode_attention(q, cache_k, cache_v, columns, key_valid, head_dim**-0.5, tree.to(DEVICE))
    assert relative_error(out, ref) < TOLERANCE[dtype]
    # a leaf's output is that of its path as a chain: the tree mask is not ignored
    chain = tk.decode_attention(q, cache_k, cache_v, columns, key_valid, head_dim**-0.5)
    assert relative_error(out[:, 1:2], chain[:, 1:2]) < TOLERANCE[dtype]  # node 1's ancestors are all before it
    assert relative_error(out[:, 8:9], chain[:, 8:9]) > 10 * TOLERANCE[dtype]  # node 8 sees 0 and 8 alone


@pytest.mark.parametrize("vocab", [50, 40000])
@pytest.mark.parametrize("batch", [1, 3])
def test_greedy_verify_matches_the_reference(tk, vocab, batch):
    g = torch.Generator(DEVICE).manual_seed(vocab + batch)
    for k in (0, 1, 4):
        logits = torch.randn(batch, k + 1, vocab, generator=g, device=DEVICE)
        choice = logits.argmax(-1)
        drafts = choice[:, :k].clone()
        if k:  # break some rows' runs at random places
            breaks = torch.randint(0, k + 1, (batch,), generator=g, device=DEVICE)
            for row in range(batch):
                if breaks[row] < k:
                    drafts[row, breaks[row]] = (drafts[row, breaks[row]] + 1) % vocab
        ours = tk.greedy_verify(drafts, logits)
        ref = verification.greedy_verify(drafts, logits)
        assert int(ours.num_accepted) == int(ref.num_accepted)
        assert torch.equal(ours.row_accepted, ref.row_accepted)
        assert torch.equal(ours.next_tokens, ref.next_tokens)


def test_greedy_verify_takes_the_first_of_tied_maxima(tk):
    logits = torch.zeros(1, 2, 40000, device=DEVICE)
    logits[0, :, 123] = 1.0
    logits[0, :, 30000] = 1.0
    verdict = tk.greedy_verify(torch.tensor([[123]], device=DEVICE), logits)
    assert int(verdict.num_accepted) == 1 and verdict.next_tokens.tolist() == [123]


@pytest.mark.parametrize("vocab", [50, 40000])
@pytest.mark.parametrize("batch", [1, 4])
def test_speculative_sampling_matches_the_reference_given_the_same_noise(tk, vocab, batch):
    g = torch.Generator(DEVICE).manual_seed(vocab * batch)
    for k in (1, 3):
        target = torch.softmax(2 * torch.randn(batch, k + 1, vocab, generator=g, device=DEVICE), -1)
        draft_probs = torch.softmax(2 * torch.randn(batch, k, vocab, generator=g, device=DEVICE), -1)
        drafts = torch.multinomial(draft_probs.reshape(-1, vocab), 1, generator=g).reshape(batch, k)
        for _ in range(5):
            uniforms = torch.rand(batch, k, generator=g, device=DEVICE)
            exponentials = torch.empty(batch, vocab, device=DEVICE).exponential_(generator=g)
            args = (drafts, draft_probs, target, uniforms, exponentials)
            ours, ref = tk.speculative_sample_from_noise(*args), verification.speculative_sample_from_noise(*args)
            assert int(ours.num_accepted) == int(ref.num_accepted)
            assert torch.equal(ours.row_accepted, ref.row_accepted)
            assert torch.equal(ours.next_tokens, ref.next_tokens)


@pytest.mark.parametrize("vocab", [8, 50, 5000, 40000, 128256] if DEVICE.type == "cuda" else [8, 50, 3000])
# the interpreter cannot run the split path's kernels (a loop bounded by program ids): CUDA only
@pytest.mark.parametrize("path", ["one", "one-2bits", "one-3bits"] + (["split"] if DEVICE.type == "cuda" else []))
def test_sampling_probs_match_the_reference(tk, vocab, path, monkeypatch):
    """Temperature, top-k and top-p without the softmaxes (and without top-k, top-p's threshold without a sort: one
    program per row of a small vocabulary, many for a large one): the same distribution, ties at top-p's edge.
    Compared with the reference in float64: the kernels sum float32 masses, so a token whose mass before it is
    within rounding of top-p may fall on the other side (the reference's own float32 cumulative sum moves 122 tokens
    of the 128k-token row of ties at top-p 0.999); each row may differ by such tokens only."""
    from specdec.kernels import triton_sampling

    if path == "split":  # every row over many programs (a large vocabulary's path), else as the vocabulary goes
        monkeypatch.setattr(triton_sampling, "SMALL_VOCAB", 0)
    elif path != "one":  # the one-program path finding several of tau's bits a step
        monkeypatch.setattr(triton_sampling, "SMALL_DIGIT_BITS", int(path.split("-")[1][0]))
    g = torch.Generator(DEVICE).manual_seed(vocab)
    logits = 3 * torch.randn(4, vocab, generator=g, device=DEVICE)
    logits[1] = logits[1].bfloat16().float()  # coarse values: many tokens tie, some at the edge of top-p
    logits[2, : vocab // 2] = float("-inf")  # masked tokens (a vocabulary padded past the real one)
    logits[3] = 0.01 * logits[3]  # nearly flat: top-p keeps most of the vocabulary
    for temperature, top_k, top_p in [(1.0, None, None), (0.8, None, 0.95), (0.3, None, 0.5), (1.7, None, 0.999),
                                      (0.7, 5, 0.9), (1.0, 3, None), (1e-4, None, 0.9)]:  # fmt: skip
        ours = tk.sampling_probs(logits, temperature, top_k, top_p)
        ref = reference.sampling_probs(logits.double(), temperature, top_k, top_p).float()
        setting = f"T={temperature} top_k={top_k} top_p={top_p}"
        differ = (ours > 0) != (ref > 0)  # tokens kept by one of the two only
        assert int(differ.sum(-1).max()) <= 2, setting
        assert float(torch.where(differ, ours + ref, 0.0).sum(-1).max()) < 1e-4, setting  # at the edge, negligible
        total_variation = 0.5 * (ours - ref).abs().sum(-1)
        assert float(total_variation.max()) < 1e-4, setting
        torch.testing.assert_close(ours.sum(-1), torch.ones(4, device=DEVICE), msg=setting)
    assert int((tk.sampling_probs(logits, 0.8, None, 0.95)[1] > 0).sum()) > 1


@pytest.mark.parametrize("vocab", [50, 4096, 9000] if DEVICE.type == "cuda" else [50, 4096])
@pytest.mark.parametrize("dtype", DTYPES)
def test_the_sampling_race_draws_from_the_sampling_distribution_it_returns(vocab, dtype):
    """``sampling_race``: q is ``sampling_probs``'s distribution of the same logits, and each token is the race's
    ``argmax q / E`` (one kernel for a small vocabulary, the eight-kernel distribution and an argmax for a large)."""
    from specdec.kernels import triton_sampling

    g = torch.Generator(DEVICE).manual_seed(vocab)
    logits = (3 * torch.randn(3, 2, vocab, generator=g, device=DEVICE)).to(dtype)  # [3, 2, V]: any leading shape
    exponentials = torch.empty(3, 2, vocab, device=DEVICE).exponential_(generator=g)
    for top_p in (None, 0.9):
        q, tokens = triton_sampling.sampling_race(logits, 0.8, top_p, exponentials)
        assert q.shape == logits.shape and q.dtype == torch.float32 and tokens.shape == (3, 2)
        torch.testing.assert_close(q, triton_sampling.sampling_probs(logits.float(), 0.8, top_p), atol=1e-7, rtol=0)
        assert torch.equal(tokens, (q / exponentials).argmax(dim=-1))
        assert bool((q.gather(-1, tokens[..., None]) > 0).all())  # never a token top-p dropped
    tied = torch.zeros(1, vocab, device=DEVICE)
    _, first = triton_sampling.sampling_race(tied, 1.0, None, torch.ones(1, vocab, device=DEVICE))
    assert first.tolist() == [0]  # every ratio equal: the first, as argmax


@pytest.mark.parametrize("top_p", [None, 0.9])
def test_sampling_probs_at_extreme_temperatures(tk, top_p):
    """A subnormal temperature gives the argmax (ties shared), not 0 / T = nan at the best token; the largest float32
    temperature gives the uniform distribution over the unmasked tokens (what ``logits_to_probs`` clamps T to)."""
    logits = torch.tensor([[3.0, 7.5, -2.0, 7.4999, float("-inf")], [2.0, 9.0, 9.0, -3.0, 1.0]], device=DEVICE)
    for temperature in (1e-45, 1e-30):
        probs = tk.sampling_probs(logits, temperature, None, top_p)
        expected = torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0], [0.0, 0.5, 0.5, 0.0, 0.0]], device=DEVICE)
        torch.testing.assert_close(probs, expected, msg=f"T={temperature}")
    probs = tk.sampling_probs(logits, torch.finfo(torch.float32).max, None, None)
    torch.testing.assert_close(probs[0], torch.tensor([0.25, 0.25, 0.25, 0.25, 0.0], device=DEVICE))
    torch.testing.assert_close(probs[1], torch.full((5,), 0.2, device=DEVICE))
