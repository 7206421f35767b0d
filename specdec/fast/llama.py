"""A lean Llama-family forward (Llama, Mistral, Qwen2 shapes) over a static KV cache, for the fast path.

It reads the weights of a loaded ``transformers`` model (q/k/v and gate/up projections are concatenated once into
fused matrices; everything else is shared, not copied) and computes the same function with a handful of fused
kernels per layer, so that a whole forward can be captured in a CUDA graph. Shapes: B batch, S new tokens,
T = B * S, D hidden, H / Hkv query / key-value heads, Dh head size, M cache length, V vocabulary, L layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F
from transformers import PreTrainedModel

from specdec.kernels import Kernels, reference

STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")  # inverse frequencies that do not depend on length


def unsupported_reason(model: PreTrainedModel, triton: bool = False) -> str | None:
    """Why the Llama-family fast path cannot run this Llama, Mistral or Qwen2 model (None if it can); ``triton``:
    with the Triton kernels, whose head loops need a power-of-two head size. A sliding window shorter than a run is
    refused when the run's length is known (``FastDecoder.prepare``)."""
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if triton and head_dim & (head_dim - 1):
        return f"head size {head_dim} is not a power of two (the Triton kernels need one)"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r} is not silu"
    if getattr(config, "mlp_bias", False):
        return "MLP biases are not supported"
    rope_type = getattr(model.model.rotary_emb, "rope_type", "default")
    if rope_type not in STATIC_ROPE_TYPES:
        return f"rope type {rope_type!r} changes with the sequence length"
    return None


@dataclass(frozen=True)
class LayerWeights:
    input_norm: torch.Tensor  # [D]
    qkv: torch.Tensor  # [(H + 2 Hkv) * Dh, D]
    qkv_bias: torch.Tensor | None  # [(H + 2 Hkv) * Dh]
    o: torch.Tensor  # [D, H * Dh]
    o_bias: torch.Tensor | None  # [D]
    post_norm: torch.Tensor  # [D]
    gate_up: torch.Tensor  # [2 I, D]
    down: torch.Tensor  # [D, I]


def _cat_bias(*linears: torch.nn.Linear) -> torch.Tensor | None:
    biases = [linear.bias for linear in linears]
    if all(b is None for b in biases):
        return None
    return torch.cat([b if b is not None else torch.zeros(lin.out_features, dtype=lin.weight.dtype,
                                                           device=lin.weight.device)
                      for b, lin in zip(biases, linears, strict=True)])  # fmt: skip


class FastLlama:
    """The Llama forward with fused kernels. ``forward`` writes the new tokens' keys and values into the cache."""

    family = "llama"
    max_positions: int | None = None  # rotary positions have no table to run out of

    def __init__(self, model: PreTrainedModel, kernels: Kernels) -> None:
        config = model.config
        self.kernels = kernels
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = getattr(config, "num_key_value_heads", None) or self.num_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        self.eps = config.rms_norm_eps
        self.scale = self.head_dim**-0.5
        self.dtype = model.dtype
        self.device = model.device
        decoder = model.model
        self.embed = decoder.embed_tokens.weight  # [V, D]
        self.final_norm = decoder.norm.weight
        self.lm_head = model.lm_head.weight  # [V, D] (may be the embedding itself)
        self.layers = []
        with torch.no_grad():
            for layer in decoder.layers:
                attention, mlp = layer.self_attn, layer.mlp
                self.layers.append(
                    LayerWeights(
                        input_norm=layer.input_layernorm.weight,
                        qkv=torch.cat([attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight]),
                        qkv_bias=_cat_bias(attention.q_proj, attention.k_proj, attention.v_proj),
                        o=attention.o_proj.weight,
                        o_bias=attention.o_proj.bias,
                        post_norm=layer.post_attention_layernorm.weight,
                        gate_up=torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]),
                        down=mlp.down_proj.weight,
                    )
                )
        rotary = decoder.rotary_emb
        self.inv_freq = rotary.inv_freq.float()  # [Dh / 2]
        self.attention_scaling = float(getattr(rotary, "attention_scaling", 1.0))
        self.cos_table = torch.empty(0)
        self.sin_table = torch.empty(0)
        self.persistent: Any = None  # a PersistentLlama for one-token steps (SPECDEC_PERSISTENT=1, Triton kernels)
        if kernels.name == "triton":
            from specdec.kernels import triton_persistent

            if triton_persistent.enabled():
                self.persistent = triton_persistent.persistent_step(self)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def persistent_run(
        self,
        input_ids: torch.Tensor,
        length: torch.Tensor,
        positions: torch.Tensor,
        key_valid: torch.Tensor,
        cache: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        """One token of one row as one kernel (``persistent`` must be set): input_ids [1, 1]; length [] int64, the
        cache's length, which it advances; positions, key_valid [1, M]. Returns float32 logits [1, 1, V]."""
        return self.persistent(
            input_ids, length, positions, key_valid, cache, self.num_layers, self.cos_table, self.sin_table
        )

    def position_tables(self, length: int) -> None:
        """cos and sin for positions [0, length): [length, Dh], computed as transformers does, in the model dtype."""
        if self.cos_table.shape[0] < length:
            self.cos_table, self.sin_table = reference.rotary_tables(
                self.inv_freq, self.attention_scaling, length, self.dtype
            )

    def new_cache(self, batch_size: int, max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of every layer: two [L, B, Hkv, M, Dh] tensors."""
        shape = (self.num_layers, batch_size, self.num_kv_heads, max_length, self.head_dim)
        return (
            torch.zeros(shape, dtype=self.dtype, device=self.device),
            torch.zeros(shape, dtype=self.dtype, device=self.device),
        )

    def run(
        self,
        input_ids: torch.Tensor,
        columns: torch.Tensor,
        positions: torch.Tensor,
        key_valid: torch.Tensor,
        cache: tuple[torch.Tensor, torch.Tensor],
        last_only: bool,
        tree: torch.Tensor | None = None,
        feature_layers: tuple[int, ...] | None = None,
        logits_at: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """input_ids: [B, S]; columns: [S] cache columns of the new tokens; positions: [B, S] rotary positions;
        key_valid: [B, M] bool; tree: [S, S] bool visibility among the new tokens (a token tree) or None (causal).
        Returns logits [B, S, V] (or [B, 1, V] with ``last_only``) in the model dtype, and with ``feature_layers``
        the features [B, S, F] (see ``FeatureRequest``: () is the final normed state) else None. ``logits_at`` [1]:
        the one new token whose logits are returned ([B, 1, V]; a padded prefill's last token), instead."""
        k = self.kernels
        batch, seq = input_ids.shape
        cache_k, cache_v = cache
        residual = F.embedding(input_ids, self.embed).view(batch * seq, -1)  # [T, D] the residual stream
        taken: dict[int, torch.Tensor] = {}
        for index, layer in enumerate(self.layers):
            q = k.linear_rope_store(
                residual, layer.qkv, layer.qkv_bias, layer.input_norm, self.eps, positions, self.cos_table,
                self.sin_table, cache_k[index], cache_v[index], columns, self.num_heads, self.num_kv_heads,
            )  # [B, S, H, Dh]  # fmt: skip
            attended = k.decode_attention(q, cache_k[index], cache_v[index], columns, key_valid, self.scale, tree)
            residual = k.fused_linear(attended.reshape(batch * seq, -1), layer.o, layer.o_bias, residual=residual)
            act = k.fused_linear(residual, layer.gate_up, None, layer.post_norm, self.eps, silu_pair=True)  # [T, I]
            residual = k.fused_linear(act, layer.down, residual=residual)  # [T, D]
            if feature_layers and index in feature_layers:
                taken[index] = residual  # [T, D]: the layer's output, the residual stream
        normed = k.rms_norm(residual, self.final_norm, self.eps)
        normed = normed.view(batch, seq, -1)
        features = None
        if feature_layers is not None:
            parts = [taken[i] for i in feature_layers] if feature_layers else [normed]
            features = torch.cat([part.view(batch, seq, -1) for part in parts], dim=-1)  # [B, S, F]
        if logits_at is not None:
            normed = normed.index_select(1, logits_at)
        elif last_only:
            normed = normed[:, -1:]
        return k.linear(normed, self.lm_head), features  # [B, S or 1, V]
