"""Self-distillation of draft heads for a trained target: data, losses, loops and held-out agreement.

Data: the target's own continuations (greedy, and sampled at a temperature) of training prefixes, with the
target's teacher-forced features ``f`` (its final hidden state after the final norm) and its top-1 choices ``c``
(``c_t = argmax p(. | x_{<=t})``, the token the greedy target would emit after position ``t``).

- Medusa head ``i`` at position ``t`` learns token ``x_{t+i+2}`` of the row (cross-entropy), on the continuation.
- The EAGLE head is trained unrolled over ``depth`` drafting steps (EAGLE-3's "training-time test"): pass 1 reads
  the target's ``f_t`` with token ``x_{t+1}``; pass ``k`` reads the head's own pass ``k-1`` output at ``t - 1``,
  attending to pass-1 entries up to ``t - k + 1`` and to its own earlier passes along the diagonal, exactly what it
  sees when it drafts ``k`` tokens past the last committed one. Every pass at position ``t`` is scored against the
  same labels: cross-entropy against the target's choice ``c_{t+1}`` plus ``feature_weight`` times the smooth-L1
  distance to the target's feature ``f_{t+1}`` (EAGLE's regression loss).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache, PreTrainedModel

from specdec.heads.eagle import EagleHead
from specdec.heads.medusa import MedusaHeads
from specdec.heads.target import target_features
from specdec.kv_cache import cache_keyword
from specdec.zoo.recipe.trainer import sample_windows


@dataclass(frozen=True)
class HeadData:
    tokens: torch.Tensor  # [N, L] int64 rows: prefix then the target's continuation
    features: torch.Tensor  # [N, L, D] the target's final normed hidden state at every position
    choices: torch.Tensor  # [N, L] int64 the target's top-1 next token after every position
    prompt_len: int

    def to(self, device: torch.device) -> HeadData:
        return HeadData(self.tokens.to(device), self.features.to(device), self.choices.to(device), self.prompt_len)


@torch.no_grad()
def continuation_rows(
    model: PreTrainedModel,
    tokens: torch.Tensor,  # [T] token stream
    rows: int,
    prompt_len: int,
    length: int,
    generator: torch.Generator,
    temperature: float = 0.0,  # 0: greedy
    batch_size: int = 128,
) -> torch.Tensor:
    """``rows`` sequences [rows, length]: a random prefix of ``prompt_len`` tokens and the model's continuation."""
    model.eval()
    out = []
    for start in range(0, rows, batch_size):
        prompts, _ = sample_windows(tokens, min(batch_size, rows - start), prompt_len, generator)  # [b, P]
        cache = {cache_keyword(model): DynamicCache(config=model.config)}
        logits = model(input_ids=prompts, use_cache=True, **cache).logits[:, -1]  # [b, V]
        ids = [prompts]
        for _ in range(length - prompt_len):
            if temperature > 0:
                probs = torch.softmax(logits.float() / temperature, dim=-1)
                nxt = torch.multinomial(probs.cpu(), 1, generator=generator).to(probs.device)  # [b, 1]
            else:
                nxt = logits.argmax(-1, keepdim=True)
            ids.append(nxt)
            logits = model(input_ids=nxt, use_cache=True, **cache).logits[:, -1]
        out.append(torch.cat(ids, dim=1))
    return torch.cat(out)


@torch.no_grad()
def collect(model: PreTrainedModel, rows: torch.Tensor, prompt_len: int, batch_size: int = 64) -> HeadData:
    """Teacher-forced features and choices of ``model`` on ``rows`` ([N, L])."""
    features, choices = [], []
    for batch in rows.split(batch_size):
        f, logits = target_features(model, batch)
        features.append(f.float())
        choices.append(logits.argmax(-1))
    return HeadData(rows, torch.cat(features), torch.cat(choices), prompt_len)


def scored_positions(length: int, count: int | None) -> torch.Tensor:
    """``count`` random positions of ``length`` (all when ``count`` is None or larger), sorted -> [n] int64.

    Scoring the vocabulary at every position dominates the cost on a CPU; a random subset per step keeps the
    gradient unbiased."""
    if count is None or count >= length:
        return torch.arange(length)
    return torch.sort(torch.randperm(length)[:count]).values


def medusa_loss(
    heads: MedusaHeads, data: HeadData, index: torch.Tensor, positions: int | None = None
) -> tuple[torch.Tensor, list[float]]:
    """Mean cross-entropy over heads of rows ``index`` (at ``positions`` random positions per row); also each
    head's top-1 accuracy."""
    tokens, features = data.tokens[index], data.features[index]  # [b, L], [b, L, D]
    start = data.prompt_len - 1  # roots inside the continuation: every label is the target's
    span = tokens.shape[1] - len(heads.heads) - 1 - start
    at = (start + scored_positions(span, positions)).to(tokens.device)  # [n]
    logits = heads(features[:, at])  # [M, b, n, V]
    losses, accuracy = [], []
    for i in range(logits.shape[0]):
        labels = tokens[:, at + i + 2]  # [b, n]
        losses.append(F.cross_entropy(logits[i].flatten(0, 1).float(), labels.flatten()))
        accuracy.append((logits[i].argmax(-1) == labels).float().mean().item())
    return torch.stack(losses).mean(), accuracy


def eagle_passes(head: EagleHead, tokens: torch.Tensor, features: torch.Tensor, depth: int) -> list[torch.Tensor]:
    """Run the head unrolled over ``depth`` drafting steps -> ``depth`` outputs [b, S, D].

    tokens [b, S] is ``x_{t+1}``, features [b, S, D] the target's ``f_t``; entry ``t`` of pass ``k`` is the state
    the head would reach drafting ``k`` tokens after committed position ``t - k + 1``.
    """
    b, s = tokens.shape
    device = tokens.device
    positions = torch.arange(s, device=device).expand(b, s)  # [b, S]
    q = torch.arange(s, device=device)[:, None]  # [S, 1] query position
    p = torch.arange(s, device=device)[None, :]  # [1, S] key position
    outputs: list[torch.Tensor] = []
    keys: list[torch.Tensor] = []
    values: list[torch.Tensor] = []
    hidden_in = features
    for k in range(1, depth + 1):
        blocks = [p <= q - (k - 1)]  # pass-1 entries: real features up to the draft's root
        blocks += [p == q - (k - i) for i in range(2, k + 1)]  # passes 2..k: the draft's own chain, diagonal
        mask = torch.cat(blocks, dim=1)  # [S, k * S]
        past = (torch.cat(keys, 2), torch.cat(values, 2)) if keys else None
        out, (key, value) = head(tokens, hidden_in, positions, past, mask)
        outputs.append(out)
        keys.append(key)
        values.append(value)
        hidden_in = torch.cat([out[:, :1], out[:, :-1]], dim=1)  # entry t of the next pass reads this pass at t - 1
    return outputs


def eagle_loss(
    head: EagleHead,
    data: HeadData,
    index: torch.Tensor,
    depth: int,
    feature_weight: float,
    positions: int | None = None,
) -> tuple[torch.Tensor, list[float]]:
    """Unrolled EAGLE loss on rows ``index`` (cross-entropy at ``positions`` random positions per row, feature
    regression at all); also each depth's top-1 agreement with the target's choice."""
    tokens, features, choices = data.tokens[index], data.features[index], data.choices[index]
    inputs, feats = tokens[:, 1:], features[:, :-1]  # x_{t+1}, f_t: [b, S] with S = L - 1
    next_features, labels = features[:, 1:], choices[:, 1:]  # f_{t+1}, c_{t+1}
    total = torch.zeros((), device=tokens.device)
    accuracy = []
    for k, out in enumerate(eagle_passes(head, inputs, feats, depth), start=1):
        valid = slice(k - 1, None)  # entries whose draft root exists
        at = (k - 1 + scored_positions(out.shape[1] - (k - 1), positions)).to(out.device)  # [n]
        logits = head.logits(out[:, at])  # [b, n, V]
        ce = F.cross_entropy(logits.flatten(0, 1).float(), labels[:, at].flatten())
        regression = F.smooth_l1_loss(out[:, valid].float(), next_features[:, valid])
        total = total + ce + feature_weight * regression
        accuracy.append((logits.argmax(-1) == labels[:, at]).float().mean().item())
    return total / depth, accuracy


@dataclass(frozen=True)
class HeadLoop:
    steps: int
    batch_rows: int
    lr: float
    warmup: int = 50
    log_every: int = 50


def train_loop(
    name: str,
    module: torch.nn.Module,
    data: HeadData,
    loop: HeadLoop,
    loss_fn: Callable[[torch.Tensor], tuple[torch.Tensor, list[float]]],
    generator: torch.Generator,
    log: Callable[[str], None],
) -> dict:
    """AdamW with warm-up and cosine decay over random row batches; returns a record of the run."""
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=loop.lr, betas=(0.9, 0.95), weight_decay=0.0)

    def factor(step: int) -> float:
        if step < loop.warmup:
            return (step + 1) / loop.warmup
        progress = (step - loop.warmup) / max(loop.steps - loop.warmup, 1)
        return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    module.train()
    history = []
    start = time.perf_counter()
    running, accs, since = 0.0, None, 0
    for step in range(1, loop.steps + 1):
        index = torch.randint(0, data.tokens.shape[0], (loop.batch_rows,), generator=generator)
        loss, accuracy = loss_fn(index.to(data.tokens.device))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        running += loss.item()
        accs = accuracy if accs is None else [a + b for a, b in zip(accs, accuracy, strict=True)]
        since += 1
        if step % loop.log_every == 0 or step == loop.steps:
            mean_acc = [round(a / since, 4) for a in accs or []]
            history.append({"step": step, "loss": round(running / since, 4), "train_top1": mean_acc})
            rate = step / (time.perf_counter() - start)
            log(f"[{name}] step {step}/{loop.steps} loss {running / since:.4f} top1 {mean_acc} ({rate:.2f} steps/s)")
            running, accs, since = 0.0, None, 0
    module.eval()
    return {"steps": loop.steps, "seconds": round(time.perf_counter() - start, 1), "log": history}


@torch.no_grad()
def medusa_agreement(heads: MedusaHeads, data: HeadData) -> dict:
    """Held-out, teacher-forced: per head, how often its top-1 is the row's token (the target's greedy choice on
    greedy rows); per chain length k, how often heads 0..k-1 are all right at one position (a chain of k + 1
    tokens per target forward, counting the target's own)."""
    correct = []
    for batch in range(0, data.tokens.shape[0], 32):
        tokens, features = data.tokens[batch : batch + 32], data.features[batch : batch + 32]
        logits = heads(features)  # [M, b, L, V]
        span = tokens.shape[1] - logits.shape[0] - 1  # positions where every head has a label
        start = data.prompt_len - 1
        hits = [
            logits[i, :, start:span].argmax(-1) == tokens[:, start + i + 2 : span + i + 2]
            for i in range(logits.shape[0])
        ]
        correct.append(torch.stack(hits))  # [M, b, span - start]
    all_hits = torch.cat(correct, dim=1).flatten(1)  # [M, n]
    chain = all_hits.cumprod(0)  # [M, n] all heads up to i right
    return {
        "per_head_top1": [round(v, 4) for v in all_hits.float().mean(1).tolist()],
        "chain_accept_at_least": [round(v, 4) for v in chain.float().mean(1).tolist()],
        "mean_accepted_chain": round(chain.float().sum(0).mean().item(), 4),
        "positions": int(all_hits.shape[1]),
    }


@torch.no_grad()
def eagle_agreement(head: EagleHead, data: HeadData, depth: int) -> dict:
    """Held-out, teacher-forced per depth (EAGLE's own chain, as in :func:`eagle_passes`): how often depth k's
    top-1 is the target's choice given correct earlier tokens; and how often a chain of k drafted tokens from one
    root is entirely right."""
    per_depth: list[list[torch.Tensor]] = [[] for _ in range(depth)]
    chains = []
    for batch in range(0, data.tokens.shape[0], 32):
        tokens, features, choices = (x[batch : batch + 32] for x in (data.tokens, data.features, data.choices))
        outs = eagle_passes(head, tokens[:, 1:], features[:, :-1], depth)
        labels = choices[:, 1:]  # [b, S]
        start = data.prompt_len - 1  # roots inside the continuation
        s = labels.shape[1]
        hits = [(head.logits(out).argmax(-1) == labels) for out in outs]  # depth x [b, S]
        for k in range(depth):
            per_depth[k].append(hits[k][:, start + k :])
        roots = range(start, s - depth + 1)
        chain = torch.stack([torch.stack([hits[k][:, r + k] for k in range(depth)]) for r in roots], -1)  # [d, b, R]
        chains.append(chain.cumprod(0).flatten(1))
    chain_all = torch.cat(chains, dim=1)  # [d, n]
    return {
        "per_depth_top1": [round(torch.cat(h).float().mean().item(), 4) for h in per_depth],
        "chain_accept_at_least": [round(v, 4) for v in chain_all.float().mean(1).tolist()],
        "mean_accepted_chain": round(chain_all.float().sum(0).mean().item(), 4),
        "positions": int(chain_all.shape[1]),
    }


@torch.no_grad()
def raw_text_agreement(
    head: EagleHead, model: PreTrainedModel, tokens: torch.Tensor, seq_len: int = 256, windows: int = 16
) -> float:
    """EAGLE depth 1 on held-out code itself (not the target's continuations): agreement with the target's
    choice, comparable with the draft model's teacher-forced agreement on held-out code."""
    n = min(tokens.numel() // seq_len, windows)
    rows = tokens[: n * seq_len].view(n, seq_len)
    agree, total = 0.0, 0
    for batch in rows.split(8):
        features, logits = target_features(model, batch)
        choices = logits.argmax(-1)
        out, _ = head(
            batch[:, 1:], features[:, :-1], torch.arange(seq_len - 1, device=batch.device).expand(batch.shape[0], -1)
        )
        agree += (head.logits(out).argmax(-1) == choices[:, 1:]).sum().item()
        total += choices[:, 1:].numel()
    return agree / max(total, 1)
