"""CUDA checks of the fast path: CUDA graphs, Triton kernels and exactness. Skipped without a CUDA GPU.

Run on the device with `bash scripts/gpu_check.sh` (which also runs the GPU benchmark).
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import loaded, make_model, make_wide_llama

from specdec import GenerationConfig, SpeculationConfig, SpeculativeEngine
from specdec.decoder import HFDecoder
from specdec.fast.decoder import FastDecoder

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
CUDA = torch.device("cuda")
PROMPTS = [[5, 17, 99, 240, 31, 8], [250, 4, 4, 61, 9, 13, 200, 77, 120, 3, 45], [42, 7]]


@pytest.fixture(autouse=True)
def no_tf32():
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def on_cuda(model, name, dtype=torch.float32):
    model = model.to(CUDA, dtype)
    lm = loaded(model, name)
    return type(lm)(name=name, model=model, tokenizer=None, device=CUDA, dtype=dtype, source="local")


def autoregressive(target, prompt, max_new, dtype=torch.float32):
    engine = SpeculativeEngine(target)
    return engine.generate(prompt, GenerationConfig(max_new_tokens=max_new)).token_ids[0]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_graph_replay_equals_eager_and_generic(family):
    model = on_cuda(make_model(family, seed=1, layers=3), "m")
    graphed, eager, generic = FastDecoder(model), FastDecoder(model, use_graphs=False), HFDecoder(model)
    ids = torch.randint(3, 300, (1, 40), device=CUDA)
    outputs = []
    for decoder in (graphed, eager, generic):
        decoder.prepare(torch.zeros(1, dtype=torch.long, device=CUDA), None, 64)
        decoder.forward(ids[:, :20])
        steps = [decoder.forward(ids[:, i : i + 3]).clone() for i in (20, 23, 26)]  # capture, then replay
        decoder.rollback(24)
        steps.append(decoder.forward(ids[:, 24:27]).clone())
        outputs.append(torch.stack(steps))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outputs[0], outputs[2], rtol=1e-4, atol=1e-4)


def test_a_model_of_the_8b_widths_decodes_as_generate_on_cuda():
    """Hidden 4096 and heads of 128, float32: the Triton one-token products with their wide tiles, in CUDA graphs,
    give transformers' own greedy tokens."""
    model = on_cuda(make_wide_llama(seed=8), "wide")
    ids = torch.tensor([PROMPTS[1]], device=CUDA)
    expected = model.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False)
    result = SpeculativeEngine(model, decoder="fast").generate(PROMPTS[1], GenerationConfig(max_new_tokens=8))
    assert result.metrics.decoder_path == "fast-llama"
    assert result.token_ids[0] == expected[0, len(PROMPTS[1]) :].tolist()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_long_prompts_prefill_from_padded_graphs_as_generate(family):
    """Prompts of 40 and 100 tokens prefill padded to 64 and 128, each width from its graph (one memory pool), and
    greedy decoding after them (alone and speculative) gives transformers' tokens in float32. In bfloat16 the
    graphed prefill's logits are the eager unpadded ones' up to bf16 rounding."""
    model = make_model(family, seed=21, layers=3)
    target = on_cuda(model, "t")
    engine = SpeculativeEngine(target, on_cuda(make_model(family, seed=22, layers=1), "d"))
    alone = SpeculativeEngine(target)
    g = torch.Generator().manual_seed(1)
    for length in (40, 100, 40):
        prompt = torch.randint(3, 300, (length,), generator=g).tolist()
        ids = torch.tensor([prompt], device=CUDA)
        expected = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False)
        want = expected[0, length:].tolist()
        assert alone.generate(prompt, GenerationConfig(max_new_tokens=16)).token_ids[0] == want
        result = engine.generate(prompt, GenerationConfig(max_new_tokens=16), SpeculationConfig(k=3))
        assert result.token_ids[0] == want
    assert len(alone.target._prefill_graphs) == 2  # widths 64 and 128, the second 40 replayed
    bf16 = on_cuda(make_model(family, seed=21, layers=3), "b", torch.bfloat16)
    graphed, eager = FastDecoder(bf16), FastDecoder(bf16)
    eager.pad_prefill = False
    ids = torch.randint(3, 300, (1, 100), generator=g).to(CUDA)
    logits = []
    for decoder in (graphed, eager):
        decoder.prepare(torch.zeros(1, dtype=torch.long), None, 120)
        decoder.forward(ids, last_only=True)  # the first call captures
        decoder.rollback(0)
        logits.append(decoder.forward(ids, last_only=True).clone())
    assert len(graphed._prefill_graphs) == 1 and len(eager._prefill_graphs) == 0
    torch.testing.assert_close(logits[0], logits[1], rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize(
    ("family", "draft_family", "path"), [("llama", "qwen2", "fast-llama"), ("gpt2", "gpt2", "fast-gpt2")]
)
@pytest.mark.parametrize("k", range(1, 9))
def test_float32_speculative_equals_autoregressive_on_cuda(family, draft_family, path, k):
    target = on_cuda(make_model(family, seed=2, layers=3), "t")
    draft = on_cuda(make_model(draft_family, seed=3, layers=1), "d")
    engine = SpeculativeEngine(target, draft)
    assert engine.target.path == path and engine.kernels.name == "triton"
    for prompt in PROMPTS:
        want = autoregressive(target, prompt, 40)
        got = engine.generate(prompt, GenerationConfig(max_new_tokens=40), SpeculationConfig(k=k))
        assert got.token_ids[0] == want
        assert got.metrics.verifier_backend == "triton"
    batch = engine.generate(PROMPTS, GenerationConfig(max_new_tokens=24), SpeculationConfig(k=k))
    for prompt, row in zip(PROMPTS, batch.token_ids, strict=True):
        assert row == autoregressive(target, prompt, 24)


def first_divergence(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)


def divergences(target, draft, prompts, max_new: int) -> list[tuple[int, int | None, float | None]]:
    """Per prompt: (prompt length, first position where speculative and autoregressive greedy outputs differ or
    None, the target's top-2 logit gap at that position). Asserts that every divergence sits at a near tie."""
    engine = SpeculativeEngine(target, draft)
    rows = []
    for prompt in prompts:
        want = autoregressive(target, prompt, max_new)
        got = engine.generate(prompt, GenerationConfig(max_new_tokens=max_new), SpeculationConfig(k=4)).token_ids[0]
        where, gap = first_divergence(want, got), None
        if where is not None:  # the target's margin between its top two choices at that step
            context = torch.tensor([prompt + want[:where]], device=CUDA)
            top2 = target.model(context).logits[0, -1].float().topk(2).values
            gap = float(top2[0] - top2[1])
        rows.append((len(prompt), where, gap))
    return rows


def test_bfloat16_agreement_is_measured_and_its_differences_are_numerical(capsys):
    """In bf16, speculative and autoregressive outputs may part where the target's top two logits (nearly) tie
    (the (K + 1)-token verification and the one-token step round differently); the same pairs and prompts agree
    exactly in float32."""
    from specdec import load_model
    from specdec.zoo.prompts import load_prompts

    base_target, base_draft = make_model("llama", seed=4, layers=4), make_model("llama", seed=5, layers=1)
    random_prompts = [
        torch.randint(3, 300, (n,), generator=torch.Generator().manual_seed(n)).tolist() for n in (8, 16, 32)
    ]
    report = {}
    for dtype in (torch.float32, torch.bfloat16):
        target, draft = on_cuda(base_target, "t", dtype), on_cuda(base_draft, "d", dtype)
        report[f"random models {dtype}"] = divergences(target, draft, random_prompts, 64)
        zoo = [load_model(f"zoo:tiny-code-{role}", device="cuda", dtype=dtype) for role in ("target", "draft")]
        prompts = [zoo[0].tokenizer(text).input_ids for text in load_prompts()[:16]]
        report[f"zoo pair {dtype}"] = divergences(zoo[0], zoo[1], prompts, 96)
    for name, rows in report.items():
        if "float32" in name:
            assert all(where is None for _, where, _ in rows), f"{name}: float32 must agree exactly: {rows}"
        else:
            ties = [gap for _, where, gap in rows if where is not None]
            assert all(gap <= 0.25 for gap in ties), f"{name}: a divergence away from a near tie: {rows}"
    with capsys.disabled():
        print("\nfirst divergence per prompt, bf16 (prompt length, position or None, target's top-2 logit gap):")
        for name, rows in report.items():
            if "bfloat16" in name:
                diverged = sum(where is not None for _, where, _ in rows)
                print(f"  {name}: {diverged} of {len(rows)} prompts diverged: {rows}")


def test_float32_speculative_equals_autoregressive_on_the_zoo_pair():
    from specdec import load_model
    from specdec.zoo.prompts import load_prompts

    target = load_model("zoo:tiny-code-target", device="cuda", dtype="float32")
    draft = load_model("zoo:tiny-code-draft", device="cuda", dtype="float32")
    engine, baseline = SpeculativeEngine(target, draft), SpeculativeEngine(target)
    accepted = drafted = 0
    for prompt in load_prompts()[:12]:
        want = baseline.generate(prompt, GenerationConfig(max_new_tokens=48)).token_ids
        got = engine.generate(prompt, GenerationConfig(max_new_tokens=48), SpeculationConfig(k=4))
        assert got.token_ids == want
        accepted, drafted = accepted + got.metrics.accepted_tokens, drafted + got.metrics.drafted_tokens
    assert accepted / drafted > 0.5


def test_draft_chains_drafted_ahead_are_the_chains_drafted_in_place_on_cuda(monkeypatch):
    """On CUDA a draft model drafts its next chain ahead of the verdict (with SPECDEC_DRAFT_AHEAD=1): the same
    greedy output and the same accepted count at every step as drafting in place, from graphs that start at a device
    length."""
    from ahead_spy import counting_ahead

    from specdec import load_model
    from specdec.zoo.prompts import load_prompts

    target = load_model("zoo:tiny-code-target", device="cuda", dtype="float32")
    draft = load_model("zoo:tiny-code-draft", device="cuda", dtype="float32")
    monkeypatch.setenv("SPECDEC_DRAFT_AHEAD", "1")
    ahead = SpeculativeEngine(target, draft)
    monkeypatch.setenv("SPECDEC_DRAFT_AHEAD", "0")
    plain = SpeculativeEngine(target, draft)
    assert ahead.drafter.ahead and not plain.drafter.ahead  # type: ignore[union-attr]
    calls = counting_ahead(ahead)
    for prompt in load_prompts()[:6]:
        config = GenerationConfig(max_new_tokens=64, stop_at_eos=False)
        expected = plain.generate(prompt, config, SpeculationConfig(k=4))
        got = ahead.generate(prompt, config, SpeculationConfig(k=4))
        assert got.token_ids == expected.token_ids
        assert [s.accepted for s in got.steps] == [s.accepted for s in expected.steps]
    assert calls.count(True) > 20 and all(calls)


def test_greedy_chain_graph_equals_a_loop_of_forwards():
    model = on_cuda(make_model("llama", seed=9, layers=2), "m")
    graphed, eager = FastDecoder(model), FastDecoder(model, use_graphs=False)
    ids = torch.randint(3, 300, (2, 30), device=CUDA)
    chains = []
    for decoder in (graphed, eager):
        decoder.prepare(torch.zeros(2, dtype=torch.long, device=CUDA), None, 64)
        decoder.forward(ids[:, :20])
        first = decoder.greedy_chain(ids[:, 20:22], 4).clone()  # captured
        decoder.rollback(21)
        second = decoder.greedy_chain(ids[:, 21:22], 4).clone()
        decoder.rollback(22)
        third = decoder.greedy_chain(ids[:, 22:23], 4).clone()  # replayed (the (1, 4) chain exists now)
        assert decoder.cache_length == 22 + 4
        chains.append((first, second, third))
    for ours, reference in zip(*chains, strict=True):
        assert torch.equal(ours, reference)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_dependent_launch_changes_no_result(family, monkeypatch):
    """One-token steps in CUDA graphs, bf16, with the kernels launched as dependents (each reads its first weight
    tile before the kernel before it has finished) and without: the same arithmetic, so the same bits."""
    from specdec.kernels import dependent_launch

    if not dependent_launch.supported(CUDA):
        pytest.skip("programmatic dependent launch needs Hopper or later and Triton 3.3")
    model = on_cuda(make_model(family, seed=2, layers=3), "m", torch.bfloat16)
    ids = torch.randint(3, 300, (1, 30), device=CUDA)
    outputs = []
    for setting in ("0", "1"):
        monkeypatch.setenv(dependent_launch.ENV_PDL, setting)
        decoder = FastDecoder(model)
        decoder.prepare(torch.zeros(1, dtype=torch.long, device=CUDA), None, 64)
        decoder.forward(ids[:, :20])
        outputs.append(torch.stack([decoder.forward(ids[:, i : i + 1]).clone() for i in range(20, 30)]))
    assert torch.equal(outputs[0], outputs[1])


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_autoregressive_batches_stop_at_eos_read_every_sixteen_steps(family):
    """Autoregressive steps on CUDA commit their tokens without a sync and read EOS flags every ``EOS_CHECK_EVERY``
    steps from the history: a left-padded batch in float32, with an EOS that one row meets in its second window,
    gives each row ``generate``'s tokens, cut at that EOS; so does streaming, which reads every step."""
    model = make_model(family, seed=11, layers=2)

    def greedy(prompt: list[int]) -> list[int]:  # transformers' generate on the CPU
        ids = torch.tensor([prompt])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=40, do_sample=False)
        return out[0, len(prompt) :].tolist()

    model.generation_config.eos_token_id = model.config.eos_token_id = None
    free = greedy(PROMPTS[1])
    cut = next(i for i in range(16, len(free)) if free.index(free[i]) == i)  # a token new to the row's second window
    model.generation_config.eos_token_id = model.config.eos_token_id = free[cut]
    expected = [greedy(prompt) for prompt in PROMPTS]
    assert len(expected[1]) == cut + 1
    engine = SpeculativeEngine(on_cuda(model, family))
    assert engine.target.path.startswith("fast")
    generation = GenerationConfig(max_new_tokens=40)
    assert engine.generate(PROMPTS, generation).token_ids == expected
    streamed: list[list[int]] = [[] for _ in PROMPTS]
    for fresh in engine.stream(PROMPTS, generation):
        for row, tokens in enumerate(fresh):
            streamed[row] += tokens
    assert streamed == expected
