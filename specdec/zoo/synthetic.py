"""Random-weight models of real shapes whose greedy agreement with each other can be steered.

Every shape of one vocabulary family (``registry.FAMILIES``) is built around the same seeded low-rank *backbone*
``B`` ([V, r], rows centred): each model's token embedding is ``B`` zero-padded to its hidden size, and so is its
output head (tied or not). Alone, the backbone path maps a token to the same logits in every member (the final norm
only rescales them), so two members agree everywhere. On top of it each model has its own seeded random layers.

The knob ``mix`` (0 <= mix < 1) sets how loud those layers are: each residual write (attention output, MLP output)
is rescaled, during one calibration forward over random tokens, so that its RMS within the backbone's r dimensions
equals ``g * rms(embedding) / sqrt(number of writes)`` with ``g = g_crit * sqrt(mix / (1 - mix))``: ``mix`` is the
layers' share ``g^2 / (g^2 + g_crit^2)`` of the perturbation power. ``g_crit = sqrt(r / (2 ln V) - 1)`` is the gain at
which a Gaussian perturbation starts to beat the backbone's own score. At ``mix = 0`` the layers are silent and every
member predicts what the backbone predicts (with tied embeddings: the token it was given, as ``B_x`` scores itself
highest), so any two members agree everywhere; as ``mix`` grows each model's own layers decide more of its argmax
and agreement falls towards chance. How fast it falls depends on the shapes (a 2-layer draft leaves the backbone
sooner than a 32-layer target) and on the context, so agreement is always measured (``docs/zoo.md`` has the
calibration table), never assumed.

Models are built with the real transformers classes (``AutoModelForCausalLM.from_config``) directly on the device
and in the requested dtype, then every tensor is re-initialised from its own seed (so a weight does not depend on the
order HF initialises in, nor on the transformers version). Weights differ between CPU and CUDA generators, but target
and draft built on one device are always consistent.

Tokenizer: the zoo's trained byte-level BPE (4096 tokens), whose ids fit every family's vocabulary. Generated ids
beyond 4096 decode to nothing: synthetic text is meaningless anyway, synthetic models exist to measure cost and
acceptance. Model configs take the tokenizer's ``<|endoftext|>`` (id 0) as BOS/EOS/padding.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel
from transformers.pytorch_utils import Conv1D

from specdec.errors import ModelLoadError
from specdec.zoo.registry import CONFIG_DIR, FAMILIES, SHAPES, TRAINED_DIR, Family, ZooEntry
from specdec.zoo.tokenizer import end_of_text_id, load_zoo_tokenizer

CALIBRATION_TOKENS = 64  # random tokens of the forward that balances the writes


def build_synthetic(entry: ZooEntry, device: torch.device, dtype: torch.dtype) -> tuple[PreTrainedModel, Any]:
    """(model in eval mode on ``device`` in ``dtype``, the zoo tokenizer) for a synthetic entry."""
    if entry.kind != "synthetic" or entry.shape is None or entry.mix is None:
        raise ModelLoadError(f"zoo model {entry.name!r} is not synthetic")
    tokenizer = load_zoo_tokenizer(TRAINED_DIR / "target")
    model = build_model(entry.shape, entry.mix, device, dtype, eos_id=end_of_text_id(tokenizer))
    return model, tokenizer


def synthetic_config(shape: str, eos_id: int = 0):
    """The transformers config of a stored shape, with the zoo tokenizer's special ids."""
    stored = json.loads((CONFIG_DIR / f"{shape}.json").read_text())
    model_type = stored.pop("model_type")
    stored.pop("architectures", None)
    stored.pop("torch_dtype", None)
    stored.update(bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id)
    return AutoConfig.for_model(model_type, **stored)


@torch.no_grad()
def build_model(shape: str, mix: float, device: torch.device, dtype: torch.dtype, eos_id: int = 0) -> PreTrainedModel:
    """Build ``shape`` with the family backbone and its own layers scaled by ``mix`` (see the module docstring)."""
    family = FAMILIES[SHAPES[shape].family]
    config = synthetic_config(shape, eos_id)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval().requires_grad_(False)
    hidden = model.get_input_embeddings().weight.shape[1]
    if family.backbone_rank > hidden:
        raise ModelLoadError(f"synthetic shape {shape!r} is narrower ({hidden}) than its family's backbone")
    _init_layers(model, shape, device)
    _init_backbone(model, family, device)
    _calibrate_writes(model, family, mix, device)
    return model


def _init_layers(model: PreTrainedModel, shape: str, device: torch.device) -> None:
    """Every weight but the embeddings from its own seed: matrices N(0, 1/fan_in), norms 1, biases and position
    embeddings 0."""
    embeddings = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
    fan_in = {}
    for module in model.modules():
        if isinstance(module, nn.Linear):
            fan_in[id(module.weight)] = module.in_features
        elif isinstance(module, Conv1D):
            fan_in[id(module.weight)] = module.weight.shape[0]
    for name, param in model.named_parameters():
        if id(param) in embeddings:
            continue
        if id(param) in fan_in:
            generator = torch.Generator(device=device).manual_seed(_seed(shape, name))
            param.normal_(0.0, 1.0 / math.sqrt(fan_in[id(param)]), generator=generator)
        elif param.ndim == 1 and not name.endswith("bias"):
            param.fill_(1.0)  # norm weights
        else:
            param.zero_()  # biases, GPT-2's position embeddings


def _init_backbone(model: PreTrainedModel, family: Family, device: torch.device) -> None:
    """Embedding and head: the family's backbone B [V, r], zero-padded to the model's width."""
    generator = torch.Generator(device=device).manual_seed(family.seed)
    backbone = torch.randn(family.vocab_size, family.backbone_rank, generator=generator, device=device)  # [V, r]
    backbone -= backbone.mean(dim=1, keepdim=True)  # centred rows: LayerNorm's mean shift cannot move the argmax
    for embedding in (model.get_input_embeddings(), model.get_output_embeddings()):
        weight = _weight(embedding)  # [V, hidden] (tied models: the same tensor twice)
        weight.zero_()
        weight[:, : family.backbone_rank] = backbone.to(weight.dtype)


def _calibrate_writes(model: PreTrainedModel, family: Family, mix: float, device: torch.device) -> None:
    """Rescale each residual write so its RMS in the backbone dims is g * rms(embedding) / sqrt(#writes)."""
    writers = _residual_writers(model)
    if mix == 0.0:
        for module in writers:
            _weight(module).zero_()
        return
    gain = critical_gain(family) * math.sqrt(mix / (1.0 - mix))
    generator = torch.Generator().manual_seed(family.seed + 1)
    ids = torch.randint(0, family.vocab_size, (1, CALIBRATION_TOKENS), generator=generator).to(device)  # [1, T]
    embedded = model.get_input_embeddings()(ids)[..., : family.backbone_rank].float()  # [1, T, r]
    goal = gain * embedded.pow(2).mean().sqrt().item() / math.sqrt(len(writers))

    def rescale(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        rms = output[..., : family.backbone_rank].float().pow(2).mean().sqrt().item()
        factor = goal / max(rms, 1e-12)
        _weight(module).mul_(factor)
        return output * factor

    handles = [module.register_forward_hook(rescale) for module in writers]
    try:
        model(input_ids=ids, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()


def critical_gain(family: Family) -> float:
    """The perturbation gain at which the backbone's self-score stops winning: sqrt(r / (2 ln V) - 1)."""
    return math.sqrt(max(family.backbone_rank / (2.0 * math.log(family.vocab_size)) - 1.0, 1e-2))


def _residual_writers(model: PreTrainedModel) -> list[nn.Module]:
    """The modules whose outputs are added to the residual stream, in forward order."""
    if model.config.model_type == "gpt2":
        blocks = getattr(model, "transformer").h  # noqa: B009 - getattr keeps mypy off transformers' dynamic modules
        return [m for block in blocks for m in (block.attn.c_proj, block.mlp.c_proj)]
    if model.config.model_type == "llama":
        layers = getattr(model, "model").layers  # noqa: B009
        return [m for layer in layers for m in (layer.self_attn.o_proj, layer.mlp.down_proj)]
    raise ModelLoadError(f"synthetic models of type {model.config.model_type!r} are not supported")


def _weight(module: nn.Module) -> torch.Tensor:
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def _seed(shape: str, name: str) -> int:
    return int(hashlib.sha256(f"specdec-zoo/{shape}/{name}".encode()).hexdigest()[:15], 16)
