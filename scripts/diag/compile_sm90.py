"""Compile the persistent step (``specdec.kernels.triton_persistent``) for an H100/H200 (sm_90a) on this machine, with
no GPU: each variant's registers, spills and shared memory, from the installed Triton's code through the ptxas that
ships with it. A variant that fails to compile fails here, before a device call is spent on it.

    python scripts/diag/compile_sm90.py gpt2,1b,8b [VARIANT ...]   # VARIANT: PersistentShape fields, as
                                                                    # SPECDEC_PERSISTENT_SHAPE takes them
    python scripts/diag/compile_sm90.py 1b "" "warps=8,tile_elements=16384,head_tile_elements=16384,stages=0"
    python scripts/diag/compile_sm90.py gemv                      # the decoder's fused GEMV, one product of each kind
    python scripts/diag/compile_sm90.py attention                 # the decode attention at one token of the 1B shape
    python scripts/diag/compile_sm90.py sampling                  # one-program sampling of 4096 tokens (float32)

No variant: the default shape. "" is the default too. bfloat16 weights, a cache of 1024 columns, one launch with
barriers (as on the device); ``--dtype float32`` for float32 weights. Needs triton with its NVIDIA backend (the
pip wheel has it) and TRITON_INTERPRET unset. Exit status 1 when a variant failed to compile.

Registers and spills here are those of this machine's Triton; the device's may differ (the device has Triton 3.6:
``pip install --target DIR triton==3.6.0`` and PYTHONPATH=DIR:. to compile with that one).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas
from triton.compiler import ASTSource

from specdec.kernels import triton_gemv, triton_kernels, triton_sampling
from specdec.kernels.triton_persistent import (
    GELU,
    StepWidths,
    _gpt2_step_kernel,
    _llama_step_kernel,
    parse_shape,
    step_constants,
)
from specdec.zoo.synthetic import synthetic_config

SHAPES = {"gpt2": "gpt2", "1b": "llama-3.2-1b", "8b": "llama-3.1-8b"}
GELU_OF = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh", "gelu": "none"}
# Pointer arguments that are not the model's dtype (by the kernels' parameter names)
FLOAT32 = {"max_ptr", "sum_ptr", "acc_ptr", "logits_ptr", "delta_ptr"}
INT64 = {"ids_ptr", "length_ptr", "positions_ptr", "columns_ptr", "timeline_ptr", "token_ptr"}
INT32 = {"counter_ptr", "error_ptr", "arrivals_ptr"}
FLOAT_SCALARS = {"eps", "scale", "temperature", "top_p"}
G = triton_gemv
# The decoder's fused GEMV (not the persistent step): one product of each kind, at the 1B and GPT-2 shapes (and a
# Qwen2-like q/k/v with biases), compiled with the argument "gemv" among the shapes
GEMV: dict[str, dict[str, int | bool]] = {
    "1b q/k/v: RMS norm, RoPE, cache": dict(n_out=3072, k_in=2048, NORM=G.NORM_RMS, QKV=G.QKV_ROTATE, PAIRED=True),
    "1b q/k/v as a dependent launch": dict(
        n_out=3072, k_in=2048, NORM=G.NORM_RMS, QKV=G.QKV_ROTATE, PAIRED=True, PDL=True
    ),
    "qwen q/k/v: biases, RoPE, cache": dict(
        n_out=3072, k_in=2048, NORM=G.NORM_RMS, HAS_BIAS=True, QKV=G.QKV_ROTATE, PAIRED=True
    ),
    "1b o: residual": dict(n_out=2048, k_in=2048, HAS_RESIDUAL=True),
    "1b gate/up: RMS norm, SiLU": dict(n_out=8192, k_in=2048, NORM=G.NORM_RMS, ACT=G.ACT_SILU_PAIR, PAIRED=True),
    "1b down: residual": dict(n_out=2048, k_in=8192, HAS_RESIDUAL=True),
    "gpt2 q/k/v: layer norm, bias, cache": dict(
        n_out=2304, k_in=768, NORM=G.NORM_LAYER, HAS_BIAS=True, QKV=G.QKV_STORE
    ),
    "gpt2 fc: layer norm, bias, GELU": dict(
        n_out=3072, k_in=768, NORM=G.NORM_LAYER, HAS_BIAS=True, ACT=G.ACT_GELU_TANH
    ),
    "gpt2 proj: bias, residual": dict(n_out=768, k_in=3072, HAS_BIAS=True, HAS_RESIDUAL=True),
}


# The decoder's attention (``triton_kernels._attention_split_kernel``) at one token of the 1B shape (4 query heads
# a kv head)
ATTENTION: dict[str, dict[str, int | bool | str]] = {
    "1b one token": dict(
        GROUP=4,
        HAS_VALID=True,
        HAS_TREE=False,
        BLOCK_R=16,
        BLOCK_N=triton_kernels.ATTENTION_BLOCK_N,
        HEAD_DIM=64,
        PRECISION="tf32",
        PDL=False,
    )
}


# One-program sampling (``triton_sampling._small_row_kernel``) of the zoo's 4096 tokens with top-p and the race: each
# digit width at the warp counts ``scripts/diag/sampling_cost.py --small`` times (compiled with --dtype fp32)
SAMPLING: dict[str, tuple[dict[str, int | bool], int]] = {
    f"4096 tokens, {bits} bits a step, {warps} warps": (
        dict(TOP_P=True, RACE=True, KEY_BITS=triton_sampling.KEY_BITS, DIGIT_BITS=bits, BLOCK=4096),
        warps,
    )
    for bits in (1, 2, 3)
    for warps in (4, 8, 16)
}


def widths(shape: str) -> StepWidths:
    """The widths of a zoo synthetic shape (gpt2, 1b, 8b)."""
    config = synthetic_config(SHAPES[shape])
    if shape == "gpt2":
        hidden = config.n_embd
        act = GELU[GELU_OF[config.activation_function]]
        heads = config.n_head
        return StepWidths("gpt2", hidden, config.n_inner or 4 * hidden, heads, heads, hidden // heads, act=act)
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return StepWidths(
        "llama", config.hidden_size, config.intermediate_size, heads, config.num_key_value_heads, head_dim,
        qkv_bias=bool(getattr(config, "attention_bias", False)), o_bias=bool(getattr(config, "attention_bias", False)),
    )  # fmt: skip


def compile_step(step_widths: StepWidths, variant: str, dtype: str, max_length: int = 1024) -> str:
    """Compile the step for sm_90a; ptxas's summary (registers, spills, shared memory) or raise."""
    shape = parse_shape(variant, "variant")
    kernel = _llama_step_kernel if step_widths.family == "llama" else _gpt2_step_kernel
    constants = step_constants(step_widths, shape, max_length, sync=not shape.phase_launches, advance=True)
    return compile_sm90(kernel, constants, shape.warps, dtype)


def compile_gemv(case: dict[str, int | bool], dtype: str) -> str:
    """Compile the decoder's one-row fused GEMV (``triton_gemv``) for one product, with the tiles its launcher
    picks (see ``GEMV``)."""
    n_out, k_in = int(case["n_out"]), int(case["k_in"])
    if case.get("QKV") == triton_gemv.QKV_ROTATE:
        block_n, block_k, warps = triton_gemv.rope_blocks(k_in, int(case.get("HEAD_DIM", 64)))
    else:
        block_n, block_k, warps = triton_gemv.blocks(n_out, k_in, case.get("ACT") == triton_gemv.ACT_SILU_PAIR)
    constants: dict[str, int | bool] = {
        "NORM": 0, "HAS_BIAS": False, "ACT": 0, "HAS_RESIDUAL": False, "QKV": 0, "PAIRED": False, "HEAD_DIM": 64,
        "PDL": False,
    }  # fmt: skip
    constants |= {name: value for name, value in case.items() if name not in ("n_out", "k_in")}
    constants |= {"BLOCK_N": block_n, "BLOCK_K": block_k, "BLOCK_X": triton_gemv._norm_block(k_in)}
    return compile_sm90(triton_gemv._fused_linear_kernel, constants, warps, dtype)


def compile_sm90(kernel, constants: dict[str, int | bool], warps: int, dtype: str) -> str:
    """Compile a kernel of this project for sm_90a with the given compile-time arguments (pointers by name: see
    FLOAT32, INT64, INT32; the rest in ``dtype``); ptxas's summary (registers, spills, shared memory) or raise."""
    signature: dict[str, str] = {}
    attrs: dict[tuple[int, ...], list[list[object]]] = {}
    for index, name in enumerate(kernel.arg_names):
        if name in constants:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):  # 16-byte aligned, as the launcher marks such tensors
            signature[name] = (
                "*fp32" if name in FLOAT32 else "*i64" if name in INT64 else "*i32" if name in INT32
                else "*i1" if name == "valid_ptr" else f"*{dtype}"
            )  # fmt: skip
            attrs[(index,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = "fp32" if name in FLOAT_SCALARS else "i32"
    source = ASTSource(fn=kernel, signature=signature, constexprs=constants, attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
    ptxas = get_ptxas(90).path  # the assembler Triton itself uses for this target
    with tempfile.TemporaryDirectory() as folder:
        ptx = Path(folder) / "step.ptx"
        ptx.write_text(compiled.asm["ptx"])
        run = subprocess.run([ptxas, "-arch=sm_90a", "-v", str(ptx), "-o", os.devnull], capture_output=True, text=True)
    if run.returncode:
        raise RuntimeError(f"ptxas failed: {run.stderr.strip()}")
    said = [line.split("info    : ")[-1].strip() for line in run.stderr.splitlines()]
    lines = [line for line in said if "Used" in line or "spill" in line]
    return f"{' | '.join(lines)}; {compiled.metadata.shared} bytes of shared memory"


def _reason(error: BaseException) -> str:
    """The innermost cause's last line (Triton nests a compile error in one per calling function)."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = [line.strip() for line in str(error).splitlines() if line.strip().strip("^")]
    return f"{type(error).__name__}: {lines[-1][:400] if lines else ''}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("shapes", help="gpt2, 1b, 8b (comma-separated), or gemv or attention")
    parser.add_argument("variants", nargs="*", default=[""], help="PersistentShape fields, e.g. stages=0,warps=8")
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: the interpreter replaces the kernels this compiles")
    unknown = [name for name in args.shapes.split(",") if name not in (*SHAPES, "gemv", "attention", "sampling")]
    if unknown:
        parser.error(f"unknown shape(s) {', '.join(unknown)}; known: {', '.join(SHAPES)}, gemv, attention, sampling")
    failed = 0
    print(f"triton {triton.__version__}, sm_90a, {args.dtype}", flush=True)
    for name in args.shapes.split(","):
        if name == "sampling":
            for label, (constants, warps) in SAMPLING.items():
                try:
                    summary = compile_sm90(triton_sampling._small_row_kernel, constants, warps, args.dtype)
                except Exception as error:  # as below
                    failed += 1
                    summary = f"FAILED: {_reason(error)}"
                print(f"{name:9} {label:56} {summary}", flush=True)
            continue
        if name in ("gemv", "attention"):
            cases = GEMV if name == "gemv" else ATTENTION
            for product, case in cases.items():
                try:
                    if name == "gemv":
                        summary = compile_gemv(case, args.dtype)  # type: ignore[arg-type]
                    else:
                        summary = compile_sm90(triton_kernels._attention_split_kernel, case, 4, args.dtype)
                except Exception as error:  # as below
                    failed += 1
                    summary = f"FAILED: {_reason(error)}"
                print(f"{name:9} {product:56} {summary}", flush=True)
            continue
        for variant in args.variants:
            try:
                summary = compile_step(widths(name), variant, args.dtype)
            except Exception as error:  # a compile error: name the variant, go on with the others
                failed += 1
                summary = f"FAILED: {_reason(error)}"
            print(f"{name:5} {variant or 'default':60} {summary}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
