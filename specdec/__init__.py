"""specdec: lossless speculative decoding for Hugging Face causal language models."""

from specdec.config import AcceptanceConfig, AdaptiveKConfig, GenerationConfig, Policy, SpeculationConfig
from specdec.drafters import DraftSpec, make_drafter
from specdec.engine import SpeculativeEngine
from specdec.errors import SpecdecError
from specdec.generation import Generation, GenerationResult
from specdec.heads import load_heads
from specdec.loading import LoadedModel, load_model
from specdec.metrics import RunMetrics, StepMetrics

__version__ = "0.1.0"

__all__ = [
    "AcceptanceConfig",
    "AdaptiveKConfig",
    "DraftSpec",
    "Generation",
    "GenerationConfig",
    "GenerationResult",
    "LoadedModel",
    "Policy",
    "RunMetrics",
    "SpecdecError",
    "SpeculationConfig",
    "SpeculativeEngine",
    "StepMetrics",
    "load_heads",
    "load_model",
    "make_drafter",
]
