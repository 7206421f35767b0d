"""Prompt lookup decoding (Saxena 2023; `prompt_lookup_num_tokens` in transformers): no draft model at all.

The drafter looks for the most recent earlier occurrence of the sequence's last ``n`` tokens (``n`` from
``max_ngram`` down to ``min_ngram``) in the prompt and the text generated so far, and proposes the tokens that
followed it. It pays off where the output repeats spans of the input: code edits, summaries, retrieval answers.
Where the copied span runs into the end of the sequence (the text is repeating itself with period ``d``, the distance
between the occurrence's continuation and the end), the proposal continues with the same period, so a loop of a few
tokens is proposed at full length instead of one token at a time.

The search is a handful of tensor operations over the whole batch on the sequence's own device (no loop over tokens
on the host); the one number read back is the width of the proposal.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from specdec.config import GenerationConfig
from specdec.drafters.base import DraftProposal, empty_proposal
from specdec.errors import ConfigError
from specdec.sequence import SequenceBatch


@dataclass(frozen=True)
class NgramOptions:
    max_ngram: int = 3  # longest suffix of the sequence to look up
    min_ngram: int = 1  # shortest one tried when no longer one occurs earlier

    def __post_init__(self) -> None:
        if not 1 <= self.min_ngram <= self.max_ngram:
            raise ConfigError(
                f"ngram drafter: need 1 <= min_ngram <= max_ngram, got min_ngram={self.min_ngram}, "
                f"max_ngram={self.max_ngram}"
            )
        if self.max_ngram > 64:
            raise ConfigError(f"ngram drafter: max_ngram={self.max_ngram} is more than 64 tokens; use a shorter one")


def lookup_continuations(
    tokens: torch.Tensor, lengths: int | list[int], pad_lengths: torch.Tensor, options: NgramOptions, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row, the ``k`` tokens that followed the most recent earlier occurrence of its longest matching
    suffix, and how many of them exist.

    tokens: [B, >= max(lengths)] (row b's committed sequence is [b, :lengths[b]], left-padded by pad_lengths [B]);
    lengths: one length for every row, or one per row (host).
    Returns (continuations [B, k] int64, available [B] int64: k where an n-gram occurs earlier, else 0).
    """
    batch = tokens.shape[0]
    device = tokens.device
    row_lengths = [lengths] * batch if isinstance(lengths, int) else lengths
    length = max(row_lengths)
    ends = torch.tensor(row_lengths, dtype=torch.long).to(device, non_blocking=True)  # [B]
    context = tokens[:, :length]
    real_lengths = ends - pad_lengths  # [B]
    start = torch.full((batch,), -1, dtype=torch.long, device=device)  # first continuation column, -1: none yet
    for n in range(options.max_ngram, options.min_ngram - 1, -1):
        if length - n < 1:
            continue  # no room for an occurrence that has a continuation
        pattern = context.gather(1, (ends[:, None] - n + torch.arange(n, device=device)).clamp_min(0))  # [B, n]
        windows = context[:, : length - 1].unfold(1, n, 1)  # [B, length - n, n]: occurrences ending before the end
        hit = (windows == pattern[:, None, :]).all(dim=-1)  # [B, length - n]
        positions = torch.arange(length - n, device=device)
        hit &= positions[None, :] >= pad_lengths[:, None]  # never inside the left padding
        hit &= positions[None, :] < (ends - n)[:, None]  # before the row's own suffix
        hit &= (real_lengths >= n)[:, None]  # a row shorter than n has no n-gram of its own
        last = torch.where(hit, positions[None, :], -1).max(dim=-1).values  # [B]: most recent occurrence
        start = torch.where((start < 0) & (last >= 0), last + n, start)
    offsets = torch.arange(k, device=device)
    first = start.clamp_min(0)[:, None]  # [B, 1]
    period = (ends[:, None] - first).clamp_min(1)  # [B, 1]: the copy repeats what lies between its start and the end
    columns = first + offsets[None, :] % period  # [B, k]
    continuations = context.gather(1, columns)
    available = torch.where(start >= 0, k, 0)
    return continuations, available


class NgramDrafter:
    """Proposes what followed the last earlier occurrence of the sequence's suffix; no model, no forwards."""

    method = "ngram"
    forwards = 0
    per_row = True  # each row proposes its own continuation (or none): proposal.widths

    def __init__(self, options: NgramOptions) -> None:
        self.options = options
        self.name = f"ngram(n={options.max_ngram}..{options.min_ngram})"

    def start(self, batch: SequenceBatch) -> None:
        pass

    def propose(
        self, batch: SequenceBatch, k: int, generation: GenerationConfig, generator: torch.Generator | None
    ) -> DraftProposal:
        continuations, available = lookup_continuations(
            batch.history, batch.lengths, batch.pad_lengths, self.options, k
        )
        width = int(available.max())  # the one read-back: a row without a match drafts nothing (width 0)
        if width == 0:
            return empty_proposal(batch)
        return DraftProposal(tokens=continuations[:, :width], probs=None, widths=available)

    def observe(self, batch: SequenceBatch, num_accepted: int) -> None:
        pass

    def compact(self, batch: SequenceBatch, source: torch.Tensor) -> None:
        """Nothing to move: the drafter reads ``batch.history``, which compaction leaves alone."""
