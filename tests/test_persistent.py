"""The persistent step (one kernel per token, grid barriers between phases) computes the fast forward's step, for
GPT-2 and the Llama family (Qwen2's q/k/v biases included).

Runs on CUDA; on a CPU only in Triton's interpreter (``TRITON_INTERPRET=1`` with triton installed), where programs
run one after another: there the whole step runs as one program, and the work split over several programs is
checked with one launch per phase. The grid barrier itself runs on CUDA only.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import transformers
from tiny_models import loaded, make_config, make_model

import specdec.generation as generation_module
from specdec import GenerationConfig, SpeculationConfig, SpeculativeEngine
from specdec.fast.decoder import FastDecoder
from specdec.kernels import triton_runs_on
from specdec.loading import LoadedModel

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
pytestmark = pytest.mark.skipif(
    not triton_runs_on(DEVICE), reason="Triton kernels need a CUDA GPU (or TRITON_INTERPRET=1 with triton installed)"
)

# Small tiles and splits, so that the tiny model's products take several tiles per program and its attention several
# splits; the barrier's shape (every SM) only where barriers run. Several programs load two tiles before a phase's
# barrier, one program one; without barriers the tiles after those are read one ahead into registers (stages 0).
# Several programs merge each head's attention splits in the attention phase, one program in the output product's.
SMALL_TILES = dict(tile_elements=512, split_keys=8, max_splits=4, block_keys=8, head_tile_elements=1024)
SHAPES = {
    "one program": dict(SMALL_TILES, programs=1, stages=0),
    "phase launches": dict(
        SMALL_TILES, programs=3, phase_launches=True, early_tiles=2, stages=0, merge_in_attention=True
    ),
    "grid barrier": dict(SMALL_TILES, early_tiles=2, merge_in_attention=True),
}
# The MLP as one phase, summed across programs (float32 atomics): small tiles, so that programs share its units.
FUSED = dict(fused_mlp=True, mlp_tile_elements=256)
SHAPES |= {f"{name}, fused MLP": {**shape, **FUSED} for name, shape in SHAPES.items()}


def on_device(model, name: str, dtype: torch.dtype = torch.float32) -> LoadedModel:
    return dataclasses.replace(loaded(model.to(device=DEVICE, dtype=dtype), name), device=DEVICE, dtype=dtype)


FAMILIES = ("gpt2", "llama", "qwen2")


def prompt_and_decoder(family: str, dtype: torch.dtype, layers: int = 2) -> tuple[torch.Tensor, FastDecoder]:
    model = make_model(family, seed=3, layers=layers)
    decoder = FastDecoder(on_device(model, f"{family}-tiny", dtype), use_graphs=False)
    assert decoder.kernels.name == "triton"
    ids = torch.randint(3, 300, (1, 30), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    mask = torch.ones((1, 20), dtype=torch.long)
    mask[0, 2:4] = 0  # two keys the queries must not see
    decoder.prepare(torch.tensor([0]), mask, 40)
    decoder.forward(ids[:, :20], last_only=True)
    return ids, decoder


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16] if DEVICE.type == "cuda" else [torch.float32])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("family", FAMILIES)
def test_persistent_step_equals_the_fast_forward(family, shape, dtype):
    from specdec.kernels import triton_persistent

    if shape.startswith("grid barrier") and DEVICE.type != "cuda":
        pytest.skip("a grid barrier waits forever in Triton's interpreter (programs run one after another)")
    # The fused MLP's sums alternate between two buffers: a third layer reuses the first's, which must be cleared.
    ids, decoder = prompt_and_decoder(family, dtype, layers=3 if "fused" in shape else 2)
    fast = decoder.model
    step = triton_persistent.persistent_step(fast, triton_persistent.PersistentShape(**SHAPES[shape]))
    tables = (fast.cos_table, fast.sin_table) if family != "gpt2" else ()
    assert decoder._cache is not None
    cache = decoder._cache
    tolerance = 2e-5 if dtype == torch.float32 else 3e-2
    for column in range(20, 26):  # the cache crosses a split (8 keys) on the way
        columns = torch.tensor([column], device=DEVICE)
        positions = decoder._positions.index_select(1, columns)
        token = ids[:, column : column + 1]
        before = [c.clone() for c in cache]
        length = torch.tensor(column, device=DEVICE)
        logits = step(token, length, decoder._positions, decoder._key_valid, cache, fast.num_layers, *tables)
        assert logits.dtype == torch.float32 and length.item() == column + 1  # the step advanced the length
        written = [c[..., column, :].clone() for c in cache]
        for c, saved in zip(cache, before, strict=True):
            c.copy_(saved)
        expected, _ = fast.run(token, columns, positions, decoder._key_valid, cache, True)
        scale = expected.float().abs().max()
        assert (logits.float() - expected.float()).abs().max() <= tolerance * scale, f"column {column}"
        for got, want in zip(written, (c[..., column, :] for c in cache), strict=True):  # keys, values: [L, 1, H, Dh]
            # Relative to each layer's largest value: in bfloat16 one element of a later layer may land a few ulps
            # away (another summation order in the layer before), as the logits may (seen on the H200).
            scale = want.float().abs().amax(dim=(1, 2, 3), keepdim=True)
            assert ((got.float() - want.float()).abs() <= tolerance * scale).all(), f"cache at column {column}"
    if DEVICE.type == "cuda":
        assert not step.failed()


def reference(model, prompt: list[int], max_new: int) -> list[int]:
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new, do_sample=False)
    return out[0, len(prompt) :].tolist()


@pytest.mark.parametrize("setting", ["1", "fused"])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_generation_through_the_persistent_step_equals_generate(family, setting, monkeypatch):
    """Autoregressive decoding (every step persistent; one at a time, and in chunks) and speculative decoding (the
    draft's one-token steps) keep the greedy output, graphs and all on CUDA."""
    monkeypatch.setenv("SPECDEC_PERSISTENT", setting)
    target = make_model(family, seed=4, layers=3)
    draft = make_model(family, seed=5, layers=1)
    prompt = [5, 17, 99, 240, 31, 8]
    expected = reference(target, prompt, 12)
    alone = SpeculativeEngine(on_device(target, "t"), decoder="fast")
    assert alone.target.model.persistent.shape.fused_mlp == (setting == "fused")
    assert alone.generate(prompt, GenerationConfig(max_new_tokens=12)).token_ids[0] == expected
    monkeypatch.setattr(generation_module, "AR_CHUNK_DEVICES", ("cpu", "cuda"))
    monkeypatch.setenv("SPECDEC_AR_CHUNK", "5")  # steps in chunks of 5 (one graph each on CUDA)
    assert alone.generate(prompt, GenerationConfig(max_new_tokens=12)).token_ids[0] == expected
    monkeypatch.delenv("SPECDEC_AR_CHUNK")
    pair = SpeculativeEngine(on_device(target, "t"), on_device(draft, "d"), "fast")
    result = pair.generate(prompt, GenerationConfig(max_new_tokens=12), SpeculationConfig(k=3))
    assert result.token_ids[0] == expected


def test_a_model_the_step_cannot_run_says_so():
    """A head size that is not a power of two (96 / 4 = 24) is refused by name, not miscomputed (the Triton fast path
    refuses it before, see test_fast_path; here the step is asked for directly)."""
    from specdec.errors import UnsupportedModelError
    from specdec.fast.llama import FastLlama
    from specdec.kernels import TORCH_KERNELS, triton_persistent

    model = transformers.AutoModelForCausalLM.from_config(make_config("llama", hidden=96), dtype=torch.float32)
    message = r"persistent step \(SPECDEC_PERSISTENT\) needs a power-of-two head size .* 24\); unset SPECDEC_PERSISTENT"
    with pytest.raises(UnsupportedModelError, match=message):
        triton_persistent.persistent_step(FastLlama(model, TORCH_KERNELS))


def test_a_barrier_that_waits_in_vain_gives_up_and_the_step_says_so():
    """Two programs in Triton's interpreter run one after the other, so the first waits at its first barrier for a
    program that has not started: it gives up once, which opens every later barrier for both programs (one give-up,
    not one per phase), and the step raises instead of returning what it computed; the counter is left ready for
    another launch."""
    from specdec.errors import DeviceError
    from specdec.kernels import triton_persistent

    if DEVICE.type == "cuda":
        pytest.skip("on a GPU both programs run at once")
    ids, decoder = prompt_and_decoder("llama", torch.float32)
    fast = decoder.model
    shape = triton_persistent.PersistentShape(**{**SHAPES["grid barrier"], "programs": 2})
    step = triton_persistent.persistent_step(fast, shape)
    assert decoder._cache is not None
    length = torch.tensor(20)
    message = r"grid barrier of the persistent step \(SPECDEC_PERSISTENT\) gave up .*\(1 of its programs\).* 2 programs"
    with pytest.raises(DeviceError, match=message):
        step(ids[:, 20:21], length, decoder._positions, decoder._key_valid, decoder._cache, fast.num_layers,
             fast.cos_table, fast.sin_table)  # fmt: skip
    assert step.counter.tolist() == [0] * (2 + fast.num_heads)  # the barrier, the error flag, the heads' merges


def test_the_setting_is_read_by_name(monkeypatch):
    from specdec.errors import ConfigError
    from specdec.kernels import triton_persistent

    monkeypatch.setenv("SPECDEC_PERSISTENT", "fused")
    assert triton_persistent.enabled() and triton_persistent.default_shape().fused_mlp
    monkeypatch.setenv("SPECDEC_PERSISTENT", "1")
    assert triton_persistent.enabled() and not triton_persistent.default_shape().fused_mlp
    monkeypatch.setenv("SPECDEC_PERSISTENT", "0")
    assert not triton_persistent.enabled()
    monkeypatch.setenv("SPECDEC_PERSISTENT", "yes")
    with pytest.raises(ConfigError, match="SPECDEC_PERSISTENT='yes': expected one of 0, 1, fused"):
        triton_persistent.enabled()


def test_the_shape_setting_names_fields_and_refuses_what_it_cannot_use(monkeypatch):
    from specdec.errors import ConfigError
    from specdec.kernels import triton_persistent

    monkeypatch.setenv("SPECDEC_PERSISTENT", "fused")
    monkeypatch.setenv("SPECDEC_PERSISTENT_SHAPE", " stages=0, early_tiles=2 programs_per_sm=2 ")
    shape = triton_persistent.default_shape()
    assert (shape.stages, shape.early_tiles, shape.programs_per_sm, shape.fused_mlp) == (0, 2, 2, True)
    monkeypatch.setenv("SPECDEC_PERSISTENT_SHAPE", "fused_mlp=0")
    assert not triton_persistent.default_shape().fused_mlp
    for value, message in [
        ("stage=0", "unknown field 'stage'; PersistentShape has programs, "),
        ("stages=two", "stages='two' is not an integer"),
        ("early_tiles=3", "early_tiles=3: expected 1, 2 or 4"),
        ("timeline=1 phase_launches=1", "timeline stamps the phases of one launch: unset phase_launches"),
    ]:
        monkeypatch.setenv("SPECDEC_PERSISTENT_SHAPE", value)
        with pytest.raises(ConfigError, match=f"SPECDEC_PERSISTENT_SHAPE: .*{message}"):
            triton_persistent.default_shape()


def test_phase_times_reads_a_timeline_by_kind_of_phase():
    """Two layers of five phases over three programs: phase r starts on program i at T[r] + i us, so from the last
    start of a phase to the next phase's starts is T[r + 1] - T[r] on the slowest program, 1 us less on the mean,
    2 us less on the first; each kind is averaged over its layers."""
    from specdec.kernels import triton_persistent

    gaps = torch.arange(1, 13, dtype=torch.float64)  # us from phase r's starts to phase r + 1's, r = 0 .. 11
    starts = torch.cat([torch.zeros(1, dtype=torch.float64), gaps.cumsum(0)])  # [13]: 12 phases and the end
    timeline = ((starts[:, None] + torch.arange(3.0)[None, :]) * 1000).to(torch.int64)  # [13, 3] ns
    times = triton_persistent.phase_times(timeline, 5)
    names = ["embed", "q/k/v", "attention", "o", "mlp in", "mlp out", "head"]
    assert [t.name for t in times] == names
    walls = [1.0, (2 + 7) / 2, (3 + 8) / 2, (4 + 9) / 2, (5 + 10) / 2, (6 + 11) / 2, 12.0]
    assert [t.wall for t in times] == pytest.approx(walls)
    assert [t.mean for t in times] == pytest.approx([w - 1 for w in walls])
    assert [t.first for t in times] == pytest.approx([w - 2 for w in walls])
    fused = triton_persistent.phase_times(timeline[:-2], 4)  # two layers of four phases: 11 rows
    assert [t.name for t in fused] == ["embed", "q/k/v", "attention", "o", "mlp", "head"]
    assert [t.wall for t in fused] == pytest.approx([1.0, (2 + 6) / 2, (3 + 7) / 2, (4 + 8) / 2, (5 + 9) / 2, 10.0])


def test_the_timeline_shows_every_barrier_holding_its_phase_back():
    """On CUDA, each program stamps the global timer as it starts each phase: no program starts a phase before every
    program has started the one before (its barrier), and the step's output is unchanged by the stamps. Elsewhere
    the timeline is refused by name (Triton's interpreter has no timer)."""
    from specdec.kernels import triton_persistent

    ids, decoder = prompt_and_decoder("llama", torch.float32)
    fast = decoder.model
    shape = triton_persistent.PersistentShape(**SHAPES["grid barrier"], timeline=True)
    if DEVICE.type != "cuda":
        with pytest.raises(ValueError, match="timeline reads the GPU's global timer: it runs on CUDA only"):
            triton_persistent.persistent_step(fast, shape)
        return
    stamped = triton_persistent.persistent_step(fast, shape)
    plain = triton_persistent.persistent_step(fast, dataclasses.replace(shape, timeline=False))
    assert decoder._cache is not None
    args = (decoder._positions, decoder._key_valid, decoder._cache, fast.num_layers, fast.cos_table, fast.sin_table)
    logits = [step(ids[:, 20:21], torch.tensor(20, device=DEVICE), *args).clone() for step in (stamped, plain)]
    assert torch.equal(logits[0], logits[1])
    stamps = stamped.timeline
    assert stamps is not None and stamps.shape == (2 + 5 * fast.num_layers + 1, stamped.programs)
    assert (stamps.diff(dim=0) >= 0).all()  # each program's phases in order
    # Phases 1 .. end have a barrier: a phase's first end comes after its last start.
    assert (stamps[2:].min(dim=1).values >= stamps[1:-1].max(dim=1).values).all()
    assert not stamped.failed()
