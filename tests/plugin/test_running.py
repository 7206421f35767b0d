"""Running cases: what skips (and why), what fails alone, and that the plugin never waits on the network."""

from __future__ import annotations

import time

import pytest

SKIPS = """
defaults:
  max_new_tokens: 4
  rounds: 1
  warmup_rounds: 0
  prompts: ["def parse_args("]
cases:
  - name: local
    target: {target}
    draft: {same}
    k: 2
  - name: gpu
    target: {target}
    draft: {same}
    device: cuda
    dtype: fp16
  - name: hub
    target: some-org/not-a-cached-model
    draft: some-org/not-a-cached-draft
  - name: folder
    target: ./
"""  # a folder that exists but holds no model (a missing folder fails collection: see test_suite_checks.py)


def test_a_missing_device_and_a_missing_model_skip_with_their_reasons(bench):
    bench.suite(SKIPS)
    result = bench.run("--specdec-suite", "suite")
    result.assert_outcomes(passed=2, skipped=5)
    text = result.stdout.str()
    assert "cuda is not available on this machine (no usable CUDA GPU); deselect with -m 'not gpu'" in text
    assert "model 'some-org/not-a-cached-model' is not in the local Hugging Face cache" in text
    assert "hf download some-org/not-a-cached-model" in text  # how to get it
    assert "has no config.json, so it is not a Hugging Face model folder" in text


def test_a_failing_case_fails_alone_and_the_suite_goes_on(bench):
    bench.suite(
        """
defaults: {{rounds: 1, warmup_rounds: 0, prompts: ["def parse_args("]}}
cases:
  - name: ok
    target: {target}
    draft: {same}
    k: [1, 2]
    max_new_tokens: 4
  - name: too-long
    target: {target}
    draft: {same}
    max_new_tokens: 600
"""
    )
    result = bench.run("--specdec-suite", "suite")
    result.assert_outcomes(passed=3, failed=2)
    result.stdout.fnmatch_lines(["*ConfigError: prompt (* tokens) + max_new_tokens (600)*exceeds the context*"])


def _raising_at_k2(bench, error: str) -> None:
    """A suite of K 1, 2, 3 whose case at K 2 raises ``error`` (Python source of the exception) from generate."""
    bench.suite(
        """
defaults: {{rounds: 1, warmup_rounds: 0, max_new_tokens: 4, prompts: ["def parse_args("]}}
cases:
  - name: pair
    target: {target}
    draft: {same}
    k: [1, 2, 3]
"""
    )
    bench.pytester.makeconftest(
        f"""
import pytest
import torch
from specdec.engine import SpeculativeEngine


@pytest.fixture(autouse=True)
def _raise_at_k2(request, monkeypatch):
    if "k=2" in request.node.name:
        def generate(self, *args, **kwargs):
            raise {error}
        monkeypatch.setattr(SpeculativeEngine, "generate", generate)
"""
    )


def test_out_of_memory_fails_that_case_only(bench):
    _raising_at_k2(bench, 'torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")')
    result = bench.run("--specdec-suite", "suite")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*out of memory on cpu running pair?k=2,cpu,fp32,bs=1?: CUDA out of memory*"])


def test_hub_models_do_not_wait_for_the_network_by_default(bench, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    bench.suite(
        """
cases:
  - name: hub
    target: some-org/not-a-cached-model
    prompts: [hello]
"""
    )
    started = time.perf_counter()
    result = bench.run("--specdec-suite", "suite")
    assert time.perf_counter() - started < 20  # the hub client would retry for about a minute here
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*pass --specdec-allow-download to let it download them*"])


def test_without_a_suite_the_plugin_stays_out_of_the_way(bench):
    bench.pytester.makepyfile(
        """
import pytest

@pytest.mark.gpu
@pytest.mark.slow
def test_marked():
    pass
"""
    )
    result = bench.run("--strict-markers", "-m", "not mps", "-W", "error::pytest.PytestUnknownMarkWarning")
    result.assert_outcomes(passed=1)
    assert "specdec suites" not in result.stdout.str()
    result = bench.run("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.gpu: needs a CUDA GPU*", "@pytest.mark.mps: *", "@pytest.mark.slow: *"])


@pytest.mark.parametrize("given", ["tests", "nothing"])
def test_a_suite_replaces_the_testpaths_but_not_explicit_paths(bench, given):
    bench.suite(SKIPS)
    bench.pytester.makepyfile(test_unit="def test_unit():\n    pass\n")
    args = ["test_unit.py"] if given == "tests" else []
    result = bench.run("--specdec-suite", "suite", "--collect-only", "-q", *args)
    assert any("test_unit.py::test_unit" in line for line in result.outlines) == (given == "tests")
    assert any(line.startswith("bench_suites/suite.yaml::local[") for line in result.outlines)


def test_a_case_that_loses_the_device_fails_and_the_cases_after_it_on_that_device_skip(bench):
    """A sticky CUDA error (an illegal memory access) makes every later call on the device fail: the case that hit it
    fails with the error, the cases after it on that device skip saying why, and the session still ends cleanly."""
    _raising_at_k2(bench, 'torch.AcceleratorError("CUDA error: an illegal memory access was encountered")')
    result = bench.run("--specdec-suite", "suite")
    result.assert_outcomes(passed=2, failed=1, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "*AcceleratorError on cpu running pair?k=2,cpu,fp32,bs=1?: CUDA error: an illegal memory access*",
            "skipped (1 case): cpu is unusable for the rest of this session: pair?k=2,cpu,fp32,bs=1? lost the device*",
        ]
    )
