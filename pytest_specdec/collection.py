"""Suite files as pytest collectors and their cases as test items.

Each case is a ``pytest.Function`` whose body runs the case, so that fixtures (``benchmark``), markers, ``-k`` and
``-m`` work as for any test. A malformed suite fails its collection with the :class:`SuiteError` message only.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from pytest_specdec.baselines import BaselineError
from pytest_specdec.cases import AUTOREGRESSIVE, WARN_CASES, Case, expand, sweep_report
from pytest_specdec.errors import SuiteError
from pytest_specdec.session import BenchSession
from pytest_specdec.suite import SHORT_DTYPES, SPECDEC, parse_suite
from specdec.device import mps_available

SESSION_KEY = pytest.StashKey[BenchSession]()
DEVICE_MARKERS = {"cuda": "gpu", "mps": "mps"}


def device_missing(device: str) -> str | None:
    """Why ``device`` cannot run here (None when it can)."""
    base, _, index = device.partition(":")
    if base == "cuda":
        if not torch.cuda.is_available():
            return f"{device} is not available on this machine (no usable CUDA GPU); deselect with -m 'not gpu'"
        if index and int(index) >= torch.cuda.device_count():
            return f"{device} is not available on this machine ({torch.cuda.device_count()} CUDA GPUs)"
    if base == "mps" and not mps_available():
        return f"{device} is not available on this machine (no Apple MPS); deselect with -m 'not mps'"
    return None


def case_keywords(case: Case) -> set[str]:
    """Words ``-k`` can select on (its expressions cannot contain the ``=`` of ids): ``k4``, ``kauto``, ``ar``,
    ``bs2``, ``greedy``/``sampled``, the device (``cuda1``), the dtype (``fp16``), the policy (``synthetic`` too for
    synthetic acceptance), the drafting method
    (``model``, ``ngram``, ``suffix``, ``layerskip``), the suite and the entry.

    ``-k`` matches case-insensitive substrings of every name an item carries (these words, its id, its markers), so
    no word may sit inside a name that every case has: the dtype is only the short name (``float16`` is inside
    ``bfloat16``), and the benchmark group is set when the case runs, not with a ``benchmark`` marker (which
    contains ``ar``). Numbers are exact with ``-m``: see :func:`case_marker`.
    """
    words = {f"bs{case.batch_size}", "greedy" if case.generation.greedy else "sampled", case.device.replace(":", "")}
    words |= {SHORT_DTYPES[case.dtype], case.policy, case.suite, case.group}
    if case.synthetic is not None:  # its label (syn=0.8) holds an "=", which -k cannot write
        words.add(case.policy_name)
    if case.is_autoregressive:
        words.add(case.k_label)
    elif case.speculation is not None:
        words.add(f"k{case.k_label}")
    if case.draft_method is not None:
        words.add(case.draft_method)
    if case.engine != SPECDEC:  # hf-static, hf-compile, hf-assisted, hf-lookup (-k hf: all of them)
        words.add(case.engine)
    return words


def case_marker(case: Case) -> pytest.MarkDecorator:
    """The ``specdec`` marker with the case's values, for exact selection: ``-m "specdec(k=4)"`` (``k`` is an
    integer, ``'auto'`` or ``'ar'``), ``draft`` (the drafting method, ``'ar'`` for the autoregressive case), ``bs``,
    ``device``, ``dtype`` (short name), ``policy``, ``sampled``, ``n`` (new tokens), ``suite``, ``entry``, ``engine``
    (``specdec``, ``hf-static``, ...). transformers' ``hf-static`` and ``hf-compile`` cases have ``k=None`` and
    ``draft='none'``."""
    k: int | str | None = case.speculation.k if case.speculation and not case.speculation.adaptive else case.k_label
    if case.speculation is None and not case.is_autoregressive:
        k = None
    return pytest.mark.specdec(
        suite=case.suite,
        entry=case.group,
        engine=case.engine,
        k=k,
        draft=case.draft_method or (AUTOREGRESSIVE if case.is_autoregressive else "none"),
        bs=case.batch_size,
        device=case.device,
        dtype=SHORT_DTYPES[case.dtype],
        policy=case.policy,
        sampled=not case.generation.greedy,
        n=case.generation.max_new_tokens,
    )


def benchmark_group(case: Case) -> str:
    """pytest-benchmark's group: a speculative case sits with its autoregressive case."""
    return f"{case.suite}: {case.baseline_id or case.id}"


def run_case(request: pytest.FixtureRequest, benchmark: Any) -> None:
    """The body of every suite case (see :meth:`BenchSession.run_case`)."""
    item = request.node
    assert isinstance(item, CaseItem)
    benchmark.group = benchmark_group(item.case)
    request.config.stash[SESSION_KEY].run_case(item.case, benchmark)


class SuiteSizeWarning(pytest.PytestWarning):
    """A suite sweeps more than ``WARN_CASES`` cases."""


class CaseItem(pytest.Function):
    def __init__(self, *, case: Case, **kwargs: Any) -> None:
        super().__init__(callobj=run_case, **kwargs)
        self.case = case

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, (self.case.line - 1 if self.case.line else None), f"{self.case.suite}: {self.case.id}"


class SuiteFile(pytest.File):
    """A suite YAML file given with ``--specdec-suite``."""

    def collect(self) -> list[CaseItem]:
        session = self.config.stash[SESSION_KEY]
        try:
            suite = parse_suite(self.path)
            cases = expand(suite)
        except SuiteError as error:
            raise self.CollectError(f"invalid benchmark suite: {error}") from None
        if len(cases) > WARN_CASES:
            message = f"suite {suite.name} has {len(cases):,} cases (a run takes long): {sweep_report(suite)}"
            self.warn(SuiteSizeWarning(message))
        run = session.add_suite(suite.name, self.path)
        try:
            session.baselines(suite.name)  # a corrupt baseline file fails here, once, not in every case
        except BaselineError as error:
            raise self.CollectError(str(error)) from None
        declared = set(self.config.getini("markers"))
        items = []
        for case in cases:
            run.cases[case.id] = case
            item = CaseItem.from_parent(self, name=case.id, case=case)
            for name in case.markers:
                if not any(line.split(":", 1)[0].strip() == name for line in declared):
                    self.config.addinivalue_line("markers", f"{name}: declared by benchmark suite {suite.name}")
                    declared = set(self.config.getini("markers"))
                item.add_marker(name)
            base = case.device.partition(":")[0]
            if base in DEVICE_MARKERS:
                item.add_marker(DEVICE_MARKERS[base])
            item.add_marker(case_marker(case))
            item.extra_keyword_matches.update(case_keywords(case))
            missing = device_missing(case.device)
            if missing:
                item.add_marker(pytest.mark.skip(reason=missing))
            items.append(item)
        return items
