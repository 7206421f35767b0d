"""CUDA graphs captured once per shape and replayed with new inputs, and the one event that forces a re-capture.

``CapturedGraphs.run(key, inputs, fn)`` calls ``fn(*inputs)`` for real the first time a key is seen (which also
warms up: Triton compiles, cuBLAS picks its kernels), then captures it; later calls copy the inputs into the
captured ones and replay. The outputs are the graph's own tensors, valid until the next call with that key.

Graphs that torch.compile records (its CUDA-graph trees, which transformers' compiled ``generate`` uses) can leave
ours pointing at memory that is no longer theirs to read: on the H200 (torch 2.11, transformers 5.17) the engine's
next replay after an ``hf-compile`` call hit an illegal memory access, and re-capturing avoided it
(``scripts/diag/hf_compile_bisect.py``: ``recapture`` passes, ``full`` and ``empty-cache`` crash). Code that runs
such graphs calls :func:`invalidate_all`; every ``CapturedGraphs`` then drops its graphs before its next call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

Outputs = tuple[torch.Tensor | None, ...]

_epoch = 0  # bumped by invalidate_all


def invalidate_all() -> None:
    """Every captured graph in this process is re-captured before its next replay."""
    global _epoch
    _epoch += 1


class CapturedGraphs:
    def __init__(self, device: torch.device, enabled: bool, shared_pool: bool = False) -> None:
        """``shared_pool``: every graph allocates from one memory pool, so that many graphs of which one runs at a
        time (a prefill's, one per width) cost the memory of the largest. Replays must then never overlap, which
        they do not on one stream; each graph's outputs stay allocated, so they survive other graphs' replays."""
        self.device = device
        self.enabled = enabled and device.type == "cuda"
        self.shared_pool = shared_pool
        self._pool: Any = None  # torch.cuda.graph_pool_handle(), whose type torch keeps private
        self._graphs: dict[tuple[object, ...], tuple[torch.cuda.CUDAGraph, tuple[torch.Tensor, ...], Outputs]] = {}
        self._epoch = _epoch

    def __len__(self) -> int:
        return len(self._graphs)

    def clear(self) -> None:
        """Drop every graph (they hold the addresses of buffers about to be replaced)."""
        self._graphs.clear()
        self._pool = None

    def run(self, key: tuple[object, ...], inputs: tuple[torch.Tensor, ...], fn: Callable[..., Outputs]) -> Outputs:
        """``fn(*inputs)``, replayed from the graph captured for ``key``; ``fn`` must do device work only (no host
        reads of device values) and return the same tensors' shapes for the same key."""
        if not self.enabled:
            return fn(*inputs)
        if self._epoch != _epoch:
            self.clear()
            self._epoch = _epoch
        entry = self._graphs.get(key)
        if entry is not None:
            graph, static_inputs, static_outputs = entry
            for static, given in zip(static_inputs, inputs, strict=True):
                static.copy_(given)
            graph.replay()
            return static_outputs
        outputs = fn(*inputs)
        static_inputs = tuple(x.clone() for x in inputs)
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        if self.shared_pool and self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        with torch.cuda.graph(graph, pool=self._pool):  # capturing executes nothing, so no state changes here
            static_outputs = fn(*static_inputs)
        self._graphs[key] = (graph, static_inputs, static_outputs)
        return outputs
