"""EAGLE draft heads (Li et al. 2024, "EAGLE: Speculative Sampling Requires Rethinking Feature Uncertainty"; EAGLE-2
drafts a dynamic tree with the same head; EAGLE-3, Li et al. 2025, "Scaling up Inference Acceleration of Large
Language Models via Training-Time Test"). Layouts of SafeAILab/EAGLE.

Notation: ``f_t`` is the target's feature at position ``t`` (the state that predicts token ``t + 1``), ``x_t`` a
token, ``E`` the target's embedding.

- EAGLE-1/2 (:class:`EagleHead`): ``h = fc([E(x_{t+1}) ; f_t])`` (2D -> D, with bias by default), then one Llama
  decoder layer without ``input_layernorm``; its output ``g_t`` estimates ``f_{t+1}`` (the target's last hidden
  state after its final norm) and the target's own output layer scores token ``t + 2`` from it. Drafting deeper
  feeds ``g`` back in place of ``f``.
- EAGLE-3 (:class:`Eagle3Head`): ``f_t`` is the concatenation of three target layers' outputs (low, middle, high:
  the inputs of layers 2, L/2 and L-3, i.e. the outputs of 0-based layers 1, L/2-1 and L-4), fused by ``fc``
  (3D -> D, no bias). The midlayer's attention reads ``[input_layernorm(E(x_{t+1})) ; hidden_norm(h)]`` (2D); the
  head has its own final ``norm`` and an ``lm_head`` over a reduced draft vocabulary; draft id ``d`` is target id
  ``d + d2t[d]``, and ``t2d[v]`` says whether target id ``v`` is in the draft vocabulary. Drafting deeper feeds the
  midlayer's output (D wide) back, bypassing ``fc``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from specdec.heads.layer import CacheWrite, DraftDecoderLayer, KeyValues, LayerShape, RMSNorm
from specdec.heads.target import TargetParts
from specdec.kernels.cpu_linear import Linear


def eagle3_layers(num_layers: int) -> tuple[int, int, int]:
    """The 0-based target layers whose outputs EAGLE-3 fuses (low, middle, high)."""
    return (1, num_layers // 2 - 1, num_layers - 4)


@dataclass(frozen=True)
class EagleConfig:
    version: int  # 1 (EAGLE-1 and EAGLE-2 share a head) or 3
    layer: LayerShape
    vocab_size: int  # the target's vocabulary
    draft_vocab_size: int  # EAGLE-3's reduced vocabulary; = vocab_size for EAGLE-1/2
    target_hidden_size: int
    fc_bias: bool = True  # EAGLE-1/2: fc has a bias unless the checkpoint's config says "bias": false
    feature_layers: tuple[int, ...] = field(default=())  # () = the target's final normed state; EAGLE-3: three layers

    def __post_init__(self) -> None:
        if self.version not in (1, 3):
            raise ValueError(f"EAGLE version must be 1 (EAGLE-1/2) or 3, got {self.version}")

    def write(self, path: Path) -> None:
        record = asdict(self)
        record["layer"]["rope_scaling"] = dict(self.layer.rope_scaling)
        path.write_text(json.dumps({"head_type": "eagle", **record}, indent=1) + "\n")

    @classmethod
    def read(cls, record: dict) -> EagleConfig:
        layer = dict(record["layer"])
        layer["rope_scaling"] = tuple(sorted((layer.get("rope_scaling") or {}).items()))
        fields = {k: v for k, v in record.items() if k not in ("head_type", "layer")}
        fields["feature_layers"] = tuple(fields.get("feature_layers", ()))
        return cls(layer=LayerShape(**layer), **fields)


class EagleHead(nn.Module):
    """EAGLE-1/2: ``fc`` and ``layers.0`` (the published parameter names)."""

    def __init__(self, config: EagleConfig, target: TargetParts) -> None:
        super().__init__()
        _check_fit(config, target)
        d = config.layer.hidden_size
        self.config = config
        self.target = target
        self.fc = Linear(2 * d, d, bias=config.fc_bias)
        self.layers = nn.ModuleList([DraftDecoderLayer(config.layer, input_norm=False)])

    def forward(
        self,
        tokens: torch.Tensor,  # [B, S] x_{t+1}
        features: torch.Tensor,  # [B, S, D] f_t (the target's) or g_{t-1} (the head's own, deeper in a draft)
        position_ids: torch.Tensor,  # [B, S]
        past: KeyValues | None = None,
        mask: torch.Tensor | None = None,  # [S, L + S] or [B, S, L + S] bool ([B, S, C] with ``into``)
        into: CacheWrite | None = None,  # write into a preallocated cache instead of reading ``past``
    ) -> tuple[torch.Tensor, KeyValues]:  # g [B, S, D] (estimates f_{t+1}), new keys/values
        dtype = self.fc.weight.dtype
        embedding = F.embedding(tokens, self.target.embedding).to(dtype)  # [B, S, D]
        fused = self.fc(torch.cat([embedding, features.to(dtype)], dim=-1))  # [B, S, D]
        return self.layers[0](fused, position_ids, past, mask, into=into)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., D] -> [..., V] over the target's vocabulary (the target's output layer)."""
        return self.target.output(hidden)


class Eagle3Head(nn.Module):
    """EAGLE-3: ``fc``, ``midlayer``, ``norm``, ``lm_head``, buffers ``d2t`` and ``t2d`` (the published names)."""

    d2t: torch.Tensor
    t2d: torch.Tensor

    def __init__(self, config: EagleConfig, target: TargetParts) -> None:
        super().__init__()
        _check_fit(config, target)
        d = config.layer.hidden_size
        self.config = config
        self.target = target
        self.fc = Linear(len(config.feature_layers) * config.target_hidden_size, d, bias=False)
        self.midlayer = DraftDecoderLayer(config.layer, two_inputs=True)
        self.norm = RMSNorm(d, config.layer.rms_norm_eps)
        self.lm_head = Linear(d, config.draft_vocab_size, bias=False)
        self.register_buffer("d2t", torch.zeros(config.draft_vocab_size, dtype=torch.long))  # [Vd] target - draft id
        self.register_buffer("t2d", torch.zeros(config.vocab_size, dtype=torch.bool))  # [V] in the draft vocabulary?

    def forward(
        self,
        tokens: torch.Tensor,  # [B, S] x_{t+1} (target ids)
        features: torch.Tensor,  # [B, S, 3D_target] fused target layers, or [B, S, D] the head's own output
        position_ids: torch.Tensor,  # [B, S]
        past: KeyValues | None = None,
        mask: torch.Tensor | None = None,
        into: CacheWrite | None = None,
    ) -> tuple[torch.Tensor, KeyValues]:  # midlayer output [B, S, D], new keys/values
        dtype = self.fc.weight.dtype
        embedding = F.embedding(tokens, self.target.embedding).to(dtype)  # [B, S, D]
        hidden = features.to(dtype)
        if hidden.shape[-1] != self.config.layer.hidden_size:  # the target's fused layers, not the head's own state
            hidden = self.fc(hidden)  # [B, S, D]
        return self.midlayer(hidden, position_ids, past, mask, embedding=embedding, into=into)

    def draft_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., D] -> [..., Vd] over the draft vocabulary."""
        return self.lm_head(self.norm(hidden))

    def to_target_ids(self, draft_ids: torch.Tensor) -> torch.Tensor:
        """Draft vocabulary ids -> target ids (``d + d2t[d]``)."""
        return draft_ids + self.d2t[draft_ids]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., D] -> [..., V] over the target's vocabulary: draft scores at their target ids, -inf elsewhere."""
        draft = self.draft_logits(hidden)  # [..., Vd]
        full = draft.new_full((*draft.shape[:-1], self.config.vocab_size), float("-inf"))
        ids = self.to_target_ids(torch.arange(self.config.draft_vocab_size, device=draft.device))  # [Vd]
        return full.index_copy(-1, ids, draft)


def _check_fit(config: EagleConfig, target: TargetParts) -> None:
    if config.vocab_size != target.vocab_size or config.target_hidden_size != target.hidden_size:
        raise ValueError(
            f"EAGLE head for hidden {config.target_hidden_size} / vocab {config.vocab_size} does not fit a target of "
            f"hidden {target.hidden_size} / vocab {target.vocab_size}"
        )
    if config.version == 1 and config.layer.hidden_size != target.hidden_size:
        raise ValueError(
            f"an EAGLE-1/2 head must be as wide as its target ({target.hidden_size}), not {config.layer.hidden_size}"
        )
