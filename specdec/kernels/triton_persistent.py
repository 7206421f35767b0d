"""One decoding step of a whole model as one kernel: a persistent grid that passes a barrier between phases.

At batch 1 a small model's decoding step is bound by latency, not bandwidth: GPT-2's layer is five kernels that each
read 0.4-4.7 MB of weights, well under a microsecond at full bandwidth, yet take several microseconds each from
launch to completion (the GPT-2 shape ran at 15-16% of its weights-read floor, the Llama-3.2-1B shape at 61-63%:
docs/performance.md). Here one launch of one program per SM runs the whole step for one token, phase by phase:

    embed       the token's embedding (GPT-2: plus its position's)
    per layer:  qkv     the norm, the q/k/v product and bias; RoPE (Llama family); q to a buffer, k and v into the
                        cache
                attend  per query head and split of keys: the split's softmax partials (max, sum, output)
                out     the merge of each head's splits, the output product (and bias), the residual add
                mlp_in  the norm, the first MLP product: GELU (GPT-2, with the bias) or SiLU(gate) * up (Llama)
                mlp_out the second MLP product (and bias), the residual add
    head        the final norm and the output layer: logits

Every phase after the first starts with a grid barrier: an arrival counter in global memory that each program
increments with release semantics and then polls with acquire semantics until every program has arrived (Triton
emits one ``atom.release.gpu`` and ``ld.acquire.gpu`` polls per program, from its first thread, between
``bar.sync``).
Weights never depend on the step, so a product's program reads its first weight tile before it waits: the load's
latency hides behind the barrier's. Activations written during the step are read with ``.cg`` (from L2, past the
SM's L1, which is not coherent across SMs). The last program to leave resets the counter for the next launch.

A grid barrier needs every program resident at once: one program per SM (a kernel that launches at all fits one
program on an SM), and no other kernel running beside it (a CUDA graph replays the step alone). A barrier that
waits more than SPIN_LIMIT polls (a program that never became resident) gives up instead of hanging the GPU: it sets
the error flag and opens the counter (OPEN), so that every later barrier passes at once and the launch ends after
one wait, not one per phase. The step's output is then garbage: the first launch for each cache size (the eager one,
before a CUDA graph captures the step) reads the flag and raises :class:`~specdec.errors.DeviceError`.

With ``phase_launches`` each phase is a launch of its own and the launches' boundaries are the barriers. Triton's
interpreter runs programs one after another, so a barrier would wait forever in it: there the tests run one program
over every phase, and several programs over one phase per launch, which checks how the work is split.

The step also does the decoder's bookkeeping around a forward: it reads the token's cache column from the decoder's
length and its position from the decoder's table on the device, advances the length (the last program out, after
every program has read it), and writes float32 logits (rounded to the model's dtype), so that a one-token step of
``FastDecoder`` is this one launch.

With ``fused_mlp`` (``SPECDEC_PERSISTENT=fused``) a layer has four phases: mlp_in and mlp_out become one phase in
which each program multiplies its inner units' activations by their rows of the second product's transposed weight
and adds the result to a [D] float32 sum with atomics; the next q/k/v phase (or the head) norms the residual with
that sum folded in, and the next out phase folds it in for good (``_mlp_phase``, ``_fold``).

It computes what ``FastGPT2.run`` and ``FastLlama.run`` compute for one token, at the same rounding points as
``triton_gemv`` (products in float32, rounded to the model's dtype after the bias, then the activation and the
residual add, each rounded; RoPE and the norms as there) and the split attention kernel, with other summation
orders. It is off unless ``SPECDEC_PERSISTENT`` is 1 or fused: on the H200, end to end, its default cut (eight
warps, 32 KB tiles each read ahead into registers) runs GPT-2 1.07-1.10x and the 1B shape 0.79-0.81x as fast as the
kernels (docs/performance.md, seventeenth session), and it needs every SM to itself. Shapes: D hidden, I inner
(MLP), H / Hkv query / key-value heads, Dh head size, M cache columns, V vocabulary, L layers, P programs.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from specdec.errors import ConfigError, DeviceError, UnsupportedModelError
from specdec.fast.gpt2 import FastGPT2, GPT2Stack
from specdec.fast.llama import FastLlama

try:  # Triton 3.x on CUDA: the GPU's global nanosecond timer (the timeline diagnostic)
    from triton.language.extra.cuda import globaltimer
except ImportError:  # pragma: no cover - a Triton without it: no timeline
    globaltimer = None

ENV_PERSISTENT = "SPECDEC_PERSISTENT"  # "1": one-token forwards run as one persistent kernel; "fused": MLP in one phase
PERSISTENT_VALUES = ("0", "1", "fused")
ENV_SHAPE = "SPECDEC_PERSISTENT_SHAPE"  # "stages=0,early_tiles=2" (or spaces): PersistentShape fields, to try cuts

SPIN_LIMIT = tl.constexpr(1 << 16)  # polls of a barrier's counter before it gives up (tens of milliseconds)
OPEN = tl.constexpr(1 << 30)  # or-ed into the counter by a barrier that gave up: every later wait passes at once
# A product phase's INPUT (what it multiplies) and OUTPUT (where it writes): see _linear_phase.
INPUT_PLAIN, INPUT_LAYER_NORM, INPUT_ATTENTION, INPUT_RMS_NORM, INPUT_MERGED = (tl.constexpr(i) for i in range(5))
OUTPUT_QKV, OUTPUT_RESIDUAL, OUTPUT_ACTIVATION, OUTPUT_PLAIN, OUTPUT_ROPE, OUTPUT_SILU = (
    tl.constexpr(i) for i in range(6)
)
GELU = {"tanh": 2, "none": 3}  # F.gelu's ``approximate`` -> ACT (as triton_gemv's)


def enabled() -> bool:
    """Whether one-token forwards (GPT-2, the Llama family) run as one persistent kernel where the Triton kernels run
    (on a CPU, in Triton's interpreter: one program): ``SPECDEC_PERSISTENT`` 1 or fused (see ``default_shape``)."""
    value = os.environ.get(ENV_PERSISTENT, "0").strip() or "0"
    if value not in PERSISTENT_VALUES:
        raise ConfigError(f"{ENV_PERSISTENT}={value!r}: expected one of {', '.join(PERSISTENT_VALUES)}")
    return value != "0"


@triton.jit
def _grid_sync(counter_ptr, error_ptr, arrivals, SYNC: tl.constexpr):
    """Wait until the counter holds ``arrivals`` (every program's arrivals so far, this one's included). SYNC False
    (one phase per launch, or one program): nothing to wait for."""
    if SYNC:
        tl.debug_barrier()  # every thread's stores before this program's arrival
        tl.atomic_add(counter_ptr, 1, sem="release", scope="gpu")
        seen = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
        polls = 0
        while (seen < arrivals) & (polls < SPIN_LIMIT):
            seen = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
            polls += 1
        if seen < arrivals:  # give up: flag the error and open every later barrier of every program at once
            tl.atomic_add(error_ptr, 1)
            tl.atomic_or(counter_ptr, OPEN)
        tl.debug_barrier()


@triton.jit
def _grid_leave(counter_ptr, arrivals, nprog, SYNC: tl.constexpr):
    """Leave after the barriers that brought the counter to ``arrivals``: the last program out resets it for the next
    launch (every other has passed its last barrier, so none is still polling). Returns whether this program left
    last (without barriers: whether it is the only one)."""
    if SYNC:
        tl.debug_barrier()
        before = tl.atomic_add(counter_ptr, 1, sem="acq_rel", scope="gpu")
        last = (before & (OPEN - 1)) == arrivals + nprog - 1  # the arrivals count on under an open barrier
        if last:
            tl.atomic_xchg(counter_ptr, 0)
        return last
    else:
        return nprog == 1


@triton.jit
def _early(pid, nprog, BLOCK: tl.constexpr, EARLY: tl.constexpr):
    """The rows (outputs, units) of a program's first EARLY tiles of BLOCK, tile t on program t % nprog: [EARLY BLOCK]
    (EARLY BLOCK a power of two)."""
    r = tl.arange(0, EARLY * BLOCK)
    return (pid + nprog * (r // BLOCK)) * BLOCK + r % BLOCK


@triton.jit
def _row_tile(w_ptr, rows, rows_ok, kk, k_ok, k_in):
    """Weight rows ``rows`` [N] where ``rows_ok`` (all K_PAD inputs, nothing past a row's end): [N, K_PAD]."""
    mask = rows_ok[:, None] & k_ok[None, :]
    return tl.load(w_ptr + rows[:, None] * k_in + kk[None, :], mask=mask, other=0.0, eviction_policy="evict_first")


@triton.jit
def _merged_attention(max_ptr, sum_ptr, acc_ptr, column, split_keys, HEADS: tl.constexpr, H_PAD: tl.constexpr,
                      HEAD_DIM: tl.constexpr, SPLITS: tl.constexpr):  # fmt: skip
    """The attention's output row [H_PAD * Dh] (heads one after another), float32: each head's split partials
    ([H, SPLITS] maxima and sums, [H, SPLITS, Dh] outputs) merged in one load, the splits up to the one holding
    ``column``; zero for padding heads."""
    heads = tl.arange(0, H_PAD)
    splits = tl.arange(0, SPLITS)
    dims = tl.arange(0, HEAD_DIM)
    used = (heads < HEADS)[:, None] & (splits <= column // split_keys)[None, :]  # [H_PAD, S]
    part = heads[:, None] * SPLITS + splits[None, :]
    maxima = tl.load(max_ptr + part, mask=used, other=float("-inf"), cache_modifier=".cg")
    sums = tl.load(sum_ptr + part, mask=used, other=0.0, cache_modifier=".cg")
    acc = tl.load(acc_ptr + part[:, :, None] * HEAD_DIM + dims[None, None, :], mask=used[:, :, None], other=0.0,
                  cache_modifier=".cg")  # [H_PAD, S, Dh]  # fmt: skip
    top = tl.max(maxima, axis=1)  # [H_PAD]
    safe_top = tl.where(top == float("-inf"), 0.0, top)
    weights = tl.exp(maxima - safe_top[:, None])  # [H_PAD, S]; 0 for unused splits
    total = tl.sum(sums * weights, axis=1)  # [H_PAD]
    out = tl.sum(acc * weights[:, :, None], axis=1) / tl.where(total == 0.0, 1.0, total)[:, None]  # [H_PAD, Dh]
    return tl.reshape(out, (H_PAD * HEAD_DIM,))


@triton.jit
def _pair_rows(p, n_out, OUTPUT: tl.constexpr, HEAD_DIM: tl.constexpr):
    """The weight rows of outputs (pairs with OUTPUT 4 and 5) p [N]: (rows, second rows). RoPE (4): pair p is
    dimensions j and j + Dh / 2 of head p // (Dh / 2); SiLU (5): the gate row p and the up row n_out + p."""
    if OUTPUT == 4:
        first = (p // (HEAD_DIM // 2)) * HEAD_DIM + p % (HEAD_DIM // 2)
        return first, first + HEAD_DIM // 2
    elif OUTPUT == 5:
        return p, p + n_out
    else:
        return p, p


@triton.jit
def _gelu(yf, ACT: tl.constexpr):
    """F.gelu of the rounded product yf (float32): approximate="tanh" (ACT 2, 1 + tanh(u) as 2 / (1 + exp(-2 u))) or
    "none" (3)."""
    if ACT == 2:
        u = 0.7978845608028654 * (yf + 0.044715 * yf * yf * yf)
        return 0.5 * yf * (2.0 / (1.0 + tl.exp(-2.0 * u)))
    else:
        return 0.5 * yf * (1.0 + tl.math.erf(yf * 0.7071067811865476))


@triton.jit
def _pending(index, index_ok, delta_ptr, delta_bias_ptr, delta_bias_ok):
    """The fused MLP's pending sum at ``index`` [N] (float32) and its bias (the model's dtype), as loaded."""
    d = tl.load(delta_ptr + index, mask=index_ok, other=0.0, cache_modifier=".cg")
    bias_ok = index_ok & ((index * 0 + delta_bias_ok) != 0)  # delta_bias_ok: a bool, scalar or traced
    return d, tl.load(delta_bias_ptr + index, mask=bias_ok, other=0.0)


@triton.jit
def _fold(r, d, b, DELTA: tl.constexpr):
    """The residual r [N] (float32 of the model's dtype) with the fused MLP's pending sum d and its bias b folded in,
    as the unfused step's second MLP product and residual add round it: r + round(d + b), rounded (DELTA); else r."""
    if DELTA:
        dtype = b.dtype
        r = (r + (d + b.to(tl.float32)).to(dtype).to(tl.float32)).to(dtype).to(tl.float32)
    return r


@triton.jit
def _product_out(
    y, y2, p, p_ok, extra, out_ptr, cache_k_ptr, cache_v_ptr, column, max_length,
    OUTPUT: tl.constexpr, ACT: tl.constexpr, HEADS: tl.constexpr, KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
    DELTA: tl.constexpr,
):  # fmt: skip
    """Store outputs p [N] of a product (y: rounded, with its bias; y2: the second rows' of pairs) as OUTPUT says
    (see ``_linear_phase``), with what ``_tile_inputs`` loaded for them (``extra``)."""
    dtype = out_ptr.dtype.element_ty
    if OUTPUT == 0:  # q, k, v of one token (as they are): q heads to out, k and v into the caches at ``column``
        head = p // HEAD_DIM
        d = p % HEAD_DIM
        kv_head = head - HEADS
        v_head = kv_head - KV_HEADS
        tl.store(out_ptr + p, y, mask=p_ok & (head < HEADS))
        tl.store(cache_k_ptr + (kv_head * max_length + column) * HEAD_DIM + d, y,
                 mask=p_ok & (kv_head >= 0) & (kv_head < KV_HEADS))  # fmt: skip
        tl.store(cache_v_ptr + (v_head * max_length + column) * HEAD_DIM + d, y, mask=p_ok & (v_head >= 0))
    elif OUTPUT == 1:  # residual + y, rounded like an add in the model's dtype (the pending MLP sum first: DELTA)
        r, d, b = extra
        r = _fold(r.to(tl.float32), d, b, DELTA)
        tl.store(out_ptr + p, (r + y.to(tl.float32)).to(dtype), mask=p_ok)
    elif OUTPUT == 2:
        tl.store(out_ptr + p, _gelu(y.to(tl.float32), ACT).to(dtype), mask=p_ok)
    elif OUTPUT == 3:
        tl.store(out_ptr + p, y, mask=p_ok)
    elif OUTPUT == 4:  # dimensions j, j + Dh / 2 of q, k and v heads: q and k rotated as triton_gemv's _rope_store
        half = HEAD_DIM // 2
        head = p // half
        j = p % half
        x1 = y.to(tl.float32)
        x2 = y2.to(tl.float32)
        cos1, cos2, sin1, sin2 = extra
        cos1, cos2, sin1, sin2 = cos1.to(tl.float32), cos2.to(tl.float32), sin1.to(tl.float32), sin2.to(tl.float32)
        x1, x2 = x1 * cos1 - x2 * sin1, x2 * cos2 + x1 * sin2
        kv_head = head - HEADS
        v_head = kv_head - KV_HEADS
        is_q = p_ok & (head < HEADS)
        is_k = p_ok & (kv_head >= 0) & (kv_head < KV_HEADS)
        is_v = p_ok & (v_head >= 0)
        at_q = head * HEAD_DIM + j
        at_k = (kv_head * max_length + column) * HEAD_DIM + j
        at_v = (v_head * max_length + column) * HEAD_DIM + j
        tl.store(out_ptr + at_q, x1.to(dtype), mask=is_q)
        tl.store(out_ptr + at_q + half, x2.to(dtype), mask=is_q)
        tl.store(cache_k_ptr + at_k, x1.to(dtype), mask=is_k)
        tl.store(cache_k_ptr + at_k + half, x2.to(dtype), mask=is_k)
        tl.store(cache_v_ptr + at_v, x1.to(dtype), mask=is_v)
        tl.store(cache_v_ptr + at_v + half, x2.to(dtype), mask=is_v)
    else:  # SiLU(gate) * up over the rounded gate and up, as silu_mul
        gate = y.to(tl.float32)
        tl.store(out_ptr + p, (gate / (1.0 + tl.exp(-gate)) * y2.to(tl.float32)).to(dtype), mask=p_ok)


@triton.jit
def _normed_input(x_ptr, norm_w_ptr, norm_b_ptr, k_in, eps, kk, k_ok, delta_ptr, delta_bias_ptr, delta_bias_ok,
                  INPUT: tl.constexpr, dtype: tl.constexpr, DELTA: tl.constexpr):  # fmt: skip
    """The vector at x_ptr [K_PAD] in float32 (zeros past k_in; the pending MLP sum folded in with DELTA): as it is
    (INPUT 0), its layer norm (1, as F.layer_norm rounds it) or its RMS norm (3, as reference.rms_norm rounds it)."""
    x = tl.load(x_ptr + kk, mask=k_ok, other=0.0, cache_modifier=".cg").to(tl.float32)  # [K_PAD]
    if DELTA:
        d, b = _pending(kk, k_ok, delta_ptr, delta_bias_ptr, delta_bias_ok)
        x = _fold(x, d, b, DELTA)
    if INPUT == 1:  # in float32, rounded once
        mean = tl.sum(x, axis=0) / k_in
        centred = tl.where(k_ok, x - mean, 0.0)
        inverse_std = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=0) / k_in + eps)
        g = tl.load(norm_w_ptr + kk, mask=k_ok, other=0.0).to(tl.float32)
        b = tl.load(norm_b_ptr + kk, mask=k_ok, other=0.0).to(tl.float32)
        x = (centred * inverse_std * g + b).to(dtype).to(tl.float32)
    elif INPUT == 3:  # normalised in float32, rounded, times the weight, rounded
        inverse_std = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / k_in + eps)
        g = tl.load(norm_w_ptr + kk, mask=k_ok, other=0.0).to(tl.float32)
        x = (g * (x * inverse_std).to(dtype).to(tl.float32)).to(dtype).to(tl.float32)
    return x


@triton.jit
def _tile_out(
    tile, x, out_ptr, cache_k_ptr, cache_v_ptr, column, max_length,
    OUTPUT: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr, HEADS: tl.constexpr, KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr, DELTA: tl.constexpr,
):  # fmt: skip
    """One tile's products (``_tile_at``: its weights w, w2 [N, K_PAD], x [K_PAD]) with their biases, rounded to the
    model's dtype as F.linear returns them, then stored (``_product_out``)."""
    p, p_ok, w, w2, inputs = tile
    b, b2, extra = inputs
    dtype = w.dtype  # the model's (the output layer's float32 logits are rounded to it too)
    y = tl.sum(w.to(tl.float32) * x[None, :], axis=1)  # [N]
    y2 = y
    if OUTPUT >= 4:
        y2 = tl.sum(w2.to(tl.float32) * x[None, :], axis=1)
    if HAS_BIAS:
        y += b.to(tl.float32)
        if OUTPUT >= 4:
            y2 += b2.to(tl.float32)
    _product_out(y.to(dtype), y2.to(dtype), p, p_ok, extra, out_ptr, cache_k_ptr, cache_v_ptr, column, max_length,
                 OUTPUT, ACT, HEADS, KV_HEADS, HEAD_DIM, DELTA)  # fmt: skip


@triton.jit
def _linear_phase(
    x_ptr, w_ptr, bias_ptr, norm_w_ptr, norm_b_ptr, out_ptr, n_out, k_in, eps,
    max_ptr, sum_ptr, acc_ptr, column, split_keys, cache_k_ptr, cache_v_ptr, max_length, position, cos_ptr, sin_ptr,
    counter_ptr, error_ptr, sync_to, pid, nprog, delta_ptr, delta_bias_ptr, delta_bias_ok,
    INPUT: tl.constexpr, OUTPUT: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
    HEADS: tl.constexpr, KV_HEADS: tl.constexpr, H_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, SPLITS: tl.constexpr,
    BLOCK_N: tl.constexpr, K_PAD: tl.constexpr, STAGES: tl.constexpr, SYNC: tl.constexpr, DELTA: tl.constexpr,
    EARLY: tl.constexpr,
):  # fmt: skip
    """n_out outputs of a product with a weight of k_in inputs (plus bias), in tiles of BLOCK_N outputs (whole rows;
    two rows per output with OUTPUT 4 and 5), tile t on program t % P.

    INPUT: the vector at x_ptr (0), its layer norm (1) or RMS norm (3), the attention's partials merged here (2),
    or its output at x_ptr, merged in the attention phase (4).
    OUTPUT: q/k/v as they are, q to out and k, v into the caches at ``column`` (0); added in place to the residual
    at out (1); through ACT (2); as it is (3); q/k/v pairs rotated (RoPE at ``position``) and stored as 0 does (4);
    SiLU(gate) * up (5). ``sync_to`` > 0: wait at the grid barrier first, after the loads of the program's first
    EARLY tiles are issued (``_early``); its later tiles stream through a loop pipelined STAGES deep (STAGES 0: one
    tile read ahead into registers, the first of them before the barrier too). DELTA (a fused MLP's step): the
    residual, as the norm's input (1, 3) or as the output's (1), has the pending MLP sum at delta_ptr folded in
    first."""
    kk = tl.arange(0, K_PAD)
    k_ok = kk < k_in
    outs = tl.arange(0, BLOCK_N)
    # [EARLY N] outputs, [EARLY N, K_PAD] weights and what their outputs need, before the barrier
    tile0 = _tile_at(w_ptr, _early(pid, nprog, BLOCK_N, EARLY), n_out, k_in, kk, k_ok, bias_ptr, out_ptr, position,
                     cos_ptr, sin_ptr, delta_ptr, delta_bias_ptr, delta_bias_ok, OUTPUT, HAS_BIAS, HEADS, KV_HEADS,
                     HEAD_DIM, DELTA)  # fmt: skip
    start = pid + EARLY * nprog
    if STAGES == 0:  # the tile after the early ones, also before the barrier
        tile = _tile_at(w_ptr, start * BLOCK_N + outs, n_out, k_in, kk, k_ok, bias_ptr, out_ptr, position, cos_ptr,
                        sin_ptr, delta_ptr, delta_bias_ptr, delta_bias_ok, OUTPUT, HAS_BIAS, HEADS, KV_HEADS,
                        HEAD_DIM, DELTA)  # fmt: skip
    if sync_to > 0:
        _grid_sync(counter_ptr, error_ptr, sync_to, SYNC)
    dtype = tile0[2].dtype  # the weights'
    if INPUT == 2:
        x = _merged_attention(max_ptr, sum_ptr, acc_ptr, column, split_keys, HEADS, H_PAD, HEAD_DIM, SPLITS)
        x = x.to(dtype).to(tl.float32)  # the attention's output, rounded as the kernel stores it
    elif INPUT == 4:  # the attention's output, merged (and rounded) in its own phase
        x = tl.load(x_ptr + kk, mask=k_ok, other=0.0, cache_modifier=".cg").to(tl.float32)
    else:
        x = _normed_input(x_ptr, norm_w_ptr, norm_b_ptr, k_in, eps, kk, k_ok, delta_ptr, delta_bias_ptr,
                          delta_bias_ok, INPUT, dtype, DELTA)  # fmt: skip
    _tile_out(tile0, x, out_ptr, cache_k_ptr, cache_v_ptr, column, max_length, OUTPUT, HAS_BIAS, ACT, HEADS,
              KV_HEADS, HEAD_DIM, DELTA)  # fmt: skip
    if STAGES == 0:  # each tile's successor read into registers before the tile is multiplied
        for t in tl.range(start, tl.cdiv(n_out, BLOCK_N), nprog, num_stages=1):
            following = _tile_at(w_ptr, (t + nprog) * BLOCK_N + outs, n_out, k_in, kk, k_ok, bias_ptr, out_ptr,
                                 position, cos_ptr, sin_ptr, delta_ptr, delta_bias_ptr, delta_bias_ok, OUTPUT,
                                 HAS_BIAS, HEADS, KV_HEADS, HEAD_DIM, DELTA)  # fmt: skip
            _tile_out(tile, x, out_ptr, cache_k_ptr, cache_v_ptr, column, max_length, OUTPUT, HAS_BIAS, ACT, HEADS,
                      KV_HEADS, HEAD_DIM, DELTA)  # fmt: skip
            tile = following
    else:
        for t in tl.range(start, tl.cdiv(n_out, BLOCK_N), nprog, num_stages=STAGES):
            tile = _tile_at(w_ptr, t * BLOCK_N + outs, n_out, k_in, kk, k_ok, bias_ptr, out_ptr, position, cos_ptr,
                            sin_ptr, delta_ptr, delta_bias_ptr, delta_bias_ok, OUTPUT, HAS_BIAS, HEADS, KV_HEADS,
                            HEAD_DIM, DELTA)  # fmt: skip
            _tile_out(tile, x, out_ptr, cache_k_ptr, cache_v_ptr, column, max_length, OUTPUT, HAS_BIAS, ACT, HEADS,
                      KV_HEADS, HEAD_DIM, DELTA)  # fmt: skip


@triton.jit
def _tile_at(
    w_ptr, p, n_out, k_in, kk, k_ok, bias_ptr, out_ptr, position, cos_ptr, sin_ptr, delta_ptr, delta_bias_ptr,
    delta_bias_ok, OUTPUT: tl.constexpr, HAS_BIAS: tl.constexpr, HEADS: tl.constexpr, KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr, DELTA: tl.constexpr,
):  # fmt: skip
    """The tile of a product (``_linear_phase``) at outputs p [N]: (p, which of them exist, their weight rows
    [N, K_PAD], the second rows of pairs, ``_tile_inputs``), its loads issued together (nothing read past the last
    output)."""
    p_ok = p < n_out
    first, second = _pair_rows(p, n_out, OUTPUT, HEAD_DIM)
    w = _row_tile(w_ptr, first, p_ok, kk, k_ok, k_in)
    w2 = w
    if OUTPUT >= 4:
        w2 = _row_tile(w_ptr, second, p_ok, kk, k_ok, k_in)
    inputs = _tile_inputs(
        p, p_ok, first, second, bias_ptr, out_ptr, position, cos_ptr, sin_ptr, delta_ptr, delta_bias_ptr,
        delta_bias_ok, OUTPUT, HAS_BIAS, HEADS, KV_HEADS, HEAD_DIM, DELTA,
    )  # fmt: skip
    return p, p_ok, w, w2, inputs


@triton.jit
def _tile_inputs(
    p, p_ok, first, second, bias_ptr, out_ptr, position, cos_ptr, sin_ptr, delta_ptr, delta_bias_ptr, delta_bias_ok,
    OUTPUT: tl.constexpr, HAS_BIAS: tl.constexpr, HEADS: tl.constexpr, KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
    DELTA: tl.constexpr,
):  # fmt: skip
    """What outputs p [N] need besides their product, as loaded, so that they load with the tile's weights (read
    after the product, each is a round trip of its own per tile): (the biases of their rows and second rows, extra).
    extra by OUTPUT: (the residual at out_ptr, and with DELTA the fused MLP's pending sum and its bias, ``_pending``)
    (1); RoPE's cos and sin of dimensions j and j + Dh / 2 at ``position``, 1 and 0 for values' pairs (4); else ().
    A residual (1) read before the phase's barrier is final: the phase before a residual product (the attention, the
    first MLP product) does not write the residual stream."""
    b = p
    b2 = p
    if HAS_BIAS:
        b = tl.load(bias_ptr + first, mask=p_ok, other=0.0)
        b2 = b
        if OUTPUT >= 4:
            b2 = tl.load(bias_ptr + second, mask=p_ok, other=0.0)
    if OUTPUT == 1:
        r = tl.load(out_ptr + p, mask=p_ok, other=0.0, cache_modifier=".cg")
        d, db = r, r
        if DELTA:
            d, db = _pending(p, p_ok, delta_ptr, delta_bias_ptr, delta_bias_ok)
        extra = (r, d, db)
    elif OUTPUT == 4:
        half = HEAD_DIM // 2
        j = p % half
        rotated = p_ok & (p // half < HEADS + KV_HEADS)  # q and k pairs; values pass through
        at = position * HEAD_DIM + j
        extra = (  # type: ignore[assignment]  # a constexpr branch: the tuple's length is OUTPUT's
            tl.load(cos_ptr + at, mask=rotated, other=1.0),
            tl.load(cos_ptr + at + half, mask=rotated, other=1.0),
            tl.load(sin_ptr + at, mask=rotated, other=0.0),
            tl.load(sin_ptr + at + half, mask=rotated, other=0.0),
        )
    else:
        extra = ()  # type: ignore[assignment]
    return b, b2, extra


@triton.jit
def _mlp_units(units, x, ACT: tl.constexpr, SILU: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Inner units of an MLP (``_mlp_rows``): their activations (rounded as the unfused step stores them) times their
    rows of the transposed second product: the units' share of the MLP's output, float32 [D_PAD]."""
    j_ok, w, w2, wo, b = units
    dtype = w.dtype
    y = tl.sum(w.to(tl.float32) * x[None, :], axis=1)  # [M]
    if SILU:  # SiLU(gate) * up over the rounded gate and up
        gate = y.to(dtype).to(tl.float32)
        up = tl.sum(w2.to(tl.float32) * x[None, :], axis=1).to(dtype).to(tl.float32)
        act = (gate / (1.0 + tl.exp(-gate)) * up).to(dtype).to(tl.float32)
    else:
        if HAS_BIAS:
            y += b.to(tl.float32)
        act = _gelu(y.to(dtype).to(tl.float32), ACT).to(dtype).to(tl.float32)
    act = tl.where(j_ok, act, 0.0)
    return tl.sum(act[:, None] * wo.to(tl.float32), axis=0)  # [D_PAD]


@triton.jit
def _mlp_rows(w_in_ptr, w_out_ptr, b_in_ptr, j, kk, k_ok, inner, hidden, SILU: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Inner units j [M], their loads issued together: (which exist, their first-product rows [M, D_PAD], with SILU
    the up rows, the transposed second product's rows, and the first product's bias without SILU)."""
    j_ok = j < inner
    rows_ok = j_ok[:, None] & k_ok[None, :]
    at = j[:, None] * hidden + kk[None, :]
    w = tl.load(w_in_ptr + at, mask=rows_ok, other=0.0, eviction_policy="evict_first")
    w2 = w
    if SILU:
        w2 = tl.load(w_in_ptr + inner * hidden + at, mask=rows_ok, other=0.0, eviction_policy="evict_first")
    wo = tl.load(w_out_ptr + at, mask=rows_ok, other=0.0, eviction_policy="evict_first")
    b = j
    if HAS_BIAS and not SILU:
        b = tl.load(b_in_ptr + j, mask=j_ok, other=0.0)
    return j_ok, w, w2, wo, b


@triton.jit
def _mlp_phase(
    x_ptr, norm_w_ptr, norm_b_ptr, eps, w_in_ptr, b_in_ptr, w_out_ptr, delta_ptr, spent_ptr, inner, hidden,
    counter_ptr, error_ptr, sync_to, pid, nprog,
    NORM: tl.constexpr, ACT: tl.constexpr, SILU: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
    D_PAD: tl.constexpr, STAGES: tl.constexpr, SYNC: tl.constexpr, EARLY: tl.constexpr,
):  # fmt: skip
    """The whole MLP as one phase (``fused_mlp``): the norm (NORM: 1 layer, 3 RMS) of the residual at x_ptr, then
    inner units in tiles of BLOCK_M, tile t on program t % P, each through ``_mlp_units`` (w_in: [I, D] first-product
    rows, GELU with its bias, or with SILU [2 I, D] gate then up rows; w_out: the second product transposed, [I, D]);
    a program sums its tiles' shares and adds them to delta_ptr [D] (float32 atomics), the MLP's output before its
    bias, which the next phases fold into the residual. Program 0 zeroes spent_ptr [D], the previous layer's sum,
    which the phase before this one folded in. EARLY and STAGES as in ``_linear_phase``."""
    units = tl.arange(0, BLOCK_M)
    kk = tl.arange(0, D_PAD)
    k_ok = kk < hidden
    # [EARLY M] units before the barrier
    first = _mlp_rows(w_in_ptr, w_out_ptr, b_in_ptr, _early(pid, nprog, BLOCK_M, EARLY), kk, k_ok, inner, hidden,
                      SILU, HAS_BIAS)  # fmt: skip
    start = pid + EARLY * nprog
    if STAGES == 0:  # the tile after the early ones, also before the barrier
        rows = _mlp_rows(w_in_ptr, w_out_ptr, b_in_ptr, start * BLOCK_M + units, kk, k_ok, inner, hidden, SILU,
                         HAS_BIAS)  # fmt: skip
    if sync_to > 0:
        _grid_sync(counter_ptr, error_ptr, sync_to, SYNC)
    if pid == 0:
        tl.store(spent_ptr + kk, tl.zeros((D_PAD,), tl.float32), mask=k_ok)
    x = _normed_input(x_ptr, norm_w_ptr, norm_b_ptr, hidden, eps, kk, k_ok, x_ptr, x_ptr, False, NORM,
                      first[1].dtype, False)  # fmt: skip
    total = _mlp_units(first, x, ACT, SILU, HAS_BIAS)  # [D_PAD]
    if STAGES == 0:  # each tile's successor read into registers before the tile is multiplied
        for t in tl.range(start, tl.cdiv(inner, BLOCK_M), nprog, num_stages=1):
            following = _mlp_rows(w_in_ptr, w_out_ptr, b_in_ptr, (t + nprog) * BLOCK_M + units, kk, k_ok, inner,
                                  hidden, SILU, HAS_BIAS)  # fmt: skip
            total += _mlp_units(rows, x, ACT, SILU, HAS_BIAS)
            rows = following
    else:
        for t in tl.range(start, tl.cdiv(inner, BLOCK_M), nprog, num_stages=STAGES):
            rows = _mlp_rows(w_in_ptr, w_out_ptr, b_in_ptr, t * BLOCK_M + units, kk, k_ok, inner, hidden, SILU,
                             HAS_BIAS)  # fmt: skip
            total += _mlp_units(rows, x, ACT, SILU, HAS_BIAS)
    if pid * BLOCK_M < inner:  # a program with units: its share of the sum
        tl.atomic_add(delta_ptr + kk, total, mask=k_ok, sem="relaxed", scope="gpu")


@triton.jit
def _attention_phase(
    q_ptr, cache_k_ptr, cache_v_ptr, valid_ptr, max_ptr, sum_ptr, acc_ptr, column, scale, max_length, split_keys,
    counter_ptr, error_ptr, sync_to, pid, nprog,
    HEADS: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, SPLITS: tl.constexpr,
    BLOCK_KEYS: tl.constexpr, SYNC: tl.constexpr, MERGE: tl.constexpr,
):  # fmt: skip
    """Item (split, query head; GROUP query heads per cached head), item t on program t % P, for the splits (of
    ``split_keys``, in blocks of BLOCK_KEYS) up to the one holding ``column``: the softmax partials of the one query
    against the split's visible keys (columns <= ``column`` that are valid, and its own), as the split attention
    kernel computes them (probabilities rounded to the cache's dtype before they weight the values). MERGE: the last
    of a head's splits to finish (a counter per head after the barrier's two, at counter_ptr + 2 + head; it resets
    it) merges the head's partials and writes its output over the head's q (every split has read it by then)."""
    if sync_to > 0:
        _grid_sync(counter_ptr, error_ptr, sync_to, SYNC)
    keys = tl.arange(0, BLOCK_KEYS)
    dims = tl.arange(0, HEAD_DIM)
    item = pid
    while item < HEADS * (column // split_keys + 1):
        head = item % HEADS
        split = item // HEADS
        q = tl.load(q_ptr + head * HEAD_DIM + dims, cache_modifier=".cg").to(tl.float32)  # [Dh]
        running_max = float("-inf")
        running_sum = 0.0
        acc = tl.zeros((HEAD_DIM,), tl.float32)
        for block in range(split * split_keys, tl.minimum((split + 1) * split_keys, column + 1), BLOCK_KEYS):
            at = block + keys  # [B] key columns
            written = at <= column
            # The keys and values load beside the validity flags, not after them (one round trip, not two); a
            # written column that is not valid gets a zero weight below (the cache holds zeros or real values).
            valid = tl.load(valid_ptr + at, mask=written, other=0) != 0
            kv = ((head // GROUP) * max_length + at)[:, None] * HEAD_DIM + dims[None, :]  # [B, Dh]
            k = tl.load(cache_k_ptr + kv, mask=written[:, None], other=0.0, cache_modifier=".cg")
            v = tl.load(cache_v_ptr + kv, mask=written[:, None], other=0.0, cache_modifier=".cg")
            visible = written & (valid | (at == column))
            scores = tl.where(visible, tl.sum(k.to(tl.float32) * q[None, :], axis=1) * scale, float("-inf"))
            new_max = tl.maximum(running_max, tl.max(scores, axis=0))
            safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)
            old_scale = tl.exp(running_max - safe_max)
            p = tl.exp(scores - safe_max)  # [B]
            running_sum = running_sum * old_scale + tl.sum(p, axis=0)
            acc = acc * old_scale + tl.sum(p.to(v.dtype).to(tl.float32)[:, None] * v.to(tl.float32), axis=0)
            running_max = new_max
        part = head * SPLITS + split
        tl.store(max_ptr + part, running_max)
        tl.store(sum_ptr + part, running_sum)
        tl.store(acc_ptr + part * HEAD_DIM + dims, acc)
        if MERGE:
            tl.debug_barrier()  # every thread's partials stored before the arrival
            arrived = tl.atomic_add(counter_ptr + 2 + head, 1, sem="acq_rel", scope="gpu")
            if arrived == column // split_keys:  # the head's last split
                tl.debug_barrier()  # every thread after the acquire
                tl.atomic_xchg(counter_ptr + 2 + head, 0)  # for the next layer's (after a barrier)
                out = _merged_attention(max_ptr + head * SPLITS, sum_ptr + head * SPLITS,
                                        acc_ptr + head * SPLITS * HEAD_DIM, column, split_keys, 1, 1, HEAD_DIM,
                                        SPLITS)  # fmt: skip
                tl.store(q_ptr + head * HEAD_DIM + dims, out.to(q_ptr.dtype.element_ty))
        item += nprog


@triton.jit
def _gpt2_step_kernel(
    ids_ptr, length_ptr, positions_ptr, valid_ptr, wte_ptr, wpe_ptr,
    ln1_w_ptr, ln1_b_ptr, qkv_w_ptr, qkv_b_ptr, o_w_ptr, o_b_ptr, ln2_w_ptr, ln2_b_ptr,
    fc_w_ptr, fc_b_ptr, proj_w_ptr, proj_b_ptr, lnf_w_ptr, lnf_b_ptr, head_w_ptr,
    cache_k_ptr, cache_v_ptr, hidden_ptr, q_ptr, max_ptr, sum_ptr, acc_ptr, inner_ptr, logits_ptr, delta_ptr,
    counter_ptr, error_ptr, timeline_ptr,
    eps, scale, vocab, max_length, num_layers, split_keys, first_phase, end_phase,
    HIDDEN: tl.constexpr, INNER: tl.constexpr, HEADS: tl.constexpr, H_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
    D_PAD: tl.constexpr, I_PAD: tl.constexpr, SPLITS: tl.constexpr, BLOCK_KEYS: tl.constexpr, ACT: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_M: tl.constexpr, STAGES: tl.constexpr,
    PHASES: tl.constexpr, SYNC: tl.constexpr, ADVANCE: tl.constexpr, FUSED: tl.constexpr, EARLY: tl.constexpr,
    MERGE: tl.constexpr, TIMELINE: tl.constexpr,
):  # fmt: skip
    """Phases [first_phase, end_phase) of the step (0: embed; 1 + PHASES l + j: layer l's j-th; 1 + PHASES L: the
    head), a grid barrier before each but the first. BLOCK_D, BLOCK_I, BLOCK_V: weight rows per tile of the products
    over D inputs, over I inputs, and of the output layer. Layer weights are stacked: [L, out, in], biases and norms
    [L, out]; the caches [L, H, M, Dh]; the attention's partials [H, SPLITS] and [H, SPLITS, Dh]. The token goes to
    the cache column held at length_ptr, at the position positions_ptr [M] gives that column; with ADVANCE the last
    program out adds one to the length (every program has read it). Logits: float32 [V], rounded to the model's
    dtype.

    FUSED (four phases a layer): the MLP is one phase (``_mlp_phase``, BLOCK_M inner units a tile; proj_w_ptr then
    holds the second product transposed, [L, I, D]) that leaves its sum in delta_ptr [2, D] (layer l's in row
    l % 2, zeroed by the embedding and by layer l + 1's MLP); the next layer's q/k/v phase (and the head) norms the
    residual with it folded in, and its output product's phase folds it into the residual for good."""
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    column = tl.load(length_ptr)  # the new token's cache column
    position = tl.load(positions_ptr + column).to(tl.int64)
    head_phase = 1 + PHASES * num_layers
    arrivals = 0
    for phase in range(first_phase, end_phase):
        if TIMELINE:  # the phase's start on this program, before its barrier: int64 ns [phases + 1, P]
            tl.store(timeline_ptr + phase * nprog + pid, globaltimer())
        sync_to = 0
        if phase > first_phase:
            arrivals += nprog
            sync_to = arrivals
        if phase == 0:  # the residual stream: token + position embeddings, added in the model's dtype
            if pid == 0:
                d = tl.arange(0, D_PAD)
                d_ok = d < HIDDEN
                token = tl.load(ids_ptr).to(tl.int64)
                e = tl.load(wte_ptr + token * HIDDEN + d, mask=d_ok, other=0.0).to(tl.float32)
                p = tl.load(wpe_ptr + position * HIDDEN + d, mask=d_ok, other=0.0).to(tl.float32)
                tl.store(hidden_ptr + d, (e + p).to(hidden_ptr.dtype.element_ty), mask=d_ok)
                if FUSED:  # no MLP sum pending before the first layer
                    tl.store(delta_ptr + d, tl.zeros((D_PAD,), tl.float32), mask=d_ok)
                    tl.store(delta_ptr + HIDDEN + d, tl.zeros((D_PAD,), tl.float32), mask=d_ok)
        elif phase == head_phase:
            last = tl.cast(num_layers - 1, tl.int64)
            _linear_phase(
                hidden_ptr, head_w_ptr, head_w_ptr, lnf_w_ptr, lnf_b_ptr, logits_ptr, vocab, HIDDEN, eps,
                max_ptr, sum_ptr, acc_ptr, column, split_keys, cache_k_ptr, cache_v_ptr, max_length, 0, wte_ptr,
                wte_ptr,
                counter_ptr, error_ptr, sync_to, pid, nprog, delta_ptr + (last % 2) * HIDDEN,
                proj_b_ptr + last * HIDDEN, True,
                INPUT_LAYER_NORM, OUTPUT_PLAIN, False, 0, HEADS, HEADS, H_PAD, HEAD_DIM, SPLITS, BLOCK_V, D_PAD, STAGES,
                SYNC, FUSED, EARLY,
            )  # fmt: skip
        else:
            layer = tl.cast((phase - 1) // PHASES, tl.int64)
            kind = (phase - 1) % PHASES
            cache_k = cache_k_ptr + layer * HEADS * max_length * HEAD_DIM
            cache_v = cache_v_ptr + layer * HEADS * max_length * HEAD_DIM
            spent = delta_ptr + ((layer + 1) % 2) * HIDDEN  # the previous layer's MLP sum (fused)
            spent_bias = proj_b_ptr + (layer - 1) * HIDDEN
            if kind == 0:
                _linear_phase(
                    hidden_ptr, qkv_w_ptr + layer * 3 * HIDDEN * HIDDEN, qkv_b_ptr + layer * 3 * HIDDEN,
                    ln1_w_ptr + layer * HIDDEN, ln1_b_ptr + layer * HIDDEN, q_ptr, 3 * HIDDEN, HIDDEN, eps,
                    max_ptr, sum_ptr, acc_ptr, column, split_keys, cache_k, cache_v, max_length, 0, wte_ptr, wte_ptr,
                    counter_ptr, error_ptr, sync_to, pid, nprog, spent, spent_bias, layer > 0,
                    INPUT_LAYER_NORM, OUTPUT_QKV, True, 0, HEADS, HEADS, H_PAD, HEAD_DIM, SPLITS, BLOCK_D, D_PAD,
                    STAGES, SYNC, FUSED, EARLY,
                )  # fmt: skip
            elif kind == 1:
                _attention_phase(
                    q_ptr, cache_k, cache_v, valid_ptr, max_ptr, sum_ptr, acc_ptr, column, scale, max_length,
                    split_keys, counter_ptr, error_ptr, sync_to, pid, nprog, HEADS, 1, HEAD_DIM, SPLITS, BLOCK_KEYS,
                    SYNC, MERGE,
                )  # fmt: skip
            elif kind == 2:
                _linear_phase(
                    q_ptr, o_w_ptr + layer * HIDDEN * HIDDEN, o_b_ptr + layer * HIDDEN, hidden_ptr, hidden_ptr,
                    hidden_ptr, HIDDEN, HIDDEN, eps,
                    max_ptr, sum_ptr, acc_ptr, column, split_keys, cache_k, cache_v, max_length, 0, wte_ptr, wte_ptr,
                    counter_ptr, error_ptr, sync_to, pid, nprog, spent, spent_bias, layer > 0,
                    INPUT_MERGED if MERGE else INPUT_ATTENTION, OUTPUT_RESIDUAL, True, 0, HEADS, HEADS, H_PAD,
                    HEAD_DIM, SPLITS, BLOCK_D, D_PAD, STAGES, SYNC, FUSED, EARLY,
                )  # fmt: skip
            elif FUSED:
                _mlp_phase(
                    hidden_ptr, ln2_w_ptr + layer * HIDDEN, ln2_b_ptr + layer * HIDDEN, eps,
                    fc_w_ptr + layer * INNER * HIDDEN, fc_b_ptr + layer * INNER, proj_w_ptr + layer * INNER * HIDDEN,
                    delta_ptr + (layer % 2) * HIDDEN, spent, INNER, HIDDEN, counter_ptr, error_ptr, sync_to, pid,
                    nprog, INPUT_LAYER_NORM, ACT, False, True, BLOCK_M, D_PAD, STAGES, SYNC, EARLY,
                )  # fmt: skip
            elif kind == 3:
                _linear_phase(
                    hidden_ptr, fc_w_ptr + layer * INNER * HIDDEN, fc_b_ptr + layer * INNER,
                    ln2_w_ptr + layer * HIDDEN, ln2_b_ptr + layer * HIDDEN, inner_ptr, INNER, HIDDEN, eps,
                    max_ptr, sum_ptr, acc_ptr, column, split_keys, cache_k, cache_v, max_length, 0, wte_ptr, wte_ptr,
                    counter_ptr, error_ptr, sync_to, pid, nprog, hidden_ptr, hidden_ptr, False,
                    INPUT_LAYER_NORM, OUTPUT_ACTIVATION, True, ACT, HEADS, HEADS, H_PAD, HEAD_DIM, SPLITS, BLOCK_D,
                    D_PAD, STAGES, SYNC, False, EARLY,
                )  # fmt: skip
            else:
                _linear_phase(
                    inner_ptr, proj_w_ptr + layer * HIDDEN * INNER, proj_b_ptr + layer * HIDDEN, inner_ptr,
                    inner_ptr, hidden_ptr, HIDDEN, INNER, eps,
                    max_ptr, sum_ptr, acc_ptr, column, split_keys, cache_k, cache_v, max_length, 0, wte_ptr, wte_ptr,
                    counter_ptr, error_ptr, sync_to, pid, nprog, hidden_ptr, hidden_ptr, False,
                    INPUT_PLAIN, OUTPUT_RESIDUAL, True, 0, HEADS, HEADS, H_PAD, HEAD_DIM, SPLITS, BLOCK_I, I_PAD,
                    STAGES, SYNC, False, EARLY,
                )  # fmt: skip
    if TIMELINE:
        tl.store(timeline_ptr + end_phase * nprog + pid, globaltimer())
    if _grid_leave(counter_ptr, arrivals, nprog, SYNC) and ADVANCE:  # every program has read the length
        tl.store(length_ptr, column + 1)


@triton.jit
def _llama_step_kernel(
    ids_ptr, length_ptr, positions_ptr, valid_ptr, embed_ptr, cos_ptr, sin_ptr,
    in_norm_ptr, qkv_w_ptr, qkv_b_ptr, o_w_ptr, o_b_ptr, post_norm_ptr, gate_up_ptr, down_ptr, final_norm_ptr,
    head_w_ptr, cache_k_ptr, cache_v_ptr, hidden_ptr, q_ptr, max_ptr, sum_ptr, acc_ptr, inner_ptr, logits_ptr,
    delta_ptr, counter_ptr, error_ptr, timeline_ptr,
    eps, scale, vocab, max_length, num_layers, split_keys, first_phase, end_phase,
    HIDDEN: tl.constexpr, INNER: tl.constexpr, HEADS: tl.constexpr, KV_HEADS: tl.constexpr, H_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, I_PAD: tl.constexpr, SPLITS: tl.constexpr,
    BLOCK_KEYS: tl.constexpr, HAS_QKV_BIAS: tl.constexpr, HAS_O_BIAS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_M: tl.constexpr, STAGES: tl.constexpr,
    PHASES: tl.constexpr, SYNC: tl.constexpr, ADVANCE: tl.constexpr, FUSED: tl.constexpr, EARLY: tl.constexpr,
    MERGE: tl.constexpr, TIMELINE: tl.constexpr,
):  # fmt: skip
    """The Llama family's step, as ``_gpt2_step_kernel`` (phases, barriers, tiles, FUSED): RMS norms, q/k/v rotated
    in pairs (BLOCK_D / 2 pairs per tile), grouped-query attention, SiLU(gate) * up over [2 I, D] gate-then-up
    weights (BLOCK_D / 2 outputs per tile). Stacked weights: qkv [L, (H + 2 Hkv) Dh, D], o [L, D, H Dh], gate_up
    [L, 2 I, D], down [L, D, I] (FUSED: transposed, [L, I, D]), norms [L, D]; the caches [L, Hkv, M, Dh]; cos and
    sin tables [positions, Dh]."""
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    column = tl.load(length_ptr)  # the new token's cache column
    position = tl.load(positions_ptr + column)
    head_phase = 1 + PHASES * num_layers
    arrivals = 0
    for phase in range(first_phase, end_phase):
        if TIMELINE:  # the phase's start on this program, before its barrier: int64 ns [phases + 1, P]
            tl.store(timeline_ptr + phase * nprog + pid, globaltimer())
        sync_to = 0
        if phase > first_phase:
            arrivals += nprog
            sync_to = arrivals
        if phase == 0:  # the residual stream: the token's embedding
            if pid == 0:
                d = tl.arange(0, D_PAD)
                token = tl.load(ids_ptr).to(tl.int64)
                e = tl.load(embed_ptr + token * HIDDEN + d, mask=d < HIDDEN, other=0.0)
                tl.store(hidden_ptr + d, e, mask=d < HIDDEN)
                if FUSED:  # no MLP sum pending before the first layer
                    tl.store(delta_ptr + d, tl.zeros((D_PAD,), tl.float32), mask=d < HIDDEN)
                    tl.store(delta_ptr + HIDDEN + d, tl.zeros((D_PAD,), tl.float32), mask=d < HIDDEN)
        elif phase == head_phase:
            last = tl.cast(num_layers - 1, tl.int64)
            _linear_phase(
                hidden_ptr, head_w_ptr, head_w_ptr, final_norm_ptr, final_norm_ptr, logits_ptr, vocab, HIDDEN, eps,
                max_ptr, sum_ptr, acc_ptr, column, split_keys, cache_k_ptr, cache_v_ptr, max_length, position,
                cos_ptr, sin_ptr, counter_ptr, error_ptr, sync_to, pid, nprog, delta_ptr + (last % 2) * HIDDEN,
                hidden_ptr, False,
                INPUT_RMS_NORM, OUTPUT_PLAIN, False, 0, HEADS, KV_HEADS, H_PAD, HEAD_DIM, SPLITS, BLOCK_V, D_PAD,
                STAGES, SYNC, FUSED, EARLY,
            )  # fmt: skip
        else:
            layer = tl.cast((phase - 1) // PHASES, tl.int64)
            kind = (phase - 1) % PHASES
            cache_k = cache_k_ptr + layer * KV_HEADS * max_length * HEAD_DIM
            cache_v = cache_v_ptr + layer * KV_HEADS * max_length * HEAD_DIM
            spent = delta_ptr + ((layer + 1) % 2) * HIDDEN  # the previous layer's MLP sum (fused)
            if kind == 0:
                _linear_phase(
                    hidden_ptr, qkv_w_ptr + layer * (HEADS + 2 * KV_HEADS) * HEAD_DIM * HIDDEN,
                    qkv_b_ptr + layer * (HEADS + 2 * KV_HEADS) * HEAD_DIM,
                    in_norm_ptr + layer * HIDDEN, in_norm_ptr, q_ptr, (HEADS + 2 * KV_HEADS) * HEAD_DIM // 2, HIDDEN,
                    eps,
                    max_ptr, sum_ptr, acc_ptr, column, split_keys, cache_k, cache_v, max_length, position,
                    cos_ptr, sin_ptr, counter_ptr, error_ptr, sync_to, pid, nprog, spent, hidden_ptr, False,
                    INPUT_RMS_NORM, OUTPUT_ROPE, HAS_QKV_BIAS, 0, HEADS, KV_HEADS, H_PAD, HEAD_DIM, SPLITS,
                    BLOCK_D // 2, D_PAD, STAGES, SYNC, FUSED, EARLY,
                )  # fmt: skip
            elif kind == 1:
                _attention_phase(
                    q_ptr, cache_k, cache_v, valid_ptr, max_ptr, sum_ptr, acc_ptr, column, scale, max_length,
                    split_keys, counter_ptr, error_ptr, sync_to, pid, nprog, HEADS, HEADS // KV_HEADS, HEAD_DIM,
                    SPLITS, BLOCK_KEYS, SYNC, MERGE,
                )  # fmt: skip
            elif kind == 2:
                _linear_phase(
                    q_ptr, o_w_ptr + layer * HIDDEN * HEADS * HEAD_DIM, o_b_ptr + layer * HIDDEN, hidden_ptr,
                    hidden_ptr, hidden_ptr, HIDDEN, HEADS * HEAD_DIM, eps,
                    max_ptr, sum_ptr, acc_ptr, column, split_keys, cache_k, cache_v, max_length, position,
                    cos_ptr, sin_ptr, counter_ptr, error_ptr, sync_to, pid, nprog, spent, hidden_ptr, False,
                    INPUT_MERGED if MERGE else INPUT_ATTENTION, OUTPUT_RESIDUAL, HAS_O_BIAS, 0, HEADS, KV_HEADS, H_PAD,
                    HEAD_DIM, SPLITS, BLOCK_D, H_PAD * HEAD_DIM, STAGES, SYNC, FUSED, EARLY,
                )  # fmt: skip
            elif FUSED:
                _mlp_phase(
                    hidden_ptr, post_norm_ptr + layer * HIDDEN, post_norm_ptr, eps,
                    gate_up_ptr + layer * 2 * INNER * HIDDEN, gate_up_ptr, down_ptr + layer * INNER * HIDDEN,
                    delta_ptr + (layer % 2) * HIDDEN, spent, INNER, HIDDEN, counter_ptr, error_ptr, sync_to, pid,
                    nprog, INPUT_RMS_NORM, 0, True, False, BLOCK_M, D_PAD, STAGES, SYNC, EARLY,
                )  # fmt: skip
            elif kind == 3:
                _linear_phase(
                    hidden_ptr, gate_up_ptr + layer * 2 * INNER * HIDDEN, gate_up_ptr, post_norm_ptr + layer * HIDDEN,
                    post_norm_ptr, inner_ptr, INNER, HIDDEN, eps,
                    max_ptr, sum_ptr, acc_ptr, column, split_keys, cache_k, cache_v, max_length, position,
                    cos_ptr, sin_ptr, counter_ptr, error_ptr, sync_to, pid, nprog, hidden_ptr, hidden_ptr, False,
                    INPUT_RMS_NORM, OUTPUT_SILU, False, 0, HEADS, KV_HEADS, H_PAD, HEAD_DIM, SPLITS,
                    BLOCK_D // 2, D_PAD, STAGES, SYNC, False, EARLY,
                )  # fmt: skip
            else:
                _linear_phase(
                    inner_ptr, down_ptr + layer * HIDDEN * INNER, down_ptr, inner_ptr, inner_ptr, hidden_ptr, HIDDEN,
                    INNER, eps,
                    max_ptr, sum_ptr, acc_ptr, column, split_keys, cache_k, cache_v, max_length, position,
                    cos_ptr, sin_ptr, counter_ptr, error_ptr, sync_to, pid, nprog, hidden_ptr, hidden_ptr, False,
                    INPUT_PLAIN, OUTPUT_RESIDUAL, False, 0, HEADS, KV_HEADS, H_PAD, HEAD_DIM, SPLITS, BLOCK_I, I_PAD,
                    STAGES, SYNC, False, EARLY,
                )  # fmt: skip
    if TIMELINE:
        tl.store(timeline_ptr + end_phase * nprog + pid, globaltimer())
    if _grid_leave(counter_ptr, arrivals, nprog, SYNC) and ADVANCE:  # every program has read the length
        tl.store(length_ptr, column + 1)


@dataclass(frozen=True)
class PersistentShape:
    """How the step is cut. The defaults are the cut that ran fastest end to end on the H200 (eight warps, tiles of
    16384 weights each read ahead into registers, no pipelined loop: docs/performance.md, seventeenth session).

    programs: 0 for ``programs_per_sm`` per SM (more than one: checked against the compiled kernel's registers and
    shared memory at the first launch). tile_elements, head_tile_elements: weights per tile of a layer's products
    and of the output layer (whole rows). split_keys: the fewest keys per attention item; longer caches take longer
    splits, so that a head has at most max_splits (the merge reads them all in one load). block_keys: keys per load
    within a split (compiled for sm_90 with Triton 3.6 and the launch's 16-byte alignment, 128 spills no register on
    the GPT-2, 1B and 8B shapes; 32 spills 136 bytes on GPT-2). stages: tiles in flight per program (the pipelined
    loop's depth; 0: no pipelined loop, each tile's successor read into registers before the tile is multiplied).
    warps: per program. phase_launches: one launch per phase instead of barriers. fused_mlp: the MLP
    as one phase summed across programs with float32 atomics (four phases a layer instead of five; a transposed copy
    of the second MLP product's weights; see ``_mlp_phase``), mlp_tile_elements: its weights per tile and matrix.
    early_tiles (1, 2 or 4): tiles per phase whose loads a program issues before it waits at the phase's barrier
    (the rest stream after it). merge_in_attention: the last split of each head merges the head's partials in the
    attention phase, so that the output product's programs read the merged output instead of each merging every
    head's partials themselves. timeline (a diagnostic; CUDA, one launch): each program stamps the GPU's global
    timer at the start of every phase and at its end, into ``PersistentStep.timeline`` (``phase_times`` reads it).
    """

    programs: int = 0
    programs_per_sm: int = 1
    tile_elements: int = 16384
    head_tile_elements: int = 16384
    split_keys: int = 64
    max_splits: int = 4
    block_keys: int = 128
    stages: int = 0
    warps: int = 8
    phase_launches: bool = False
    fused_mlp: bool = False
    mlp_tile_elements: int = 4096
    early_tiles: int = 1
    merge_in_attention: bool = False
    timeline: bool = False

    def __post_init__(self) -> None:
        if self.early_tiles not in (1, 2, 4):
            raise ValueError(f"PersistentShape.early_tiles={self.early_tiles}: expected 1, 2 or 4")
        if self.timeline and self.phase_launches:
            raise ValueError("PersistentShape.timeline stamps the phases of one launch: unset phase_launches")

    @property
    def phases_per_layer(self) -> int:
        return 4 if self.fused_mlp else 5

    def splits(self, max_length: int) -> tuple[int, int]:
        """(keys per split, splits padded to a power of two) for a cache of ``max_length`` columns."""
        split_keys = max(self.split_keys, triton.next_power_of_2(triton.cdiv(max_length, self.max_splits)))
        return split_keys, triton.next_power_of_2(triton.cdiv(max_length, split_keys))


def default_shape() -> PersistentShape:
    """The step's cut when none is asked for: the defaults, with the fused MLP where ``SPECDEC_PERSISTENT=fused``,
    and any fields ``SPECDEC_PERSISTENT_SHAPE`` names (see ``parse_shape``)."""
    fused = os.environ.get(ENV_PERSISTENT, "").strip() == "fused"
    return parse_shape(os.environ.get(ENV_SHAPE, ""), ENV_SHAPE, fused_mlp=fused)


def parse_shape(text: str, source: str, **fields: int | bool) -> PersistentShape:
    """A shape from ``fields`` and the ones ``text`` names (``stages=0,early_tiles=2`` or ``stages=0 early_tiles=2``:
    integers, or 0/1 for flags); ``source`` (a variable, an argument) names the text in a ``ConfigError`` for an
    unknown field, a value that is not an integer or one the shape refuses."""
    known = {name: type(value) for name, value in vars(PersistentShape()).items()}
    for item in filter(None, re.split(r"[,\s]+", text)):
        name, _, value = item.partition("=")
        name = name.strip()
        if name not in known:
            raise ConfigError(f"{source}: unknown field {name!r}; PersistentShape has {', '.join(known)}")
        try:
            number = int(value)
        except ValueError:
            raise ConfigError(f"{source}: {name}={value.strip()!r} is not an integer") from None
        fields[name] = bool(number) if known[name] is bool else number
    try:
        return PersistentShape(**fields)  # type: ignore[arg-type]  # each field's type is the default's
    except ValueError as error:
        raise ConfigError(f"{source}: {error}") from None


@dataclass(frozen=True)
class StepWidths:
    """A model's widths, which the step kernel is compiled for (with the shape and the cache's splits). GPT-2
    (``act``: its GELU as ``GELU`` numbers it) has no key-value heads of its own: kv_heads is heads there."""

    family: str  # "gpt2" or "llama"
    hidden: int
    inner: int
    heads: int
    kv_heads: int
    head_dim: int
    act: int = 0
    qkv_bias: bool = False
    o_bias: bool = False


def step_constants(
    widths: StepWidths, shape: PersistentShape, max_length: int, sync: bool, advance: bool
) -> dict[str, int | bool]:
    """The step kernel's compile-time arguments by name (``_gpt2_step_kernel``, ``_llama_step_kernel``), for a cache
    of ``max_length`` columns: what a launch passes, and what ``scripts/diag/compile_sm90.py`` compiles without a
    GPU. Tiles hold whole rows: ``tile_elements`` weights (at least two rows per tile of the Llama family's pairs)."""
    d_pad, i_pad = triton.next_power_of_2(widths.hidden), triton.next_power_of_2(widths.inner)
    split_keys, splits = shape.splits(max_length)
    llama = widths.family == "llama"
    constants: dict[str, int | bool] = {
        "HIDDEN": widths.hidden,
        "INNER": widths.inner,
        "HEADS": widths.heads,
        "H_PAD": triton.next_power_of_2(widths.heads),
        "HEAD_DIM": widths.head_dim,
        "D_PAD": d_pad,
        "I_PAD": i_pad,
        "SPLITS": splits,
        "BLOCK_KEYS": min(shape.block_keys, split_keys),
        "BLOCK_D": max(2 if llama else 1, shape.tile_elements // d_pad),
        "BLOCK_I": max(1, shape.tile_elements // i_pad),
        "BLOCK_V": max(1, shape.head_tile_elements // d_pad),
        "BLOCK_M": max(1, shape.mlp_tile_elements // d_pad),
        "STAGES": shape.stages,
        "PHASES": shape.phases_per_layer,
        "SYNC": sync,
        "ADVANCE": advance,
        "FUSED": shape.fused_mlp,
        "EARLY": shape.early_tiles,
        "MERGE": shape.merge_in_attention,
        "TIMELINE": shape.timeline,
    }
    if llama:
        constants |= {"KV_HEADS": widths.kv_heads, "HAS_QKV_BIAS": widths.qkv_bias, "HAS_O_BIAS": widths.o_bias}
    else:
        constants["ACT"] = widths.act
    return constants


class PersistentStep:
    """A model's one-token step as one launch (see the module docstring): what the GPT-2 and Llama steps share.
    Scratch buffers are its own, allocated on the first call for a cache size (before any CUDA graph captures the
    launch)."""

    def __init__(
        self, embed: torch.Tensor, num_heads: int, head_dim: int, inner: int, shape: PersistentShape | None
    ) -> None:
        self.embed = embed  # [V, D]
        self.num_heads, self.head_dim, self.inner = num_heads, head_dim, inner
        self.hidden = embed.shape[1]
        if triton.next_power_of_2(num_heads) * head_dim != triton.next_power_of_2(num_heads * head_dim):
            raise UnsupportedModelError(
                f"the persistent step ({ENV_PERSISTENT}) needs a power-of-two head size (this model's is "
                f"{head_dim}); unset {ENV_PERSISTENT}"
            )
        self.shape = shape or default_shape()
        device = embed.device
        self.sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
        if self.shape.programs:
            self.programs = self.shape.programs
        elif device.type == "cuda":
            self.programs = self.sms * self.shape.programs_per_sm
        else:
            self.programs = 1  # Triton's interpreter: programs run one after another
        resident_at_most = self.sms * self.shape.programs_per_sm
        if device.type == "cuda" and not self.shape.phase_launches and self.programs > resident_at_most:
            raise ValueError(
                f"the persistent step's {self.programs} programs outnumber its {self.shape.programs_per_sm} "
                f"per SM on {self.sms} SMs"
            )
        # One program per SM always fits, more is checked at launch; the interpreter runs programs one by one.
        self._resident = device.type != "cuda" or self.programs <= self.sms
        # the barrier's counter, the error flag, and a counter per head (the attention's merge: merge_in_attention)
        self.counter = torch.zeros(2 + num_heads, dtype=torch.int32, device=device)
        self._scratch: dict[int, tuple[torch.Tensor, ...]] = {}
        self._checked: set[int] = set()  # cache sizes whose first launch passed every barrier
        self._pending: torch.Tensor | None = None
        self.compiled: object = None  # the last launch's compiled kernel (its registers and spills, for the diag)
        self.timeline: torch.Tensor | None = None  # with shape.timeline: the last launch's stamps, [phases + 1, P]
        if self.shape.timeline and (
            device.type != "cuda" or globaltimer is None or os.environ.get("TRITON_INTERPRET") == "1"
        ):
            raise ValueError("PersistentShape.timeline reads the GPU's global timer: it runs on CUDA only")

    def failed(self) -> bool:
        """Whether a barrier has given up waiting (some program never ran beside the others): outputs since are
        garbage. Reads the device (a sync). The flag counts the programs that gave up."""
        return bool(self.counter[1].item())

    def reset(self) -> None:
        self.counter.zero_()

    def check_barriers(self, max_length: int) -> None:
        """After the first launch for a cache size, which runs eagerly (before a CUDA graph captures the step): raise
        if a barrier gave up. Reads the error flag (a sync); graph replays are not checked."""
        if max_length in self._checked:
            return
        if self.embed.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return
        gave_up = int(self.counter[1].item())
        if gave_up:
            self.reset()
            raise DeviceError(
                f"a grid barrier of the persistent step ({ENV_PERSISTENT}) gave up waiting ({gave_up} of its "
                f"programs), so not all of its {self.programs} programs ran at once on the {self.sms} SMs (a kernel "
                f"beside it, a GPU shared through MPS, or more programs per SM than fit) and its output is garbage; "
                f"unset {ENV_PERSISTENT}"
            )
        self._checked.add(max_length)

    def buffers(self, max_length: int) -> tuple[torch.Tensor, ...]:
        """The residual stream [D], q [H Dh], the attention's partial maxima and sums [H, S] and outputs
        [H, S, Dh], the MLP's activations [I], for a cache of ``max_length`` columns."""
        if max_length not in self._scratch:
            _, splits = self.shape.splits(max_length)
            device, dtype, heads = self.embed.device, self.embed.dtype, self.num_heads
            self._scratch[max_length] = (
                torch.empty(self.hidden, dtype=dtype, device=device),
                torch.empty(heads * self.head_dim, dtype=dtype, device=device),
                torch.empty((heads, splits), dtype=torch.float32, device=device),
                torch.empty((heads, splits), dtype=torch.float32, device=device),
                torch.empty((heads, splits, self.head_dim), dtype=torch.float32, device=device),
                torch.empty(self.inner, dtype=dtype, device=device),
            )
        return self._scratch[max_length]

    def check_residency(self, compiled: object) -> None:
        """More than one program per SM: that many must fit on an SM at once, by the compiled kernel's registers and
        shared memory, or a barrier waits for a program that cannot start (it gives up; see ``failed``)."""
        if self._resident:
            return
        props = torch.cuda.get_device_properties(self.embed.device)
        registers = triton.cdiv(getattr(compiled, "n_regs", 255) * 32, 256) * 256 * self.shape.warps
        shared = max(getattr(getattr(compiled, "metadata", None), "shared", 0), 1)
        fits = min(
            getattr(props, "regs_per_multiprocessor", 65536) // registers,
            getattr(props, "shared_memory_per_multiprocessor", 233472) // shared,
        )
        if fits < triton.cdiv(self.programs, self.sms):
            raise ValueError(
                f"{triton.cdiv(self.programs, self.sms)} programs per SM of the persistent step do not fit on an SM "
                f"({registers} registers and {shared} bytes of shared memory each; {fits} fit): ask for fewer"
            )
        self._resident = True

    @staticmethod
    def check_inputs(
        input_ids: torch.Tensor, length: torch.Tensor, positions: torch.Tensor, cache_k: torch.Tensor
    ) -> None:
        """One token of one row; the kernel reads the length, a row of positions and the cache in place."""
        assert input_ids.shape == (1, 1) and length.dim() == 0 and length.dtype == torch.long
        assert positions.shape[0] == 1 and positions.is_contiguous()
        assert cache_k.shape[1] == 1 and cache_k.is_contiguous()

    def finish(self, length: torch.Tensor, launched: int, sync: bool, max_length: int) -> None:
        """After the launches: one launch advanced the length itself, one per phase leaves it here; the first step
        for a cache size checks its barriers."""
        if launched > 1:
            length.add_(1)
        if sync:
            self.check_barriers(max_length)

    def phase_count(self, num_layers: int) -> int:
        """The embedding, every layer's phases and the head."""
        return 2 + self.shape.phases_per_layer * num_layers

    def launches(self, num_layers: int) -> tuple[list[tuple[int, int]], bool]:
        """The phase ranges to launch, and whether the programs pass barriers between phases."""
        end = self.phase_count(num_layers)
        ranges = [(p, p + 1) for p in range(end)] if self.shape.phase_launches else [(0, end)]
        return ranges, self.programs > 1 and not self.shape.phase_launches

    def timeline_buffer(self, num_layers: int) -> torch.Tensor:
        """Where the launch stamps its phases (``PersistentShape.timeline``): [2 + PHASES L + 1, P] int64, a row per
        phase and one for the end; without the timeline, a placeholder the kernel never writes."""
        if not self.shape.timeline:
            return self.counter
        rows = self.phase_count(num_layers) + 1
        if self.timeline is None or self.timeline.shape[0] != rows:
            self.timeline = torch.zeros((rows, self.programs), dtype=torch.int64, device=self.embed.device)
        return self.timeline

    def pending(self) -> torch.Tensor:
        """The fused MLP's sums, [2, D] float32 (see ``_gpt2_step_kernel``)."""
        if self._pending is None:
            self._pending = torch.zeros((2, self.hidden), dtype=torch.float32, device=self.embed.device)
        return self._pending


class PersistentGPT2(PersistentStep):
    """GPT-2's one-token step as one launch."""

    def __init__(
        self,
        stack: GPT2Stack,
        embed: torch.Tensor,
        position_embed: torch.Tensor,
        final_norm: tuple[torch.Tensor, torch.Tensor],
        lm_head: torch.Tensor,
        num_heads: int,
        eps: float,
        gelu: str,
        shape: PersistentShape | None = None,
    ) -> None:
        super().__init__(embed, num_heads, embed.shape[1] // num_heads, stack.fc.shape[1], shape)
        self.stack = stack
        self.position_embed, self.final_norm, self.lm_head = position_embed, final_norm, lm_head
        self.eps = eps
        self.widths = StepWidths("gpt2", self.hidden, self.inner, num_heads, num_heads, self.head_dim, act=GELU[gelu])
        with torch.no_grad():  # the fused MLP reads the second product's weight transposed: [L, I, D]
            self.proj = stack.proj.transpose(1, 2).contiguous() if self.shape.fused_mlp else stack.proj

    def __call__(
        self,
        input_ids: torch.Tensor,
        length: torch.Tensor,
        positions: torch.Tensor,
        key_valid: torch.Tensor,
        cache: tuple[torch.Tensor, torch.Tensor],
        num_layers: int,
    ) -> torch.Tensor:
        """input_ids: [1, 1]; length: [] int64, the cache's length (the new token's column), advanced by one;
        positions: [1, M] each column's position; key_valid: [1, M] bool; cache: two [L', 1, H, M, Dh]
        (L' >= num_layers). Writes the token's keys and values; returns logits [1, 1, V], float32 (rounded to the
        model's dtype)."""
        cache_k, cache_v = cache
        self.check_inputs(input_ids, length, positions, cache_k)
        max_length = cache_k.shape[3]
        hidden, q, maxima, sums, partial, inner = self.buffers(max_length)
        split_keys, _ = self.shape.splits(max_length)
        vocab = self.lm_head.shape[0]
        logits = torch.empty(vocab, dtype=torch.float32, device=self.embed.device)
        s = self.stack
        ranges, sync = self.launches(num_layers)
        constants = step_constants(self.widths, self.shape, max_length, sync, advance=len(ranges) == 1)
        for first, stop in ranges:
            compiled = _gpt2_step_kernel[(self.programs,)](
                input_ids, length, positions, key_valid, self.embed, self.position_embed,
                s.ln_1[0], s.ln_1[1], s.qkv, s.qkv_bias, s.o, s.o_bias, s.ln_2[0], s.ln_2[1],
                s.fc, s.fc_bias, self.proj, s.proj_bias, self.final_norm[0], self.final_norm[1], self.lm_head,
                cache_k, cache_v, hidden, q, maxima, sums, partial, inner, logits, self.pending(),
                self.counter, self.counter[1:], self.timeline_buffer(num_layers),
                self.eps, self.head_dim**-0.5, vocab, max_length, num_layers, split_keys, first, stop,
                **constants, num_warps=self.shape.warps,
            )  # fmt: skip
            self.compiled = compiled
            if sync:
                self.check_residency(compiled)
        self.finish(length, len(ranges), sync, max_length)
        return logits.view(1, 1, vocab)


@dataclass(frozen=True)
class LlamaStack:
    """A Llama-family model's layer weights stacked over its L layers (a copy: the fast path's own are per layer)."""

    input_norm: torch.Tensor  # [L, D]
    qkv: torch.Tensor  # [L, (H + 2 Hkv) Dh, D]
    qkv_bias: torch.Tensor | None  # [L, (H + 2 Hkv) Dh]
    o: torch.Tensor  # [L, D, H Dh]
    o_bias: torch.Tensor | None  # [L, D]
    post_norm: torch.Tensor  # [L, D]
    gate_up: torch.Tensor  # [L, 2 I, D]
    down: torch.Tensor  # [L, D, I]; with the fused MLP transposed, [L, I, D]


class PersistentLlama(PersistentStep):
    """A Llama-family model's one-token step as one launch."""

    def __init__(self, model: FastLlama, shape: PersistentShape | None = None) -> None:
        first = model.layers[0]
        super().__init__(model.embed, model.num_heads, model.head_dim, first.down.shape[1], shape)
        self.model = model  # for its final norm and output layer
        self.num_kv_heads = model.num_kv_heads
        layers = model.layers
        self.widths = StepWidths(
            "llama", self.hidden, self.inner, model.num_heads, model.num_kv_heads, model.head_dim,
            qkv_bias=first.qkv_bias is not None, o_bias=first.o_bias is not None,
        )  # fmt: skip

        def stacked(tensors: list[torch.Tensor | None]) -> torch.Tensor | None:
            return None if tensors[0] is None else torch.stack([t for t in tensors if t is not None]).contiguous()

        with torch.no_grad():
            stack = LlamaStack(
                input_norm=stacked([layer.input_norm for layer in layers]),  # type: ignore[arg-type]
                qkv=stacked([layer.qkv for layer in layers]),  # type: ignore[arg-type]
                qkv_bias=stacked([layer.qkv_bias for layer in layers]),
                o=stacked([layer.o for layer in layers]),  # type: ignore[arg-type]
                o_bias=stacked([layer.o_bias for layer in layers]),
                post_norm=stacked([layer.post_norm for layer in layers]),  # type: ignore[arg-type]
                gate_up=stacked([layer.gate_up for layer in layers]),  # type: ignore[arg-type]
                down=stacked([layer.down.t() if self.shape.fused_mlp else layer.down for layer in layers]),  # type: ignore[arg-type]
            )
        self.stack = stack

    def __call__(
        self,
        input_ids: torch.Tensor,
        length: torch.Tensor,
        positions: torch.Tensor,
        key_valid: torch.Tensor,
        cache: tuple[torch.Tensor, torch.Tensor],
        num_layers: int,
        cos_table: torch.Tensor,
        sin_table: torch.Tensor,
    ) -> torch.Tensor:
        """As ``PersistentGPT2.__call__``; cache: two [L', 1, Hkv, M, Dh]; cos_table, sin_table: [positions, Dh]
        (the calling model's: a view of fewer layers has its own)."""
        cache_k, cache_v = cache
        self.check_inputs(input_ids, length, positions, cache_k)
        max_length = cache_k.shape[3]
        hidden, q, maxima, sums, partial, inner = self.buffers(max_length)
        split_keys, _ = self.shape.splits(max_length)
        m, s = self.model, self.stack
        vocab = m.lm_head.shape[0]
        logits = torch.empty(vocab, dtype=torch.float32, device=self.embed.device)
        ranges, sync = self.launches(num_layers)
        constants = step_constants(self.widths, self.shape, max_length, sync, advance=len(ranges) == 1)
        for first, stop in ranges:
            compiled = _llama_step_kernel[(self.programs,)](
                input_ids, length, positions, key_valid, self.embed, cos_table, sin_table,
                s.input_norm, s.qkv, s.qkv_bias if s.qkv_bias is not None else s.qkv, s.o,
                s.o_bias if s.o_bias is not None else s.o, s.post_norm, s.gate_up, s.down, m.final_norm, m.lm_head,
                cache_k, cache_v, hidden, q, maxima, sums, partial, inner, logits, self.pending(),
                self.counter, self.counter[1:], self.timeline_buffer(num_layers),
                m.eps, m.scale, vocab, max_length, num_layers, split_keys, first, stop,
                **constants, num_warps=self.shape.warps,
            )  # fmt: skip
            self.compiled = compiled
            if sync:
                self.check_residency(compiled)
        self.finish(length, len(ranges), sync, max_length)
        return logits.view(1, 1, vocab)


def persistent_step(model: FastGPT2 | FastLlama, shape: PersistentShape | None = None) -> PersistentStep:
    """The persistent step over a fast model's weights (GPT-2: built with the Triton kernels, its stack)."""
    if isinstance(model, FastLlama):
        return PersistentLlama(model, shape)
    assert model.stack is not None, "the persistent step reads the Triton layout's stacked weights"
    return PersistentGPT2(
        model.stack, model.embed, model.position_embed, model.final_norm, model.lm_head, model.num_heads, model.eps,
        model.gelu, shape,
    )  # fmt: skip


@dataclass(frozen=True)
class PhaseTime:
    """One kind of phase in a launch's timeline (``phase_times``), in microseconds, averaged over its occurrences
    (the layers). Each interval starts when the last program starts the phase (arrives at its barrier, so the
    barrier opens about then) and ends at the next phase's start on a program: the slowest (``wall``: the phase's
    share of the step), the mean (``mean``), or the first (``first``: a program with little or no work there, so
    about what the barrier's release costs)."""

    name: str
    wall: float
    mean: float
    first: float


def phase_names(phases_per_layer: int) -> list[str]:
    """The kinds of a layer's phases, in order."""
    return ["q/k/v", "attention", "o", *(["mlp"] if phases_per_layer == 4 else ["mlp in", "mlp out"])]


def phase_times(timeline: torch.Tensor, phases_per_layer: int) -> list[PhaseTime]:
    """timeline: [2 + PHASES L + 1, P] int64 ns (``PersistentStep.timeline`` after a launch): the embedding, each
    kind of layer phase (averaged over the L layers) and the head, as ``PhaseTime``s."""
    stamps = timeline.double().cpu() / 1e3  # [phases + 1, P] us
    last_start = stamps[:-1].max(dim=1).values  # [phases]
    ends = stamps[1:]  # [phases, P]: each program's start of the next phase (the end stamp after the last)
    wall = ends.max(dim=1).values - last_start
    mean = ends.mean(dim=1) - last_start
    first = ends.min(dim=1).values - last_start
    layers = (timeline.shape[0] - 3) // phases_per_layer
    kinds = [[0], *([1 + phases_per_layer * layer + kind for layer in range(layers)]
                    for kind in range(phases_per_layer)), [timeline.shape[0] - 2]]  # fmt: skip
    names = ["embed", *phase_names(phases_per_layer), "head"]
    return [
        PhaseTime(name, wall[rows].mean().item(), mean[rows].mean().item(), first[rows].mean().item())
        for name, rows in zip(names, kinds, strict=True)
    ]
