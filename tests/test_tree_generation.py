"""Token trees through the engine: greedy output equals the target's own, on both decoders; metrics; refusals."""

from __future__ import annotations

import pytest
import torch
from tiny_models import loaded, make_model

from specdec import GenerationConfig, SpeculationConfig, SpeculativeEngine, make_drafter
from specdec.config import AcceptanceConfig, Policy
from specdec.drafters.base import DraftProposal, FeatureRequest
from specdec.errors import ConfigError
from specdec.tree import path_of

FAMILIES = ("llama", "qwen2", "gpt2")
PROMPT = [5, 17, 99, 240, 31, 8]


def reference(model, prompt: list[int], max_new: int) -> list[int]:
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new, do_sample=False)
    return out[0, len(prompt) :].tolist()


class OracleTreeDrafter:
    """Random trees of random tokens, with the target's true continuation planted along one random root-to-node path
    of random length, so that verification keeps paths that are not a prefix of the node order (and the cache must
    be compacted). It never looks at the verifier: ``truth`` is the target's greedy output, known beforehand."""

    method = "oracle-tree"
    forwards = 0

    def __init__(self, truth: list[int], width: int, seed: int) -> None:
        self.truth = truth
        self.width = width
        self.name = f"oracle-tree({width})"
        self.random = torch.Generator().manual_seed(seed)
        self.kept: list[int] = []

    def max_width(self, k: int) -> int:
        return self.width

    def start(self, batch) -> None:
        self.prompt_length = batch.prompt_length

    def propose(self, batch, k, generation, generator) -> DraftProposal:
        width = self.width
        parents = [-1]
        for node in range(1, width):  # a random tree in topological order, at most k deep
            while True:
                parent = int(torch.randint(-1, node, (1,), generator=self.random))
                if len(path_of(parents, parent)) < k:
                    break
            parents.append(parent)
        tokens = torch.randint(3, 300, (1, width), generator=self.random)
        target_node = int(torch.randint(0, width, (1,), generator=self.random))
        path = path_of(parents, target_node)
        planted = int(torch.randint(0, len(path) + 1, (1,), generator=self.random))
        done = batch.length - self.prompt_length  # tokens already generated
        for depth, node in enumerate(path[:planted]):
            if done + depth < len(self.truth):
                tokens[0, node] = self.truth[done + depth]
        return DraftProposal(tokens=tokens.to(batch.tokens.device), probs=None, parents=torch.tensor(parents))

    def observe(self, batch, num_accepted: int) -> None:
        self.kept.append(num_accepted)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("decoder", ["generic", "fast"])
def test_greedy_trees_reproduce_the_target_exactly(family, decoder):
    target = make_model(family, seed=31)
    truth = reference(target, PROMPT, 24)
    drafter = OracleTreeDrafter(truth, width=7, seed=1)
    engine = SpeculativeEngine(loaded(target, "t"), drafter, decoder)
    result = engine.generate(PROMPT, GenerationConfig(max_new_tokens=24), SpeculationConfig(k=4))
    assert result.token_ids[0] == truth
    assert max(drafter.kept) >= 2  # paths of several tokens were kept (and compacted)
    steps = [s for s in result.steps if s.drafted]
    assert steps and all(s.tree_size == s.drafted == 7 and 1 <= s.tree_depth <= 4 for s in steps)
    assert result.metrics.mean_tree_size == 7.0
    counts = result.metrics.position_counts  # acceptance by depth
    assert len(counts.drafted) == max(s.tree_depth for s in steps)
    assert sum(counts.accepted) == result.metrics.accepted_tokens == sum(s.accepted for s in result.steps)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("decoder", ["generic", "fast"])
def test_a_model_drafted_tree_is_lossless_and_accepts_more(family, decoder):
    target = make_model(family, seed=4)
    draft = loaded(make_model(family, seed=5, layers=1), "d")
    truth = reference(target, PROMPT, 20)
    config, speculation = GenerationConfig(max_new_tokens=20), SpeculationConfig(k=3)
    chain = SpeculativeEngine(loaded(target, "t"), draft, decoder).generate(PROMPT, config, speculation)
    tree_engine = SpeculativeEngine(loaded(target, "t"), make_drafter("model", model=draft, branching=3), decoder)
    tree = tree_engine.generate(PROMPT, config, speculation)
    assert tree.token_ids[0] == chain.token_ids[0] == truth
    assert tree.metrics.mean_tree_size is not None and tree.metrics.mean_tree_size > 3
    assert tree.metrics.steps <= chain.metrics.steps  # the first branch is the chain, so never fewer tokens a step


def test_a_model_drafted_tree_samples_like_the_target_at_any_temperature():
    """Sampling with a (deterministic) tree runs and stays seeded-repeatable; its losslessness is tested exactly in
    test_tree_sampling.py."""
    target = make_model("llama", seed=4)
    draft = loaded(make_model("llama", seed=5, layers=1), "d")
    engine = SpeculativeEngine(loaded(target, "t"), make_drafter("model", model=draft, branching=2), "fast")
    config = GenerationConfig(max_new_tokens=12, temperature=0.8, seed=3)
    first = engine.generate(PROMPT, config, SpeculationConfig(k=3)).token_ids
    assert first == engine.generate(PROMPT, config, SpeculationConfig(k=3)).token_ids
    assert len(first[0]) == 12


def test_trees_refuse_batches_and_lossy_policies():
    target = make_model("llama", seed=4)
    draft = loaded(make_model("llama", seed=5, layers=1), "d")
    engine = SpeculativeEngine(loaded(target, "t"), make_drafter("model", model=draft, branching=2), "fast")
    with pytest.raises(ConfigError, match="batch of one"):
        engine.generate([PROMPT, PROMPT[:4]], GenerationConfig(max_new_tokens=8), SpeculationConfig(k=3))
    for policy in (Policy.LOSSY_TOPK, Policy.SYNTHETIC):
        extra = {"acceptance_rate": 0.5} if policy is Policy.SYNTHETIC else {}
        speculation = SpeculationConfig(k=3, acceptance=AcceptanceConfig(policy=policy, **extra))
        with pytest.raises(ConfigError, match="only the lossless policy"):
            engine.generate(PROMPT, GenerationConfig(max_new_tokens=8), speculation)


def test_model_tree_options_are_validated():
    with pytest.raises(ConfigError, match="branching"):
        make_drafter("ngram", branching=2)
    draft = loaded(make_model("llama", seed=5, layers=1), "d")
    with pytest.raises(ConfigError, match="branching must be"):
        make_drafter("model", model=draft, branching=0)
    spec = make_drafter("model", model=draft, branching=3, max_nodes=8)
    assert spec.options.branch_depths(4) == [4, 2, 2]


class FeatureOracle(OracleTreeDrafter):
    """The oracle tree drafter, reading the target's final normed hidden states as a head drafter would."""

    def __init__(self, truth: list[int], width: int, seed: int) -> None:
        super().__init__(truth, width, seed)
        self.features = FeatureRequest()
        self.received: list[tuple[torch.Tensor, int]] = []

    def read_features(self, features: torch.Tensor, length: int) -> None:
        self.received.append((features.clone(), length))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("decoder", ["generic", "fast"])
def test_features_arrive_once_per_committed_position_as_a_plain_forward_computes_them(family, decoder):
    target = make_model(family, seed=31)
    truth = reference(target, PROMPT, 16)
    drafter = FeatureOracle(truth, width=6, seed=2)
    engine = SpeculativeEngine(loaded(target, "t"), drafter, decoder)
    result = engine.generate(PROMPT, GenerationConfig(max_new_tokens=16), SpeculationConfig(k=3))
    assert result.token_ids[0] == truth
    first, first_length = drafter.received[0]
    assert first.shape[1] == len(PROMPT) and first_length == len(PROMPT) + 1
    lengths = [length for _, length in drafter.received]
    steps = [s for s in result.steps]
    assert all(f.shape[1] == s.accepted + 1 for (f, _), s in zip(drafter.received[1:], steps, strict=True))
    assert lengths[1:] == [len(PROMPT) + 1 + sum(s.accepted + 1 for s in steps[: i + 1]) for i in range(len(steps))]
    together = torch.cat([f for f, _ in drafter.received], dim=1)[0]  # [committed - 1, D]
    sequence = PROMPT + truth
    with torch.no_grad():
        plain = target.base_model(input_ids=torch.tensor([sequence])).last_hidden_state[0]  # final normed states
    assert together.shape[0] == lengths[-1] - 1
    torch.testing.assert_close(together, plain[: together.shape[0]], rtol=1e-4, atol=1e-4)
