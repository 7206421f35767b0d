"""One request's generation, step by step: ``prefill``, then ``step`` until ``done``, then ``result``.

A step is the algorithm of Leviathan et al. (2023) once: the drafter proposes up to K tokens, the target scores the
last committed token and every drafted one in one forward, the verifier keeps the longest acceptable prefix plus one
token of the target's own, and both KV caches roll back past what was rejected. A step that drafts nothing is a
plain autoregressive step through the same code (no draft forward, a one-token target forward).

Batches: with a drafter that supports it (``per_row``), each row keeps its own accepted prefix and bonus token. Rows
share cache columns; a row's rejected columns become holes, hidden from attention and skipped by its positions, and
the columns are compacted when the holes would outgrow the cache (:class:`~specdec.sequence.SequenceBatch`,
``docs/batching.md``). A row that finished stops taking part; the generation is done when every row has. Other
drafters (and a batch of one) run in lockstep: every row keeps the batch's shortest accepted prefix.

Host syncs: a step that drafted reads what each row kept (one sync; pending end-of-sequence flags ride along). A step
that drafted nothing needs no sync on an accelerator: end-of-sequence flags are read every ``EOS_CHECK_EVERY`` steps
(the output is cut at EOS afterwards), unless the caller streams, which reads every step's tokens. The sync reads
the tokens committed since the last one and the host finds each row's first EOS among them, so no step launches an
EOS check. In lockstep, rows share their columns: a step writes its tokens to the same columns of every row's cache
columns and history with a slice copy each (three launches a one-token step, against a dozen for a scatter per row),
which on a GPU cost an autoregressive step about as much as its graph's launch.

With ``SPECDEC_AR_CHUNK=N`` (off by default: on the H200 it did not move the autoregressive speed while the forward
itself was the bound; it is there to measure beside the persistent step, whose shorter forward leaves the host's
work per step exposed), greedy autoregressive decoding on a CUDA fast path (no drafter, not streamed) runs N steps at
a time as one CUDA graph (the decoder's ``greedy_chain``: each forward's argmax feeds the next without the host), so
the host work of a step is paid once per chunk; the tokens and forwards are the same as step by step, and each
chunk's time is shared evenly by its steps' metrics. Step timings (draft, verify and inter-token latency) come from
the step clock, which adds no sync (``specdec.metrics``).

A token-tree proposal (``DraftProposal.parents``, :mod:`specdec.tree`) runs the same step: the target scores the root
and every node in one tree forward, the verifier keeps one root-to-node path, whose tokens are written into the
batch; the step's one sync reads the path with the number accepted, and the target's cache moves the path's keys
and values next to the root before rolling back. A drafter that reads the target's hidden states (``features``)
gets those of the newly committed positions after the prefill and after every step (``FeatureReader``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch

from specdec.config import GenerationConfig, SpeculationConfig
from specdec.device import (
    dtype_name,
    peak_device_memory_bytes,
    peak_rss_bytes,
    read_to_host,
    reset_peak_memory,
    synchronize,
)
from specdec.drafters.base import DraftProposal, FeatureRequest, empty_proposal
from specdec.errors import ConfigError
from specdec.k_control import FixedK, make_controller
from specdec.metrics import (
    PositionCounts,
    RunMetrics,
    StepClock,
    StepMetrics,
    StepRecord,
    itl_percentiles,
    mean_accepted_length,
    row_latencies,
    time_per_output_token,
)
from specdec.sampling import next_token
from specdec.seeding import make_generator, seed_everything
from specdec.sequence import SequenceBatch
from specdec.tree import check_parents, depths, require_batch_of_one, tree_attention
from specdec.verification import Verdict, Verifier, draw_noise

if TYPE_CHECKING:
    from specdec.engine import SpeculativeEngine

EOS_CHECK_EVERY = 16  # without drafts, an accelerator's EOS flags are read every this many steps
EOS_EVERY_STEP_DEVICES = ("cpu",)  # where a read costs no more than the step's own work: EOS flags read every step
ENV_AR_CHUNK = "SPECDEC_AR_CHUNK"  # N >= 2: greedy autoregressive steps run N at a time (see the module docstring)
AR_CHUNK_DEVICES = ("cuda",)
HOLE_ROOM = 0.5  # per row: cache columns for holes between compactions, as a fraction of max_new_tokens


@dataclass(frozen=True)
class Committed:
    """Tokens a step committed, checked for end of sequence on the host at the next sync, which reads them."""

    starts: list[int]  # each row's new tokens before them
    rows: list[bool]  # the rows they belong to (lockstep: every row; per row: those that took part)
    tokens: torch.Tensor  # [B, n] on the device: row b's committed tokens first, then filler
    counts: list[int] | None  # tokens committed per row; None: the step's kept + 1, read by the same sync


@dataclass(frozen=True)
class GenerationResult:
    token_ids: list[list[int]]  # generated ids per row, prompt excluded, ending at the row's EOS if it met one
    texts: list[str]  # decoded token_ids ("" where the model has no tokenizer)
    metrics: RunMetrics
    steps: list[StepMetrics]

    @property
    def text(self) -> str:
        """The generated text of a batch of one (a batch has one text per row: ``texts``)."""
        if len(self.texts) != 1:
            raise ValueError(
                f"this result holds {len(self.texts)} rows, and .text is the text of a batch of one: use .texts "
                "(one text per row)"
            )
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


class Generation:
    """The state of one request on an engine: its tokens, random generator, K controller, metrics and the rows that
    reached end-of-sequence. It holds the engine (whose KV caches it fills) from ``prefill`` until ``close``, which
    ``result`` calls; use it as a context manager, or through ``SpeculativeEngine.generate`` / ``stream``."""

    def __init__(
        self,
        engine: SpeculativeEngine,
        rows: list[list[int]],
        generation: GenerationConfig,
        speculation: SpeculationConfig,
        release: Callable[[], None],
        stream: bool = False,
        slots: int = 0,
        prompt_room: int = 0,
    ) -> None:
        """``slots``: instead of ``rows`` (empty then), that many empty rows that requests join with :meth:`admit`,
        prompts of up to ``prompt_room`` tokens each (continuous batching; ``docs/batching.md``)."""
        self.engine = engine
        self.generation = generation
        self.speculation = speculation
        self.verifier = Verifier(speculation.acceptance, generation, engine.kernels)
        self.controller = make_controller(speculation)
        drafter = engine.drafter
        # Per-row acceptance where the drafter supports it (a batch of one is the same either way, in lockstep).
        self.per_row = len(rows) > 1 and bool(getattr(drafter, "per_row", False))
        self.slots = slots > 0
        new = generation.max_new_tokens
        if self.slots:
            if drafter is not None and not getattr(drafter, "per_row", False):
                raise ConfigError(
                    f"drafter {drafter.name!r} runs a batch in lockstep, so requests cannot join a running batch; "
                    "use a draft model, ngram, suffix or layerskip, or no drafter"
                )
            if drafter is not None and self._tree_room_for(drafter, speculation) >= speculation.max_k:
                raise ConfigError(f"drafter {drafter.name!r} proposes token trees, which run a batch of one only")
            self.per_row = True
            # The longest row after a compaction, a prompt opened beside it, a step's columns, and hole room.
            columns = 2 * prompt_room + new + speculation.max_k + 2 + int(HOLE_ROOM * new)
            self.batch = SequenceBatch.slots(slots, prompt_room, new, engine.pad_id, engine.device, columns)
            rows = [[]] * slots
        else:
            columns = None
            if self.per_row:  # room for the holes between compactions (docs/batching.md)
                columns = max(len(r) for r in rows) + new + speculation.max_k + 1 + int(HOLE_ROOM * new)
            self.batch = SequenceBatch.from_prompts(rows, new, engine.pad_id, engine.device, columns)
        self.budgets = [new] * len(rows)  # each row's max_new_tokens (a row that joined has its own)
        self._budgets_device = torch.full((len(rows),), new, dtype=torch.long, device=engine.device)
        self.compactions = 0  # times the cache columns were compacted (per row)
        self._pads = [self.batch.prompt_length - len(r) for r in rows]
        self._active_device = torch.ones(len(rows), dtype=torch.bool, device=engine.device)  # batch.active there
        self.prompt_length = self.batch.prompt_length
        # New tokens per row up to and including its EOS (an empty slot counts as a row that ended at once).
        self.row_ends: list[int | None] = [0 if self.slots else None] * len(rows)
        self.records: list[StepRecord] = []
        self.time_to_first_token = 0.0
        self._emitted_mark = 0  # the clock mark at which the last committed tokens were known (for ITL)
        self._release: Callable[[], None] | None = None  # set last: a generation that failed to build holds nothing
        self._eos_ids = frozenset(engine.eos_ids if generation.stop_at_eos else ())
        self._pending_eos: list[Committed] = []  # steps' tokens not yet checked for EOS
        self._eos_check_every = 1 if stream or engine.device.type in EOS_EVERY_STEP_DEVICES else EOS_CHECK_EVERY
        chunk = ar_chunk()  # greedy autoregressive steps per graph (see the module docstring)
        chunked = drafter is None and generation.greedy and not stream and not self.slots
        if engine.device.type not in AR_CHUNK_DEVICES or not getattr(engine.target, "chain_graph", False):
            chunked = False
        self._chunk = chunk if chunked else 0
        self._clock = StepClock(engine.device)
        self._ahead_mark: int | None = None  # the clock mark before a drafter drafted this step ahead
        self._generator: torch.Generator | None = None
        self._started = 0.0
        self._streamed = [0] * len(rows)  # new tokens per row already handed out by `new_tokens`
        self._result: GenerationResult | None = None
        self._feature_request: FeatureRequest | None = getattr(drafter, "features", None)
        self._tree_room = self._tree_room_for(drafter, speculation)
        self._release = release  # built: from here on, close() gives the engine back (the engine did, had we failed)

    @staticmethod
    def _tree_room_for(drafter: object, speculation: SpeculationConfig) -> int:
        """Cache columns a tree proposal needs beyond K (a tree drafter may propose more nodes than K)."""
        max_width = getattr(drafter, "max_width", None)
        return max(0, max_width(speculation.max_k) - 1) if max_width is not None else 0

    # ------------------------------------------------------------------------------------------------ lifecycle
    def __enter__(self) -> Generation:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        """Give the engine back (idempotent). The generation cannot step after this."""
        release, self._release = getattr(self, "_release", None), None  # None too if __init__ failed
        if release is not None:
            release()

    def _require_open(self) -> None:
        if self._release is None:
            raise ConfigError("this generation was closed: start a new one with engine.start(...)")

    @property
    def done(self) -> bool:
        """Every row met its end of sequence or spent its token budget."""
        return not any(self.batch.active)

    # ------------------------------------------------------------------------------------------------- the steps
    @torch.inference_mode()
    def prefill(self) -> None:
        """The target reads the prompt and chooses the first token; the drafter reads the prompt."""
        self._require_open()
        engine, batch = self.engine, self.batch
        seed_everything(self.generation.seed)
        self._generator = make_generator(self.generation.seed, engine.device)
        reset_peak_memory(engine.device)
        synchronize(engine.device)
        self._started = time.perf_counter()
        engine.target.feature_request = self._feature_request
        engine.target.prepare(
            batch.pad_lengths, batch.attention_mask, batch.max_row_length + self._tree_room,
            batch.max_length + self._tree_room,
        )  # fmt: skip
        if self.slots:  # no prompt yet: requests join with `admit`
            engine.target.set_rows(batch.positions, batch.key_valid)
            self._update_active()
            if engine.drafter is not None:
                engine.drafter.start(batch)
            return
        logits = engine.target.forward(batch.tokens[:, : self.prompt_length], last_only=True)
        first = next_token(logits[:, -1], self.generation, self._generator)  # [B]
        batch.tokens[:, self.prompt_length] = first
        batch.history[:, self.prompt_length] = first
        batch.length = self.prompt_length + 1
        batch.lengths = [self.prompt_length + 1] * batch.batch_size
        batch.device_lengths += 1
        first_is_eos = [token in self._eos_ids for token in first.tolist()]  # the prefill's one sync
        self.time_to_first_token = time.perf_counter() - self._started
        self._emitted_mark = self._clock.mark()
        self.row_ends = [1 if is_eos else None for is_eos in first_is_eos]
        self._update_active()
        if engine.drafter is not None:
            engine.drafter.start(batch)
            if self._feature_request is not None:
                assert engine.target.features is not None
                engine.drafter.read_features(engine.target.features, batch.length)  # type: ignore[attr-defined]

    @torch.inference_mode()
    def step(self) -> None:
        """One speculative step: draft up to K tokens, verify them in one target forward, commit, roll back."""
        self._require_open()
        engine, batch, generation = self.engine, self.batch, self.generation
        drafter = engine.drafter
        taking_part = list(batch.active)  # rows still generating
        counts = batch.new_counts
        budgets = self.budgets
        room = max((n - c for n, c, a in zip(budgets, counts, taking_part, strict=True) if a), default=1)
        requested_k = self.controller.next_k() if drafter is not None else 0
        budget = min(requested_k, room - 1)  # the neediest row's budget; each row's own limits its keep
        if self._chunk > 1:
            self._autoregressive_chunk(min(self._chunk, room), counts)
            return
        if self.per_row and batch.length + budget >= batch.max_length:  # the bonus column must fit
            self._compact()
        start_mark = self._clock.mark() if self._ahead_mark is None else self._ahead_mark  # drafting began there
        self._ahead_mark = None
        proposal = empty_proposal(batch)
        if budget > 0:
            assert drafter is not None
            proposal = drafter.propose(batch, budget, generation, self._generator)
        drafted = proposal.width
        parents = proposal.parents if drafted > 0 else None
        tree_depth = self._check_proposal(proposal, budget) if drafted > 0 else 0
        drafted_mark = self._clock.mark()

        length = batch.length
        verify_ids = batch.tokens[:, length - 1 : length]  # [B, 1]: the last committed token ...
        if drafted > 0:
            verify_ids = torch.cat([verify_ids, proposal.tokens], dim=1)  # ... and the drafts: [B, W + 1]
            if parents is None and self.per_row:
                batch.tokens[:, length : length + drafted] = proposal.tokens
        tree = tree_attention(parents, engine.device) if parents is not None else None
        limits = self._limits(proposal) if self.per_row and drafted > 0 else None  # [B]: the most each row keeps
        features_off = engine.target.feature_request is None
        from_noise = self.verifier.samples_from_noise and features_off
        if from_noise and drafter is None:  # sampled autoregressive: one graph on a fast path
            verdict = self._sample_from_noise(verify_ids)
        elif from_noise and drafted > 0 and parents is None and proposal.probs is not None:
            verdict = self._sample_from_noise(verify_ids, proposal.tokens, proposal.probs, limits)  # a sampled chain
        elif self.verifier.verifies_greedy_on_device and parents is None and limits is None and features_off:
            verdict = self._verify_greedy(verify_ids, proposal.tokens)  # a greedy chain (or none), in lockstep
        else:
            target_logits = engine.target.forward(verify_ids, tree=tree)  # [B, W + 1, V]
            verdict = self.verifier.verify(
                proposal.tokens, proposal.probs, target_logits, self._generator, requested_k, parents, limits
            )
        drafts = proposal.tokens
        kept: torch.Tensor | None = None  # [B]: drafts each row kept (None: none, a one-token step)
        if drafted == 0 and not self.per_row:  # one token per row, in the same column of every row
            self._write_lockstep(length, verdict.next_tokens[:, None])
            committed = batch.history[:, length : length + 1]  # read at a later sync: the graph's output is reused
            self._check_eos_later(counts, [True] * len(counts), committed, [1] * len(counts))
        elif parents is None and not self.per_row:  # a chain in lockstep: the same columns in every row
            kept = verdict.row_kept
            window = self._commit_chain(length, drafts, verdict)
            self._check_eos_later(counts, [True] * len(counts), window, None)
        else:
            if verdict.path is not None:  # a tree: the kept path's tokens, then the next token
                drafts = proposal.tokens.gather(1, verdict.path.clamp_min(0))  # [B, W]
                room_left = min(drafted, batch.max_length - length)
                batch.tokens[:, length : length + room_left] = drafts[:, :room_left]
            # Every row's newest token goes to the step's last kept column (per row, the columns between are holes).
            next_column = (length + verdict.num_accepted).reshape(1, 1).expand(batch.batch_size, 1)
            batch.tokens.scatter_(1, next_column, verdict.next_tokens[:, None])
            kept = verdict.row_kept
            window = self._commit(drafts, kept, verdict.next_tokens)  # [B, W + 1]: row b's first kept[b] + 1 are new
            owners = taking_part if self.per_row else [True] * len(counts)
            self._check_eos_later(counts, owners, window, None if drafted > 0 else [1] * len(counts))
        features = engine.target.features if self._feature_request is not None else None
        verified_mark = self._clock.mark()

        # Nothing drafted: one token per row, known without asking the device. Otherwise the step's one host sync
        # reads what each row kept (and a tree's path, and any EOS offsets waiting to be read with it). A drafter
        # that drafts ahead starts the next step's drafts on the device while the host waits for that read.
        last_step = all(c + 1 >= n for n, c, a in zip(budgets, counts, taking_part, strict=True) if a)
        meanwhile = None
        if drafted > 0 and parents is None and not self.per_row and room - drafted - 2 >= requested_k:
            # a chain in lockstep, and the next step's budget is K even if this one keeps every draft
            meanwhile = self._ahead_launcher(length, verdict.num_accepted, features, requested_k)
        row_kept = [0] * batch.batch_size
        row_limits: list[int] = []  # per row: the most each row could keep (lockstep: the proposal's width)
        path: list[int] = []  # a tree's kept nodes, read by the sync
        if drafted > 0 or len(self._pending_eos) >= self._eos_check_every or last_step:
            row_kept, row_limits, path = self._sync(kept if drafted > 0 else None, limits, verdict.path, meanwhile)
        row_limits = row_limits or [drafted] * batch.batch_size
        shared = max(row_kept)
        batch.length = length + shared + 1
        self._advance(length, shared, row_kept, kept, taking_part)
        if path and path[:shared] != list(range(shared)):  # the path is not already next to the root
            columns = torch.tensor([length + node for node in path[:shared]], device=engine.device)
            engine.target.keep_path(length, columns)
        engine.target.rollback(batch.length - 1)
        if drafter is not None:
            if features is not None:  # the root's and the kept tokens' (block indices 0 and 1 + node)
                if parents is None:  # a chain keeps a prefix
                    kept_features = features[:, : shared + 1]
                else:
                    kept_features = features[:, [0] + [1 + node for node in path[:shared]]]
                drafter.read_features(kept_features, batch.length)  # type: ignore[attr-defined]
            drafter.observe(batch, shared)
        rows = [b for b, part in enumerate(taking_part) if part]
        step_drafted = [row_limits[b] for b in rows]
        step_kept = [row_kept[b] for b in rows]
        self.controller.update(sum(step_drafted), sum(step_kept))
        if batch.batch_size == 1:
            record = StepRecord(k=requested_k, drafted=drafted, accepted=shared)
        else:
            record = StepRecord(
                k=requested_k, drafted=sum(step_drafted), accepted=sum(step_kept),
                row_drafted=tuple(step_drafted), row_accepted=tuple(step_kept),
            )  # fmt: skip
        if parents is not None:
            record.tree_size, record.tree_depth = drafted, tree_depth
        record.marks = (start_mark, drafted_mark, verified_mark)
        record.previous, self._emitted_mark = self._emitted_mark, verified_mark
        record.counts = tuple(batch.new_counts)
        self.records.append(record)

    def _verify_greedy(self, verify_ids: torch.Tensor, drafts: torch.Tensor) -> Verdict:
        """Greedy verification of a chain ([B, W], W may be 0) in lockstep: the same verdict as ``verifier.verify``,
        with the forward and the verification in one ``forward_then`` (one graph on a fast path, instead of a graph
        and the verification's launches from the host)."""
        outputs = self.engine.target.forward_then(
            verify_ids, (drafts,), self.verifier.greedy_from_logits, ("greedy", self.verifier.backend)
        )
        return Verdict(num_accepted=outputs[0], row_accepted=outputs[1], next_tokens=outputs[2])

    def _sample_from_noise(
        self,
        verify_ids: torch.Tensor,
        drafts: torch.Tensor | None = None,
        draft_probs: torch.Tensor | None = None,
        limits: torch.Tensor | None = None,
    ) -> Verdict:
        """Speculative sampling of a chain (lockstep, or per row with ``limits``), or the target's own sample when
        nothing was drafted: the same draws and result as ``verifier.verify``, with the forward, the sampling
        distributions and the draws in one ``forward_then`` (one graph on a fast path)."""
        target, generation = self.engine.target, self.generation
        assert limits is None or drafts is not None, "per-row limits come with a drafted chain"
        drafted = 0 if drafts is None else drafts.shape[1]
        noise = draw_noise(verify_ids.shape[0], drafted, target.vocab_size, self.engine.device, self._generator)
        chain = () if drafts is None or draft_probs is None else (drafts, draft_probs)
        per_row = () if limits is None else (limits,)
        key = ("sample", generation.temperature, generation.top_k, generation.top_p, len(chain), len(per_row))
        verdict = target.forward_then(verify_ids, (*noise, *chain, *per_row), self.verifier.sample_from_noise, key)
        kept = verdict[3] if limits is not None else None
        return Verdict(num_accepted=verdict[0], row_accepted=verdict[1], next_tokens=verdict[2], kept=kept)

    def _autoregressive_chunk(self, n: int, counts: list[int]) -> None:
        """``n`` greedy autoregressive steps as one graph (every row in step: no drafter, lockstep): the target's
        ``greedy_chain`` reads each row's newest token and chooses ``n`` tokens, each after the one before."""
        engine, batch = self.engine, self.batch
        start_mark = self._clock.mark()
        length = batch.length
        tokens = engine.target.greedy_chain(batch.tokens[:, length - 1 : length], n)  # [B, n]
        self._write_lockstep(length, tokens)
        if self._eos_ids:
            self._check_eos_later(counts, [True] * len(counts), tokens, [n] * len(counts))
            self._sync(None)  # one read per chunk
        verified_mark = self._clock.mark()
        batch.length = length + n
        self._advance(length, n - 1, [n - 1] * batch.batch_size, None, [True] * batch.batch_size)
        for i in range(n):  # each step of the chunk gets an even share of its time
            record = StepRecord(k=0, drafted=0, accepted=0, share=n, counts=tuple(c + i + 1 for c in counts))
            record.marks, record.previous = (start_mark, start_mark, verified_mark), self._emitted_mark
            self.records.append(record)
        self._emitted_mark = verified_mark

    @property
    def free_rows(self) -> list[int]:
        """Rows that hold no running request (a slot batch's rows a request can join: see :meth:`admit`)."""
        return [row for row, active in enumerate(self.batch.active) if not active]

    @torch.inference_mode()
    def admit(self, rows: list[int], prompts: list[list[int]], max_new_tokens: list[int]) -> None:
        """Requests join a slot batch (``engine.open_slots``) between steps: row ``rows[i]``, which must be free,
        reads ``prompts[i]`` and will generate at most ``max_new_tokens[i]`` tokens. One target forward reads every
        joining prompt (in new columns; holes in the other rows) and chooses each one's first token, which
        ``new_tokens`` then hands out; the other rows go on where they were. Each row's greedy output is the one it
        gets alone (``tests/test_continuous_batching.py``)."""
        self._require_open()
        batch, engine = self.batch, self.engine
        if not self.slots:
            raise ConfigError("only a slot batch takes new requests: start one with engine.open_slots(...)")
        busy = [row for row in rows if batch.active[row]]
        if busy or len(set(rows)) != len(rows):
            raise ConfigError(f"rows {busy or rows} are not free to join (free rows: {self.free_rows})")
        for prompt, budget in zip(prompts, max_new_tokens, strict=True):
            if not 0 < len(prompt) <= batch.prompt_length:
                raise ConfigError(
                    f"a prompt of {len(prompt)} tokens does not fit this slot batch's prompt room of "
                    f"{batch.prompt_length} tokens: open the slots with a larger prompt_room"
                )
            if not 0 < budget <= self.generation.max_new_tokens:
                raise ConfigError(
                    f"max_new_tokens {budget} is outside this slot batch's range 1..{self.generation.max_new_tokens}"
                )
        if self._pending_eos:  # they name rows' earlier occupants
            self._sync(None)
        width = max(len(p) for p in prompts)
        if batch.length + width + self.speculation.max_k + 1 >= batch.max_length:
            self._compact()
        start = batch.length - 1
        batch.open_columns(rows, prompts)
        engine.target.set_rows(batch.positions, batch.key_valid)
        logits = engine.target.forward(batch.tokens[:, start : start + width], last_only=True)  # [B, 1, V]
        first = next_token(logits[:, -1], self.generation, self._generator)  # [B]
        batch.place_first(rows, width, first)
        is_eos = [token in self._eos_ids for token in first.tolist()]  # one sync
        for row, prompt, budget in zip(rows, prompts, max_new_tokens, strict=True):
            self._pads[row] = batch.prompt_length - len(prompt)
            self.budgets[row] = budget
            self._budgets_device[row] = budget
            self.row_ends[row] = 1 if is_eos[row] else None
            self._streamed[row] = 0
        self._update_active()
        admitted = getattr(engine.drafter, "admit", None)
        if admitted is not None:
            admitted(batch, rows)

    def finish_row(self, row: int) -> None:
        """Stop a row's request now (its client went away, or it met a stop sequence): it takes no part in later
        steps and its slot is free for ``admit``."""
        if self.row_ends[row] is None:
            self.row_ends[row] = self.batch.new_counts[row]
        self._update_active()

    def _limits(self, proposal: DraftProposal) -> torch.Tensor:
        """[B] int64: the most drafts each row may keep: its drafted width, cut so that it never commits past its
        token budget (the bonus token included); 0 for a row that finished."""
        batch = self.batch
        remaining = self._budgets_device - (batch.device_lengths - batch.prompt_length)  # [B]
        widths = proposal.widths if proposal.widths is not None else torch.full_like(remaining, proposal.width)
        return torch.where(self._active_device, torch.minimum(widths, remaining - 1), 0)

    def _commit(self, drafts: torch.Tensor, kept: torch.Tensor, next_tokens: torch.Tensor) -> torch.Tensor:
        """Append each row's kept drafts and its next token to its history (one scatter, no sync); returns the
        step's window [B, W + 1]: row b's first ``kept[b]`` drafts, then its next token, then filler.

        drafts: [B, W] (a tree's: the kept path's tokens); kept, next_tokens: [B]."""
        batch = self.batch
        offsets = torch.arange(drafts.shape[1] + 1, device=drafts.device)  # [W + 1]
        padded = torch.nn.functional.pad(drafts, (0, 1))
        window = torch.where(offsets[None, :] == kept[:, None], next_tokens[:, None], padded)  # [B, W + 1]
        # Filler lands past each row's kept tokens (overwritten later, or in the write-off last column).
        index = (batch.device_lengths[:, None] + offsets[None, :]).clamp_max(batch.history.shape[1] - 1)
        batch.history.scatter_(1, index, window)
        return window

    def _commit_chain(self, length: int, drafts: torch.Tensor, verdict: Verdict) -> torch.Tensor:
        """A lockstep chain's verdict: every row keeps the same ``n = num_accepted`` drafts, so its window (drafts
        [B, W], the next token at offset n, filler after it) goes to columns [length, length + W] of every row's
        cache columns and history. Returns the window [B, W + 1]."""
        next_tokens = verdict.next_tokens[:, None]  # [B, 1]
        window = torch.cat([drafts, next_tokens], dim=1)  # [B, W + 1]
        window.scatter_(1, verdict.num_accepted.reshape(1, 1).expand(self.batch.batch_size, 1), next_tokens)
        self._write_lockstep(length, window)
        return window

    def _write_lockstep(self, length: int, window: torch.Tensor) -> None:
        """Lockstep rows have no holes and share their columns, so a step's window [B, n] goes to columns
        [length, length + n) of every row's cache columns and history: a slice copy each, no scatter per row."""
        end = length + window.shape[1]
        self.batch.tokens[:, length:end] = window
        self.batch.history[:, length:end] = window

    def _check_eos_later(
        self, starts: list[int], rows: list[bool], tokens: torch.Tensor, counts: list[int] | None
    ) -> None:
        """Keep a step's committed tokens (see :class:`Committed`) for the next sync to read and check."""
        if self._eos_ids:
            self._pending_eos.append(Committed(starts, rows, tokens, counts))

    def _advance(
        self, start: int, shared: int, row_kept: list[int], kept: torch.Tensor | None, taking_part: list[bool]
    ) -> None:
        """Count the step's tokens into each row and, per row, hide the columns a row did not keep (holes).
        ``kept`` [B]: the drafts each row kept on the device (per row; lockstep rows all hold ``lengths[0]``)."""
        batch = self.batch
        grows = taking_part if self.per_row else [True] * batch.batch_size  # lockstep: every row moves on
        batch.lengths = [n + k + 1 if g else n for n, k, g in zip(batch.lengths, row_kept, grows, strict=True)]
        if self.per_row:
            assert kept is not None, "a per-row step counts what each row kept"
            batch.device_lengths += torch.where(self._active_device, kept + 1, 0)
            if any(k < shared or not part for k, part in zip(row_kept, taking_part, strict=True)):
                batch.hide(start, kept, shared, self._active_device)
                self.engine.target.set_rows(batch.positions, batch.key_valid)
        else:  # lockstep: every row holds the same number of tokens
            batch.device_lengths.fill_(batch.lengths[0])
        self._update_active()

    def _update_active(self) -> None:
        """A row stops taking part once it met its end of sequence or spent its token budget."""
        batch = self.batch
        active = [
            end is None and n < limit
            for end, n, limit in zip(self.row_ends, batch.new_counts, self.budgets, strict=True)
        ]
        if active != batch.active:
            batch.active = active
            self._active_device = torch.tensor(active, dtype=torch.bool).to(self.engine.device)

    def _compact(self) -> None:
        """Move every row's valid cache columns left (holes become left padding) in the batch, the target's cache and
        the drafter's: rare, when the shared columns would outgrow the cache (see ``docs/batching.md``)."""
        batch, engine = self.batch, self.engine
        keep = max(
            (n - pad for n, pad, part in zip(batch.lengths, self._pads, batch.active, strict=True) if part), default=1
        )  # the longest active row's committed tokens: its newest token lands in the last column
        source = batch.compact(keep)
        engine.target.compact(source[:, : keep - 1])  # the target's cache never holds the newest token
        engine.target.set_rows(batch.positions, batch.key_valid)
        drafter = engine.drafter
        if drafter is not None:
            drafter.compact(batch, source)  # type: ignore[attr-defined]
        self.compactions += 1

    def _check_proposal(self, proposal: DraftProposal, budget: int) -> int:
        """Check a non-empty proposal against a budget of ``budget`` tokens; returns a tree's depth (0: a chain).
        A chain holds at most ``budget`` tokens; a tree any number of nodes, at most ``budget`` deep."""
        if proposal.parents is None:
            self._check_width(proposal, budget)
            return 0
        name = self.engine.drafter.name if self.engine.drafter is not None else "drafter"
        require_batch_of_one(self.batch.batch_size, name)
        self.verifier.check_trees(name)
        check_parents(proposal.parents, proposal.width)
        depth = int(depths(proposal.parents).max())
        if depth > budget:
            raise RuntimeError(f"the drafter proposed a tree {depth} deep, deeper than the {budget} tokens asked for")
        return depth

    @staticmethod
    def _check_width(proposal: DraftProposal, budget: int) -> None:
        if not 0 <= proposal.width <= budget:
            raise RuntimeError(f"the drafter proposed {proposal.width} tokens, more than the {budget} asked for")

    def _ahead_launcher(
        self, length: int, accepted: torch.Tensor, features: torch.Tensor | None, k: int
    ) -> Callable[[], None] | None:
        """What launches the drafter's next chain while this step's verdict is read (a drafter with
        ``draft_ahead``, at a fixed K), or None. ``features``: the verification's (None: the drafter reads none)."""
        draft_ahead = getattr(self.engine.drafter, "draft_ahead", None)
        if draft_ahead is None or not isinstance(self.controller, FixedK):
            return None

        def launch() -> None:
            mark = self._clock.mark()
            if draft_ahead(self.batch, length, accepted, features, k, self.generation, self._generator):
                self._ahead_mark = mark

        return launch

    def _sync(
        self,
        kept: torch.Tensor | None,
        limits: torch.Tensor | None = None,
        path: torch.Tensor | None = None,
        meanwhile: Callable[[], None] | None = None,
    ) -> tuple[list[int], list[int], list[int]]:
        """One device-to-host transfer: what each row kept ([B]; zeros if None), each row's limit ([B]; the
        proposal's width if None), a tree's kept path ([B, W], row 0 read; [] without one) and the tokens committed
        since the last sync, whose first EOS per row marks it finished in ``row_ends``; they are then cleared.
        ``meanwhile`` runs after the transfer is queued and before the host waits for it (device work queued there
        does not delay the read)."""
        rows = len(self.row_ends)
        pending = self._pending_eos
        parts = [kept] if kept is not None else []
        if limits is not None and kept is not None:
            parts.append(limits)
        width = path.shape[1] if path is not None and kept is not None else 0
        if path is not None and width:
            parts.append(path[0])
        if pending:  # [B, n]: the tokens of every pending step side by side, read row by row
            tokens = [entry.tokens for entry in pending]
            parts.append((tokens[0] if len(tokens) == 1 else torch.cat(tokens, dim=1)).reshape(-1))
        values = (parts[0] if len(parts) == 1 else torch.cat(parts)) if parts else None
        host = read_to_host(values, meanwhile) if values is not None else []
        row_kept = [int(n) for n in host[:rows]] if kept is not None else [0] * rows
        read = rows if kept is not None else 0
        row_limits = [int(n) for n in host[read : read + rows]] if limits is not None and kept is not None else []
        read += len(row_limits)
        kept_path = [int(node) for node in host[read : read + width]]
        read += width
        total = sum(entry.tokens.shape[1] for entry in pending)
        assert kept is not None or all(e.counts is not None for e in pending), "a drafted step's kept comes along"
        for row in range(rows):
            column = read + row * total
            for entry in pending:
                if self.row_ends[row] is None and entry.rows[row]:
                    committed = entry.counts[row] if entry.counts is not None else row_kept[row] + 1
                    window = host[column : column + committed]
                    offset = next((i for i, token in enumerate(window) if token in self._eos_ids), None)
                    if offset is not None:
                        self.row_ends[row] = entry.starts[row] + offset + 1
                column += entry.tokens.shape[1]
        pending.clear()
        return row_kept, row_limits, kept_path

    # -------------------------------------------------------------------------------------------------- outputs
    def _row_limits(self) -> list[int]:
        """New tokens of each row that belong to the output (cut at the row's EOS and at max_new_tokens)."""
        counts = [min(n, limit) for n, limit in zip(self.batch.new_counts, self.budgets, strict=True)]
        return [min(end, n) if end is not None else n for end, n in zip(self.row_ends, counts, strict=True)]

    def _committed_counts(self) -> list[int]:
        """New tokens each row committed (past its EOS too, in lockstep), at most max_new_tokens."""
        return [min(n, limit) for n, limit in zip(self.batch.new_counts, self.budgets, strict=True)]

    def new_tokens(self) -> list[list[int]]:
        """Output tokens of each row committed since the last call (one transfer). For streaming."""
        if self._pending_eos:
            self._sync(None)
            self._update_active()
        limits = self._row_limits()
        start = min(self._streamed)
        block = self.batch.history[:, self.prompt_length + start : self.prompt_length + max(limits)].tolist()
        out = [
            row[done - start : limit - start] for row, done, limit in zip(block, self._streamed, limits, strict=True)
        ]
        self._streamed = [max(done, limit) for done, limit in zip(self._streamed, limits, strict=True)]
        return out

    def stream(self) -> Iterator[list[list[int]]]:
        """Step to the end, yielding each row's newly committed output tokens after the prefill and every step."""
        first = self.new_tokens()
        if any(first):
            yield first
        while not self.done:
            self.step()
            fresh = self.new_tokens()
            if any(fresh):
                yield fresh

    def result(self) -> GenerationResult:
        """The finished generation (its outputs and metrics). Gives the engine back."""
        if self._result is not None:
            return self._result
        if self._release is None:
            raise ConfigError("this generation was closed before it finished")
        if self._pending_eos:
            self._sync(None)
        self._clock.finish()
        synchronize(self.engine.device)
        total_time = time.perf_counter() - self._started
        steps = [r.resolve(self._clock) for r in self.records]
        limits = self._row_limits()
        generated = self.batch.history[:, self.prompt_length : self.prompt_length + max(limits)].tolist()
        token_ids = [ids[:limit] for ids, limit in zip(generated, limits, strict=True)]
        metrics = self._metrics(steps, token_ids, total_time)
        self.close()
        self._result = GenerationResult(
            token_ids=token_ids, texts=[self.engine.decode(ids) for ids in token_ids], metrics=metrics, steps=steps
        )
        return self._result

    def _metrics(self, steps: list[StepMetrics], token_ids: list[list[int]], total_time: float) -> RunMetrics:
        engine, generation, speculation = self.engine, self.generation, self.speculation
        drafter = engine.drafter
        drafted = sum(s.drafted for s in steps)
        accepted = sum(s.accepted for s in steps)
        new_tokens = sum(len(ids) for ids in token_ids)
        speculative = drafter is not None
        largest_k = min(speculation.max_k, generation.max_new_tokens - 1)  # the most any step could draft
        positions = PositionCounts.of_steps(steps)
        trees = [s.tree_size for s in steps if s.tree_size]
        itl_p50, itl_p90, itl_p99 = itl_percentiles([s.itl_ms / 1000.0 for s in steps])
        return RunMetrics(
            target=engine.target.name,
            draft=drafter.name if drafter is not None else None,
            draft_method=drafter.method if drafter is not None else None,
            decoder_path=engine.target.path,
            verifier_backend=self.verifier.backend,
            policy=speculation.acceptance.policy.value if speculative else "none",
            k=largest_k if speculative and speculation.adaptive is None else (None if speculative else 0),
            adaptive_k=speculative and speculation.adaptive is not None,
            mean_k=sum(s.k for s in steps) / len(steps) if steps else 0.0,
            mean_drafted=drafted / sum(s.rows for s in steps) if steps else 0.0,
            device=str(engine.device),
            dtype=dtype_name(engine.target.dtype),
            batch_size=self.batch.batch_size,
            prompt_tokens=self.prompt_length,
            new_tokens=new_tokens,
            steps=len(steps),
            drafted_tokens=drafted,
            accepted_tokens=accepted,
            acceptance_rate=accepted / drafted if drafted else None,
            mean_tokens_per_forward=sum(self._committed_counts()) / len(token_ids) / engine.target.forwards,
            target_forwards=engine.target.forwards,
            draft_forwards=drafter.forwards if drafter is not None else 0,
            mean_accepted_length=mean_accepted_length(steps),
            accepted_by_position=positions.accepted,
            reached_by_position=positions.reached,
            drafted_by_position=positions.drafted,
            acceptance_by_position=positions.conditional(),
            acceptance_by_position_unconditional=positions.unconditional(),
            time_to_first_token_s=self.time_to_first_token,
            tpot_s=time_per_output_token(steps, self.batch.batch_size),
            itl_p50_s=itl_p50,
            itl_p90_s=itl_p90,
            itl_p99_s=itl_p99,
            total_time_s=total_time,
            tokens_per_second=new_tokens / total_time if total_time > 0 else 0.0,
            draft_time_s=sum(s.draft_ms for s in steps) / 1000.0,
            verify_time_s=sum(s.verify_ms for s in steps) / 1000.0,
            peak_device_memory_bytes=peak_device_memory_bytes(engine.device),
            peak_rss_bytes=peak_rss_bytes(),
            synthetic=speculation.acceptance.synthetic if speculative else None,
            mean_tree_size=sum(trees) / len(trees) if trees else None,
            row_latency_s=() if self.slots else row_latencies(
                self.time_to_first_token, steps, [r.counts for r in self.records], [len(ids) for ids in token_ids]
            ),
        )  # fmt: skip


def ar_chunk() -> int:
    """Greedy autoregressive steps per CUDA graph from ``SPECDEC_AR_CHUNK`` (0: unset, one step at a time)."""
    value = os.environ.get(ENV_AR_CHUNK, "").strip()
    if not value:
        return 0
    if not value.isdigit():
        raise ConfigError(f"{ENV_AR_CHUNK}={value!r}: expected a whole number of steps (e.g. 16), or unset it")
    return int(value)
