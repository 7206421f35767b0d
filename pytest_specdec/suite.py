"""A benchmark suite file: its schema, validated once, with errors that name the file, the key, the line and what
was expected.

A suite is a list of case groups (``cases:``), each a model pair with the values to sweep; suite-wide ``defaults:``
fill in what a group leaves out. Values are checked through the engine's own configuration dataclasses, so the
rules (K >= 1, top_p in (0, 1], ...) are the engine's. ``docs/suites.md`` documents the schema.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from pytest_specdec.endpoints import ServeSpec
from pytest_specdec.gating import Tolerances
from pytest_specdec.prompts import PromptSet, parse_prompts
from pytest_specdec.yaml_source import KeyPath, LocatedYaml, key_name, load_yaml
from specdec.config import AcceptanceConfig, AdaptiveKConfig, GenerationConfig, Policy, SpeculationConfig
from specdec.device import DEVICE_CHOICES, DTYPE_CHOICES, DTYPE_SHORT_NAMES, dtype_name, resolve_dtype
from specdec.drafters import METHODS, DraftSpec, make_drafter, method_names, option_names
from specdec.errors import ConfigError, ModelLoadError
from specdec.hf_engine import HF_ASSISTED, HF_COMPILE, HF_STATIC
from specdec.loading import ZOO_PREFIX
from specdec.zoo import list_zoo, resolve_zoo

SCHEMA_VERSION = 1
TOP_LEVEL_KEYS = ("schema_version", "description", "defaults", "cases")
DEVICES = tuple(device for device in DEVICE_CHOICES if device != "auto")  # a case names its device
SHORT_DTYPES = {dtype_name(dtype): short for dtype, short in DTYPE_SHORT_NAMES.items()}  # "float16" -> "fp16"
DTYPE_NAMES = (*(d for d in DTYPE_CHOICES if d != "auto"), *SHORT_DTYPES.values())
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
FOLDER_PREFIXES = ("./", "../", "/", "~")
MAX_K = 64  # tokens drafted per step: far beyond any useful K, small enough that a typo cannot allocate much
MAX_THREADS = 1024  # torch intra-op threads: more than any machine has cores
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
MARKER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
ADAPTIVE_KEYS = (*(f.name for f in fields(AdaptiveKConfig)), "start_k")
POLICY_KEYS = ("name", *(f.name for f in fields(AcceptanceConfig) if f.name != "policy"))
SPECDEC = "specdec"  # the engine of this project (the default)
HF = "hf"  # transformers' generate: HF_STATIC, and HF_COMPILE where transformers compiles by default (CUDA)
OPENAI = "openai"  # an OpenAI-compatible HTTP endpoint: `endpoint:` or a `specdec serve` the plugin starts (`serve:`)
ENGINES = (SPECDEC, HF, HF_STATIC, HF_COMPILE, HF_ASSISTED, OPENAI)  # what `engine:` takes
SERVE_KEYS = ("target", "draft", "k", "device", "dtype")
SERVING_KEYS = ("endpoint", "serve", "concurrency", "request_rate", "requests", "request_timeout", "case_timeout")
ENDPOINT = re.compile(r"^https?://[^/\s:]+(:\d+)?(/\S*)?$")
HF_ASSISTED_DRAFTS = ("model", "ngram")  # assisted generation with a draft model; prompt lookup for ngram


@dataclass(frozen=True)
class PolicyChoice:
    label: str  # in case ids: the policy name, plus its parameters when the suite sets them
    acceptance: AcceptanceConfig


@dataclass(frozen=True)
class DraftChoice:
    """One value of ``draft:``: a drafting method with its options, checked through ``make_drafter``.

    Two choices are equal when they compute the same (method, model and every option, defaults filled in), so a
    value listed twice is caught even when one spells out a default. ``label`` names it in case ids.
    """

    method: str  # a key of specdec.drafters.METHODS
    model: str | None  # the resolved draft model for method `model`, else None
    options: Any  # the method's frozen options dataclass, defaults filled in
    label: str = dataclasses.field(default="", compare=False)  # "ngram", "ngram-max_ngram=4", "model"

    def options_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.options)

    def spec(self, model: Any = None) -> DraftSpec:
        """The engine's draft (``model``: the loaded draft model, for method ``model``)."""
        return make_drafter(self.method, model=model, **self.options_dict())


@dataclass(frozen=True)
class AdaptiveK:
    config: AdaptiveKConfig
    start_k: int  # K of the first step


@dataclass(frozen=True)
class CaseGroup:
    """One entry of ``cases:`` with the defaults filled in; every tuple is swept (the cross product)."""

    name: str
    line: int | None
    target: str  # resolved model name: zoo:NAME, an absolute folder, or a hub id
    draft: tuple[DraftChoice, ...]  # swept; empty: only the autoregressive case
    k: tuple[int, ...]
    adaptive_k: AdaptiveK | None
    device: tuple[str, ...]
    dtype: tuple[str, ...]  # "float32", "float16", "bfloat16"
    batch_size: tuple[int, ...]
    temperature: tuple[float, ...]
    policy: tuple[PolicyChoice, ...]
    max_new_tokens: tuple[int, ...]
    top_k: int | None
    top_p: float | None
    seed: int
    stop_at_eos: bool
    threads: int | None  # torch intra-op CPU threads while the case runs (None: leave torch's setting)
    prompts: PromptSet
    rounds: int
    warmup_rounds: int
    markers: tuple[str, ...]
    tolerances: Tolerances
    engine: tuple[str, ...] = (SPECDEC,)  # swept: SPECDEC, HF, HF_STATIC, HF_COMPILE, HF_ASSISTED; or OPENAI alone
    # engine openai (serving cases): one of endpoint and serve, and the load to send
    endpoint: str | None = None  # http://HOST:PORT/v1 of a running OpenAI-compatible server
    serve: ServeSpec | None = None  # the `specdec serve` the plugin starts
    concurrency: tuple[int, ...] = (1,)  # swept: requests in flight at most
    request_rate: tuple[float | None, ...] = (None,)  # swept: requests/s (Poisson arrivals); None: all at once
    requests: int | None = None  # per round; None: max(prompts, concurrency)
    request_timeout: float = 120.0  # seconds, one request
    case_timeout: float = 600.0  # seconds, one round of all the case's requests


@dataclass(frozen=True)
class Suite:
    name: str  # the file's stem: bench_suites/cpu-smoke.yaml -> "cpu-smoke"
    path: Path
    description: str
    groups: tuple[CaseGroup, ...]


# ------------------------------------------------------------------------------------------------- value parsers
Parser = Callable[[LocatedYaml, KeyPath, Any], Any]


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _integer(minimum: int) -> Parser:
    def parse(doc: LocatedYaml, key_path: KeyPath, value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise doc.error(key_path, f"expected an integer >= {minimum}, got {value!r} ({_type_name(value)})")
        return value

    return parse


def _number(doc: LocatedYaml, key_path: KeyPath, value: Any) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise doc.error(key_path, f"expected a number, got {value!r} ({_type_name(value)})")
    return float(value)


def _boolean(doc: LocatedYaml, key_path: KeyPath, value: Any) -> bool:
    if not isinstance(value, bool):
        raise doc.error(key_path, f"expected true or false, got {value!r} ({_type_name(value)})")
    return value


def _optional(parse: Parser) -> Parser:
    return lambda doc, key_path, value: None if value is None else parse(doc, key_path, value)


def _one_or_many(parse: Parser, what: str) -> Parser:
    """A scalar or a non-empty list of them (a sweep), as a tuple in order; a value listed twice is an error (it
    would give two cases one id)."""

    def parse_many(doc: LocatedYaml, key_path: KeyPath, value: Any) -> tuple[Any, ...]:
        if not isinstance(value, list):
            return (parse(doc, key_path, value),)
        if not value:
            raise doc.error(key_path, f"expected {what} or a non-empty list of them, got an empty list")
        items: dict[Any, int] = {}
        for index, raw in enumerate(value):
            item = parse(doc, (*key_path, index), raw)
            if item in items:
                first = key_name((*key_path, items[item]))
                raise doc.error((*key_path, index), f"{raw!r} is listed twice (also as {first}): give each value once")
            items[item] = index
        return tuple(items)

    return parse_many


def _engine_check(doc: LocatedYaml, key_path: KeyPath, build: Callable[[], Any]) -> Any:
    """Build an engine config; its ConfigError (which names the field) becomes a SuiteError at ``key_path``."""
    try:
        return build()
    except ConfigError as error:
        raise doc.error(key_path, str(error)) from None


def _k(doc: LocatedYaml, key_path: KeyPath, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise doc.error(key_path, f"expected K as an integer >= 1, got {value!r} ({_type_name(value)})")
    _engine_check(doc, key_path, lambda: SpeculationConfig(k=value))
    _at_most(doc, key_path, value, MAX_K, "K (tokens drafted per step)")
    return value


def _at_most(doc: LocatedYaml, key_path: KeyPath, value: int, bound: int, what: str) -> None:
    if value > bound:
        raise doc.error(key_path, f"{what} is at most {bound:,}, got {value:,}")


def _temperature(doc: LocatedYaml, key_path: KeyPath, value: Any) -> float:
    number = _number(doc, key_path, value)
    _engine_check(doc, key_path, lambda: GenerationConfig(temperature=number))
    return number


def _max_new_tokens(doc: LocatedYaml, key_path: KeyPath, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise doc.error(key_path, f"expected an integer >= 1 (tokens), got {value!r} ({_type_name(value)})")
    _engine_check(doc, key_path, lambda: GenerationConfig(max_new_tokens=value))
    return value


def _top_k(doc: LocatedYaml, key_path: KeyPath, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise doc.error(key_path, f"expected an integer >= 0, got {value!r} ({_type_name(value)})")
    _engine_check(doc, key_path, lambda: GenerationConfig(top_k=value))
    return value


def _top_p(doc: LocatedYaml, key_path: KeyPath, value: Any) -> float:
    number = _number(doc, key_path, value)
    _engine_check(doc, key_path, lambda: GenerationConfig(top_p=number))
    return number


def _seed(doc: LocatedYaml, key_path: KeyPath, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise doc.error(key_path, f"expected an integer seed, got {value!r} ({_type_name(value)})")
    return value


def _device(doc: LocatedYaml, key_path: KeyPath, value: Any) -> str:
    text = str(value).strip().lower() if isinstance(value, str) else None
    base, _, index = (text or "").partition(":")
    if text is None or base not in DEVICES or (index and (base != "cuda" or not index.isdigit())):
        raise doc.error(
            key_path, f"unknown device {value!r}: expected one of {', '.join(DEVICES)} (cuda also as cuda:N)"
        )
    return text


def _dtype(doc: LocatedYaml, key_path: KeyPath, value: Any) -> str:
    """The canonical name (``float16``) of a dtype name or alias, as the engine's ``resolve_dtype`` reads it."""
    try:
        if not isinstance(value, str) or value == "auto":  # a suite names its dtype: "auto" depends on the device
            raise ConfigError(value)
        return dtype_name(resolve_dtype(value, torch.device("cpu")))
    except ConfigError:
        raise doc.error(key_path, f"unknown dtype {value!r}: expected one of {', '.join(DTYPE_NAMES)}") from None


SYNTHETIC_ID_PARTS = {"acceptance_rate": "syn", "acceptance_rates": "syn-rates", "acceptance_length": "syn-len"}


def _policy(doc: LocatedYaml, key_path: KeyPath, value: Any) -> tuple[PolicyChoice, ...]:
    """One policy value: a name, ``{name: POLICY, PARAMETER: VALUE}``, or a synthetic mapping whose parameter is
    a list (``acceptance_rate: [0.5, 0.8]``, ``acceptance_rates: [[0.9, 0.8], [0.7, 0.5]]``): one choice per value."""
    known = ", ".join(p.value for p in Policy)
    if isinstance(value, str):
        acceptance = _engine_check(doc, key_path, lambda: AcceptanceConfig(policy=value))  # type: ignore[arg-type]
        return (PolicyChoice(label=value, acceptance=acceptance),)
    if not isinstance(value, dict) or "name" not in value:
        raise doc.error(key_path, f"expected a policy name ({known}) or {{name: POLICY, PARAMETER: VALUE}}")
    _check_keys(doc, key_path, value, POLICY_KEYS, "policy")
    params = {k: v for k, v in value.items() if k != "name"}
    if value["name"] == Policy.SYNTHETIC.value:
        return _synthetic_policies(doc, key_path, params)
    for key, param in params.items():
        if not isinstance(param, (int, float)) or isinstance(param, bool):
            raise doc.error((*key_path, key), f"expected a number, got {param!r} ({_type_name(param)})")
    acceptance = _engine_check(doc, key_path, lambda: AcceptanceConfig(policy=value["name"], **params))
    label = value["name"] + "".join(f"-{params[k]}" for k in sorted(params))
    return (PolicyChoice(label=label, acceptance=acceptance),)


def _synthetic_policies(doc: LocatedYaml, key_path: KeyPath, params: dict[str, Any]) -> tuple[PolicyChoice, ...]:
    """``{name: synthetic, acceptance_rate | acceptance_rates | acceptance_length: VALUE or [VALUES]}``, labelled
    ``syn=0.8``, ``syn-rates=0.9_0.8``, ``syn-len=3.2`` in ids."""
    given = [key for key in SYNTHETIC_ID_PARTS if key in params]
    others = [key for key in params if key not in SYNTHETIC_ID_PARTS]
    if others:
        raise doc.error((*key_path, others[0]), f"{others[0]} does not apply to policy synthetic")
    if len(given) != 1:
        names = ", ".join(SYNTHETIC_ID_PARTS)
        raise doc.error(key_path, f"policy synthetic needs exactly one of {names}, got {', '.join(given) or 'none'}")
    key = given[0]
    raw = params[key]
    swept = isinstance(raw, list) and (key != "acceptance_rates" or any(isinstance(v, list) for v in raw))
    values = raw if swept else [raw]
    if swept and not values:
        raise doc.error((*key_path, key), f"expected a value or a non-empty list of values, got {raw!r}")
    choices: list[PolicyChoice] = []
    for index, item in enumerate(values):
        where = (*key_path, key, index) if swept else (*key_path, key)
        if key == "acceptance_rates":
            if not isinstance(item, list) or any(not isinstance(v, (int, float)) or isinstance(v, bool) for v in item):
                raise doc.error(where, f"expected a list of numbers (one per draft position), got {item!r}")
            item = tuple(float(v) for v in item)
        elif not isinstance(item, (int, float)) or isinstance(item, bool):
            raise doc.error(where, f"expected a number, got {item!r} ({_type_name(item)})")
        acceptance = _engine_check(
            doc, where, functools.partial(AcceptanceConfig, policy=Policy.SYNTHETIC, **{key: item})
        )
        shown = "_".join(f"{v:g}" for v in item) if isinstance(item, tuple) else f"{item:g}"
        choices.append(PolicyChoice(label=f"{SYNTHETIC_ID_PARTS[key]}={shown}", acceptance=acceptance))
    return tuple(choices)


def _policies(doc: LocatedYaml, key_path: KeyPath, value: Any) -> tuple[PolicyChoice, ...]:
    """``policy:``: one value or a list of them (a sweep, as ``draft:``); a synthetic mapping may sweep its
    parameter. A choice listed twice is an error (both would get one id)."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise doc.error(key_path, "expected an acceptance policy or a non-empty list of them, got an empty list")
    seen: dict[PolicyChoice, str] = {}
    for index, item in enumerate(items):
        where = (*key_path, index) if isinstance(value, list) else key_path
        for choice in _policy(doc, where, item):
            if choice in seen:
                raise doc.error(where, f"{choice.label} is listed twice (also as {seen[choice]}): give each value once")
            seen[choice] = key_name(where)
    return tuple(seen)


def _adaptive_k(doc: LocatedYaml, key_path: KeyPath, value: Any) -> AdaptiveK | None:
    if value is False or value is None:
        return None
    if value is True:
        value = {}
    if not isinstance(value, dict):
        raise doc.error(key_path, f"expected false, true or a mapping of {', '.join(ADAPTIVE_KEYS)}")
    _check_keys(doc, key_path, value, ADAPTIVE_KEYS, "adaptive_k")
    params = {k: v for k, v in value.items() if k != "start_k"}
    for key, param in value.items():
        if not isinstance(param, (int, float)) or isinstance(param, bool):
            raise doc.error((*key_path, key), f"expected a number, got {param!r} ({_type_name(param)})")
    config = _engine_check(doc, key_path, lambda: AdaptiveKConfig(**params))
    _at_most(doc, (*key_path, "max_k"), config.max_k, MAX_K, "adaptive max_k (tokens drafted per step)")
    start_k = value.get("start_k", min(max(4, config.min_k), config.max_k))
    _engine_check(doc, (*key_path, "start_k"), lambda: SpeculationConfig(k=start_k, adaptive=config))
    return AdaptiveK(config=config, start_k=start_k)


def _threads(doc: LocatedYaml, key_path: KeyPath, value: Any) -> int:
    threads = _integer(1)(doc, key_path, value)
    _at_most(doc, key_path, threads, MAX_THREADS, "threads (torch intra-op CPU threads)")
    return int(threads)


def _engine(doc: LocatedYaml, key_path: KeyPath, value: Any) -> str:
    if not isinstance(value, str) or value not in ENGINES:
        close = difflib.get_close_matches(str(value), ENGINES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise doc.error(key_path, f"unknown engine {value!r}{hint}: expected one of {', '.join(ENGINES)}")
    return value


def _positive_number(doc: LocatedYaml, key_path: KeyPath, value: Any) -> float:
    number = _number(doc, key_path, value)
    if number <= 0:
        raise doc.error(key_path, f"expected a number > 0, got {value!r}")
    return number


def _endpoint(doc: LocatedYaml, key_path: KeyPath, value: Any) -> str:
    if not isinstance(value, str) or not ENDPOINT.match(value.strip()):
        raise doc.error(
            key_path,
            f"expected the base URL of an OpenAI-compatible server, http://HOST:PORT/v1, got {value!r} "
            f"({_type_name(value)})",
        )
    return value.strip().rstrip("/")


def _serve(doc: LocatedYaml, key_path: KeyPath, value: Any) -> ServeSpec:
    """``serve: {target: MODEL, draft: MODEL or {method: ...}, k: K, device: cpu, dtype: float32}``: the
    ``specdec serve`` the plugin starts (``draft`` left out: an autoregressive server only)."""
    if not isinstance(value, dict):
        raise doc.error(key_path, f"expected a mapping with keys {', '.join(SERVE_KEYS)} (target required)")
    _check_keys(doc, key_path, value, SERVE_KEYS, "serve")
    if "target" not in value:
        raise doc.error(key_path, "serve needs `target`: the model the server serves")
    if isinstance(value.get("draft"), list):
        raise doc.error((*key_path, "draft"), "serve takes one draft (one server): give one value, not a list")
    drafting = _draft(doc, (*key_path, "draft"), value["draft"]) if value.get("draft") is not None else None
    if drafting is not None:
        drafting = dataclasses.replace(drafting, label=draft_label(drafting, (drafting,)))
    if "k" in value and drafting is None:
        raise doc.error((*key_path, "k"), "k needs a `draft` in serve: a server without one is autoregressive")
    return ServeSpec(
        target=_model(doc, (*key_path, "target"), value["target"]),
        drafting=drafting,
        k=_k(doc, (*key_path, "k"), value["k"]) if "k" in value else (4 if drafting is not None else 0),
        device=_device(doc, (*key_path, "device"), value.get("device", "cpu")),
        dtype=_dtype(doc, (*key_path, "dtype"), value.get("dtype", "float32")),
        threads=None,
    )


def _marker(doc: LocatedYaml, key_path: KeyPath, value: Any) -> str:
    if not isinstance(value, str) or not MARKER.match(value):
        raise doc.error(key_path, f"expected a marker name (a Python identifier such as slow), got {value!r}")
    return value


def _name(doc: LocatedYaml, key_path: KeyPath, value: Any) -> str:
    if not isinstance(value, str) or not NAME.match(value):
        raise doc.error(
            key_path, f"expected a short name of letters, digits, '.', '_' or '-' (used in case ids), got {value!r}"
        )
    return value


def is_hub_id(name: str) -> bool:
    """A Hugging Face hub id (``name`` or ``org/name``): neither ``zoo:NAME`` nor a folder."""
    return HUB_ID.match(name) is not None


def _model(doc: LocatedYaml, key_path: KeyPath, value: Any) -> str:
    """``zoo:NAME`` (checked against the zoo), a folder (``./``, ``../``, ``/``, ``~``; relative to the suite file;
    it must exist), or a hub id (checked when the case runs: it may be in the local cache)."""
    if not isinstance(value, str) or not value.strip():
        raise doc.error(key_path, f"expected a model name, got {value!r} ({_type_name(value)})")
    if value.startswith(ZOO_PREFIX):
        _zoo_model(doc, key_path, value)
        return value
    if value.startswith(FOLDER_PREFIXES):
        return str(_model_folder(doc, key_path, value))
    if is_hub_id(value):
        return value
    raise doc.error(
        key_path,
        f"unknown model scheme {value!r}: expected zoo:NAME (built in), a folder (./path, /path, ~/path) "
        "or a Hugging Face hub id (name or org/name)",
    )


MODEL_METHOD = "model"  # the drafting method of a draft model (``draft: NAME``)
DRAFT_FORMS = "a draft model name or {method: METHOD, OPTION: VALUE}"


def _draft(doc: LocatedYaml, key_path: KeyPath, value: Any) -> DraftChoice:
    """``NAME`` (a draft model, as :func:`_model` reads it) or ``{method: METHOD, OPTION: VALUE, ...}``
    (``{method: model, model: NAME}`` for a draft model). Options are checked now through ``make_drafter``, without
    loading a model."""
    if isinstance(value, str):
        if value in METHODS and value != MODEL_METHOD:
            raise doc.error(
                key_path,
                f"{value!r} is a drafting method, not a model: write {{method: {value}}} (with its options: "
                f"{', '.join(option_names(value)) or 'none'})",
            )
        return DraftChoice(
            method=MODEL_METHOD,
            model=_model(doc, key_path, value),
            options=_draft_options(doc, key_path, MODEL_METHOD, {}),
        )
    if not isinstance(value, dict):
        raise doc.error(key_path, f"expected {DRAFT_FORMS}, got {value!r} ({_type_name(value)})")
    if "method" not in value:
        raise doc.error(key_path, f"a draft mapping needs `method`: one of {method_names()}")
    method = value["method"]
    if not isinstance(method, str) or method not in METHODS:
        close = difflib.get_close_matches(str(method), list(METHODS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise doc.error(
            (*key_path, "method"), f"unknown draft method {method!r}{hint}: expected one of {method_names()}"
        )
    options = {key: v for key, v in value.items() if key not in ("method", "model")}
    known = option_names(method)
    if "model" in value and not METHODS[method].needs_model:
        raise doc.error(
            (*key_path, "model"),
            f"draft method {method!r} drafts without a model: remove `model` (or use method model)",
        )
    allowed = ("method", "model", *known) if METHODS[method].needs_model else ("method", *known)
    _check_keys(doc, key_path, value, allowed, f"{method} draft")
    model = None
    if METHODS[method].needs_model:
        if "model" not in value:
            raise doc.error(key_path, f"draft method {method!r} needs `model`: the draft model's name")
        model = _model(doc, (*key_path, "model"), value["model"])
    return DraftChoice(method=method, model=model, options=_draft_options(doc, key_path, method, options))


def _draft_options(doc: LocatedYaml, key_path: KeyPath, method: str, options: dict[str, Any]) -> Any:
    """The method's options dataclass; its ConfigError points at the option it names (else at the mapping)."""
    try:
        if METHODS[method].needs_model:  # checked without a loaded model: the options alone
            return METHODS[method].options(**options)
        return make_drafter(method, **options).options
    except ConfigError as error:
        named = [key for key in options if re.search(rf"\b{re.escape(key)}\b", str(error))]
        raise doc.error((*key_path, named[0]) if named else key_path, f"{error}") from None


def draft_label(choice: DraftChoice, choices: tuple[DraftChoice, ...]) -> str:
    """How ``choice`` reads in case ids among the swept ``choices``: the method alone (``ngram``), with the options
    in which its variants differ where one method is swept with several (``ngram-max_ngram=2``), and for several
    draft models each model's short name (``model-tiny-code-draft``), with the options in which one model's variants
    differ (``model-tiny-code-draft-branching=3``)."""
    same = [c for c in choices if c.method == choice.method]
    if len(same) == 1:
        return choice.method
    head = choice.method
    if choice.method == MODEL_METHOD:
        name = (choice.model or "").removeprefix(ZOO_PREFIX).rstrip("/").rsplit("/", 1)[-1]
        head = f"{MODEL_METHOD}-{name}"
        same = [c for c in same if c.model == choice.model]  # one model's variants differ in their options
    differing = [f.name for f in fields(choice.options) if len({getattr(c.options, f.name) for c in same}) > 1]
    return "-".join([head, *(f"{key}={_option_text(getattr(choice.options, key))}" for key in differing)])


def _option_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return "none" if value is None else str(value)


def _drafts(doc: LocatedYaml, key_path: KeyPath, value: Any) -> tuple[DraftChoice, ...]:
    """``draft:``: null (autoregressive only), one draft, or a list of them (a sweep), each labelled for ids."""
    if value is None:
        return ()
    choices = _one_or_many(_draft, DRAFT_FORMS)(doc, key_path, value)
    return tuple(dataclasses.replace(c, label=draft_label(c, choices)) for c in choices)


def _zoo_model(doc: LocatedYaml, key_path: KeyPath, value: str) -> None:
    try:
        resolve_zoo(value)
    except ModelLoadError as error:
        name, at, knobs = value[len(ZOO_PREFIX) :].partition("@")
        known = [entry.name.partition("@")[0] for entry in list_zoo()]
        if name in known:  # a known model with a bad knob: the zoo's own message says which
            raise doc.error(key_path, str(error)) from None
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {ZOO_PREFIX + close[0] + at + knobs!r}?)" if close else ""
        raise doc.error(
            key_path, f"unknown zoo model {value!r}{hint}: `specdec zoo list` shows the built-in models"
        ) from None


def _model_folder(doc: LocatedYaml, key_path: KeyPath, value: str) -> Path:
    folder = (doc.path.parent / Path(value).expanduser()).resolve()
    if folder.is_dir():
        return folder
    problem = "is a file, not a model folder" if folder.exists() else "does not exist"
    try:
        siblings = [entry.name for entry in folder.parent.iterdir() if entry.is_dir()]
    except OSError:
        siblings = []
    close = difflib.get_close_matches(folder.name, siblings, n=1)
    written = value.rstrip("/")
    hint = f" (did you mean {written[: len(written) - len(Path(written).name)] + close[0]!r}?)" if close else ""
    raise doc.error(
        key_path,
        f"model folder {value!r} {problem} (looked for {folder}; a relative path starts at the suite file's folder)"
        f"{hint}",
    )


def _tolerances(doc: LocatedYaml, key_path: KeyPath, value: Any) -> dict[str, float]:
    known = tuple(f.name for f in fields(Tolerances))
    if not isinstance(value, dict):
        raise doc.error(key_path, f"expected a mapping of metric: tolerance, metrics {', '.join(known)}")
    _check_keys(doc, key_path, value, known, "tolerances")
    out = {}
    for key, tolerance in value.items():
        number = _number(doc, (*key_path, key), tolerance)
        if number < 0:
            raise doc.error((*key_path, key), f"expected a tolerance >= 0, got {tolerance!r}")
        out[key] = number
    return out


def _description(doc: LocatedYaml, key_path: KeyPath, value: Any) -> str:
    if not isinstance(value, str):
        raise doc.error(key_path, f"expected text, got {_type_name(value)}")
    return value


CASE_KEYS: dict[str, Parser] = {
    "name": _name,
    "target": _model,
    "draft": _drafts,
    "k": _one_or_many(_k, "K (an integer >= 1)"),
    "adaptive_k": _adaptive_k,
    "device": _one_or_many(_device, "a device"),
    "dtype": _one_or_many(_dtype, "a dtype"),
    "batch_size": _one_or_many(_integer(1), "a batch size"),
    "temperature": _one_or_many(_temperature, "a temperature"),
    "policy": _policies,
    "max_new_tokens": _one_or_many(_max_new_tokens, "a number of new tokens"),
    "top_k": _optional(_top_k),
    "top_p": _optional(_top_p),
    "seed": _seed,
    "stop_at_eos": _boolean,
    "threads": _optional(_threads),
    "prompts": parse_prompts,
    "rounds": _integer(1),
    "warmup_rounds": _integer(0),
    "markers": _one_or_many(_marker, "a marker name"),
    "tolerances": _tolerances,
    "engine": _one_or_many(_engine, "an engine"),
    "endpoint": _endpoint,
    "serve": _serve,
    "concurrency": _one_or_many(_integer(1), "a concurrency (requests in flight)"),
    "request_rate": _one_or_many(_optional(_positive_number), "a request rate (requests/s) or null"),
    "requests": _integer(1),
    "request_timeout": _positive_number,
    "case_timeout": _positive_number,
}
DEFAULTS: dict[str, Any] = {
    "draft": (),
    "k": (4,),
    "adaptive_k": None,
    "device": ("cpu",),
    "dtype": ("float32",),
    "batch_size": (1,),
    "temperature": (0.0,),
    "policy": (PolicyChoice(label="lossless", acceptance=AcceptanceConfig()),),
    "max_new_tokens": (64,),
    "top_k": None,
    "top_p": None,
    "seed": 0,
    "stop_at_eos": False,
    "threads": None,
    "rounds": 3,
    "warmup_rounds": 1,
    "markers": (),
    "tolerances": {},
    "engine": (SPECDEC,),
}
REQUIRED = ("name", "target", "prompts")


def _check_keys(doc: LocatedYaml, key_path: KeyPath, mapping: dict, known: tuple[str, ...], what: str) -> None:
    for key in mapping:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise doc.error((*key_path, key), f"unknown {what} key {key!r}{hint}: expected one of {', '.join(known)}")


def _parse_mapping(doc: LocatedYaml, key_path: KeyPath, mapping: Any, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(mapping, dict):
        raise doc.error(key_path, f"expected a mapping of case keys, got {_type_name(mapping)}")
    _check_keys(doc, key_path, mapping, allowed, "case")
    return {key: CASE_KEYS[key](doc, (*key_path, key), value) for key, value in mapping.items()}


def _group(doc: LocatedYaml, index: int, defaults: dict[str, Any], entry: Any) -> CaseGroup:
    key_path: KeyPath = ("cases", index)
    values = _parse_mapping(doc, key_path, entry, tuple(CASE_KEYS))
    merged = {**DEFAULTS, **defaults, **values}
    merged["tolerances"] = Tolerances(**{**defaults.get("tolerances", {}), **values.get("tolerances", {})})
    if OPENAI in merged["engine"]:
        return _serving_group(doc, index, merged, values)
    given = [key for key in SERVING_KEYS if key in merged]
    if given:
        raise doc.error(
            _where(doc, index, given[0], values), f"{given[0]} applies to serving cases only: add `engine: openai`"
        )
    for key in REQUIRED:
        if key not in merged:
            where = "" if key == "name" else " (here or in `defaults`)"
            raise doc.error(key_path, f"missing key {key!r}{where}: every case needs {', '.join(REQUIRED)}")
    group = CaseGroup(line=doc.line(key_path), **merged)
    # Cross-field checks through the engine's dataclasses (e.g. top_k with a temperature, adaptive bounds).
    for temperature in group.temperature:
        for new_tokens in group.max_new_tokens:

            def generation(t: float = temperature, n: int = new_tokens) -> GenerationConfig:
                return GenerationConfig(
                    max_new_tokens=n, temperature=t, top_k=group.top_k, top_p=group.top_p, seed=group.seed
                )

            _engine_check(doc, key_path, generation)
    if not group.draft and ("k" in values or "adaptive_k" in values or "policy" in values):
        raise doc.error(key_path, "k, adaptive_k and policy need a `draft`: a case without one is autoregressive")
    # Policy parameters that depend on K (synthetic acceptance_rates must cover K, acceptance_length <= K + 1).
    policy_path = (*key_path, "policy") if "policy" in values else ("defaults", "policy")
    adaptive = group.adaptive_k
    for choice in group.policy:
        for k in group.k:
            _engine_check(doc, policy_path, functools.partial(SpeculationConfig, k=k, acceptance=choice.acceptance))
        if adaptive is not None:
            check = functools.partial(
                SpeculationConfig, k=adaptive.start_k, adaptive=adaptive.config, acceptance=choice.acceptance
            )
            _engine_check(doc, policy_path, check)
    _check_engines(doc, _where(doc, index, "engine", values), group)
    return group


def _serving_group(doc: LocatedYaml, index: int, merged: dict[str, Any], values: dict[str, Any]) -> CaseGroup:
    """An ``engine: openai`` entry: exactly one of ``endpoint`` and ``serve``; the models are the server's."""
    key_path: KeyPath = ("cases", index)
    if merged["engine"] != (OPENAI,):
        raise doc.error(
            _where(doc, index, "engine", values),
            f"engine {OPENAI} sends HTTP requests and cannot be swept with other engines: give it an entry of its own",
        )
    given = [key for key in ("endpoint", "serve") if key in merged]
    if len(given) != 1:
        where = _where(doc, index, given[1], values) if len(given) == 2 else key_path
        problem = "both `endpoint` and `serve` are given" if given else "neither `endpoint` nor `serve` is given"
        raise doc.error(
            where,
            f"engine {OPENAI} needs exactly one of `endpoint` (http://HOST:PORT/v1 of a running server) and `serve` "
            f"(a specdec serve the plugin starts: {{target: ..., draft: ..., k: ...}}); {problem}",
        )
    for key in ("target", "draft", "k", "adaptive_k", "policy"):
        if key in values or (key in merged and merged[key] != DEFAULTS.get(key)):
            raise doc.error(
                _where(doc, index, key, values),
                f"{key} does not apply to engine {OPENAI}: the server's models are in `serve` "
                "(target, draft, k), or are the endpoint's own",
            )
    if "prompts" not in merged:
        raise doc.error(key_path, "missing key 'prompts' (here or in `defaults`): every case needs prompts")
    if merged["prompts"].random is not None:
        raise doc.error(
            _where(doc, index, "prompts", values),
            f"engine {OPENAI} sends the prompts as they are: random_tokens needs the target's vocabulary; "
            "give texts, token ids or a prompt file",
        )
    if merged["prompts"].categories:
        raise doc.error(_where(doc, index, "prompts", values), f"engine {OPENAI} does not split prompts by category")
    serve: ServeSpec | None = merged.get("serve")
    if serve is not None:
        serve = dataclasses.replace(serve, threads=merged["threads"])
        merged.update(serve=serve, device=(serve.device,), dtype=(serve.dtype,))
        merged.update(target=serve.target, draft=(serve.drafting,) if serve.drafting else (), k=(serve.k,))
    else:
        merged.update(target=merged["endpoint"], draft=(), k=(0,))
    group = CaseGroup(line=doc.line(key_path), **merged)
    for temperature, new_tokens in itertools.product(group.temperature, group.max_new_tokens):
        check = functools.partial(GenerationConfig, max_new_tokens=new_tokens, temperature=temperature)
        _engine_check(doc, key_path, check)
    return group


def _where(doc: LocatedYaml, index: int, key: str, values: dict[str, Any]) -> KeyPath:
    """Where a group's ``key`` was written: in the entry, else in ``defaults`` (else the entry itself)."""
    if key in values:
        return ("cases", index, key)
    defaults = doc.data.get("defaults") if isinstance(doc.data, dict) else None
    return ("defaults", key) if isinstance(defaults, dict) and key in defaults else ("cases", index)


def _check_engines(doc: LocatedYaml, key_path: KeyPath, group: CaseGroup) -> None:
    """What transformers' modes can run: ``hf`` already holds ``hf-static`` and ``hf-compile``; ``hf-assisted``
    drafts with a draft model or prompt lookup (``ngram``), one prompt at a time."""
    both = [engine for engine in (HF_STATIC, HF_COMPILE) if engine in group.engine]
    if HF in group.engine and both:
        raise doc.error(key_path, f"{HF!r} already runs {HF_STATIC} (and {HF_COMPILE} on CUDA): remove {both[0]!r}")
    if HF_ASSISTED not in group.engine:
        return
    if not group.draft:
        raise doc.error(
            key_path, f"engine {HF_ASSISTED} needs a `draft`: a draft model, or {{method: ngram}} for prompt lookup"
        )
    others = [choice.method for choice in group.draft if choice.method not in HF_ASSISTED_DRAFTS]
    if others:
        raise doc.error(
            key_path,
            f"engine {HF_ASSISTED} runs transformers' assisted generation with a draft model, or its prompt lookup "
            f"for {{method: ngram}}; transformers has no {others[0]!r} drafter: sweep that draft in another entry "
            f"without {HF_ASSISTED}",
        )
    if any(size > 1 for size in group.batch_size):
        raise doc.error(
            key_path,
            f"engine {HF_ASSISTED} runs one prompt at a time (transformers' assisted generation takes batch 1): "
            "give it an entry with batch_size 1",
        )


def parse_suite(path: Path) -> Suite:
    """Read and validate ``path``; any problem raises :class:`~pytest_specdec.errors.SuiteError`."""
    doc = load_yaml(path)
    if not isinstance(doc.data, dict):
        got = "an empty file" if doc.data is None else _type_name(doc.data)
        raise doc.error((), f"expected a mapping with keys {', '.join(TOP_LEVEL_KEYS)} (`cases` required), got {got}")
    _check_keys(doc, (), doc.data, TOP_LEVEL_KEYS, "top-level")
    version = doc.data.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise doc.error(
            ("schema_version",), f"expected {SCHEMA_VERSION} (the version this plugin reads), got {version!r}"
        )
    description = _description(doc, ("description",), doc.data.get("description", ""))
    defaults = _parse_mapping(
        doc, ("defaults",), doc.data.get("defaults", {}) or {}, tuple(k for k in CASE_KEYS if k != "name")
    )
    entries = doc.data.get("cases")
    if not isinstance(entries, list) or not entries:
        raise doc.error(("cases",), "expected a non-empty list of cases (each with name, target, and a draft)")
    groups = tuple(_group(doc, i, defaults, entry) for i, entry in enumerate(entries))
    seen: dict[str, int] = {}
    for index, group in enumerate(groups):
        if group.name in seen:
            raise doc.error(
                ("cases", index, "name"), f"case name {group.name!r} is already used by cases[{seen[group.name]}]"
            )
        seen[group.name] = index
    return Suite(name=path.stem, path=path, description=description, groups=groups)
