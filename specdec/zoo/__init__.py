"""specdec's built-in models, addressable as ``zoo:NAME`` wherever a model is accepted.

- ``zoo:tiny-code-target`` / ``zoo:tiny-code-draft``: a small trained pair (Python code), loaded with
  ``from_pretrained`` from ``models/tiny-code`` like any local model.
- ``zoo:synthetic/<shape>[@mix=M]``: random-weight models of stored real shapes (GPT-2, Llama 3.x, ...) built on
  the device with no download; ``mix`` steers the greedy agreement between shapes of one family.

``docs/zoo.md`` describes the entries, the knob and how to retrain the pair. The recipe, its evaluation and the
synthetic calibration are the sub-package ``specdec.zoo.recipe``, which nothing here imports.
"""

from __future__ import annotations

from specdec.zoo.prompts import HELDOUT_PROMPTS, load_prompts
from specdec.zoo.registry import (
    DEFAULT_MIX,
    SHAPES,
    ZOO_PREFIX,
    ZooEntry,
    is_zoo_name,
    list_zoo,
    resolve_zoo,
)
from specdec.zoo.synthetic import build_synthetic

__all__ = [
    "DEFAULT_MIX",
    "HELDOUT_PROMPTS",
    "SHAPES",
    "ZOO_PREFIX",
    "ZooEntry",
    "build_synthetic",
    "is_zoo_name",
    "list_zoo",
    "load_prompts",
    "resolve_zoo",
]
