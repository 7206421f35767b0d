"""Medusa and EAGLE drafting through the engine: greedy output equals the target's own greedy output, with chains and
trees, on both decoders, on the zoo target with its trained heads and on random Llama and Qwen2 targets with random
heads; the drafters receive every committed position's features once."""

from __future__ import annotations

import pytest
import torch
from ahead_spy import counting_ahead
from safetensors.torch import save_file
from tiny_models import loaded, make_model

from specdec import GenerationConfig, SpeculationConfig, SpeculativeEngine, load_model, make_drafter
from specdec.heads import (
    Eagle3Head,
    EagleConfig,
    EagleHead,
    LayerShape,
    MedusaConfig,
    MedusaHeads,
    TargetParts,
    eagle3_layers,
    write_random_eagle3,
)
from specdec.zoo.prompts import load_prompts

GREEDY = GenerationConfig(max_new_tokens=40, stop_at_eos=False)
METHODS = [
    ("medusa", {}),
    ("medusa", {"tree": "chain"}),
    ("eagle", {}),
    ("eagle", {"tree": "chain"}),
]
IDS = ["medusa-tree", "medusa-chain", "eagle-tree", "eagle-chain"]


@pytest.fixture(scope="module")
def zoo_target():
    return load_model("zoo:tiny-code-target", device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def zoo_prompts() -> list[str]:
    return load_prompts()[:2]


def autoregressive(target, prompt, decoder: str) -> list[int]:
    return SpeculativeEngine(target, None, decoder).generate(prompt, GREEDY).token_ids[0]


@pytest.mark.parametrize("decoder", ["fast", "generic"])
@pytest.mark.parametrize(("method", "options"), METHODS, ids=IDS)
def test_zoo_heads_keep_the_target_s_greedy_output(zoo_target, zoo_prompts, method, options, decoder):
    engine = SpeculativeEngine(zoo_target, make_drafter(method, **options), decoder)
    for prompt in zoo_prompts:
        result = engine.generate(prompt, GREEDY, SpeculationConfig(k=4))
        assert result.token_ids[0] == autoregressive(zoo_target, prompt, decoder)
        m = result.metrics
        assert m.draft_method == method and m.accepted_tokens > 0  # trained heads: some drafts are kept
        assert m.mean_tokens_per_forward > 1.0
        if options.get("tree") != "chain":
            assert m.mean_tree_size is not None and m.mean_tree_size > 4  # more nodes than a chain of K = 4


def random_heads(target, folder, method: str) -> str:
    """A Medusa head set or an EAGLE head with random weights for ``target``, saved in the zoo's layout."""
    torch.manual_seed(11)
    c = target.config
    parts = TargetParts.of(target)
    if method == "medusa":
        module: torch.nn.Module = MedusaHeads(MedusaConfig(3, 1, c.hidden_size, c.vocab_size), parts)
    else:
        layer = LayerShape(
            c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.intermediate_size, c.hidden_size
        )
        module = EagleHead(EagleConfig(1, layer, c.vocab_size, c.vocab_size, c.hidden_size), parts)
    for p in module.parameters():
        p.data.normal_(0, 0.2)
    folder.mkdir()
    module.config.write(folder / "config.json")  # type: ignore[operator]
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(folder / "model.safetensors"))
    return str(folder)


@pytest.mark.parametrize("decoder", ["fast", "generic"])
@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize(("method", "options"), METHODS, ids=IDS)
def test_random_heads_on_random_targets_keep_the_greedy_output(family, method, options, decoder, tmp_path):
    model = make_model(family, seed=5)
    target = loaded(model, family)
    heads = random_heads(model, tmp_path / method, method)
    engine = SpeculativeEngine(target, make_drafter(method, heads=heads, **options), decoder)
    prompt = [5, 17, 99, 240, 31, 8, 77]
    result = engine.generate(prompt, GREEDY, SpeculationConfig(k=3))
    assert result.token_ids[0] == autoregressive(target, prompt, decoder)


def test_a_sampled_eagle_chain_runs_with_its_draft_distributions(zoo_target, zoo_prompts):
    engine = SpeculativeEngine(zoo_target, make_drafter("eagle", tree="chain"))
    sampled = GenerationConfig(max_new_tokens=32, temperature=0.8, seed=3, stop_at_eos=False)
    first = engine.generate(zoo_prompts[0], sampled, SpeculationConfig(k=4))
    again = engine.generate(zoo_prompts[0], sampled, SpeculationConfig(k=4))
    assert first.token_ids == again.token_ids and len(first.token_ids[0]) == 32
    assert first.metrics.accepted_tokens > 0


@pytest.mark.parametrize("tree", ["chain", "dynamic"])
def test_a_random_eagle3_head_of_the_target_s_shape_keeps_the_greedy_output(tree, tmp_path):
    model = make_model("llama", seed=7, layers=6)
    target = loaded(model, "llama")
    folder = write_random_eagle3(model, tmp_path / "eagle3", draft_vocab_size=200)
    engine = SpeculativeEngine(target, make_drafter("eagle", heads=str(folder), tree=tree))
    head = engine.drafter.head  # type: ignore[union-attr]
    assert isinstance(head, Eagle3Head) and head.config.draft_vocab_size == 200
    assert head.config.feature_layers == eagle3_layers(6)
    prompt = [5, 17, 99, 240, 31, 8, 77]
    result = engine.generate(prompt, GREEDY, SpeculationConfig(k=4))
    assert result.token_ids[0] == autoregressive(target, prompt, "fast")
    assert result.metrics.drafted_tokens > 0


@pytest.mark.parametrize("decoder", ["fast", "generic"])
def test_an_eagle_chain_drafted_ahead_keeps_the_greedy_output_and_the_same_steps(zoo_target, zoo_prompts, decoder):
    plain = SpeculativeEngine(zoo_target, make_drafter("eagle", tree="chain"), decoder)
    ahead = SpeculativeEngine(zoo_target, make_drafter("eagle", tree="chain"), decoder)
    answers = counting_ahead(ahead)
    for prompt in zoo_prompts:
        for k in (2, 4):
            expected = plain.generate(prompt, GREEDY, SpeculationConfig(k=k))
            result = ahead.generate(prompt, GREEDY, SpeculationConfig(k=k))
            assert result.token_ids[0] == autoregressive(zoo_target, prompt, decoder) == expected.token_ids[0]
            # the chains drafted ahead are the chains drafted in place: every step keeps what it kept
            assert [s.accepted for s in result.steps] == [s.accepted for s in expected.steps]
    assert answers.count(True) > 10 and all(answers[1:])  # ahead from the second step on


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_random_eagle_chains_drafted_ahead_keep_each_row_s_greedy_output(family, tmp_path):
    model = make_model(family, seed=5)
    target = loaded(model, family)
    heads = random_heads(model, tmp_path / "eagle", "eagle")
    engine = SpeculativeEngine(target, make_drafter("eagle", heads=heads, tree="chain"))
    answers = counting_ahead(engine)
    prompts = [[5, 17, 99, 240, 31, 8, 77], [42, 7]]  # a lockstep batch with left padding
    batched = engine.generate(prompts, GREEDY, SpeculationConfig(k=3))
    alone = SpeculativeEngine(target).generate(prompts, GREEDY)
    assert batched.token_ids == alone.token_ids
    assert True in answers
