"""The plugin is registered once: by its entry point when installed, else by the root conftest of a checkout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import pytest_specdec.plugin

ROOT = Path(__file__).resolve().parents[2]


def test_the_entry_point_and_the_root_conftest_register_it_once(request):
    manager = request.config.pluginmanager
    assert manager.is_registered(pytest_specdec.plugin)
    assert [p for p in manager.get_plugins() if p is pytest_specdec.plugin] == [pytest_specdec.plugin]


def test_the_root_conftest_registers_it_without_autoloading():
    """Also README's promise: ``pytest --specdec-suite t4 --collect-only`` lists the T4 cases on any machine."""
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    command = [sys.executable, "-m", "pytest", "-p", "pytest_benchmark.plugin", "-p", "no:cacheprovider"]
    command += ["--specdec-suite", "t4", "--collect-only", "-q"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "bench_suites/t4.yaml::gpt2[k=4,cuda,fp16,bs=1,n=64]" in done.stdout.splitlines()


@pytest.mark.parametrize("marker", ["gpu", "mps", "slow"])
def test_markers_are_registered(request, marker):
    assert any(line.startswith(f"{marker}:") for line in request.config.getini("markers"))
