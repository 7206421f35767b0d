"""Draft heads of a real shape with random weights: what drafting and verification cost at a target's true size,
without a trained checkpoint (acceptance then comes from the synthetic policy, or is near zero)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import PreTrainedModel

from specdec.heads.eagle import Eagle3Head, EagleConfig, eagle3_layers
from specdec.heads.layer import LayerShape
from specdec.heads.target import TargetParts


def write_random_eagle3(
    target: PreTrainedModel, folder: Path, draft_vocab_size: int = 32000, seed: int = 0, scale: float = 0.02
) -> Path:
    """An EAGLE-3 head for ``target`` with random weights, written to ``folder`` in specdec's head layout (loadable
    with ``--draft-method eagle --draft FOLDER``): a midlayer as wide as the target, fusing three of its layers, and
    an output layer over the first ``draft_vocab_size`` target ids (EAGLE-3's reduced draft vocabulary)."""
    config = target.config
    hidden = int(config.hidden_size)
    heads = int(config.num_attention_heads)
    rope = getattr(config, "rope_parameters", None) or {}
    scaling = {k: v for k, v in rope.items() if k not in ("rope_theta",)} if rope.get("rope_type") == "llama3" else {}
    layer = LayerShape(
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
        intermediate_size=int(config.intermediate_size),
        attention_input=2 * hidden,
        rms_norm_eps=float(getattr(config, "rms_norm_eps", 1e-6)),
        rope_theta=float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))),
        rope_scaling=tuple(sorted(scaling.items())),
        max_positions=int(getattr(config, "max_position_embeddings", 2048)),
    )
    vocab = int(config.vocab_size)
    draft_vocab = min(draft_vocab_size, vocab)
    eagle = EagleConfig(
        version=3,
        layer=layer,
        vocab_size=vocab,
        draft_vocab_size=draft_vocab,
        target_hidden_size=hidden,
        fc_bias=False,
        feature_layers=eagle3_layers(int(config.num_hidden_layers)),
    )
    parts = TargetParts.of(target)
    generator = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        head = Eagle3Head(eagle, parts)
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in head.state_dict().items():
        if name == "d2t":  # draft id d is target id d
            tensors[name] = torch.zeros(draft_vocab, dtype=torch.long)
        elif name == "t2d":
            tensors[name] = torch.arange(vocab) < draft_vocab
        elif name.endswith("norm.weight") or "layernorm" in name:
            tensors[name] = torch.ones(tensor.shape, dtype=parts.lm_head.dtype)
        else:
            tensors[name] = (torch.randn(tensor.shape, generator=generator) * scale).to(parts.lm_head.dtype)
    folder.mkdir(parents=True, exist_ok=True)
    eagle.write(folder / "config.json")
    save_file(tensors, str(folder / "model.safetensors"))
    return folder
