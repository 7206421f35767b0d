"""transformers' own generate as an engine (specdec/hf_engine.py): its greedy output is the target's own (equal to
specdec's and to a plain `model.generate`), its forwards are counted, and assisted generation and prompt lookup
report the drafted and accepted tokens that transformers' candidate generator saw."""

from __future__ import annotations

import pytest
import torch
import transformers
from tiny_models import loaded, make_config, make_model

from specdec import GenerationConfig, SpeculationConfig, SpeculativeEngine
from specdec.errors import ConfigError
from specdec.hf_engine import HF_ASSISTED, HF_COMPILE, HF_LOOKUP, HF_STATIC, HFEngine, HFUnavailableError

MAX_NEW = 20
PROMPTS = [[5, 17, 99, 240, 31], [250, 4, 4, 61, 9, 13, 200, 77, 120, 3, 45], [42]]
REPEATING = [5, 17, 99, 240, 31, 8, 5, 17, 99, 240, 31, 8, 5, 17, 99]
FIXED = GenerationConfig(max_new_tokens=MAX_NEW, stop_at_eos=False)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def target(request):
    return loaded(make_model(request.param, seed=1), request.param)


def plain_generate(model, prompt: list[int], max_new: int = MAX_NEW) -> list[int]:
    """transformers' generate with its defaults (dynamic cache), greedy, no early end."""
    ids = torch.tensor([prompt])
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new, min_new_tokens=max_new, do_sample=False
    )
    return out[0, len(prompt) :].tolist()


def test_static_greedy_equals_specdec_and_plain_generate_and_counts_one_forward_per_token(target):
    engine = HFEngine(target, HF_STATIC)
    ours = SpeculativeEngine(target)
    for prompt in PROMPTS:
        result = engine.generate(prompt, FIXED)
        assert result.token_ids == ours.generate(prompt, FIXED).token_ids == [plain_generate(target.model, prompt)]
        metrics = result.metrics
        assert metrics.engine == HF_STATIC and metrics.new_tokens == MAX_NEW
        assert metrics.target_forwards == MAX_NEW  # the prefill gives the first token, each forward after it one
        assert metrics.steps == MAX_NEW - 1 and metrics.mean_tokens_per_forward == 1.0
        assert (metrics.drafted_tokens, metrics.accepted_tokens, metrics.acceptance_rate) == (0, 0, None)
        assert _positions(metrics) == ([], [], [])
        assert metrics.time_to_first_token_s is not None and 0 < metrics.time_to_first_token_s <= metrics.total_time_s


def test_a_left_padded_batch_gives_each_row_its_own_greedy_output(target):
    batch = HFEngine(target, HF_STATIC).generate(PROMPTS, FIXED)
    assert batch.token_ids == SpeculativeEngine(target).generate(PROMPTS, FIXED).token_ids
    assert batch.metrics.batch_size == 3 and batch.metrics.new_tokens == 3 * MAX_NEW
    assert batch.metrics.target_forwards == MAX_NEW


def test_assisted_generation_counts_drafted_and_accepted_tokens(target):
    copy = loaded(make_model(target.name, seed=1), "copy")  # the target's weights in another model object
    unrelated = loaded(make_model(target.name, seed=9, layers=1), "unrelated")
    copy.model.generation_config.num_assistant_tokens_schedule = "heuristic"  # the draft's own setting
    for draft, k in ((copy, 4), (unrelated, 3)):
        engine = HFEngine(target, HF_ASSISTED, draft=draft)
        for prompt in PROMPTS:
            result = engine.generate(prompt, FIXED, SpeculationConfig(k=k))
            assert result.token_ids == [plain_generate(target.model, prompt)]
            m = result.metrics
            assert m.k == k and m.draft == draft.name and m.draft_method == "model"
            assert m.drafted_tokens is not None and m.accepted_tokens is not None
            assert 0 <= m.accepted_tokens <= m.drafted_tokens <= k * m.target_forwards
            assert m.steps == m.target_forwards  # every forward verifies candidates (the first one too)
            assert m.mean_tokens_per_forward == MAX_NEW / m.target_forwards
            assert sum(m.accepted_by_position) == m.accepted_tokens and sum(m.drafted_by_position) == m.drafted_tokens
            assert m.reached_by_position[0] == m.drafted_by_position[0]  # position 0 is reached whenever drafted
            assert all(a <= r <= d for a, r, d in zip(*_positions(m), strict=True))
            if draft is copy:  # the same weights: every drafted token is the target's own
                assert m.acceptance_rate == 1.0 and m.target_forwards == -(-MAX_NEW // (k + 1))
    assert copy.model.generation_config.num_assistant_tokens_schedule == "heuristic"  # restored after each call
    assert not target.model._forward_hooks and "_get_candidate_generator" not in vars(target.model)


def _positions(metrics) -> tuple[list[int], list[int], list[int]]:
    return metrics.accepted_by_position, metrics.reached_by_position, metrics.drafted_by_position


def test_prompt_lookup_drafts_from_a_repeating_prompt_and_keeps_the_output(target):
    result = HFEngine(target, HF_LOOKUP, max_ngram=3).generate(REPEATING, FIXED, SpeculationConfig(k=3))
    assert result.token_ids == [plain_generate(target.model, REPEATING)]
    m = result.metrics
    assert m.engine == HF_LOOKUP and m.draft_method == "ngram" and m.draft is None
    assert m.drafted_tokens is not None and m.drafted_tokens > 0  # the prompt repeats: lookup found a match
    assert m.accepted_tokens is not None and 0 <= m.accepted_tokens <= m.drafted_tokens


@pytest.mark.parametrize("mode", [HF_STATIC, HF_LOOKUP, HF_ASSISTED])
def test_end_of_sequence_ends_a_row_only_with_stop_at_eos(mode):
    config = make_config("llama")
    config.eos_token_id = 273  # a token of this model's greedy output, 7th after PROMPTS[0]
    torch.manual_seed(1)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = 273
    target = loaded(model, "eos-target")
    draft = loaded(make_model("llama", seed=4, layers=1), "draft") if mode == HF_ASSISTED else None
    engine, ours = HFEngine(target, mode, draft=draft), SpeculativeEngine(target)
    for stop in (True, False):
        generation = GenerationConfig(max_new_tokens=MAX_NEW, stop_at_eos=stop)
        result = engine.generate(PROMPTS[0], generation, SpeculationConfig(k=3))
        assert result.token_ids == ours.generate(PROMPTS[0], generation).token_ids
        assert (result.token_ids[0][-1] == 273) == stop and 273 in result.token_ids[0]


def test_sampling_is_seeded_and_follows_the_settings(target):
    sampled = GenerationConfig(max_new_tokens=MAX_NEW, temperature=0.9, top_k=20, seed=3, stop_at_eos=False)
    engine = HFEngine(target, HF_STATIC)
    first, again = engine.generate(PROMPTS[0], sampled), engine.generate(PROMPTS[0], sampled)
    other = engine.generate(PROMPTS[0], GenerationConfig(**{**vars(sampled), "seed": 4}))
    assert first.token_ids == again.token_ids != other.token_ids
    assert first.token_ids != engine.generate(PROMPTS[0], FIXED).token_ids
    top1 = GenerationConfig(max_new_tokens=MAX_NEW, temperature=0.9, top_k=1, seed=3, stop_at_eos=False)
    assert engine.generate(PROMPTS[0], top1).token_ids == engine.generate(PROMPTS[0], FIXED).token_ids


def test_compile_mode_counts_forwards_through_the_compiled_step_and_keeps_the_output():
    target = loaded(make_model("llama", seed=1), "llama")
    # torch.compile with the eager backend: the compiled path of transformers' generate, without minutes of inductor
    engine = HFEngine(target, HF_COMPILE, compile_config=transformers.CompileConfig(backend="eager", mode=None))
    result = engine.generate(PROMPTS[0], FIXED)
    assert result.token_ids == [plain_generate(target.model, PROMPTS[0])]
    assert result.metrics.target_forwards == MAX_NEW and getattr(target.model, "_compiled_call", None) is not None


def test_static_modes_reuse_one_cache_for_prompts_of_different_lengths():
    # one cache (shape and addresses) across calls: the compiled step is captured once, not per call (on the H200 a
    # fresh cache per call ended in an illegal memory access in the engine's own CUDA graphs)
    target = loaded(make_model("llama", seed=1), "llama")
    lengths: list[int] = []
    cache_ids: set[int] = set()
    expected = [[plain_generate(target.model, prompt)] for prompt in PROMPTS[:2]]  # 5 and 11 prompt tokens

    def note_cache(module, args, kwargs):
        found = [v for v in kwargs.values() if isinstance(v, transformers.Cache)]
        lengths.extend(cache.get_max_length() for cache in found)
        cache_ids.update(id(cache) for cache in found)

    handle = target.model.register_forward_pre_hook(note_cache, with_kwargs=True)
    try:
        for mode in (HF_STATIC, HF_COMPILE):
            config = transformers.CompileConfig(backend="eager", mode=None) if mode == HF_COMPILE else None
            engine = HFEngine(target, mode, compile_config=config)
            for prompt, plain in zip(PROMPTS[:2], expected, strict=True):
                assert engine.generate(prompt, FIXED).token_ids == plain
    finally:
        handle.remove()
    assert lengths and set(lengths) == {1024}  # prompt + 20 new tokens, rounded up to the bucket
    assert len(cache_ids) == 2  # each engine reuses its one cache across calls


def test_a_compile_failure_is_reported_as_unavailable_with_its_reason():
    target = loaded(make_model("llama", seed=2), "llama")
    broken = transformers.CompileConfig(backend="no-such-backend", mode=None)
    with pytest.raises(HFUnavailableError, match=r"hf-compile is unavailable .*no-such-backend"):
        HFEngine(target, HF_COMPILE, compile_config=broken).generate(PROMPTS[0], FIXED)
    assert not target.model._forward_hooks


def test_bad_combinations_are_refused_with_what_to_do():
    target = loaded(make_model("llama", seed=1), "llama")
    with pytest.raises(ConfigError, match="needs a draft model"):
        HFEngine(target, HF_ASSISTED)
    with pytest.raises(ConfigError, match="the target's own model object"):
        HFEngine(target, HF_ASSISTED, draft=target)
    with pytest.raises(ConfigError, match="unknown transformers mode 'hf-dynamic'"):
        HFEngine(target, "hf-dynamic")
    with pytest.raises(ConfigError, match="one prompt at a time"):
        HFEngine(target, HF_LOOKUP).generate(PROMPTS, FIXED)


def test_acceptance_by_position_counts_steps_that_reached_and_accepted_each_position():
    from specdec.hf_engine import _DraftCounter

    counter = _DraftCounter()
    counter.steps = [(3, 3), (3, 1), (2, 0)]  # (drafted, accepted) of three steps
    drafted, reached, accepted = counter.by_position()
    assert drafted == [3, 3, 2]
    assert reached == [3, 2, 1]  # position 1 after an accepted position 0 (two steps), position 2 once
    assert accepted == [2, 1, 1]
    assert (counter.drafted, counter.accepted) == (8, 4)
