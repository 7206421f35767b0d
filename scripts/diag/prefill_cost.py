"""Where a prefill's time goes (the time to the first token): host time to queue the forward against its GPU time,
the host ops by self time under the profiler, and the host cost of one launch of each kind of kernel.

    python scripts/diag/prefill_cost.py [SHAPES] [PROMPT_LENGTH]      SHAPES: 1b,gpt2 (default), PROMPT_LENGTH 128
    python scripts/diag/prefill_cost.py agree [SHAPES] [LENGTHS]      the padded graph against the eager prefill

``agree``: for each prompt length (default 40,100,128,300), the last token's logits of the prefill padded and
replayed from its graph against the eager unpadded prefill (largest difference over the largest logit, same argmax),
and the 32 greedy tokens after each (how many agree before the first difference).

bf16 on CUDA. Rows: the prefill padded and replayed from a graph (the default), then eagerly with each long-query
attention (``reference.sdpa_attention``, the default, and ``reference.decode_attention``), in the same process.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from specdec import load_model
from specdec.fast.decoder import FastDecoder
from specdec.kernels import reference

TARGETS = {"1b": "zoo:synthetic/llama-3.2-1b@mix=0.5", "gpt2": "zoo:synthetic/gpt2", "8b": "zoo:synthetic/llama-3.1-8b"}


def timed_prefill(decoder: FastDecoder, ids: torch.Tensor, repeats: int = 9) -> tuple[float, float, float, float]:
    """Median ms: prepare (host, synced), the forward's host time to queue, its wall time to the end, GPU time."""
    prepare, queue, wall, gpu = [], [], [], []
    zeros = torch.zeros(1, dtype=torch.long)
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        decoder.prepare(zeros, None, 512)
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        decoder.forward(ids, last_only=True)
        end.record()
        t2 = time.perf_counter()
        torch.cuda.synchronize()
        t3 = time.perf_counter()
        prepare.append(t1 - t0)
        queue.append(t2 - t1)
        wall.append(t3 - t1)
        gpu.append(start.elapsed_time(end) / 1000)
    return tuple(1000 * statistics.median(x) for x in (prepare, queue, wall, gpu))  # type: ignore[return-value]


def launch_costs() -> None:
    from specdec.kernels import triton_kernels as tk

    x = torch.randn(128, 2048, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(2048, device="cuda", dtype=torch.bfloat16)
    m = torch.randn(2048, 2048, device="cuda", dtype=torch.bfloat16)
    for name, fn in (("triton rms_norm", lambda: tk.rms_norm(x, w, 1e-5)), ("torch F.linear", lambda: x @ m.t()),
                     ("torch add", lambda: x + x)):  # fmt: skip
        fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(200):
            fn()
        host = (time.perf_counter() - t0) / 200
        torch.cuda.synchronize()
        print(f"launch {name}: {host * 1e6:.1f} us of host time per call", flush=True)


def agree() -> None:
    from specdec import GenerationConfig, SpeculativeEngine

    shapes = sys.argv[2].split(",") if len(sys.argv) > 2 else ["1b", "gpt2"]
    lengths = [int(n) for n in sys.argv[3].split(",")] if len(sys.argv) > 3 else [40, 100, 128, 300]
    for shape in shapes:
        engine = SpeculativeEngine(load_model(TARGETS[shape], device="cuda", dtype="bfloat16"))
        decoder = engine.target
        assert isinstance(decoder, FastDecoder)
        for length in lengths:
            prompt = torch.randint(0, 32000, (length,), generator=torch.Generator().manual_seed(length)).tolist()
            ids = torch.tensor([prompt], device="cuda")
            logits, tokens = [], []
            for pad_prefill in (True, False):
                decoder.pad_prefill = pad_prefill
                for _ in range(2):  # the first call captures
                    decoder.prepare(torch.zeros(1, dtype=torch.long), None, length + 64)
                    out = decoder.forward(ids, last_only=True).clone()
                logits.append(out)
                tokens.append(engine.generate(prompt, GenerationConfig(max_new_tokens=32)).token_ids[0])
            difference = (logits[0] - logits[1]).abs().max().item() / logits[1].abs().max().item()
            same = next((i for i, (a, b) in enumerate(zip(*tokens, strict=True)) if a != b), len(tokens[0]))
            print(f"agree {shape} {length} tokens: logits differ by {difference:.2e}"
                  f" of the largest, argmax {'same' if logits[0].argmax() == logits[1].argmax() else 'DIFFERS'}, "
                  f"{same} of 32 greedy tokens before the first difference", flush=True)  # fmt: skip
        decoder.pad_prefill = True


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "agree":
        agree()
        return
    shapes = sys.argv[1].split(",") if len(sys.argv) > 1 else ["1b", "gpt2"]
    length = int(sys.argv[2]) if len(sys.argv) > 2 else 128
    launch_costs()
    ids = torch.randint(0, 32000, (1, length), generator=torch.Generator().manual_seed(0)).cuda()
    sdpa = reference.sdpa_attention
    for shape in shapes:
        decoder = FastDecoder(load_model(TARGETS[shape], device="cuda", dtype="bfloat16"))
        variants = (
            ("graphed", True, sdpa), ("eager, sdpa", False, sdpa),
            ("eager, reference attention", False, reference.decode_attention), ("graphed", True, sdpa),
        )  # fmt: skip
        for label, pad_prefill, attention in variants:
            decoder.pad_prefill = pad_prefill
            reference.sdpa_attention = attention  # what the Triton set calls for long query blocks
            timed_prefill(decoder, ids, 2)
            p, q, w, g = timed_prefill(decoder, ids)
            print(f"{shape} {length} tokens, {label}: prepare {p:.2f} ms, forward queued in {q:.2f} ms, "
                  f"done in {w:.2f} ms, GPU {g:.2f} ms", flush=True)  # fmt: skip
        reference.sdpa_attention = sdpa
        decoder.pad_prefill = False
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            decoder.prepare(torch.zeros(1, dtype=torch.long), None, 512)
            decoder.forward(ids, last_only=True)
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=22, max_name_column_width=60))


if __name__ == "__main__":
    main()
