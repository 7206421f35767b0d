"""The head modules: a cached, chunked, rolled-back or tree-shaped run computes what one causal pass computes;
the unrolled training passes are what drafting sees; Medusa heads start as the target's own head."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from specdec.heads import EagleConfig, EagleHead, HeadCache, LayerShape, MedusaConfig, MedusaHeads, TargetParts
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


@torch.no_grad()
def test_cached_chunks_and_rollback_match_one_causal_pass():
    head = make_head()
    tokens, features = torch.randint(0, V, (1, 10)), torch.randn(1, 10, D)
    full, _ = head(tokens, features, torch.arange(10)[None])
    cache = cache_for(head)
    outs = []
    for lo, hi in ((0, 4), (4, 5), (5, 10)):
        out, kv = head(tokens[:, lo:hi], features[:, lo:hi], torch.arange(lo, hi)[None], cache.past())
        cache.append(kv)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-4, atol=1e-4)
    # draft three junk entries, roll back, and the next real entry sees only the real ones
    cache.truncate(6)
    _, kv = head(torch.randint(0, V, (1, 3)), torch.randn(1, 3, D), torch.arange(6, 9)[None], cache.past())
    cache.append(kv)
    cache.truncate(6)
    again, _ = head(tokens[:, 6:7], features[:, 6:7], torch.tensor([[6]]), cache.past())
    torch.testing.assert_close(again, full[:, 6:7], rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_a_tree_in_one_forward_matches_each_path_as_a_chain():
    head = make_head(1)
    prefix_tokens, prefix_features = torch.randint(0, V, (1, 5)), torch.randn(1, 5, D)
    cache = cache_for(head)
    _, kv = head(prefix_tokens, prefix_features, torch.arange(5)[None])
    cache.append(kv)
    parents = [-1, -1, 0, 0, 2]  # node -> parent (-1: child of the root), topological
    depth = [0, 0, 1, 1, 2]
    tokens, features = torch.randint(0, V, (1, 5)), torch.randn(1, 5, D)
    ancestor = torch.eye(5, dtype=torch.bool)
    for i, p in enumerate(parents):
        if p >= 0:
            ancestor[i] |= ancestor[p]
    mask = torch.cat([torch.ones(5, 5, dtype=torch.bool), ancestor], dim=1)  # [W, L + W]
    positions = (5 + torch.tensor(depth))[None]
    tree, _ = head(tokens, features, positions, cache.past(), mask)
    for node in range(5):
        path = [node]
        while parents[path[0]] >= 0:
            path.insert(0, parents[path[0]])
        chain, _ = head(tokens[:, path], features[:, path], torch.arange(5, 5 + len(path))[None], cache.past())
        torch.testing.assert_close(tree[:, node], chain[:, -1], rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_unrolled_training_passes_are_what_chained_drafting_computes():
    head = make_head(2)
    tokens, features = torch.randint(0, V, (1, 12)), torch.randn(1, 12, D)
    passes = eagle_passes(head, tokens, features, depth=3)
    for root in (2, 6):
        cache = cache_for(head)
        out, kv = head(tokens[:, : root + 1], features[:, : root + 1], torch.arange(root + 1)[None])
        cache.append(kv)
        hidden = out[:, -1:]
        torch.testing.assert_close(hidden, passes[0][:, root : root + 1], rtol=1e-4, atol=1e-4)
        for k in (1, 2):  # draft k tokens past the root, teacher-forced tokens
            pos = root + k
            hidden, kv = head(tokens[:, pos : pos + 1], hidden, torch.tensor([[pos]]), cache.past())
            cache.append(kv)
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
