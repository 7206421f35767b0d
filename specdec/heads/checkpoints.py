"""Loading draft heads from a local folder: the layouts FasterDecoding/Medusa and SafeAILab/EAGLE publish, and the
zoo's own.

Layouts (tensor names as stored; ``D`` the target's hidden size, ``V`` its vocabulary, ``L`` residual blocks):

- Medusa: ``config.json`` with ``medusa_num_heads``, ``medusa_num_layers`` (and ``base_model_name_or_path``);
  weights ``medusa_lm_head.safetensors`` / ``medusa_lm_head.pt`` (or ``model.safetensors`` / ``pytorch_model.bin``),
  names ``{i}.{j}.linear.weight [D, D]``, ``{i}.{j}.linear.bias [D]`` for block ``j < L`` of head ``i``, and
  ``{i}.{L}.weight [V, D]`` (the head's vocabulary projection); a ``medusa_head.`` prefix (Medusa-2 exports) is
  accepted.
- EAGLE-1/2: a Llama ``config.json`` (``num_hidden_layers: 1``; optional ``"bias"`` for ``fc``) and
  ``pytorch_model.bin`` or ``model.safetensors`` with ``fc.weight [D, 2D]``, ``fc.bias [D]`` (unless ``bias`` is
  false), ``layers.0.self_attn.{q,k,v,o}_proj.weight``, ``layers.0.mlp.{gate,up,down}_proj.weight``,
  ``layers.0.post_attention_layernorm.weight`` (no ``input_layernorm``); an ``embed_tokens.weight`` copy of the
  target's embedding may be present and is not needed.
- EAGLE-3: a Llama ``config.json`` with ``draft_vocab_size`` (optionally ``target_hidden_size``) and weights
  ``fc.weight [D, 3D]``, ``midlayer.self_attn.{q,k,v}_proj.weight [*, 2D]``, ``midlayer.self_attn.o_proj.weight``,
  ``midlayer.mlp.*``, ``midlayer.{hidden_norm,input_layernorm,post_attention_layernorm}.weight``, ``norm.weight``,
  ``lm_head.weight [Vd, D]``, ``d2t [Vd] int64``, ``t2d [V] bool`` (the last two absent when ``Vd = V``).
- The zoo's heads: ``config.json`` with ``head_type`` (``medusa`` or ``eagle``) and ``model.safetensors`` with the
  modules' own parameter names.

A checkpoint that does not fit its target (hidden size, vocabulary) is refused with
:class:`~specdec.errors.IncompatibleModelsError` naming both shapes and the file, before anything is built.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

import torch
from safetensors import safe_open
from torch import nn
from transformers import PreTrainedModel

from specdec.errors import IncompatibleModelsError, ModelLoadError, UnsupportedModelError
from specdec.heads.eagle import Eagle3Head, EagleConfig, EagleHead, eagle3_layers
from specdec.heads.layer import DraftAttention, LayerShape
from specdec.heads.medusa import MedusaConfig, MedusaHeads
from specdec.heads.target import TargetParts
from specdec.loading import LoadedModel

Head = MedusaHeads | EagleHead | Eagle3Head
M = TypeVar("M", bound=nn.Module)
MEDUSA_FILES = ("medusa_lm_head.safetensors", "medusa_lm_head.pt", "model.safetensors", "pytorch_model.bin")
EAGLE_FILES = ("model.safetensors", "pytorch_model.bin")


class TensorFile:
    """The tensors of one weights file, read lazily (safetensors) or memory-mapped (torch pickles)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.suffix == ".safetensors":
            self._handle = safe_open(str(path), framework="pt", device="cpu")
            self._tensors: Mapping[str, torch.Tensor] | None = None
            names = list(self._handle.keys())
        else:
            try:
                loaded = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            except Exception as error:  # a corrupt pickle, or not a state dict
                raise ModelLoadError(f"cannot read weights file {str(path)!r}: {error}") from error
            if not isinstance(loaded, dict):
                raise ModelLoadError(f"weights file {str(path)!r} holds a {type(loaded).__name__}, not a state dict")
            self._tensors = loaded
            names = list(loaded)
        self.names = names

    def shape(self, name: str) -> tuple[int, ...]:
        if self._tensors is not None:
            return tuple(self._tensors[name].shape)
        return tuple(self._handle.get_slice(name).get_shape())

    def get(self, name: str) -> torch.Tensor:
        return self._tensors[name] if self._tensors is not None else self._handle.get_tensor(name)


def load_head_folder(
    folder: str | Path, target: TargetParts, dtype: torch.dtype | None = None, device: torch.device | str = "cpu"
) -> Head:
    """The head stored in ``folder`` (any layout above), checked against ``target`` and ready to run."""
    folder = Path(folder)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"head folder {str(folder)!r} has no config.json")
    config = json.loads(config_file.read_text())
    dtype = dtype or target.lm_head.dtype
    kind = config.get("head_type")
    if kind == "medusa" or "medusa_num_heads" in config:
        return load_medusa(folder, config, target, dtype, device)
    if kind == "eagle" or "hidden_size" in config:
        return load_eagle(folder, config, target, dtype, device)
    raise ModelLoadError(
        f"{str(config_file)!r} describes neither Medusa heads (medusa_num_heads) nor an EAGLE head (a Llama config)"
    )


def load_medusa(
    folder: Path, config: dict, target: TargetParts, dtype: torch.dtype, device: torch.device | str = "cpu"
) -> MedusaHeads:
    file = TensorFile(_weights_file(folder, MEDUSA_FILES))
    if config.get("head_type") == "medusa":
        medusa = MedusaConfig(**{k: v for k, v in config.items() if k != "head_type"})
        names = {n: n for n in file.names}
    else:
        num_heads, num_layers = int(config["medusa_num_heads"]), int(config.get("medusa_num_layers", 1))
        names = _medusa_names(file, num_heads, num_layers)
        try:
            vocab, hidden = file.shape(_source(names, "heads.0.lm_head.weight"))
        except KeyError:
            raise ModelLoadError(
                f"{str(file.path)!r} has no Medusa projection '0.{num_layers}.weight' (medusa_num_layers "
                f"{num_layers}); is it a Medusa head file?"
            ) from None
        medusa = MedusaConfig(num_heads, num_layers, hidden, vocab)
    if (medusa.hidden_size, medusa.vocab_size) != (target.hidden_size, target.vocab_size):
        raise IncompatibleModelsError(
            f"Medusa heads in {str(file.path)!r} have hidden size {medusa.hidden_size} and vocabulary "
            f"{medusa.vocab_size}, but the target has hidden size {target.hidden_size} and vocabulary "
            f"{target.vocab_size}; use heads trained for this target"
        )
    with torch.device("meta"):
        heads = MedusaHeads(medusa, target)
    return _fill(heads, file, names, dtype, device)


def load_eagle(
    folder: Path, config: dict, target: TargetParts, dtype: torch.dtype, device: torch.device | str = "cpu"
) -> EagleHead | Eagle3Head:
    file = TensorFile(_weights_file(folder, EAGLE_FILES))
    if config.get("head_type") == "eagle":
        eagle = EagleConfig.read(config)
    else:
        eagle = _published_eagle_config(config, file, target)
    fc_in = file.shape("fc.weight")[1] if "fc.weight" in file.names else None
    expected_fc = len(eagle.feature_layers or (0, 0)) * target.hidden_size  # EAGLE-1: [embedding ; feature]
    if eagle.vocab_size != target.vocab_size or fc_in != expected_fc:
        raise IncompatibleModelsError(
            f"EAGLE-{eagle.version} head in {str(file.path)!r} has fc input {fc_in} and vocabulary {eagle.vocab_size} "
            f"(config: hidden size {eagle.target_hidden_size}), but the target has hidden size {target.hidden_size} "
            f"(fc input {expected_fc}) and vocabulary {target.vocab_size}; use a head trained for this target"
        )
    if eagle.version == 3 and eagle.feature_layers and max(eagle.feature_layers) >= target.num_layers - 1:
        raise IncompatibleModelsError(
            f"EAGLE-3 head in {str(file.path)!r} reads target layers {eagle.feature_layers}"
            f" but the target has {target.num_layers}"
        )
    cls = EagleHead if eagle.version == 1 else Eagle3Head
    with torch.device("meta"):
        head = cls(eagle, target)
    names = {n: n for n in file.names if not n.startswith("embed_tokens.")}
    if eagle.version == 3 and "d2t" not in file.names:  # EAGLE-3 with the full vocabulary: identity maps
        head.register_buffer("d2t", torch.zeros(eagle.draft_vocab_size, dtype=torch.long))
        head.register_buffer("t2d", torch.ones(eagle.vocab_size, dtype=torch.bool))
    return _fill(head, file, names, dtype, device)


def _published_eagle_config(config: dict, file: TensorFile, target: TargetParts) -> EagleConfig:
    version = 3 if "draft_vocab_size" in config or any(n.startswith("midlayer.") for n in file.names) else 1
    if version == 1 and int(config.get("num_hidden_layers", 1)) != 1:
        raise UnsupportedModelError(
            f"EAGLE head {str(file.path)!r} has {config['num_hidden_layers']} layers; "
            "specdec drives one-layer EAGLE heads"
        )
    hidden = int(config["hidden_size"])
    prefix = "midlayer." if version == 3 else "layers.0."
    scaling = config.get("rope_scaling") or {}
    layer = LayerShape(
        hidden_size=hidden,
        num_heads=int(config["num_attention_heads"]),
        num_kv_heads=int(config.get("num_key_value_heads") or config["num_attention_heads"]),
        intermediate_size=int(config["intermediate_size"]),
        attention_input=2 * hidden if version == 3 else hidden,
        rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        rope_theta=float(config.get("rope_theta", 10000.0)),
        rope_scaling=tuple(sorted(scaling.items())),
        max_positions=int(config.get("max_position_embeddings", 2048)),
        qkv_bias=f"{prefix}self_attn.q_proj.bias" in file.names,
    )
    vocab = int(config["vocab_size"])
    return EagleConfig(
        version=version,
        layer=layer,
        vocab_size=vocab,
        draft_vocab_size=int(config.get("draft_vocab_size", vocab)),
        target_hidden_size=int(config.get("target_hidden_size", hidden)),
        fc_bias="fc.bias" in file.names,
        feature_layers=eagle3_layers(target.num_layers) if version == 3 else (),
    )


def _medusa_names(file: TensorFile, num_heads: int, num_layers: int) -> dict[str, str]:
    """Published names -> this module's: ``{i}.{j}.linear.*`` -> ``heads.{i}.blocks.{j}.linear.*``,
    ``{i}.{L}.weight`` -> ``heads.{i}.lm_head.weight``."""
    names: dict[str, str] = {}
    pattern = re.compile(r"^(?:medusa_head\.)?(\d+)\.(\d+)\.(linear\.weight|linear\.bias|weight)$")
    for name in file.names:
        match = pattern.match(name)
        if match is None:
            continue
        i, j, rest = int(match[1]), int(match[2]), match[3]
        if i >= num_heads:
            continue  # a config may ask for fewer heads than the file holds
        if rest == "weight" and j == num_layers:
            names[name] = f"heads.{i}.lm_head.weight"
        elif rest != "weight" and j < num_layers:
            names[name] = f"heads.{i}.blocks.{j}.{rest}"
    return names


def _source(names: dict[str, str], destination: str) -> str:
    for src, dst in names.items():
        if dst == destination:
            return src
    raise KeyError(destination)


def _weights_file(folder: Path, candidates: tuple[str, ...]) -> Path:
    for name in candidates:
        if (folder / name).is_file():
            return folder / name
    raise ModelLoadError(f"head folder {str(folder)!r} has no weights file (looked for {', '.join(candidates)})")


def _fill(module: M, file: TensorFile, names: dict[str, str], dtype: torch.dtype, device: torch.device | str) -> M:
    """Assign the file's tensors to ``module`` (built on the meta device), checking every name and shape."""
    expected = module.state_dict()
    provided = {dst: src for src, dst in names.items()}
    missing = sorted(n for n in expected if n not in provided and expected[n].is_meta)
    if missing:
        raise ModelLoadError(
            f"weights file {str(file.path)!r} lacks {len(missing)} tensors the head needs, e.g. {missing[:4]}"
        )
    state = {}
    for name, reference in expected.items():
        if name not in provided:
            continue  # built for real already (EAGLE-3's identity vocabulary maps)
        shape = file.shape(provided[name])
        if shape != tuple(reference.shape):
            raise IncompatibleModelsError(
                f"tensor {provided[name]!r} in {str(file.path)!r} has shape {list(shape)}, the head expects "
                f"{list(reference.shape)}"
            )
        tensor = file.get(provided[name])
        state[name] = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype)
    module.load_state_dict(state, assign=True, strict=False)
    for sub in module.modules():  # non-persistent rotary tables were built on the meta device: rebuild them
        if isinstance(sub, DraftAttention):
            sub.rotary = type(sub.rotary)(sub.shape.llama_config()).to(device)
    return module.eval()


def load_heads(name: str | Path, target: LoadedModel | PreTrainedModel, dtype: torch.dtype | None = None) -> Head:
    """Draft heads by name for ``target``: ``zoo:tiny-code-medusa``, ``zoo:tiny-code-eagle``, or a local folder in
    any layout above. Built on the target's device, in its dtype unless ``dtype`` is given; refused (with both
    shapes and the file named) when they do not fit the target."""
    from specdec.zoo.registry import is_zoo_name, resolve_zoo

    model = target.model if isinstance(target, LoadedModel) else target
    if isinstance(name, str) and is_zoo_name(name):
        entry = resolve_zoo(name)
        if entry.kind != "heads" or entry.path is None:
            raise ModelLoadError(f"{name!r} is a {entry.kind} model, not a set of draft heads")
        folder = entry.path
    else:
        folder = Path(name).expanduser()
        if not folder.is_dir():
            raise ModelLoadError(f"head folder {str(folder)!r} does not exist")
    parts = TargetParts.of(model)
    return load_head_folder(folder, parts, dtype or parts.lm_head.dtype, parts.lm_head.device)
