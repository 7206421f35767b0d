"""One decoding step of a whole GPT-2 as one kernel: a persistent grid that passes a barrier between phases.

At batch 1 a small model's decoding step is bound by latency, not bandwidth: GPT-2's layer is five kernels that each
read 0.4-4.7 MB of weights, well under a microsecond at full bandwidth, yet take several microseconds each from
launch to completion (the GPT-2 shape ran at 15-16% of its weights-read floor: docs/performance.md). Here one launch
of one program per SM runs the whole step for one token, phase by phase:

    embed (token + position)
    per layer:  qkv     layer norm 1, the q/k/v product and bias; q to a buffer, k and v into the cache
                attend  per head and split of SPLIT_KEYS keys: the split's softmax partials (max, sum, output)
                out     the merge of each head's splits, the output product, bias and the residual add
                mlp_in  layer norm 2, the first MLP product, bias and GELU
                mlp_out the second MLP product, bias and the residual add
    head        the final layer norm and the output layer: logits

Every phase after the first starts with a grid barrier: an arrival counter in global memory that each program
increments with release semantics and then polls with acquire semantics until every program has arrived (Triton
emits one ``red.release.gpu`` and ``ld.acquire.gpu`` per program, from its first thread, between two ``bar.sync``).
Weights never depend on the step, so a product's program reads its first weight tile before it waits: the load's
latency hides behind the barrier's. Activations written during the step are read with ``.cg`` (from L2, past the
SM's L1, which is not coherent across SMs). The last program to leave resets the counter for the next launch.

A grid barrier needs every program resident at once: one program per SM (a kernel that launches at all fits one
program on an SM), and no other kernel running beside it (a CUDA graph replays the step alone). A barrier
that waits more than SPIN_LIMIT polls (a program that never became resident) gives up and sets the error flag
instead of hanging the GPU; the step's output is then garbage and :meth:`PersistentGPT2.failed` says so.

With ``phase_launches`` each phase is a launch of its own and the launches' boundaries are the barriers. Triton's
interpreter runs programs one after another, so a barrier would wait forever in it: there the tests run one program
over every phase, and several programs over one phase per launch, which checks how the work is split.

It computes what ``FastGPT2.run`` computes for one token (the same rounding points as ``triton_gemv``: products in
float32, rounded to the model's dtype after the bias, GELU and residual add; the attention as the split kernel
computes it). It is off unless ``SPECDEC_PERSISTENT=1``: it has not yet been measured on a GPU. Shapes: D hidden, I
inner (MLP), H heads, Dh head size, M cache columns, V vocabulary, L layers, P programs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import triton
import triton.language as tl

if TYPE_CHECKING:
    from specdec.fast.gpt2 import FastGPT2, GPT2Stack

ENV_PERSISTENT = "SPECDEC_PERSISTENT"  # "1": GPT-2's one-token steps run as one persistent kernel (CUDA only)

SPIN_LIMIT = tl.constexpr(1 << 16)  # polls of a barrier's counter before it gives up (tens of milliseconds)
PHASES_PER_LAYER = 5  # the kernel's PHASES
# A product phase's INPUT (what it multiplies) and OUTPUT (where it writes): see _linear_phase.
INPUT_PLAIN, INPUT_LAYER_NORM, INPUT_ATTENTION = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)
OUTPUT_QKV, OUTPUT_RESIDUAL, OUTPUT_ACTIVATION, OUTPUT_PLAIN = (tl.constexpr(i) for i in range(4))
GELU = {"tanh": 2, "none": 3}  # F.gelu's ``approximate`` -> ACT (as triton_gemv's)


def enabled() -> bool:
    """Whether GPT-2's one-token steps run as one persistent kernel where the Triton kernels run (on a CPU, in
    Triton's interpreter: one program)."""
    return os.environ.get(ENV_PERSISTENT, "0") == "1"


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
        if seen < arrivals:
            tl.atomic_xchg(error_ptr, 1)
        tl.debug_barrier()


@triton.jit
def _row_tile(w_ptr, n, n_out, kk, k_ok, k_in):
    """Weight rows n [N] (all K_PAD inputs, nothing past a row's end): [N, K_PAD]."""
    mask = (n < n_out)[:, None] & k_ok[None, :]
    return tl.load(w_ptr + n[:, None] * k_in + kk[None, :], mask=mask, other=0.0, eviction_policy="evict_first")


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
def _product_out(
    y, n, n_ok, k_in, out_ptr, cache_k_ptr, cache_v_ptr, column, max_length,
    OUTPUT: tl.constexpr, ACT: tl.constexpr, HEAD_DIM: tl.constexpr,
):  # fmt: skip
    """Store outputs n [N] of a product (y: rounded, with its bias) as OUTPUT says (see ``_linear_phase``)."""
    dtype = out_ptr.dtype.element_ty
    if OUTPUT == 0:  # q, k, v of one token: k_in is the hidden size, heads of HEAD_DIM
        section = n // k_in
        within = n - section * k_in
        at = ((within // HEAD_DIM) * max_length + column) * HEAD_DIM + within % HEAD_DIM
        tl.store(out_ptr + within, y, mask=n_ok & (section == 0))
        tl.store(cache_k_ptr + at, y, mask=n_ok & (section == 1))
        tl.store(cache_v_ptr + at, y, mask=n_ok & (section == 2))
    elif OUTPUT == 1:  # residual + y, rounded like an add in the model's dtype
        r = tl.load(out_ptr + n, mask=n_ok, other=0.0, cache_modifier=".cg")
        tl.store(out_ptr + n, (r.to(tl.float32) + y.to(tl.float32)).to(dtype), mask=n_ok)
    elif OUTPUT == 2:
        yf = y.to(tl.float32)
        if ACT == 2:  # F.gelu(approximate="tanh") of the rounded product, 1 + tanh(u) as 2 / (1 + exp(-2 u))
            u = 0.7978845608028654 * (yf + 0.044715 * yf * yf * yf)
            yf = 0.5 * yf * (2.0 / (1.0 + tl.exp(-2.0 * u)))
        else:  # F.gelu(approximate="none")
            yf = 0.5 * yf * (1.0 + tl.math.erf(yf * 0.7071067811865476))
        tl.store(out_ptr + n, yf.to(dtype), mask=n_ok)
    else:
        tl.store(out_ptr + n, y, mask=n_ok)


@triton.jit
def _linear_phase(
    x_ptr, w_ptr, bias_ptr, norm_w_ptr, norm_b_ptr, out_ptr, n_out, k_in, eps,
    max_ptr, sum_ptr, acc_ptr, column, split_keys, cache_k_ptr, cache_v_ptr, max_length,
    counter_ptr, error_ptr, sync_to, pid, nprog,
    INPUT: tl.constexpr, OUTPUT: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
    HEADS: tl.constexpr, H_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, SPLITS: tl.constexpr,
    BLOCK_N: tl.constexpr, K_PAD: tl.constexpr, STAGES: tl.constexpr, SYNC: tl.constexpr,
):  # fmt: skip
    """out = act(W [n_out, k_in] @ input + bias), in tiles of BLOCK_N whole rows, tile t on program t % P. The
    input: the vector at x_ptr (INPUT 0), its layer norm (1), or the attention's merged partials (2). The output:
    q/k/v routed to out (q) and the caches at ``column`` (OUTPUT 0), added in place to the residual at out (1),
    through ACT (2), or as it is (3). ``sync_to`` > 0: wait at the grid barrier first, after the first weight tile's
    loads are issued; the program's later tiles stream through a loop pipelined STAGES deep."""
    rows = tl.arange(0, BLOCK_N)
    kk = tl.arange(0, K_PAD)
    k_ok = kk < k_in
    w = _row_tile(w_ptr, pid * BLOCK_N + rows, n_out, kk, k_ok, k_in)  # [N, K_PAD], before the barrier
    if sync_to > 0:
        _grid_sync(counter_ptr, error_ptr, sync_to, SYNC)
    dtype = out_ptr.dtype.element_ty
    if INPUT == 2:
        x = _merged_attention(max_ptr, sum_ptr, acc_ptr, column, split_keys, HEADS, H_PAD, HEAD_DIM, SPLITS)
        x = x.to(dtype).to(tl.float32)  # the attention's output, rounded as the attention kernel stores it
    else:
        x = tl.load(x_ptr + kk, mask=k_ok, other=0.0, cache_modifier=".cg").to(tl.float32)  # [K_PAD]
        if INPUT == 1:  # as F.layer_norm: in float32, rounded once
            mean = tl.sum(x, axis=0) / k_in
            centred = tl.where(k_ok, x - mean, 0.0)
            inverse_std = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=0) / k_in + eps)
            g = tl.load(norm_w_ptr + kk, mask=k_ok, other=0.0).to(tl.float32)
            b = tl.load(norm_b_ptr + kk, mask=k_ok, other=0.0).to(tl.float32)
            x = (centred * inverse_std * g + b).to(dtype).to(tl.float32)
    n = pid * BLOCK_N + rows  # [N]
    n_ok = n < n_out
    y = tl.sum(w.to(tl.float32) * x[None, :], axis=1)
    if HAS_BIAS:
        y += tl.load(bias_ptr + n, mask=n_ok, other=0.0).to(tl.float32)
    _product_out(y.to(dtype), n, n_ok, k_in, out_ptr, cache_k_ptr, cache_v_ptr, column, max_length, OUTPUT, ACT,
                 HEAD_DIM)  # fmt: skip
    for tile in tl.range(pid + nprog, tl.cdiv(n_out, BLOCK_N), nprog, num_stages=STAGES):
        n = tile * BLOCK_N + rows
        n_ok = n < n_out
        w = _row_tile(w_ptr, n, n_out, kk, k_ok, k_in)
        y = tl.sum(w.to(tl.float32) * x[None, :], axis=1)
        if HAS_BIAS:
            y += tl.load(bias_ptr + n, mask=n_ok, other=0.0).to(tl.float32)
        _product_out(y.to(dtype), n, n_ok, k_in, out_ptr, cache_k_ptr, cache_v_ptr, column, max_length, OUTPUT,
                     ACT, HEAD_DIM)  # fmt: skip


@triton.jit
def _attention_phase(
    q_ptr, cache_k_ptr, cache_v_ptr, valid_ptr, max_ptr, sum_ptr, acc_ptr, column, scale, max_length, split_keys,
    counter_ptr, error_ptr, sync_to, pid, nprog,
    HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, SPLITS: tl.constexpr, BLOCK_KEYS: tl.constexpr,
    SYNC: tl.constexpr,
):  # fmt: skip
    """Item (split, head), item t on program t % P, for the splits (of ``split_keys``, in blocks of BLOCK_KEYS) up to
    the one holding ``column``: the softmax partials of the one query against the split's visible keys (columns <=
    ``column`` that are valid, and its own), as the split attention kernel computes them (probabilities rounded to
    the cache's dtype before they weight the values)."""
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
            visible = at <= column
            valid = tl.load(valid_ptr + at, mask=visible, other=0) != 0
            visible = visible & (valid | (at == column))
            kv = (head * max_length + at)[:, None] * HEAD_DIM + dims[None, :]  # [B, Dh]
            k = tl.load(cache_k_ptr + kv, mask=visible[:, None], other=0.0, cache_modifier=".cg")
            v = tl.load(cache_v_ptr + kv, mask=visible[:, None], other=0.0, cache_modifier=".cg")
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
        item += nprog


@triton.jit
def _gpt2_step_kernel(
    ids_ptr, positions_ptr, columns_ptr, valid_ptr, wte_ptr, wpe_ptr,
    ln1_w_ptr, ln1_b_ptr, qkv_w_ptr, qkv_b_ptr, o_w_ptr, o_b_ptr, ln2_w_ptr, ln2_b_ptr,
    fc_w_ptr, fc_b_ptr, proj_w_ptr, proj_b_ptr, lnf_w_ptr, lnf_b_ptr, head_w_ptr,
    cache_k_ptr, cache_v_ptr, hidden_ptr, q_ptr, max_ptr, sum_ptr, acc_ptr, inner_ptr, logits_ptr,
    counter_ptr, error_ptr,
    eps, scale, vocab, max_length, num_layers, split_keys, first_phase, end_phase,
    HIDDEN: tl.constexpr, INNER: tl.constexpr, HEADS: tl.constexpr, H_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
    D_PAD: tl.constexpr, I_PAD: tl.constexpr, SPLITS: tl.constexpr, BLOCK_KEYS: tl.constexpr, ACT: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_V: tl.constexpr, STAGES: tl.constexpr,
    PHASES: tl.constexpr, SYNC: tl.constexpr,
):  # fmt: skip
    """Phases [first_phase, end_phase) of the step (0: embed; 1 + PHASES l + j: layer l's j-th; 1 + PHASES L: the
    head), a grid barrier before each but the first. BLOCK_D, BLOCK_I, BLOCK_V: weight rows per tile of the products
    over D inputs, over I inputs, and of the output layer. Layer weights are stacked: [L, out, in], biases and norms
    [L, out]; the caches [L, H, M, Dh]; the attention's partials [H, SPLITS] and [H, SPLITS, Dh]."""
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    column = tl.load(columns_ptr)
    head_phase = 1 + PHASES * num_layers
    arrivals = 0
    for phase in range(first_phase, end_phase):
        sync_to = 0
        if phase > first_phase:
            arrivals += nprog
            sync_to = arrivals
        if phase == 0:  # the residual stream: token + position embeddings, added in the model's dtype
            if pid == 0:
                d = tl.arange(0, D_PAD)
                d_ok = d < HIDDEN
                token = tl.load(ids_ptr).to(tl.int64)
                position = tl.load(positions_ptr).to(tl.int64)
                e = tl.load(wte_ptr + token * HIDDEN + d, mask=d_ok, other=0.0).to(tl.float32)
                p = tl.load(wpe_ptr + position * HIDDEN + d, mask=d_ok, other=0.0).to(tl.float32)
                tl.store(hidden_ptr + d, (e + p).to(hidden_ptr.dtype.element_ty), mask=d_ok)
        elif phase == head_phase:
            _linear_phase(
                hidden_ptr, head_w_ptr, head_w_ptr, lnf_w_ptr, lnf_b_ptr, logits_ptr, vocab, HIDDEN, eps,
                max_ptr, sum_ptr, acc_ptr, column, split_keys, cache_k_ptr, cache_v_ptr, max_length,
                counter_ptr, error_ptr, sync_to, pid, nprog,
                INPUT_LAYER_NORM, OUTPUT_PLAIN, False, 0, HEADS, H_PAD, HEAD_DIM, SPLITS, BLOCK_V, D_PAD, STAGES, SYNC,
            )  # fmt: skip
        else:
            layer = tl.cast((phase - 1) // PHASES, tl.int64)
            kind = (phase - 1) % PHASES
            cache_k = cache_k_ptr + layer * HEADS * max_length * HEAD_DIM
            cache_v = cache_v_ptr + layer * HEADS * max_length * HEAD_DIM
            if kind == 0:
                _linear_phase(
                    hidden_ptr, qkv_w_ptr + layer * 3 * HIDDEN * HIDDEN, qkv_b_ptr + layer * 3 * HIDDEN,
                    ln1_w_ptr + layer * HIDDEN, ln1_b_ptr + layer * HIDDEN, q_ptr, 3 * HIDDEN, HIDDEN, eps,
                    max_ptr, sum_ptr, acc_ptr, column, split_keys, cache_k, cache_v, max_length,
                    counter_ptr, error_ptr, sync_to, pid, nprog,
                    INPUT_LAYER_NORM, OUTPUT_QKV, True, 0, HEADS, H_PAD, HEAD_DIM, SPLITS, BLOCK_D, D_PAD, STAGES,
                    SYNC,
                )  # fmt: skip
            elif kind == 1:
                _attention_phase(
                    q_ptr, cache_k, cache_v, valid_ptr, max_ptr, sum_ptr, acc_ptr, column, scale, max_length,
                    split_keys, counter_ptr, error_ptr, sync_to, pid, nprog, HEADS, HEAD_DIM, SPLITS, BLOCK_KEYS,
                    SYNC,
                )  # fmt: skip
            elif kind == 2:
                _linear_phase(
                    hidden_ptr, o_w_ptr + layer * HIDDEN * HIDDEN, o_b_ptr + layer * HIDDEN, hidden_ptr, hidden_ptr,
                    hidden_ptr, HIDDEN, HIDDEN, eps,
                    max_ptr, sum_ptr, acc_ptr, column, split_keys, cache_k, cache_v, max_length,
                    counter_ptr, error_ptr, sync_to, pid, nprog,
                    INPUT_ATTENTION, OUTPUT_RESIDUAL, True, 0, HEADS, H_PAD, HEAD_DIM, SPLITS, BLOCK_D, D_PAD, STAGES,
                    SYNC,
                )  # fmt: skip
            elif kind == 3:
                _linear_phase(
                    hidden_ptr, fc_w_ptr + layer * INNER * HIDDEN, fc_b_ptr + layer * INNER,
                    ln2_w_ptr + layer * HIDDEN, ln2_b_ptr + layer * HIDDEN, inner_ptr, INNER, HIDDEN, eps,
                    max_ptr, sum_ptr, acc_ptr, column, split_keys, cache_k, cache_v, max_length,
                    counter_ptr, error_ptr, sync_to, pid, nprog,
                    INPUT_LAYER_NORM, OUTPUT_ACTIVATION, True, ACT, HEADS, H_PAD, HEAD_DIM, SPLITS, BLOCK_D, D_PAD,
                    STAGES, SYNC,
                )  # fmt: skip
            else:
                _linear_phase(
                    inner_ptr, proj_w_ptr + layer * HIDDEN * INNER, proj_b_ptr + layer * HIDDEN, inner_ptr,
                    inner_ptr, hidden_ptr, HIDDEN, INNER, eps,
                    max_ptr, sum_ptr, acc_ptr, column, split_keys, cache_k, cache_v, max_length,
                    counter_ptr, error_ptr, sync_to, pid, nprog,
                    INPUT_PLAIN, OUTPUT_RESIDUAL, True, 0, HEADS, H_PAD, HEAD_DIM, SPLITS, BLOCK_I, I_PAD, STAGES,
                    SYNC,
                )  # fmt: skip
    if SYNC:  # leave; the last program out resets the counter (every other has passed its last barrier)
        tl.debug_barrier()
        before = tl.atomic_add(counter_ptr, 1, sem="acq_rel", scope="gpu")
        if before == arrivals + nprog - 1:
            tl.atomic_xchg(counter_ptr, 0)


@dataclass(frozen=True)
class PersistentShape:
    """How the step is cut.

    programs: 0 for one per SM. tile_elements, head_tile_elements: weights per tile of a layer's products and of the
    output layer (whole rows). split_keys: the fewest keys per attention item; longer caches take longer splits, so
    that a head has at most max_splits (the merge reads them all in one load). block_keys: keys per load within a
    split. stages: tiles in flight per program (the pipelined loop's depth). warps: per program. phase_launches: one
    launch per phase instead of barriers.
    """

    programs: int = 0
    tile_elements: int = 8192
    head_tile_elements: int = 8192
    split_keys: int = 64
    max_splits: int = 8
    block_keys: int = 128
    stages: int = 3
    warps: int = 4
    phase_launches: bool = False

    def splits(self, max_length: int) -> tuple[int, int]:
        """(keys per split, splits padded to a power of two) for a cache of ``max_length`` columns."""
        split_keys = max(self.split_keys, triton.next_power_of_2(triton.cdiv(max_length, self.max_splits)))
        return split_keys, triton.next_power_of_2(triton.cdiv(max_length, split_keys))


class PersistentGPT2:
    """GPT-2's one-token step as one launch (see the module docstring). Scratch buffers are its own, allocated on the
    first call for a cache size (before any CUDA graph captures the launch)."""

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
        self.stack = stack
        self.embed, self.position_embed, self.final_norm, self.lm_head = embed, position_embed, final_norm, lm_head
        self.num_heads = num_heads
        self.hidden = embed.shape[1]
        self.inner = stack.fc.shape[1]
        self.head_dim = self.hidden // num_heads
        assert triton.next_power_of_2(num_heads) * self.head_dim == triton.next_power_of_2(self.hidden)
        self.eps = eps
        self.act = GELU[gelu]
        self.shape = shape or PersistentShape()
        device = embed.device
        if self.shape.programs:
            self.programs = self.shape.programs
        elif device.type == "cuda":
            self.programs = torch.cuda.get_device_properties(device).multi_processor_count
        else:
            self.programs = 1  # Triton's interpreter: programs run one after another
        if device.type == "cuda" and not self.shape.phase_launches:
            sms = torch.cuda.get_device_properties(device).multi_processor_count
            if self.programs > sms:  # one program per SM at most, so that all are resident at once
                raise ValueError(f"the persistent step's {self.programs} programs outnumber the {sms} SMs")
        self.counter = torch.zeros(2, dtype=torch.int32, device=device)  # the barrier's counter, the error flag
        self._scratch: dict[int, tuple[torch.Tensor, ...]] = {}

    def failed(self) -> bool:
        """Whether a barrier has given up waiting (some program never ran beside the others): outputs since are
        garbage. Reads the device (a sync)."""
        return bool(self.counter[1].item())

    def reset(self) -> None:
        self.counter.zero_()

    def _buffers(self, max_length: int) -> tuple[torch.Tensor, ...]:
        if max_length not in self._scratch:
            _, splits = self.shape.splits(max_length)
            device, dtype = self.embed.device, self.embed.dtype
            self._scratch[max_length] = (
                torch.empty(self.hidden, dtype=dtype, device=device),  # the residual stream
                torch.empty(self.hidden, dtype=dtype, device=device),  # q
                torch.empty((self.num_heads, splits), dtype=torch.float32, device=device),  # partial maxima
                torch.empty((self.num_heads, splits), dtype=torch.float32, device=device),  # partial sums
                torch.empty((self.num_heads, splits, self.head_dim), dtype=torch.float32, device=device),  # outputs
                torch.empty(self.inner, dtype=dtype, device=device),  # the MLP's activations
            )
        return self._scratch[max_length]

    def __call__(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        columns: torch.Tensor,
        key_valid: torch.Tensor,
        cache: tuple[torch.Tensor, torch.Tensor],
        num_layers: int,
    ) -> torch.Tensor:
        """input_ids, positions: [1, 1]; columns: [1]; key_valid: [1, M] bool; cache: two [L', 1, H, M, Dh]
        (L' >= num_layers). Writes the token's keys and values; returns logits [1, 1, V] in the model's dtype."""
        cache_k, cache_v = cache
        assert input_ids.shape == (1, 1) and cache_k.shape[1] == 1 and cache_k.is_contiguous()
        max_length = cache_k.shape[3]
        hidden, q, maxima, sums, partial, inner = self._buffers(max_length)
        split_keys, splits = self.shape.splits(max_length)
        vocab = self.lm_head.shape[0]
        logits = torch.empty(vocab, dtype=self.embed.dtype, device=self.embed.device)
        s = self.stack
        d_pad, i_pad = triton.next_power_of_2(self.hidden), triton.next_power_of_2(self.inner)
        block_d = max(1, self.shape.tile_elements // d_pad)
        block_i = max(1, self.shape.tile_elements // i_pad)
        block_v = max(1, self.shape.head_tile_elements // d_pad)
        end = 2 + PHASES_PER_LAYER * num_layers
        ranges = [(p, p + 1) for p in range(end)] if self.shape.phase_launches else [(0, end)]
        sync = self.programs > 1 and not self.shape.phase_launches
        for first, stop in ranges:
            _gpt2_step_kernel[(self.programs,)](
                input_ids, positions, columns, key_valid, self.embed, self.position_embed,
                s.ln_1[0], s.ln_1[1], s.qkv, s.qkv_bias, s.o, s.o_bias, s.ln_2[0], s.ln_2[1],
                s.fc, s.fc_bias, s.proj, s.proj_bias, self.final_norm[0], self.final_norm[1], self.lm_head,
                cache_k, cache_v, hidden, q, maxima, sums, partial, inner, logits,
                self.counter, self.counter[1:],
                self.eps, self.head_dim**-0.5, vocab, max_length, num_layers, split_keys, first, stop,
                self.hidden, self.inner, self.num_heads, triton.next_power_of_2(self.num_heads), self.head_dim,
                d_pad, i_pad, splits, min(self.shape.block_keys, split_keys), self.act, block_d, block_i, block_v,
                self.shape.stages, PHASES_PER_LAYER, sync, num_warps=self.shape.warps,
            )  # fmt: skip
        return logits.view(1, 1, vocab)


def persistent_gpt2(model: FastGPT2, shape: PersistentShape | None = None) -> PersistentGPT2:
    """The persistent step over a ``FastGPT2``'s weights (built with the Triton kernels: its stack)."""
    assert model.stack is not None, "the persistent step reads the Triton layout's stacked weights"
    return PersistentGPT2(
        model.stack, model.embed, model.position_embed, model.final_norm, model.lm_head, model.num_heads, model.eps,
        model.gelu, shape,
    )  # fmt: skip
