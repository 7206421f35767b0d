"""Continuous batching on the CUDA fast path (its CUDA graphs, the Triton kernels): requests that join a running
slot batch get their own greedy output, in float32 (tests/test_continuous_batching.py on the CPU)."""

from __future__ import annotations

import pytest
import torch
from test_continuous_batching import BUDGETS, MAX_NEW, REQUESTS, ROOM, alone, serve
from test_gpu import no_tf32, on_cuda  # noqa: F401  (no_tf32 is an autouse fixture)
from test_rowwise import perturbed
from tiny_models import make_model

from specdec import GenerationConfig, SpeculationConfig, SpeculativeEngine, make_drafter

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("drafter", ["none", "model", "ngram"])
def test_requests_that_join_get_their_own_output_on_cuda(family, drafter):
    model = make_model(family, seed=11, layers=4)
    draft = {"none": None, "model": on_cuda(perturbed(model, 0.02, seed=12), "draft"), "ngram": make_drafter("ngram")}
    engine = SpeculativeEngine(on_cuda(model, family), draft[drafter])
    assert engine.target.path != "generic"
    speculation = SpeculationConfig(k=4)
    expected = alone(engine, REQUESTS, BUDGETS, speculation)
    with engine.open_slots(3, ROOM, GenerationConfig(max_new_tokens=MAX_NEW), speculation) as run:
        got, _ = serve(run, REQUESTS, BUDGETS)
    assert got == expected
