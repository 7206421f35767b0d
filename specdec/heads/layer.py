"""One Llama decoder layer for draft heads, with explicit key/value inputs so a caller can run it over a cache,
over a tree of drafted nodes, or unrolled over several drafting depths in training.

The layer never owns a cache. :meth:`DraftAttention.forward` either takes the keys and values of earlier positions
(``past``) and a boolean mask over ``past + new`` positions (training, tests), or writes the new entries into a
preallocated cache at given columns and attends over all of it through a mask over its columns (``into``, a
:class:`CacheWrite`: drafting, whose shapes then never change, see ``specdec.heads.cache.HeadCache``); either way it
returns the new positions' keys and values. Parameter names follow
``transformers``' Llama (``self_attn.q_proj``, ``mlp.gate_proj``, ``post_attention_layernorm``), which is also what
the published EAGLE checkpoints use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from specdec.kernels.cpu_linear import Linear

KeyValues = tuple[torch.Tensor, torch.Tensor]  # keys, values: [B, H_kv, L, hd] each


@dataclass(frozen=True)
class CacheWrite:
    """A preallocated cache and the columns where a forward's new entries go."""

    keys: torch.Tensor  # [B, H_kv, C, hd]
    values: torch.Tensor  # [B, H_kv, C, hd]
    columns: torch.Tensor  # [S] int64


@dataclass(frozen=True)
class LayerShape:
    """The shape of a draft decoder layer (as a Llama ``config.json`` gives it)."""

    hidden_size: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    attention_input: int  # width q/k/v read: hidden_size (EAGLE-1/2) or 2 * hidden_size (EAGLE-3)
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, float | str | int], ...] = ()  # Llama-3 style scaling items, if any
    max_positions: int = 2048
    qkv_bias: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def llama_config(self) -> LlamaConfig:
        rope: dict = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling:
            rope = {**dict(self.rope_scaling), "rope_theta": self.rope_theta}
            rope["rope_type"] = rope.pop("type", rope.get("rope_type", "default"))
        return LlamaConfig(
            hidden_size=self.hidden_size,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            intermediate_size=self.intermediate_size,
            max_position_embeddings=self.max_positions,
            rms_norm_eps=self.rms_norm_eps,
            rope_parameters=rope,
        )


class RMSNorm(nn.Module):
    def __init__(self, width: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., D] -> [..., D]
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return self.weight * (x.float() * torch.rsqrt(variance + self.eps)).to(x.dtype)


class DraftMLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = Linear(hidden, intermediate, bias=False)
        self.up_proj = Linear(hidden, intermediate, bias=False)
        self.down_proj = Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., D] -> [..., D]
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DraftAttention(nn.Module):
    """Grouped-query attention with rotary positions over ``past`` keys/values plus the new positions."""

    def __init__(self, shape: LayerShape) -> None:
        super().__init__()
        self.shape = shape
        hd = shape.head_dim
        self.q_proj = Linear(shape.attention_input, shape.num_heads * hd, bias=shape.qkv_bias)
        self.k_proj = Linear(shape.attention_input, shape.num_kv_heads * hd, bias=shape.qkv_bias)
        self.v_proj = Linear(shape.attention_input, shape.num_kv_heads * hd, bias=shape.qkv_bias)
        self.o_proj = Linear(shape.num_heads * hd, shape.hidden_size, bias=False)
        self.rotary = LlamaRotaryEmbedding(shape.llama_config())

    def forward(
        self,
        x: torch.Tensor,  # [B, S, A] (A = shape.attention_input)
        position_ids: torch.Tensor,  # [B, S] int64: rotary position of each new entry
        past: KeyValues | None = None,  # keys/values of earlier entries, [B, H_kv, L, hd] each
        mask: torch.Tensor | None = None,  # [S, L + S] or [B, S, L + S] bool, True = may attend; None = causal
        into: CacheWrite | None = None,  # instead of past: the cache to write into; mask then [B, S, C] (required)
    ) -> tuple[torch.Tensor, KeyValues]:  # out [B, S, D], the new entries' (keys, values) [B, H_kv, S, hd]
        b, s, _ = x.shape
        hd, h, hkv = self.shape.head_dim, self.shape.num_heads, self.shape.num_kv_heads
        q = self.q_proj(x).view(b, s, h, hd).transpose(1, 2)  # [B, H, S, hd]
        k = self.k_proj(x).view(b, s, hkv, hd).transpose(1, 2)  # [B, H_kv, S, hd]
        v = self.v_proj(x).view(b, s, hkv, hd).transpose(1, 2)
        cos, sin = self.rotary(v, position_ids)  # [B, S, hd]
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        if into is not None:
            assert past is None and mask is not None, "a cache write attends through an explicit mask"
            into.keys.index_copy_(2, into.columns, k.to(into.keys.dtype))
            into.values.index_copy_(2, into.columns, v.to(into.values.dtype))
            keys, values = into.keys, into.values  # [B, H_kv, C, hd]
        elif past is None:
            keys, values = k, v
        else:
            keys, values = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
        if mask is None:
            total = keys.shape[2]
            mask = torch.ones(s, total, dtype=torch.bool, device=x.device).tril(total - s)  # [S, L + S]
        attn_mask = mask[:, None] if mask.dim() == 3 else mask  # [B, 1, S, L+S] or [S, L+S]
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=attn_mask, enable_gqa=hkv != h)  # [B,H,S,hd]
        return self.o_proj(out.transpose(1, 2).reshape(b, s, h * hd)), (k, v)


class DraftDecoderLayer(nn.Module):
    """A Llama decoder layer. ``input_norm=False`` is EAGLE-1's first layer, which has no ``input_layernorm`` (its
    input is already the fused feature); ``two_inputs=True`` is EAGLE-3's midlayer, whose attention reads
    ``[input_layernorm(embedding) ; hidden_norm(hidden)]`` (2D) while the residual stream is the hidden."""

    def __init__(self, shape: LayerShape, input_norm: bool = True, two_inputs: bool = False) -> None:
        super().__init__()
        self.self_attn = DraftAttention(shape)
        self.mlp = DraftMLP(shape.hidden_size, shape.intermediate_size)
        self.post_attention_layernorm = RMSNorm(shape.hidden_size, shape.rms_norm_eps)
        self.input_layernorm = RMSNorm(shape.hidden_size, shape.rms_norm_eps) if input_norm or two_inputs else None
        self.hidden_norm = RMSNorm(shape.hidden_size, shape.rms_norm_eps) if two_inputs else None

    def forward(
        self,
        hidden: torch.Tensor,  # [B, S, D] the residual stream
        position_ids: torch.Tensor,  # [B, S]
        past: KeyValues | None = None,
        mask: torch.Tensor | None = None,
        embedding: torch.Tensor | None = None,  # [B, S, D] token embeddings (EAGLE-3 only)
        into: CacheWrite | None = None,
    ) -> tuple[torch.Tensor, KeyValues]:  # [B, S, D], new (keys, values)
        if self.hidden_norm is not None:
            assert embedding is not None and self.input_layernorm is not None
            attn_in = torch.cat([self.input_layernorm(embedding), self.hidden_norm(hidden)], dim=-1)  # [B, S, 2D]
        else:
            attn_in = hidden if self.input_layernorm is None else self.input_layernorm(hidden)
        attn_out, kv = self.self_attn(attn_in, position_ids, past, mask, into)
        hidden = hidden + attn_out
        hidden = hidden + self.mlp(self.post_attention_layernorm(hidden))
        return hidden, kv
