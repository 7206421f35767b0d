"""The tensor operations a decode step issues outside the target's and draft's forwards (which a CUDA fast path
replays from graphs): on a GPU each one that computes is a kernel launch of its own, queued between the graphs.

    python scripts/diag/step_ops.py [--k 4] [--temperature 0.8] [--steps 16]

Runs the zoo pair on the CPU (the code path of a CUDA fast path, graphs aside), autoregressive (``--k 0``) or
speculative, and counts the ATen operations issued per step outside the decoders' forwards and chains. Views
(slice, select, unsqueeze, ...) launch nothing; the rest does. On a CPU the end-of-sequence flags are read every
step; ``--deferred`` reads them every ``EOS_CHECK_EVERY`` steps as an accelerator does.
"""

from __future__ import annotations

import argparse
import collections
from collections.abc import Callable
from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode

import specdec.generation as generation_module
from specdec import GenerationConfig, SpeculationConfig, SpeculativeEngine, load_model
from specdec.fast.decoder import FastDecoder

GRAPHED = ("forward", "forward_then", "greedy_chain", "sampled_chain")  # what a CUDA fast path replays
VIEWS = {"slice", "select", "unsqueeze", "reshape", "expand", "view", "numpy_T", "unbind", "resolve_conj",
         "resolve_neg", "new_empty", "empty", "expand_as", "t", "transpose", "alias"}  # fmt: skip


class StepOps(TorchDispatchMode):
    """Counts the operations dispatched while no decoder forward is running."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if self.depth == 0:
            self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def counted(mode: StepOps, method: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        mode.depth += 1
        try:
            return method(*args, **kwargs)
        finally:
            mode.depth -= 1

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--k", type=int, default=0, help="0: autoregressive")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--deferred", action="store_true", help="read EOS flags every EOS_CHECK_EVERY steps")
    args = parser.parse_args()
    if args.deferred:
        generation_module.EOS_EVERY_STEP_DEVICES = ()
    target = load_model("zoo:tiny-code-target", device="cpu", dtype="float32")
    draft = load_model("zoo:tiny-code-draft", device="cpu", dtype="float32") if args.k else None
    engine = SpeculativeEngine(target, draft)
    sampled = args.temperature > 0
    generation = GenerationConfig(
        max_new_tokens=8 * args.steps, temperature=args.temperature, top_p=0.95 if sampled else 1.0
    )
    mode = StepOps()
    for name in GRAPHED:
        setattr(FastDecoder, name, counted(mode, getattr(FastDecoder, name)))
    run = engine.start(["def parse_args("], generation, SpeculationConfig(k=max(args.k, 1)) if args.k else None)
    run.prefill()
    run.step()  # the first step allocates
    with mode:
        for _ in range(args.steps):
            run.step()
    run.close()
    launching = {op: n for op, n in mode.ops.items() if op not in VIEWS}
    print(f"per step, outside the forwards: {sum(mode.ops.values()) / args.steps:.1f} operations, "
          f"{sum(launching.values()) / args.steps:.1f} of them computing (a launch each on a GPU)")  # fmt: skip
    for op, n in sorted(launching.items(), key=lambda item: -item[1]):
        print(f"  {n / args.steps:5.2f}  {op}")


if __name__ == "__main__":
    main()
