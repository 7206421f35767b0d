"""The one drafter factory, used by the CLI, the Python API and the suites alike.

A drafting method is a name, a frozen dataclass of its options and a builder. Adding a method is one module in
``specdec/drafters/`` and one line in ``METHODS``. ``make_drafter(method, **options)`` validates the options into a
:class:`DraftSpec`; the engine builds the drafter from it once it has the target (layer-skip drafts with the
target's own layers).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from specdec.decoder import Decoder
from specdec.drafters.base import Drafter
from specdec.drafters.eagle import EagleDrafter, EagleOptions
from specdec.drafters.layerskip import LayerSkipOptions, layer_skip_drafter
from specdec.drafters.medusa import MedusaDrafter, MedusaOptions
from specdec.drafters.model import ModelDrafter, ModelOptions
from specdec.drafters.ngram import NgramDrafter, NgramOptions
from specdec.drafters.suffix import SuffixDrafter, SuffixOptions
from specdec.errors import ConfigError, IncompatibleModelsError
from specdec.loading import LoadedModel, shared_vocab_size

Builder = Callable[["DraftSpec", LoadedModel, Decoder, str], Drafter]


@dataclass(frozen=True)
class DraftMethod:
    name: str
    options: type  # a frozen dataclass of the method's settings
    needs_model: bool  # whether a draft model must be given (``--draft``)
    summary: str
    build: Builder = field(repr=False)


def _build_model(spec: DraftSpec, target: LoadedModel, target_decoder: Decoder, decoder: str) -> Drafter:
    from specdec.decoders import make_decoder

    assert spec.model is not None
    if spec.model.device != target.device:
        raise IncompatibleModelsError(
            f"target {target.name!r} is on {target.device} but draft {spec.model.name!r} is on {spec.model.device}"
        )
    return ModelDrafter(make_decoder(spec.model, target_decoder.vocab_size, decoder), options=spec.options)


METHODS: dict[str, DraftMethod] = {
    m.name: m
    for m in (
        DraftMethod("model", ModelOptions, True, "a smaller model sharing the target's vocabulary", _build_model),
        DraftMethod(
            "ngram", NgramOptions, False, "prompt lookup: copy what followed the last n-gram match",
            lambda spec, target, decoder, choice: NgramDrafter(spec.options),
        ),
        DraftMethod(
            "suffix", SuffixOptions, False, "suffix matching: the most frequent continuation of the longest match",
            lambda spec, target, decoder, choice: SuffixDrafter(spec.options),
        ),
        DraftMethod(
            "layerskip", LayerSkipOptions, False, "the target's own first L layers (self-speculation)",
            lambda spec, target, decoder, choice: layer_skip_drafter(spec.options, target, decoder),
        ),
        DraftMethod(
            "medusa", MedusaOptions, False, "Medusa heads on the target's last hidden state (a static tree)",
            lambda spec, target, decoder, choice: MedusaDrafter(spec.options, target),
        ),
        DraftMethod(
            "eagle", EagleOptions, False, "an EAGLE head continuing the target's features (EAGLE-2 tree or chain)",
            lambda spec, target, decoder, choice: EagleDrafter(spec.options, target),
        ),
    )
}  # fmt: skip


@dataclass(frozen=True)
class DraftSpec:
    """A drafting method with validated options (and the draft model, for ``model``); built by the engine."""

    method: str
    options: Any  # the method's options dataclass
    model: LoadedModel | None = None

    @classmethod
    def for_model(cls, model: LoadedModel) -> DraftSpec:
        return make_drafter("model", model=model)

    def vocab_size(self, target: LoadedModel) -> int:
        """The vocabulary target and drafter share (a draft model may pad its output layer differently)."""
        return shared_vocab_size(target, self.model) if self.model is not None else target.vocab_size


def method_names() -> str:
    return ", ".join(METHODS)


def _method(name: str) -> DraftMethod:
    method = METHODS.get(name)
    if method is None:
        raise ConfigError(f"unknown draft method {name!r}: expected one of {method_names()}")
    return method


def option_names(method: str) -> list[str]:
    return [f.name for f in dataclasses.fields(_method(method).options)]


def make_drafter(method: str, model: LoadedModel | None = None, **options: Any) -> DraftSpec:
    """A drafting method with its options, checked now: ``make_drafter("ngram", max_ngram=4)``,
    ``make_drafter("model", model=load_model("./draft"))``, ``make_drafter("layerskip", layers=3)``.

    Pass it as ``SpeculativeEngine(target, draft=...)``."""
    spec_method = _method(method)
    if spec_method.needs_model and model is None:
        raise ConfigError(f"draft method {method!r} needs a draft model (--draft NAME, or model=...)")
    if not spec_method.needs_model and model is not None:
        raise ConfigError(f"draft method {method!r} drafts without a model; do not pass one (--draft)")
    hints = typing.get_type_hints(spec_method.options)
    for key, value in options.items():
        if key not in hints:
            known = ", ".join(option_names(method)) or "none"
            raise ConfigError(f"unknown option {key!r} for draft method {method!r}: its options are {known}")
        _check_type(method, key, value, hints[key])
    return DraftSpec(method=method, options=spec_method.options(**options), model=model)


def _check_type(method: str, key: str, value: Any, hint: Any) -> None:
    allowed = typing.get_args(hint) or (hint,)
    for kind in allowed:
        if kind is type(None) and value is None:
            return
        if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
            return
        if kind in (int, str) and isinstance(value, kind) and not isinstance(value, bool):
            return
        if kind is bool and isinstance(value, bool):
            return
    names = " or ".join("none" if k is type(None) else k.__name__ for k in allowed)
    raise ConfigError(f"option {key!r} of draft method {method!r} must be {names}, got {value!r}")


def parse_options(method: str, pairs: Sequence[str]) -> dict[str, Any]:
    """``["max_ngram=4", "corpus=true"]`` -> typed options of ``method`` (as the CLI's ``--draft-option``)."""
    hints = typing.get_type_hints(_method(method).options)
    parsed: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"draft option {pair!r} is not KEY=VALUE")
        if key not in hints:
            known = ", ".join(hints) or "none"
            raise ConfigError(f"unknown option {key!r} for draft method {method!r}: its options are {known}")
        parsed[key] = _convert(method, key, text.strip(), hints[key])
    return parsed


def _convert(method: str, key: str, text: str, hint: Any) -> Any:
    allowed = typing.get_args(hint) or (hint,)
    lowered = text.lower()
    for kind in allowed:
        if kind is type(None) and lowered in ("none", "null", ""):
            return None
        if kind is bool and lowered in ("true", "false", "1", "0", "yes", "no"):
            return lowered in ("true", "1", "yes")
        if kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                continue
        if kind is str:
            return text
    names = " or ".join("none" if k is type(None) else k.__name__ for k in allowed)
    raise ConfigError(f"option {key!r} of draft method {method!r} must be {names}, got {text!r}")


def build_drafter(spec: DraftSpec, target: LoadedModel, target_decoder: Decoder, decoder: str) -> Drafter:
    """The drafter of ``spec`` for ``target`` (whose decoder is ``target_decoder``; ``decoder`` is the choice of
    path a draft model gets)."""
    return METHODS[spec.method].build(spec, target, target_decoder, decoder)


def describe_methods() -> Mapping[str, str]:
    return {name: method.summary for name, method in METHODS.items()}
