"""Medusa heads (Cai et al. 2024, "Medusa: Simple LLM Inference Acceleration Framework with Multiple Decoding
Heads"; layout of FasterDecoding/Medusa).

The target's own output layer predicts token ``t + 1`` from its last hidden state ``h_t`` (after the final norm).
Medusa head ``i`` (0-based) predicts token ``t + i + 2`` from the same ``h_t``: ``num_layers`` residual blocks
``x + SiLU(W x + b)`` then a projection to the vocabulary, either its own (as published) or the target's output
layer (``shared_lm_head``, which keeps a head set small).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from specdec.heads.target import TargetParts
from specdec.kernels.cpu_linear import Linear


@dataclass(frozen=True)
class MedusaConfig:
    num_heads: int  # M
    num_layers: int  # residual blocks per head
    hidden_size: int  # D, the target's
    vocab_size: int  # V, the target's
    shared_lm_head: bool = False  # True: every head ends in the target's output layer

    def write(self, path: Path) -> None:
        path.write_text(json.dumps({"head_type": "medusa", **asdict(self)}, indent=1) + "\n")


class ResBlock(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.linear = Linear(hidden, hidden)
        nn.init.zeros_(self.linear.weight)  # as Medusa; zeroing the bias too makes a new head start as the
        nn.init.zeros_(self.linear.bias)  # target's own head (x + SiLU(0) = x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., D] -> [..., D]
        return x + F.silu(self.linear(x))


class MedusaHead(nn.Module):
    blocks: nn.Sequential
    lm_head: nn.Linear | None

    def __init__(self, config: MedusaConfig) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(ResBlock(config.hidden_size) for _ in range(config.num_layers)))
        self.lm_head = None if config.shared_lm_head else Linear(config.hidden_size, config.vocab_size, bias=False)


class MedusaHeads(nn.Module):
    def __init__(self, config: MedusaConfig, target: TargetParts) -> None:
        super().__init__()
        if (target.hidden_size, target.vocab_size) != (config.hidden_size, config.vocab_size):
            raise ValueError(
                f"medusa heads of hidden {config.hidden_size} / vocab {config.vocab_size} do not fit a target of "
                f"hidden {target.hidden_size} / vocab {target.vocab_size}"
            )
        self.config = config
        self.target = target
        self.heads = nn.ModuleList(MedusaHead(config) for _ in range(config.num_heads))

    def _heads(self) -> list[MedusaHead]:
        return [cast(MedusaHead, head) for head in self.heads]

    def hidden(self, features: torch.Tensor) -> torch.Tensor:
        """[..., D] target features -> [M, ..., D] each head's state before its vocabulary projection."""
        return torch.stack([head.blocks(features) for head in self._heads()])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """[..., D] target features (after the final norm) -> [M, ..., V] logits; head i scores token t + i + 2."""
        logits = []
        for head in self._heads():
            h = head.blocks(features)  # [..., D]
            logits.append(self.target.output(h) if head.lm_head is None else head.lm_head(h))
        return torch.stack(logits)
