"""Suite files as pytest collectors and their cases as test items.

Each case is a ``pytest.Function`` whose body runs the case, so that fixtures (``benchmark``), markers, ``-k`` and
``-m`` work as for any test. A malformed suite fails its collection with the :class:`SuiteError` message only.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from pytest_specdec.baselines import BaselineError
from pytest_specdec.cases import Case, expand
from pytest_specdec.errors import SuiteError
from pytest_specdec.session import BenchSession
from pytest_specdec.suite import SHORT_DTYPES, parse_suite
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
    ``bs2``, ``greedy``/``sampled``, the device, the dtype and the policy."""
    words = {case.k_label if case.is_autoregressive else f"k{case.k_label}", f"bs{case.batch_size}"}
    words |= {"greedy" if case.generation.greedy else "sampled", case.device.replace(":", ""), case.dtype}
    words |= {SHORT_DTYPES[case.dtype], case.policy, case.suite, case.group}
    return words


def run_case(request: pytest.FixtureRequest, benchmark: Any) -> None:
    """The body of every suite case (see :meth:`BenchSession.run_case`)."""
    item = request.node
    assert isinstance(item, CaseItem)
    request.config.stash[SESSION_KEY].run_case(item.case, benchmark)


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
            item.add_marker("specdec")
            item.extra_keyword_matches.update(case_keywords(case))
            group = f"{suite.name}: {case.baseline_id or case.id}"  # a speculative case sits with its reference
            item.add_marker(pytest.mark.benchmark(group=group))
            missing = device_missing(case.device)
            if missing:
                item.add_marker(pytest.mark.skip(reason=missing))
            items.append(item)
        return items
