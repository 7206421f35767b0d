"""Token trees: the shape of a tree proposal and the tensors a tree forward and a tree verification need.

A tree proposal drafts ``W`` nodes below the root (the last committed token). ``parents`` [W] int64 gives each
node's parent among the drafted nodes, ``-1`` for a child of the root; nodes are in topological order (a parent's
index is below its children's), so a chain is ``parents = [-1, 0, 1, ..., W - 2]``. A forward over the tree reads
``S = W + 1`` tokens, the root first: index ``s`` of that block is the root for ``s = 0`` and drafted node ``s - 1``
otherwise ("block indices"). Each token sees the committed cache, its ancestors and itself, and sits at position
``root position + depth``.

The tree's shape lives on the host (a drafter builds it from a static plan), so the engine checks it and derives
these tensors without reading anything back from the device; :func:`tree_attention` moves them to the device.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from specdec.errors import ConfigError


@dataclass(frozen=True)
class TreeAttention:
    """What a decoder needs to run a tree forward over ``S = W + 1`` new tokens (root first)."""

    visible: torch.Tensor  # [S, S] bool: visible[i, j] = block token j is token i or one of its ancestors
    depths: torch.Tensor  # [S] int64: depth of each block token (root 0); its position is root position + depth

    @property
    def size(self) -> int:
        return int(self.visible.shape[0])


def chain_parents(width: int) -> torch.Tensor:
    """The parents of a chain of ``width`` nodes: [-1, 0, 1, ..., width - 2]. -> [W] int64 (host)."""
    return torch.arange(-1, width - 1, dtype=torch.long)


def check_parents(parents: torch.Tensor, width: int) -> None:
    """Raise unless ``parents`` [W] describes a tree of ``width`` nodes in topological order."""
    if parents.device.type != "cpu" or parents.dtype != torch.long or tuple(parents.shape) != (width,):
        raise ValueError(
            f"tree parents must be a host int64 tensor of shape ({width},), got {parents.dtype} {tuple(parents.shape)} "
            f"on {parents.device}"
        )
    index = torch.arange(width)
    if bool(((parents < -1) | (parents >= index)).any()):
        raise ValueError(f"tree parents {parents.tolist()} are not in topological order (-1 <= parent < index)")


def _shared_for_host_trees(compute: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``compute(parents)``, computed once per host tree and shared by every later call for the same parents (a
    step asks for a tree's tensors several times): callers must not modify the result. Device parents are computed
    each time."""
    cached = functools.lru_cache(maxsize=256)(lambda key: compute(torch.tensor(key, dtype=torch.long)))

    @functools.wraps(compute)
    def shared(parents: torch.Tensor) -> torch.Tensor:
        return cached(tuple(parents.tolist())) if parents.device.type == "cpu" else compute(parents)

    return shared


@_shared_for_host_trees
def ancestors(parents: torch.Tensor) -> torch.Tensor:
    """Ancestor-or-self matrix over the block (root first). parents: [W] -> [S, S] bool, S = W + 1 (shared: do not
    modify it).

    Entry [i, j]: block token j lies on the path from the root to block token i (both ends included).
    """
    width = parents.shape[0]
    size = width + 1
    step = torch.eye(size, dtype=torch.bool, device=parents.device)  # [S, S]: self, then one level up per product
    step[torch.arange(1, size, device=parents.device), parents + 1] = True
    closure = step.clone()
    for _ in range(max(1, (size - 1).bit_length())):  # repeated squaring: paths of up to 2^r edges
        closure = (closure.float() @ closure.float()) > 0
    return closure


def depths(parents: torch.Tensor) -> torch.Tensor:
    """Depth of each block token (root 0, a child of the root 1). parents: [W] -> [S] int64."""
    return ancestors(parents).sum(dim=1) - 1


def tree_attention(parents: torch.Tensor, device: torch.device) -> TreeAttention:
    """The visibility mask and depths of a tree forward, on ``device``. parents: [W] (host)."""
    visible = ancestors(parents)
    return TreeAttention(visible=visible.to(device), depths=(visible.sum(dim=1) - 1).to(device))


@_shared_for_host_trees
def path_table(parents: torch.Tensor) -> torch.Tensor:
    """The root-to-node path of every block token, as drafted-node indices padded with -1 (shared: do not modify it).

    parents: [W] -> [S, W] int64: row s holds the drafted nodes from the root (excluded) down to block token s
    (included) in depth order, then -1. Row 0 (the root) is all -1. Ancestors have smaller indices than their
    descendants, so a path in index order is a path in depth order.
    """
    visible = ancestors(parents)[:, 1:]  # [S, W]
    width = parents.shape[0]
    index = torch.arange(width, device=parents.device).expand_as(visible)
    ordered = torch.where(visible, index, width).sort(dim=1).values  # [S, W]: the path's nodes first
    return torch.where(ordered < width, ordered, -1)


def path_of(parents: list[int], node: int) -> list[int]:
    """The drafted nodes from the root down to ``node`` (a drafted-node index, -1 for the root), on the host."""
    path: list[int] = []
    while node >= 0:
        path.append(node)
        node = parents[node]
    return path[::-1]


def require_batch_of_one(batch_size: int, drafter_name: str) -> None:
    """Trees are verified for one sequence at a time: each row would keep a different path."""
    if batch_size != 1:
        raise ConfigError(
            f"drafter {drafter_name!r} proposes token trees, which specdec verifies for a batch of one sequence "
            f"only (got {batch_size} rows: each row would keep a different path); run the prompts one at a time "
            "or draft chains (branching=1)"
        )
