"""The zoo's entries and how names address them.

Names (after the ``zoo:`` prefix):

- ``tiny-code-target``, ``tiny-code-draft``: the trained pair (folders under ``models/tiny-code``).
- ``tiny-code-medusa``, ``tiny-code-eagle``: draft heads trained for ``tiny-code-target`` (not causal LMs: load them
  with ``specdec.load_heads(name, target)``).
- ``synthetic/<shape>`` or ``synthetic/<shape>@mix=<m>``: a random-weight model of a stored real shape
  (``configs/<shape>.json``). ``mix`` in [0, 1) steers agreement between any two shapes of one vocabulary family:
  at 0 they agree everywhere, towards 1 their own random layers take over and agreement falls towards chance
  (see ``synthetic.py``). Without ``@mix`` the default ``DEFAULT_MIX`` applies. A target and a draft built from
  their names separately are consistent when they name the same ``mix``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from specdec.errors import ModelLoadError

ZOO_PREFIX = "zoo:"
SYNTHETIC_PREFIX = "synthetic/"
DEFAULT_MIX = 0.5
ZOO_DIR = Path(__file__).parent
TRAINED_DIR = ZOO_DIR / "models" / "tiny-code"
CONFIG_DIR = ZOO_DIR / "configs"


@dataclass(frozen=True)
class ZooEntry:
    name: str  # without the prefix, e.g. "tiny-code-target" or "synthetic/llama-3.2-1b@mix=0.3"
    kind: Literal["trained", "synthetic", "heads"]
    path: Path | None  # trained: the from_pretrained folder; heads: their folder; synthetic: the stored config.json
    description: str
    shape: str | None = None  # synthetic: the stored shape, e.g. "llama-3.2-1b"
    mix: float | None = None  # synthetic: the agreement knob in [0, 1)
    target: str | None = None  # heads: the zoo entry they draft for


@dataclass(frozen=True)
class Family:
    """Shapes that share a vocabulary, and with it the low-rank backbone that makes their agreement steerable."""

    vocab_size: int
    backbone_rank: int  # at most the narrowest member's hidden size
    seed: int


@dataclass(frozen=True)
class Shape:
    family: str
    description: str


FAMILIES: dict[str, Family] = {
    "gpt2": Family(vocab_size=50257, backbone_rank=768, seed=2019),
    "llama-3": Family(vocab_size=128256, backbone_rank=768, seed=2024),
    "zoo": Family(vocab_size=4096, backbone_rank=32, seed=7),
}

SHAPES: dict[str, Shape] = {
    "gpt2": Shape("gpt2", "GPT-2 (124M) shape; target of distilgpt2"),
    "distilgpt2": Shape("gpt2", "DistilGPT-2 (82M) shape; draft of gpt2"),
    "llama-3.2-1b": Shape("llama-3", "Llama-3.2-1B shape; draft of llama-3.2-3b, target of llama-3-draft-116m"),
    "llama-3.2-3b": Shape("llama-3", "Llama-3.2-3B shape; target of llama-3.2-1b"),
    "llama-3.1-8b": Shape("llama-3", "Llama-3.1-8B shape; target of llama-3-draft-116m (1.5% of its weights)"),
    "llama-3-draft-116m": Shape("llama-3", "2-layer 768-wide draft with the Llama-3 vocabulary"),
    "tiny-llama": Shape("zoo", "tiny Llama (4 layers, 64 wide) for tests; target of tiny-llama-draft"),
    "tiny-llama-draft": Shape("zoo", "tiny Llama (1 layer, 32 wide) for tests; draft of tiny-llama"),
    "tiny-gpt2": Shape("zoo", "tiny GPT-2 (2 layers, 32 wide) for tests"),
}

TRAINED: dict[str, tuple[str, str]] = {
    "tiny-code-target": ("target", "trained 10M-parameter Llama on Python code (see models/tiny-code/MODEL_CARD.md)"),
    "tiny-code-draft": ("draft", "1.7M-parameter Llama distilled from tiny-code-target"),
}

HEADS: dict[str, tuple[str, str]] = {
    "tiny-code-medusa": ("medusa", "3 Medusa heads for tiny-code-target (models/tiny-code/medusa/MODEL_CARD.md)"),
    "tiny-code-eagle": ("eagle", "an EAGLE-1/2 head for tiny-code-target (models/tiny-code/eagle/MODEL_CARD.md)"),
}
HEADS_TARGET = "tiny-code-target"


def is_zoo_name(name: str) -> bool:
    return name.startswith(ZOO_PREFIX)


def list_zoo() -> list[ZooEntry]:
    """Every entry with its default knob (synthetic names also take ``@mix=M``)."""
    entries = [resolve_zoo(name) for name in [*TRAINED, *HEADS]]
    entries += [resolve_zoo(SYNTHETIC_PREFIX + shape) for shape in SHAPES]
    return entries


def resolve_zoo(name: str) -> ZooEntry:
    """The entry a zoo name (with or without ``zoo:``) addresses; ModelLoadError naming the known ones otherwise."""
    bare = name[len(ZOO_PREFIX) :] if is_zoo_name(name) else name
    if bare in TRAINED:
        folder, description = TRAINED[bare]
        return ZooEntry(bare, "trained", TRAINED_DIR / folder, description)
    if bare in HEADS:
        folder, description = HEADS[bare]
        return ZooEntry(bare, "heads", TRAINED_DIR / folder, description, target=HEADS_TARGET)
    if bare.startswith(SYNTHETIC_PREFIX):
        shape, _, knobs = bare[len(SYNTHETIC_PREFIX) :].partition("@")
        if shape in SHAPES:
            mix = _parse_mix(name, knobs) if knobs else DEFAULT_MIX
            canonical = f"{SYNTHETIC_PREFIX}{shape}@mix={mix:g}"
            description = f"{SHAPES[shape].description}; random weights, mix={mix:g}"
            return ZooEntry(canonical, "synthetic", CONFIG_DIR / f"{shape}.json", description, shape, mix)
    known = ", ".join([*TRAINED, *HEADS, *(SYNTHETIC_PREFIX + s for s in SHAPES)])
    raise ModelLoadError(
        f"unknown zoo model {name!r}; known: {known} (synthetic ones also take @mix=M with 0 <= M < 1, "
        "e.g. zoo:synthetic/llama-3.1-8b@mix=0.3)"
    )


def _parse_mix(name: str, knobs: str) -> float:
    key, _, value = knobs.partition("=")
    if key != "mix" or not value:
        raise ModelLoadError(f"zoo model {name!r}: the only knob is @mix=M (0 <= M < 1), got {'@' + knobs!r}")
    try:
        mix = float(value)
    except ValueError:
        raise ModelLoadError(f"zoo model {name!r}: mix must be a number in [0, 1), got {value!r}") from None
    if not 0.0 <= mix < 1.0:
        raise ModelLoadError(f"zoo model {name!r}: mix must be in [0, 1), got {mix}")
    return mix
