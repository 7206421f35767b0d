"""Turning logits into the sampling distribution, and drawing from it.

The same :func:`logits_to_probs` is applied to the target's and to the draft's logits, so that speculative sampling
compares the two distributions the user actually asked for (temperature, top-k and top-p applied identically).
All functions are pure: randomness comes in through an explicit ``torch.Generator``.
"""

from __future__ import annotations

import torch

from specdec.config import GenerationConfig

FLOAT32_MAX = torch.finfo(torch.float32).max


def logits_to_probs(logits: torch.Tensor, config: GenerationConfig) -> torch.Tensor:
    """Probabilities after temperature, top-k and top-p, in float32.

    logits: [..., V]. Returns [..., V], each row finite and summing to 1, for any temperature > 0: the best token's
    score is subtracted before dividing, so every score is <= 0 and the best is exactly 0. A temperature so small
    that the other scores underflow to -inf gives the limit T -> 0, the uniform distribution over the argmax (one-hot
    without ties), never inf - inf = nan. Must not be called with temperature 0 (greedy decoding has no
    distribution; use ``argmax``).
    """
    if config.greedy:
        raise ValueError("logits_to_probs needs temperature > 0; greedy decoding uses argmax")
    logits = logits.float()
    # Above float32's largest value the divisor would round to inf, and a masked -inf logit / inf is nan.
    temperature = min(config.temperature, FLOAT32_MAX)
    scores = (logits - logits.amax(dim=-1, keepdim=True)) / temperature  # [..., V], <= 0, the best at 0
    vocab_size = scores.shape[-1]
    if config.top_k and config.top_k < vocab_size:
        kth_best = torch.topk(scores, config.top_k, dim=-1).values[..., -1:]  # [..., 1]
        scores = scores.masked_fill(scores < kth_best, float("-inf"))
    if config.top_p is not None and config.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, dim=-1, descending=True)  # [..., V]
        sorted_probs = torch.softmax(sorted_scores, dim=-1)
        # mass strictly before each token; a token is kept while that mass is below top_p (so the first always is)
        mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        drop_sorted = mass_before >= config.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return torch.softmax(scores, dim=-1)


def sample(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row. probs: [..., V] -> [...] (int64)."""
    flat = probs.reshape(-1, probs.shape[-1])  # [N, V]
    tokens = torch.multinomial(flat, num_samples=1, generator=generator)  # [N, 1]
    return tokens.reshape(probs.shape[:-1])


def next_token(logits: torch.Tensor, config: GenerationConfig, generator: torch.Generator | None) -> torch.Tensor:
    """The target's own choice from logits [..., V] -> [...]: argmax if greedy, else a sample."""
    if config.greedy:
        return logits.argmax(dim=-1)
    return sample(logits_to_probs(logits, config), generator)
