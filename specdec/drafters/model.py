"""Drafting with a smaller causal LM that shares the target's vocabulary: a chain of K tokens, or a token tree.

**Drafting ahead** (chains in lockstep, on a decoder that rolls back to a device length: the fast path on CUDA;
``SPECDEC_DRAFT_AHEAD=0`` turns it off). The
generation calls :meth:`ModelDrafter.draft_ahead` after a verification is queued and before the host reads its
verdict. The draft rolls back, on the device, to the column of the step's last kept token (the step's first column
plus the accepted count, a device value), reads that token and the verification's next token (both committed to the
batch's tokens on the device already) and drafts the next chain from them, so that the GPU drafts while the host
waits for the verdict and books it. The next :meth:`ModelDrafter.propose` returns that chain. Re-reading the last
kept token rewrites its keys and values from the same inputs, so the chain is the one drafted in place up to the
rounding of a two-token forward; the chain's noise comes from the same generator calls in the same order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from specdec.config import GenerationConfig
from specdec.decoder import Decoder
from specdec.drafters.base import DraftProposal
from specdec.errors import ConfigError
from specdec.sampling import race
from specdec.sequence import SequenceBatch


@dataclass(frozen=True)
class ModelOptions:
    """``--draft`` names the model. ``branching`` > 1 drafts a token tree: the root branches into the draft's
    ``branching`` most likely tokens, each continued by a greedy chain, the first ``K`` deep, the others as deep as
    ``max_nodes`` allows (at least one token each). The tree is deterministic, so it is verified losslessly at any
    temperature (q one-hot on each node), for a batch of one sequence."""

    branching: int = 1  # 1: a chain of K tokens (sampled when sampling)
    max_nodes: int = 64  # the most nodes a tree holds

    def __post_init__(self) -> None:
        if not 1 <= self.branching <= 32:
            raise ConfigError(f"model drafter: branching must be 1..32, got {self.branching}")
        if self.max_nodes < self.branching:
            raise ConfigError(
                f"model drafter: max_nodes={self.max_nodes} is fewer than branching={self.branching} (a tree needs "
                "one node per branch at least)"
            )

    def branch_depths(self, k: int) -> list[int]:
        """Depth of each branch of a tree drafted with budget ``k``: [k, d, d, ...] (``branching`` entries)."""
        if self.branching == 1:
            return [k]
        first = min(k, self.max_nodes - (self.branching - 1))
        others = max(1, min(k, (self.max_nodes - first) // (self.branching - 1)))
        return [first] + [others] * (self.branching - 1)


def branch_parents(branch_depths: list[int]) -> torch.Tensor:
    """Parents of branches laid out one after the other, each a chain below the root. -> [sum(depths)] (host)."""
    parents: list[int] = []
    for depth in branch_depths:
        start = len(parents)
        parents.extend([-1, *range(start, start + depth - 1)])
    return torch.tensor(parents, dtype=torch.long)


ENV_DRAFT_AHEAD = "SPECDEC_DRAFT_AHEAD"  # "0": draft models never draft ahead (default "1": on CUDA's fast path)


def draft_ahead_on() -> bool:
    """Whether drafting ahead may run: ``SPECDEC_DRAFT_AHEAD`` 1 or unset (where it applies), 0 never."""
    value = os.environ.get(ENV_DRAFT_AHEAD, "1").strip()
    if value not in ("0", "1", ""):
        raise ConfigError(f"{ENV_DRAFT_AHEAD}={value!r}: expected 1 (draft ahead on CUDA, the default) or 0 (off)")
    return value != "0"


@runtime_checkable
class RollsBackOnDevice(Protocol):
    """A decoder that can roll back to a length the host has not read (``FastDecoder``)."""

    def rollback_on_device(self, length: torch.Tensor) -> None: ...

    def settle(self, length: int) -> None: ...


class ModelDrafter:
    """Runs the draft model autoregressively for K tokens, over its own rollback-able KV cache.

    The draft cache holds committed positions only, and never the last one; each proposal starts by feeding the
    committed tokens it lacks: the whole prompt at the first proposal, then one token (or two, after a step that
    accepted all K drafts, since the draft never read ``d_K``).

    Per-row acceptance: the draft cache has the target's columns, so it gets the same holes (``set_rows`` when the
    batch's layout changed) and the same compaction.
    """

    per_row = True

    def __init__(
        self, decoder: Decoder, name: str | None = None, method: str = "model", options: ModelOptions | None = None
    ) -> None:
        self.decoder = decoder
        self.options = options or ModelOptions()
        branching = self.options.branching
        self.name = (name or decoder.name) + (f" (tree: top-{branching} branches)" if branching > 1 else "")
        self.method = method
        self._layout_version = 0  # the batch layout the decoder's positions and key mask come from
        # whether to draft ahead: where the GPU's drafting overlaps the host's reading of the verdict (on a CPU the
        # ahead chain's extra token is only extra work; tests turn it on there to check it). On an H100 it made the
        # zoo pair's sampled run 1.07-1.12x faster (docs/performance.md); SPECDEC_DRAFT_AHEAD=0 turns it off.
        self.ahead = draft_ahead_on() and decoder.device.type == "cuda"
        self._ahead: DraftProposal | None = None  # the chain drafted ahead, for the next proposal
        self._unsettled = False  # drafted ahead, the decoder's host length not yet settled
        self._pair = torch.arange(2, device=decoder.device)  # [2]: the last kept column and the next one

    def max_width(self, k: int) -> int:
        """The most tokens (tree nodes) a proposal for a budget of ``k`` holds."""
        return sum(self.options.branch_depths(k))

    @property
    def forwards(self) -> int:
        return self.decoder.forwards

    def start(self, batch: SequenceBatch) -> None:
        """Empty the draft cache; the first proposal reads the prompt (so a run that never drafts never runs it)."""
        self.decoder.prepare(batch.pad_lengths, batch.attention_mask, batch.max_row_length, batch.max_length)
        self._layout_version = batch.layout_version
        self._ahead, self._unsettled = None, False

    def propose(
        self, batch: SequenceBatch, k: int, generation: GenerationConfig, generator: torch.Generator | None
    ) -> DraftProposal:
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            if k <= ahead.tokens.shape[1]:  # a prefix of a chain is the shorter chain
                return DraftProposal(ahead.tokens[:, :k], ahead.probs[:, :k] if ahead.probs is not None else None)
            self.decoder.rollback(batch.length - 1)  # too short: draft in place
        if batch.layout_version != self._layout_version:  # holes since the last proposal
            self.decoder.set_rows(batch.positions, batch.key_valid)
            self._layout_version = batch.layout_version
        unread = batch.tokens[:, self.decoder.cache_length : batch.length]  # [B, S] committed, not yet read
        if self.options.branching > 1:
            return self._propose_tree(unread, batch.length, k)
        return self._chain(unread, k, generation, generator)

    def _chain(
        self, unread: torch.Tensor, k: int, generation: GenerationConfig, generator: torch.Generator | None
    ) -> DraftProposal:
        """A chain of ``k`` drafts after feeding ``unread`` [B, S]: greedy, or sampled (the noise of every draw first,
        with the request's generator, then the chain as device work)."""
        if generation.greedy:
            return DraftProposal(tokens=self.decoder.greedy_chain(unread, k), probs=None)
        shape = (unread.shape[0], k, self.decoder.vocab_size)
        exponentials = torch.empty(shape, dtype=torch.float32, device=self.decoder.device)
        exponentials.exponential_(generator=generator)
        tokens, probs = self.decoder.sampled_chain(
            unread, exponentials, lambda logits, noise: race(logits, generation, noise),
            ("sampled", generation.temperature, generation.top_k, generation.top_p),
        )  # fmt: skip
        return DraftProposal(tokens=tokens, probs=probs)  # [B, K], [B, K, V]

    @torch.no_grad()
    def draft_ahead(
        self,
        batch: SequenceBatch,
        length: int,
        accepted: torch.Tensor,
        features: torch.Tensor | None,
        k: int,
        generation: GenerationConfig,
        generator: torch.Generator | None,
    ) -> bool:
        """Draft the next step's chain of ``k`` before this step's verdict is read (see the module docstring); False
        where it does not apply (a tree, a decoder that cannot roll back to a device length, a draft cache that
        does not reach this step's first column). ``length``: the batch's length when the step began, its chain's
        verdict committed to ``batch.tokens`` on the device; accepted: [] the drafts every row keeps (device)."""
        self._ahead = None
        decoder = self.decoder
        if not self.ahead or not isinstance(decoder, RollsBackOnDevice) or self.options.branching > 1:
            return False
        if decoder.cache_length < length:  # the step's drafts were not this decoder's own chain
            return False
        last_kept = accepted.reshape(()) + (length - 1)  # [] the column of the step's last kept token
        decoder.rollback_on_device(last_kept)
        unread = batch.tokens.index_select(1, last_kept + self._pair)  # [B, 2]: it and the next token
        chain = self._chain(unread, k, generation, generator)
        probs = chain.probs.clone() if chain.probs is not None else None
        self._ahead = DraftProposal(chain.tokens.clone(), probs)  # a graph's outputs are reused by its next replay
        self._unsettled = True  # the host's cache length is wrong until ``observe`` settles it
        return True

    def _propose_tree(self, unread: torch.Tensor, length: int, k: int) -> DraftProposal:
        """Top-``branching`` tokens after the root, each continued greedily (branch by branch over the draft cache,
        which is rolled back to the committed ``length`` between branches and at the end)."""
        depths = self.options.branch_depths(k)
        logits = self.decoder.forward(unread, last_only=True)[:, -1]  # [B, V]
        first = logits.topk(len(depths), dim=-1).indices  # [B, b]: distinct tokens, most likely first
        branches = []
        for j, depth in enumerate(depths):
            self.decoder.rollback(length)
            head = first[:, j : j + 1]  # [B, 1]
            branches.append(torch.cat([head, self.decoder.greedy_chain(head, depth - 1)], 1) if depth > 1 else head)
        self.decoder.rollback(length)
        return DraftProposal(tokens=torch.cat(branches, dim=1), probs=None, parents=branch_parents(depths))

    def observe(self, batch: SequenceBatch, num_accepted: int) -> None:
        if self._ahead is not None and self._unsettled:
            # drafted ahead in this step: the chain read through the new last token, then k - 1 of its drafts
            assert isinstance(self.decoder, RollsBackOnDevice)
            self.decoder.settle(batch.length + self._ahead.tokens.shape[1] - 1)
            self._unsettled = False
            return
        self._ahead = None  # a chain drafted ahead that no proposal took is stale now
        self.decoder.rollback(min(self.decoder.cache_length, batch.length - 1))

    def compact(self, batch: SequenceBatch, source: torch.Tensor) -> None:
        """The batch's columns were compacted: row b's new column j is its old column ``source[b, j]`` [B, n].
        The draft keeps the longest run of new columns that every row had cached (one sync, rare); it reads the
        rest again at the next proposal."""
        self._ahead = None  # per-row batches never draft ahead
        cached = source < self.decoder.cache_length  # [B, n] (-1, padding, counts as cached)
        keep = int(cached.long().cumprod(dim=1).sum(dim=1).min())
        self.decoder.compact(source[:, :keep])
        self.decoder.set_rows(batch.positions, batch.key_valid)
        self._layout_version = batch.layout_version
