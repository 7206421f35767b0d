"""The fused decode GEMV (``specdec.kernels.triton_gemv``) against the unfused products it replaces, on CUDA.

    python scripts/diag/gemv_ab.py kernels            # per-matrix times on the 1B, 8B and GPT-2 shapes (bf16)
    python scripts/diag/gemv_ab.py sweep [1b:down,...]  # tiles and warps of the fused kernel (gpt2:fc, 8b:qkv_rope)
    SPECDEC_GEMV_ROWS=0 python scripts/diag/gemv_ab.py ar   # the engine's autoregressive speed without the GEMV
    python scripts/diag/gemv_ab.py ar                       # ... and with it (run both in one call, interleaved)
    python scripts/diag/gemv_ab.py ar 1b                    # one shape (1b, 8b or gpt2)
    python scripts/diag/gemv_ab.py chain 1b                 # the engine's step against its forward alone
    python scripts/diag/gemv_ab.py busy gpt2,1b,gpt2        # GPU time per forward by kernel, shapes in one process
    python scripts/diag/gemv_ab.py attention 64,128,512     # the one-token attention by keys per split

``kernels``: each product of a layer at 1 row, timed in a CUDA graph of 50 calls over 4 copies of the weight (so
that the 50 MB L2 does not hold it): the fused kernel, then the sequence it replaces (the Triton RMS norm,
``F.linear``, the SiLU kernel, the residual add; on GPT-2, whose weights are [in, out], ``F.layer_norm``, ``addmm``,
``F.gelu``, the add), in microseconds and in GB/s of weights read. ``sweep``: tile
sizes and warps for the fused kernel on the same products. ``ar``: tokens/s of the 1B and 8B shapes, bf16, greedy,
batch 1, 128-token prompt, 256 new tokens (median of 3 after a warm-up), and the sampled run (temperature 0.8,
top-p 0.95). ``chain``: the engine's greedy autoregressive ms per token against the same forward replayed 16 times
in one CUDA graph with its argmax (the decoder's ``greedy_chain``: no host work between forwards), in one process.
``busy``: per shape, in the order given and in one process (a shape named twice loads twice), the forward in a
16-step graph as in ``chain``, then 16 one-token forwards run eagerly under the torch profiler: the kernels' summed
device time per forward (what the GPU must do, without launch gaps) and the five largest kernels (``BUSY_TOP=N``: N).
"""

# ruff: noqa: B023  (each closure runs inside the iteration that defines it)
from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

SHAPES = {  # name: (K, N, norm, silu_pair, residual)
    "1b": {"qkv": (2048, 3072, True, False, False), "o": (2048, 2048, False, False, True),
           "gate_up": (2048, 8192, True, True, False), "down": (8192, 2048, False, False, True)},
    "8b": {"qkv": (4096, 6144, True, False, False), "o": (4096, 4096, False, False, True),
           "gate_up": (4096, 14336, True, True, False), "down": (14336, 4096, False, False, True)},
}  # fmt: skip
GPT2_SHAPES = {  # name: (K, N, layer norm, gelu, residual); every product with its bias
    "qkv": (768, 2304, True, None, False), "o": (768, 768, False, None, True),
    "fc": (768, 3072, True, "tanh", False), "proj": (3072, 768, False, None, True),
}  # fmt: skip
TARGETS = {  # for ar, chain
    "1b": "zoo:synthetic/llama-3.2-1b@mix=0.5",
    "8b": "zoo:synthetic/llama-3.1-8b@mix=0.5",
    "gpt2": "zoo:synthetic/gpt2",
}


def graph_time_us(fn, calls: int = 50) -> float:
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn(0)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fn(i)
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000 / (5 * calls)


def operands(k_in: int, n_out: int, norm: bool, silu: bool, res: bool) -> tuple:
    """One row's product of this shape in bf16: 4 copies of the weight, the row, the norm weight, the residual."""
    dtype, device = torch.bfloat16, torch.device("cuda")
    rows_w = 2 * n_out if silu else n_out
    weights = [torch.randn(rows_w, k_in, device=device, dtype=dtype) / k_in**0.5 for _ in range(4)]
    x = torch.randn(1, k_in, device=device, dtype=dtype)
    g = torch.randn(k_in, device=device, dtype=dtype) if norm else None
    r = torch.randn(1, n_out, device=device, dtype=dtype) if res else None
    return weights, x, g, r


def kernels() -> None:
    from specdec.kernels import triton_gemv as tg
    from specdec.kernels import triton_kernels as tk

    for model, shapes in SHAPES.items():
        kernel_times(model, shapes, tg, tk)
    for name, spec in GPT2_SHAPES.items():
        weights, conv1d, x, bias, norm, r = gpt2_operands(*spec)
        gb = weights[0].numel() * 2 / 1e9
        gelu = spec[3]

        def fused(i):
            return tg.fused_linear(x, weights[i % 4], bias, norm[0] if norm else None, 1e-5, r,
                                   norm_bias=norm[1] if norm else None, gelu=gelu)  # fmt: skip

        def unfused(i):  # what FastGPT2 ran before the fused products, over Conv1D's [K, N] weights
            h = F.layer_norm(x, (x.shape[-1],), *norm, 1e-5) if norm else x
            y = torch.addmm(bias, h, conv1d[i % 4])
            y = F.gelu(y, approximate=gelu) if gelu else y
            return y if r is None else r + y

        a, b = graph_time_us(fused), graph_time_us(unfused)
        print(f"gpt2 {name:8s} rows 1: fused {a:7.2f} us ({gb / a * 1e6:6.0f} GB/s)  "
              f"unfused {b:7.2f} us ({gb / b * 1e6:6.0f} GB/s)  ratio {b / a:.2f}x", flush=True)  # fmt: skip


def gpt2_operands(k_in: int, n_out: int, layer_norm: bool, gelu: str | None, res: bool) -> tuple:
    """A GPT-2 product's operands in bf16: 4 copies of the [N, K] weight and 4 of its [K, N] form (Conv1D's), the
    row, bias, (norm weight, norm bias) or (), the residual."""
    dtype, device = torch.bfloat16, torch.device("cuda")
    weights = [torch.randn(n_out, k_in, device=device, dtype=dtype) / k_in**0.5 for _ in range(4)]
    conv1d = [w.t().contiguous() for w in weights]
    x = torch.randn(1, k_in, device=device, dtype=dtype)
    bias = torch.randn(n_out, device=device, dtype=dtype)
    norm = (torch.randn(k_in, device=device, dtype=dtype), torch.randn(k_in, device=device, dtype=dtype))
    r = torch.randn(1, n_out, device=device, dtype=dtype) if res else None
    return weights, conv1d, x, bias, norm if layer_norm else (), r


HEADS = {"1b": (32, 8, 64), "8b": (32, 8, 128)}  # query heads, kv heads, head size


def rope_product(model: str, tg):
    """The decoder's q/k/v kernel of one token at this shape (RMS norm, product, RoPE, KV write), over 4 copies of
    the weight and a 1024-column cache: (run(i, tiles=None), weight GB, the default tiles)."""
    k_in, n_out = SHAPES[model]["qkv"][:2]
    heads, kv_heads, head_dim = HEADS[model]
    weights, x, g, _ = operands(k_in, n_out, True, False, False)
    cache = [torch.zeros(1, kv_heads, 1024, head_dim, device="cuda", dtype=torch.bfloat16) for _ in "kv"]
    angles = torch.rand(1024, head_dim // 2, device="cuda")
    tables = [torch.cat([f(angles), f(angles)], -1).to(torch.bfloat16) for f in (torch.cos, torch.sin)]
    positions, columns = torch.tensor([[300]], device="cuda"), torch.tensor([300], device="cuda")

    def run(i, tiles=None):
        return tg.linear_rope_store(x, weights[i % 4], None, g, 1e-5, positions, *tables, *cache, columns, heads,
                                    kv_heads, tiles=tiles)  # fmt: skip

    return run, weights[0].numel() * 2 / 1e9, tg.rope_blocks(k_in, head_dim)


def kernel_times(model: str, shapes: dict, tg, tk) -> None:
    for name, (k_in, n_out, norm, silu, res) in shapes.items():
        weights, x, g, r = operands(k_in, n_out, norm, silu, res)
        gb = weights[0].numel() * 2 / 1e9

        def fused(i):
            return tg.fused_linear(x, weights[i % 4], None, g, 1e-5, r, silu)

        def unfused(i):
            h = tk.rms_norm(x, g, 1e-5) if g is not None else x
            y = F.linear(h, weights[i % 4])
            if silu:
                y = tk.silu_mul(y)
            return y if r is None else r + y

        a, b = graph_time_us(fused), graph_time_us(unfused)
        print(f"{model} {name:8s} rows 1: fused {a:7.2f} us ({gb / a * 1e6:6.0f} GB/s)  "
              f"unfused {b:7.2f} us ({gb / b * 1e6:6.0f} GB/s)  ratio {b / a:.2f}x", flush=True)  # fmt: skip
    run, gb, _ = rope_product(model, tg)
    a = graph_time_us(run)
    print(f"{model} qkv_rope rows 1: fused {a:7.2f} us ({gb / a * 1e6:6.0f} GB/s)  (the decoder's q/k/v kernel: "
          "norm, product, RoPE, KV write)", flush=True)  # fmt: skip


def sweep() -> None:
    """Output rows per program, inputs per load and warps for the fused kernel at one row."""
    from specdec.kernels import triton_gemv as tg

    chosen_names = sys.argv[2].split(",") if len(sys.argv) > 2 else None  # e.g. 1b:down,8b:gate_up,gpt2:fc
    every = [(m, n) for m in SHAPES for n in [*SHAPES[m], "qkv_rope"]] + [("gpt2", n) for n in GPT2_SHAPES]
    for model, name in [(m, n) for m, n in every if chosen_names is None or f"{m}:{n}" in chosen_names]:
        if name == "qkv_rope":  # the decoder's own q/k/v kernel; BLOCK_N counts pairs of rows
            rope_run, _, chosen = rope_product(model, tg)
            grid = ((1, 2, 4), (512, 1024, 2048))
        elif model == "gpt2":
            k_in, n_out, _, gelu, _ = GPT2_SHAPES[name]
            weights, _, x, bias, norm, r = gpt2_operands(*GPT2_SHAPES[name])
            extra = {"norm_bias": norm[-1] if norm else None, "gelu": gelu}
            args, grid = (bias, norm[0] if norm else None, 1e-5, r, False), ((1, 2, 4, 8), (256, 512, 1024))
            chosen = tg.blocks(n_out, k_in, False)
        else:
            k_in, n_out, norm_on, silu, res = SHAPES[model][name]
            weights, x, g, r = operands(k_in, n_out, norm_on, silu, res)
            extra, args, grid = {}, (None, g, 1e-5, r, silu), ((1, 2, 4), (512, 1024, 2048))
            chosen = tg.blocks(n_out, k_in, silu)
        best = []
        for block_n in grid[0]:
            for block_k in grid[1]:
                for warps in (1, 2, 4):

                    def run(i, tiles=(block_n, block_k, warps)):
                        if name == "qkv_rope":
                            return rope_run(i, tiles)
                        return tg.fused_linear(x, weights[i % 4], *args, **extra, tiles=tiles)

                    try:
                        best.append((graph_time_us(run), block_n, block_k, warps))
                    except Exception as error:  # a tile too large for the registers
                        print(f"  {name} n{block_n} k{block_k} w{warps}: {type(error).__name__}")
        best.sort()
        print(f"sweep {model} {name}: default {chosen}; best " + ", ".join(
            f"{t:.2f}us n{n} k{k} w{w}" for t, n, k, w in best[:5]), flush=True)  # fmt: skip


def ar() -> None:
    from specdec import GenerationConfig, SpeculativeEngine, load_model
    from specdec.benchmarks.timing import time_engine

    label = f"gemv_rows={os.environ.get('SPECDEC_GEMV_ROWS', 'default')}"
    shapes = sys.argv[2].split(",") if len(sys.argv) > 2 else ["1b", "8b"]
    prompt = torch.randint(0, 32000, (128,), generator=torch.Generator().manual_seed(0)).tolist()
    greedy = GenerationConfig(max_new_tokens=256, stop_at_eos=False)
    sampled = GenerationConfig(max_new_tokens=256, stop_at_eos=False, temperature=0.8, top_p=0.95, seed=0)
    for target in [TARGETS[shape] for shape in shapes]:
        model = load_model(target, device="cuda", dtype="bfloat16")
        engine = SpeculativeEngine(model)
        g = time_engine(engine, prompt, greedy)
        s = time_engine(engine, prompt, sampled)
        print(f"{label} {target}: greedy {g.tokens_per_second:.1f} tok/s, sampled {s.tokens_per_second:.1f} "
              f"({s.tokens_per_second / g.tokens_per_second:.3f})", flush=True)  # fmt: skip
        del engine, model
        torch.cuda.empty_cache()


def chain() -> None:
    from specdec import GenerationConfig, SpeculativeEngine, load_model
    from specdec.benchmarks.timing import time_engine

    prompt = torch.randint(0, 32000, (128,), generator=torch.Generator().manual_seed(0)).tolist()
    for shape in sys.argv[2].split(",") if len(sys.argv) > 2 else ["1b"]:
        engine = SpeculativeEngine(load_model(TARGETS[shape], device="cuda", dtype="bfloat16"))
        timed = time_engine(engine, prompt, GenerationConfig(max_new_tokens=256, stop_at_eos=False))
        step_ms = 1000 / timed.tokens_per_second
        chained = chain_ms(engine.target, torch.tensor([prompt], device="cuda"))
        print(f"{shape}: engine step {step_ms:.3f} ms/token, forward in a 16-step graph {chained:.3f} ms "
              f"({step_ms / chained:.3f}x)", flush=True)  # fmt: skip


def chain_ms(decoder, ids: torch.Tensor) -> float:
    """Median ms per forward of the decoder's 16-token greedy chain (one graph) after a 128-token prompt."""
    decoder.prepare(torch.zeros(1, dtype=torch.long), None, 1024)
    decoder.forward(ids, last_only=True)
    times = []
    for _ in range(6):
        decoder.rollback(128)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(8):
            decoder.greedy_chain(ids[:, -1:], 16)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / (8 * 16))
    decoder.rollback(128)
    return sorted(times)[len(times) // 2]


def busy() -> None:
    from torch.profiler import ProfilerActivity, profile

    from specdec import load_model
    from specdec.fast.decoder import FastDecoder

    prompt = torch.randint(0, 32000, (1, 128), generator=torch.Generator().manual_seed(0)).cuda()
    for shape in sys.argv[2].split(","):
        decoder = FastDecoder(load_model(TARGETS[shape], device="cuda", dtype="bfloat16"))
        graphed = chain_ms(decoder, prompt)
        decoder._graphs.enabled = False
        for _ in range(4):  # warm
            decoder.forward(prompt[:, -1:], last_only=True)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(16):
                decoder.forward(prompt[:, -1:], last_only=True)
            torch.cuda.synchronize()
        totals: dict[str, float] = {}
        counts: dict[str, int] = {}
        for event in prof.events():
            if event.device_type == torch.autograd.DeviceType.CUDA:
                totals[event.name] = totals.get(event.name, 0.0) + event.device_time / 16
                counts[event.name] = counts.get(event.name, 0) + 1
        top = sorted(totals.items(), key=lambda item: -item[1])[: int(os.environ.get("BUSY_TOP", "5"))]
        print(f"busy {shape}: graph {graphed * 1000:.1f} us/forward, kernels {sum(totals.values()):.1f} us/forward "
              f"({sum(counts.values()) / 16:.0f} kernels); top: " + "; ".join(
                  f"{name[:40]} x{counts[name] // 16} {t:.1f}us" for name, t in top), flush=True)  # fmt: skip
        del decoder
        torch.cuda.empty_cache()


def attention() -> None:
    """The decoder's one-token attention (``triton_kernels.decode_attention``) on the 1B and 8B shapes' heads, bf16,
    in a graph of 50 calls: us per call by cache capacity, keys used and keys per split."""
    from specdec.kernels import triton_kernels as tk

    splits = [int(n) for n in sys.argv[2].split(",")] if len(sys.argv) > 2 else [tk.ATTENTION_SPLIT_KEYS]
    for model, (heads, kv_heads, head_dim) in HEADS.items():
        for capacity, used in ((512, 384), (1024, 384), (1024, 1000)):
            cache = [torch.randn(1, kv_heads, capacity, head_dim, device="cuda", dtype=torch.bfloat16) for _ in "kv"]
            q = torch.randn(1, 1, heads, head_dim, device="cuda", dtype=torch.bfloat16)
            columns = torch.tensor([used - 1], device="cuda")
            times = []
            for split_keys in splits:
                tk.ATTENTION_SPLIT_KEYS = split_keys
                times.append(graph_time_us(lambda i: tk.decode_attention(q, *cache, columns, None, head_dim**-0.5)))
            print(f"attention {model} capacity {capacity} keys {used}: " + ", ".join(
                f"{n} keys/split {t:.2f} us" for n, t in zip(splits, times, strict=True)), flush=True)  # fmt: skip


if __name__ == "__main__":
    modes = {"kernels": kernels, "sweep": sweep, "ar": ar, "chain": chain, "busy": busy, "attention": attention}
    modes[sys.argv[1]]()
