"""One seed makes a run repeatable: Python, NumPy and torch, plus the engine's own sampling generator."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_generator(seed: int, device: torch.device) -> torch.Generator:
    """A generator on ``device`` for every random draw of a run (drafting, acceptance, resampling)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator
