"""Token trees through both decoders: the tree mask, tree positions, KV compaction and the target's features."""

from __future__ import annotations

import pytest
import torch
from tiny_models import loaded, make_model

from specdec.decoder import HFDecoder
from specdec.drafters.base import FeatureRequest
from specdec.fast.decoder import FastDecoder
from specdec.tree import (
    ancestors,
    chain_parents,
    check_parents,
    depths,
    path_of,
    path_table,
    tree_attention,
)

FAMILIES = ("llama", "qwen2", "gpt2")
DECODERS = {"generic": HFDecoder, "fast": FastDecoder}
#            node: 0   1  2  3  4  5  6
PARENTS = torch.tensor([-1, -1, 0, 0, 2, 1, -1])  # three children of the root; node 4 at depth 3


def test_tree_helpers_on_a_small_tree():
    check_parents(PARENTS, 7)
    assert depths(PARENTS).tolist() == [0, 1, 1, 2, 2, 3, 2, 1]
    visible = ancestors(PARENTS)  # block indices: root 0, node i at i + 1
    assert visible[5].nonzero().flatten().tolist() == [0, 1, 3, 5]  # node 4: root, node 0, node 2, itself
    assert visible[:, 0].all() and visible.diagonal().all()
    assert not visible[2, 1]  # node 1 does not see its sibling node 0
    table = path_table(PARENTS)
    assert table[5].tolist() == [0, 2, 4, -1, -1, -1, -1]
    assert table[0].tolist() == [-1] * 7
    assert path_of(PARENTS.tolist(), 4) == [0, 2, 4] and path_of(PARENTS.tolist(), -1) == []
    chain = ancestors(chain_parents(5))
    assert torch.equal(chain, torch.ones(6, 6, dtype=torch.bool).tril())
    with pytest.raises(ValueError, match="topological"):
        check_parents(torch.tensor([-1, 2, 0]), 3)


def _plain_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0, -1].float()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", list(DECODERS))
def test_tree_forward_scores_every_node_as_its_own_path(family, kind):
    model = make_model(family, seed=11)
    decoder = DECODERS[kind](loaded(model, "m"))
    prompt = [5, 17, 99, 240, 31, 8, 44]
    node_tokens = torch.randint(3, 300, (1, 7), generator=torch.Generator().manual_seed(0))
    decoder.prepare(torch.zeros(1, dtype=torch.long), None, 32)
    decoder.forward(torch.tensor([prompt[:-1]]), last_only=True)
    block = torch.cat([torch.tensor([[prompt[-1]]]), node_tokens], dim=1)  # [1, 8]: root first
    logits = decoder.forward(block, tree=tree_attention(PARENTS, decoder.device))  # [1, 8, V]
    for s in range(8):
        path = [int(node_tokens[0, i]) for i in path_of(PARENTS.tolist(), s - 1)]
        torch.testing.assert_close(logits[0, s], _plain_logits(model, prompt + path), rtol=1e-4, atol=1e-4)

    # keep node 4's path (nodes 0, 2, 4), compact, roll back, go on: as if the path had been decoded plainly
    start = len(prompt)
    decoder.keep_path(start, torch.tensor([start + 0, start + 2, start + 4]))
    decoder.rollback(start + 3)
    path = [int(node_tokens[0, i]) for i in (0, 2, 4)]
    follow = decoder.forward(torch.tensor([[9, 12]]))
    for j in range(2):
        expected = _plain_logits(model, prompt + path + [9, 12][: j + 1])
        torch.testing.assert_close(follow[0, j], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", list(DECODERS))
def test_tree_forward_respects_left_padding(family, kind):
    model = make_model(family, seed=12)
    decoder = DECODERS[kind](loaded(model, "m"))
    pads = torch.tensor([0, 3])
    mask = (torch.arange(24)[None, :] >= pads[:, None]).long()
    ids = torch.randint(3, 300, (2, 8), generator=torch.Generator().manual_seed(1))
    nodes = torch.randint(3, 300, (2, 7), generator=torch.Generator().manual_seed(2))
    decoder.prepare(pads, None, 40)  # a longer run first: its cache is reused, longer than this run's mask
    decoder.prepare(pads, mask, 24)
    decoder.forward(ids[:, :7], last_only=True)
    logits = decoder.forward(torch.cat([ids[:, 7:], nodes], dim=1), tree=tree_attention(PARENTS, decoder.device))
    for row in range(2):
        real = ids[row, int(pads[row]) :].tolist()
        for s in (0, 3, 5, 7):
            path = [int(nodes[row, i]) for i in path_of(PARENTS.tolist(), s - 1)]
            torch.testing.assert_close(logits[row, s], _plain_logits(model, real + path), rtol=1e-4, atol=1e-4)


def _hf_hidden(model, ids: list[int], request: FeatureRequest) -> torch.Tensor:
    """transformers' own hidden states: [S, F]. ``hidden_states[i + 1]`` is layer i's output, except for the last
    layer, whose entry transformers replaces by the normed state (so the tests ask for layers before the last); the
    final normed state is the base model's ``last_hidden_state``."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
        if not request.layers:
            return model.base_model(input_ids=torch.tensor([ids])).last_hidden_state[0]
        return torch.cat([out.hidden_states[i + 1][0] for i in request.layers], dim=-1)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", list(DECODERS))
@pytest.mark.parametrize("layers", [(), (1, 0)])
def test_features_equal_transformers_hidden_states(family, kind, layers):
    model = make_model(family, seed=13, layers=3)
    decoder = DECODERS[kind](loaded(model, "m"))
    request = FeatureRequest(layers)
    decoder.feature_request = request
    prompt = [5, 17, 99, 240, 31, 8, 44]
    node_tokens = torch.randint(3, 300, (1, 7), generator=torch.Generator().manual_seed(3))
    decoder.prepare(torch.zeros(1, dtype=torch.long), None, 32)
    decoder.forward(torch.tensor([prompt[:-1]]), last_only=True)
    assert decoder.features is not None and decoder.features.shape == (1, 6, 64 * max(1, len(layers)))
    torch.testing.assert_close(decoder.features[0], _hf_hidden(model, prompt[:-1], request), rtol=1e-4, atol=1e-4)
    block = torch.cat([torch.tensor([[prompt[-1]]]), node_tokens], dim=1)
    decoder.forward(block, tree=tree_attention(PARENTS, decoder.device))
    path = [int(node_tokens[0, i]) for i in (0, 2, 4)]
    plain = _hf_hidden(model, prompt + path, request)  # [P + 3, F]
    for s, position in ((0, 6), (1, 7), (3, 8), (5, 9)):  # root, node 0, node 2, node 4
        torch.testing.assert_close(decoder.features[0, s], plain[position], rtol=1e-4, atol=1e-4)
