"""The speculative decoding loop.

Each step: the drafter proposes K tokens; the target scores the last committed token and all K drafts in one
forward; the verifier keeps the longest acceptable prefix and produces one more token (recovered or bonus); both KV
caches roll back past what was rejected. Without a drafter the same loop runs with K = 0, which is plain
autoregressive decoding: the baseline every speedup is measured against.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast

import torch

from specdec.config import GenerationConfig, SpeculationConfig
from specdec.decoder import Decoder, make_decoder
from specdec.device import (
    dtype_name,
    peak_device_memory_bytes,
    peak_rss_bytes,
    reset_peak_memory,
    synchronize,
)
from specdec.drafters import Drafter, ModelDrafter
from specdec.errors import ConfigError, IncompatibleModelsError
from specdec.k_control import make_controller
from specdec.kernels import kernels_for
from specdec.loading import LoadedModel, shared_vocab_size
from specdec.metrics import RunMetrics, StepClock, StepMetrics, StepRecord
from specdec.sampling import next_token
from specdec.seeding import make_generator, seed_everything
from specdec.sequence import SequenceBatch
from specdec.verification import Verifier

Prompts = str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]] | torch.Tensor
EOS_CHECK_EVERY = 16  # without drafts, an accelerator's EOS flags are read every this many steps (output is cut at EOS)
EOS_NOT_FOUND = 1 << 30


@dataclass(frozen=True)
class GenerationResult:
    token_ids: list[list[int]]  # generated ids per row, prompt excluded, ending at the row's EOS if it met one
    texts: list[str]  # decoded token_ids ("" where the model has no tokenizer)
    metrics: RunMetrics
    steps: list[StepMetrics]

    @property
    def text(self) -> str:
        return self.texts[0]

    def to_dict(self, with_steps: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "text": self.texts[0] if len(self.texts) == 1 else self.texts,
            "token_ids": self.token_ids[0] if len(self.token_ids) == 1 else self.token_ids,
            "metrics": self.metrics.to_dict(),
        }
        if with_steps:
            out["steps"] = [asdict(s) for s in self.steps]
        return out


class SpeculativeEngine:
    """Generates with ``target``, speculating with ``draft`` (a model or any :class:`Drafter`), or alone."""

    def __init__(self, target: LoadedModel, draft: LoadedModel | Drafter | None = None, decoder: str = "auto") -> None:
        """``decoder``: ``auto`` (the fast path on CUDA where the architecture has one), ``fast`` or ``generic``."""
        self.target_model = target
        vocab_size = target.vocab_size
        drafter: Drafter | None
        if isinstance(draft, LoadedModel):
            if draft.device != target.device:
                raise IncompatibleModelsError(
                    f"target {target.name!r} is on {target.device} but draft {draft.name!r} is on {draft.device}"
                )
            vocab_size = shared_vocab_size(target, draft)
            drafter = ModelDrafter(make_decoder(draft, vocab_size, decoder))
        else:
            drafter = draft
        self.target: Decoder = make_decoder(target, vocab_size, decoder)
        self.kernels = kernels_for(target.device)
        self.drafter = drafter
        self.device = target.device
        self.eos_ids = _eos_ids(target)

    # ----------------------------------------------------------------------------------------------- prompts
    def encode(self, prompts: Prompts) -> list[list[int]]:
        """Token ids per row from text, one id list, a list of id lists, or a [B, P] tensor."""
        if isinstance(prompts, torch.Tensor):
            rows = prompts.reshape(-1, prompts.shape[-1]).tolist()
        elif isinstance(prompts, str):
            rows = [self._encode_text(prompts)]
        elif len(prompts) > 0 and all(isinstance(p, int) for p in prompts):
            rows = [list(cast(Sequence[int], prompts))]
        else:
            rows = [self._encode_text(p) if isinstance(p, str) else list(p) for p in prompts]  # type: ignore[arg-type]
        if not rows or any(len(r) == 0 for r in rows):
            raise ConfigError("the prompt is empty: give at least one token of text")
        vocab = self.target.vocab_size
        for row in rows:
            bad = [t for t in row if not 0 <= t < vocab]
            if bad:
                raise ConfigError(f"prompt token ids {bad[:5]} are outside the vocabulary [0, {vocab})")
        return rows

    def _encode_text(self, text: str) -> list[int]:
        if not text.strip():
            raise ConfigError("the prompt is empty: give at least one token of text")
        tokenizer = self.target_model.tokenizer
        if tokenizer is None:
            raise ConfigError(f"model {self.target_model.name!r} has no tokenizer: pass token ids instead of text")
        return list(tokenizer.encode(text))

    def decode(self, ids: list[int]) -> str:
        tokenizer = self.target_model.tokenizer
        return tokenizer.decode(ids, skip_special_tokens=True) if tokenizer is not None else ""

    def _pad_id(self) -> int:
        tokenizer = self.target_model.tokenizer
        pad = getattr(tokenizer, "pad_token_id", None)
        if pad is None:
            pad = self.eos_ids[0] if self.eos_ids else 0
        return int(pad)

    def _check_length(self, prompt_length: int, generation: GenerationConfig) -> None:
        total = prompt_length + generation.max_new_tokens
        limit = self.target_model.context_length
        if limit is not None and total > limit:
            raise ConfigError(
                f"prompt ({prompt_length} tokens) + max_new_tokens ({generation.max_new_tokens}) = {total} tokens "
                f"exceeds the context of model {self.target_model.name!r} ({limit} tokens); "
                "shorten the prompt or lower max_new_tokens"
            )

    # ------------------------------------------------------------------------------------------- generation
    @torch.inference_mode()
    def generate(
        self,
        prompts: Prompts,
        generation: GenerationConfig | None = None,
        speculation: SpeculationConfig | None = None,
    ) -> GenerationResult:
        generation = generation or GenerationConfig()
        speculation = speculation or SpeculationConfig()
        rows = self.encode(prompts)
        self._check_length(max(len(r) for r in rows), generation)
        seed_everything(generation.seed)
        generator = make_generator(generation.seed, self.device)
        verifier = Verifier(speculation.acceptance, generation, self.kernels)
        controller = make_controller(speculation)
        batch = SequenceBatch.from_prompts(rows, generation.max_new_tokens, self._pad_id(), self.device)
        eos = torch.tensor(self.eos_ids if generation.stop_at_eos else [], dtype=torch.long, device=self.device)
        clock = StepClock(self.device)
        records: list[StepRecord] = []

        reset_peak_memory(self.device)
        synchronize(self.device)
        started = time.perf_counter()

        # Prefill: the target reads the prompt and chooses the first token.
        prompt_length = batch.prompt_length
        self.target.prepare(batch.pad_lengths, batch.attention_mask, batch.max_length)
        logits = self.target.forward(batch.tokens[:, :prompt_length], last_only=True)
        batch.tokens[:, prompt_length] = next_token(logits[:, -1], generation, generator)
        batch.length = prompt_length + 1
        first_is_eos = torch.isin(batch.tokens[:, prompt_length], eos).tolist()  # the prefill's one sync
        time_to_first_token = time.perf_counter() - started
        row_ends: list[int | None] = [1 if is_eos else None for is_eos in first_is_eos]  # new tokens up to EOS
        if self.drafter is not None:
            self.drafter.start(batch)

        pending_eos: list[tuple[int, torch.Tensor]] = []  # (step's first new column, [B] EOS offsets) to read
        eos_check_every = 1 if self.device.type == "cpu" else EOS_CHECK_EVERY  # a CPU has no transfer to save
        while batch.new_tokens < generation.max_new_tokens and any(end is None for end in row_ends):
            requested_k = controller.next_k() if self.drafter is not None else 0
            k = min(requested_k, generation.max_new_tokens - batch.new_tokens - 1)
            record = StepRecord(k=requested_k, drafted=k, accepted=0)
            start_mark = clock.mark()
            draft_tokens = batch.tokens.new_empty((batch.batch_size, 0))  # [B, 0]
            draft_probs = None
            if k > 0:
                assert self.drafter is not None
                proposal = self.drafter.propose(batch, k, generation, generator)
                draft_tokens, draft_probs = proposal.tokens, proposal.probs
            drafted_mark = clock.mark()

            length = batch.length
            verify_ids = batch.tokens[:, length - 1 : length]  # [B, 1]: the last committed token ...
            if k > 0:
                verify_ids = torch.cat([verify_ids, draft_tokens], dim=1)  # ... and the drafts: [B, K + 1]
                batch.tokens[:, length : length + k] = draft_tokens
            target_logits = self.target.forward(verify_ids)  # [B, K + 1, V]
            verdict = verifier.verify(draft_tokens, draft_probs, target_logits, generator)
            next_column = (length + verdict.num_accepted).reshape(1, 1).expand(batch.batch_size, 1)
            batch.tokens.scatter_(1, next_column, verdict.next_tokens[:, None])
            if eos.numel() > 0:
                window = batch.tokens[:, length : length + k + 1]
                pending_eos.append((length, _first_eos_offsets(window, eos, verdict.num_accepted)))
            verified_mark = clock.mark()

            # Nothing drafted: one token, known without asking the device. Otherwise the step's one host sync
            # reads the number accepted (and any EOS offsets waiting to be read with it).
            last_step = batch.new_tokens + k + 1 >= generation.max_new_tokens
            accepted = 0
            if k > 0 or len(pending_eos) >= eos_check_every or last_step:
                accepted = self._sync(verdict.num_accepted if k > 0 else None, pending_eos, row_ends, prompt_length)
            batch.length = length + accepted + 1
            self.target.rollback(batch.length - 1)
            if self.drafter is not None:
                self.drafter.observe(batch, accepted)
            controller.update(k, accepted)
            record.accepted = accepted
            record.marks = (start_mark, drafted_mark, verified_mark)
            records.append(record)
        if pending_eos:
            self._sync(None, pending_eos, row_ends, prompt_length)

        clock.finish()
        synchronize(self.device)
        total_time = time.perf_counter() - started
        steps = [r.resolve(clock) for r in records]

        generated = batch.tokens[:, prompt_length : batch.length].tolist()
        token_ids = [
            ids[: end if end is not None else generation.max_new_tokens]
            for ids, end in zip(generated, row_ends, strict=True)
        ]
        metrics = self._metrics(
            batch,
            generation,
            speculation,
            steps,
            token_ids,
            time_to_first_token,
            total_time,
            verifier.backend,
        )
        return GenerationResult(
            token_ids=token_ids, texts=[self.decode(ids) for ids in token_ids], metrics=metrics, steps=steps
        )

    @staticmethod
    def _sync(
        num_accepted: torch.Tensor | None,
        pending_eos: list[tuple[int, torch.Tensor]],
        row_ends: list[int | None],
        prompt_length: int,
    ) -> int:
        """One device-to-host transfer: the number accepted (0 if None) and the pending EOS offsets, which mark
        finished rows in ``row_ends`` (new tokens up to and including EOS) and are then cleared."""
        parts = [num_accepted.reshape(1)] if num_accepted is not None else []
        host = torch.cat(parts + [offsets for _, offsets in pending_eos]).tolist() if parts or pending_eos else []
        accepted = int(host[0]) if num_accepted is not None else 0
        offsets = host[1:] if num_accepted is not None else host  # len(pending_eos) blocks of one per row
        rows = len(row_ends)
        for index, (column, _) in enumerate(pending_eos):
            for row, offset in enumerate(offsets[index * rows : (index + 1) * rows]):
                if row_ends[row] is None and offset < EOS_NOT_FOUND:
                    row_ends[row] = column - prompt_length + int(offset) + 1
        pending_eos.clear()
        return accepted

    def _metrics(
        self,
        batch: SequenceBatch,
        generation: GenerationConfig,
        speculation: SpeculationConfig,
        steps: list[StepMetrics],
        token_ids: list[list[int]],
        time_to_first_token: float,
        total_time: float,
        verifier_backend: str,
    ) -> RunMetrics:
        drafted = sum(s.drafted for s in steps)
        accepted = sum(s.accepted for s in steps)
        new_tokens = sum(len(ids) for ids in token_ids)
        speculative = self.drafter is not None
        return RunMetrics(
            target=self.target.name,
            draft=self.drafter.name if self.drafter is not None else None,
            decoder_path=self.target.path,
            verifier_backend=verifier_backend,
            policy=speculation.acceptance.policy.value if speculative else "none",
            k=(speculation.k if speculation.adaptive is None else None) if speculative else 0,
            adaptive_k=speculative and speculation.adaptive is not None,
            mean_k=sum(s.k for s in steps) / len(steps) if steps else 0.0,
            device=str(self.device),
            dtype=dtype_name(self.target.dtype),
            batch_size=batch.batch_size,
            prompt_tokens=batch.prompt_length,
            new_tokens=new_tokens,
            steps=len(steps),
            drafted_tokens=drafted,
            accepted_tokens=accepted,
            acceptance_rate=accepted / drafted if drafted else None,
            mean_tokens_per_forward=batch.new_tokens / self.target.forwards,
            target_forwards=self.target.forwards,
            draft_forwards=self.drafter.forwards if self.drafter is not None else 0,
            time_to_first_token_s=time_to_first_token,
            total_time_s=total_time,
            tokens_per_second=new_tokens / total_time if total_time > 0 else 0.0,
            draft_time_s=sum(s.draft_ms for s in steps) / 1000.0,
            verify_time_s=sum(s.verify_ms for s in steps) / 1000.0,
            peak_device_memory_bytes=peak_device_memory_bytes(self.device),
            peak_rss_bytes=peak_rss_bytes(),
        )


def _first_eos_offsets(window: torch.Tensor, eos: torch.Tensor, num_accepted: torch.Tensor) -> torch.Tensor:
    """Offset of the first EOS among the committed tokens of a step's window, else ``EOS_NOT_FOUND``.

    window: [B, K + 1] (the step's tokens; only [:, :num_accepted + 1] are committed) -> [B] int64.
    """
    offsets = torch.arange(window.shape[1], device=window.device).expand_as(window)
    hit = torch.isin(window, eos) & (offsets <= num_accepted)
    return torch.where(hit, offsets, EOS_NOT_FOUND).min(dim=1).values


def _eos_ids(loaded: LoadedModel) -> list[int]:
    """End-of-sequence ids as `generate` sees them: the generation config's, else the model config's."""
    config = getattr(loaded.model, "generation_config", None) or loaded.model.config
    eos = getattr(config, "eos_token_id", None)
    if eos is None:
        return []
    ids = [eos] if isinstance(eos, int) else list(eos)
    return [i for i in ids if 0 <= i < loaded.vocab_size]
