"""Random tensors written in the layouts FasterDecoding/Medusa and SafeAILab/EAGLE publish (names, shapes, config
keys, file names), at any size: the real Llama-3.1-8B sizes for the slow tests, small ones otherwise."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file


@dataclass(frozen=True)
class TargetShape:
    hidden: int
    vocab: int
    heads: int
    kv_heads: int
    intermediate: int
    layers: int


LLAMA_31_8B = TargetShape(hidden=4096, vocab=128256, heads=32, kv_heads=8, intermediate=14336, layers=32)
SMALL = TargetShape(hidden=64, vocab=320, heads=4, kv_heads=2, intermediate=96, layers=6)


def _rand(*shape: int, dtype: torch.dtype, generator: torch.Generator, scale: float = 0.02) -> torch.Tensor:
    return (torch.randn(*shape, generator=generator) * scale).to(dtype)


def _write(tensors: dict[str, torch.Tensor], folder: Path, file: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if file.endswith(".safetensors"):
        save_file(tensors, str(folder / file))
    else:
        torch.save(tensors, folder / file)
    return folder / file


def write_medusa(
    folder: Path,
    shape: TargetShape,
    num_heads: int = 2,
    num_layers: int = 1,
    file: str = "medusa_lm_head.pt",
    dtype: torch.dtype = torch.float16,
    prefix: str = "",
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for i in range(num_heads):
        for j in range(num_layers):
            tensors[f"{prefix}{i}.{j}.linear.weight"] = _rand(shape.hidden, shape.hidden, dtype=dtype, generator=g)
            tensors[f"{prefix}{i}.{j}.linear.bias"] = _rand(shape.hidden, dtype=dtype, generator=g)
        tensors[f"{prefix}{i}.{num_layers}.weight"] = _rand(shape.vocab, shape.hidden, dtype=dtype, generator=g)
    _write(tensors, folder, file)
    config = {
        "medusa_num_heads": num_heads,
        "medusa_num_layers": num_layers,
        "base_model_name_or_path": "meta-llama/Llama-3.1-8B-Instruct",
    }
    (folder / "config.json").write_text(json.dumps(config))
    return tensors


def _llama_config(shape: TargetShape, **extra) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": shape.hidden, "intermediate_size": shape.intermediate, "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads, "num_hidden_layers": 1, "rms_norm_eps": 1e-5,
        "max_position_embeddings": 2048, "rope_theta": 500000.0, "vocab_size": shape.vocab,
        "tie_word_embeddings": False, "torch_dtype": "float16", **extra,
    }  # fmt: skip


def _layer(
    prefix: str, shape: TargetShape, attn_in: int, g: torch.Generator, dtype: torch.dtype, norms: tuple[str, ...]
) -> dict[str, torch.Tensor]:
    hd = shape.hidden // shape.heads
    d, m = shape.hidden, shape.intermediate
    t = {
        f"{prefix}self_attn.q_proj.weight": _rand(shape.heads * hd, attn_in, dtype=dtype, generator=g),
        f"{prefix}self_attn.k_proj.weight": _rand(shape.kv_heads * hd, attn_in, dtype=dtype, generator=g),
        f"{prefix}self_attn.v_proj.weight": _rand(shape.kv_heads * hd, attn_in, dtype=dtype, generator=g),
        f"{prefix}self_attn.o_proj.weight": _rand(d, shape.heads * hd, dtype=dtype, generator=g),
        f"{prefix}mlp.gate_proj.weight": _rand(m, d, dtype=dtype, generator=g),
        f"{prefix}mlp.up_proj.weight": _rand(m, d, dtype=dtype, generator=g),
        f"{prefix}mlp.down_proj.weight": _rand(d, m, dtype=dtype, generator=g),
    }
    for norm in norms:
        t[f"{prefix}{norm}.weight"] = (1.0 + _rand(d, dtype=torch.float32, generator=g, scale=0.1)).to(dtype)
    return t


def write_eagle1(
    folder: Path,
    shape: TargetShape,
    file: str = "pytorch_model.bin",
    bias: bool = True,
    dtype: torch.dtype = torch.float16,
    with_embedding: bool = False,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """EAGLE-1/2 (e.g. yuhuili/EAGLE-LLaMA3-Instruct-8B): fc [D, 2D] (+ bias), layers.0 without input_layernorm."""
    g = torch.Generator().manual_seed(seed)
    d = shape.hidden
    tensors = {"fc.weight": _rand(d, 2 * d, dtype=dtype, generator=g)}
    if bias:
        tensors["fc.bias"] = _rand(d, dtype=dtype, generator=g)
    tensors.update(_layer("layers.0.", shape, d, g, dtype, ("post_attention_layernorm",)))
    if with_embedding:
        tensors["embed_tokens.weight"] = _rand(shape.vocab, d, dtype=dtype, generator=g)
    _write(tensors, folder, file)
    extra = {} if bias else {"bias": False}
    (folder / "config.json").write_text(json.dumps(_llama_config(shape, **extra)))
    return tensors


def write_eagle3(
    folder: Path,
    shape: TargetShape,
    draft_vocab: int,
    file: str = "pytorch_model.bin",
    dtype: torch.dtype = torch.float16,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """EAGLE-3 (e.g. yuhuili/EAGLE3-LLaMA3.1-Instruct-8B): fc [D, 3D], midlayer with 2D attention input, norm,
    lm_head [Vd, D], d2t [Vd] int64, t2d [V] bool."""
    g = torch.Generator().manual_seed(seed)
    d = shape.hidden
    tensors = {"fc.weight": _rand(d, 3 * d, dtype=dtype, generator=g)}
    tensors.update(
        _layer("midlayer.", shape, 2 * d, g, dtype, ("hidden_norm", "input_layernorm", "post_attention_layernorm"))
    )
    tensors["norm.weight"] = torch.ones(d, dtype=dtype)
    tensors["lm_head.weight"] = _rand(draft_vocab, d, dtype=dtype, generator=g)
    draft_to_target = torch.sort(torch.randperm(shape.vocab, generator=g)[:draft_vocab]).values  # [Vd] target ids
    tensors["d2t"] = draft_to_target - torch.arange(draft_vocab)
    t2d = torch.zeros(shape.vocab, dtype=torch.bool)
    t2d[draft_to_target] = True
    tensors["t2d"] = t2d
    _write(tensors, folder, file)
    (folder / "config.json").write_text(json.dumps(_llama_config(shape, draft_vocab_size=draft_vocab)))
    return tensors
