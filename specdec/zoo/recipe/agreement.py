"""Greedy agreement between a target and a draft, measured without the engine.

Under greedy decoding the output of speculative decoding is the target's greedy continuation, and a drafted token is
accepted exactly when the draft's argmax, given the prefix accepted so far, equals the target's token there. So
teacher-forcing the draft on the target's own greedy continuation gives one agreement indicator per generated
position, and walking those indicators K at a time reproduces the acceptance of greedy speculative decoding
(up to floating-point ties between batched and incremental forwards). The engine measures the same thing for real;
these functions let the zoo calibrate and test its pairs with nothing but the models.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel

from specdec.kv_cache import cache_keyword


@dataclass(frozen=True)
class Acceptance:
    agreement: float  # fraction of generated positions where draft argmax == target token
    acceptance_rate: float  # accepted drafted tokens / proposed drafted tokens, at `k`
    tokens_per_target_forward: float  # generated tokens / verification forwards, at `k`
    positions: int
    k: int


@torch.no_grad()
def greedy_continuation(model: PreTrainedModel, prompt_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """The model's greedy continuation: prompt_ids [1, P] -> [1, P + max_new_tokens] (no EOS stop)."""
    cache_kwargs = {cache_keyword(model): DynamicCache(config=model.config)}
    logits = model(input_ids=prompt_ids, use_cache=True, **cache_kwargs).logits  # [1, P, V]
    ids = [prompt_ids]
    for _ in range(max_new_tokens):
        next_id = logits[:, -1].argmax(-1, keepdim=True)  # [1, 1]
        ids.append(next_id)
        logits = model(input_ids=next_id, use_cache=True, **cache_kwargs).logits  # [1, 1, V]
    return torch.cat(ids, dim=1)


@torch.no_grad()
def agreement_indicators(draft: PreTrainedModel, ids: torch.Tensor, start: int) -> torch.Tensor:
    """Whether the draft's argmax predicts ``ids[0, j]`` from ``ids[0, :j]`` for j in [start, T): bool [T - start]."""
    logits = draft(input_ids=ids).logits  # [1, T, V]
    predicted = logits[0, start - 1 : -1].argmax(-1)  # [T - start]
    return predicted == ids[0, start:]


def simulate_acceptance(indicators: list[bool], k: int) -> tuple[int, int, int]:
    """Walk greedy speculative decoding over agreement indicators: (accepted, proposed, target forwards).

    Each round drafts up to ``k`` tokens, accepts the agreeing prefix, and the verification forward adds one token of
    its own (the correction, or the bonus token when all ``k`` were accepted).
    """
    accepted = proposed = forwards = 0
    position, total = 0, len(indicators)
    while position < total:
        window = indicators[position : position + k]
        run = next((i for i, agree in enumerate(window) if not agree), len(window))
        accepted += run
        proposed += len(window)
        forwards += 1
        position += run + 1
    return accepted, proposed, forwards


def continuation_indicators(
    target: PreTrainedModel,
    draft: PreTrainedModel,
    prompts: list[torch.Tensor],  # each [1, P]
    max_new_tokens: int,
) -> list[list[bool]]:
    """Per prompt, the draft's agreement indicators over the target's greedy continuation."""
    out = []
    for prompt in prompts:
        ids = greedy_continuation(target, prompt, max_new_tokens)  # [1, P + n]
        out.append(agreement_indicators(draft, ids, prompt.shape[1]).tolist())
    return out


def summarize(indicators: list[list[bool]], k: int) -> Acceptance:
    """Agreement and simulated greedy acceptance at ``k`` over per-prompt indicators."""
    accepted = proposed = forwards = 0
    for row in indicators:
        a, p, f = simulate_acceptance(row, k)
        accepted, proposed, forwards = accepted + a, proposed + p, forwards + f
    positions = sum(len(row) for row in indicators)
    return Acceptance(
        agreement=sum(sum(row) for row in indicators) / max(positions, 1),
        acceptance_rate=accepted / max(proposed, 1),
        tokens_per_target_forward=positions / max(forwards, 1),
        positions=positions,
        k=k,
    )


def measure_acceptance(
    target: PreTrainedModel,
    draft: PreTrainedModel,
    prompts: list[torch.Tensor],  # each [1, P]
    max_new_tokens: int,
    k: int,
) -> Acceptance:
    """Agreement and simulated greedy acceptance at ``k`` over the target's continuations of ``prompts``."""
    return summarize(continuation_indicators(target, draft, prompts, max_new_tokens), k)
