"""The kernel registry: Triton on CUDA, the PyTorch references elsewhere.

Every fast-path operation and the verification functions come from one :class:`Kernels` set, so that the metrics
can say which ran (``Kernels.name``). ``SPECDEC_KERNELS=torch`` forces the references (for comparisons); on a CPU,
``TRITON_INTERPRET=1`` with Triton installed runs the Triton kernels in Triton's interpreter (for development).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import torch
import torch.nn.functional as F

from specdec import verification
from specdec.kernels import cpu_linear, reference

ENV_KERNELS = "SPECDEC_KERNELS"  # "auto" (default), "torch" or "triton"
ENV_GEMV_ROWS = "SPECDEC_GEMV_ROWS"  # the most rows the Triton set's fused GEMV takes (0: never; for comparisons)


@dataclass(frozen=True)
class Kernels:
    name: str  # "triton" or "torch"
    linear: Callable[..., torch.Tensor]  # x, weight [N, K], bias -> x @ weight.T + bias
    fused_linear: Callable[..., torch.Tensor]  # a product with its norm, SiLU and residual: reference.fused_linear
    rms_norm: Callable[..., torch.Tensor]
    rope_and_store: Callable[..., torch.Tensor]
    linear_rope_store: Callable[..., torch.Tensor]  # the q/k/v product, RoPE and the KV write: see the reference
    decode_attention: Callable[..., torch.Tensor]
    greedy_verify: Callable[..., verification.Verdict]
    speculative_sample_from_noise: Callable[..., verification.Verdict]
    sampling_probs: Callable[..., torch.Tensor]  # logits, temperature, top_k, top_p -> the sampling distribution
    sampling_race: Callable[..., tuple[torch.Tensor, torch.Tensor]]  # ..., exponentials -> it and the race's token


TORCH_KERNELS = Kernels(
    name="torch",
    linear=cpu_linear.linear,
    fused_linear=reference.fused_linear,
    rms_norm=reference.rms_norm,
    rope_and_store=reference.rope_and_store,
    linear_rope_store=reference.linear_rope_store,
    decode_attention=reference.decode_attention,
    greedy_verify=verification.greedy_verify,
    speculative_sample_from_noise=verification.speculative_sample_from_noise,
    sampling_probs=reference.sampling_probs,
    sampling_race=reference.sampling_race,
)


@cache
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_runs_on(device: torch.device) -> bool:
    if not triton_available():
        return False
    return device.type == "cuda" or (device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1")


@cache
def load_triton_kernels() -> Kernels:
    from specdec.kernels import triton_gemv
    from specdec.kernels import triton_kernels as tk

    gemv_rows = min(int(os.environ.get(ENV_GEMV_ROWS, triton_gemv.MAX_ROWS)), triton_gemv.MAX_ROWS)

    def gemv(x: torch.Tensor, weight: torch.Tensor, *others: torch.Tensor | None) -> bool:
        """Whether the fused GEMV takes this product: a row, or a few rows of a small weight (``triton_gemv``), with
        x and ``others`` (a residual, positions) contiguous as it reads them (else the unfused path copes)."""
        rows = x.shape[0]
        if not (x.is_contiguous() and all(t is None or t.is_contiguous() for t in others)):
            return False
        if rows == 1:
            return gemv_rows >= 1
        return rows <= gemv_rows and weight.numel() * weight.element_size() <= triton_gemv.MULTI_ROW_MAX_WEIGHT_BYTES

    def fused_linear(
        x, weight, bias=None, norm_weight=None, eps=0.0, residual=None, silu_pair=False, *, norm_bias=None,
        gelu=None, transposed=False,
    ):  # fmt: skip
        if not transposed and gemv(x, weight, residual):  # a decoding step's row (or a few, of a small model)
            return triton_gemv.fused_linear(
                x, weight, bias, norm_weight, eps, residual, silu_pair, norm_bias=norm_bias, gelu=gelu
            )
        if transposed or norm_bias is not None or gelu is not None:  # GPT-2's operations, as transformers does them
            return reference.fused_linear(
                x, weight, bias, norm_weight, eps, residual, silu_pair, norm_bias=norm_bias, gelu=gelu,
                transposed=transposed,
            )  # fmt: skip
        h = tk.rms_norm(x, norm_weight, eps) if norm_weight is not None else x
        if residual is not None and bias is None and not silu_pair:  # the add in cuBLAS's epilogue: one kernel
            return torch.addmm(residual, h, weight.t())
        y = F.linear(h, weight, bias)
        if silu_pair:
            y = tk.silu_mul(y)
        return y if residual is None else residual + y

    def linear_rope_store(
        x, weight, bias, norm_weight, eps, positions, cos, sin, cache_k, cache_v, columns, h, h_kv, *,
        norm_bias=None, transposed=False,
    ):  # fmt: skip
        if not transposed and gemv(x, weight, positions):  # one token (or a few, of a small model): one kernel
            return triton_gemv.linear_rope_store(
                x, weight, bias, norm_weight, eps, positions, cos, sin, cache_k, cache_v, columns, h, h_kv,
                norm_bias=norm_bias,
            )  # fmt: skip
        qkv = fused_linear(x, weight, bias, norm_weight, eps, norm_bias=norm_bias, transposed=transposed)
        qkv = qkv.view(*positions.shape, -1)
        return tk.rope_and_store(qkv, positions, cos, sin, cache_k, cache_v, columns, h, h_kv)

    def decode_attention(q, cache_k, cache_v, columns, key_valid, scale, tree=None):
        group = q.shape[2] // cache_k.shape[1]
        if group * q.shape[1] > tk.MAX_ATTENTION_ROWS:  # a long block of queries (prefill, a large tree)
            return reference.sdpa_attention(q, cache_k, cache_v, columns, key_valid, scale, tree)
        return tk.decode_attention(q, cache_k, cache_v, columns, key_valid, scale, tree)

    return Kernels(
        name="triton",
        linear=F.linear,
        fused_linear=fused_linear,
        rms_norm=tk.rms_norm,
        rope_and_store=tk.rope_and_store,
        linear_rope_store=linear_rope_store,
        decode_attention=decode_attention,
        greedy_verify=tk.greedy_verify,
        speculative_sample_from_noise=tk.speculative_sample_from_noise,
        sampling_probs=tk.sampling_probs,
        sampling_race=tk.sampling_race,
    )


def kernels_for(device: torch.device) -> Kernels:
    """Triton where it runs (unless ``SPECDEC_KERNELS=torch``), else the PyTorch references."""
    choice = os.environ.get(ENV_KERNELS, "auto")
    if choice == "torch":
        return TORCH_KERNELS
    if choice == "triton" or triton_runs_on(device):
        if not triton_runs_on(device):
            raise RuntimeError(f"{ENV_KERNELS}=triton, but Triton cannot run on {device} here")
        return load_triton_kernels()
    return TORCH_KERNELS
