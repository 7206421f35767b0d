"""Rollback moves a pointer: same storage, no allocation, and the output stays exact."""

from __future__ import annotations

import inspect
import warnings

import torch
from tiny_models import loaded, make_model

from specdec import GenerationConfig, SpeculationConfig, SpeculativeEngine
from specdec.decoder import HFDecoder
from specdec.kv_cache import KVCache, cache_keyword


def storage(cache: KVCache) -> list[int]:
    return [t.untyped_storage().data_ptr() for t in cache.tensors()]


def test_rollback_allocates_nothing_and_keeps_the_tensors_in_place():
    model = make_model("llama", seed=0)
    decoder = HFDecoder(loaded(model, "t"))
    decoder.prepare(torch.zeros(1, dtype=torch.long), None, max_length=64)
    ids = torch.randint(3, 300, (1, 40))
    decoder.forward(ids[:, :30])
    assert decoder.cache is not None
    before = storage(decoder.cache)
    snapshot = [t.clone() for t in decoder.cache.tensors()]
    assert len(before) == 2 * model.config.num_hidden_layers

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        decoder.rollback(12)  # drop 18 positions
    allocations = [e for e in prof.events() if e.cpu_memory_usage > 0]
    assert allocations == []
    assert storage(decoder.cache) == before
    for kept, now in zip(snapshot, decoder.cache.tensors(), strict=True):
        assert torch.equal(kept, now)  # nothing was copied or cleared: stale entries are only masked
    assert decoder.cache_length == 12

    # the next forward overwrites from position 12 and sees exactly the first 12 tokens
    logits = decoder.forward(ids[:, 12:14])
    expected = model(ids[:, :14]).logits[:, 12:14]
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    assert storage(decoder.cache) == before


def test_generation_with_rejections_reuses_the_same_cache_tensors():
    target = make_model("gpt2", seed=1)
    draft = make_model("llama", seed=2, layers=1)
    engine = SpeculativeEngine(loaded(target, "t"), loaded(draft, "d"), decoder="generic")  # the HF static cache
    prompt = [7, 8, 9, 10]
    first = engine.generate(prompt, GenerationConfig(max_new_tokens=30), SpeculationConfig(k=4))
    target_cache = engine.target.cache  # type: ignore[attr-defined]
    before = storage(target_cache)
    again = engine.generate(prompt, GenerationConfig(max_new_tokens=30), SpeculationConfig(k=4))
    assert engine.target.cache is target_cache  # type: ignore[attr-defined]
    assert storage(target_cache) == before
    assert again.token_ids == first.token_ids
    assert first.metrics.accepted_tokens < first.metrics.drafted_tokens  # rollbacks really happened
    ids = torch.tensor([prompt])
    want = target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=30, do_sample=False)
    assert first.token_ids[0] == want[0, len(prompt) :].tolist()


def test_rollback_beyond_the_cache_is_refused():
    decoder = HFDecoder(loaded(make_model("llama", seed=0), "t"))
    decoder.prepare(torch.zeros(1, dtype=torch.long), None, max_length=16)
    decoder.forward(torch.tensor([[5, 6, 7]]))
    try:
        decoder.rollback(4)
    except ValueError as error:
        assert "holds 3 positions" in str(error)
    else:
        raise AssertionError("rollback past the end was accepted")


def test_the_cache_goes_in_by_the_keyword_the_installed_transformers_takes():
    # transformers >= 5.24 takes `cache` and deprecates `past_key_values` (gone in 5.40); earlier 5.x take only
    # `past_key_values`. The generic path must hand its cache over without a deprecation warning on either.
    model = make_model("llama", seed=0)
    keyword = cache_keyword(model)
    assert keyword in inspect.signature(model.forward).parameters
    decoder = HFDecoder(loaded(model, "t"))
    decoder.prepare(torch.zeros(1, dtype=torch.long), None, max_length=16)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*past_key_values.*", category=FutureWarning)
        decoder.forward(torch.randint(3, 300, (1, 8)))
    assert decoder.cache is not None and decoder.cache.length == 8

    class OlderForward(torch.nn.Module):  # the signature of transformers < 5.24
        def forward(self, input_ids, past_key_values=None, use_cache=None): ...

    assert cache_keyword(OlderForward()) == "past_key_values"  # type: ignore[arg-type]
