"""Draft trees as pure tensor functions: static Medusa trees, EAGLE-2 node selection, tree attention masks.

A tree of ``W`` drafted nodes is ``parents [W]`` (index of each node's parent, -1 for a child of the last committed
token) in topological order (a parent before its children). Trees are shared by every row of a batch and built in
*rank space*: a node is "the r-th most likely continuation of its parent", so each row fills the same shape with
its own tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

# Medusa's sparse trees put most nodes on the heads' top choices; this one fits 3 heads in 16 nodes.
DEFAULT_MEDUSA_PATHS: tuple[tuple[int, ...], ...] = (
    (0,), (1,), (2,), (3,),
    (0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0),
    (0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0), (0, 0, 2), (2, 0, 0),
)  # fmt: skip


@dataclass(frozen=True)
class StaticTree:
    """A fixed tree of top-k choices: node i takes the ``ranks[i]``-th choice of head ``depths[i]``."""

    parents: torch.Tensor  # [W] int64, -1 = child of the last committed token
    depths: torch.Tensor  # [W] int64, 0 for the root's children
    ranks: torch.Tensor  # [W] int64, which of its head's choices (0 = the most likely)

    @property
    def width(self) -> int:
        return int(self.parents.numel())

    @property
    def max_depth(self) -> int:
        return int(self.depths.max().item()) + 1 if self.width else 0

    @property
    def max_rank(self) -> int:
        return int(self.ranks.max().item()) + 1 if self.width else 0


def static_tree(paths: Sequence[Sequence[int]]) -> StaticTree:
    """Medusa-style paths (``(0, 1)``: the top choice of head 0, then the second choice of head 1) -> a tree in
    topological order (by depth, then as given). Every prefix of a path must be a path too."""
    unique = sorted({tuple(p) for p in paths}, key=lambda p: (len(p), [*p]))
    index = {p: i for i, p in enumerate(unique)}
    parents, depths, ranks = [], [], []
    for path in unique:
        if not path or min(path) < 0:
            raise ValueError(f"tree path {list(path)} must be a non-empty list of ranks >= 0")
        if len(path) > 1 and path[:-1] not in index:
            raise ValueError(f"tree path {list(path)} has no parent path {list(path[:-1])}")
        parents.append(index[path[:-1]] if len(path) > 1 else -1)
        depths.append(len(path) - 1)
        ranks.append(path[-1])
    return StaticTree(torch.tensor(parents), torch.tensor(depths), torch.tensor(ranks))


def fill_static_tree(tree: StaticTree, top_ids: torch.Tensor) -> torch.Tensor:
    """Per-row tokens of a static tree: top_ids [B, M, K] (each head's K best tokens, best first) -> [B, W]."""
    return top_ids[:, tree.depths, tree.ranks]


def best_subtree(
    scores: torch.Tensor, parents: torch.Tensor, depths: torch.Tensor, budget: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """EAGLE-2's reranking on the device: the ``budget`` candidates of highest score, as a tree.

    scores [N] float (cumulative draft log-probabilities: a child never scores above its parent), parents [N] int64
    (into the candidates, -1 = a child of the root; topological), depths [N] ->
    (kept [W] candidate indices in topological order, their parents [W] re-indexed into ``kept``), W = min(budget, N).
    A tie between a node and its descendant is broken towards the shallower one, so the kept set holds every kept
    node's ancestors. Device work only (no host reads): it can run inside a CUDA graph.
    """
    count = min(budget, scores.numel())
    # float64, so that the depth term still separates equal scores (-inf scores, never drafted, sort last)
    key = scores.double().clamp_min(-1e6) - depths.double() * 1e-6
    kept = torch.sort(torch.topk(key, count).indices).values  # [W]
    position = torch.full_like(parents, -1)
    position[kept] = torch.arange(count, device=parents.device)
    parent = parents[kept]  # [W]
    return kept, torch.where(parent >= 0, position[parent.clamp_min(0)], parent)
