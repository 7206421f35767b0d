"""A lean GPT-2 forward over a static KV cache, for the fast path.

It reads the weights of a loaded ``transformers`` GPT-2 and computes the same function through the kernel set:
each matrix product with the layer norm before it and the bias, GELU or residual add after it
(``Kernels.fused_linear``; the q/k/v product also writes k and v into the cache: ``Kernels.linear_rope_store``
without rotary tables) and the shared attention kernel, so that a whole forward can be captured in a CUDA graph.
With the Triton kernels a decoding step's row takes one kernel per product (five per layer with the attention),
which reads [out, in] weights: the layers' ``Conv1D`` weights ([in, out]) are copied once into that layout (the
layers' size again: 170 MB for the 124M GPT-2 in bfloat16), and more rows multiply the copies with cuBLAS.
Elsewhere nothing is copied and the same functions run as transformers computes them (``F.layer_norm``, ``addmm``
over the [in, out] weights, ``F.gelu``). Shapes: B batch, S new tokens, T = B * S, D hidden, H heads, Dh head
size, M cache length, V vocabulary, L layers, P learned positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F
from transformers import PreTrainedModel

from specdec.kernels import Kernels

GELU_APPROXIMATION = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh", "gelu": "none"}


def unsupported_reason(model: PreTrainedModel) -> str | None:
    """Why the GPT-2 fast path cannot run this GPT-2 model (None if it can)."""
    config = model.config
    activation = getattr(config, "activation_function", "gelu_new")
    if activation not in GELU_APPROXIMATION:
        return f"activation {activation!r} is not one of {', '.join(GELU_APPROXIMATION)}"
    if not getattr(config, "scale_attn_weights", True) or getattr(config, "scale_attn_by_inverse_layer_idx", False):
        return "only the standard 1/sqrt(head size) attention scale is supported"
    if getattr(config, "add_cross_attention", False):
        return "cross-attention is not supported"
    head_dim = config.n_embd // config.n_head
    if head_dim & (head_dim - 1):
        return f"head size {head_dim} is not a power of two"
    return None


@dataclass(frozen=True)
class GPT2LayerWeights:
    ln_1: tuple[torch.Tensor, torch.Tensor]  # weight, bias: [D]
    qkv: torch.Tensor  # [D, 3 D] (Conv1D layout: in, out), or [3 D, D] where FastGPT2.transposed is False
    qkv_bias: torch.Tensor  # [3 D]
    o: torch.Tensor  # [D, D]
    o_bias: torch.Tensor  # [D]
    ln_2: tuple[torch.Tensor, torch.Tensor]
    fc: torch.Tensor  # [D, I] (or [I, D])
    fc_bias: torch.Tensor  # [I]
    proj: torch.Tensor  # [I, D] (or [D, I])
    proj_bias: torch.Tensor  # [D]


@dataclass(frozen=True)
class GPT2Stack:
    """A GPT-2's layer weights stacked over its L layers, products in [out, in] (the fused GEMV's layout): the
    layers' ``GPT2LayerWeights`` are views of it, and the persistent step reads it whole."""

    ln_1: tuple[torch.Tensor, torch.Tensor]  # weight, bias: [L, D]
    qkv: torch.Tensor  # [L, 3 D, D]
    qkv_bias: torch.Tensor  # [L, 3 D]
    o: torch.Tensor  # [L, D, D]
    o_bias: torch.Tensor  # [L, D]
    ln_2: tuple[torch.Tensor, torch.Tensor]  # [L, D]
    fc: torch.Tensor  # [L, I, D]
    fc_bias: torch.Tensor  # [L, I]
    proj: torch.Tensor  # [L, D, I]
    proj_bias: torch.Tensor  # [L, D]


def _stack(blocks: list[Any]) -> GPT2Stack:
    """The blocks' weights stacked, each product's Conv1D weight [in, out] copied once to [out, in]."""

    def stacked(get: Any, transpose: bool = False) -> torch.Tensor:
        return torch.stack([get(b).detach().t() if transpose else get(b).detach() for b in blocks]).contiguous()

    return GPT2Stack(
        ln_1=(stacked(lambda b: b.ln_1.weight), stacked(lambda b: b.ln_1.bias)),
        qkv=stacked(lambda b: b.attn.c_attn.weight, transpose=True),
        qkv_bias=stacked(lambda b: b.attn.c_attn.bias),
        o=stacked(lambda b: b.attn.c_proj.weight, transpose=True),
        o_bias=stacked(lambda b: b.attn.c_proj.bias),
        ln_2=(stacked(lambda b: b.ln_2.weight), stacked(lambda b: b.ln_2.bias)),
        fc=stacked(lambda b: b.mlp.c_fc.weight, transpose=True),
        fc_bias=stacked(lambda b: b.mlp.c_fc.bias),
        proj=stacked(lambda b: b.mlp.c_proj.weight, transpose=True),
        proj_bias=stacked(lambda b: b.mlp.c_proj.bias),
    )


class FastGPT2:
    """The GPT-2 forward. ``forward`` writes the new tokens' keys and values into the cache."""

    family = "gpt2"

    def __init__(self, model: PreTrainedModel, kernels: Kernels) -> None:
        config = model.config
        self.kernels = kernels
        self.num_heads = self.num_kv_heads = config.n_head
        self.hidden = config.n_embd
        self.head_dim = config.n_embd // config.n_head
        self.eps = config.layer_norm_epsilon
        self.scale = self.head_dim**-0.5
        self.gelu = GELU_APPROXIMATION[getattr(config, "activation_function", "gelu_new")]
        self.max_positions: int | None = config.n_positions
        self.dtype = model.dtype
        self.device = model.device
        body: Any = model.transformer  # GPT2Model
        self.embed = body.wte.weight  # [V, D]
        self.position_embed = body.wpe.weight  # [P, D]
        self.final_norm = (body.ln_f.weight, body.ln_f.bias)
        self.lm_head: torch.Tensor = model.get_output_embeddings().weight  # [V, D] (tied to the embedding)
        # The Triton set's one-row product reads [out, in] weights, copied once into a stack of every layer's (the
        # layers' weights are views of it); elsewhere addmm reads Conv1D's [in, out] as is.
        self.transposed = kernels.name != "triton"
        blocks = list(body.h)
        self.stack: GPT2Stack | None = None
        if self.transposed:
            self.layers = [
                GPT2LayerWeights(
                    ln_1=(block.ln_1.weight, block.ln_1.bias),
                    qkv=block.attn.c_attn.weight,
                    qkv_bias=block.attn.c_attn.bias,
                    o=block.attn.c_proj.weight,
                    o_bias=block.attn.c_proj.bias,
                    ln_2=(block.ln_2.weight, block.ln_2.bias),
                    fc=block.mlp.c_fc.weight,
                    fc_bias=block.mlp.c_fc.bias,
                    proj=block.mlp.c_proj.weight,
                    proj_bias=block.mlp.c_proj.bias,
                )
                for block in blocks
            ]
        else:
            s = self.stack = _stack(blocks)
            self.layers = [
                GPT2LayerWeights(
                    ln_1=(s.ln_1[0][i], s.ln_1[1][i]),
                    qkv=s.qkv[i],
                    qkv_bias=s.qkv_bias[i],
                    o=s.o[i],
                    o_bias=s.o_bias[i],
                    ln_2=(s.ln_2[0][i], s.ln_2[1][i]),
                    fc=s.fc[i],
                    fc_bias=s.fc_bias[i],
                    proj=s.proj[i],
                    proj_bias=s.proj_bias[i],
                )
                for i in range(len(blocks))
            ]
        self.persistent: Any = None  # a PersistentGPT2 for one-token steps (SPECDEC_PERSISTENT=1)
        if self.stack is not None:
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
        return self.persistent(input_ids, length, positions, key_valid, cache, self.num_layers)

    def position_tables(self, length: int) -> None:
        """Nothing to precompute: the position embeddings are a table of the model's own."""

    def new_cache(self, batch_size: int, max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of every layer: two [L, B, H, M, Dh] tensors."""
        shape = (self.num_layers, batch_size, self.num_heads, max_length, self.head_dim)
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
        """input_ids: [B, S]; columns: [S] cache columns of the new tokens; positions: [B, S] position ids;
        key_valid: [B, M] bool; tree: [S, S] bool visibility among the new tokens (a token tree) or None (causal).
        Returns logits [B, S, V] (or [B, 1, V] with ``last_only``) in the model dtype, and with ``feature_layers``
        the features [B, S, F] (see ``FeatureRequest``: () is the final normed state) else None. ``logits_at`` [1]:
        the one new token whose logits are returned ([B, 1, V]; a padded prefill's last token), instead."""
        k = self.kernels
        batch, seq = input_ids.shape
        cache_k, cache_v = cache
        hidden = (F.embedding(input_ids, self.embed) + F.embedding(positions, self.position_embed)).view(
            batch * seq, -1
        )
        taken: dict[int, torch.Tensor] = {}
        for index, layer in enumerate(self.layers):  # hidden: [T, D], the residual stream
            q = k.linear_rope_store(
                hidden, layer.qkv, layer.qkv_bias, layer.ln_1[0], self.eps, positions, None, None,
                cache_k[index], cache_v[index], columns, self.num_heads, self.num_kv_heads,
                norm_bias=layer.ln_1[1], transposed=self.transposed,
            )  # [B, S, H, Dh]  # fmt: skip
            attended = k.decode_attention(q, cache_k[index], cache_v[index], columns, key_valid, self.scale, tree)
            hidden = k.fused_linear(
                attended.reshape(batch * seq, -1), layer.o, layer.o_bias, residual=hidden, transposed=self.transposed
            )
            inner = k.fused_linear(
                hidden, layer.fc, layer.fc_bias, layer.ln_2[0], self.eps, norm_bias=layer.ln_2[1], gelu=self.gelu,
                transposed=self.transposed,
            )  # [T, I]  # fmt: skip
            hidden = k.fused_linear(inner, layer.proj, layer.proj_bias, residual=hidden, transposed=self.transposed)
            if feature_layers and index in feature_layers:
                taken[index] = hidden  # [T, D]: the layer's output, the residual stream
        normed = F.layer_norm(hidden, (self.hidden,), *self.final_norm, self.eps).view(batch, seq, -1)
        features = None
        if feature_layers is not None:
            parts = [taken[i] for i in feature_layers] if feature_layers else [normed]
            features = torch.cat([part.view(batch, seq, -1) for part in parts], dim=-1)  # [B, S, F]
        if logits_at is not None:
            normed = normed.index_select(1, logits_at)
        elif last_only:
            normed = normed[:, -1:]
        return F.linear(normed, self.lm_head), features  # [B, S or 1, V]
