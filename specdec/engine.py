"""The engine: a target model, an optional drafter, and the generations that run on them.

:class:`SpeculativeEngine` binds the target (and a draft model, a model-free drafter or a layer-skip view of the
target) to preallocated KV caches and runs requests through :class:`~specdec.generation.Generation`, whose ``step``
is one speculative step. Without a drafter every step drafts nothing: plain autoregressive decoding, the baseline
every speedup is measured against.

One engine runs one generation at a time (they share its KV caches): ``generate``, ``stream`` and ``start`` called
from several threads take turns, each waiting for the running generation to finish, so that every call returns
exactly what it would alone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from typing import cast

import torch

from specdec.config import GenerationConfig, SpeculationConfig
from specdec.decoders import Decoder, make_decoder
from specdec.drafters import Drafter, DraftSpec, build_drafter
from specdec.errors import ConfigError
from specdec.generation import Generation, GenerationResult
from specdec.kernels import kernels_for
from specdec.loading import LoadedModel

Prompts = str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]] | torch.Tensor


class SpeculativeEngine:
    """Generates with ``target``, speculating with ``draft``, or alone.

    ``draft``: a draft model (a :class:`LoadedModel` sharing the target's vocabulary), a drafting method from
    :func:`specdec.drafters.make_drafter` (``make_drafter("ngram", max_ngram=4)``), any object implementing the
    :class:`~specdec.drafters.Drafter` protocol, or None for the autoregressive baseline.
    """

    def __init__(
        self, target: LoadedModel, draft: LoadedModel | DraftSpec | Drafter | None = None, decoder: str = "auto"
    ) -> None:
        """``decoder``: ``auto`` (the fast path where the architecture has one), ``fast`` or ``generic``."""
        self.target_model = target
        self.device = target.device
        self.kernels = kernels_for(target.device)
        self.eos_ids = eos_ids(target)
        spec = DraftSpec.for_model(draft) if isinstance(draft, LoadedModel) else draft
        if isinstance(spec, DraftSpec):
            self.target: Decoder = make_decoder(target, spec.vocab_size(target), decoder)
            self.drafter: Drafter | None = build_drafter(spec, target, self.target, decoder)
        else:
            self.target = make_decoder(target, None, decoder)
            self.drafter = spec
        self._lock = threading.Lock()
        self._holder: int | None = None  # the thread whose generation holds the engine

    # ----------------------------------------------------------------------------------------------- prompts
    def encode(self, prompts: Prompts) -> list[list[int]]:
        """Token ids per row (see :func:`encode_prompts`), checked against the target decoder's vocabulary."""
        return encode_prompts(self.target_model, prompts, self.target.vocab_size)

    def decode(self, ids: list[int]) -> str:
        return decode_ids(self.target_model, ids)

    @property
    def vocab_size(self) -> int:
        """Width of the target's output layer as the engine decodes it (prompt ids must be below it)."""
        return self.target.vocab_size

    def _check_length(self, prompt_length: int, generation: GenerationConfig) -> None:
        total = prompt_length + generation.max_new_tokens
        limit = self.target_model.context_length
        if limit is not None and total > limit:
            raise ConfigError(
                f"prompt ({prompt_length} tokens) + max_new_tokens ({generation.max_new_tokens}) = {total} tokens "
                f"exceeds the context of model {self.target_model.name!r} ({limit} tokens); "
                "shorten the prompt or lower max_new_tokens"
            )

    @property
    def pad_id(self) -> int:
        return pad_id(self.target_model, self.eos_ids)

    # ------------------------------------------------------------------------------------------- generation
    def start(
        self,
        prompts: Prompts,
        generation: GenerationConfig | None = None,
        speculation: SpeculationConfig | None = None,
        stream: bool = False,
    ) -> Generation:
        """A prefilled :class:`Generation`: call ``step()`` until ``done``, then ``result()``. It holds the engine
        until ``result()`` or ``close()`` (use ``with``); another thread's ``start`` waits until then. ``stream``
        reads every step's tokens (for ``Generation.new_tokens``)."""
        generation = generation or GenerationConfig()
        speculation = speculation or SpeculationConfig()
        rows = self.encode(prompts)
        self._check_length(max(len(r) for r in rows), generation)
        return self._prefilled(
            lambda: Generation(self, rows, generation, speculation, release=self._release, stream=stream)
        )

    def open_slots(
        self,
        slots: int,
        prompt_room: int,
        generation: GenerationConfig | None = None,
        speculation: SpeculationConfig | None = None,
    ) -> Generation:
        """A batch of ``slots`` empty rows that requests join and leave between steps (continuous batching, as
        ``specdec serve`` runs): ``admit`` prompts of up to ``prompt_room`` tokens into free rows, each with its own
        ``max_new_tokens`` up to ``generation.max_new_tokens``; ``step`` while any row is active; ``new_tokens``
        hands out each row's tokens. Holds the engine until ``close()``."""
        generation = generation or GenerationConfig()
        speculation = speculation or SpeculationConfig()
        if slots < 1 or prompt_room < 1:
            raise ConfigError(f"open_slots needs at least one slot and a prompt room, got {slots} and {prompt_room}")
        self._check_length(prompt_room, generation)
        return self._prefilled(
            lambda: Generation(
                self,
                [],
                generation,
                speculation,
                release=self._release,
                stream=True,
                slots=slots,
                prompt_room=prompt_room,
            )
        )

    def generate(
        self,
        prompts: Prompts,
        generation: GenerationConfig | None = None,
        speculation: SpeculationConfig | None = None,
    ) -> GenerationResult:
        """Generate to the end: one prompt, a list of prompts (a left-padded batch), or token ids."""
        with self.start(prompts, generation, speculation) as run:
            while not run.done:
                run.step()
            return run.result()

    def stream(
        self,
        prompts: Prompts,
        generation: GenerationConfig | None = None,
        speculation: SpeculationConfig | None = None,
    ) -> Iterator[list[list[int]]]:
        """Generate, yielding each row's newly committed tokens after the prefill and after every step; their
        concatenation is ``generate``'s ``token_ids``. The engine is held until the iterator ends or is closed."""
        with self.start(prompts, generation, speculation, stream=True) as run:
            yield from run.stream()

    def _prefilled(self, make: Callable[[], Generation]) -> Generation:
        """Hold the engine for the generation ``make`` builds, and prefill it (given back if either fails)."""
        self._acquire()
        try:
            run = make()
        except BaseException:
            self._release()
            raise
        try:
            run.prefill()
        except BaseException:
            run.close()
            raise
        return run

    def _acquire(self) -> None:
        if self._holder == threading.get_ident():
            raise ConfigError(
                "this thread already has an unfinished generation on this engine: call its result() or close() "
                "before starting another"
            )
        self._lock.acquire()
        self._holder = threading.get_ident()

    def _release(self) -> None:
        self._holder = None
        self._lock.release()


def encode_prompts(loaded: LoadedModel, prompts: Prompts, vocab_size: int) -> list[list[int]]:
    """Token ids per row from text, one id list, a list of id lists (or texts), or a [P] or [B, P] integer tensor.

    Ids must be integers (Python or NumPy ints, integer tensors): a float is refused, never truncated.
    """

    def as_id(value: object) -> int | None:  # int(value) for an integer of any kind, else None
        index = getattr(value, "__index__", None)
        if index is None or isinstance(value, bool):
            return None
        try:
            return int(index())
        except (TypeError, RuntimeError):  # a float tensor has __index__ but refuses it
            return None

    if isinstance(prompts, torch.Tensor):
        dtype = prompts.dtype
        is_integer = not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)
        if prompts.dim() not in (1, 2) or not is_integer:
            raise ConfigError(
                f"a prompt tensor must hold integer token ids as [P] or [B, P], got shape {list(prompts.shape)} "
                f"of {prompts.dtype}; pass token ids as a 1-D or 2-D integer tensor (e.g. dtype=torch.long)"
            )
        raw_rows: list[list[object]] = (prompts[None] if prompts.dim() == 1 else prompts).tolist()
    elif isinstance(prompts, str):
        raw_rows = [list(_encode_text(loaded, prompts))]
    elif len(prompts) > 0 and not any(isinstance(p, (str, Sequence, torch.Tensor)) for p in prompts):
        raw_rows = [list(prompts)]  # one row of ids
    else:
        raw_rows = []
        for prompt in prompts:
            if isinstance(prompt, str):
                raw_rows.append(list(_encode_text(loaded, prompt)))
            elif isinstance(prompt, (Sequence, torch.Tensor)):
                raw_rows.append(list(prompt))
            else:
                raise ConfigError(
                    f"prompt {prompt!r} is neither text nor a list of token ids: pass one text, a list of texts, "
                    "one list of ids or a list of id lists"
                )
    if not raw_rows or any(len(r) == 0 for r in raw_rows):
        raise ConfigError("the prompt is empty: give at least one token of text")
    rows: list[list[int]] = []
    for raw in raw_rows:
        ids = [as_id(t) for t in raw]
        not_ids = [t for t, i in zip(raw, ids, strict=True) if i is None]
        if not_ids:
            raise ConfigError(
                f"prompt token ids must be integers, got {not_ids[:5]!r}: pass ints (or an integer tensor); "
                "a float id is never rounded"
            )
        rows.append(cast(list[int], ids))
    for row in rows:
        bad = [t for t in row if not 0 <= t < vocab_size]
        if bad:
            raise ConfigError(f"prompt token ids {bad[:5]} are outside the vocabulary [0, {vocab_size})")
    return rows


def _encode_text(loaded: LoadedModel, text: str) -> list[int]:
    """Any non-empty text (whitespace too: indentation is a legitimate code prompt) that encodes to a token."""
    if text == "":
        raise ConfigError("the prompt is empty: give at least one token of text")
    tokenizer = loaded.tokenizer
    if tokenizer is None:
        why = loaded.no_tokenizer_reason or "it has no tokenizer"
        raise ConfigError(
            f"model {loaded.name!r} cannot encode text: {why}; the model still runs on token ids "
            "(pass them to the Python API's generate), or save its tokenizer there with `tokenizer.save_pretrained`"
        )
    ids = list(tokenizer.encode(text))
    if not ids:
        raise ConfigError(f"the prompt {text!r} encodes to no tokens: give text the tokenizer keeps")
    return ids


def decode_ids(loaded: LoadedModel, ids: list[int]) -> str:
    tokenizer = loaded.tokenizer
    return tokenizer.decode(ids, skip_special_tokens=True) if tokenizer is not None else ""


def pad_id(loaded: LoadedModel, eos: list[int]) -> int:
    """The id left padding uses: the tokenizer's pad token, else the first end-of-sequence id, else 0."""
    pad = getattr(loaded.tokenizer, "pad_token_id", None)
    if pad is None:
        pad = eos[0] if eos else 0
    return int(pad)


def eos_ids(loaded: LoadedModel) -> list[int]:
    """End-of-sequence ids as `generate` sees them: the generation config's, else the model config's."""
    config = getattr(loaded.model, "generation_config", None) or loaded.model.config
    eos = getattr(config, "eos_token_id", None)
    if eos is None:
        return []
    ids = [eos] if isinstance(eos, int) else list(eos)
    return [i for i in ids if 0 <= i < loaded.vocab_size]
