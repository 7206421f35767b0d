"""Root conftest of a development checkout.

The specdec pytest plugin is normally enabled by its ``pytest11`` entry point (``pip install -e .``). A checkout
used without installing it (``PYTHONPATH=.``, or with plugin autoloading disabled) registers it here instead; when
the entry point already did, registering again would be an error, so this checks first.
"""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]  # tests/plugin/ drives pytest end to end


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    # Runs while the initial conftests load, before options are parsed: a plugin registered now still adds its
    # options (pytest replays pytest_addoption for it).
    import pytest_specdec.plugin as plugin

    if pluginmanager.get_plugin("specdec") is None and not pluginmanager.is_registered(plugin):
        pluginmanager.register(plugin, "specdec")


def pytest_benchmark_group_stats(config, benchmarks, group_by):  # type: ignore[no-untyped-def]
    """``pytest-benchmark compare`` (run from this folder) reads its hooks from this file only: group names then carry
    each saved run's machine and software (``pytest_specdec.plugin``)."""
    from pytest_specdec.plugin import pytest_benchmark_group_stats as group_stats

    return group_stats(config=config, benchmarks=benchmarks, group_by=group_by)
