"""The Medusa and EAGLE drafters against the heads run without caches: the test hands the features over itself, as
the engine does (through the engine: tests/test_head_generation.py)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from tiny_models import make_model

import specdec.drafters.eagle as eagle_drafter
from specdec.config import GenerationConfig
from specdec.drafters.eagle import EagleDrafter, EagleOptions
from specdec.drafters.medusa import MedusaDrafter, MedusaOptions
from specdec.heads import EagleConfig, EagleHead, LayerShape, MedusaConfig, MedusaHeads, TargetParts, target_features
from specdec.sequence import SequenceBatch


@pytest.fixture(scope="module")
def target():
    return make_model("llama", seed=0, layers=2)


def save_head(module: torch.nn.Module, config, folder):
    folder.mkdir()
    config.write(folder / "config.json")
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(folder / "model.safetensors"))
    return str(folder)


def eagle_folder(target, folder) -> tuple[str, EagleHead]:
    torch.manual_seed(3)
    c = target.config
    layer = LayerShape(c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.intermediate_size, c.hidden_size)
    head = EagleHead(EagleConfig(1, layer, c.vocab_size, c.vocab_size, c.hidden_size), TargetParts.of(target))
    for p in head.parameters():
        p.data.normal_(0, 0.2)
    return save_head(head, head.config, folder), head.eval()


def committed_batch(target, prompt_len: int = 9):
    """A batch with a prompt and the target's first token committed, and the prompt's features."""
    torch.manual_seed(1)
    prompt = torch.randint(3, 300, (1, prompt_len))
    features, logits = target_features(target, prompt)
    batch = SequenceBatch.from_prompts(prompt.tolist(), 16, 0, torch.device("cpu"))
    batch.tokens[:, prompt_len] = logits[:, -1].argmax(-1)
    batch.length = prompt_len + 1
    return batch, features


def uncached_chain(head: EagleHead, tokens: torch.Tensor, features: torch.Tensor, width: int) -> list[int]:
    """Greedy chain recomputed from scratch at each depth (no cache, no masks but causal)."""
    drafted: list[int] = []
    toks, feats = tokens[:, 1:], features  # entries (f_t, x_{t+1})
    out, _ = head(toks, feats, torch.arange(toks.shape[1])[None])
    for _ in range(width):
        token = head.logits(out[:, -1]).argmax(-1)
        drafted.append(int(token))
        toks = torch.cat([toks, token[:, None]], 1)
        feats = torch.cat([feats, out[:, -1:]], 1)
        out, _ = head(toks, feats, torch.arange(toks.shape[1])[None])
    return drafted


@torch.no_grad()
def test_eagle_chain_drafter_drafts_what_the_head_computes_uncached(target, tmp_path):
    folder, head = eagle_folder(target, tmp_path / "eagle")
    drafter = EagleDrafter(EagleOptions(heads=folder, tree="chain", depth=3), target)
    batch, features = committed_batch(target)
    drafter.start(batch)
    drafter.read_features(features, batch.length)
    proposal = drafter.propose(batch, 3, GenerationConfig(), None)
    expected = uncached_chain(head, batch.tokens[:, : batch.length], features, 3)
    assert proposal.tokens[0].tolist() == expected and proposal.probs is None
    # a second proposal after rollback (nothing accepted, no new features) drafts the same
    assert drafter.propose(batch, 3, GenerationConfig(), None).tokens[0].tolist() == expected


@torch.no_grad()
def test_eagle_dynamic_tree_nodes_are_each_paths_top_choices(target, tmp_path, monkeypatch):
    folder, head = eagle_folder(target, tmp_path / "eagle")
    captured = {}
    monkeypatch.setattr(eagle_drafter, "proposal", lambda t, p, parents: captured.update(t=t, parents=parents))
    drafter = EagleDrafter(EagleOptions(heads=folder, tree="dynamic", depth=3, top_k=2, budget=6), target)
    batch, features = committed_batch(target)
    drafter.start(batch)
    drafter.read_features(features, batch.length)
    drafter.propose(batch, 8, GenerationConfig(), None)
    tokens, parents = captured["t"][0].tolist(), captured["parents"].tolist()
    assert len(tokens) == 6 and parents[0] == -1
    for node, token in enumerate(tokens):
        path = [node]
        while parents[path[0]] >= 0:
            path.insert(0, parents[path[0]])
        toks, feats = batch.tokens[:, 1 : batch.length], features
        out, _ = head(toks, feats, torch.arange(toks.shape[1])[None])
        for ancestor in path[:-1]:  # walk down the path without a cache
            toks = torch.cat([toks, torch.tensor([[tokens[ancestor]]])], 1)
            feats = torch.cat([feats, out[:, -1:]], 1)
            out, _ = head(toks, feats, torch.arange(toks.shape[1])[None])
        assert token in head.logits(out[:, -1]).topk(2, dim=-1).indices[0].tolist()


@torch.no_grad()
def test_medusa_drafter_fills_its_tree_from_each_heads_top_choices(target, tmp_path):
    torch.manual_seed(4)
    c = target.config
    heads = MedusaHeads(MedusaConfig(2, 1, c.hidden_size, c.vocab_size), TargetParts.of(target))
    for p in heads.parameters():
        p.data.normal_(0, 0.2)
    folder = save_head(heads, heads.config, tmp_path / "medusa")
    drafter = MedusaDrafter(MedusaOptions(heads=folder, tree="chain"), target)
    batch, features = committed_batch(target)
    drafter.start(batch)
    drafter.read_features(features, batch.length)
    proposal = drafter.propose(batch, 5, GenerationConfig(), None)
    expected = heads(features[:, -1]).argmax(-1)[:, 0]  # [M] head i's top choice from f_{n-2}
    assert proposal.tokens[0].tolist() == expected.tolist()
