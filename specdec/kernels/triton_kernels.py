"""Triton kernels of the fast path. Each one computes what its namesake in ``reference.py`` computes.

Importing this module needs ``triton``; the registry in ``specdec.kernels`` imports it only where it can run (CUDA,
or the Triton interpreter when ``TRITON_INTERPRET=1``). Shapes are as in ``reference.py``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from specdec.kernels import dependent_launch, reference, triton_sampling
from specdec.kernels.dependent_launch import await_previous
from specdec.verification import Verdict


def _warps(block: int) -> int:
    return max(1, min(16, block // 256))


# ------------------------------------------------------------------------------------------------- normalisation
@triton.jit
def _rms_norm_kernel(x_ptr, weight_ptr, out_ptr, width, eps, BLOCK: tl.constexpr, PDL: tl.constexpr):
    await_previous(PDL)
    row = tl.program_id(0)
    offsets = tl.arange(0, BLOCK)
    inside = offsets < width
    x = tl.load(x_ptr + row * width + offsets, mask=inside, other=0.0)
    xf = x.to(tl.float32)
    inverse_rms = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / width + eps)
    normed = (xf * inverse_rms).to(x.dtype)
    weight = tl.load(weight_ptr + offsets, mask=inside, other=0.0)
    tl.store(out_ptr + row * width + offsets, (weight.to(tl.float32) * normed.to(tl.float32)).to(x.dtype), mask=inside)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    out = torch.empty_like(x)
    block = triton.next_power_of_2(x.shape[-1])
    pdl = dependent_launch.enabled(x.device)
    _rms_norm_kernel[(x.shape[0],)](
        x, weight, out, x.shape[-1], eps, block, pdl, num_warps=_warps(block), launch_pdl=pdl
    )
    return out


# ---------------------------------------------------------------------------------------------------- MLP
@triton.jit
def _silu_mul_kernel(gate_up_ptr, out_ptr, width, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    offsets = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = offsets < width
    gate = tl.load(gate_up_ptr + row * 2 * width + offsets, mask=inside, other=0.0).to(tl.float32)
    up = tl.load(gate_up_ptr + row * 2 * width + width + offsets, mask=inside, other=0.0).to(tl.float32)
    out = gate / (1.0 + tl.exp(-gate)) * up
    tl.store(out_ptr + row * width + offsets, out.to(out_ptr.dtype.element_ty), mask=inside)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    rows, width = gate_up.shape[0], gate_up.shape[1] // 2
    out = torch.empty((rows, width), dtype=gate_up.dtype, device=gate_up.device)
    block = 1024
    _silu_mul_kernel[(rows, triton.cdiv(width, block))](gate_up, out, width, block, num_warps=4)
    return out


# ------------------------------------------------------------------------------------------ rotary + KV write
@triton.jit
def _rope_and_store_kernel(
    qkv_ptr, positions_ptr, cos_ptr, sin_ptr, cache_k_ptr, cache_v_ptr, columns_ptr, q_out_ptr,
    seq_len, num_heads, num_kv_heads, max_length,
    HEAD_DIM: tl.constexpr, ROTATE: tl.constexpr,
):  # fmt: skip
    token = tl.program_id(0)  # b * S + s
    head = tl.program_id(1)  # [0, H): q heads; [H, H + Hkv): k heads; [H + Hkv, H + 2 Hkv): v heads
    batch_row = token // seq_len
    s = token % seq_len
    half = HEAD_DIM // 2
    first = tl.arange(0, HEAD_DIM // 2)
    base = qkv_ptr + (token * (num_heads + 2 * num_kv_heads) + head) * HEAD_DIM
    x1 = tl.load(base + first).to(tl.float32)
    x2 = tl.load(base + half + first).to(tl.float32)
    column = tl.load(columns_ptr + s)
    if head < num_heads + num_kv_heads:
        if ROTATE:
            position = tl.load(positions_ptr + token)
            cos1 = tl.load(cos_ptr + position * HEAD_DIM + first).to(tl.float32)
            cos2 = tl.load(cos_ptr + position * HEAD_DIM + half + first).to(tl.float32)
            sin1 = tl.load(sin_ptr + position * HEAD_DIM + first).to(tl.float32)
            sin2 = tl.load(sin_ptr + position * HEAD_DIM + half + first).to(tl.float32)
            y1 = x1 * cos1 - x2 * sin1
            y2 = x2 * cos2 + x1 * sin2
        else:
            y1, y2 = x1, x2
        if head < num_heads:
            out = q_out_ptr + (token * num_heads + head) * HEAD_DIM
        else:
            kv_head = head - num_heads
            out = cache_k_ptr + ((batch_row * num_kv_heads + kv_head) * max_length + column) * HEAD_DIM
    else:
        y1, y2 = x1, x2
        kv_head = head - num_heads - num_kv_heads
        out = cache_v_ptr + ((batch_row * num_kv_heads + kv_head) * max_length + column) * HEAD_DIM
    tl.store(out + first, y1.to(q_out_ptr.dtype.element_ty))
    tl.store(out + half + first, y2.to(q_out_ptr.dtype.element_ty))


def rope_and_store(
    qkv: torch.Tensor,
    positions: torch.Tensor,
    cos_table: torch.Tensor | None,
    sin_table: torch.Tensor | None,
    cache_k: torch.Tensor,
    cache_v: torch.Tensor,
    columns: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
) -> torch.Tensor:
    batch, seq, width = qkv.shape
    head_dim = width // (num_heads + 2 * num_kv_heads)
    q = torch.empty((batch, seq, num_heads, head_dim), dtype=qkv.dtype, device=qkv.device)
    grid = (batch * seq, num_heads + 2 * num_kv_heads)
    rotate = cos_table is not None and sin_table is not None
    _rope_and_store_kernel[grid](
        qkv, positions, cos_table if rotate else qkv, sin_table if rotate else qkv, cache_k, cache_v, columns, q,
        seq, num_heads, num_kv_heads, cache_k.shape[2], head_dim, rotate, num_warps=1,
    )  # fmt: skip
    return q


# ------------------------------------------------------------------------------------------------ attention
@triton.jit
def _attention_split_kernel(
    q_ptr, k_ptr, v_ptr, columns_ptr, valid_ptr, tree_ptr, max_ptr, sum_ptr, acc_ptr, arrivals_ptr, out_ptr, scale,
    seq_len, num_heads, num_kv_heads, max_length, num_splits, split_keys,
    GROUP: tl.constexpr, HAS_VALID: tl.constexpr, HAS_TREE: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr,
    PDL: tl.constexpr,
):  # fmt: skip
    """Program (batch row * kv head, split): the split's keys (``split_keys``, up to the last new token's column), in
    blocks of BLOCK_N with a running softmax, against the group's GROUP x S queries. When the visible keys fit one
    split, its program writes the normalised output rows; else each split stores its running max, sum of
    exponentials and unnormalised output (flash-decoding partials) and counts itself in ``arrivals_ptr`` [programs]
    (int32, zero between launches), and the kv head's last split to arrive merges the partials into the output rows
    and sets the count back to zero. A split past the last new token's column does nothing.
    HAS_TREE: the S new tokens are a token tree at consecutive columns from columns[0]; query s sees every key before
    them and new key j where tree[s, j] ([S, S] bytes). PDL: launched as a dependent (``dependent_launch``)."""
    await_previous(PDL)
    program = tl.program_id(0)
    split = tl.program_id(1)
    batch_row = program // num_kv_heads
    kv_head = program % num_kv_heads
    rows = tl.arange(0, BLOCK_R)
    group_index = rows // seq_len
    s = rows % seq_len
    row_ok = rows < GROUP * seq_len
    head = kv_head * GROUP + group_index
    dims = tl.arange(0, HEAD_DIM)
    last_column = tl.load(columns_ptr + seq_len - 1)
    used = last_column // split_keys + 1  # the splits that hold a visible key
    first_key = split * split_keys
    end_key = tl.minimum(first_key + split_keys, last_column + 1)
    q_rows = ((batch_row * seq_len + s) * num_heads + head) * HEAD_DIM
    if first_key < end_key:  # else nothing in this split is visible
        q = tl.load(q_ptr + q_rows[:, None] + dims[None, :], mask=row_ok[:, None], other=0.0)  # [R, Dh]
        own_column = tl.load(columns_ptr + s, mask=row_ok, other=0)  # [R]
        first_column = tl.load(columns_ptr)
        kv_base = (batch_row * num_kv_heads + kv_head) * max_length * HEAD_DIM
        running_max = tl.full((BLOCK_R,), float("-inf"), tl.float32)
        running_sum = tl.zeros((BLOCK_R,), tl.float32)
        acc = tl.zeros((BLOCK_R, HEAD_DIM), tl.float32)
        for block in range(first_key, end_key, BLOCK_N):
            keys_at = block + tl.arange(0, BLOCK_N)
            key_ok = keys_at < end_key
            at = kv_base + keys_at[:, None] * HEAD_DIM + dims[None, :]
            k = tl.load(k_ptr + at, mask=key_ok[:, None], other=0.0)
            v = tl.load(v_ptr + at, mask=key_ok[:, None], other=0.0)
            scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale  # [R, N]
            if HAS_TREE:
                new_key = keys_at - first_column  # [N] index among the new tokens (negative: an earlier key)
                is_new = (new_key >= 0) & key_ok
                tree_bit = tl.load(
                    tree_ptr + s[:, None] * seq_len + new_key[None, :], mask=row_ok[:, None] & is_new[None, :], other=0
                )  # [R, N]
                visible = ((new_key[None, :] < 0) | (tree_bit != 0)) & key_ok[None, :]
            else:
                visible = keys_at[None, :] <= own_column[:, None]
            if HAS_VALID:
                valid = tl.load(valid_ptr + batch_row * max_length + keys_at, mask=key_ok, other=0) != 0
                visible = visible & (valid[None, :] | (keys_at[None, :] == own_column[:, None]))
            scores = tl.where(visible, scores, float("-inf"))
            new_max = tl.maximum(running_max, tl.max(scores, axis=1))
            safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)
            old_scale = tl.exp(running_max - safe_max)
            p = tl.exp(scores - safe_max[:, None])
            running_sum = running_sum * old_scale + tl.sum(p, axis=1)
            acc = acc * old_scale[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)  # [R, Dh]
            running_max = new_max
        if used == 1:
            out = acc / running_sum[:, None]
            tl.store(out_ptr + q_rows[:, None] + dims[None, :], out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])
        else:
            partial = (program * num_splits + split) * BLOCK_R + rows  # [R]
            tl.store(max_ptr + partial, running_max)
            tl.store(sum_ptr + partial, running_sum)
            tl.store(acc_ptr + partial[:, None] * HEAD_DIM + dims[None, :], acc)
            tl.debug_barrier()  # every thread's partials stored before the arrival
            arrived = tl.atomic_add(arrivals_ptr + program, 1, sem="acq_rel", scope="gpu")
            if arrived == used - 1:  # the last split: every other one's partials are in
                tl.debug_barrier()  # every thread after the acquire
                tl.atomic_xchg(arrivals_ptr + program, 0)
                out = _merged_splits(max_ptr, sum_ptr, acc_ptr, program * num_splits, used, BLOCK_R, HEAD_DIM)
                tl.store(out_ptr + q_rows[:, None] + dims[None, :], out.to(out_ptr.dtype.element_ty),
                         mask=row_ok[:, None])  # fmt: skip


@triton.jit
def _merged_splits(max_ptr, sum_ptr, acc_ptr, first, used, BLOCK_R: tl.constexpr, HEAD_DIM: tl.constexpr):
    """The normalised output rows [R, Dh] (float32) from the partials of splits [first, first + used) (maxima and
    sums [splits, R], outputs [splits, R, Dh]), read from the L2 (other programs wrote them)."""
    rows = tl.arange(0, BLOCK_R)
    dims = tl.arange(0, HEAD_DIM)
    running_max = tl.full((BLOCK_R,), float("-inf"), tl.float32)
    running_sum = tl.zeros((BLOCK_R,), tl.float32)
    acc = tl.zeros((BLOCK_R, HEAD_DIM), tl.float32)
    for split in range(0, used):
        partial = (first + split) * BLOCK_R + rows
        block_max = tl.load(max_ptr + partial, cache_modifier=".cg")
        block_sum = tl.load(sum_ptr + partial, cache_modifier=".cg")
        block_acc = tl.load(acc_ptr + partial[:, None] * HEAD_DIM + dims[None, :], cache_modifier=".cg")
        new_max = tl.maximum(running_max, block_max)
        safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)
        old_scale = tl.exp(running_max - safe_max)
        block_scale = tl.exp(block_max - safe_max)
        running_sum = running_sum * old_scale + block_sum * block_scale
        acc = acc * old_scale[:, None] + block_acc * block_scale[:, None]
        running_max = new_max
    return acc / running_sum[:, None]


ATTENTION_BLOCK_N = 64  # keys per block of the split kernel's loop
ATTENTION_SPLIT_KEYS = 128  # keys per program (a split); the last of a kv head's splits to finish merges them
ATTENTION_MAX_SPLITS = 16  # per kv head: a longer cache takes longer splits, so that the merge stays short


def split_keys(max_length: int) -> int:
    """Keys per split for a cache of ``max_length`` columns: ``ATTENTION_SPLIT_KEYS``, or more (a multiple of the
    loop's block) when that would make more than ``ATTENTION_MAX_SPLITS`` splits, as the merging program reads the
    splits one after another."""
    keys = max(ATTENTION_SPLIT_KEYS, triton.cdiv(max_length, ATTENTION_MAX_SPLITS))
    return triton.cdiv(keys, ATTENTION_BLOCK_N) * ATTENTION_BLOCK_N


def arrivals(device: torch.device, programs: int) -> torch.Tensor:
    """The attention splits' arrival counts on ``device``: int32, at least ``programs``, zero between launches (the
    merging program resets its count). One buffer per device, so the attention launches that use it must run one
    after another (one stream, as the engine's forwards do). A larger one replaces it when needed; the old one is
    kept, as CUDA graphs captured before hold its address."""
    buffers = _ARRIVALS.setdefault(device, [])
    if not buffers or buffers[-1].numel() < programs:
        buffers.append(torch.zeros(max(programs, 1024), dtype=torch.int32, device=device))
    return buffers[-1]


_ARRIVALS: dict[torch.device, list[torch.Tensor]] = {}


MAX_ATTENTION_ROWS = 128  # GROUP * S per program; longer query blocks (prefill) use the reference


def decode_attention(
    q: torch.Tensor,
    cache_k: torch.Tensor,
    cache_v: torch.Tensor,
    columns: torch.Tensor,
    key_valid: torch.Tensor | None,
    scale: float,
    tree: torch.Tensor | None = None,
) -> torch.Tensor:
    """As :func:`specdec.kernels.reference.decode_attention` (the same arguments), for GROUP x S <= 128 rows."""
    batch, seq, num_heads, head_dim = q.shape
    num_kv_heads, max_length = cache_k.shape[1], cache_k.shape[2]
    group = num_heads // num_kv_heads
    out = torch.empty_like(q)
    block_r = max(16, triton.next_power_of_2(group * seq))
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    valid = key_valid if key_valid is not None else columns
    tree_bytes = tree.contiguous().view(torch.uint8) if tree is not None else columns  # [S, S]
    keys = split_keys(max_length)  # fixed by the cache size, so graphs can replay the launch
    splits = triton.cdiv(max_length, keys)
    programs = batch * num_kv_heads
    pdl = dependent_launch.enabled(q.device)
    maxima = torch.empty((programs, splits, block_r), dtype=torch.float32, device=q.device)
    sums = torch.empty_like(maxima)
    partial = torch.empty((programs, splits, block_r, head_dim), dtype=torch.float32, device=q.device)
    _attention_split_kernel[(programs, splits)](
        q, cache_k, cache_v, columns, valid, tree_bytes, maxima, sums, partial, arrivals(q.device, programs), out,
        scale, seq, num_heads, num_kv_heads, max_length, splits, keys,
        group, key_valid is not None, tree is not None, block_r, ATTENTION_BLOCK_N, head_dim, precision,
        pdl, num_warps=4, launch_pdl=pdl,
    )  # fmt: skip
    return out


# ------------------------------------------------------------------------------------------------ verification
@triton.jit
def _argmax_partials_kernel(
    logits_ptr, values_ptr, indices_ptr, vocab, chunk, SPLITS: tl.constexpr, BLOCK: tl.constexpr
):
    """Program (row, split): the largest logit of row in [split * chunk, (split + 1) * chunk), first index on ties."""
    row = tl.program_id(0)
    split = tl.program_id(1)
    best_value = float("-inf")
    best_index = 0
    begin = split * chunk
    end = tl.minimum(begin + chunk, vocab)
    start = begin
    while start < end:
        offsets = start + tl.arange(0, BLOCK)
        inside = offsets < end
        values = tl.load(logits_ptr + row * vocab + offsets, mask=inside, other=float("-inf")).to(tl.float32)
        block_best = tl.max(values, axis=0)
        block_index = tl.min(tl.where(values == block_best, offsets, 2147483647), axis=0)
        take = block_best > best_value
        best_index = tl.where(take, block_index, best_index)
        best_value = tl.where(take, block_best, best_value)
        start += BLOCK
    tl.store(values_ptr + row * SPLITS + split, best_value)
    tl.store(indices_ptr + row * SPLITS + split, best_index)


@triton.jit
def _greedy_finish_kernel(
    values_ptr, indices_ptr, draft_ptr, num_accepted_ptr, row_accepted_ptr, next_ptr, batch, num_drafted,
    SPLITS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    b3 = tl.arange(0, BLOCK_B)[:, None, None]
    i3 = tl.arange(0, BLOCK_K)[None, :, None]
    s3 = tl.arange(0, SPLITS)[None, None, :]
    ok3 = (b3 < batch) & (i3 <= num_drafted)
    at = (b3 * (num_drafted + 1) + i3) * SPLITS + s3
    values = tl.load(values_ptr + at, mask=ok3, other=float("-inf"))
    indices = tl.load(indices_ptr + at, mask=ok3, other=2147483647)
    best = tl.max(values, axis=2)
    choice = tl.min(tl.where(values == best[:, :, None], indices, 2147483647), axis=2)  # [B, K + 1]
    b2 = tl.arange(0, BLOCK_B)[:, None]
    i2 = tl.arange(0, BLOCK_K)[None, :]
    drafted = tl.load(draft_ptr + b2 * num_drafted + i2, mask=(b2 < batch) & (i2 < num_drafted), other=-1)
    mismatch = ((drafted != choice) | (i2 >= num_drafted)).to(tl.int32)
    row_accepted = tl.sum((tl.cumsum(mismatch, axis=1) == 0).to(tl.int32), axis=1)  # [B]
    rows = tl.arange(0, BLOCK_B)
    n = tl.min(tl.where(rows < batch, row_accepted, 2147483647), axis=0)
    next_tokens = tl.sum(tl.where(i2 == n, choice, 0), axis=1)
    tl.store(num_accepted_ptr, n.to(tl.int64))
    tl.store(row_accepted_ptr + rows, row_accepted.to(tl.int64), mask=rows < batch)
    tl.store(next_ptr + rows, next_tokens.to(tl.int64), mask=rows < batch)


def _argmax_partials(logits: torch.Tensor, splits: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows, vocab = logits.shape
    values = torch.empty((rows, splits), dtype=torch.float32, device=logits.device)
    indices = torch.empty((rows, splits), dtype=torch.int32, device=logits.device)
    chunk = triton.cdiv(vocab, splits)
    _argmax_partials_kernel[(rows, splits)](logits, values, indices, vocab, chunk, splits, 2048, num_warps=8)
    return values, indices


def greedy_verify(draft_tokens: torch.Tensor, target_logits: torch.Tensor) -> Verdict:
    """Fused greedy verification: argmax over V at K + 1 positions, longest matching prefix, next token."""
    batch, num_drafted = draft_tokens.shape
    vocab = target_logits.shape[-1]
    splits = 8 if vocab >= 16384 else 1
    values, indices = _argmax_partials(target_logits.reshape(-1, vocab).contiguous(), splits)
    device = target_logits.device
    num_accepted = torch.empty((), dtype=torch.long, device=device)
    row_accepted = torch.empty(batch, dtype=torch.long, device=device)
    next_tokens = torch.empty(batch, dtype=torch.long, device=device)
    _greedy_finish_kernel[(1,)](
        values, indices, draft_tokens.contiguous(), num_accepted, row_accepted, next_tokens, batch, num_drafted,
        splits, triton.next_power_of_2(batch), triton.next_power_of_2(num_drafted + 1),
    )  # fmt: skip
    return Verdict(num_accepted=num_accepted, row_accepted=row_accepted, next_tokens=next_tokens)


@triton.jit
def _accept_kernel(
    target_ptr, draft_probs_ptr, draft_ptr, uniforms_ptr, num_accepted_ptr, row_accepted_ptr, batch, num_drafted,
    vocab, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """Speculative sampling's accept test u * q(d) <= p(d) at every drafted position, and the accepted prefixes."""
    b2 = tl.arange(0, BLOCK_B)[:, None]
    i2 = tl.arange(0, BLOCK_K)[None, :]
    ok = (b2 < batch) & (i2 < num_drafted)
    drafted = tl.load(draft_ptr + b2 * num_drafted + i2, mask=ok, other=0)
    p = tl.load(target_ptr + (b2 * (num_drafted + 1) + i2) * vocab + drafted, mask=ok, other=0.0)
    q = tl.load(draft_probs_ptr + (b2 * num_drafted + i2) * vocab + drafted, mask=ok, other=1.0)
    u = tl.load(uniforms_ptr + b2 * num_drafted + i2, mask=ok, other=2.0)
    rejected = ((u * q > p) | (i2 >= num_drafted)).to(tl.int32)
    row_accepted = tl.sum((tl.cumsum(rejected, axis=1) == 0).to(tl.int32), axis=1)
    rows = tl.arange(0, BLOCK_B)
    n = tl.min(tl.where(rows < batch, row_accepted, 2147483647), axis=0)
    tl.store(num_accepted_ptr, n.to(tl.int64))
    tl.store(row_accepted_ptr + rows, row_accepted.to(tl.int64), mask=rows < batch)


@triton.jit
def _residual_partials_kernel(
    target_ptr, draft_probs_ptr, exponentials_ptr, num_accepted_ptr, residual_best_ptr, residual_index_ptr,
    residual_mass_ptr, target_best_ptr, target_index_ptr, num_drafted, vocab, chunk,
    SPLITS: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """Program (row, split): over its vocabulary chunk at position n, the best max(0, p - q) / E and p / E
    (exponential race: argmax r / E samples r's normalised distribution), and the chunk's residual mass."""
    row = tl.program_id(0)
    split = tl.program_id(1)
    n = tl.load(num_accepted_ptr)
    begin = split * chunk
    best_r = -1.0
    index_r = 0
    best_p = -1.0
    index_p = 0
    mass = 0.0
    end = tl.minimum(begin + chunk, vocab)
    draft_end = tl.where(n < num_drafted, end, begin)  # all drafts accepted: no draft at n, q = 0 (the bonus token)
    start = begin
    while start < end:
        offsets = start + tl.arange(0, BLOCK)
        inside = offsets < end
        p = tl.load(target_ptr + (row * (num_drafted + 1) + n) * vocab + offsets, mask=inside, other=0.0)
        q = tl.load(draft_probs_ptr + (row * num_drafted + n) * vocab + offsets, mask=offsets < draft_end, other=0.0)
        e = tl.load(exponentials_ptr + row * vocab + offsets, mask=inside, other=1.0)
        r = tl.maximum(p - q, 0.0)
        mass += tl.sum(r, axis=0)
        score_r = tl.where(inside, tl.math.div_rn(r, e), -1.0)
        score_p = tl.where(inside, tl.math.div_rn(p, e), -1.0)
        block_r = tl.max(score_r, axis=0)
        block_p = tl.max(score_p, axis=0)
        at_r = tl.min(tl.where(score_r == block_r, offsets, 2147483647), axis=0)
        at_p = tl.min(tl.where(score_p == block_p, offsets, 2147483647), axis=0)
        index_r = tl.where(block_r > best_r, at_r, index_r)
        best_r = tl.maximum(block_r, best_r)
        index_p = tl.where(block_p > best_p, at_p, index_p)
        best_p = tl.maximum(block_p, best_p)
        start += BLOCK
    at = row * SPLITS + split
    tl.store(residual_best_ptr + at, best_r)
    tl.store(residual_index_ptr + at, index_r)
    tl.store(residual_mass_ptr + at, mass)
    tl.store(target_best_ptr + at, best_p)
    tl.store(target_index_ptr + at, index_p)


@triton.jit
def _sample_finish_kernel(
    residual_best_ptr, residual_index_ptr, residual_mass_ptr, target_best_ptr, target_index_ptr, draft_ptr,
    num_accepted_ptr, row_accepted_ptr, next_ptr, num_drafted, SPLITS: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0)
    splits = tl.arange(0, SPLITS)
    at = row * SPLITS + splits
    best_r = tl.load(residual_best_ptr + at)
    best_p = tl.load(target_best_ptr + at)
    top_r = tl.max(best_r, axis=0)
    top_p = tl.max(best_p, axis=0)
    token_r = tl.min(tl.where(best_r == top_r, tl.load(residual_index_ptr + at), 2147483647), axis=0)
    token_p = tl.min(tl.where(best_p == top_p, tl.load(target_index_ptr + at), 2147483647), axis=0)
    mass = tl.sum(tl.load(residual_mass_ptr + at), axis=0)
    token = tl.where(mass > 0, token_r, token_p)
    n = tl.load(num_accepted_ptr)
    keeps_draft = tl.load(row_accepted_ptr + row) > n
    drafted = tl.load(draft_ptr + row * num_drafted + n, mask=keeps_draft, other=0)
    tl.store(next_ptr + row, tl.where(keeps_draft, drafted, token.to(tl.int64)))


def speculative_sample_from_noise(
    draft_tokens: torch.Tensor,
    draft_probs: torch.Tensor,
    target_probs: torch.Tensor,
    uniforms: torch.Tensor,
    exponentials: torch.Tensor,
) -> Verdict:
    batch, num_drafted = draft_tokens.shape
    vocab = target_probs.shape[-1]
    device = target_probs.device
    draft_tokens = draft_tokens.contiguous()
    target_probs = target_probs.contiguous()
    draft_probs = draft_probs.contiguous()
    num_accepted = torch.empty((), dtype=torch.long, device=device)
    row_accepted = torch.empty(batch, dtype=torch.long, device=device)
    next_tokens = torch.empty(batch, dtype=torch.long, device=device)
    _accept_kernel[(1,)](
        target_probs, draft_probs, draft_tokens, uniforms.contiguous(), num_accepted, row_accepted, batch,
        num_drafted, vocab, triton.next_power_of_2(batch), triton.next_power_of_2(max(num_drafted, 1)),
    )  # fmt: skip
    splits = 64 if vocab >= 16384 else 1  # a program per 2k tokens of a large vocabulary (one row: 64 programs)
    partial = {
        name: torch.empty((batch, splits), dtype=dtype, device=device)
        for name, dtype in (("rb", torch.float32), ("ri", torch.int32), ("m", torch.float32),
                            ("pb", torch.float32), ("pi", torch.int32))
    }  # fmt: skip
    _residual_partials_kernel[(batch, splits)](
        target_probs, draft_probs, exponentials.contiguous(), num_accepted, partial["rb"], partial["ri"],
        partial["m"], partial["pb"], partial["pi"], num_drafted, vocab, triton.cdiv(vocab, splits), splits, 2048,
        num_warps=8,
    )  # fmt: skip
    _sample_finish_kernel[(batch,)](
        partial["rb"], partial["ri"], partial["m"], partial["pb"], partial["pi"], draft_tokens, num_accepted,
        row_accepted, next_tokens, num_drafted, splits,
    )  # fmt: skip
    return Verdict(num_accepted=num_accepted, row_accepted=row_accepted, next_tokens=next_tokens)


# -------------------------------------------------------------------------------------- sampling distributions
def sampling_probs(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """The sampling distribution of ``reference.sampling_probs`` (logits [..., V] -> [..., V] float32). Without
    top-k: ``triton_sampling``'s kernels, which find top-p's threshold without a sort. With top-k: PyTorch, in fewer
    kernels than the reference (``e = exp(score)`` once, top-p's cumulative mass as a cumulative sum of the sorted
    ``e`` against ``top_p`` times their total, the kept ``e`` divided by their sum; ties at the edge kept)."""
    if not top_k:
        return triton_sampling.sampling_probs(logits, temperature, top_p)
    e = reference.top_k_scores(logits.float(), temperature, top_k).exp()  # [..., V], the best exactly 1
    if top_p is not None and top_p < 1.0:
        sorted_e = torch.sort(e, dim=-1, descending=True).values  # [..., V]
        mass = torch.cumsum(sorted_e, dim=-1)  # [..., V]
        kept = ((mass - sorted_e) < top_p * mass[..., -1:]).sum(dim=-1, keepdim=True)  # [..., 1], >= 1
        e = e.masked_fill(e < sorted_e.gather(-1, kept - 1), 0.0)
    return e / e.sum(dim=-1, keepdim=True)


def sampling_race(
    logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None, exponentials: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``reference.sampling_race``: without top-k ``triton_sampling.sampling_race`` (one kernel for a small
    vocabulary); with top-k :func:`sampling_probs` and the race in PyTorch."""
    if not top_k:
        return triton_sampling.sampling_race(logits, temperature, top_p, exponentials)
    q = sampling_probs(logits, temperature, top_k, top_p)
    return q, (q / exponentials).argmax(dim=-1)
