"""Draft heads that read the target's features: Medusa and EAGLE (1/2 and 3), their published checkpoint layouts,
and the zoo's trained heads for ``zoo:tiny-code-target``."""

from specdec.heads.cache import HeadCache
from specdec.heads.checkpoints import load_head_folder, load_heads
from specdec.heads.eagle import Eagle3Head, EagleConfig, EagleHead, eagle3_layers
from specdec.heads.layer import LayerShape
from specdec.heads.medusa import MedusaConfig, MedusaHeads
from specdec.heads.random import write_random_eagle3
from specdec.heads.target import TargetParts, target_features

__all__ = [
    "Eagle3Head",
    "EagleConfig",
    "EagleHead",
    "HeadCache",
    "LayerShape",
    "MedusaConfig",
    "MedusaHeads",
    "TargetParts",
    "eagle3_layers",
    "load_head_folder",
    "load_heads",
    "target_features",
    "write_random_eagle3",
]
