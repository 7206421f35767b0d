"""The persistent step (``specdec.kernels.triton_persistent``) on CUDA: what a grid barrier costs, and the step
against the fast forward it replaces.

    python scripts/diag/persistent.py barrier              # us per grid barrier, every SM (and half) taking part,
                                                           # a flag-per-program barrier's, the counter with a
                                                           # red arrival, float32 atomic sums
    python scripts/diag/persistent.py step gpt2,1b,8b [quick|early|wide]  # one-token forward: kernels vs one
                                                           # persistent kernel (tiles, stages, warps, the MLP fused,
                                                           # tiles loaded before the barrier, the attention's merge)
    python scripts/diag/persistent.py phases gpt2,1b       # each kind of phase alone, one launch each
    python scripts/diag/persistent.py launches 1b          # for ncu: the decoder's step and each phase, once
    python scripts/diag/persistent.py timeline gpt2,1b [CUT ...]  # each phase inside one launch, by the GPU's timer

``barrier``: a kernel that only passes B barriers, timed in a CUDA graph for B = 0, 16 and 64: the slope is one
barrier's cost. ``step``: the zoo's synthetic shapes in bfloat16 after a 128-token prompt (cache of 1024 columns),
the decoder's one-token step (the fast forward and its bookkeeping) replayed 50 times in a CUDA graph and each
variant 20 times, each call one token further on, as in decoding; first the largest difference of its
logits from the fast forward's and whether the argmax agrees (a variant whose barrier gave up is named, not timed).
``phases``: the same step cut into one launch per phase, each kind of phase (a layer's five, or four with the MLP
fused, and the output layer) launched alone 50 times in a CUDA graph, layer after layer so that the L2 does not
hold the weights: us per phase and the weights' GB/s, to set beside the fast forward's kernels (``gemv_ab.py
kernels``). ``timeline``: the whole step as one launch at each CUT (``PersistentShape`` fields as
SPECDEC_PERSISTENT_SHAPE takes them, "stages=0 warps=8"; none: the default), each program stamping the GPU's global
timer as it starts each phase (``PersistentShape.timeline``): per kind of phase, averaged over the layers and five
launches, the time from the last program's start of the phase to the next phase's start on the slowest, the mean and
the first program (``phase_times``), and the timer's step (its resolution, as seen).
"""

# ruff: noqa: B023  (each closure runs inside the iteration that defines it)
from __future__ import annotations

import dataclasses
import sys

import torch
import triton
import triton.language as tl

from specdec.errors import DeviceError
from specdec.kernels.triton_persistent import (
    OPEN,
    SPIN_LIMIT,
    PersistentShape,
    _grid_leave,
    _grid_sync,
    default_shape,
    parse_shape,
    persistent_step,
    phase_names,
    phase_times,
)

sys.path.insert(0, "scripts/diag")
from gemv_ab import TARGETS, graph_time_us

# Eight warps, tiles of 16384 weights (32 KB in bf16), each read ahead into registers: twice the weights in flight
# per SM of the old default's four warps and 16 KB tiles (compiled for sm_90 with Triton 3.6: 255 registers, 8-80
# bytes of spills; scripts/diag/compile_sm90.py). The default since the seventeenth session.
WIDE = {"warps": 8, "tile_elements": 16384, "head_tile_elements": 16384, "stages": 0}


@triton.jit
def _barriers_kernel(counter_ptr, error_ptr, count):
    nprog = tl.num_programs(0)
    arrivals = 0
    for _ in range(count):
        arrivals += nprog
        _grid_sync(counter_ptr, error_ptr, arrivals, True)
    _grid_leave(counter_ptr, arrivals, nprog, True)


@triton.jit
def _arrive(counter_ptr):
    """One arrival at the counter from the program's first thread as ``red.release.gpu``: a reduction that returns
    nothing, so the first poll after it goes out at once instead of after the atomic's round trip (Triton emits
    ``atom``, which returns the old value, even when it is unused). Returns a dummy 0."""
    return tl.inline_asm_elementwise(
        "{ .reg .pred p; .reg .b32 t; mov.u32 t, %tid.x; setp.eq.u32 p, t, 0; "
        "@p red.release.gpu.global.add.u32 [$1], 1; mov.b32 $0, 0; }",
        "=r,l", [counter_ptr], dtype=tl.int32, is_pure=False, pack=1,
    )  # fmt: skip


@triton.jit
def _poll(counter_ptr, nprog, EVERY_THREAD: tl.constexpr):
    """The counter as each thread's own acquire load (EVERY_THREAD), or as the step's barrier reads it."""
    if EVERY_THREAD:
        return _load_acquire(counter_ptr, nprog > 0)
    return tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")


@triton.jit
def _red_barriers_kernel(counter_ptr, error_ptr, count, EVERY_THREAD: tl.constexpr):
    """``count`` barriers as the step's (the counter, ``_grid_sync``) but arriving with ``_arrive``; EVERY_THREAD:
    each thread polls with its own acquire load (no broadcast through shared memory and two ``bar.sync`` per poll),
    else the first thread polls as ``_grid_sync`` does."""
    nprog = tl.num_programs(0)
    arrivals = 0
    for _ in range(count):
        arrivals += nprog
        tl.debug_barrier()
        _arrive(counter_ptr)
        seen = _poll(counter_ptr, nprog, EVERY_THREAD)
        polls = 0
        while (seen < arrivals) & (polls < SPIN_LIMIT):
            seen = _poll(counter_ptr, nprog, EVERY_THREAD)
            polls += 1
        if seen < arrivals:
            tl.atomic_add(error_ptr, 1)
            tl.atomic_or(counter_ptr, OPEN)
        tl.debug_barrier()
    _grid_leave(counter_ptr, arrivals, nprog, True)


@triton.jit
def _load_acquire(pointers, mask):
    """ld.acquire.gpu of each pointer where mask holds, else the largest int32 (Triton has no acquire load)."""
    return tl.inline_asm_elementwise(
        "{ .reg .pred p; setp.ne.b32 p, $2, 0; @p ld.global.acquire.gpu.b32 $0, [$1]; @!p mov.b32 $0, 2147483647; }",
        "=r,l,r", [pointers, mask.to(tl.int32)], dtype=tl.int32, is_pure=False, pack=1,
    )  # fmt: skip


@triton.jit
def _flag_barriers_kernel(flags_ptr, error_ptr, count, P_PAD: tl.constexpr):
    """``count`` barriers of another kind, for comparison: each program publishes its epoch in its own flag (a release
    store, no contended counter) and polls every program's flag (acquire loads) until all have reached it. Epochs go
    on from launch to launch (a program's flag holds the last one), so nothing is reset."""
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    others = tl.arange(0, P_PAD)
    base = tl.load(flags_ptr + pid)
    polls_left = tl.where(tl.load(error_ptr) > 0, 0, 65536)  # after a give-up (this launch or one before): no waits
    for epoch in range(1, count + 1):
        tl.debug_barrier()
        tl.atomic_xchg(flags_ptr + pid, base + epoch, sem="release", scope="gpu")
        lag = tl.min(_load_acquire(flags_ptr + others, others < nprog) - (base + epoch), axis=0)
        polls = 0
        while (lag < 0) & (polls < polls_left):
            lag = tl.min(_load_acquire(flags_ptr + others, others < nprog) - (base + epoch), axis=0)
            polls += 1
        if lag < 0:
            tl.atomic_add(error_ptr, 1)
            polls_left = 0
        tl.debug_barrier()


@triton.jit
def _accumulate_kernel(out_ptr, count, D: tl.constexpr, D_PAD: tl.constexpr):
    """Every program adds a [D] float32 vector into out ``count`` times (float32 atomics): what a split-K product
    summed across programs (an MLP fused into one phase) would cost instead of a barrier."""
    d = tl.arange(0, D_PAD)
    x = (d + tl.program_id(0)).to(tl.float32) * 1e-3
    for _ in range(count):
        tl.atomic_add(out_ptr + d, x, mask=d < D, sem="relaxed", scope="gpu")


def barrier() -> None:
    """The grid barrier's cost (the counter the step uses, and a flag per program), and float32 atomic sums."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    counter = torch.zeros(2, dtype=torch.int32, device="cuda")
    flags = torch.zeros(sms + 1, dtype=torch.int32, device="cuda")  # the last: the flag barrier's error count
    for programs in (sms, sms // 2):
        for name, run in (
            ("counter", lambda count: _barriers_kernel[(programs,)](counter, counter[1:], count, num_warps=4)),
            ("flags", lambda count: _flag_barriers_kernel[(programs,)](
                flags, flags[sms:], count, triton.next_power_of_2(sms), num_warps=4)),
            ("counter, red arrival", lambda count: _red_barriers_kernel[(programs,)](
                counter, counter[1:], count, False, num_warps=4)),
            ("counter, red arrival, every thread polls", lambda count: _red_barriers_kernel[(programs,)](
                counter, counter[1:], count, True, num_warps=4)),
        ):  # fmt: skip
            times = {count: graph_time_us(lambda i: run(count)) for count in (0, 16, 64)}
            slope = (times[64] - times[16]) / 48
            failed = bool(counter[1].item()) or bool(flags[sms].item())
            print(f"barrier ({name}): {programs} programs: launch {times[0]:.2f} us, 16 barriers "
                  f"{times[16]:.2f} us, 64 {times[64]:.2f} us: {slope:.3f} us per barrier; failed {failed}",
                  flush=True)  # fmt: skip
    for width in (768, 2048, 4096):
        out = torch.zeros(width, dtype=torch.float32, device="cuda")
        times = {
            count: graph_time_us(
                lambda i: _accumulate_kernel[(sms,)](out, count, width, triton.next_power_of_2(width), num_warps=4)
            )
            for count in (0, 1, 8)
        }
        print(f"atomics: {sms} programs each adding [{width}] float32: launch {times[0]:.2f} us, once "
              f"{times[1]:.2f} us, 8 times {times[8]:.2f} us ({(times[8] - times[1]) / 7:.3f} us per sum)",
              flush=True)  # fmt: skip


def prepared(shape_name: str):
    """A fast decoder of the shape after a 128-token prompt, and the next token."""
    from specdec import load_model
    from specdec.fast.decoder import FastDecoder

    decoder = FastDecoder(load_model(TARGETS[shape_name], device="cuda", dtype="bfloat16"), use_graphs=False)
    prompt = torch.randint(0, 32000, (1, 129), generator=torch.Generator().manual_seed(0)).cuda()
    decoder.prepare(torch.zeros(1, dtype=torch.long), None, 1024)
    decoder.forward(prompt[:, :128], last_only=True)
    return decoder, prompt[:, 128:]


def phases() -> None:
    for shape_name in sys.argv[2].split(",") if len(sys.argv) > 2 else ["gpt2"]:
        decoder, token = prepared(shape_name)
        fast = decoder.model
        tables = (fast.cos_table, fast.sin_table) if fast.family == "llama" else ()
        layers = fast.num_layers
        for shape in (
            PersistentShape(phase_launches=True),
            PersistentShape(phase_launches=True, fused_mlp=True),
            PersistentShape(phase_launches=True, stages=0),
            PersistentShape(phase_launches=True, stages=0, fused_mlp=True),
            PersistentShape(phase_launches=True, stages=0, programs_per_sm=2),
            PersistentShape(phase_launches=True, **WIDE),
            PersistentShape(phase_launches=True, fused_mlp=True, mlp_tile_elements=8192, **WIDE),
            PersistentShape(phase_launches=True, merge_in_attention=True, max_splits=8, **WIDE),
        ):
            step = persistent_step(fast, shape)
            per_layer = shape.phases_per_layer
            chosen = [0]
            step.launches = lambda num_layers: ([(chosen[0], chosen[0] + 1)], False)
            length = torch.tensor(128, device="cuda")
            args = (token, length, decoder._positions, decoder._key_valid, decoder._cache, layers, *tables)
            weights = {  # bytes per phase kind
                name: sum(t.numel() * t.element_size() for t in tensors) / layers
                for name, tensors in phase_weights(step, per_layer).items()
            }
            for kind, name in enumerate([*phase_names(per_layer), "output layer"]):

                def one(i):
                    chosen[0] = (
                        1 + per_layer * layers if name == "output layer" else 1 + per_layer * (i % layers) + kind
                    )
                    step(*args)

                us = graph_time_us(one)
                rate = f", {weights[name] / us / 1e3:.0f} GB/s" if weights.get(name) else ""
                print(f"phases {shape_name}: {shape}: {name} {us:.2f} us{rate}", flush=True)
        torch.cuda.empty_cache()


def launches() -> None:
    """For a profiler (``ncu --profile-from-start off``; PARTS=ncu of persistent_check.sh): after a warm-up, one
    token's step over the decoder's kernels, then each kind of phase of the persistent step at the cut
    SPECDEC_PERSISTENT_SHAPE names (layer 1's phases and the output layer, one launch each), between
    cudaProfilerStart and cudaProfilerStop."""
    shape_name = sys.argv[2] if len(sys.argv) > 2 else "1b"
    decoder, token = prepared(shape_name)
    fast = decoder.model
    tables = (fast.cos_table, fast.sin_table) if fast.family == "llama" else ()
    shape = dataclasses.replace(default_shape(), phase_launches=True)
    step = persistent_step(fast, shape)
    per_layer = shape.phases_per_layer
    chosen = [1 + per_layer + kind for kind in range(per_layer)] + [1 + per_layer * fast.num_layers]
    phase = [0]
    step.launches = lambda num_layers: ([(phase[0], phase[0] + 1)], False)
    length = torch.tensor(128, device="cuda")
    args = (token, length, decoder._positions, decoder._key_valid, decoder._cache, fast.num_layers, *tables)

    def run_all() -> None:
        decoder._forward(token, True)
        for phase[0] in chosen:
            step(*args)

    run_all()  # compiles
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    run_all()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()
    print(f"launches {shape_name}: the decoder's step, then phases {chosen} of {shape}", flush=True)


def phase_weights(step, per_layer: int) -> dict[str, list[torch.Tensor]]:
    """The weights each kind of phase reads, over all layers (the output layer's once per layer, to divide alike)."""
    layers = step.stack.qkv.shape[0]
    head = step.lm_head if hasattr(step, "lm_head") else step.model.lm_head
    s = step.stack
    if hasattr(s, "gate_up"):
        mlp = {"mlp in": [s.gate_up], "mlp out": [s.down]}
    else:
        mlp = {"mlp in": [s.fc], "mlp out": [step.proj]}
    found = {"q/k/v": [s.qkv], "o": [s.o], **mlp, "output layer": [head] * layers}
    if per_layer == 4:
        found["mlp"] = found.pop("mlp in") + found.pop("mlp out")
    return found


def step() -> None:
    for shape_name in sys.argv[2].split(",") if len(sys.argv) > 2 else ["gpt2"]:
        decoder, token = prepared(shape_name)
        fast = decoder.model
        cache = decoder._cache
        columns = torch.tensor([128], device="cuda")
        positions = decoder._positions.index_select(1, columns)
        tables = (fast.cos_table, fast.sin_table) if fast.family == "llama" else ()
        expected = fast.run(token, columns, positions, decoder._key_valid, cache, True)[0].float()
        # The decoder's step: its column and position lookups, the fast forward, the length's advance, float logits.
        base = graph_time_us(lambda i: decoder._forward(token, True))
        print(f"step {shape_name}: kernels (the decoder's step over the fast forward) {base:.1f} us", flush=True)
        variants = [PersistentShape(), PersistentShape(phase_launches=True)]
        variants += [PersistentShape(stages=n) for n in (1, 4)] + [PersistentShape(warps=8)]
        variants += [PersistentShape(programs_per_sm=2), PersistentShape(max_splits=8)]
        variants += [PersistentShape(block_keys=n) for n in (32, 64)]
        variants += [PersistentShape(fused_mlp=True, mlp_tile_elements=n) for n in (2048, 4096, 8192)]
        variants += [
            PersistentShape(tile_elements=4096),
            PersistentShape(tile_elements=16384, head_tile_elements=16384),
        ]
        if shape_name == "gpt2":
            variants += [PersistentShape(split_keys=128), PersistentShape(programs=66)]
        if len(sys.argv) > 3 and sys.argv[3] == "quick":  # the default, one launch per phase, the fused MLP
            variants = [PersistentShape(), PersistentShape(phase_launches=True), PersistentShape(fused_mlp=True)]
        if len(sys.argv) > 3 and sys.argv[3] == "early":  # tiles loaded before the barrier, with the best of before
            fused = {"mlp_tile_elements": 4096, "fused_mlp": True}
            variants = [
                PersistentShape(),
                PersistentShape(early_tiles=2),
                PersistentShape(early_tiles=4, tile_elements=4096),
                PersistentShape(early_tiles=2, programs_per_sm=2),
                PersistentShape(early_tiles=2, max_splits=8),
                PersistentShape(early_tiles=2, **fused),
                PersistentShape(early_tiles=2, programs_per_sm=2, max_splits=8, **fused),
                # No pipelined loop: each tile's successor read into registers while the tile is multiplied.
                PersistentShape(stages=0),
                PersistentShape(stages=0, early_tiles=2),
                PersistentShape(stages=0, programs_per_sm=2),
                PersistentShape(stages=0, early_tiles=2, **fused),
                PersistentShape(stages=0, programs_per_sm=2, max_splits=8, **fused),
            ]
        if len(sys.argv) > 3 and sys.argv[3] == "wide":  # more weights in flight per SM; the merge in attention
            variants = [
                PersistentShape(),
                PersistentShape(stages=0),
                PersistentShape(stages=0, programs_per_sm=2),
                PersistentShape(merge_in_attention=True),
                PersistentShape(merge_in_attention=True, max_splits=8),
                PersistentShape(**WIDE),
                PersistentShape(max_splits=8, **WIDE),
                PersistentShape(merge_in_attention=True, max_splits=8, **WIDE),
                PersistentShape(merge_in_attention=True, max_splits=8, fused_mlp=True, mlp_tile_elements=8192, **WIDE),
                PersistentShape(warps=8, tile_elements=16384, head_tile_elements=16384),
            ]
        for shape in variants:
            step = persistent_step(fast, shape)
            length = torch.tensor(128, device="cuda")  # advanced by every call, as the decoder's is
            args = (token, length, decoder._positions, decoder._key_valid, cache, fast.num_layers, *tables)
            try:
                got = step(*args).float()
            except DeviceError as gave_up:  # a barrier gave up (the first launch reads the flag)
                print(f"step {shape_name}: {shape}: {gave_up}; not timed", flush=True)
                continue
            error = (got - expected).abs().max().item()
            same = bool((got.argmax() == expected.argmax()).item())
            us = graph_time_us(lambda i: step(*args), calls=20)
            regs, spills = (getattr(step.compiled, name, "?") for name in ("n_regs", "n_spills"))
            print(f"step {shape_name}: {shape}: {us:.1f} us ({base / us:.2f}x), max |logit diff| {error:.4f}, "
                  f"same argmax {same}, failed {step.failed()}, {regs} registers, {spills} spilled",
                  flush=True)  # fmt: skip
        torch.cuda.empty_cache()


def timeline() -> None:
    cuts = sys.argv[3:] or [""]
    for shape_name in sys.argv[2].split(",") if len(sys.argv) > 2 else ["gpt2"]:
        decoder, token = prepared(shape_name)
        fast = decoder.model
        tables = (fast.cos_table, fast.sin_table) if fast.family == "llama" else ()
        for cut in cuts:
            shape = parse_shape(cut, "persistent.py timeline", timeline=True)
            step = persistent_step(fast, shape)
            length = torch.tensor(128, device="cuda")
            args = (token, length, decoder._positions, decoder._key_valid, decoder._cache, fast.num_layers, *tables)
            runs = []
            for launch in range(7):  # two to compile and warm up, five stamped
                length.fill_(128)
                step(*args)
                torch.cuda.synchronize()
                if launch >= 2:
                    runs.append(step.timeline.clone())
            per_layer = shape.phases_per_layer
            times = [phase_times(stamps, per_layer) for stamps in runs]
            label = f"timeline {shape_name} {cut or 'default'}"
            for kind in zip(*times, strict=True):
                wall, mean, first = (sum(getattr(t, f) for t in kind) / len(kind) for f in ("wall", "mean", "first"))
                print(f"{label}: {kind[0].name}: wall {wall:.2f} us, mean {mean:.2f}, first {first:.2f}", flush=True)
            totals = [(stamps[-1].max() - stamps[0].min()).item() / 1e3 for stamps in runs]
            steps = torch.cat([stamps.flatten().sort().values.diff() for stamps in runs])
            print(f"{label}: whole launch {sum(totals) / len(totals):.1f} us (first start to last end); timer step "
                  f"{steps[steps > 0].min().item()} ns; barriers gave up: {step.failed()}", flush=True)  # fmt: skip
        torch.cuda.empty_cache()


if __name__ == "__main__":
    modes = {"barrier": barrier, "step": step, "phases": phases, "launches": launches, "timeline": timeline}
    modes[sys.argv[1]]()
