"""The sampling distribution (temperature, top-p) in Triton, without sorting the vocabulary.

``sampling_probs`` computes what ``reference.sampling_probs`` computes. With ``e = exp((logit - max) / T)`` (the best
token's ``e`` is exactly 1, every ``e`` in [0, 1]), top-p keeps the tokens whose ``e`` is at least the threshold

    tau = the largest e such that M(tau) >= top_p * S,   M(t) = the sum of the e >= t,   S = the sum of every e

(sorted descending, tau is the token at which the cumulative mass first reaches ``top_p * S``; every token tying
with it is kept, as in the reference), and the kept ``e`` are divided by their sum ``M(tau)``.

Instead of a sort (55 us for one row of 128k tokens on an H200, plus the cumulative sum and the reductions around
it), tau is found digit by digit: the bits of a non-negative float32 order like its value, and an ``e`` in [0, 1]
has 30 significant bits, so six passes of 5 bits each find tau's bits exactly (a radix select weighted by mass).
Each pass sums the mass of the tokens that share the threshold's bits so far into 32 buckets by their next 5 bits,
per program (a row is split over up to 128 programs); the next pass first adds up those sums, then walks the buckets
from the top and keeps the highest one at which the mass so far reaches ``top_p * S``. Eight kernels in all for a
row: the maximum, ``e`` with its sum and the first digit's buckets, five digits, and the last digit with the
division. Without top-p: the maximum, ``e`` with its sum, and the division.

A row of at most ``SMALL_VOCAB`` tokens (a small model's vocabulary) is one program instead, in one kernel: the
launches, not the work, are what such a row costs. It holds the whole row in registers and finds tau by bisection on
its key's 30 bits (each step one masked sum: is there mass ``top_p * S`` at or above ``tau``'s bits so far with the
next bit set?), then divides the kept ``e`` by their sum. Each step's sum across the program's warps is a round trip
through shared memory, so ``digit_bits`` b > 1 finds b bits a step from the masses at all 2**b candidates at once
(30 / b steps, 2**b times the arithmetic); at b = 1 a row of 4096 tokens took 12.8 us under the profiler on an H200
(``scripts/diag/sampling_cost.py --small`` times the others). ``sampling_race`` also draws the exponential race's token
``argmax q / E`` there, the draw a sampled draft chain makes after each distribution.

The masses are float32 sums in another order than the reference's cumulative sum, so a token whose mass before it
is within rounding of ``top_p * S`` may fall on the other side (as between any two float implementations). Top-k is
not done here: the registry sends it to the PyTorch form (``triton_kernels.sampling_probs``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

SMALL_VOCAB = 8192  # rows up to this long are one program each, whole in registers (see the module docstring)
KEY_BITS = 30  # an e in [0, 1] as a non-negative float32's bits: below 2**30 (1.0 is 0x3F800000)
SMALL_DIGIT_BITS = 1  # bits of tau found per masked sum in the one-program path: 1 (bisection), 2 or 3
BLOCK = 512  # tokens per load (a pass's bucket masses take [BLOCK, BUCKETS] registers)
MAX_SPLITS = 128  # programs per row
DIGIT_BITS = 5
BUCKETS = 2**DIGIT_BITS
SHIFTS = (25, 20, 15, 10, 5, 0)  # the digits of a key in [0, 2**30), most significant first


@triton.jit
def _max_partials_kernel(logits_ptr, partial_ptr, vocab, chunk, SPLITS: tl.constexpr, BLOCK: tl.constexpr):
    """The maximum logit of each program's tokens."""
    row, split = tl.program_id(0), tl.program_id(1)
    begin = split * chunk
    end = tl.minimum(begin + chunk, vocab)
    best = tl.full((BLOCK,), float("-inf"), tl.float32)
    for start in range(begin, end, BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        best = tl.maximum(best, tl.load(logits_ptr + row * vocab + offsets, mask=offsets < end, other=float("-inf")))
    tl.store(partial_ptr + row * SPLITS + split, tl.max(best, axis=0))


@triton.jit
def _total_mass(mass_ptr, row, used, SPLITS: tl.constexpr):
    """S: the sum of a row's e, from its programs' sums."""
    splits = tl.arange(0, SPLITS)
    return tl.sum(tl.load(mass_ptr + row * SPLITS + splits, mask=splits < used, other=0.0), axis=0)


@triton.jit
def _resolve_digit(bucket_ptr, prefix_ptr, above_ptr, mass_ptr, row, rows, used, top_p,
                   PASS: tl.constexpr, SHIFT: tl.constexpr, SPLITS: tl.constexpr, BUCKETS: tl.constexpr):  # fmt: skip
    """The threshold's digit at SHIFT from the bucket masses of the pass before (``PASS - 1``): returns the key's
    bits so far, the mass strictly above them and the mass at or above them, M(prefix)."""
    splits = tl.arange(0, SPLITS)
    buckets = tl.arange(0, BUCKETS)
    before = (PASS - 1) % 2  # the masses and the state alternate between two buffers, one per pass parity
    at = ((before * rows + row) * SPLITS + splits[:, None]) * BUCKETS + buckets[None, :]
    mass = tl.sum(tl.load(bucket_ptr + at, mask=splits[:, None] < used, other=0.0), axis=0)  # [BUCKETS]
    target = top_p * _total_mass(mass_ptr, row, used, SPLITS)
    if PASS == 1:
        prefix = 0
        above = 0.0
    else:
        prefix = tl.load(prefix_ptr + (PASS % 2) * rows + row)  # written by the pass before, at its parity
        above = tl.load(above_ptr + (PASS % 2) * rows + row)
    # reach[b]: the mass at or above bucket b (this digit b, the bits before it fixed), plus what is above them
    reach = above + tl.sum(tl.where(buckets[None, :] >= buckets[:, None], mass[None, :], 0.0), axis=1)
    lowest = tl.min(tl.where(mass > 0, buckets, BUCKETS - 1), axis=0)  # if rounding left no bucket reaching
    digit = tl.max(tl.where((reach >= target) | (buckets == lowest), buckets, 0), axis=0)
    above_next = tl.sum(tl.where(buckets == digit + 1, reach, 0.0), axis=0)  # = reach[digit + 1], or ...
    above_next = tl.where(digit == BUCKETS - 1, above, above_next)  # ... what was above, for the top bucket
    reached = tl.sum(tl.where(buckets == digit, reach, 0.0), axis=0)
    return prefix | (digit << SHIFT), above_next, reached


@triton.jit
def _digit_pass_kernel(
    logits_ptr, e_ptr, max_ptr, mass_ptr, bucket_ptr, prefix_ptr, above_ptr, vocab, rows, chunk, used, temperature,
    top_p, PASS: tl.constexpr, SHIFT_BEFORE: tl.constexpr, SHIFT: tl.constexpr, HISTOGRAM: tl.constexpr,
    SPLITS: tl.constexpr, BUCKETS: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """PASS 0: e = exp((logit - max) / T) into ``e_ptr``, its sum per program, and (HISTOGRAM) the first digit's
    bucket masses. PASS p > 0: resolve digit p - 1 (at SHIFT_BEFORE), then the bucket masses of digit p (at SHIFT)
    over the tokens that share the threshold's bits so far."""
    row, split = tl.program_id(0), tl.program_id(1)
    begin = split * chunk
    end = tl.minimum(begin + chunk, vocab)
    buckets = tl.arange(0, BUCKETS)
    if PASS == 0:
        splits = tl.arange(0, SPLITS)
        highest = tl.max(tl.load(max_ptr + row * SPLITS + splits, mask=splits < used, other=float("-inf")), axis=0)
        prefix = 0
    else:
        prefix, above, _ = _resolve_digit(
            bucket_ptr, prefix_ptr, above_ptr, mass_ptr, row, rows, used, top_p, PASS, SHIFT_BEFORE, SPLITS, BUCKETS
        )
        if split == 0:
            tl.store(prefix_ptr + ((PASS + 1) % 2) * rows + row, prefix)
            tl.store(above_ptr + ((PASS + 1) % 2) * rows + row, above)
    total = tl.zeros((BLOCK,), tl.float32)
    bucket_mass = tl.zeros((BUCKETS,), tl.float32)
    for start in range(begin, end, BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        inside = offsets < end
        if PASS == 0:
            logits = tl.load(logits_ptr + row * vocab + offsets, mask=inside, other=float("-inf"))
            e = tl.exp(tl.math.div_rn(logits - highest, temperature))  # IEEE: 0 / a subnormal T is 0, not nan
            e = tl.where(inside, e, 0.0)
            tl.store(e_ptr + row * vocab + offsets, e, mask=inside)
            total += e
        else:
            e = tl.load(e_ptr + row * vocab + offsets, mask=inside, other=0.0)
        if HISTOGRAM:
            key = e.to(tl.int32, bitcast=True)
            member = inside if PASS == 0 else inside & ((key >> SHIFT_BEFORE) == (prefix >> SHIFT_BEFORE))
            digit = (key >> SHIFT) & (BUCKETS - 1)
            hit = member[:, None] & (digit[:, None] == buckets[None, :])  # [BLOCK, BUCKETS]
            bucket_mass += tl.sum(tl.where(hit, e[:, None], 0.0), axis=0)
    if PASS == 0:
        tl.store(mass_ptr + row * SPLITS + split, tl.sum(total, axis=0))
    if HISTOGRAM:
        tl.store(bucket_ptr + (((PASS % 2) * rows + row) * SPLITS + split) * BUCKETS + buckets, bucket_mass)


@triton.jit
def _normalise_kernel(
    e_ptr, out_ptr, mass_ptr, bucket_ptr, prefix_ptr, above_ptr, vocab, rows, chunk, used, top_p,
    PASS: tl.constexpr, TOP_P: tl.constexpr, SPLITS: tl.constexpr, BUCKETS: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """With TOP_P: resolve the last digit (shift 0): the threshold key tau and its mass M(tau); write e / M(tau) where
    e >= tau, else 0. Without: e / S."""
    row, split = tl.program_id(0), tl.program_id(1)
    begin = split * chunk
    end = tl.minimum(begin + chunk, vocab)
    if TOP_P:
        threshold, _, kept_mass = _resolve_digit(
            bucket_ptr, prefix_ptr, above_ptr, mass_ptr, row, rows, used, top_p, PASS, 0, SPLITS, BUCKETS
        )
    else:
        threshold = 0
        kept_mass = _total_mass(mass_ptr, row, used, SPLITS)
    for start in range(begin, end, BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        inside = offsets < end
        e = tl.load(e_ptr + row * vocab + offsets, mask=inside, other=0.0)
        kept = e.to(tl.int32, bitcast=True) >= threshold
        tl.store(out_ptr + row * vocab + offsets, tl.where(kept, e / kept_mass, 0.0), mask=inside)


@triton.jit
def _small_row_kernel(
    logits_ptr, out_ptr, noise_ptr, token_ptr, vocab, temperature, top_p,
    TOP_P: tl.constexpr, RACE: tl.constexpr, KEY_BITS: tl.constexpr, DIGIT_BITS: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """One row whole (BLOCK >= vocab): e, top-p's threshold key by bisection, q = the kept e / their sum; with RACE
    also the token ``argmax_v q(v) / E(v)`` on the row's exponentials (the first of tied maxima, as ``argmax``)."""
    row = tl.program_id(0).to(tl.int64)
    offsets = tl.arange(0, BLOCK)
    inside = offsets < vocab
    logits = tl.load(logits_ptr + row * vocab + offsets, mask=inside, other=float("-inf")).to(tl.float32)
    e = tl.exp(tl.math.div_rn(logits - tl.max(logits, axis=0), temperature))  # IEEE: see _digit_pass_kernel
    e = tl.where(inside, e, 0.0).to(tl.float32)  # [BLOCK] (the interpreter may widen a tiny temperature's quotient)
    if TOP_P:
        key = e.to(tl.int32, bitcast=True)
        target = top_p * tl.sum(e, axis=0)
        threshold = 0  # the largest key t with M(t) >= top_p * S, DIGIT_BITS bits at a time from the top
        if DIGIT_BITS == 1:
            for bit in tl.static_range(KEY_BITS - 1, -1, -1):
                candidate = threshold | (1 << bit)
                reached = tl.sum(tl.where(key >= candidate, e, 0.0), axis=0)  # M(candidate)
                threshold = tl.where(reached >= target, candidate, threshold)
        else:  # KEY_BITS % DIGIT_BITS == 0, so no candidate passes 2**30
            digits = tl.arange(0, 2**DIGIT_BITS)  # [D]
            for step in tl.static_range(KEY_BITS // DIGIT_BITS):
                shift = KEY_BITS - (step + 1) * DIGIT_BITS
                candidates = threshold | (digits << shift)  # [D]
                reached = tl.sum(tl.where(key[:, None] >= candidates[None, :], e[:, None], 0.0), axis=0)  # [D]
                ok = (reached >= target) | (digits == 0)  # digit 0 keeps the bits so far (M non-increasing in t)
                threshold = threshold | (tl.max(tl.where(ok, digits, 0), axis=0) << shift)
        e = tl.where(key >= threshold, e, 0.0)
    q = tl.math.div_rn(e, tl.sum(e, axis=0))
    tl.store(out_ptr + row * vocab + offsets, q, mask=inside)
    if RACE:
        noise = tl.load(noise_ptr + row * vocab + offsets, mask=inside, other=1.0)
        token = tl.argmax(tl.math.div_rn(q, noise), axis=0, tie_break_left=True)
        tl.store(token_ptr + row, token.to(tl.int64))


def _small_rows(
    logits: torch.Tensor,
    temperature: float,
    top_p: float,
    exponentials: torch.Tensor | None,
    digit_bits: int | None = None,
    warps: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """logits [..., V] (V <= SMALL_VOCAB, any float dtype) -> q [..., V] float32 and, given exponentials [..., V],
    the race's tokens [...] (int64). ``digit_bits`` (dividing 30; default SMALL_DIGIT_BITS) and ``warps``: for
    sweeps."""
    digit_bits = digit_bits or SMALL_DIGIT_BITS
    assert KEY_BITS % digit_bits == 0, f"digit_bits must divide {KEY_BITS}"
    shape, vocab = logits.shape, logits.shape[-1]
    flat = logits.reshape(-1, vocab).contiguous()  # [N, V]
    rows = flat.shape[0]
    out = torch.empty(flat.shape, dtype=torch.float32, device=logits.device)
    race = exponentials is not None
    noise = exponentials.reshape(rows, vocab).contiguous() if exponentials is not None else out
    tokens = torch.empty(rows, dtype=torch.long, device=logits.device) if race else None
    block = max(triton.next_power_of_2(vocab), 16)
    _small_row_kernel[(rows,)](
        flat, out, noise, tokens if tokens is not None else out, vocab, temperature, top_p, top_p < 1.0, race,
        KEY_BITS, digit_bits, block, num_warps=warps or (8 if block >= 2048 else 4),
    )  # fmt: skip
    return out.reshape(shape), tokens.reshape(shape[:-1]) if tokens is not None else None


def sampling_race(
    logits: torch.Tensor, temperature: float, top_p: float | None, exponentials: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """q = ``sampling_probs(logits, ...)`` [..., V] and the token ``argmax_v q(v) / E(v)`` [...] on exponentials
    [..., V] of Exp(1), which draws v with probability q(v): one kernel for a small vocabulary."""
    if logits.shape[-1] <= SMALL_VOCAB:
        q, tokens = _small_rows(logits, temperature, _kept_mass(top_p), exponentials)
        assert tokens is not None
        return q, tokens
    q = _large_rows(logits, temperature, _kept_mass(top_p))
    return q, (q / exponentials).argmax(dim=-1)


def sampling_probs(logits: torch.Tensor, temperature: float, top_p: float | None) -> torch.Tensor:
    """logits [..., V] -> the sampling distribution [..., V] float32 at ``temperature`` (> 0) with top-p, if any."""
    if logits.shape[-1] <= SMALL_VOCAB:
        return _small_rows(logits, temperature, _kept_mass(top_p), None)[0]
    return _large_rows(logits, temperature, _kept_mass(top_p))


def _kept_mass(top_p: float | None) -> float:
    """top-p as the kernels take it: 1.0 for no cut."""
    return float(top_p) if top_p is not None and top_p < 1.0 else 1.0


def _large_rows(logits: torch.Tensor, temperature: float, p: float) -> torch.Tensor:
    """:func:`sampling_probs` over up to MAX_SPLITS programs a row, in eight kernels (see the module docstring);
    ``p``: ``_kept_mass(top_p)``."""
    shape, vocab = logits.shape, logits.shape[-1]
    flat = logits.reshape(-1, vocab).float().contiguous()  # [N, V]
    rows = flat.shape[0]
    splits = min(MAX_SPLITS, triton.cdiv(vocab, BLOCK))
    chunk = triton.cdiv(triton.cdiv(vocab, splits), BLOCK) * BLOCK  # tokens per program, whole loads
    splits = triton.cdiv(vocab, chunk)
    padded = triton.next_power_of_2(splits)  # the partials' row width (loads past ``splits`` are masked)
    device = logits.device
    maxima = torch.empty((rows, padded), device=device)  # per program: the maximum logit
    mass = torch.empty((rows, padded), device=device)  # per program: the sum of e
    buckets = torch.empty((2, rows, padded, BUCKETS), device=device)  # per pass parity and program: bucket masses
    prefix = torch.empty((2, rows), dtype=torch.int32, device=device)  # per pass parity: the threshold's bits so far
    above = torch.empty((2, rows), device=device)  # ... and the mass above them
    e = torch.empty_like(flat)
    out = torch.empty_like(flat)
    grid = (rows, splits)
    top_p_on = p < 1.0
    _max_partials_kernel[grid](flat, maxima, vocab, chunk, padded, BLOCK, num_warps=8)
    common = (vocab, rows, chunk, splits)
    _digit_pass_kernel[grid](
        flat, e, maxima, mass, buckets, prefix, above, *common, temperature, p, 0, 0, SHIFTS[0], top_p_on,
        padded, BUCKETS, BLOCK, num_warps=8,
    )  # fmt: skip
    if top_p_on:
        for index in range(1, len(SHIFTS)):
            _digit_pass_kernel[grid](
                flat, e, maxima, mass, buckets, prefix, above, *common, 1.0, p, index, SHIFTS[index - 1],
                SHIFTS[index], True, padded, BUCKETS, BLOCK, num_warps=8,
            )  # fmt: skip
    _normalise_kernel[grid](
        e, out, mass, buckets, prefix, above, *common, p, len(SHIFTS), top_p_on, padded, BUCKETS, BLOCK, num_warps=8
    )  # fmt: skip
    return out.reshape(shape)
