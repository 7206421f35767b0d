"""A matrix-vector product for the few rows of a decoding step, with the layer's small operations fused into it.

At batch 1 a decoder layer is a handful of products of one to eight rows with a weight matrix, and between them
RMS norms, a SiLU and residual adds that each cost a kernel launch and a round trip of the activations (on the
Llama-3.2-1B shape, about 25 us per layer beyond the weights' own read time: docs/performance.md, fifth session).
:func:`fused_linear` reads the weight once, in tiles of ``BLOCK_N`` output rows by ``BLOCK_K`` inputs, and does in
the same kernel:

- before the product (``norm_weight``): the RMS norm of the input rows, the way ``reference.rms_norm`` rounds it;
- after it: the bias, SiLU(gate) * up over a ``[2I, K]`` gate-then-up weight (``silu_pair``: each program reads
  the gate rows and the matching up rows), and the residual add (``residual``).

It computes what ``reference.fused_linear`` computes, products in float32 (no TF32) with a different summation
order than cuBLAS. It serves one row (an autoregressive step, a draft model's step): with more, its tiles of
rows times outputs times inputs ran 10x slower than cuBLAS. Shapes: T rows (at most ``MAX_ROWS``), K inputs, N
outputs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_ROWS = 1  # more rows (a verification, a batch) take the unfused path: cuBLAS products, separate kernels


@triton.jit
def _fused_linear_kernel(
    x_ptr, w_ptr, bias_ptr, norm_ptr, residual_ptr, out_ptr,
    rows, n_out, k_in, eps,
    HAS_NORM: tl.constexpr, HAS_BIAS: tl.constexpr, SILU_PAIR: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """Program n: outputs [n * BLOCK_N, (n + 1) * BLOCK_N) of every row. With SILU_PAIR the weight has 2 n_out rows
    (gate, then up) and the program reads the gate rows and the up rows of its outputs."""
    pid = tl.program_id(0)
    t = tl.arange(0, BLOCK_T)  # [T]
    n = pid * BLOCK_N + tl.arange(0, BLOCK_N)  # [N]
    kk = tl.arange(0, BLOCK_K)  # [K]
    t_ok = t < rows
    n_ok = n < n_out
    dtype = x_ptr.dtype.element_ty
    if HAS_NORM:  # 1 / rms of each row, over the whole input (a few KB, read again from cache below)
        squares = tl.zeros((BLOCK_T, BLOCK_K), tl.float32)
        for k0 in range(0, k_in, BLOCK_K):
            k_ok = (k0 + kk) < k_in
            xs = tl.load(x_ptr + t[:, None] * k_in + k0 + kk[None, :], mask=t_ok[:, None] & k_ok[None, :], other=0.0)
            xs = xs.to(tl.float32)
            squares += xs * xs
        inverse_rms = 1.0 / tl.sqrt(tl.sum(squares, axis=1) / k_in + eps)  # [T]
    acc = tl.zeros((BLOCK_T, BLOCK_N), tl.float32)
    acc_up = tl.zeros((BLOCK_T, BLOCK_N), tl.float32)
    for k0 in range(0, k_in, BLOCK_K):
        k_ok = (k0 + kk) < k_in
        xs = tl.load(x_ptr + t[:, None] * k_in + k0 + kk[None, :], mask=t_ok[:, None] & k_ok[None, :], other=0.0)
        if HAS_NORM:  # as reference.rms_norm: normalised in float32, rounded, times the weight, rounded
            normed = (xs.to(tl.float32) * inverse_rms[:, None]).to(dtype)
            g = tl.load(norm_ptr + k0 + kk, mask=k_ok, other=0.0)
            xs = (g[None, :].to(tl.float32) * normed.to(tl.float32)).to(dtype)
        xf = xs.to(tl.float32)[:, None, :]  # [T, 1, K]
        w_mask = n_ok[:, None] & k_ok[None, :]
        w = tl.load(w_ptr + n[:, None] * k_in + k0 + kk[None, :], mask=w_mask, other=0.0)  # [N, K]
        acc += tl.sum(xf * w.to(tl.float32)[None, :, :], axis=2)
        if SILU_PAIR:
            w_up = tl.load(w_ptr + (n_out + n[:, None]) * k_in + k0 + kk[None, :], mask=w_mask, other=0.0)
            acc_up += tl.sum(xf * w_up.to(tl.float32)[None, :, :], axis=2)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    y = acc.to(dtype)  # the product rounded, as F.linear returns it
    if SILU_PAIR:  # as silu_mul over the rounded gate and up
        gate = y.to(tl.float32)
        up = acc_up.to(dtype).to(tl.float32)
        y = (gate / (1.0 + tl.exp(-gate)) * up).to(dtype)
    out_mask = t_ok[:, None] & n_ok[None, :]
    if HAS_RESIDUAL:  # residual + y, rounded like an add in the model's dtype
        r = tl.load(residual_ptr + t[:, None] * n_out + n[None, :], mask=out_mask, other=0.0)
        y = (r.to(tl.float32) + y.to(tl.float32)).to(dtype)
    tl.store(out_ptr + t[:, None] * n_out + n[None, :], y, mask=out_mask)


def blocks(rows: int, n_out: int, k_in: int, silu_pair: bool) -> tuple[int, int, int, int]:
    """(BLOCK_T, BLOCK_N, BLOCK_K, warps): one warp per program, reading a whole row of the weight (up to 2048
    inputs) per load for two output rows (four for narrow matrices), so that many small programs keep every
    multiprocessor loading: the rule a sweep of tiles and warps over the 1B and 8B shapes' products on an H200
    suggested (``scripts/diag/gemv_ab.py sweep``; docs/performance.md, seventh session)."""
    block_t = triton.next_power_of_2(max(rows, 1))
    block_k = min(triton.next_power_of_2(k_in), 2048)
    block_n = 4 if n_out <= 2048 and not silu_pair else 2
    return block_t, block_n, block_k, 1


def fused_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    norm_weight: torch.Tensor | None = None,
    eps: float = 0.0,
    residual: torch.Tensor | None = None,
    silu_pair: bool = False,
) -> torch.Tensor:
    """x: [T, K] contiguous, T <= MAX_ROWS; weight: [N, K] ([2 N, K] with ``silu_pair``); bias: [N]; norm_weight: [K];
    residual: [T, N]. Returns [T, N] in x's dtype (see the module docstring)."""
    rows, k_in = x.shape
    assert rows <= MAX_ROWS and x.is_contiguous() and weight.is_contiguous()
    n_out = weight.shape[0] // 2 if silu_pair else weight.shape[0]
    out = torch.empty((rows, n_out), dtype=x.dtype, device=x.device)
    block_t, block_n, block_k, warps = blocks(rows, n_out, k_in, silu_pair)
    _fused_linear_kernel[(triton.cdiv(n_out, block_n),)](
        x, weight, bias if bias is not None else x, norm_weight if norm_weight is not None else x,
        residual if residual is not None else x, out, rows, n_out, k_in, eps,
        norm_weight is not None, bias is not None, silu_pair, residual is not None,
        block_t, block_n, block_k, num_warps=warps,
    )  # fmt: skip
    return out
