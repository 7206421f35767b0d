"""transformers' own ``generate``, run the ways a careful user runs it, as an engine measured beside ours.

Modes (the ``engine`` names the suites, reports and the GPU speed report use):

- ``hf-static``: ``model.generate`` with a static cache and transformers' automatic compilation
  turned off (``disable_compile=True``): the preallocated cache alone. As transformers' documentation advises for
  repeated calls, the engine owns one ``StaticCache`` (per batch size), reset before each call and passed to
  ``generate``; its length is the prompt plus the new tokens rounded up to a multiple of :data:`CACHE_BUCKET`, so
  prompts of different lengths share one cache, one shape and one set of addresses (``cache_implementation``
  would make a fresh cache per call);
- ``hf-compile``: the static cache with transformers' automatic ``torch.compile`` of the decode forward
  (``compile_config``; on a CUDA GPU this is what ``cache_implementation="static"`` does by default), over the
  same owned cache, with static shapes (``CompileConfig(dynamic=False)`` unless a config is given): the decode step
  compiles once and its CUDA graphs are recorded once. After each call the engine makes specdec's own CUDA graphs
  re-capture before their next replay (:func:`specdec.fast.graphs.invalidate_all`): on the H200 (torch 2.11,
  transformers 5.17) replaying graphs captured before an ``hf-compile`` call that followed ``hf-static`` on the same
  model hit an illegal memory access, and re-capturing avoids it (``scripts/diag/hf_compile_bisect.py``). A failure to
  compile, or transformers declining to compile this model, raises :class:`HFUnavailableError` naming the reason,
  never a silent eager run under the compile label. On a CPU it compiles too (transformers'
  ``_compile_all_devices``), slowly: about 40 s for a 2-layer model on a busy 2-core machine;
- ``hf-assisted``: assisted generation with a draft model as ``assistant_model``, ``num_assistant_tokens`` = K with
  the ``constant`` schedule and no confidence cut-off (transformers' default cache);
- ``hf-lookup``: prompt lookup decoding, ``prompt_lookup_num_tokens`` = K (``max_matching_ngram_size`` from the
  ngram drafter's ``max_ngram`` when given).

Greedy (``do_sample=False``) or sampled (temperature, top-k, top-p; ``torch.manual_seed(seed)`` before each call,
since transformers draws from torch's global generator). Every sampling setting is passed explicitly, so a model's
own generation config (a Llama's ``temperature=0.6``, ``top_p=0.9``) never changes what is compared.

What is measured, and how (nothing is estimated):

- target forwards: a forward hook on the target model counts them (it runs eagerly, outside transformers' compiled
  region, so it adds no graph guards and no recompilation), so tokens per forward is real;
- drafted and accepted tokens (``hf-assisted``, ``hf-lookup``), in all and per draft position: read from
  transformers' candidate generator, by wrapping the ``get_candidates`` (tokens proposed) and
  ``update_candidate_strategy`` (``num_matches``: tokens accepted) of the generator ``generate`` builds. Where this
  transformers has no such generator to wrap, they are None (acceptance unknown), never invented;
- time to first token: when the target's first forward ended (the device synchronised once, in the hook), since
  the first token is chosen from its logits; with a drafter that forward comes after the first draft, so it counts.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
import transformers

from specdec.config import GenerationConfig, SpeculationConfig
from specdec.device import (
    dtype_name,
    peak_device_memory_bytes,
    peak_rss_bytes,
    reset_peak_memory,
    synchronize,
)
from specdec.engine import Prompts, decode_ids, encode_prompts, eos_ids, pad_id
from specdec.errors import ConfigError, SpecdecError
from specdec.fast.graphs import invalidate_all
from specdec.kv_cache import cache_keyword
from specdec.loading import LoadedModel

HF_STATIC = "hf-static"
HF_COMPILE = "hf-compile"
HF_ASSISTED = "hf-assisted"
HF_LOOKUP = "hf-lookup"
HF_MODES = (HF_STATIC, HF_COMPILE, HF_ASSISTED, HF_LOOKUP)
CACHE_BUCKET = 1024  # static cache lengths are rounded up to a multiple of this (tokens)
SPECULATIVE_MODES = (HF_ASSISTED, HF_LOOKUP)  # the modes that draft K tokens per step
DECODER_PATH = "transformers"  # what ``decoder_path`` / ``verifier_backend`` say for these runs


class HFUnavailableError(SpecdecError):
    """A mode that this transformers and torch cannot run here (``hf-compile`` that fails to compile)."""


@dataclass(frozen=True)
class HFRunMetrics:
    """One ``generate`` call, with the names of :class:`specdec.metrics.RunMetrics` where the meaning is the same.
    None: not exposed by transformers (never estimated)."""

    engine: str  # one of HF_MODES
    target: str
    draft: str | None  # the assistant model's name (hf-assisted), else None
    draft_method: str | None  # "model" (hf-assisted), "ngram" (hf-lookup), None
    decoder_path: str
    verifier_backend: str
    k: int | None  # num_assistant_tokens / prompt_lookup_num_tokens; None without drafting
    mean_k: float  # K asked for per step (constant schedule), 0.0 without drafting
    device: str
    dtype: str
    batch_size: int
    prompt_tokens: int  # padded prompt length
    new_tokens: int  # generated tokens over all rows (each row cut at its end of sequence)
    steps: int  # target forwards after the prefill (assisted: every forward verifies candidates)
    drafted_tokens: int | None
    accepted_tokens: int | None
    drafted_by_position: list[int] | None  # per draft position i: steps that drafted a token there
    reached_by_position: list[int] | None  # ... that drafted it with every earlier position accepted
    accepted_by_position: list[int] | None  # ... that accepted it ([] without drafting; None: not exposed)
    acceptance_rate: float | None  # accepted / drafted; None when unknown or nothing was drafted
    mean_tokens_per_forward: float  # tokens a row advances per target forward, the first token included
    target_forwards: int  # counted by a forward hook
    time_to_first_token_s: float | None
    total_time_s: float
    tokens_per_second: float
    peak_device_memory_bytes: int | None  # None on CPU
    peak_rss_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class HFResult:
    token_ids: list[list[int]]  # generated ids per row, prompt excluded, ending at the row's EOS if it met one
    texts: list[str]
    metrics: HFRunMetrics


def bucketed_cache_length(tokens: int) -> int:
    """``tokens`` rounded up to a multiple of :data:`CACHE_BUCKET`."""
    return -(-tokens // CACHE_BUCKET) * CACHE_BUCKET


class _ForwardCounter:
    """A forward hook: counts the target's forwards and notes when the first one ended."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.forwards = 0
        self.first_forward_end: float | None = None  # perf_counter seconds

    @torch.compiler.disable  # eager even inside transformers' compiled forward: no guards on the count
    def __call__(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        self.forwards += 1
        if self.first_forward_end is None:
            synchronize(self.device)  # once per call: the first token's logits are ready
            self.first_forward_end = time.perf_counter()


class _DraftCounter:
    """Each step's drafted and accepted tokens, read from the candidate generator transformers builds for one call
    (``get_candidates`` proposes, ``update_candidate_strategy`` is told ``num_matches``, once per step each)."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, int]] = []  # (drafted, accepted) per verification step
        self.wrapped = False  # whether a candidate generator was seen (else the counts are unknown)
        self._drafted = 0  # of the step in progress

    @property
    def drafted(self) -> int:
        return sum(d for d, _ in self.steps)

    @property
    def accepted(self) -> int:
        return sum(a for _, a in self.steps)

    def by_position(self) -> tuple[list[int], list[int], list[int]]:
        """Per draft position i: steps that drafted a token there, steps that reached it (drafted it with every
        earlier position accepted), steps that accepted it."""
        width = max((d for d, _ in self.steps), default=0)
        drafted = [sum(d > i for d, _ in self.steps) for i in range(width)]
        reached = [sum(d > i and a >= i for d, a in self.steps) for i in range(width)]
        accepted = [sum(a > i for _, a in self.steps) for i in range(width)]
        return drafted, reached, accepted

    def wrap(self, generator: Any) -> Any:
        get_candidates, update = generator.get_candidates, generator.update_candidate_strategy

        def counted_get_candidates(input_ids: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            candidates = get_candidates(input_ids, *args, **kwargs)  # ([B, S + drafted] ids, logits or None)
            self._drafted = int(candidates[0].shape[1] - input_ids.shape[1])
            return candidates

        def counted_update(input_ids: torch.Tensor, scores: torch.Tensor, num_matches: Any, *args: Any) -> Any:
            self.steps.append((self._drafted, int(num_matches)))
            return update(input_ids, scores, num_matches, *args)

        generator.get_candidates = counted_get_candidates
        generator.update_candidate_strategy = counted_update
        self.wrapped = True
        return generator


class HFEngine:
    """``target`` generating through transformers in one of :data:`HF_MODES` (``draft``: the assistant model of
    ``hf-assisted``). ``generate`` has the engine's signature; K comes from ``speculation.k``."""

    def __init__(
        self,
        target: LoadedModel,
        mode: str,
        draft: LoadedModel | None = None,
        max_ngram: int | None = None,
        compile_config: Any = None,
    ) -> None:
        """``max_ngram``: prompt lookup's ``max_matching_ngram_size`` (None: transformers' default, 2).
        ``compile_config``: a ``transformers.CompileConfig`` for ``hf-compile`` (None: transformers' default)."""
        if mode not in HF_MODES:
            raise ConfigError(f"unknown transformers mode {mode!r}: expected one of {', '.join(HF_MODES)}")
        if (mode == HF_ASSISTED) != (draft is not None):
            raise ConfigError(f"{HF_ASSISTED} needs a draft model (and only it takes one); mode {mode!r} was given")
        if draft is not None and draft.model is target.model:
            raise ConfigError(
                f"{HF_ASSISTED}: the draft {draft.name!r} is the target's own model object, so its forwards could not "
                "be told from the target's; load the draft as a separate model"
            )
        self.target_model = target
        self.mode = mode
        self.draft_model = draft
        self.max_ngram = max_ngram
        self.compile_config = compile_config
        self.device = target.device
        self.eos_ids = eos_ids(target)
        self.pad_id = pad_id(target, self.eos_ids)
        self._static_cache: Any = None  # the StaticCache of hf-static / hf-compile, reused across calls
        self._static_cache_shape: tuple[int, int] = (0, 0)  # (batch size, length) it was made for

    @property
    def vocab_size(self) -> int:
        return self.target_model.vocab_size

    def generate(
        self,
        prompts: Prompts,
        generation: GenerationConfig | None = None,
        speculation: SpeculationConfig | None = None,
    ) -> HFResult:
        """Generate to the end: one prompt, a list of prompts (a left-padded batch), or token ids."""
        generation = generation or GenerationConfig()
        k = (speculation or SpeculationConfig()).k if self.mode in SPECULATIVE_MODES else None
        rows = encode_prompts(self.target_model, prompts, self.vocab_size)
        if self.mode in SPECULATIVE_MODES and len(rows) > 1:
            raise ConfigError(
                f"{self.mode} runs one prompt at a time (transformers' assisted generation), got {len(rows)}"
            )
        ids, mask = self._left_padded(rows)  # [B, P], [B, P]
        counter, drafts = _ForwardCounter(self.device), _DraftCounter()
        if not generation.greedy:
            torch.manual_seed(generation.seed)  # transformers samples from torch's global generator
        reset_peak_memory(self.device)
        synchronize(self.device)
        started = time.perf_counter()
        out = self._run(ids, mask, generation, k, counter, drafts)  # [B, P + N]
        synchronize(self.device)
        total = time.perf_counter() - started
        generated = out[:, ids.shape[1] :]  # [B, N]
        token_ids = [self._cut_at_eos(row, generation) for row in generated.tolist()]
        first_token = counter.first_forward_end - started if counter.first_forward_end is not None else None
        metrics = self._metrics(token_ids, generated.shape[1], ids.shape[1], k, counter, drafts, first_token, total)
        texts = [decode_ids(self.target_model, row) for row in token_ids]
        return HFResult(token_ids=token_ids, texts=texts, metrics=metrics)

    def _run(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        generation: GenerationConfig,
        k: int | None,
        counter: _ForwardCounter,
        drafts: _DraftCounter,
    ) -> torch.Tensor:
        """One ``generate`` call, instrumented; ``hf-compile`` that cannot compile raises HFUnavailableError."""
        model: Any = self.target_model.model
        with self._instrumented(model, counter, drafts), self._assistant_settings(k), torch.inference_mode():
            try:
                options = self._generate_options(generation, k, ids.shape)
                out = model.generate(ids, attention_mask=mask, **options)
            except Exception as error:
                if self.mode != HF_COMPILE or "out of memory" in str(error).lower():
                    raise
                first_line = (str(error).strip().splitlines() or [""])[0][:300]
                raise HFUnavailableError(
                    f"{HF_COMPILE} is unavailable with torch {torch.__version__} and transformers "
                    f"{transformers.__version__} here: {type(error).__name__}: {first_line}"
                ) from error
            finally:
                if self.mode == HF_COMPILE:
                    invalidate_all()  # torch.compile's CUDA graphs ran: ours re-capture before their next replay
        if self.mode == HF_COMPILE and getattr(model, "_compiled_call", None) is None:
            raise HFUnavailableError(
                f"{HF_COMPILE} is unavailable: transformers {transformers.__version__} did not compile the forward "
                f"of {self.target_model.name!r} (its automatic-compilation criteria were not met)"
            )
        return out

    def _metrics(
        self,
        token_ids: list[list[int]],
        columns: int,
        prompt_tokens: int,
        k: int | None,
        counter: _ForwardCounter,
        drafts: _DraftCounter,
        time_to_first_token: float | None,
        total: float,
    ) -> HFRunMetrics:
        """``columns``: tokens every row advanced (the batch's generated width)."""
        drafted: int | None
        accepted: int | None
        positions: tuple[list[int] | None, list[int] | None, list[int] | None]
        if self.mode not in SPECULATIVE_MODES:
            drafted, accepted, positions = 0, 0, ([], [], [])
        elif drafts.wrapped:
            drafted, accepted, positions = drafts.drafted, drafts.accepted, drafts.by_position()
        else:  # this transformers gives no access to its candidate generator: unknown, not zero
            drafted, accepted, positions = None, None, (None, None, None)
        new_tokens = sum(len(row) for row in token_ids)
        return HFRunMetrics(
            engine=self.mode,
            target=self.target_model.name,
            draft=self.draft_model.name if self.draft_model is not None else None,
            draft_method={HF_ASSISTED: "model", HF_LOOKUP: "ngram"}.get(self.mode),
            decoder_path=DECODER_PATH,
            verifier_backend=DECODER_PATH,
            k=k,
            mean_k=float(k) if k is not None else 0.0,
            device=str(self.device),
            dtype=dtype_name(self.target_model.dtype),
            batch_size=len(token_ids),
            prompt_tokens=prompt_tokens,
            new_tokens=new_tokens,
            steps=counter.forwards if self.mode in SPECULATIVE_MODES else max(counter.forwards - 1, 0),
            drafted_tokens=drafted,
            accepted_tokens=accepted,
            drafted_by_position=positions[0],
            reached_by_position=positions[1],
            accepted_by_position=positions[2],
            acceptance_rate=accepted / drafted if drafted and accepted is not None else None,
            mean_tokens_per_forward=columns / max(counter.forwards, 1),
            target_forwards=counter.forwards,
            time_to_first_token_s=time_to_first_token,
            total_time_s=total,
            tokens_per_second=new_tokens / total if total > 0 else 0.0,
            peak_device_memory_bytes=peak_device_memory_bytes(self.device),
            peak_rss_bytes=peak_rss_bytes(),
        )

    # ------------------------------------------------------------------------------------------------ details
    def _left_padded(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows left-padded with the engine's pad id, and the attention mask (0 on padding): both [B, P]."""
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for index, row in enumerate(rows):
            ids[index, length - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[index, length - len(row) :] = 1
        return ids.to(self.device), mask.to(self.device)

    def _generate_options(self, generation: GenerationConfig, k: int | None, prompt: torch.Size) -> dict[str, Any]:
        """``generate``'s keyword arguments. Sampling settings are all explicit (the model's generation config only
        fills what is left unset); without ``stop_at_eos`` no token ends a row, as in the engine."""
        options: dict[str, Any] = {
            "max_new_tokens": generation.max_new_tokens,
            "do_sample": not generation.greedy,
            "repetition_penalty": 1.0,
            "eos_token_id": list(self.eos_ids) if generation.stop_at_eos else [],
            "pad_token_id": self.pad_id,
        }
        if not generation.greedy:
            options["temperature"] = generation.temperature
            options["top_k"] = generation.top_k or 0  # 0: no top-k filter (transformers' default is 50)
            options["top_p"] = generation.top_p if generation.top_p is not None else 1.0
        if self.mode in (HF_STATIC, HF_COMPILE):
            model = self.target_model.model
            length = bucketed_cache_length(prompt[1] + generation.max_new_tokens)
            options[cache_keyword(model)] = self._reset_static_cache(prompt[0], length)
        if self.mode == HF_STATIC:
            options["disable_compile"] = True
        if self.mode == HF_COMPILE:
            config = self.compile_config or transformers.CompileConfig(dynamic=False)
            config._compile_all_devices = True  # compile on a CPU too (transformers compiles on CUDA by default)
            options["compile_config"] = config
        if self.mode == HF_ASSISTED:
            options["assistant_model"] = self.draft_model.model if self.draft_model is not None else None
        if self.mode == HF_LOOKUP:
            options["prompt_lookup_num_tokens"] = k
            if self.max_ngram is not None:
                options["max_matching_ngram_size"] = self.max_ngram
        return options

    def _reset_static_cache(self, batch_size: int, length: int) -> Any:
        """The engine's StaticCache, emptied: made again only for another batch size or a longer run."""
        fits = self._static_cache_shape[0] == batch_size and self._static_cache_shape[1] >= length
        if self._static_cache is None or not fits:
            self._static_cache = None  # release the old tensors first
            config = self.target_model.model.config.get_text_config(decoder=True)
            self._static_cache = transformers.StaticCache(config=config, max_cache_len=length)
            self._static_cache_shape = (batch_size, length)
        self._static_cache.reset()
        return self._static_cache

    def _cut_at_eos(self, row: list[int], generation: GenerationConfig) -> list[int]:
        """A generated row up to and including its first end-of-sequence token (with ``stop_at_eos``)."""
        if generation.stop_at_eos:
            for index, token in enumerate(row):
                if token in self.eos_ids:
                    return row[: index + 1]
        return row

    @contextlib.contextmanager
    def _instrumented(self, model: Any, counter: _ForwardCounter, drafts: _DraftCounter) -> Iterator[None]:
        """The forward hook on the target, and (drafting modes) the candidate generator's counters, for one call."""
        hook = model.register_forward_hook(counter)
        build: Any = getattr(type(model), "_get_candidate_generator", None)  # where transformers picks the drafter
        wrap = self.mode in SPECULATIVE_MODES and callable(build)
        if wrap:

            def counted_build(*args: Any, **kwargs: Any) -> Any:
                return drafts.wrap(build(model, *args, **kwargs))

            model._get_candidate_generator = counted_build  # this instance only, for this call
        try:
            yield
        finally:
            hook.remove()
            if wrap:
                del model._get_candidate_generator

    @contextlib.contextmanager
    def _assistant_settings(self, k: int | None) -> Iterator[None]:
        """``hf-assisted``: the assistant drafts exactly K tokens a step (constant schedule, no confidence cut-off);
        its generation config is restored afterwards (the draft model may be shared with other runs)."""
        if self.mode != HF_ASSISTED or self.draft_model is None:
            yield
            return
        config = self.draft_model.model.generation_config
        settings = {
            "num_assistant_tokens": k,
            "num_assistant_tokens_schedule": "constant",
            "assistant_confidence_threshold": 0.0,
        }
        previous = {name: getattr(config, name, None) for name in settings}
        for name, value in settings.items():
            setattr(config, name, value)
        try:
            yield
        finally:
            for name, value in previous.items():
                setattr(config, name, value)
