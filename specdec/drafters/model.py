"""Drafting with a smaller causal LM that shares the target's vocabulary."""

from __future__ import annotations

import torch

from specdec.config import GenerationConfig
from specdec.decoder import Decoder
from specdec.drafters.base import DraftProposal
from specdec.sampling import logits_to_probs, sample
from specdec.sequence import SequenceBatch


class ModelDrafter:
    """Runs the draft model autoregressively for K tokens, over its own rollback-able KV cache.

    The draft cache holds every committed position except the last. After a step that accepted all K drafts, it
    also lacks ``d_K`` (which the draft never read), so the next proposal starts by feeding the missing tokens:
    one or two of them, read from the committed tokens.
    """

    def __init__(self, decoder: Decoder) -> None:
        self.decoder = decoder
        self.name = decoder.name

    @property
    def forwards(self) -> int:
        return self.decoder.forwards

    def start(self, batch: SequenceBatch) -> None:
        self.decoder.prepare(batch.pad_lengths, batch.attention_mask, batch.max_length)
        end = batch.length - 1  # all but the last prompt token, which the first proposal feeds
        if end > 0:
            self.decoder.forward(batch.tokens[:, :end], last_only=True)

    def propose(
        self, batch: SequenceBatch, k: int, generation: GenerationConfig, generator: torch.Generator | None
    ) -> DraftProposal:
        unread = batch.tokens[:, self.decoder.cache_length : batch.length]  # [B, 1 or 2] committed, not yet read
        if generation.greedy:
            return DraftProposal(tokens=self.decoder.greedy_chain(unread, k), probs=None)
        logits = self.decoder.forward(unread, last_only=True)  # [B, 1, V]
        tokens: list[torch.Tensor] = []
        probs: list[torch.Tensor] = []
        for i in range(k):
            q = logits_to_probs(logits[:, -1], generation)  # [B, V]
            token = sample(q, generator)
            probs.append(q)
            tokens.append(token)
            if i + 1 < k:
                logits = self.decoder.forward(token[:, None], last_only=True)  # [B, 1, V]
        return DraftProposal(
            tokens=torch.stack(tokens, dim=1),  # [B, K]
            probs=torch.stack(probs, dim=1),  # [B, K, V]
        )

    def observe(self, batch: SequenceBatch, num_accepted: int) -> None:
        self.decoder.rollback(min(self.decoder.cache_length, batch.length - 1))
