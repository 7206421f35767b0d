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

    The draft cache holds committed positions only, and never the last one; each proposal starts by feeding the
    committed tokens it lacks: the whole prompt at the first proposal, then one token (or two, after a step that
    accepted all K drafts, since the draft never read ``d_K``).
    """

    def __init__(self, decoder: Decoder, name: str | None = None, method: str = "model") -> None:
        self.decoder = decoder
        self.name = name or decoder.name
        self.method = method

    @property
    def forwards(self) -> int:
        return self.decoder.forwards

    def start(self, batch: SequenceBatch) -> None:
        """Empty the draft cache; the first proposal reads the prompt (so a run that never drafts never runs it)."""
        self.decoder.prepare(batch.pad_lengths, batch.attention_mask, batch.max_length)

    def propose(
        self, batch: SequenceBatch, k: int, generation: GenerationConfig, generator: torch.Generator | None
    ) -> DraftProposal:
        unread = batch.tokens[:, self.decoder.cache_length : batch.length]  # [B, S] committed, not yet read
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
