"""The fast paths (Llama family, GPT-2) compute what transformers computes, and keep speculative output exact.

On a CPU it runs the PyTorch reference kernels (or the Triton kernels in Triton's interpreter when
TRITON_INTERPRET=1); on CUDA the Triton kernels and CUDA graphs (see also scripts/gpu_check.sh).
"""

from __future__ import annotations

import pytest
import torch
import transformers
from tiny_models import loaded, make_config, make_model, make_wide_llama

from specdec import GenerationConfig, SpeculationConfig, SpeculativeEngine
from specdec.decoder import HFDecoder
from specdec.decoders import make_decoder
from specdec.errors import ConfigError, UnsupportedModelError
from specdec.fast.decoder import FastDecoder

FAST_FAMILIES = ("llama", "qwen2", "gpt2")
PATH = {"llama": "fast-llama", "qwen2": "fast-llama", "gpt2": "fast-gpt2"}
PROMPTS = [[5, 17, 99, 240, 31, 8], [250, 4, 4, 61, 9, 13, 200, 77, 120, 3, 45]]


def reference(model, prompt: list[int], max_new: int) -> list[int]:
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new, do_sample=False)
    return out[0, len(prompt) :].tolist()


@pytest.mark.parametrize("family", FAST_FAMILIES)
def test_fast_forward_matches_transformers_with_padding_and_rollback(family):
    model = make_model(family, seed=3)
    fast, generic = FastDecoder(loaded(model, "m")), HFDecoder(loaded(model, "m"))
    pads = torch.tensor([0, 3])
    mask = (torch.arange(20)[None, :] >= pads[:, None]).long()
    ids = torch.randint(3, 300, (2, 12))
    for decoder in (fast, generic):
        decoder.prepare(pads, mask, 20)
    prefill = [d.forward(ids[:, :8], last_only=True) for d in (fast, generic)]
    torch.testing.assert_close(prefill[0], prefill[1], rtol=1e-4, atol=1e-4)
    steps = [d.forward(ids[:, 8:12]) for d in (fast, generic)]  # a 4-token verification-like forward
    torch.testing.assert_close(steps[0], steps[1], rtol=1e-4, atol=1e-4)
    for decoder in (fast, generic):
        decoder.rollback(9)
    again = [d.forward(ids[:, 9:11]) for d in (fast, generic)]
    torch.testing.assert_close(again[0], again[1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(again[0], steps[0][:, 1:3], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", FAST_FAMILIES)
@pytest.mark.parametrize("k", [1, 3, 6])
def test_fast_path_speculation_equals_generate(family, k):
    target = make_model(family, seed=4)
    engine = SpeculativeEngine(loaded(target, "t"), loaded(make_model(family, seed=5, layers=1), "d"), "fast")
    assert engine.target.path == PATH[family]
    for prompt in PROMPTS:
        result = engine.generate(prompt, GenerationConfig(max_new_tokens=20), SpeculationConfig(k=k))
        assert result.token_ids[0] == reference(target, prompt, 20)
        assert result.metrics.decoder_path == PATH[family]
    same = SpeculativeEngine(loaded(target, "t"), loaded(target, "same"), "fast")
    result = same.generate(PROMPTS[0], GenerationConfig(max_new_tokens=20), SpeculationConfig(k=k))
    assert result.token_ids[0] == reference(target, PROMPTS[0], 20)


def test_a_model_of_the_8b_widths_decodes_as_generate():
    """Hidden 4096 and heads of 128: the one-token products take their wide tiles (in Triton's interpreter with
    TRITON_INTERPRET=1; the references otherwise), and greedy decoding equals ``generate`` in float32."""
    model = make_wide_llama(seed=8)
    result = SpeculativeEngine(loaded(model, "wide"), decoder="fast").generate(
        PROMPTS[1], GenerationConfig(max_new_tokens=5)
    )
    assert result.metrics.decoder_path == "fast-llama"
    assert result.token_ids[0] == reference(model, PROMPTS[1], 5)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_padded_prefill_computes_the_unpadded_one(family):
    """A prefill longer than a graph's 16 tokens runs padded to a multiple of 64 (on CUDA from a graph per width;
    here the same padding, eagerly): the last token's logits and every prompt column's keys are the unpadded
    prefill's, the cache's length is the prompt's, and decoding after it reads none of the padding. Near the run's
    position limit the padding stops at the limit (GPT-2's learned positions end there)."""
    model = make_model(family, seed=11)
    ids = torch.randint(3, 300, (2, 70))
    pads = torch.tensor([0, 5])
    mask = (torch.arange(90)[None, :] >= pads[:, None]).long()
    results = []
    for pad_prefill, max_length in ((False, 90), (True, 90), (True, 75)):
        decoder = FastDecoder(loaded(model, "m"))
        decoder.pad_prefill = pad_prefill
        decoder.prepare(pads, mask[:, :max_length], max_length)
        first = decoder.forward(ids[:, :67], last_only=True)  # padded to 128, or to the limit of 75
        assert first.shape == (2, 1, decoder.vocab_size) and decoder.cache_length == 67
        keys = decoder._cache[0][..., :67, :].clone()
        steps = decoder.forward(ids[:, 67:70])  # reads columns 0..69: the padding's 67.. were overwritten
        results.append((first, keys, steps))
    for first, keys, steps in results[1:]:
        torch.testing.assert_close(first, results[0][0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(keys, results[0][1], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(steps, results[0][2], rtol=1e-5, atol=1e-5)
    generic = HFDecoder(loaded(model, "m"))
    generic.prepare(pads, mask, 90)
    torch.testing.assert_close(results[1][0], generic.forward(ids[:, :67], last_only=True), rtol=1e-4, atol=1e-4)


def test_only_prefills_of_few_tokens_are_padded():
    """Widths are multiples of 64 up to the run's position limit; past 1024 tokens in all rows a prefill runs
    unpadded (eagerly, on CUDA too)."""
    decoder = FastDecoder(loaded(make_model("llama", seed=1), "m"))
    decoder.prepare(torch.zeros(1, dtype=torch.long), None, 300)
    assert [decoder._prefill_width(1, seq) for seq in (17, 64, 65, 250, 290)] == [64, 64, 128, 256, 300]
    assert decoder._prefill_width(8, 128) == 128 and decoder._prefill_width(9, 128) is None
    decoder.prepare(torch.zeros(1, dtype=torch.long), None, 1100)
    assert decoder._prefill_width(1, 1000) == 1024 and decoder._prefill_width(1, 1025) is None


def test_generation_after_a_padded_prefill_equals_generate():
    """The engine's own prefill (and its draft's) padded, then greedy decoding with and without speculation."""
    model = make_model("llama", seed=12)
    alone = SpeculativeEngine(loaded(model, "t"), decoder="fast")
    paired = SpeculativeEngine(loaded(model, "t"), loaded(make_model("llama", seed=13, layers=1), "d"), "fast")
    for decoder in (alone.target, paired.target, paired.drafter.decoder):  # type: ignore[union-attr]
        decoder.pad_prefill = True
    prompt = torch.randint(3, 300, (40,), generator=torch.Generator().manual_seed(0)).tolist()
    want = reference(model, prompt, 24)
    assert alone.generate(prompt, GenerationConfig(max_new_tokens=24)).token_ids[0] == want
    result = paired.generate(prompt, GenerationConfig(max_new_tokens=24), SpeculationConfig(k=3))
    assert result.token_ids[0] == want


def test_fast_path_batch_with_padding_equals_each_rows_greedy_output():
    target = make_model("llama", seed=6)
    engine = SpeculativeEngine(loaded(target, "t"), loaded(make_model("llama", seed=7, layers=1), "d"), "fast")
    result = engine.generate(PROMPTS, GenerationConfig(max_new_tokens=16), SpeculationConfig(k=3))
    for prompt, got in zip(PROMPTS, result.token_ids, strict=True):
        assert got == reference(target, prompt, 16)


def test_architectures_without_a_fast_path_say_so_or_fall_back():
    neox = loaded(make_model("gpt_neox", seed=1), "neox-tiny")
    with pytest.raises(UnsupportedModelError, match="model type 'gpt_neox' has no fast path"):
        make_decoder(neox, choice="fast")
    assert make_decoder(neox, choice="auto").path == "generic"
    for family in FAST_FAMILIES:
        model = loaded(make_model(family, seed=1), f"{family}-tiny")
        assert make_decoder(model, choice="auto").path == PATH[family]
        assert make_decoder(model, choice="generic").path == "generic"
    gpt2 = make_model("gpt2", seed=1)
    gpt2.config.activation_function = "relu"
    with pytest.raises(UnsupportedModelError, match="activation 'relu'"):
        make_decoder(loaded(gpt2, "relu-gpt2"), choice="fast")


def test_gpt2_positions_beyond_its_table_are_refused_by_name():
    gpt2 = loaded(make_model("gpt2", seed=1), "gpt2-tiny")  # 512 learned positions
    decoder = FastDecoder(gpt2)
    with pytest.raises(ConfigError, match="'gpt2-tiny' has 512 learned positions, fewer than the 520"):
        decoder.prepare(torch.zeros(1, dtype=torch.long), None, 520)
    decoder.prepare(torch.zeros(1, dtype=torch.long), None, 512)  # the whole table is fine


def test_alternating_batch_sizes_do_not_grow_the_cache():
    decoder = FastDecoder(loaded(make_model("llama", seed=1), "m"))
    for batch in [1, 3] * 12:  # each change of batch size reallocates; it must not double the last capacity
        decoder.prepare(torch.zeros(batch, dtype=torch.long), None, 40)
    assert decoder._cache is not None and decoder._cache[0].shape[3] == 40
    decoder.prepare(torch.zeros(3, dtype=torch.long), None, 41)  # a longer run of the same batch size doubles
    assert decoder._cache[0].shape[3] == 80


@pytest.mark.parametrize("draft", [True, False], ids=["speculative", "autoregressive"])
def test_greedy_steps_verify_with_their_forward(draft):
    """A greedy lockstep step hands the verification to the forward (``forward_then``: one graph on CUDA) rather
    than verifying the returned logits from the host; the tokens stay the target's own greedy ones."""
    target = make_model("llama", seed=4)
    drafter = loaded(make_model("llama", seed=5, layers=1), "d") if draft else None
    engine = SpeculativeEngine(loaded(target, "t"), drafter, "fast")
    calls = {"forward": 0, "forward_then": 0}
    for name in calls:
        real = getattr(engine.target, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        setattr(engine.target, name, counted)
    result = engine.generate(PROMPTS[0], GenerationConfig(max_new_tokens=12), SpeculationConfig(k=3))
    assert result.token_ids[0] == reference(target, PROMPTS[0], 12)
    assert calls == {"forward": 1, "forward_then": result.metrics.steps}  # the prefill, then one per step


def test_the_triton_kernels_refuse_a_head_size_that_is_not_a_power_of_two():
    """Their head loops need a power of two: a Llama-family model with heads of 24 takes the generic path where the
    Triton kernels would run (``auto``; ``fast`` says why), and keeps the fast path on the reference kernels."""
    from specdec.fast import llama
    from specdec.fast.models import unsupported_reason

    model = transformers.AutoModelForCausalLM.from_config(make_config("llama", hidden=96), dtype=torch.float32)
    assert llama.unsupported_reason(model, triton=False) is None
    assert "head size 24 is not a power of two" in (llama.unsupported_reason(model, triton=True) or "")
    with_triton = unsupported_reason(model, torch.device("cpu")) is not None
    assert make_decoder(loaded(model, "heads-24"), choice="auto").path == ("generic" if with_triton else "fast-llama")
