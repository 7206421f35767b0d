"""Which architectures have a fast path, and the lean module that runs each one's forward."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from specdec.fast import gpt2, llama
from specdec.fast.gpt2 import FastGPT2
from specdec.fast.llama import FastLlama
from specdec.kernels import Kernels, kernels_for

FastModel = FastLlama | FastGPT2
FAMILY_OF_MODEL_TYPE = {"llama": "llama", "mistral": "llama", "qwen2": "llama", "gpt2": "gpt2"}


def unsupported_reason(model: PreTrainedModel, device: torch.device | None = None) -> str | None:
    """Why no fast path can run this model (None if one can); on ``device``, where that picks the Triton kernels,
    also what they cannot run."""
    model_type = model.config.model_type
    family = FAMILY_OF_MODEL_TYPE.get(model_type)
    if family is None:
        supported = ", ".join(FAMILY_OF_MODEL_TYPE)
        return f"model type {model_type!r} has no fast path (supported: {supported})"
    if family == "gpt2":
        return gpt2.unsupported_reason(model)
    return llama.unsupported_reason(model, triton=device is not None and kernels_for(device).name == "triton")


def build_fast_model(model: PreTrainedModel, kernels: Kernels) -> FastModel:
    """The lean module for ``model`` (sharing its weights); ``unsupported_reason`` must be None."""
    if FAMILY_OF_MODEL_TYPE[model.config.model_type] == "gpt2":
        return FastGPT2(model, kernels)
    return FastLlama(model, kernels)
