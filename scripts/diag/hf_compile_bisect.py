"""Diagnostic (device): the sequence that ends in an illegal memory access (the zoo pair on the fast path, then
hf-static and hf-compile interleaved with the engine on a tiny Llama), with one ingredient removed per variant.

    python scripts/diag/hf_compile_bisect.py            # every variant in a process of its own, a line each
    python scripts/diag/hf_compile_bisect.py VARIANT    # one variant (exit status 0: it passed)
    python scripts/diag/hf_compile_bisect.py A,B,C      # these variants, each in a process of its own

Measured on the H200 (torch 2.11, transformers 5.17), 2026-12-03, before the fix: full, no-zoo-pair and
gc-after-zoo crash (in the engine's CUDA-graph replay after hf-compile's first call); no-engine-graphs,
no-inductor-graphs and no-static pass; of the candidate mitigations, recapture (the engine drops its graphs after
each hf-compile call) passes and empty-cache crashes. HFEngine now does what recapture does
(specdec.fast.graphs.invalidate_all after every hf-compile call), so every variant should pass but no-invalidate
(the fix undone); tests/test_gpu_hf.py runs no-zoo-pair."""

import subprocess
import sys
import time

VARIANTS = [
    "full",
    "no-zoo-pair",
    "no-engine-graphs",
    "no-inductor-graphs",
    "no-static",
    "gc-after-zoo",
    "recapture",  # candidate mitigation: the engine drops its graphs after each hf-compile call (re-captured next)
    "empty-cache",  # torch.cuda.empty_cache() after each hf-compile call
    "no-invalidate",  # the fix undone: hf-compile leaves the engine's graphs in place (expected to crash)
]


def run(variant: str) -> None:
    import gc

    import torch
    import transformers

    sys.path.insert(0, "tests")
    from tiny_models import loaded, make_model

    import specdec.fast.decoder as fast_decoder
    from specdec import GenerationConfig, SpeculationConfig, SpeculativeEngine, load_model
    from specdec.config import AcceptanceConfig
    from specdec.hf_engine import HFEngine

    if variant == "no-invalidate":
        import specdec.hf_engine

        specdec.hf_engine.invalidate_all = lambda: None  # type: ignore[assignment]
    if variant == "no-engine-graphs":
        original = fast_decoder.FastDecoder.__init__

        def no_graphs(self, loaded, vocab_size=None, use_graphs=None, model=None):
            original(self, loaded, vocab_size, False, model)

        fast_decoder.FastDecoder.__init__ = no_graphs
    compile_config = (
        transformers.CompileConfig(dynamic=False, mode="max-autotune-no-cudagraphs")
        if variant == "no-inductor-graphs"
        else None
    )
    torch.backends.cuda.matmul.allow_tf32 = False
    if variant != "no-zoo-pair":
        target = load_model("zoo:tiny-code-target", device="cuda", dtype="float32")
        draft = load_model("zoo:tiny-code-draft", device="cuda", dtype="float32")
        engine = SpeculativeEngine(target, draft)
        generation = GenerationConfig(max_new_tokens=256, stop_at_eos=False)
        engine.generate(
            "def parse_args(argv):\n    ",
            generation,
            SpeculationConfig(k=4, acceptance=AcceptanceConfig(policy="synthetic", acceptance_rate=0.7)),
        )
        print("  zoo pair ok", flush=True)
        del engine, target, draft
        if variant == "gc-after-zoo":
            gc.collect()
            torch.cuda.synchronize()
    lm = loaded(make_model("llama", seed=3, layers=2).cuda(), "llama")
    target = type(lm)(
        name="llama", model=lm.model, tokenizer=None, device=torch.device("cuda"), dtype=torch.float32, source="local"
    )
    base = [5, 17, 99, 240, 31, 8]
    prompts = [base, base * 3, base[:2], base * 40]
    fixed = GenerationConfig(max_new_tokens=24, stop_at_eos=False)
    ours = SpeculativeEngine(target)
    want = [ours.generate(p, fixed).token_ids for p in prompts]
    modes = ("hf-compile",) if variant == "no-static" else ("hf-static", "hf-compile")
    for mode in modes:
        hf = HFEngine(target, mode, compile_config=compile_config if mode == "hf-compile" else None)
        for call in range(3):
            for p, expected in zip(prompts, want, strict=True):
                assert hf.generate(p, fixed).token_ids == expected
                torch.cuda.synchronize()
                if mode == "hf-compile" and variant == "recapture":
                    ours.target._graphs.clear()  # type: ignore[attr-defined]
                if mode == "hf-compile" and variant == "empty-cache":
                    torch.cuda.empty_cache()
                assert ours.generate(p, fixed).token_ids == expected
                torch.cuda.synchronize()
            print(f"  {mode} round {call} ok", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and "," not in sys.argv[1]:
        run(sys.argv[1])
        sys.exit(0)
    for variant in sys.argv[1].split(",") if len(sys.argv) > 1 else VARIANTS:
        started = time.time()
        done = subprocess.run([sys.executable, __file__, variant], capture_output=True, text=True, timeout=150)
        crashed = "illegal memory access" in done.stderr + done.stdout
        oks = [line.strip() for line in done.stdout.splitlines() if line.strip()]
        print(
            f"{variant:22s} rc={done.returncode} {'CRASH' if crashed else ''} last ok: {oks[-1] if oks else '-'} "
            f"{time.time() - started:.0f}s {done.stderr.strip().splitlines()[-1:] if done.returncode else ''}",
            flush=True,
        )
