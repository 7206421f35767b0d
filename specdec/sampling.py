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
    distribution; use ``argmax``). Top-p keeps the most probable tokens until their mass reaches ``top_p``, and
    every token that ties with the last one kept.

    Computed by the device's kernel set (``specdec.kernels``): on a CUDA GPU without a sort of the vocabulary.
    """
    if config.greedy:
        raise ValueError("logits_to_probs needs temperature > 0; greedy decoding uses argmax")
    from specdec.kernels import kernels_for  # here: the kernel registry imports this module's importers

    # Above float32's largest value the divisor would round to inf, and a masked -inf logit / inf is nan.
    temperature = min(config.temperature, FLOAT32_MAX)
    return kernels_for(logits.device).sampling_probs(logits, temperature, config.top_k, config.top_p)


def race(
    logits: torch.Tensor, config: GenerationConfig, exponentials: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``q = logits_to_probs(logits, config)`` [..., V] and one token from it [...] (int64) by the exponential race
    ``argmax_v q(v) / E(v)`` on ``exponentials`` [..., V] of Exp(1), which is v with probability q(v): a sampled draft
    chain's draw, on a CUDA GPU in one kernel for a small vocabulary."""
    if config.greedy:
        raise ValueError("race needs temperature > 0; greedy decoding uses argmax")
    from specdec.kernels import kernels_for

    temperature = min(config.temperature, FLOAT32_MAX)
    return kernels_for(logits.device).sampling_race(logits, temperature, config.top_k, config.top_p, exponentials)


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
