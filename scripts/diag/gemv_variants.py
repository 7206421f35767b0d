"""Other shapes of the one-row GEMV against the fused kernel's, on the plain product (no norm, SiLU or residual).

    python scripts/diag/gemv_variants.py

The fused kernel (``specdec.kernels.triton_gemv``) reduces across its inputs after every load of ``BLOCK_K``
inputs. The variant here keeps a ``[BLOCK_N, BLOCK_K]`` float32 accumulator over the whole input and reduces it once
at the end, so that a program's next loads do not wait for a reduction; it is swept over rows per program, inputs
per load, warps and the weights' eviction hint, on the 1B and 8B shapes' products, bf16, one row, timed as in
``gemv_ab.py`` (a CUDA graph of 50 calls over 4 copies of the weight). Prints the fused kernel's time and the five
best variants per product, in us and GB/s of weights read.
"""

# ruff: noqa: B023  (each closure runs inside the iteration that defines it)
from __future__ import annotations

import torch
import triton
import triton.language as tl
from gemv_ab import graph_time_us

PRODUCTS = {  # name: (K inputs, N outputs of the plain product)
    "1b qkv": (2048, 3072), "1b o": (2048, 2048), "1b gate_up": (2048, 16384), "1b down": (8192, 2048),
    "8b qkv": (4096, 6144), "8b gate_up": (4096, 28672), "8b down": (14336, 4096),
}  # fmt: skip


@triton.jit
def _gemv_2d(x_ptr, w_ptr, out_ptr, n_out, k_in, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVICT: tl.constexpr):
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    kk = tl.arange(0, BLOCK_K)
    n_ok = n < n_out
    acc = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
    for k0 in range(0, k_in, BLOCK_K):
        k_ok = (k0 + kk) < k_in
        x = tl.load(x_ptr + k0 + kk, mask=k_ok, other=0.0).to(tl.float32)
        if EVICT:
            w = tl.load(w_ptr + n[:, None] * k_in + k0 + kk[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0,
                        eviction_policy="evict_first")  # fmt: skip
        else:
            w = tl.load(w_ptr + n[:, None] * k_in + k0 + kk[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        acc += w.to(tl.float32) * x[None, :]
    tl.store(out_ptr + n, tl.sum(acc, axis=1).to(out_ptr.dtype.element_ty), mask=n_ok)


def main() -> None:
    from specdec.kernels import triton_gemv as tg

    device, dtype = torch.device("cuda"), torch.bfloat16
    for name, (k_in, n_out) in PRODUCTS.items():
        weights = [torch.randn(n_out, k_in, device=device, dtype=dtype) / k_in**0.5 for _ in range(4)]
        x = torch.randn(1, k_in, device=device, dtype=dtype)
        gb = weights[0].numel() * 2 / 1e9
        expected = (x.float() @ weights[0].float().t()).to(dtype)
        fused = graph_time_us(lambda i: tg.fused_linear(x, weights[i % 4]))
        results = []
        for block_n in (1, 2, 4, 8):
            for block_k in (256, 512, 1024):
                for warps in (1, 2, 4):
                    for evict in (False, True):
                        out = x.new_empty(1, n_out)

                        def run(i, block_n=block_n, block_k=block_k, warps=warps, evict=evict, out=out):
                            _gemv_2d[(triton.cdiv(n_out, block_n),)](
                                x, weights[i % 4], out, n_out, k_in, block_n, block_k, evict, num_warps=warps
                            )

                        try:
                            run(0)
                            error = (out.float() - expected.float()).abs().max().item()
                            results.append((graph_time_us(run), block_n, block_k, warps, evict, error))
                        except Exception as exc:  # a tile too large for the registers
                            print(f"  {name} n{block_n} k{block_k} w{warps}: {type(exc).__name__}", flush=True)
        results.sort()
        best = ", ".join(
            f"{t:.2f}us ({gb / t * 1e6:.0f} GB/s) n{n} k{k} w{w}{' evict' if e else ''} err {err:.1e}"
            for t, n, k, w, e, err in results[:5]
        )
        print(f"{name}: fused {fused:.2f}us ({gb / fused * 1e6:.0f} GB/s); 2d best {best}", flush=True)


if __name__ == "__main__":
    main()
