"""The head modules: a cached, chunked, rolled-back or tree-shaped run computes what one causal pass computes;
the unrolled training passes are what drafting sees; Medusa heads start as the target's own head."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from specdec.heads import EagleConfig, EagleHead, HeadCache, LayerShape, MedusaConfig, MedusaHeads, TargetParts
from specdec.heads.eagle import Eagle3Head
from specdec.heads.fused import FusedEagle
from specdec.zoo.recipe.head_training import eagle_passes

D, V = 32, 50  # float32 results of chunked and whole passes differ in summation order: tolerance 1e-4


def make_head(seed: int = 0) -> EagleHead:
    torch.manual_seed(seed)
    target = TargetParts(torch.randn(V, D), torch.randn(V, D) * 0.2, num_layers=4)
    layer = LayerShape(hidden_size=D, num_heads=4, num_kv_heads=2, intermediate_size=48, attention_input=D)
    head = EagleHead(EagleConfig(1, layer, V, V, D), target)
    for p in head.parameters():  # larger than init so that mistakes show
        p.data.normal_(0, 0.3)
    return head.eval()


def cache_for(head: EagleHead, capacity: int = 32) -> HeadCache:
    shape = head.config.layer
    return HeadCache(1, shape.num_kv_heads, shape.head_dim, capacity, torch.device("cpu"), torch.float32)


def causal(columns: range, capacity: int = 32) -> torch.Tensor:
    """[1, S, C]: queries at ``columns`` see every column up to their own."""
    return (torch.arange(capacity)[None, :] <= torch.tensor(list(columns))[:, None])[None]


def written(head: EagleHead, cache: HeadCache, tokens, features, columns: range, mask=None):
    """A forward whose entries go to ``columns`` of ``cache`` (positions = columns), attending through ``mask``."""
    at = torch.tensor(list(columns))
    mask = causal(columns) if mask is None else mask
    return head(tokens, features, at[None], mask=mask, into=cache.at(at))[0]


@torch.no_grad()
def test_cached_chunks_and_rollback_match_one_causal_pass():
    head = make_head()
    tokens, features = torch.randint(0, V, (1, 10)), torch.randn(1, 10, D)
    full, _ = head(tokens, features, torch.arange(10)[None])
    cache = cache_for(head)
    outs = [
        written(head, cache, tokens[:, lo:hi], features[:, lo:hi], range(lo, hi))
        for lo, hi in ((0, 4), (4, 5), (5, 10))
    ]
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-4, atol=1e-4)
    # draft three junk entries after column 5, roll back (nothing to do: the next forward overwrites them), and the
    # next real entry sees only the real ones
    written(head, cache, torch.randint(0, V, (1, 3)), torch.randn(1, 3, D), range(6, 9))
    again = written(head, cache, tokens[:, 6:7], features[:, 6:7], range(6, 7))
    torch.testing.assert_close(again, full[:, 6:7], rtol=1e-4, atol=1e-4)
    # the columns beyond a query's own are never read: junk there changes nothing
    cache.keys[:, :, 7:] = 1e3
    again = written(head, cache, tokens[:, 6:7], features[:, 6:7], range(6, 7))
    torch.testing.assert_close(again, full[:, 6:7], rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_cached_writes_match_the_past_keys_and_values_form():
    head = make_head(3)
    tokens, features = torch.randint(0, V, (1, 7)), torch.randn(1, 7, D)
    cache = cache_for(head)
    written(head, cache, tokens[:, :5], features[:, :5], range(5))
    _, (k, v) = head(tokens[:, :5], features[:, :5], torch.arange(5)[None])
    torch.testing.assert_close(cache.keys[:, :, :5], k)
    after_cache = written(head, cache, tokens[:, 5:], features[:, 5:], range(5, 7))
    after_past, _ = head(tokens[:, 5:], features[:, 5:], torch.arange(5, 7)[None], (k, v))
    torch.testing.assert_close(after_cache, after_past, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_a_tree_in_one_forward_matches_each_path_as_a_chain():
    head = make_head(1)
    prefix_tokens, prefix_features = torch.randint(0, V, (1, 5)), torch.randn(1, 5, D)
    cache = cache_for(head)
    written(head, cache, prefix_tokens, prefix_features, range(5))
    parents = [-1, -1, 0, 0, 2]  # node -> parent (-1: child of the root), topological
    depth = [0, 0, 1, 1, 2]
    tokens, features = torch.randint(0, V, (1, 5)), torch.randn(1, 5, D)
    ancestor = torch.eye(5, dtype=torch.bool)
    for i, p in enumerate(parents):
        if p >= 0:
            ancestor[i] |= ancestor[p]
    mask = torch.zeros(1, 5, 32, dtype=torch.bool)
    mask[0, :, :5] = True  # the prefix
    mask[0, :, 5:10] = ancestor  # the nodes, in columns 5..9
    positions = (5 + torch.tensor(depth))[None]
    tree, _ = head(tokens, features, positions, mask=mask, into=cache.at(torch.arange(5, 10)))
    for node in range(5):
        path = [node]
        while parents[path[0]] >= 0:
            path.insert(0, parents[path[0]])
        chain = written(head, cache, tokens[:, path], features[:, path], range(5, 5 + len(path)))
        torch.testing.assert_close(tree[:, node], chain[:, -1], rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_unrolled_training_passes_are_what_chained_drafting_computes():
    head = make_head(2)
    tokens, features = torch.randint(0, V, (1, 12)), torch.randn(1, 12, D)
    passes = eagle_passes(head, tokens, features, depth=3)
    for root in (2, 6):
        cache = cache_for(head)
        out = written(head, cache, tokens[:, : root + 1], features[:, : root + 1], range(root + 1))
        hidden = out[:, -1:]
        torch.testing.assert_close(hidden, passes[0][:, root : root + 1], rtol=1e-4, atol=1e-4)
        for k in (1, 2):  # draft k tokens past the root, teacher-forced tokens
            pos = root + k
            hidden = written(head, cache, tokens[:, pos : pos + 1], hidden, range(pos, pos + 1))
            torch.testing.assert_close(hidden, passes[k][:, pos : pos + 1], rtol=1e-4, atol=1e-4)


def test_medusa_heads_start_as_the_targets_own_head_and_share_it():
    torch.manual_seed(0)
    target = TargetParts(torch.randn(V, D), torch.randn(V, D), num_layers=4)
    heads = MedusaHeads(MedusaConfig(3, 1, D, V, shared_lm_head=True), target)
    assert sum(p.numel() for p in heads.parameters()) == 3 * (D * D + D)  # no vocabulary projection of their own
    x = torch.randn(2, 4, D)
    torch.testing.assert_close(heads(x), (x @ target.lm_head.T).expand(3, -1, -1, -1))
    heads.heads[1].blocks[0].linear.bias.data.fill_(0.5)
    torch.testing.assert_close(heads(x)[1], (x + F.silu(torch.full_like(x, 0.5))) @ target.lm_head.T)


def test_the_target_output_layer_scores_as_the_target_does() -> None:
    torch.manual_seed(0)
    weight = torch.randn(V, D)
    parts = TargetParts(torch.randn(V, D), weight, num_layers=4)
    for rows in (1, 2, 5):  # a CPU copy of the weight for one or two rows, oneDNN's layout from three
        hidden = torch.randn(rows, D)
        torch.testing.assert_close(parts.output(hidden), F.linear(hidden, weight), rtol=1e-5, atol=1e-5)
    assert parts.output(torch.randn(3, D, dtype=torch.float64)).dtype == torch.float64


def make_eagle3(seed: int = 0, qkv_bias: bool = False) -> Eagle3Head:
    torch.manual_seed(seed)
    target = TargetParts(torch.randn(V, D), torch.randn(V, D) * 0.2, num_layers=8)
    layer = LayerShape(
        hidden_size=D, num_heads=4, num_kv_heads=2, intermediate_size=48, attention_input=2 * D, qkv_bias=qkv_bias
    )
    head = Eagle3Head(EagleConfig(3, layer, V, 30, D, feature_layers=(1, 3, 4)), target)
    for p in head.parameters():
        p.data.normal_(0, 0.3)
    head.d2t.copy_(torch.randperm(V)[:30].sort().values - torch.arange(30))  # draft id d is target id d + d2t[d]
    return head.eval()


@torch.no_grad()
@pytest.mark.parametrize("version", [1, 3])
def test_the_fused_drafting_forward_computes_what_the_modules_compute(version):
    """What drafting runs (specdec.heads.fused: fused q/k/v and gate/up, norms in the products, a rotary table, the
    cache written while rotating) against the head's own modules, over a cache with a tree-shaped mask."""
    head = make_head(3) if version == 1 else make_eagle3(3)
    if version == 1:  # q/k/v biases (a Qwen2-style head), kept apart by the fused product's bias
        for proj in (head.layers[0].self_attn.q_proj, head.layers[0].self_attn.k_proj):
            proj.bias = torch.nn.Parameter(torch.randn(proj.out_features) * 0.3)
        head.layers[0].self_attn.v_proj.bias = torch.nn.Parameter(
            torch.randn(head.layers[0].self_attn.v_proj.out_features)
        )
    fused = FusedEagle(head)
    fused.position_tables(32)
    width = 3 * D if version == 3 else D
    tokens, features = torch.randint(0, V, (1, 6)), torch.randn(1, 6, width)
    ours, theirs = cache_for(head), cache_for(head)
    columns = torch.arange(6)
    out = fused.forward(tokens, features, columns[None], causal(range(6)), ours, columns)
    expected = written(head, theirs, tokens, features, range(6))
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours.keys, theirs.keys, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours.values, theirs.values, rtol=1e-4, atol=1e-4)
    # two sibling nodes at one depth, reading the head's own output (D wide), each seeing the committed entries
    # and itself only; rotary positions 6 for both
    mask = causal(range(6))[:, -1:].expand(1, 2, -1).clone()  # [1, 2, C]
    mask[0, 0, 6], mask[0, 1, 7] = True, True
    siblings = torch.randint(0, V, (1, 2))
    hidden = expected[:, -1:].expand(1, 2, D)
    at = torch.tensor([6, 7])
    out = fused.forward(siblings, hidden, torch.tensor([[6, 6]]), mask, ours, at)
    expected = head(siblings, hidden, torch.tensor([[6, 6]]), mask=mask, into=theirs.at(at))[0]
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fused.log_probs(out), torch.log_softmax(head.logits(out), -1), rtol=1e-4, atol=1e-4)
