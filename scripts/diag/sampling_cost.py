"""What a sampled autoregressive step adds to a greedy one on CUDA, piece by piece, for one row of logits.

    python scripts/diag/sampling_cost.py            # vocabularies of 128256 (Llama 3) and 50257 (GPT-2)
    python scripts/diag/sampling_cost.py --small    # the one-program path of a small vocabulary (4096, the zoo's)

Each piece is timed in a CUDA graph of 50 calls (median of 5 replays), in microseconds per call: the greedy step's
argmax; the sampled step's noise (``draw_noise``); the sampling distribution (temperature 0.8, top-p 0.95) and its
parts (scores and ``exp``, the sort, the cumulative sum); the sort-based top-p of the kernel set's top-k path; the
distribution without top-p; and the whole function the sampled step replays after the forward
(``Verifier.sample_from_noise``: distribution, race and verdict).

``--small``: ``triton_sampling``'s one-program distribution and race (temperature 0.8, top-p 0.95) for one row (a
draft's or an autoregressive step's) and five (a K = 4 verification's), at each digit width (``digit_bits``: tau's
bits found per masked sum) and warp count, against the split path's eight kernels on the same rows.
"""

# ruff: noqa: B023  (each closure runs inside the iteration that defines it)
from __future__ import annotations

import sys

import torch

from specdec.config import AcceptanceConfig, GenerationConfig
from specdec.kernels import kernels_for, reference
from specdec.verification import Verifier, draw_noise


def graph_us(fn, calls: int = 50) -> float:
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    times = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1000 / calls)
    return sorted(times)[2]


def main() -> None:
    device = torch.device("cuda")
    kernels = kernels_for(device)
    config = GenerationConfig(temperature=0.8, top_p=0.95, seed=0)
    verifier = Verifier(AcceptanceConfig(), config, kernels)
    for vocab in (128256, 50257):
        logits = torch.randn(1, 1, vocab, device=device) * 4  # [B, 1, V] float32, a spread like a model's
        flat = logits[:, 0]
        uniforms, exponentials = draw_noise(1, 0, vocab, device, None)
        e = reference.top_k_scores(flat, 0.8, None).exp()
        pieces = {
            "argmax (greedy)": lambda: flat.argmax(dim=-1),
            "draw_noise": lambda: draw_noise(1, 0, vocab, device, None),
            "scores + exp": lambda: reference.top_k_scores(flat, 0.8, None).exp(),
            "sort": lambda: torch.sort(e, dim=-1, descending=True),
            "cumsum": lambda: torch.cumsum(e, dim=-1),
            "sampling_probs": lambda: kernels.sampling_probs(flat, 0.8, None, 0.95),
            "sort-based top-p": lambda: kernels.sampling_probs(flat, 0.8, vocab, 0.95),  # top-k V: no cut, a sort
            "sampling_probs, no top-p": lambda: kernels.sampling_probs(flat, 0.8, None, None),
            "sample_from_noise": lambda: verifier.sample_from_noise(logits, uniforms, exponentials),
        }
        print(f"V={vocab}: " + "; ".join(f"{name} {graph_us(fn):.1f} us" for name, fn in pieces.items()), flush=True)


def small() -> None:
    from specdec.kernels import triton_sampling as ts

    for rows in (1, 5):
        logits = torch.randn(rows, 4096, device="cuda") * 4
        noise = torch.empty_like(logits).exponential_()
        pieces = {"split path": lambda: ts._large_rows(logits, 0.8, 0.95)}
        for bits in (1, 2, 3):
            for warps in (4, 8, 16):
                pieces[f"bits {bits} warps {warps}"] = lambda b=bits, w=warps: ts._small_rows(
                    logits, 0.8, 0.95, noise, b, w
                )
        print(f"V=4096 rows={rows}: " + "; ".join(f"{n} {graph_us(fn):.1f} us" for n, fn in pieces.items()), flush=True)


if __name__ == "__main__":
    small() if "--small" in sys.argv[1:] else main()
