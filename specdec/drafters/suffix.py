"""Suffix matching over the request's own tokens, and optionally over earlier requests' (in the spirit of
SuffixDecoding, Oliaro et al. 2024, and SAM-decoding, Hu et al. 2024): no draft model at all.

Every position of a sequence is indexed by the contexts that precede it, up to ``max_depth`` tokens back, in a trie
read backwards from each position (a suffix trie of the reversed text); each node counts the tokens that followed
its context. A proposal takes the longest context of the sequence's end that occurred before, follows its most
frequent continuation, and keeps extending while the deepest matching context is at least ``min_match`` tokens long
and its most frequent continuation has an empirical probability of at least ``min_prob``. So the proposal's length
is dynamic: long in text that repeats itself, empty where nothing did.

Against ``ngram`` (the most recent occurrence, copied verbatim): suffix matching picks the most frequent of several
continuations, stops where they disagree, and can learn from earlier outputs (``corpus``); ``ngram`` costs less
host work and needs no index.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from specdec.config import GenerationConfig
from specdec.drafters.base import DraftProposal, empty_proposal
from specdec.errors import ConfigError
from specdec.sequence import SequenceBatch


@dataclass(frozen=True)
class SuffixOptions:
    max_depth: int = 24  # longest context indexed and matched
    min_match: int = 2  # a context shorter than this is not trusted to predict
    min_prob: float = 0.3  # stop extending where the best continuation's frequency falls below this
    corpus: bool = False  # also match earlier requests' tokens (kept by the engine across requests)
    corpus_tokens: int = 1_000_000  # the corpus forgets everything beyond this many indexed tokens

    def __post_init__(self) -> None:
        if not 1 <= self.min_match <= self.max_depth <= 256:
            raise ConfigError(
                f"suffix drafter: need 1 <= min_match <= max_depth <= 256, got min_match={self.min_match}, "
                f"max_depth={self.max_depth}"
            )
        if not 0.0 < self.min_prob <= 1.0:
            raise ConfigError(f"suffix drafter: min_prob must be in (0, 1], got {self.min_prob}")
        if self.corpus_tokens < 1:
            raise ConfigError(f"suffix drafter: corpus_tokens must be >= 1, got {self.corpus_tokens}")


class _Node:
    __slots__ = ("best", "best_count", "children", "counts", "total")

    def __init__(self) -> None:
        self.children: dict[int, _Node] = {}  # the token one step further back
        self.counts: dict[int, int] = {}  # tokens that followed this context
        self.best = -1  # the most frequent of them (the most recent among equals)
        self.best_count = 0
        self.total = 0


class SuffixIndex:
    """Contexts of up to ``max_depth`` tokens and what followed them, for one or more token sequences."""

    def __init__(self, max_depth: int) -> None:
        self.max_depth = max_depth
        self.root = _Node()
        self.indexed = 0  # positions indexed

    def add(self, tokens: list[int], start: int) -> None:
        """Index the positions ``start..len(tokens)-1`` of ``tokens`` (each by the contexts before it)."""
        for position in range(max(start, 1), len(tokens)):
            following = tokens[position]
            node = self.root
            for back in range(position - 1, max(position - 1 - self.max_depth, -1), -1):
                child = node.children.get(tokens[back])
                if child is None:
                    child = node.children[tokens[back]] = _Node()
                node = child
                count = node.counts.get(following, 0) + 1
                node.counts[following] = count
                node.total += 1
                if count >= node.best_count:  # ties go to the most recent follower
                    node.best, node.best_count = following, count
            self.indexed += 1

    def deepest(self, tokens: list[int]) -> tuple[_Node | None, int]:
        """The node of the longest context that ends ``tokens`` and occurred before, and its depth."""
        node, depth = self.root, 0
        for back in range(len(tokens) - 1, max(len(tokens) - 1 - self.max_depth, -1), -1):
            child = node.children.get(tokens[back])
            if child is None:
                break
            node, depth = child, depth + 1
        return (node, depth) if depth > 0 else (None, 0)


class SuffixDrafter:
    """Proposes the most frequent continuation of the longest earlier context, for as long as it stays likely."""

    method = "suffix"
    forwards = 0
    per_row = True  # each row proposes its own continuation, of its own length: proposal.widths

    def __init__(self, options: SuffixOptions) -> None:
        self.options = options
        self.name = f"suffix(depth={options.max_depth})" + ("+corpus" if options.corpus else "")
        self.corpus = SuffixIndex(options.max_depth) if options.corpus else None
        self._rows: list[list[int]] = []  # each row's committed tokens (padding excluded)
        self._indexes: list[SuffixIndex] = []
        self._pads: list[int] = []  # each row's left padding in batch.history

    def start(self, batch: SequenceBatch) -> None:
        self._retire()
        self._pads = batch.pad_lengths.tolist()
        prompts = batch.history[:, : max(batch.lengths)].tolist()
        self._rows = [row[pad:end] for row, pad, end in zip(prompts, self._pads, batch.lengths, strict=True)]
        self._indexes = []
        for row in self._rows:
            index = SuffixIndex(self.options.max_depth)
            index.add(row, 0)
            self._indexes.append(index)

    def admit(self, batch: SequenceBatch, rows: list[int]) -> None:
        """New requests joined ``rows`` (a slot batch): their earlier sequences join the corpus (when kept) and each
        row's index starts over from its prompt and first token."""
        pads = batch.pad_lengths.tolist()
        for row in rows:
            if self.corpus is not None and self._rows[row]:
                self.corpus.add(self._rows[row], 0)
            self._pads[row] = pads[row]
            self._rows[row] = batch.history[row, pads[row] : batch.lengths[row]].tolist()
            self._indexes[row] = SuffixIndex(self.options.max_depth)
            self._indexes[row].add(self._rows[row], 0)

    def _retire(self) -> None:
        """The previous request's sequences join the corpus (when kept), which forgets all past its budget."""
        if self.corpus is None or not self._rows:
            return
        if self.corpus.indexed + sum(len(r) for r in self._rows) > self.options.corpus_tokens:
            self.corpus = SuffixIndex(self.options.max_depth)
        for row in self._rows:
            self.corpus.add(row, 0)

    def _continue(self, row: list[int], index: SuffixIndex, k: int) -> list[int]:
        drafted: list[int] = []
        sequence = list(row[-self.options.max_depth :])
        for _ in range(k):
            best_node, best_depth = index.deepest(sequence)
            if self.corpus is not None:
                node, depth = self.corpus.deepest(sequence)
                if depth > best_depth:
                    best_node, best_depth = node, depth
            if best_node is None or best_depth < self.options.min_match:
                break
            if best_node.best_count < self.options.min_prob * best_node.total:
                break
            drafted.append(best_node.best)
            sequence.append(best_node.best)
        return drafted

    def propose(
        self, batch: SequenceBatch, k: int, generation: GenerationConfig, generator: torch.Generator | None
    ) -> DraftProposal:
        drafts = [
            self._continue(row, index, k) if active else []
            for row, index, active in zip(self._rows, self._indexes, batch.active, strict=True)
        ]
        width = max(len(d) for d in drafts)
        if width == 0:
            return empty_proposal(batch)
        tokens = torch.tensor([d + [0] * (width - len(d)) for d in drafts], dtype=torch.long)  # 0: filler
        widths = torch.tensor([len(d) for d in drafts], dtype=torch.long)
        device = batch.tokens.device
        return DraftProposal(
            tokens=tokens.to(device, non_blocking=True), probs=None, widths=widths.to(device, non_blocking=True)
        )

    def observe(self, batch: SequenceBatch, num_accepted: int) -> None:
        starts = [pad + len(row) for pad, row in zip(self._pads, self._rows, strict=True)]  # first unread token
        low, high = min(starts), max(batch.lengths)
        if high <= low:
            return
        block = batch.history[:, low:high].tolist()  # the tokens this step committed (one transfer)
        for row, index, tokens, start, end in zip(self._rows, self._indexes, block, starts, batch.lengths, strict=True):
            before = len(row)
            row.extend(tokens[start - low : end - low])
            index.add(row, before)

    def compact(self, batch: SequenceBatch, source: torch.Tensor) -> None:
        """Nothing to move: the rows' tokens are kept here, and ``batch.history`` is left alone by compaction."""
