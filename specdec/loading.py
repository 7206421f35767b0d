"""Loading a causal LM and its tokenizer from a zoo name, a local folder or a Hugging Face hub id."""

from __future__ import annotations

import os
import socket
import threading
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError, safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.utils import logging as transformers_logging

from specdec.device import resolve_device, resolve_dtype
from specdec.errors import IncompatibleModelsError, ModelLoadError

Source = Literal["zoo", "local", "hub"]
ZOO_PREFIX = "zoo:"
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")  # either one keeps Hugging Face off the network
HUB_PROBE_TIMEOUT_S = 1.5  # an uncached hub id first checks that the hub answers, for at most this long
# A folder holds a tokenizer when it has one of these (a fast tokenizer's tokenizer.json, a slow one's vocabulary).
VOCABULARY_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "tokenizer.model", "spiece.model")


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for generation: eval mode, on its device, in its dtype, with the tokenizer that goes with it."""

    name: str  # what the user asked for ("zoo:tiny-code-target", "./my-model", "gpt2")
    model: PreTrainedModel
    tokenizer: Any  # a transformers tokenizer (or the zoo's tokenizer for synthetic models)
    device: torch.device
    dtype: torch.dtype
    source: Source
    no_tokenizer_reason: str | None = None  # why `tokenizer` is None, e.g. which files the model's folder lacks

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


def offline_variable() -> str | None:
    """The environment variable that tells Hugging Face not to reach the network, if one is set (else None)."""
    for variable in OFFLINE_VARIABLES:
        if os.environ.get(variable, "0").strip().lower() in ("1", "true", "yes", "on"):
            return variable
    return None


def hub_offline() -> bool:
    """True when the user told Hugging Face not to reach the network (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``).

    The one definition of this check: everything that must respect it calls this function.
    """
    return offline_variable() is not None


def hub_unreachable(timeout_s: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """Why the Hugging Face hub (or the proxy in front of it) cannot be reached now, or None when it answers.

    One TCP connect, bounded by ``timeout_s`` in all (name resolution included), so that an uncached model fails at
    once on a machine without network instead of retrying for about a minute.
    """
    from huggingface_hub import constants

    endpoint = urllib.parse.urlsplit(constants.ENDPOINT)
    host = endpoint.hostname or ""
    proxy = urllib.request.getproxies().get(endpoint.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        endpoint = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host = endpoint.hostname or ""
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    outcome: list[OSError | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            outcome.append(None)
        except OSError as error:
            outcome.append(error)

    probe = threading.Thread(target=connect, name="specdec-hub-probe", daemon=True)
    probe.start()
    probe.join(timeout_s)
    if not outcome:
        return f"{host}:{port} did not answer within {timeout_s:g} s"
    error = outcome[0]
    return f"{host}:{port} cannot be reached ({error})" if error is not None else None


def _how_to_get(name: str) -> str:
    return (
        f"Download it on a machine with network access (`hf download {name}`, then copy the Hugging Face cache or "
        f"the downloaded folder here and pass that folder), or use a built-in model (`specdec zoo list`)."
    )


def _looks_like_path(name: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else with a separator is meant as a folder."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def _cached_snapshot(name: str) -> Path | None:
    """The local Hugging Face cache's folder for hub id ``name`` when it holds a config and weights, else None."""
    from huggingface_hub import try_to_load_from_cache

    try:
        config = try_to_load_from_cache(name, "config.json")
    except Exception:  # an id the hub client rejects (HFValidationError) is not cached either
        return None
    if not isinstance(config, str):
        return None
    folder = Path(config).parent
    has_weights = any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))
    return folder if has_weights else None


def _tokenizer_files(folder: Path) -> list[str]:
    """Names of the files in ``folder`` that belong to a tokenizer (configuration and vocabulary)."""
    return sorted(
        path.name
        for path in folder.iterdir()
        if "token" in path.name or path.name in (*VOCABULARY_FILES, "merges.txt") or path.suffix == ".tiktoken"
    )


def _has_vocabulary(files: list[str]) -> bool:
    return any(f in VOCABULARY_FILES or f.endswith((".model", ".tiktoken")) for f in files)


def _load_tokenizer(name: str, location: str, source: Source, local_only: bool) -> tuple[Any, str | None]:
    """(the tokenizer, None), or (None, why) for a model folder that holds no vocabulary: such a model still runs on
    token ids."""
    folder = Path(location)
    if source != "hub":
        files = _tokenizer_files(folder)
        if not _has_vocabulary(files):
            has = f"; it has only {', '.join(files)}" if files else ""
            return None, (
                f"folder {str(folder)!r} has no tokenizer: it lacks tokenizer.json and tokenizer_config.json with a "
                f"vocabulary file (vocab.json and merges.txt, vocab.txt or tokenizer.model){has}"
            )
    try:
        return AutoTokenizer.from_pretrained(location, local_files_only=local_only), None
    except (OSError, ValueError) as error:
        if not folder.is_dir():
            raise  # a hub download's own error: the caller says how to get the model
        text = str(error).strip()
        first_line = text.splitlines()[0] if text else type(error).__name__
        raise ModelLoadError(
            f"the tokenizer of model {name!r} cannot be loaded from {', '.join(_tokenizer_files(folder))} in "
            f"{str(folder)!r}: {first_line}; save a complete tokenizer there with `tokenizer.save_pretrained(folder)`"
        ) from error


def _unreadable_weights(folder: Path | None) -> list[Path]:
    """The ``*.safetensors`` files of ``folder`` whose header or data is damaged (the header check reads little)."""
    if folder is None or not folder.is_dir():
        return []
    bad = []
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except (SafetensorError, OSError):
            bad.append(path)
    return bad


def _corrupt_weights_error(name: str, location: str, source: Source, error: Exception) -> ModelLoadError:
    folder = Path(location) if Path(location).is_dir() else _cached_snapshot(name)
    bad = _unreadable_weights(folder)
    what = (
        f"weights file {', '.join(repr(str(p)) for p in bad)} of model {name!r} is"
        if bad
        else f"a weights file of model {name!r} (in {str(folder or location)!r}) is"
    )
    if source == "hub":
        fix = f"re-download it: `hf download {name} --force-download`"
    elif source == "zoo":
        fix = "reinstall specdec, whose copy of this built-in model is damaged"
    else:
        fix = "re-save the model there (`model.save_pretrained(folder)`) or copy or download the file again"
    return ModelLoadError(f"{what} corrupt or truncated ({error}); {fix}")


def _load_pretrained(
    name: str,
    location: str,
    device: torch.device,
    dtype: torch.dtype,
    source: Source,
    local_only: bool = True,
) -> LoadedModel:
    try:
        tokenizer, no_tokenizer_reason = _load_tokenizer(name, location, source, local_only)
        model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, local_files_only=local_only)
    except SafetensorError as error:
        raise _corrupt_weights_error(name, location, source, error) from error
    except OSError as error:
        if source == "hub":
            variable = offline_variable()
            where = "is not in the local Hugging Face cache" + (
                f" and {variable} is set" if variable else " and could not be downloaded"
            )
            raise ModelLoadError(f"model {name!r} {where}. {_how_to_get(name)}") from error
        raise ModelLoadError(f"could not load model {name!r} from {location}: {error}") from error
    except ValueError as error:  # e.g. an architecture transformers does not know, or not a causal LM
        raise ModelLoadError(f"model {name!r} cannot be loaded as a causal LM: {error}") from error
    model.to(device)  # type: ignore[arg-type]  # transformers' decorated `to` confuses mypy
    return _ready(name, model, tokenizer, device, dtype, source, no_tokenizer_reason)


def _load_hub(name: str, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """A hub id: from the local cache when it is there; else downloaded, unless offline (checked first, quickly)."""
    snapshot = _cached_snapshot(name)
    if snapshot is not None:
        return _load_pretrained(name, str(snapshot), device, dtype, "hub")
    variable = offline_variable()
    if variable is not None:
        raise ModelLoadError(
            f"model {name!r} is not in the local Hugging Face cache and {variable} is set. {_how_to_get(name)}"
        )
    unreachable = hub_unreachable()
    if unreachable is not None:
        raise ModelLoadError(
            f"model {name!r} is not in the local Hugging Face cache and the hub cannot be reached to download it "
            f"({unreachable}). {_how_to_get(name)}"
        )
    return _load_pretrained(name, name, device, dtype, "hub", local_only=False)


def _ready(
    name: str,
    model: PreTrainedModel,
    tokenizer: Any,
    device: torch.device,
    dtype: torch.dtype,
    source: Source,
    no_tokenizer_reason: str | None = None,
) -> LoadedModel:
    model.eval()
    model.requires_grad_(False)
    return LoadedModel(
        name=name,
        model=model,
        tokenizer=tokenizer,
        device=device,
        dtype=dtype,
        source=source,
        no_tokenizer_reason=no_tokenizer_reason,
    )


def load_model(name: str, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto") -> LoadedModel:
    """Load ``name``: ``zoo:ENTRY`` (a built-in model), a local folder, or a hub id (from the local cache first).

    Errors name the model and say how to get it. Nothing downloads when ``HF_HUB_OFFLINE`` or
    ``TRANSFORMERS_OFFLINE`` is set, and an uncached hub id fails at once when the hub cannot be reached. A local
    folder without tokenizer files loads with ``tokenizer=None`` (it runs on token ids; ``no_tokenizer_reason`` says
    which files are missing).
    """
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    transformers_logging.disable_progress_bar()  # progress belongs to the caller's reporter, not to stderr
    if name.startswith(ZOO_PREFIX):
        from specdec import zoo  # imported on demand: synthetic builders pull in more of transformers

        entry = zoo.resolve_zoo(name)
        if entry.kind == "heads":
            raise ModelLoadError(
                f"{name!r} is a set of draft heads for zoo:{entry.target}, not a causal LM: load it with "
                f"specdec.load_heads({name!r}, target) or draft with it (--draft-method medusa/eagle)"
            )
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
    if folder.exists():
        raise ModelLoadError(
            f"model {name!r} is a file, not a folder: pass the model's folder (the one holding its config.json and "
            f"weights{', e.g. ' + repr(str(folder.parent)) if (folder.parent / 'config.json').is_file() else ''})"
        )
    if _looks_like_path(name):
        raise ModelLoadError(f"model folder {name!r} does not exist")
    return _load_hub(name, torch_device, torch_dtype)


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
