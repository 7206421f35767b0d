"""Suites written from text in a test's folder: their expanded cases, or the error that names the line at fault."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_specdec.cases import Case, expand
from pytest_specdec.errors import SuiteError
from pytest_specdec.suite import parse_suite


def suite_cases(tmp_path: Path, text: str) -> list[Case]:
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    return expand(parse_suite(path))


def suite_error(tmp_path: Path, text: str) -> str:
    """The SuiteError that ``text`` raises, without the file's path (it starts with it): ``":7: cases[0]..."``."""
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    with pytest.raises(SuiteError) as raised:
        expand(parse_suite(path))
    message = str(raised.value)
    assert message.startswith(f"{path}:"), message
    return message[len(str(path)) :]
