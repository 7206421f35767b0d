"""One request's generation, step by step: ``prefill``, then ``step`` until ``done``, then ``result``.

A step is the algorithm of Leviathan et al. (2023) once: the drafter proposes up to K tokens, the target scores the
last committed token and every drafted one in one forward, the verifier keeps the longest acceptable prefix plus one
token of the target's own, and both KV caches roll back past what was rejected. A step that drafts nothing is a
plain autoregressive step through the same code (no draft forward, a one-token target forward).

Host syncs: a step that drafted reads the number accepted (one sync; pending end-of-sequence flags ride along). A step
that drafted nothing needs no sync on an accelerator: end-of-sequence flags are read every ``EOS_CHECK_EVERY`` steps
(the output is cut at EOS afterwards), unless the caller streams, which reads every step's tokens. Step timings
(draft, verify and inter-token latency) come from the step clock, which adds no sync (``specdec.metrics``).

A token-tree proposal (``DraftProposal.parents``, :mod:`specdec.tree`) runs the same step: the target scores the root
and every node in one tree forward, the verifier keeps one root-to-node path, whose tokens are written into the
batch; the step's one sync reads the path with the number accepted, and the target's cache moves the path's keys
and values next to the root before rolling back. A drafter that reads the target's hidden states (``features``)
gets those of the newly committed positions after the prefill and after every step (``FeatureReader``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch

from specdec.config import GenerationConfig, SpeculationConfig
from specdec.device import dtype_name, peak_device_memory_bytes, peak_rss_bytes, reset_peak_memory, synchronize
from specdec.drafters.base import DraftProposal, FeatureRequest, empty_proposal
from specdec.errors import ConfigError
from specdec.k_control import make_controller
from specdec.metrics import (
    PositionCounts,
    RunMetrics,
    StepClock,
    StepMetrics,
    StepRecord,
    itl_percentiles,
    mean_accepted_length,
    time_per_output_token,
)
from specdec.sampling import next_token
from specdec.seeding import make_generator, seed_everything
from specdec.sequence import SequenceBatch
from specdec.tree import check_parents, depths, require_batch_of_one, tree_attention
from specdec.verification import Verifier

if TYPE_CHECKING:
    from specdec.engine import SpeculativeEngine

EOS_CHECK_EVERY = 16  # without drafts, an accelerator's EOS flags are read every this many steps
EOS_NOT_FOUND = 1 << 30


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
    ) -> None:
        self.engine = engine
        self.generation = generation
        self.speculation = speculation
        self.verifier = Verifier(speculation.acceptance, generation, engine.kernels)
        self.controller = make_controller(speculation)
        self.batch = SequenceBatch.from_prompts(rows, generation.max_new_tokens, engine.pad_id, engine.device)
        self.prompt_length = self.batch.prompt_length
        self.row_ends: list[int | None] = [None] * len(rows)  # new tokens per row up to and including its EOS
        self.records: list[StepRecord] = []
        self.time_to_first_token = 0.0
        self._emitted_mark = 0  # the clock mark at which the last committed tokens were known (for ITL)
        self._release: Callable[[], None] | None = release
        self._eos = torch.tensor(
            engine.eos_ids if generation.stop_at_eos else [], dtype=torch.long, device=engine.device
        )
        self._pending_eos: list[tuple[int, torch.Tensor]] = []  # (step's first new column, [B] EOS offsets)
        self._eos_check_every = 1 if stream or engine.device.type == "cpu" else EOS_CHECK_EVERY
        self._clock = StepClock(engine.device)
        self._generator: torch.Generator | None = None
        self._started = 0.0
        self._streamed = [0] * len(rows)  # new tokens per row already handed out by `new_tokens`
        self._result: GenerationResult | None = None
        drafter = engine.drafter
        self._feature_request: FeatureRequest | None = getattr(drafter, "features", None)
        max_width = getattr(drafter, "max_width", None)  # a tree drafter may propose more nodes than K
        self._tree_room = max(0, max_width(speculation.max_k) - 1) if max_width is not None else 0

    # ------------------------------------------------------------------------------------------------ lifecycle
    def __enter__(self) -> Generation:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        """Give the engine back (idempotent). The generation cannot step after this."""
        release, self._release = getattr(self, "_release", None), None  # None too if __init__ failed early
        if release is not None:
            release()

    def _require_open(self) -> None:
        if self._release is None:
            raise ConfigError("this generation was closed: start a new one with engine.start(...)")

    @property
    def done(self) -> bool:
        """Every row met its end of sequence, or the token budget is spent."""
        return self.batch.new_tokens >= self.generation.max_new_tokens or all(e is not None for e in self.row_ends)

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
        engine.target.prepare(batch.pad_lengths, batch.attention_mask, batch.max_length + self._tree_room)
        logits = engine.target.forward(batch.tokens[:, : self.prompt_length], last_only=True)
        batch.tokens[:, self.prompt_length] = next_token(logits[:, -1], self.generation, self._generator)
        batch.length = self.prompt_length + 1
        first_is_eos = torch.isin(batch.tokens[:, self.prompt_length], self._eos).tolist()  # the prefill's one sync
        self.time_to_first_token = time.perf_counter() - self._started
        self._emitted_mark = self._clock.mark()
        self.row_ends = [1 if is_eos else None for is_eos in first_is_eos]
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
        requested_k = self.controller.next_k() if drafter is not None else 0
        budget = min(requested_k, generation.max_new_tokens - batch.new_tokens - 1)
        start_mark = self._clock.mark()
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
            if parents is None:
                batch.tokens[:, length : length + drafted] = proposal.tokens
        tree = tree_attention(parents, engine.device) if parents is not None else None
        target_logits = engine.target.forward(verify_ids, tree=tree)  # [B, W + 1, V]
        verdict = self.verifier.verify(
            proposal.tokens, proposal.probs, target_logits, self._generator, requested_k, parents
        )
        if verdict.path is not None:  # a tree: the kept path's tokens, then the next token
            path_tokens = proposal.tokens.gather(1, verdict.path.clamp_min(0))  # [B, W]
            room = min(drafted, batch.max_length - length)
            batch.tokens[:, length : length + room] = path_tokens[:, :room]
        next_column = (length + verdict.num_accepted).reshape(1, 1).expand(batch.batch_size, 1)
        batch.tokens.scatter_(1, next_column, verdict.next_tokens[:, None])
        if self._eos.numel() > 0:
            window = batch.tokens[:, length : length + drafted + 1]
            self._pending_eos.append((length, _first_eos_offsets(window, self._eos, verdict.num_accepted)))
        features = engine.target.features if self._feature_request is not None else None
        verified_mark = self._clock.mark()

        # Nothing drafted: one token, known without asking the device. Otherwise the step's one host sync reads the
        # number accepted (and a tree's path, and any EOS offsets waiting to be read with it).
        last_step = batch.new_tokens + drafted + 1 >= generation.max_new_tokens
        accepted = 0
        path: list[int] = []  # a tree's kept nodes, read by the sync
        if drafted > 0 or len(self._pending_eos) >= self._eos_check_every or last_step:
            accepted, path = self._sync(verdict.num_accepted if drafted > 0 else None, verdict.path)
        batch.length = length + accepted + 1
        if path and path[:accepted] != list(range(accepted)):  # the path is not already next to the root
            columns = torch.tensor([length + node for node in path[:accepted]], device=engine.device)
            engine.target.keep_path(length, columns)
        engine.target.rollback(batch.length - 1)
        if drafter is not None:
            if features is not None:  # the root's and the kept tokens' (block indices 0 and 1 + node)
                kept = path[:accepted] if parents is not None else list(range(accepted))
                drafter.read_features(features[:, [0] + [1 + node for node in kept]], batch.length)  # type: ignore[attr-defined]
            drafter.observe(batch, accepted)
        self.controller.update(drafted, accepted)
        record = StepRecord(k=requested_k, drafted=drafted, accepted=accepted)
        if parents is not None:
            record.tree_size, record.tree_depth = drafted, tree_depth
        record.marks = (start_mark, drafted_mark, verified_mark)
        record.previous, self._emitted_mark = self._emitted_mark, verified_mark
        self.records.append(record)

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

    def _sync(self, num_accepted: torch.Tensor | None, path: torch.Tensor | None = None) -> tuple[int, list[int]]:
        """One device-to-host transfer: the number accepted (0 if None), a tree's kept path ([B, W], row 0 read;
        [] without one) and the pending EOS offsets, which mark finished rows in ``row_ends`` and are then cleared."""
        pending = self._pending_eos
        parts = [num_accepted.reshape(1)] if num_accepted is not None else []
        width = path.shape[1] if path is not None and num_accepted is not None else 0
        if path is not None and width:
            parts.append(path[0])
        host = torch.cat(parts + [offsets for _, offsets in pending]).tolist() if parts or pending else []
        accepted = int(host[0]) if num_accepted is not None else 0
        kept = [int(node) for node in host[1 : 1 + width]]
        offsets = host[1 + width :] if num_accepted is not None else host  # len(pending) blocks of one per row
        rows = len(self.row_ends)
        for index, (column, _) in enumerate(pending):
            for row, offset in enumerate(offsets[index * rows : (index + 1) * rows]):
                if self.row_ends[row] is None and offset < EOS_NOT_FOUND:
                    self.row_ends[row] = column - self.prompt_length + int(offset) + 1
        pending.clear()
        return accepted, kept

    # -------------------------------------------------------------------------------------------------- outputs
    def _row_limits(self) -> list[int]:
        """New tokens of each row that belong to the output (cut at the row's EOS and at max_new_tokens)."""
        committed = min(self.batch.new_tokens, self.generation.max_new_tokens)
        return [min(end, committed) if end is not None else committed for end in self.row_ends]

    def new_tokens(self) -> list[list[int]]:
        """Output tokens of each row committed since the last call (one transfer). For streaming."""
        if self._pending_eos:
            self._sync(None)
        limits = self._row_limits()
        start = min(self._streamed)
        block = self.batch.tokens[:, self.prompt_length + start : self.prompt_length + max(limits)].tolist()
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
        generated = self.batch.tokens[:, self.prompt_length : self.prompt_length + max(limits)].tolist()
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
            mean_drafted=drafted / len(steps) if steps else 0.0,
            device=str(engine.device),
            dtype=dtype_name(engine.target.dtype),
            batch_size=self.batch.batch_size,
            prompt_tokens=self.prompt_length,
            new_tokens=new_tokens,
            steps=len(steps),
            drafted_tokens=drafted,
            accepted_tokens=accepted,
            acceptance_rate=accepted / drafted if drafted else None,
            mean_tokens_per_forward=self.batch.new_tokens / engine.target.forwards,
            target_forwards=engine.target.forwards,
            draft_forwards=drafter.forwards if drafter is not None else 0,
            mean_accepted_length=mean_accepted_length(steps),
            accepted_by_position=positions.accepted,
            reached_by_position=positions.reached,
            drafted_by_position=positions.drafted,
            acceptance_by_position=positions.conditional(),
            acceptance_by_position_unconditional=positions.unconditional(),
            time_to_first_token_s=self.time_to_first_token,
            tpot_s=time_per_output_token(steps),
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
        )


def _first_eos_offsets(window: torch.Tensor, eos: torch.Tensor, num_accepted: torch.Tensor) -> torch.Tensor:
    """Offset of the first EOS among the committed tokens of a step's window, else ``EOS_NOT_FOUND``.

    window: [B, W + 1] (the step's tokens; only [:, :num_accepted + 1] are committed) -> [B] int64.
    """
    offsets = torch.arange(window.shape[1], device=window.device).expand_as(window)
    hit = torch.isin(window, eos) & (offsets <= num_accepted)
    return torch.where(hit, offsets, EOS_NOT_FOUND).min(dim=1).values
