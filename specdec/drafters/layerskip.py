"""Layer-skip self-speculation (LayerSkip, Elhoushi et al. 2024; Draft & Verify, Zhang et al. 2023): the target's
own first ``L`` layers, followed by its final norm and output head, draft for the whole target.

No extra weights: the draft is a view of the target's modules (the fast path's lean module with a shorter layer
list, or the ``transformers`` model with a shorter layer list), sharing every tensor. What it costs is its own KV
cache for its ``L`` layers (``L / num_layers`` of the target's cache) and ``L / num_layers`` of a target forward per
drafted token, plus the output head each time. Early layers of a model that was not trained for early exit agree
with the full model less often than a separately trained draft; measure acceptance against ``L``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

from torch import nn
from transformers import PreTrainedModel

from specdec.decoder import Decoder, HFDecoder
from specdec.drafters.model import ModelDrafter
from specdec.errors import ConfigError, UnsupportedModelError
from specdec.fast.decoder import FastDecoder
from specdec.loading import LoadedModel


@dataclass(frozen=True)
class LayerSkipOptions:
    layers: int | None = None  # the first L layers draft; None: half the target's layers

    def __post_init__(self) -> None:
        if self.layers is not None and self.layers < 1:
            raise ConfigError(f"layerskip drafter: layers must be >= 1, got {self.layers}")


def num_layers(model: PreTrainedModel) -> int:
    return int(model.config.get_text_config().num_hidden_layers)


def _layer_list(model: PreTrainedModel, total: int) -> str:
    """Dotted name of the module list holding the ``total`` decoder layers ("model.layers", "transformer.h")."""
    found = [name for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == total and name]
    if not found:
        raise UnsupportedModelError(
            f"{type(model).__name__}: found no list of its {total} decoder layers, so layer-skip cannot draft with it"
        )
    return min(found, key=lambda name: name.count("."))


def _shallow_copy(module: nn.Module) -> nn.Module:
    """A new module object over the same parameters, buffers and submodules, whose submodule table is its own."""
    clone = copy.copy(module)
    clone.__dict__["_modules"] = dict(module._modules)
    return clone


def first_layers_model(model: PreTrainedModel, count: int) -> PreTrainedModel:
    """A view of ``model`` that runs its first ``count`` decoder layers, then its final norm and head. It shares
    every weight with ``model``; only the modules on the way to the layer list are new objects (``model`` is
    untouched), and its config says ``count`` layers so that its KV cache holds ``count``."""
    config = model.config
    path = _layer_list(model, num_layers(model)).split(".")
    view_config = copy.deepcopy(config)
    view_config.num_hidden_layers = count
    if isinstance(getattr(view_config, "layer_types", None), list):
        view_config.layer_types = view_config.layer_types[:count]
    root = _shallow_copy(model)
    node = root
    chain = [root]
    for name in path[:-1]:
        child = _shallow_copy(node._modules[name])  # type: ignore[arg-type]
        node._modules[name] = child
        node, chain = child, [*chain, child]
    layers = node._modules[path[-1]]
    assert isinstance(layers, nn.ModuleList)
    node._modules[path[-1]] = nn.ModuleList(list(layers)[:count])
    for module in chain:
        if getattr(module, "config", None) is config:
            module.__dict__["config"] = view_config
    return root  # type: ignore[return-value]


def layer_skip_drafter(options: LayerSkipOptions, target: LoadedModel, target_decoder: Decoder) -> ModelDrafter:
    """The drafter over the target's first layers, on the path the target runs (fast or generic)."""
    total = num_layers(target.model)
    count = options.layers if options.layers is not None else max(1, total // 2)
    if count >= total:
        raise ConfigError(
            f"layerskip drafter: layers={count} but {target.name!r} has {total} layers; the draft must use fewer "
            f"(1..{total - 1})"
        )
    name = f"layerskip(L={count}/{total})"
    decoder: Decoder
    if isinstance(target_decoder, FastDecoder):
        decoder = target_decoder.first_layers(count)
    else:
        view = replace(target, name=f"{target.name}[:{count}]", model=first_layers_model(target.model, count))
        decoder = HFDecoder(view, target_decoder.vocab_size)
    decoder.name = name
    return ModelDrafter(decoder, name=name, method="layerskip")
