"""Medusa drafting: the heads read the target's feature of the root's predecessor and fill a static tree.

With committed tokens ``x_0..x_{n-1}`` (the last one the target's own bonus token, predicted from ``f_{n-2}``),
Medusa head ``i`` reads the same ``f_{n-2}`` and scores token ``n + i``. A static tree of top-k choices per head
(``tree``: ``"default"``, ``"chain"``, or explicit paths like ``"0;1;0,0;0,1"``) becomes the proposal: its node
``(c_0, .., c_d)`` is the ``c_d``-th best token of head ``d``. The tokens are chosen, not sampled, so the proposal
carries no probabilities (verified as deterministic drafts).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from specdec.config import GenerationConfig
from specdec.drafters.base import DraftProposal, empty_proposal
from specdec.drafters.features import FeatureBuffer, FeatureRequest
from specdec.drafters.tree import DEFAULT_MEDUSA_PATHS, fill_static_tree, static_tree
from specdec.errors import ConfigError
from specdec.heads.checkpoints import load_heads
from specdec.heads.medusa import MedusaHeads
from specdec.loading import LoadedModel
from specdec.sequence import SequenceBatch
from specdec.tree import chain_parents


@dataclass(frozen=True)
class MedusaOptions:
    heads: str = "zoo:tiny-code-medusa"  # a zoo name or a folder in Medusa's layout
    tree: str = "default"  # "default", "chain" or paths of ranks: "0;1;0,0"


def parse_tree(text: str, num_heads: int) -> tuple[tuple[int, ...], ...]:
    if text == "default":
        return tuple(p for p in DEFAULT_MEDUSA_PATHS if len(p) <= num_heads)
    if text == "chain":
        return tuple((0,) * d for d in range(1, num_heads + 1))
    try:
        paths = tuple(tuple(int(r) for r in part.split(",")) for part in text.split(";") if part.strip())
    except ValueError:
        raise ConfigError(f"medusa tree {text!r}: expected default, chain or paths like 0;1;0,0") from None
    if any(len(p) > num_heads for p in paths):
        raise ConfigError(f"medusa tree {text!r} is deeper than the {num_heads} heads")
    return paths


def proposal(tokens: torch.Tensor, probs: torch.Tensor | None, parents: torch.Tensor | None) -> DraftProposal:
    """A chain (``parents`` None: verified as a chain, batches and every policy allowed) or a tree (host parents)."""
    return DraftProposal(tokens=tokens, probs=probs, parents=parents.cpu() if parents is not None else None)


class MedusaDrafter:
    method = "medusa"

    def __init__(self, options: MedusaOptions, target: LoadedModel) -> None:
        heads = load_heads(options.heads, target)
        if not isinstance(heads, MedusaHeads):
            raise ConfigError(f"{options.heads!r} holds {type(heads).__name__}, not Medusa heads")
        self.heads = heads
        self.tree = static_tree(parse_tree(options.tree, heads.config.num_heads))
        self.chain = torch.equal(self.tree.parents, chain_parents(self.tree.width))  # verified as a chain
        self.name = f"medusa({options.heads}, {self.tree.width} nodes)"
        self.features = FeatureRequest(layers=())
        self.buffer = FeatureBuffer()
        self._forwards = 0
        self._max_length = 0

    @property
    def forwards(self) -> int:
        return self._forwards

    def max_width(self, k: int) -> int:
        """Nodes a proposal at K = ``k`` holds: the tree's nodes at most ``k`` deep."""
        return int((self.tree.depths < k).sum())

    def start(self, batch: SequenceBatch) -> None:
        self.buffer.reset()
        self._max_length = batch.max_length

    def read_features(self, features: torch.Tensor, length: int) -> None:
        self.buffer.read(features, length, self._max_length)

    @torch.no_grad()
    def propose(
        self, batch: SequenceBatch, k: int, generation: GenerationConfig, generator: torch.Generator | None
    ) -> DraftProposal:
        root = batch.length - 2  # the feature that predicted the newest committed token
        if root < 0 or self.buffer.known <= root or self.buffer.features is None or k <= 0:
            return empty_proposal(batch)
        width = self.max_width(k)  # the nodes at most k deep: a topological prefix (nodes are ordered by depth)
        feature = self.buffer.features[:, root]  # [B, D]
        logits = self.heads(feature)  # [M, B, V]
        self._forwards += 1
        top_ids = logits.topk(self.tree.max_rank, dim=-1).indices.transpose(0, 1)  # [B, M, K]
        tokens = fill_static_tree(self.tree, top_ids)[:, :width]  # [B, W]
        return proposal(tokens, None, None if self.chain else self.tree.parents[:width])

    def observe(self, batch: SequenceBatch, num_accepted: int) -> None:
        """Nothing to roll back: the next proposal reads the features the engine hands over."""
