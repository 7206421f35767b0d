"""A matrix-vector product for one row of a decoding step, with the layer's small operations fused into it.

At batch 1 a decoder layer is a handful of products of one row with a weight matrix, and between them RMS norms, a
SiLU and residual adds that each cost a kernel launch and a round trip of the activations (on the Llama-3.2-1B
shape, about 25 us per layer beyond the weights' own read time: docs/performance.md, fifth session).
:func:`fused_linear` reads the weight once, in tiles of ``BLOCK_N`` output rows by ``BLOCK_K`` inputs, and does in
the same kernel:

- before the product (``norm_weight``): the RMS norm of the input row, the way ``reference.rms_norm`` rounds it,
  or with ``norm_bias`` GPT-2's layer norm, the way ``F.layer_norm`` rounds it;
- after it: the bias, SiLU(gate) * up over a ``[2I, K]`` gate-then-up weight (``silu_pair``: each program reads
  the gate rows and the matching up rows) or a GELU (``gelu``), and the residual add (``residual``).

:func:`linear_rope_store` is the q/k/v product of one token that also rotates q and k (RoPE) and writes k and v
into the KV cache, instead of returning the product (without rotary tables, GPT-2's, it only routes them).

Each program keeps a ``[BLOCK_N, BLOCK_K]`` float32 accumulator of elementwise products over the whole input and
reduces it once at the end, so its loads never wait for a reduction (1.03x-1.24x faster per product than reducing
after every load: docs/performance.md, ninth session). It computes what ``reference.fused_linear`` computes,
products in float32 (no TF32) with a different summation order than cuBLAS. With ``SPECDEC_PDL=1`` on Hopper it
launches as a dependent of the kernel before it (``dependent_launch``) and reads its first weight tile before that
kernel has finished: a weight must not be the output of the kernel just before the product.

Up to ``MAX_ROWS`` rows (a short verification, a small batch) run as a grid of one-row programs, each computing
its row exactly as a one-row call would, so a verified token's logits equal its own decoding step's bit for bit.
Each row reads the weights again, from L2 after the first, which pays where the launches are the cost (a small
model's weights, ``MULTI_ROW_MAX_WEIGHT_BYTES``); for large weights cuBLAS reads them once (a version that tiled
rows x outputs x inputs in registers ran 10x slower than cuBLAS there). Shapes: R rows, K inputs, N outputs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from specdec.kernels import dependent_launch
from specdec.kernels.dependent_launch import await_previous

MAX_ROWS = 8  # rows a call takes (a step's token, a short verification, a small batch)
MULTI_ROW_MAX_WEIGHT_BYTES = 6 << 20  # ... more than one only for weights up to this size (see the module docstring)


NORM_RMS, NORM_LAYER = 1, 2  # the kernel's NORM (0: none)
ACT_SILU_PAIR, ACT_GELU_TANH, ACT_GELU_ERF = 1, 2, 3  # its ACT (0: none)
QKV_STORE, QKV_ROTATE = 1, 2  # its QKV (0: the product goes to ``out``)
GELU = {"tanh": ACT_GELU_TANH, "none": ACT_GELU_ERF}  # F.gelu's ``approximate`` -> ACT


@triton.jit
def _weight_tile(w_ptr, rows, rows_ok, k0, kk, k_in):
    """Weight rows ``rows`` [N] at inputs [k0, k0 + BLOCK_K): [N, K], nothing read past the end of a row."""
    mask = rows_ok[:, None] & ((k0 + kk) < k_in)[None, :]
    return tl.load(w_ptr + rows[:, None] * k_in + k0 + kk[None, :], mask=mask, other=0.0, eviction_policy="evict_first")


@triton.jit
def _fused_linear_kernel(
    x_ptr, w_ptr, bias_ptr, norm_ptr, norm_bias_ptr, residual_ptr, out_ptr, n_out, k_in, eps,
    positions_ptr, cos_ptr, sin_ptr, cache_k_ptr, cache_v_ptr, columns_ptr, num_heads, num_kv_heads, max_length, seq,
    NORM: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    QKV: tl.constexpr, PAIRED: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_X: tl.constexpr,
    PDL: tl.constexpr,
):  # fmt: skip
    """Program (p, r): outputs [p * BLOCK_N, (p + 1) * BLOCK_N) of row r (each row's programs compute what a
    one-row call computes for it: the same instructions, bit for bit). NORM: the input's RMS norm (1) or layer
    norm with its bias (2). ACT: SiLU(gate) * up (1: the weight has 2 n_out rows, gate then up, and the program reads
    the gate rows and the up rows of its outputs), GELU with tanh (2) or erf (3). QKV: the weight is a q/k/v
    projection; its product goes to q (``out``) and into the caches at the token's column (what
    ``reference.rope_and_store`` does), as it is (1) or rotated (2: the program reads rows j and j + HEAD_DIM / 2
    of one head, j in a block of its first half; row r is token ``r % seq`` of batch row ``r // seq``: its position,
    column and cache rows). PAIRED: ACT 1 or QKV 2, two weight rows per output. Each weight
    tile is read one step ahead of its use (the first before the norm's pass over the input), so that no load waits
    for arithmetic; the biases, the residual, the cache column and RoPE's tables are read before the loop (after it,
    each was a round trip at the program's end). PDL: launched as a dependent (``dependent_launch``): the first weight
    tile and the biases are read while the kernel before this one finishes, everything else after it has completed."""
    pid = tl.program_id(0)
    row = tl.program_id(1).to(tl.int64)
    x_ptr += row * k_in
    if QKV != 0:  # the token's q, position and column, and its batch row's caches
        out_ptr += row * num_heads * HEAD_DIM
        positions_ptr += row
        columns_ptr += row % seq
        cache_k_ptr += (row // seq) * num_kv_heads * max_length * HEAD_DIM
        cache_v_ptr += (row // seq) * num_kv_heads * max_length * HEAD_DIM
    else:
        out_ptr += row * n_out
        residual_ptr += row * n_out
    if QKV == 2:
        head = pid // (HEAD_DIM // 2 // BLOCK_N)
        j = (pid % (HEAD_DIM // 2 // BLOCK_N)) * BLOCK_N + tl.arange(0, BLOCK_N)  # [N] within the head's first half
        n = head * HEAD_DIM + j
        n2 = n + HEAD_DIM // 2
    else:
        n = pid * BLOCK_N + tl.arange(0, BLOCK_N)  # [N]
        n2 = n_out + n  # the up rows (ACT 1)
    kk = tl.arange(0, BLOCK_K)  # [K]
    n_ok = n < n_out
    dtype = x_ptr.dtype.element_ty
    w = _weight_tile(w_ptr, n, n_ok, 0, kk, k_in)  # [N, K]
    w2 = w
    if PAIRED:
        w2 = _weight_tile(w_ptr, n2, n_ok, 0, kk, k_in)
    # What the outputs need besides the product is read before the loop, so that it arrives while the weights stream
    # (read after it, each was a round trip of its own at the program's end): the biases, the residual, the cache
    # column and RoPE's tables.
    bias = n
    bias2 = n
    if HAS_BIAS:
        bias = tl.load(bias_ptr + n, mask=n_ok, other=0.0)
        if QKV == 2:
            bias2 = tl.load(bias_ptr + n2)
    await_previous(PDL)  # the weights and biases are constant; what the kernels before wrote is read after this
    residual = n
    if HAS_RESIDUAL:
        residual = tl.load(residual_ptr + n, mask=n_ok, other=0.0)
    column = 0
    if QKV != 0:
        column = tl.load(columns_ptr)
    if QKV == 2:
        tables = _rope_tables(head, j, positions_ptr, cos_ptr, sin_ptr, num_heads, num_kv_heads, HEAD_DIM)
    mean = 0.0
    inverse_std = 0.0
    if NORM != 0:  # the row's mean (layer norm) and 1 / std, in loads of BLOCK_X (one for hidden sizes to 8192)
        xx = tl.arange(0, BLOCK_X)
        if NORM == 2:
            total = tl.zeros((BLOCK_X,), tl.float32)
            for k0 in range(0, k_in, BLOCK_X):
                total += tl.load(x_ptr + k0 + xx, mask=(k0 + xx) < k_in, other=0.0).to(tl.float32)
            mean = tl.sum(total, axis=0) / k_in
        squares = tl.zeros((BLOCK_X,), tl.float32)
        for k0 in range(0, k_in, BLOCK_X):
            inside = (k0 + xx) < k_in
            xs = tl.load(x_ptr + k0 + xx, mask=inside, other=0.0).to(tl.float32)
            if NORM == 2:
                xs = tl.where(inside, xs - mean, 0.0)
            squares += xs * xs
        inverse_std = 1.0 / tl.sqrt(tl.sum(squares, axis=0) / k_in + eps)
    acc = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)  # elementwise products, reduced once at the end
    acc2 = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
    for k0 in range(0, k_in, BLOCK_K):
        k_ok = (k0 + kk) < k_in
        xs = tl.load(x_ptr + k0 + kk, mask=k_ok, other=0.0)  # [K]
        if NORM == 1:  # as reference.rms_norm: normalised in float32, rounded, times the weight, rounded
            normed = (xs.to(tl.float32) * inverse_std).to(dtype)
            g = tl.load(norm_ptr + k0 + kk, mask=k_ok, other=0.0)
            xs = (g.to(tl.float32) * normed.to(tl.float32)).to(dtype)
        elif NORM == 2:  # as F.layer_norm: in float32, rounded once
            g = tl.load(norm_ptr + k0 + kk, mask=k_ok, other=0.0).to(tl.float32)
            b = tl.load(norm_bias_ptr + k0 + kk, mask=k_ok, other=0.0).to(tl.float32)
            xs = ((xs.to(tl.float32) - mean) * inverse_std * g + b).to(dtype)
        xf = xs.to(tl.float32)[None, :]  # [1, K]
        acc += xf * w.to(tl.float32)  # [N, K]
        if PAIRED:
            acc2 += xf * w2.to(tl.float32)
        w = _weight_tile(w_ptr, n, n_ok, k0 + BLOCK_K, kk, k_in)  # the next (none past the last)
        if PAIRED:
            w2 = _weight_tile(w_ptr, n2, n_ok, k0 + BLOCK_K, kk, k_in)
    y = tl.sum(acc, axis=1)  # [N]
    if HAS_BIAS:
        y += bias.to(tl.float32)
    y = y.to(dtype)  # the product rounded, as F.linear returns it
    if QKV == 2:
        y2 = tl.sum(acc2, axis=1)
        if HAS_BIAS:
            y2 += bias2.to(tl.float32)
        _rope_store(y, y2.to(dtype), head, j, tables, out_ptr, cache_k_ptr, cache_v_ptr, column, num_heads,
                    num_kv_heads, max_length, HEAD_DIM)  # fmt: skip
    elif QKV == 1:
        _store_qkv(y, n, n_ok, out_ptr, cache_k_ptr, cache_v_ptr, column, num_heads, num_kv_heads, max_length,
                   HEAD_DIM)  # fmt: skip
    else:
        if ACT == 1:  # as silu_mul over the rounded gate and up
            gate = y.to(tl.float32)
            up = tl.sum(acc2, axis=1).to(dtype).to(tl.float32)
            y = (gate / (1.0 + tl.exp(-gate)) * up).to(dtype)
        elif ACT == 2:  # F.gelu(approximate="tanh") of the rounded product, 1 + tanh(u) as 2 / (1 + exp(-2 u))
            yf = y.to(tl.float32)
            u = 0.7978845608028654 * (yf + 0.044715 * yf * yf * yf)
            y = (0.5 * yf * (2.0 / (1.0 + tl.exp(-2.0 * u)))).to(dtype)
        elif ACT == 3:  # F.gelu(approximate="none")
            yf = y.to(tl.float32)
            y = (0.5 * yf * (1.0 + tl.math.erf(yf * 0.7071067811865476))).to(dtype)
        if HAS_RESIDUAL:  # residual + y, rounded like an add in the model's dtype
            y = (residual.to(tl.float32) + y.to(tl.float32)).to(dtype)
        tl.store(out_ptr + n, y, mask=n_ok)


@triton.jit
def _store_qkv(
    y, n, n_ok, q_ptr, cache_k_ptr, cache_v_ptr, column, num_heads, num_kv_heads, max_length,
    HEAD_DIM: tl.constexpr,
):  # fmt: skip
    """Outputs n [N] (rounded) of one token's q/k/v product, stored as they are: q heads to q, k and v heads into the
    caches ([Hkv, M, Dh], one batch row) at ``column``."""
    head = n // HEAD_DIM
    d = n % HEAD_DIM
    tl.store(q_ptr + n, y, mask=n_ok & (head < num_heads))
    kv_head = head - num_heads
    is_k = n_ok & (kv_head >= 0) & (kv_head < num_kv_heads)
    tl.store(cache_k_ptr + (kv_head * max_length + column) * HEAD_DIM + d, y, mask=is_k)
    v_head = kv_head - num_kv_heads
    tl.store(cache_v_ptr + (v_head * max_length + column) * HEAD_DIM + d, y, mask=n_ok & (v_head >= 0))


@triton.jit
def _rope_tables(head, j, positions_ptr, cos_ptr, sin_ptr, num_heads, num_kv_heads, HEAD_DIM: tl.constexpr):
    """RoPE's cos and sin of dimensions j and j + HEAD_DIM / 2 ([N] each) at the token's position, read for q and k
    heads (a value head's are not read)."""
    half = HEAD_DIM // 2
    rotated = (j * 0 + head) < num_heads + num_kv_heads  # [N]
    at = tl.load(positions_ptr) * HEAD_DIM + j
    cos1 = tl.load(cos_ptr + at, mask=rotated, other=1.0)
    cos2 = tl.load(cos_ptr + at + half, mask=rotated, other=1.0)
    sin1 = tl.load(sin_ptr + at, mask=rotated, other=0.0)
    sin2 = tl.load(sin_ptr + at + half, mask=rotated, other=0.0)
    return cos1, cos2, sin1, sin2


@triton.jit
def _rope_store(
    y1, y2, head, j, tables, q_ptr, cache_k_ptr, cache_v_ptr, column, num_heads, num_kv_heads, max_length,
    HEAD_DIM: tl.constexpr,
):  # fmt: skip
    """Dimensions j and j + HEAD_DIM / 2 ([N] each, rounded products) of head ``head`` of one token's q/k/v: rotated
    (q and k heads; ``tables``: ``_rope_tables``) as the RoPE kernel does, in float32 from the rounded values, and
    stored: q heads to q, k and v heads into the caches ([Hkv, M, Dh], one batch row) at ``column``."""
    half = HEAD_DIM // 2
    x1 = y1.to(tl.float32)
    x2 = y2.to(tl.float32)
    if head < num_heads + num_kv_heads:
        cos1, cos2, sin1, sin2 = tables
        cos1, cos2, sin1, sin2 = cos1.to(tl.float32), cos2.to(tl.float32), sin1.to(tl.float32), sin2.to(tl.float32)
        x1, x2 = x1 * cos1 - x2 * sin1, x2 * cos2 + x1 * sin2
    if head < num_heads:
        out = q_ptr + head * HEAD_DIM
    elif head < num_heads + num_kv_heads:
        out = cache_k_ptr + ((head - num_heads) * max_length + column) * HEAD_DIM
    else:
        out = cache_v_ptr + ((head - num_heads - num_kv_heads) * max_length + column) * HEAD_DIM
    tl.store(out + j, x1.to(q_ptr.dtype.element_ty))
    tl.store(out + half + j, x2.to(q_ptr.dtype.element_ty))


def blocks(n_out: int, k_in: int, silu_pair: bool) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_K, warps): two output rows per program, 1024 inputs per load (512 with ``silu_pair``, which
    reads a gate and an up row per output), one warp; one row and four warps for few outputs of long rows, so that
    enough loads are in flight (the 1B shape's down projection, GPT-2's second MLP product). Chosen from sweeps over
    the 1B, 8B and GPT-2 shapes' products on an H200 (``scripts/diag/gemv_variants.py``, ``scripts/diag/gemv_ab.py
    sweep``; docs/performance.md, ninth and tenth sessions)."""
    if silu_pair:
        return 2, min(triton.next_power_of_2(k_in), 512), 1
    block_k = min(triton.next_power_of_2(k_in), 1024)
    if n_out <= 2048 and k_in > 2048:
        return 1, block_k, 4
    return 2, block_k, 1


def fused_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    norm_weight: torch.Tensor | None = None,
    eps: float = 0.0,
    residual: torch.Tensor | None = None,
    silu_pair: bool = False,
    *,
    norm_bias: torch.Tensor | None = None,
    gelu: str | None = None,
    tiles: tuple[int, int, int] | None = None,
) -> torch.Tensor:
    """x: [R, K] contiguous (R <= MAX_ROWS); weight: [N, K] ([2 N, K] with ``silu_pair``); bias: [N];
    norm_weight, norm_bias: [K]; residual: [R, N]. Returns [R, N] in x's dtype: ``reference.fused_linear`` (see
    there and the module docstring). ``tiles``: (BLOCK_N, BLOCK_K, warps) instead of :func:`blocks`, for sweeps."""
    rows, k_in = x.shape
    assert 1 <= rows <= MAX_ROWS and x.is_contiguous() and weight.is_contiguous()
    assert residual is None or residual.is_contiguous()
    assert not (silu_pair and gelu is not None)
    n_out = weight.shape[0] // 2 if silu_pair else weight.shape[0]
    out = torch.empty((rows, n_out), dtype=x.dtype, device=x.device)
    block_n, block_k, warps = tiles or blocks(n_out, k_in, silu_pair)
    act = ACT_SILU_PAIR if silu_pair else GELU[gelu] if gelu is not None else 0
    pdl = dependent_launch.enabled(x.device)
    _fused_linear_kernel[(triton.cdiv(n_out, block_n), rows)](
        x, weight, bias if bias is not None else x, norm_weight if norm_weight is not None else x,
        norm_bias if norm_bias is not None else x, residual if residual is not None else x, out, n_out, k_in, eps,
        x, x, x, x, x, x, 0, 0, 0, 1,
        _norm_kind(norm_weight, norm_bias), bias is not None, act, residual is not None, 0, silu_pair, 2,
        block_n, block_k, _norm_block(k_in), pdl, num_warps=warps, launch_pdl=pdl,
    )  # fmt: skip
    return out


def _norm_kind(norm_weight: torch.Tensor | None, norm_bias: torch.Tensor | None) -> int:
    assert norm_bias is None or norm_weight is not None
    return 0 if norm_weight is None else NORM_LAYER if norm_bias is not None else NORM_RMS


def _norm_block(k_in: int) -> int:
    return min(triton.next_power_of_2(k_in), 8192)


ROPE_BLOCK_N = 1  # dimension pairs per program of the q/k/v product with RoPE (each pair: two weight rows)


def rope_blocks(k_in: int, head_dim: int) -> tuple[int, int, int]:
    """(BLOCK_N pairs of rows, BLOCK_K, warps) of the q/k/v product with RoPE: one pair, up to 1024 inputs a load,
    one warp; four pairs and four warps from 4096 inputs (the 8B shape: 19.3 us against 20.0 or more for one pair
    on an H100, ``gemv_ab.py sweep 8b:qkv_rope``; docs/performance.md, nineteenth session) where four divide the
    head's half."""
    if k_in >= 4096 and (head_dim // 2) % 4 == 0:
        return 4 * ROPE_BLOCK_N, 1024, 4
    return ROPE_BLOCK_N, min(triton.next_power_of_2(k_in), 1024), 1


def linear_rope_store(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    norm_weight: torch.Tensor | None,
    eps: float,
    positions: torch.Tensor,
    cos_table: torch.Tensor | None,
    sin_table: torch.Tensor | None,
    cache_k: torch.Tensor,
    cache_v: torch.Tensor,
    columns: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
    *,
    norm_bias: torch.Tensor | None = None,
    tiles: tuple[int, int, int] | None = None,
) -> torch.Tensor:
    """``reference.linear_rope_store`` for up to MAX_ROWS tokens: the q/k/v product (with its norm and bias), RoPE
    (unless the tables are None: learned positions) and the KV write in one kernel. x: [B * S, D]; weight:
    [(H + 2 Hkv) Dh, D]; positions: [B, S]; cache_k, cache_v: [B, Hkv, M, Dh] contiguous; columns: [S]. Returns q:
    [B, S, H, Dh].
    ``tiles``: (BLOCK_N, BLOCK_K, warps) instead of the defaults, for sweeps (with RoPE, BLOCK_N counts pairs of
    rows and must divide Dh / 2)."""
    rows, k_in = x.shape
    batch, seq = positions.shape
    assert 1 <= rows <= MAX_ROWS and rows == batch * seq and x.is_contiguous() and weight.is_contiguous()
    assert cache_k.is_contiguous() and cache_v.is_contiguous() and cache_k.shape[0] == batch
    assert positions.is_contiguous() and columns.shape == (seq,)
    n_out = weight.shape[0]
    head_dim = n_out // (num_heads + 2 * num_kv_heads)
    q = torch.empty((batch, seq, num_heads, head_dim), dtype=x.dtype, device=x.device)
    rotate = cos_table is not None and sin_table is not None
    pdl = dependent_launch.enabled(x.device)
    if rotate:  # pairs of rows j, j + Dh / 2 per program
        block_n, block_k, warps = tiles or rope_blocks(k_in, head_dim)
        assert (head_dim // 2) % block_n == 0
        grid = n_out // (2 * block_n)
    else:  # plain outputs, each routed to q, k or v
        block_n, block_k, warps = tiles or blocks(n_out, k_in, False)
        grid = triton.cdiv(n_out, block_n)
    _fused_linear_kernel[(grid, rows)](
        x, weight, bias if bias is not None else x, norm_weight if norm_weight is not None else x,
        norm_bias if norm_bias is not None else x, x, q, n_out, k_in, eps, positions,
        cos_table if rotate else x, sin_table if rotate else x, cache_k, cache_v, columns, num_heads, num_kv_heads,
        cache_k.shape[2], seq, _norm_kind(norm_weight, norm_bias), bias is not None, 0, False,
        QKV_ROTATE if rotate else QKV_STORE, rotate, head_dim, block_n, block_k, _norm_block(k_in),
        pdl, num_warps=warps, launch_pdl=pdl,
    )  # fmt: skip
    return q
