"""Tree builders of the Medusa and EAGLE drafters, standalone (the engine's tree verification is not needed)."""

from __future__ import annotations

import pytest
import torch

from specdec.drafters.tree import (
    DEFAULT_MEDUSA_PATHS,
    best_subtree,
    fill_static_tree,
    static_tree,
)
from specdec.tree import depths


def test_static_tree_orders_paths_topologically_and_fills_each_rows_tokens():
    tree = static_tree([(0, 1), (1,), (0,), (0, 0), (0, 1, 0)])
    # sorted by depth: (0,), (1,), (0,0), (0,1), (0,1,0)
    assert tree.parents.tolist() == [-1, -1, 0, 0, 3]
    assert tree.depths.tolist() == [0, 0, 1, 1, 2] and tree.ranks.tolist() == [0, 1, 0, 1, 0]
    top_ids = torch.tensor([[[10, 11], [20, 21], [30, 31]], [[40, 41], [50, 51], [60, 61]]])  # [B=2, M=3, K=2]
    assert fill_static_tree(tree, top_ids).tolist() == [[10, 11, 20, 21, 30], [40, 41, 50, 51, 60]]


def test_static_tree_refuses_a_path_without_its_parent():
    with pytest.raises(ValueError, match=r"no parent path \[1\]"):
        static_tree([(0,), (1, 0)])


def test_default_medusa_tree_is_a_tree_for_three_heads():
    tree = static_tree(DEFAULT_MEDUSA_PATHS)
    assert tree.width == 16 and tree.max_depth == 3
    assert torch.equal(depths(tree.parents)[1:] - 1, tree.depths)  # depths from 0 at the root's children


def test_best_subtree_keeps_the_best_scores_as_a_tree():
    # candidates: 0,1,2 children of the root; 3,4 children of 0; 5 child of 3; 6 child of 1
    parents = torch.tensor([-1, -1, -1, 0, 0, 3, 1])
    depth = torch.tensor([1, 1, 1, 2, 2, 3, 2])
    scores = torch.tensor([-0.1, -1.0, -3.0, -0.3, -2.0, -0.5, -1.2])
    kept, new_parents = best_subtree(scores, parents, depth, budget=4)
    assert kept.tolist() == [0, 1, 3, 5]  # scores -0.1, -1.0, -0.3, -0.5
    assert new_parents.tolist() == [-1, -1, 0, 2]
    kept, new_parents = best_subtree(scores, parents, depth, budget=20)  # more room than candidates
    assert kept.tolist() == list(range(7)) and new_parents.tolist() == [-1, -1, -1, 0, 0, 3, 1]


def test_best_subtree_breaks_ties_towards_the_ancestor():
    # a child drafted with probability 1 scores exactly as its parent; a sure chain 0 -> 1 -> 2 and a sibling 3
    parents = torch.tensor([-1, 0, 1, -1])
    depth = torch.tensor([1, 2, 3, 1])
    for scores in (torch.tensor([-0.5, -0.5, -0.5, -0.5]), torch.tensor([-0.5, -0.5, -0.5, -0.7])):
        for budget in (1, 2, 3):
            kept, _ = best_subtree(scores, parents, depth, budget)
            for node in kept.tolist():  # every kept node's parent is kept: a tree
                assert parents[node] < 0 or int(parents[node]) in kept.tolist(), (scores, budget)
    kept, _ = best_subtree(torch.tensor([-0.5, -0.5, -0.5, -0.7]), parents, depth, budget=3)
    assert kept.tolist() == [0, 1, 2]
