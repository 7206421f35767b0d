"""Drafting with a smaller causal LM that shares the target's vocabulary: a chain of K tokens, or a token tree."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from specdec.config import GenerationConfig
from specdec.decoder import Decoder
from specdec.drafters.base import DraftProposal
from specdec.errors import ConfigError
from specdec.sampling import logits_to_probs
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

    def propose(
        self, batch: SequenceBatch, k: int, generation: GenerationConfig, generator: torch.Generator | None
    ) -> DraftProposal:
        if batch.layout_version != self._layout_version:  # holes since the last proposal
            self.decoder.set_rows(batch.positions, batch.key_valid)
            self._layout_version = batch.layout_version
        unread = batch.tokens[:, self.decoder.cache_length : batch.length]  # [B, S] committed, not yet read
        if self.options.branching > 1:
            return self._propose_tree(unread, batch.length, k)
        if generation.greedy:
            return DraftProposal(tokens=self.decoder.greedy_chain(unread, k), probs=None)
        # Sampled: the noise of every draw first (with the request's generator), then the chain as device work.
        shape = (batch.batch_size, k, self.decoder.vocab_size)
        exponentials = torch.empty(shape, dtype=torch.float32, device=self.decoder.device)
        exponentials.exponential_(generator=generator)
        tokens, probs = self.decoder.sampled_chain(
            unread, exponentials, lambda logits: logits_to_probs(logits, generation),
            ("sampled", generation.temperature, generation.top_k, generation.top_p),
        )  # fmt: skip
        return DraftProposal(tokens=tokens, probs=probs)  # [B, K], [B, K, V]

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
        self.decoder.rollback(min(self.decoder.cache_length, batch.length - 1))

    def compact(self, batch: SequenceBatch, source: torch.Tensor) -> None:
        """The batch's columns were compacted: row b's new column j is its old column ``source[b, j]`` [B, n].
        The draft keeps the longest run of new columns that every row had cached (one sync, rare); it reads the
        rest again at the next proposal."""
        cached = source < self.decoder.cache_length  # [B, n] (-1, padding, counts as cached)
        keep = int(cached.long().cumprod(dim=1).sum(dim=1).min())
        self.decoder.compact(source[:, :keep])
        self.decoder.set_rows(batch.positions, batch.key_valid)
        self._layout_version = batch.layout_version
