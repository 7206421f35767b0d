"""An EAGLE head's drafting forward: its layer over the head's cache with fused weights and few operations, as the
fast path runs a target (``specdec.fast.llama``).

The head modules (``specdec.heads.eagle``) define the function and are what training and checkpoints use; drafting
runs it here with fewer, larger operations, which is what a step costs on a CPU, where every small operation has
a fixed price: q/k/v and gate/up are concatenated once into fused matrices (a copy, made when the drafter is
built; later changes to the head's parameters are not seen), the rotary angles come from a table, and the new keys
and values go into the cache in the same operation that rotates them (the fast path's reference operations,
``specdec.kernels.reference``). On a CPU every product reads the weight's transposed copy
(``cpu_linear.linear(..., transposed=True)``), whatever its rows: the few-row forwards of a tree then find the
weights that the feed of the accepted entries (more rows) has just read still in the CPU's caches. Same function as
the modules, up to float rounding (``tests/test_heads.py`` compares the two).

Shapes: B batch, S new entries, T = B * S, D the head's width, A its attention input (D, or 2D for EAGLE-3),
H / Hkv query / key-value heads, Dh head size, C cache columns, V the target's vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from specdec.heads.cache import HeadCache
from specdec.heads.eagle import Eagle3Head, EagleHead
from specdec.heads.layer import DraftDecoderLayer
from specdec.kernels import cpu_linear, reference


class FusedEagle:
    """The drafting forward of an EAGLE-1/2 or EAGLE-3 head (see the module docstring)."""

    def __init__(self, head: EagleHead | Eagle3Head) -> None:
        self.head = head
        self.version = head.config.version
        shape = head.config.layer
        self.num_heads, self.num_kv_heads, self.head_dim = shape.num_heads, shape.num_kv_heads, shape.head_dim
        self.eps = shape.rms_norm_eps
        layer = head.midlayer if isinstance(head, Eagle3Head) else head.layers[0]
        assert isinstance(layer, DraftDecoderLayer)
        attention, mlp = layer.self_attn, layer.mlp
        with torch.no_grad():
            self.qkv = torch.cat([attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight])
            biases = (attention.q_proj.bias, attention.k_proj.bias, attention.v_proj.bias)
            present: list[torch.Tensor] = [b for b in biases if b is not None]
            self.qkv_bias = torch.cat(present) if len(present) == 3 else None
            self.gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])  # [2I, D]
        self.o, self.down = attention.o_proj.weight, mlp.down_proj.weight
        self.post_norm = layer.post_attention_layernorm.weight
        self.input_norm = layer.input_layernorm.weight if layer.input_layernorm is not None else None
        self.hidden_norm = layer.hidden_norm.weight if layer.hidden_norm is not None else None
        self.fc, self.fc_bias = head.fc.weight, head.fc.bias
        self.dtype = self.fc.dtype
        rotary = attention.rotary
        self._inv_freq = rotary.inv_freq.float()  # [Dh / 2]
        self._rope_scale = float(getattr(rotary, "attention_scaling", 1.0))
        self.cos_table = torch.empty(0, self.head_dim, device=self.fc.device, dtype=self.dtype)  # [P, Dh]
        self.sin_table = self.cos_table

    def position_tables(self, length: int) -> None:
        """cos and sin for rotary positions [0, length), computed as ``transformers`` does, in the head's dtype
        (call before capturing a forward in a CUDA graph: the tables grow here, never inside a forward)."""
        if self.cos_table.shape[0] < length:
            self.cos_table, self.sin_table = reference.rotary_tables(
                self._inv_freq, self._rope_scale, length, self.dtype
            )

    def forward(
        self,
        tokens: torch.Tensor,  # [B, S] x_{t+1}
        features: torch.Tensor,  # [B, S, F] the target's features, or [B, S, D] the head's own outputs
        positions: torch.Tensor,  # [B, S] rotary positions (< the tables' length)
        mask: torch.Tensor,  # [B, S, C] bool: which cache columns each new entry attends to
        cache: HeadCache,
        columns: torch.Tensor,  # [S] where the new entries' keys and values go
    ) -> torch.Tensor:  # [B, S, D] the layer's output (EAGLE-1/2: estimates of the next features)
        batch, seq = tokens.shape
        embedding = _as(F.embedding(tokens.reshape(-1), self.head.target.embedding), self.dtype)  # [T, D]
        hidden = _as(features.reshape(batch * seq, -1), self.dtype)  # [T, F]
        if self.version == 1:
            residual = _linear(torch.cat([embedding, hidden], dim=-1), self.fc, self.fc_bias)  # [T, D]
            attention_in = residual  # EAGLE-1's layer has no input norm: fc's output is already the fused feature
        else:
            residual = hidden if hidden.shape[-1] == self.o.shape[0] else _linear(hidden, self.fc)  # [T, D]
            assert self.input_norm is not None and self.hidden_norm is not None
            attention_in = torch.cat(
                [
                    reference.rms_norm(embedding, self.input_norm, self.eps),
                    reference.rms_norm(residual, self.hidden_norm, self.eps),
                ],
                dim=-1,
            )  # [T, 2D]
        qkv = _linear(attention_in, self.qkv, self.qkv_bias)  # [T, (H + 2 Hkv) Dh]
        q = reference.rope_and_store(
            qkv.view(batch, seq, -1), positions, self.cos_table, self.sin_table, cache.keys, cache.values, columns,
            self.num_heads, self.num_kv_heads,
        )  # [B, S, H, Dh]  # fmt: skip
        attended = F.scaled_dot_product_attention(
            q.transpose(1, 2), cache.keys, cache.values, attn_mask=mask[:, None],
            enable_gqa=self.num_kv_heads != self.num_heads,
        )  # [B, H, S, Dh]  # fmt: skip
        attended = attended.transpose(1, 2).reshape(batch * seq, -1)  # [T, H Dh]
        residual = residual + _linear(attended, self.o)  # [T, D]
        normed = reference.rms_norm(residual, self.post_norm, self.eps)
        act = reference.silu_mul(_linear(normed, self.gate_up))  # [T, I]
        return (residual + _linear(act, self.down)).view(batch, seq, -1)  # [B, S, D]

    def log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., D] -> [..., V] float32 log-probabilities over the target's vocabulary (EAGLE-3: -inf outside the
        draft vocabulary)."""
        return torch.log_softmax(_as(self.head.logits(hidden), torch.float32), -1)


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return cpu_linear.linear(x, weight, bias, transposed=True)


def _as(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x.to(dtype)`` without an operation where x has that dtype already (each costs time on a CPU)."""
    return x if x.dtype == dtype else x.to(dtype)
