"""transformers' modes on CUDA (specdec/hf_engine.py): the static cache alone and with transformers' torch.compile
(CUDA graphs) give the target's greedy output, the forward hook still counts every forward inside the compiled step
without making it recompile, and the speed report's HF figures name the strongest mode. Skipped without a CUDA GPU.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import loaded, make_model

from specdec import GenerationConfig, SpeculativeEngine
from specdec.benchmarks.gpu import hf_figures
from specdec.hf_engine import HF_COMPILE, HF_STATIC, HFEngine

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
CUDA = torch.device("cuda")
MAX_NEW = 24
PROMPT = [5, 17, 99, 240, 31, 8]
FIXED = GenerationConfig(max_new_tokens=MAX_NEW, stop_at_eos=False)


@pytest.fixture(autouse=True)
def no_tf32():
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def on_cuda(model, name):
    lm = loaded(model.to(CUDA), name)
    return type(lm)(name=name, model=lm.model, tokenizer=None, device=CUDA, dtype=torch.float32, source="local")


def test_static_and_compiled_generate_give_the_target_s_greedy_output_and_count_every_forward():
    from torch._dynamo.utils import counters

    target = on_cuda(make_model("llama", seed=3, layers=2), "llama")
    want = SpeculativeEngine(target).generate(PROMPT, FIXED).token_ids
    for mode in (HF_STATIC, HF_COMPILE):
        engine = HFEngine(target, mode)
        for call in range(3):  # compile, record CUDA graphs, replay
            if call == 2:
                graphs = counters["stats"]["unique_graphs"]
            result = engine.generate(PROMPT, FIXED)
            assert result.token_ids == want, (mode, call)
            assert result.metrics.target_forwards == MAX_NEW, (mode, call)
            assert result.metrics.time_to_first_token_s is not None
        assert counters["stats"]["unique_graphs"] == graphs  # the hook made nothing recompile


def test_the_engine_s_graphs_survive_hf_static_then_hf_compile_on_the_same_model():
    # the engines-gpu suite's order, in a process of its own (an illegal memory access would poison this one);
    # the script interleaves the engine with hf-static, then hf-compile, over prompts of different lengths. Before
    # hf-compile made the engine re-capture its graphs (specdec.fast.graphs.invalidate_all), this crashed on the H200
    # (torch 2.11, transformers 5.17)
    root = Path(__file__).parent.parent
    script = root / "scripts" / "diag" / "hf_compile_bisect.py"
    run = subprocess.run(
        [sys.executable, str(script), "no-zoo-pair"], cwd=root, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout + run.stderr[-2000:]


def test_the_speed_report_quotes_the_strongest_transformers_mode():
    target = on_cuda(make_model("llama", seed=3, layers=2), "llama")
    draft = on_cuda(make_model("llama", seed=4, layers=1), "draft")
    row = hf_figures(target, PROMPT, FIXED, draft, 3)
    measured = {m: row[f"{m.replace('-', '_')}_tokens_per_s"] for m in ("hf-static", "hf-compile", "hf-assisted")}
    assert measured["hf-static"] and measured["hf-assisted"]
    assert measured["hf-compile"] or row["hf_compile_unavailable"]
    assert row["hf_best"] == max((m for m in measured if measured[m]), key=lambda m: measured[m])
    assert row["hf_assisted_acceptance"] is not None and row["hf_assisted_tokens_per_forward"] >= 1.0
