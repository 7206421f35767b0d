"""pytest hooks of the specdec plugin (registered through the ``pytest11`` entry point)."""

from __future__ import annotations

import pytest

MARKERS = {
    "gpu": "needs a CUDA GPU (deselect with -m 'not gpu')",
    "mps": "needs Apple MPS (deselect with -m 'not mps')",
    "slow": "takes long (deselect with -m 'not slow')",
}


def pytest_configure(config: pytest.Config) -> None:
    for name, description in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")
