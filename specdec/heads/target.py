"""What a draft head borrows from its target: the token embedding, the output layer, and the target's features.

Heads hold these as plain tensors (not parameters), so a head's own ``state_dict`` is exactly what it ships.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from specdec.kernels.cpu_linear import linear


@dataclass(frozen=True)
class TargetParts:
    embedding: torch.Tensor  # [V, D] the target's input embedding
    lm_head: torch.Tensor  # [V, D] the target's output layer (tied to ``embedding`` in tied models)
    num_layers: int  # decoder layers of the target

    @property
    def hidden_size(self) -> int:
        return int(self.lm_head.shape[1])

    @property
    def vocab_size(self) -> int:
        return int(self.lm_head.shape[0])

    def output(self, hidden: torch.Tensor) -> torch.Tensor:
        """The target's output layer: [..., D] -> [..., V] logits in ``hidden``'s dtype."""
        weight = self.lm_head
        if weight.dtype != hidden.dtype:  # a converted weight is a new tensor each call: no copy worth keeping
            return F.linear(hidden, weight.to(hidden.dtype))
        return linear(hidden, weight)

    @classmethod
    def of(cls, model: PreTrainedModel) -> TargetParts:
        embedding: torch.Tensor = model.get_input_embeddings().weight  # type: ignore[assignment]  # loosely typed
        output = model.get_output_embeddings()
        assert output is not None, f"{type(model).__name__} has no output layer"
        weight: torch.Tensor = output.weight
        return cls(embedding.detach(), weight.detach(), int(model.config.num_hidden_layers))


@torch.no_grad()
def target_features(
    model: PreTrainedModel,
    input_ids: torch.Tensor,  # [B, S]
    layers: tuple[int, ...] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced features and logits of ``model`` -> (features [B, S, F], logits [B, S, V]).

    ``layers=()``: the final hidden state after the final norm (F = D); otherwise the outputs of these 0-based
    decoder layers (residual stream, before any final norm) concatenated (F = len(layers) * D). Feature ``t`` is the
    state that predicts token ``t + 1``.
    """
    out = model(input_ids=input_ids, output_hidden_states=True)
    states = out.hidden_states  # L + 1 entries: embeddings, then each layer's output; the last one after the norm
    if not layers:
        return states[-1], out.logits
    num_layers = len(states) - 1
    for layer in layers:
        if not 0 <= layer < num_layers - 1:
            raise ValueError(f"feature layer {layer} out of range for a {num_layers}-layer target (the last is normed)")
    return torch.cat([states[layer + 1] for layer in layers], dim=-1), out.logits
