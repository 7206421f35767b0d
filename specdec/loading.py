"""Loading a causal LM and its tokenizer from a zoo name, a local folder or a Hugging Face hub id."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.utils import logging as transformers_logging

from specdec.device import resolve_device, resolve_dtype
from specdec.errors import IncompatibleModelsError, ModelLoadError

Source = Literal["zoo", "local", "hub"]
ZOO_PREFIX = "zoo:"


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for generation: eval mode, on its device, in its dtype, with the tokenizer that goes with it."""

    name: str  # what the user asked for ("zoo:tiny-code-target", "./my-model", "gpt2")
    model: PreTrainedModel
    tokenizer: Any  # a transformers tokenizer (or the zoo's tokenizer for synthetic models)
    device: torch.device
    dtype: torch.dtype
    source: Source

    @property
    def vocab_size(self) -> int:
        """Width of the model's output layer."""
        return int(self.model.get_output_embeddings().weight.shape[0])

    @property
    def context_length(self) -> int | None:
        """Longest sequence the model's positions allow, where the config says (None: no stated limit)."""
        config = self.model.config.get_text_config()
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(config, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return None


def hub_offline() -> bool:
    """True when the user told Hugging Face not to reach the network."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or os.environ.get(
        "TRANSFORMERS_OFFLINE", "0"
    ).lower() in ("1", "true", "yes")


def _how_to_get(name: str) -> str:
    return (
        f"Download it on a machine with network access (`hf download {name}`, then copy the Hugging Face cache or "
        f"the downloaded folder here and pass that folder), or use a built-in model (`specdec zoo list`)."
    )


def _looks_like_path(name: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else with a separator is meant as a folder."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def _load_pretrained(name: str, location: str, device: torch.device, dtype: torch.dtype, source: Source) -> LoadedModel:
    local_only = source != "hub" or hub_offline()
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, local_files_only=local_only)
    except OSError as error:
        if source == "hub":
            where = "is not in the local Hugging Face cache" + (
                " and HF_HUB_OFFLINE is set" if hub_offline() else " and could not be downloaded"
            )
            raise ModelLoadError(f"model {name!r} {where}. {_how_to_get(name)}") from error
        raise ModelLoadError(f"could not load model {name!r} from {location}: {error}") from error
    except ValueError as error:  # e.g. an architecture transformers does not know, or not a causal LM
        raise ModelLoadError(f"model {name!r} cannot be loaded as a causal LM: {error}") from error
    model.to(device)  # type: ignore[arg-type]  # transformers' decorated `to` confuses mypy
    return _ready(name, model, tokenizer, device, dtype, source)


def _ready(
    name: str,
    model: PreTrainedModel,
    tokenizer: Any,
    device: torch.device,
    dtype: torch.dtype,
    source: Source,
) -> LoadedModel:
    model.eval()
    model.requires_grad_(False)
    return LoadedModel(name=name, model=model, tokenizer=tokenizer, device=device, dtype=dtype, source=source)


def load_model(name: str, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto") -> LoadedModel:
    """Load ``name``: ``zoo:ENTRY`` (a built-in model), a local folder, or a hub id (from the local cache first).

    Errors name the model and say how to get it; nothing downloads when ``HF_HUB_OFFLINE=1``.
    """
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    transformers_logging.disable_progress_bar()  # progress belongs to the caller's reporter, not to stderr
    if name.startswith(ZOO_PREFIX):
        from specdec import zoo  # imported on demand: synthetic builders pull in more of transformers

        entry = zoo.resolve_zoo(name)
        if entry.kind == "synthetic":
            model, tokenizer = zoo.build_synthetic(entry, torch_device, torch_dtype)
            return _ready(name, model, tokenizer, torch_device, torch_dtype, "zoo")
        return _load_pretrained(name, str(entry.path), torch_device, torch_dtype, "zoo")
    folder = Path(name).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise ModelLoadError(
                f"folder {str(folder)!r} has no config.json, so it is not a Hugging Face model folder; "
                "save one with `model.save_pretrained(folder)` and `tokenizer.save_pretrained(folder)`"
            )
        return _load_pretrained(name, str(folder), torch_device, torch_dtype, "local")
    if _looks_like_path(name):
        raise ModelLoadError(f"model folder {name!r} does not exist")
    return _load_pretrained(name, name, torch_device, torch_dtype, "hub")


def shared_vocab_size(target: LoadedModel, draft: LoadedModel) -> int:
    """Check, before any generation, that target and draft share one vocabulary; return its size.

    Output layers may be padded to different widths (as in some model families); then the tokenizers must agree and
    both distributions are compared over the tokenizer's ids.
    """
    target_vocab = _vocab(target)
    draft_vocab = _vocab(draft)
    if target_vocab is not None and draft_vocab is not None and target_vocab != draft_vocab:
        only_target = sorted(set(target_vocab.items()) - set(draft_vocab.items()))[:3]
        raise IncompatibleModelsError(
            f"target {target.name!r} and draft {draft.name!r} have different vocabularies "
            f"({len(target_vocab)} and {len(draft_vocab)} tokens; e.g. target-only entries {only_target}); "
            "speculative decoding needs a draft that uses the target's tokenizer"
        )
    if target.vocab_size == draft.vocab_size:
        return target.vocab_size
    if target_vocab is None:
        raise IncompatibleModelsError(
            f"target {target.name!r} predicts {target.vocab_size} tokens but draft {draft.name!r} predicts "
            f"{draft.vocab_size}; they need the same vocabulary"
        )
    return min(len(target_vocab), target.vocab_size, draft.vocab_size)


def _vocab(loaded: LoadedModel) -> dict[str, int] | None:
    get_vocab = getattr(loaded.tokenizer, "get_vocab", None)
    return dict(get_vocab()) if get_vocab is not None else None
