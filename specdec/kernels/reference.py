"""Plain-PyTorch references of the fast path's fused operations.

They define what each Triton kernel computes (the kernels are tested against them on fresh random inputs), and
they are what runs wherever Triton does not (CPU, MPS). Shapes: ``T`` tokens (= B * S), ``D`` hidden size, ``H``
query heads, ``Hkv`` key/value heads, ``Dh`` head size, ``M`` cache length, ``V`` vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from specdec.kernels import cpu_linear


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x: [T, D], weight: [D] -> [T, D]. Normalised in float32, rounded to x's dtype, then scaled by weight
    (the order transformers' Llama uses)."""
    wide = x if x.dtype == torch.float32 else x.float()  # (no conversion op where there is nothing to convert)
    normed = wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + eps)
    return weight * (normed if x.dtype == torch.float32 else normed.to(x.dtype))


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
    transposed: bool = False,
) -> torch.Tensor:
    """A product with the small operations around it: x [T, K] (normed first with ``norm_weight`` [K]: an RMS norm,
    or with ``norm_bias`` [K] a layer norm, GPT-2's) times weight [N, K] (or [K, N] with ``transposed``: GPT-2's
    Conv1D layout, multiplied as transformers does, by ``addmm``) plus bias [N]; with ``silu_pair`` the weight is
    [2I, K], gate then up, and the result silu(gate) * up [T, I]; with ``gelu`` ("tanh" or "none", F.gelu's
    approximation) the result's GELU; then ``residual`` [T, N] + the result."""
    if norm_weight is None:
        h = x
    elif norm_bias is not None:
        h = F.layer_norm(x, (x.shape[-1],), norm_weight, norm_bias, eps)
    else:
        h = rms_norm(x, norm_weight, eps)
    if transposed:
        y = torch.addmm(bias, h, weight) if bias is not None else h @ weight
    else:
        y = cpu_linear.linear(h, weight, bias)
    if silu_pair:
        y = silu_mul(y)
    if gelu is not None:
        y = F.gelu(y, approximate=gelu)
    return y if residual is None else residual + y


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up: [T, 2I] (gate then up) -> silu(gate) * up: [T, I]."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, S, heads, Dh]; cos, sin: [B, S, 1, Dh]. Rotary embedding, 'rotate half' convention."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def rotary_tables(
    inv_freq: torch.Tensor, attention_scaling: float, length: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin for rotary positions [0, length), computed as transformers does: inv_freq [Dh / 2] float32 ->
    two [length, Dh] tables in ``dtype``, for ``rope_and_store``."""
    positions = torch.arange(length, device=inv_freq.device, dtype=torch.float32)
    freqs = positions[:, None] * inv_freq[None, :]  # [P, Dh / 2]
    angles = torch.cat([freqs, freqs], dim=-1)  # [P, Dh]
    return (angles.cos() * attention_scaling).to(dtype), (angles.sin() * attention_scaling).to(dtype)


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
    """Rotate q and k (unless the tables are None: models with learned positions), write k and v into the cache at
    ``columns``, return q.

    qkv: [B, S, (H + 2 Hkv) * Dh]; positions: [B, S] rotary positions; cos_table, sin_table: [P, Dh] or None;
    cache_k, cache_v: [B, Hkv, M, Dh]; columns: [S] cache columns. Returns q: [B, S, H, Dh].
    """
    batch, seq, width = qkv.shape
    head_dim = width // (num_heads + 2 * num_kv_heads)
    qk, v = qkv.view(batch, seq, num_heads + 2 * num_kv_heads, head_dim).split(
        [num_heads + num_kv_heads, num_kv_heads], dim=2
    )  # q and k rotate together: [B, S, H + Hkv, Dh]
    if cos_table is not None and sin_table is not None:
        cos = cos_table[positions].unsqueeze(2)  # [B, S, 1, Dh]
        sin = sin_table[positions].unsqueeze(2)
        qk = _rotate(qk, cos, sin)
    q, k = qk.split([num_heads, num_kv_heads], dim=2)
    cache_k.index_copy_(2, columns, k.transpose(1, 2))
    cache_v.index_copy_(2, columns, v.transpose(1, 2))
    return q


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
    transposed: bool = False,
) -> torch.Tensor:
    """A layer's q/k/v product (``fused_linear`` of x [B * S, D] with its norm and bias; ``norm_bias`` and
    ``transposed`` as there) followed by ``rope_and_store`` (positions [B, S]; the other arguments as there).
    Returns q: [B, S, H, Dh]."""
    qkv = fused_linear(x, weight, bias, norm_weight, eps, norm_bias=norm_bias, transposed=transposed)
    qkv = qkv.view(*positions.shape, -1)
    return rope_and_store(qkv, positions, cos_table, sin_table, cache_k, cache_v, columns, num_heads, num_kv_heads)


def attention_visibility(
    columns: torch.Tensor, key_valid: torch.Tensor | None, tree: torch.Tensor | None, max_length: int
) -> torch.Tensor:
    """Which of the M cache columns each of the S new queries sees (see ``decode_attention``): [B, S, M] bool with
    ``key_valid``, else [1, S, M]. Causal, or a token tree's ancestors with ``tree``; a query always sees its
    own key."""
    key_columns = torch.arange(max_length, device=columns.device)
    if tree is None:
        visible = key_columns <= columns[:, None]  # [S, M]
    else:
        among_new = torch.zeros((columns.shape[0], max_length), dtype=torch.bool, device=columns.device)
        among_new.index_copy_(1, columns, tree)  # [S, M]: the tree's visibility at the new tokens' columns
        visible = (key_columns < columns[:1, None]) | among_new
    if key_valid is None:
        return visible[None]
    return visible & (key_valid[:, None, :] | (key_columns == columns[:, None]))


def decode_attention(
    q: torch.Tensor,
    cache_k: torch.Tensor,
    cache_v: torch.Tensor,
    columns: torch.Tensor,
    key_valid: torch.Tensor | None,
    scale: float,
    tree: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention of S new queries over the cache (grouped-query).

    q: [B, S, H, Dh]; cache_k, cache_v: [B, Hkv, M, Dh]; columns: [S] the queries' own cache columns (query s sees
    keys j <= columns[s]); key_valid: [B, M] bool (False on left padding) or None. A query always sees its own key,
    so that a padding position (which sees no valid key) stays finite. Returns [B, S, H, Dh].

    tree: [S, S] bool or None. With a tree the S new tokens sit at consecutive columns (a token tree, root first):
    query s sees every key before ``columns[0]`` and, among the new ones, key j where ``tree[s, j]``.
    """
    num_heads = q.shape[2]
    num_kv_heads, max_length = cache_k.shape[1], cache_k.shape[2]
    group = num_heads // num_kv_heads
    keys, values = cache_k, cache_v  # [B, H, M, Dh] once repeated for the query heads (no copy when not grouped)
    if group > 1:
        keys, values = keys.repeat_interleave(group, dim=1), values.repeat_interleave(group, dim=1)
    scores = torch.matmul(q.transpose(1, 2), keys.transpose(2, 3)).float() * scale  # [B, H, S, M]
    visible = attention_visibility(columns, key_valid, tree, max_length)[:, None]  # [B or 1, 1, S, M]
    scores = scores.masked_fill(~visible, float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(q.dtype)
    return torch.matmul(probs, values).transpose(1, 2)  # [B, S, H, Dh]


def sdpa_attention(
    q: torch.Tensor,
    cache_k: torch.Tensor,
    cache_v: torch.Tensor,
    columns: torch.Tensor,
    key_valid: torch.Tensor | None,
    scale: float,
    tree: torch.Tensor | None = None,
) -> torch.Tensor:
    """``decode_attention`` through torch's fused ``scaled_dot_product_attention``: the same function (arguments and
    shapes as there) in one attention call instead of about twenty operations, for long blocks of queries (a
    prefill) on a GPU, where each operation's launch costs more than its work. The query heads that share a kv head
    sit side by side as one block of S * G queries ([B, Hkv, S * G, Dh]), so no key or value is copied."""
    batch, seq, num_heads, head_dim = q.shape
    num_kv_heads, max_length = cache_k.shape[1], cache_k.shape[2]
    group = num_heads // num_kv_heads
    visible = attention_visibility(columns, key_valid, tree, max_length)  # [B or 1, S, M]
    rows = visible.shape[0]
    mask = visible[:, None, :, None, :].expand(rows, 1, seq, group, max_length).reshape(rows, 1, seq * group, -1)
    grouped = q.view(batch, seq, num_kv_heads, group, head_dim).permute(0, 2, 1, 3, 4)  # [B, Hkv, S, G, Dh]
    grouped = grouped.reshape(batch, num_kv_heads, seq * group, head_dim)
    out = F.scaled_dot_product_attention(grouped, cache_k, cache_v, attn_mask=mask, scale=scale)  # [B, Hkv, S*G, Dh]
    out = out.view(batch, num_kv_heads, seq, group, head_dim).permute(0, 2, 1, 3, 4)
    return out.reshape(batch, seq, num_heads, head_dim)


def top_k_scores(logits: torch.Tensor, temperature: float, top_k: int | None) -> torch.Tensor:
    """``(logits - max) / T`` ([..., V], <= 0, the best exactly 0), -inf below the k-th best score with ``top_k``."""
    scores = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
    if top_k and top_k < scores.shape[-1]:
        kth_best = torch.topk(scores, top_k, dim=-1).values[..., -1:]  # [..., 1]
        scores = scores.masked_fill(scores < kth_best, float("-inf"))
    return scores


def sampling_probs(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """The sampling distribution (see ``specdec.sampling.logits_to_probs``): logits [..., V] -> [..., V] float32
    (float64 stays float64: the tests' exact reference).

    Scores ``(logits - max) / T`` (<= 0, the best exactly 0); top-k keeps the scores at or above the k-th best; top-p
    sorts them, keeps tokens while the mass before them is below ``top_p`` and every token tying with the last kept.
    """
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    scores = top_k_scores(logits, temperature, top_k)
    if top_p is not None and top_p < 1.0:
        sorted_scores = torch.sort(scores, dim=-1, descending=True).values  # [..., V]
        sorted_probs = torch.softmax(sorted_scores, dim=-1)
        # mass strictly before each token; a token is kept while that mass is below top_p (so the first always is),
        # and so is every token that ties with the last one kept (however a sort happens to order equal scores)
        mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        kept = (mass_before < top_p).sum(dim=-1, keepdim=True)  # [..., 1], >= 1
        last_kept = sorted_scores.gather(-1, kept - 1)  # [..., 1]
        scores = scores.masked_fill(scores < last_kept, float("-inf"))
    return torch.softmax(scores, dim=-1)


def sampling_race(
    logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None, exponentials: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The sampling distribution q of ``logits`` [..., V] (any float dtype) and the exponential race's token
    ``argmax_v q(v) / E(v)`` [...] on ``exponentials`` [..., V]."""
    q = sampling_probs(logits.float(), temperature, top_k, top_p)
    return q, (q / exponentials).argmax(dim=-1)
