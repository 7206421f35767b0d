"""Suite entries expanded into cases: one per combination, with short stable ids, plus the autoregressive case each
speculative case is measured against.

Ids read ``GROUP[(engine=ENGINE,)(DRAFT,)K,DEVICE,DTYPE,bs=B(,t=T)(,POLICY)(,n=N)]``:

- the engine only for transformers' modes (``engine=hf-static``, ``engine=hf-assisted``, ``engine=hf-lookup``), so
  that the ids of the project's own engine are those they were before engines existed; ``hf-static`` and
  ``hf-compile`` cases have no K;
- the drafting method (``ngram``; ``ngram-max_ngram=2`` where one method is swept with several options), except
  for a group whose only draft is a draft model, whose ids stay ``GROUP[k=4,...]``;
- ``k=4`` (fixed K), ``k=auto`` (adaptive K) or ``ar`` (the autoregressive case: the target alone);
- ``t=T`` only for sampled cases (temperature > 0), the policy only when it is not ``lossless`` (synthetic
  acceptance as ``syn=0.8``, ``syn-rates=0.9_0.8``, ``syn-len=3.2``), ``n=N`` only when the group sweeps
  ``max_new_tokens``.

The autoregressive case of a speculative case shares its group, device, dtype, batch size, temperature and length.

Serving cases (``engine: openai``) read ``GROUP[engine=openai,(DRAFT,)K,DEVICE,DTYPE,c=C(,rate=R)(,t=T)(,n=N)]``
with ``serve:`` (``K`` is ``ar`` for the server without the draft, which the speculative server's case is measured
against at the same concurrency), and ``GROUP[engine=openai,c=C(,rate=R)(,t=T)(,n=N)]`` with ``endpoint:``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import asdict, dataclass, replace
from typing import Any

from pytest_specdec.endpoints import Serving
from pytest_specdec.errors import SuiteError
from pytest_specdec.gating import Tolerances
from pytest_specdec.prompts import PromptSet
from pytest_specdec.suite import (
    HF,
    MODEL_METHOD,
    OPENAI,
    SHORT_DTYPES,
    SPECDEC,
    CaseGroup,
    DraftChoice,
    PolicyChoice,
    Suite,
)
from specdec.config import GenerationConfig, SpeculationConfig
from specdec.drafters import DraftSpec
from specdec.hf_engine import HF_ASSISTED, HF_COMPILE, HF_LOOKUP, HF_STATIC

AUTOREGRESSIVE = "ar"
WARN_CASES = 1_000  # a suite with more cases collects with a warning that names the sweeps multiplying them
MAX_CASES = 50_000  # a suite with more is refused before its cases are built (hours of benchmarks per 1,000 cases)
SWEPT = (
    "device",
    "dtype",
    "batch_size",
    "temperature",
    "max_new_tokens",
    "policy",
    "draft",
    "k",
    "engine",
    "concurrency",
    "request_rate",
)
NO_K = "-"  # the K label of hf-static and hf-compile cases, which draft nothing and are not the autoregressive case


@dataclass(frozen=True)
class Case:
    suite: str
    group: str
    id: str  # "tiny-code[k=4,cpu,fp32,bs=1]"
    line: int | None  # of the group in the suite file
    target: str
    drafting: DraftChoice | None  # the drafting method, its options and draft model; None: the autoregressive case
    device: str
    dtype: str  # "float32", "float16", "bfloat16"
    batch_size: int
    generation: GenerationConfig
    speculation: SpeculationConfig | None  # None: the autoregressive case
    policy: str  # the policy label ("none" for the autoregressive case)
    threads: int | None  # torch intra-op CPU threads while it runs (None: as they are)
    prompts: PromptSet
    rounds: int
    warmup_rounds: int
    markers: tuple[str, ...]
    tolerances: Tolerances
    baseline_id: str | None  # the autoregressive case this one's speedup is measured against
    engine: str = SPECDEC  # SPECDEC, one of transformers' modes (specdec.hf_engine.HF_MODES) or OPENAI
    serving: Serving | None = None  # engine openai: where the requests go and the load

    @property
    def draft(self) -> str | None:
        """The draft model's name (None for a model-free drafter and for the autoregressive case)."""
        return self.drafting.model if self.drafting is not None else None

    @property
    def draft_method(self) -> str | None:
        """``model``, ``ngram``, ``suffix``, ``layerskip``; None for the autoregressive case."""
        return self.drafting.method if self.drafting is not None else None

    @property
    def draft_options(self) -> dict[str, Any]:
        """The drafting method's options, defaults filled in ({} for a draft model and the autoregressive case)."""
        return self.drafting.options_dict() if self.drafting is not None else {}

    def draft_spec(self, model: Any = None) -> DraftSpec | None:
        """The engine's ``draft`` argument (``model``: the loaded draft model, for method ``model``)."""
        return self.drafting.spec(model) if self.drafting is not None else None

    @property
    def policy_name(self) -> str:
        """``lossless``, ``synthetic``, ``lossy-*``; ``none`` for the autoregressive case (``policy`` is the label)."""
        return self.speculation.acceptance.policy.value if self.speculation is not None else "none"

    @property
    def synthetic(self) -> dict[str, Any] | None:
        """The synthetic policy's parameter as the suite gives it (``{"acceptance_rate": 0.8}``), else None."""
        return self.speculation.acceptance.synthetic if self.speculation is not None else None

    @property
    def is_autoregressive(self) -> bool:
        """The engine's own autoregressive case (or the autoregressive server of a serving case): every other case of
        its combination is measured against it."""
        if self.serving is not None:
            return self.speculation is None and self.serving.serve is not None
        return self.speculation is None and self.engine == SPECDEC

    @property
    def k_label(self) -> str:
        if self.speculation is None:
            return AUTOREGRESSIVE if self.is_autoregressive else NO_K
        return "auto" if self.speculation.adaptive is not None else str(self.speculation.k)

    @property
    def key(self) -> tuple[str, str]:
        """Unique over a session: (suite, case id)."""
        return (self.suite, self.id)

    @property
    def models(self) -> tuple[tuple[str, str, str], ...]:
        """(name, device, dtype) of each model the case loads (none for a serving case: its server loads them)."""
        if self.serving is not None:
            return ()
        names = (self.target,) if self.draft is None else (self.target, self.draft)
        return tuple((name, self.device, self.dtype) for name in names)

    def digest(self) -> str:
        """A short hash of everything that defines what the case computes (not rounds, markers or tolerances)."""
        definition = {
            "target": _portable(self.target),
            "draft": self._draft_definition(),
            "device": self.device,
            "dtype": self.dtype,
            "batch_size": self.batch_size,
            "generation": [self.generation.max_new_tokens, self.generation.temperature, self.generation.top_k],
            "sampling": [self.generation.top_p, self.generation.seed, self.generation.stop_at_eos],
            "k": [self.k_label, self.speculation.k if self.speculation is not None else 0],
            "adaptive": asdict(self.speculation.adaptive) if self.speculation and self.speculation.adaptive else None,
            "policy": self.policy,
            "prompts": self.prompts.digest(),
        }
        if self.synthetic is not None:  # exact values (the label rounds them); absent otherwise, so that the
            definition["synthetic"] = self.synthetic  # digests of every other case stay as they were
        if self.serving is not None:
            definition["serving"] = self.serving.definition()
        if self.engine != SPECDEC:  # only then: the digests (and baselines) of the engine's own cases stay as they were
            definition["engine"] = self.engine
        return hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()[:16]

    def _draft_definition(self) -> Any:
        """The draft in the digest: a draft model by its name (as before drafting methods, so that baselines
        recorded then stay valid; so too with the model options it gained later, e.g. ``branching``, at their
        defaults), any other method by its name and every option, defaults filled in."""
        if self.drafting is None:
            return None
        if self.drafting.method == MODEL_METHOD and self.drafting.options == type(self.drafting.options)():
            return _portable(self.drafting.model or "")
        return {"method": self.drafting.method, "model": self.draft and _portable(self.draft), **self.draft_options}


def _portable(model: str) -> str:
    """A model's name as the digest keeps it: a folder by its last component (checkouts live in other places)."""
    return model.rsplit("/", 1)[-1] if model.startswith("/") else model


def _format_number(value: float) -> str:
    return f"{value:g}"


def _draft_part(group: CaseGroup, drafting: DraftChoice | None) -> list[str]:
    """The draft's label in ids; none for the autoregressive case and for a group whose only draft is a model
    (whose ids are as they were before drafting methods)."""
    if drafting is None or (len(group.draft) == 1 and drafting.method == MODEL_METHOD):
        return []
    return [drafting.label]


def _id(
    group: CaseGroup,
    drafting: DraftChoice | None,
    k_part: str | None,
    device: str,
    dtype: str,
    batch: int,
    temp: float,
    policy: str,
    n: int,
    engine: str = SPECDEC,
) -> str:
    parts = [f"engine={engine}"] if engine != SPECDEC else []
    parts += [*_draft_part(group, drafting), *([k_part] if k_part else []), device, SHORT_DTYPES[dtype], f"bs={batch}"]
    if temp > 0:
        parts.append(f"t={_format_number(temp)}")
    if policy not in ("lossless", "none"):
        parts.append(policy)
    if len(group.max_new_tokens) > 1:
        parts.append(f"n={n}")
    return f"{group.name}[{','.join(parts)}]"


def _speculations(group: CaseGroup) -> list[tuple[DraftChoice, str, SpeculationConfig, PolicyChoice]]:
    out = []
    for drafting in group.draft:
        for policy in group.policy:
            for k in group.k:
                out.append((drafting, f"k={k}", SpeculationConfig(k=k, acceptance=policy.acceptance), policy))
            if group.adaptive_k is not None:
                adaptive = SpeculationConfig(
                    k=group.adaptive_k.start_k, adaptive=group.adaptive_k.config, acceptance=policy.acceptance
                )
                out.append((drafting, "k=auto", adaptive, policy))
    return out


def _hf_cases(group: CaseGroup, device: str) -> list[tuple[str, DraftChoice | None, SpeculationConfig | None]]:
    """transformers' modes of the group on ``device``: (mode, drafting, speculation). ``hf`` is ``hf-static``, plus
    ``hf-compile`` on CUDA (where transformers compiles by default; on a CPU compiling takes long: ask for
    ``hf-compile`` by name); ``hf-assisted`` is one case per draft and K (prompt lookup for ``ngram``)."""
    out: list[tuple[str, DraftChoice | None, SpeculationConfig | None]] = []
    for engine in group.engine:
        if engine == HF:
            out.append((HF_STATIC, None, None))
            if device.partition(":")[0] == "cuda":
                out.append((HF_COMPILE, None, None))
        elif engine in (HF_STATIC, HF_COMPILE):
            out.append((engine, None, None))
        elif engine == HF_ASSISTED:
            for drafting in group.draft:
                mode = HF_ASSISTED if drafting.method == MODEL_METHOD else HF_LOOKUP
                out += [(mode, drafting, SpeculationConfig(k=k)) for k in group.k]
    return out


def _requests(group: CaseGroup, concurrency: int) -> int:
    """Requests per round: the suite's ``requests``, else every prompt once and every slot used at least once."""
    return group.requests if group.requests is not None else max(group.prompts.count, concurrency)


def _autoregressive(
    suite: str,
    group: CaseGroup,
    case_id: str,
    device: str,
    dtype: str,
    batch_size: int,
    generation: GenerationConfig,
    **fields: Any,
) -> Case:
    """The group's case without drafting (the autoregressive reference its speculative cases are measured
    against), with the group's own settings; ``fields``: the rest (a serving case's engine and load)."""
    return Case(
        suite=suite,
        group=group.name,
        id=case_id,
        line=group.line,
        target=group.target,
        drafting=None,
        device=device,
        dtype=dtype,
        batch_size=batch_size,
        generation=generation,
        speculation=None,
        policy="none",
        threads=group.threads,
        prompts=group.prompts,
        rounds=group.rounds,
        warmup_rounds=group.warmup_rounds,
        markers=group.markers,
        tolerances=group.tolerances,
        baseline_id=None,
        **fields,
    )


def expand_serving_group(suite: str, group: CaseGroup) -> list[Case]:
    """An ``engine: openai`` entry: per temperature, length, request rate and concurrency, with ``serve`` the
    autoregressive server's case and (with a draft) the speculative server's, measured against it; with
    ``endpoint`` one case."""
    cases: list[Case] = []
    serve = group.serve
    device, dtype = group.device[0], group.dtype[0]
    for temperature, new_tokens, rate, concurrency in itertools.product(
        group.temperature, group.max_new_tokens, group.request_rate, group.concurrency
    ):
        generation = GenerationConfig(max_new_tokens=new_tokens, temperature=temperature, seed=group.seed)
        tail = [f"c={concurrency}"] + ([f"rate={_format_number(rate)}"] if rate is not None else [])
        tail += [f"t={_format_number(temperature)}"] if temperature > 0 else []
        tail += [f"n={new_tokens}"] if len(group.max_new_tokens) > 1 else []
        load = Serving(
            endpoint=group.endpoint,
            serve=serve.without_draft() if serve is not None else None,
            concurrency=concurrency,
            request_rate=rate,
            requests=_requests(group, concurrency),
            request_timeout_s=group.request_timeout,
            case_timeout_s=group.case_timeout,
        )
        head = [f"engine={OPENAI}"] + ([AUTOREGRESSIVE, device, SHORT_DTYPES[dtype]] if serve is not None else [])
        case_id = f"{group.name}[{','.join(head + tail)}]"
        first = _autoregressive(suite, group, case_id, device, dtype, 1, generation, engine=OPENAI, serving=load)
        cases.append(first)
        if serve is None or serve.drafting is None:
            continue
        head = [f"engine={OPENAI}", *_draft_part(group, serve.drafting), f"k={serve.k}", device, SHORT_DTYPES[dtype]]
        cases.append(
            replace(
                first,
                id=f"{group.name}[{','.join(head + tail)}]",
                drafting=serve.drafting,
                speculation=SpeculationConfig(k=serve.k),
                policy="lossless",
                baseline_id=first.id,
                serving=replace(load, serve=serve),
            )
        )
    return cases


def expand_group(suite: str, group: CaseGroup) -> list[Case]:
    """The group's autoregressive cases first, then its speculative ones, then transformers' (``engine``), in the
    order the suite lists values."""
    if OPENAI in group.engine:
        return expand_serving_group(suite, group)
    cases: list[Case] = []
    for device, dtype, batch, temperature, new_tokens in itertools.product(
        group.device, group.dtype, group.batch_size, group.temperature, group.max_new_tokens
    ):
        generation = GenerationConfig(
            max_new_tokens=new_tokens,
            temperature=temperature,
            top_k=group.top_k,
            top_p=group.top_p,
            seed=group.seed,
            stop_at_eos=group.stop_at_eos,
        )
        baseline_id = _id(group, None, AUTOREGRESSIVE, device, dtype, batch, temperature, "none", new_tokens)
        reference = _autoregressive(suite, group, baseline_id, device, dtype, batch, generation)
        cases.append(reference)
        for drafting, k_part, speculation, policy in _speculations(group) if SPECDEC in group.engine else []:
            case_id = _id(group, drafting, k_part, device, dtype, batch, temperature, policy.label, new_tokens)
            cases.append(
                replace(
                    reference,
                    id=case_id,
                    drafting=drafting,
                    speculation=speculation,
                    policy=policy.label,
                    baseline_id=baseline_id,
                )
            )
        for engine, hf_drafting, hf_speculation in _hf_cases(group, device):
            hf_k_part = f"k={hf_speculation.k}" if hf_speculation is not None else None
            policy_label = "lossless" if hf_speculation is not None else "none"
            case_id = _id(
                group, hf_drafting, hf_k_part, device, dtype, batch, temperature, policy_label, new_tokens, engine
            )
            cases.append(
                replace(
                    reference,
                    id=case_id,
                    drafting=hf_drafting,
                    speculation=hf_speculation,
                    policy=policy_label,
                    baseline_id=baseline_id,
                    engine=engine,
                )
            )
    return cases


def case_count(group: CaseGroup) -> int:
    """How many cases ``group`` expands to (without building them)."""
    if OPENAI in group.engine:
        per_load = 1 + (group.serve is not None and group.serve.drafting is not None)
        sweeps = len(group.temperature) * len(group.max_new_tokens) * len(group.request_rate)
        return per_load * sweeps * len(group.concurrency)
    speculative = len(group.draft) * len(group.policy) * (len(group.k) + (group.adaptive_k is not None))
    if SPECDEC not in group.engine:
        speculative = 0
    per_device = sum(1 + speculative + len(_hf_cases(group, device)) for device in group.device)
    combinations = len(group.dtype) * len(group.batch_size)
    return per_device * combinations * len(group.temperature) * len(group.max_new_tokens)


def sweep_report(suite: Suite) -> str:
    """The entries with most cases and the values that multiply them, largest first:
    ``cases[0] (tiny): 186,624 cases (device 2 x dtype 3 x batch_size 8 x ...)``."""
    by_size = sorted(enumerate(suite.groups), key=lambda item: -case_count(item[1]))
    parts = []
    for index, group in by_size[:3]:
        sweeps = " x ".join(f"{key} {len(getattr(group, key))}" for key in SWEPT if len(getattr(group, key)) > 1)
        parts.append(f"cases[{index}] ({group.name}): {case_count(group):,} cases ({sweeps or 'no sweep'})")
    return "; ".join(parts)


def expand(suite: Suite) -> list[Case]:
    """Every case of ``suite``; two combinations with one id are a suite error (naming both), and so is a suite of
    more than ``MAX_CASES`` cases (before any is built)."""
    total = sum(case_count(group) for group in suite.groups)
    if total > MAX_CASES:
        largest = max(range(len(suite.groups)), key=lambda i: case_count(suite.groups[i]))
        raise SuiteError(
            suite.path,
            f"the suite sweeps {total:,} cases, more than {MAX_CASES:,}: {sweep_report(suite)}; "
            "sweep fewer values per entry (or split the suite)",
            key=f"cases[{largest}]",
            line=suite.groups[largest].line,
        )
    cases: list[Case] = []
    seen: dict[str, str] = {}
    for index, group in enumerate(suite.groups):
        for case in expand_group(suite.name, group):
            if case.id in seen:
                raise SuiteError(
                    suite.path,
                    f"two combinations get the id {case.id!r} (with {seen[case.id]}); "
                    "make the swept values distinct (e.g. give different policy parameters)",
                    key=f"cases[{index}]",
                    line=group.line,
                )
            seen[case.id] = f"cases[{index}]"
            cases.append(case)
    return cases
