"""Training loops of the recipe: next-token pretraining of the target and distillation of the draft.

Both loops sample random windows of ``seq_len + 1`` tokens from one flat token stream, use AdamW with a linear
warm-up and cosine decay, clip gradients at 1.0, and run under bf16 autocast on CUDA (float32 on the CPU).
Distillation minimises ``KL(target || draft)`` on the target's soft distribution plus ``ce_weight`` times the
cross-entropy against the target's greedy token, the quantity that speculative acceptance rewards. Every other
distillation batch comes from the target's own greedy continuations of training prefixes (``greedy_rows``): those
are the sequences a draft meets when it speculates for the greedy target.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache, PreTrainedModel

from specdec.kv_cache import cache_keyword


@dataclass(frozen=True)
class LoopConfig:
    steps: int
    batch_size: int
    seq_len: int
    lr: float
    warmup: int
    weight_decay: float = 0.1
    log_every: int = 100
    eval_every: int = 500  # held-out probe interval (steps), when a probe is given


@dataclass(frozen=True)
class LoopResult:
    steps: int
    final_loss: float  # mean loss of the last `log_every` steps
    seconds: float
    tokens_seen: int
    log: tuple[tuple[int, float], ...]  # (step, mean loss since the previous entry)
    probes: tuple[tuple[int, float], ...] = ()  # (step, probe value), e.g. held-out perplexity


def train_target(
    model: PreTrainedModel,
    tokens: torch.Tensor,  # [N] int64 token stream on the training device
    config: LoopConfig,
    generator: torch.Generator,
    probe: Callable[[], float] | None = None,
    log: Callable[[str], None] = print,
) -> LoopResult:
    """Next-token cross-entropy pretraining."""

    def loss_fn(inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = model(input_ids=inputs).logits  # [B, S, V]
        return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten())

    def batches(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return sample_windows(tokens, config.batch_size, config.seq_len, generator)

    return _run_loop("target", model, config, batches, loss_fn, probe, log, "held-out perplexity")


def distil_draft(
    draft: PreTrainedModel,
    teacher: PreTrainedModel,
    tokens: torch.Tensor,  # [N]
    greedy: torch.Tensor | None,  # [M, S+1] the teacher's greedy rows (see greedy_rows), or None
    config: LoopConfig,
    generator: torch.Generator,
    ce_weight: float = 0.5,
    greedy_fraction: float = 0.5,
    probe: Callable[[], float] | None = None,
    log: Callable[[str], None] = print,
) -> LoopResult:
    """Distil ``teacher`` into ``draft``: a ``greedy_fraction`` of the batches from the teacher's greedy rows (as
    many tokens per batch as a corpus batch), the rest from corpus windows."""
    teacher.eval()
    rows_per_batch = max(config.batch_size * config.seq_len // greedy.shape[1], 1) if greedy is not None else 0

    def batches(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if greedy is None or int(step * greedy_fraction) == int((step - 1) * greedy_fraction):
            return sample_windows(tokens, config.batch_size, config.seq_len, generator)
        pick = torch.randint(0, greedy.shape[0], (rows_per_batch,), generator=generator)
        rows = greedy[pick.to(greedy.device)]  # [b, L]
        return rows[:, :-1], rows[:, 1:]  # [b, L-1], [b, L-1]

    def loss_fn(inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = teacher(input_ids=inputs).logits.float()  # [B, S, V]
            teacher_logprobs = teacher_logits.log_softmax(-1).flatten(0, 1)  # [B*S, V]
            teacher_greedy = teacher_logits.argmax(-1).flatten()  # [B*S]
        draft_logprobs = draft(input_ids=inputs).logits.float().log_softmax(-1).flatten(0, 1)  # [B*S, V]
        kl = F.kl_div(draft_logprobs, teacher_logprobs, log_target=True, reduction="batchmean")
        return kl + ce_weight * F.nll_loss(draft_logprobs, teacher_greedy)

    return _run_loop("draft", draft, config, batches, loss_fn, probe, log, "held-out top-1 agreement")


@torch.no_grad()
def greedy_rows(
    model: PreTrainedModel,
    tokens: torch.Tensor,  # [N]
    rows: int,
    prompt_len: int,
    length: int,
    generator: torch.Generator,
    batch_size: int = 512,
) -> torch.Tensor:
    """``rows`` sequences of ``length`` tokens: a random training prefix of ``prompt_len`` and the model's greedy
    continuation of it -> [rows, length]."""
    model.eval()
    out = []
    for start in range(0, rows, batch_size):
        prompts, _ = sample_windows(tokens, min(batch_size, rows - start), prompt_len, generator)  # [b, P]
        cache_kwargs = {cache_keyword(model): DynamicCache(config=model.config)}
        with _autocast(tokens.device):
            logits = model(input_ids=prompts, use_cache=True, **cache_kwargs).logits  # [b, P, V]
            ids = [prompts]
            for _ in range(length - prompt_len):
                ids.append(logits[:, -1].argmax(-1, keepdim=True))  # [b, 1]
                logits = model(input_ids=ids[-1], use_cache=True, **cache_kwargs).logits  # [b, 1, V]
        out.append(torch.cat(ids, dim=1))
    return torch.cat(out)


@torch.no_grad()
def perplexity(model: PreTrainedModel, tokens: torch.Tensor, seq_len: int, max_windows: int = 256) -> float:
    """exp(mean next-token loss) over non-overlapping windows of ``tokens`` ([N])."""
    model.eval()
    n_windows = min((tokens.numel() - 1) // seq_len, max_windows)
    total, count = 0.0, 0
    for start in range(0, n_windows * seq_len, seq_len * 8):
        rows = [
            tokens[s : s + seq_len + 1] for s in range(start, min(start + seq_len * 8, n_windows * seq_len), seq_len)
        ]
        batch = torch.stack(rows)  # [b, S+1]
        with _autocast(batch.device):
            logits = model(input_ids=batch[:, :-1]).logits  # [b, S, V]
        loss = F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten(), reduction="sum")
        total += loss.item()
        count += batch[:, 1:].numel()
    return math.exp(total / max(count, 1))


def sample_windows(
    tokens: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows: inputs [B, S] and next-token labels [B, S]."""
    starts = torch.randint(0, tokens.numel() - seq_len - 1, (batch_size,), generator=generator)
    index = starts[:, None] + torch.arange(seq_len + 1)[None, :]  # [B, S+1]
    window = tokens[index.to(tokens.device)]
    return window[:, :-1], window[:, 1:]


def _run_loop(
    name: str,
    model: PreTrainedModel,
    config: LoopConfig,
    batches: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    probe: Callable[[], float] | None,
    log: Callable[[str], None],
    probe_name: str = "probe",
) -> LoopResult:
    device = next(model.parameters()).device
    model.train()
    optimizer = torch.optim.AdamW(
        _param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.95), fused=device.type == "cuda"
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine_with_warmup(config.warmup, config.steps))
    history: list[tuple[int, float]] = []
    probes: list[tuple[int, float]] = []
    running = torch.zeros((), device=device)
    since = 0
    start = time.perf_counter()
    for step in range(1, config.steps + 1):
        inputs, labels = batches(step)
        with _autocast(device):
            loss = loss_fn(inputs, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        running += loss.detach()
        since += 1
        if step % config.log_every == 0 or step == config.steps:
            mean = running.item() / since
            history.append((step, round(mean, 4)))
            elapsed = time.perf_counter() - start
            log(f"[{name}] step {step}/{config.steps} loss {mean:.4f} ({step / elapsed:.2f} steps/s)")
            running.zero_()
            since = 0
        if probe is not None and (step % config.eval_every == 0 or step == config.steps):
            value = probe()
            model.train()
            probes.append((step, round(value, 3)))
            log(f"[{name}] step {step} {probe_name} {value:.4f}")
    model.eval()
    return LoopResult(
        steps=config.steps,
        final_loss=history[-1][1],
        seconds=round(time.perf_counter() - start, 2),
        tokens_seen=config.steps * config.batch_size * config.seq_len,
        log=tuple(history),
        probes=tuple(probes),
    )


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only; norms and (tied) embeddings keep their scale."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (decay if param.ndim >= 2 and "embed" not in name else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _cosine_with_warmup(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(total - warmup, 1)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
