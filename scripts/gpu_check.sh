#!/usr/bin/env bash
# The GPU check in two device calls. The first (the default parts, about 9 of its 10 minutes): the kernel, fast-path
# and sampling tests on CUDA (up to 300 s: on 2026-12-05 the kernel and GPU tests alone took 208 s on an H100, most of
# it Triton compiling; on 2026-12-06 the list with the drafter and transformers tests ran past 314 s, so those two
# files run in PARTS=drafters and PARTS=harness/engines only) and the GPU speed report at issue 5's bar (the 1B, 8B
# and GPT-2 shapes autoregressive; the 8B + 116M pair at K=4 at two acceptance levels, against HF). The second,
# PARTS=suite: the h100 benchmark suite through the pytest plugin without its slow 8B case.
# PARTS=bars (its own call, issue 13's bars; 372 s on an H100 on 2026-12-05, 194 s on 2026-12-06): the speed report
# without pairs (the 1B, 8B and GPT-2 shapes against their floors, sampled against greedy, against hf-static and
# hf-compile), batched speculation on the 8B shape at batches 1-128 at a synthetic acceptance of 0.8 (the speedup at
# each batch and the crossover) and the zoo pair sampled, speculative against autoregressive (bfloat16 and float32).
# PARTS=drafters (its own call): every drafting method on CUDA (exactness tests, the drafters-gpu suite with its
# baselines written to $OUT/baselines, and the drafters benchmark on the 1B shape against transformers).
# PARTS=harness (its own call, issue 11): the synthetic-acceptance and transformers tests on CUDA, the 8B-shaped
# synthetic acceptance sweep (acceptance 0.5..0.95 x K 2..8) and the engines-gpu suite on the 1B shape at K 4
# (specdec, hf-static, hf-compile, hf-assisted, hf-lookup), each with its JSON, HTML report and log in $OUT.
# PARTS=engines: harness without the synthetic sweep (the CUDA tests of the harness and the engines-gpu suite).
# PARTS=heads (its own call, issue 12): Medusa and EAGLE chains and trees on CUDA in float32 (tests/test_gpu_heads.py,
# with the Triton kernels' tests, tree attention included),
# the cost of EAGLE-3 drafting and of verifying 16/32/64-node trees on the 8B shape with the speed at a synthetic
# acceptance length of 4 (python -m specdec.benchmarks.heads), and the heads recipe on the GPU into $OUT/heads-recipe
# (HEADS_RECIPE_ARGS sets its budget; the shipped zoo heads are not touched).
# PARTS=serving (issue 14): the serving-gpu suite (specdec serve on the 1B shape with its draft against the same server
# without it, concurrency 1, 4 and 16), its JSON, markdown and the servers' logs (a tar) in $OUT. starlette and
# uvicorn are not on the device's image: carry them as wheels (.whl, see /work/.library/device/README.md) and put
# them on PYTHONPATH before this part.
# PARTS=batching (issue 14): continuous batching (requests joining a running slot batch) on the CUDA fast path in
# float32 (tests/test_gpu_continuous_batching.py).
# PARTS=ahead (issue 13): draft models drafting ahead (SPECDEC_DRAFT_AHEAD=1, the default), the speculative exactness
# tests on CUDA with it on and the zoo pair sampled with it off and on (scripts/diag/zoo_sampled.py, two rounds).
# PARTS=zoo (issue 13, its own call, about 6 minutes estimated): what the zoo pair's sampled step is made of: the
# one-program sampling kernel's digit widths and warps (scripts/diag/sampling_cost.py --small), then the zoo pair
# sampled by default, with the one-row GEMV only (SPECDEC_GEMV_ROWS=1) and without drafting ahead
# (SPECDEC_DRAFT_AHEAD=0), in turn, two rounds; then the profile of its speculative and autoregressive steps
# (scripts/diag/profile_steps.py, bf16) into $OUT/profile.
# PARTS=hfdiag (issue 11): the hf-compile crash's reproduction and its candidate mitigations
# (scripts/diag/hf_compile_bisect.py full,recapture,empty-cache), a line per variant in $OUT/hfdiag.log.
# Logs and JSON go to $OUT (default results/gpu). Each part stops itself (SIGINT) before the call's limit and keeps
# what it measured.
#
#   bash scripts/gpu_check.sh                                  # the tests and the report (first call)
#   PARTS=suite bash scripts/gpu_check.sh                      # the h100 suite (second call)
#   PARTS=bars bash scripts/gpu_check.sh                       # issue 13's bars (a call of its own)
#   BENCH_ARGS="" LIMIT=570 PARTS=bench bash scripts/gpu_check.sh   # the full report: all pairs, K 2,4,6, sampled
#   SUITE_ARGS="" LIMIT=570 PARTS=suite bash scripts/gpu_check.sh   # the whole h100 suite, 8B case included
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu}
PARTS=${PARTS:-"tests bench"}
PAIR="zoo:synthetic/llama-3.1-8b@mix=MIX+zoo:synthetic/llama-3-draft-116m@mix=MIX"
BENCH_ARGS=${BENCH_ARGS-"--pairs ${PAIR//MIX/0.45},${PAIR//MIX/0.5} --ks 4 --temperatures 0"}
SUITE_ARGS=${SUITE_ARGS-"-m 'not slow'"}
LIMIT=${LIMIT:-}  # seconds for each part (default: 300 tests, 230 report, 220 suite)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1
status=0

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"

if [[ " $PARTS " == *" tests "* ]]; then
  timeout -s INT "${LIMIT:-300}" python3 -m pytest tests/test_kernels.py tests/test_gpu.py tests/test_fast_path.py \
    tests/test_prefill_attention.py tests/test_gpu_sampling.py -q -p no:cacheprovider -rs 2>&1 \
    | tee "$OUT/tests.log" || status=1
fi
if [[ " $PARTS " == *" bench "* ]]; then
  eval timeout -s INT "${LIMIT:-230}" python3 -m specdec.benchmarks.gpu --out "$OUT" "$BENCH_ARGS" 2>&1 | tee "$OUT/bench.log" \
    || status=1
fi
if [[ " $PARTS " == *" bars "* ]]; then
  timeout -s INT "${LIMIT:-330}" python3 -m specdec.benchmarks.gpu --out "$OUT" --pairs "" 2>&1 | tee "$OUT/bench.log" \
    || status=1
  timeout -s INT "${LIMIT:-150}" python3 -m specdec.benchmarks.batching --device cuda --dtype bfloat16 \
    --batches 1,4,16,64,128 --repeats 2 --acceptance-rate 0.8 --out "$OUT/batching" 2>&1 | tee "$OUT/batching.log" \
    || status=1
  timeout -s INT "${LIMIT:-150}" python3 scripts/diag/zoo_sampled.py --device cuda --dtypes bfloat16,float32 2>&1 \
    | tee "$OUT/zoo-sampled.log" || status=1
fi
if [[ " $PARTS " == *" suite "* ]]; then
  eval timeout -s INT "${LIMIT:-220}" python3 -m pytest --specdec-suite h100 "$SUITE_ARGS" -p no:cacheprovider \
    --benchmark-json "$OUT/h100-suite.json" --specdec-report-json "$OUT/h100-summary.json" \
    2>&1 | tee "$OUT/h100-suite.log" || status=1
fi
if [[ " $PARTS " == *" drafters "* ]]; then
  timeout -s INT "${LIMIT:-100}" python3 -m pytest tests/test_gpu_drafters.py tests/test_gpu.py -q -p no:cacheprovider \
    -rs 2>&1 | tee "$OUT/drafters-tests.log" || status=1
  DRAFT_PAIR="--target zoo:synthetic/llama-3.2-1b@mix=0.3 --draft zoo:synthetic/llama-3-draft-116m@mix=0.3"
  timeout -s INT "${LIMIT:-200}" python3 -m specdec.benchmarks.drafters --device cuda --dtype bfloat16 $DRAFT_PAIR \
    --layers 2,4,8 --ks 2,4,8 --count 3 --repeats 2 --max-new-tokens 128 --out "$OUT" 2>&1 | tee "$OUT/drafters-bench.log" || status=1
  timeout -s INT "${LIMIT:-240}" python3 -m pytest --specdec-suite drafters-gpu --specdec-update-baselines \
    --specdec-baselines-dir "$OUT/baselines" -p no:cacheprovider --specdec-report-json "$OUT/drafters-gpu-summary.json" \
    2>&1 | tee "$OUT/drafters-gpu-suite.log" || status=1
fi
if [[ " $PARTS " == *" harness "* || " $PARTS " == *" engines "* ]]; then
  timeout -s INT "${LIMIT:-100}" python3 -m pytest tests/test_synthetic_acceptance.py tests/test_gpu_hf.py \
    tests/test_hf_engine.py tests/plugin/test_saved_runs.py -k "cuda or gpu or fast_path or synthetic or cache" -q \
    -p no:cacheprovider -rs > "$OUT/harness-tests.log" 2>&1 || status=1
fi
if [[ " $PARTS " == *" harness "* ]]; then
  timeout -s INT "${LIMIT:-200}" python3 -m pytest --specdec-suite synthetic-acceptance-gpu -k llama-8b -p no:cacheprovider \
    --specdec-report-json "$OUT/synthetic.json" --specdec-report-html "$OUT/synthetic.html" 2>&1 \
    | grep -v "^tests\|^bench_suites" | tail -60 > "$OUT/synthetic.log" || status=1
fi
if [[ " $PARTS " == *" harness "* || " $PARTS " == *" engines "* ]]; then
  timeout -s INT "${LIMIT:-180}" python3 -m pytest --specdec-suite engines-gpu -m "not slow" -k "not k2" \
    -p no:cacheprovider --specdec-report-json "$OUT/engines.json" --specdec-report-html "$OUT/engines.html" \
    --specdec-report-md "$OUT/engines.md" 2>&1 | tail -60 > "$OUT/engines.log" || status=1
fi
if [[ " $PARTS " == *" heads "* ]]; then
  timeout -s INT "${LIMIT:-150}" python3 -m pytest tests/test_gpu_heads.py tests/test_kernels.py -v -p no:cacheprovider \
    -rs --durations=10 2>&1 | tee "$OUT/heads-tests.log" || status=1
  timeout -s INT "${LIMIT:-200}" python3 -m specdec.benchmarks.heads --device cuda --dtype bfloat16 --out "$OUT" \
    2>&1 | tee "$OUT/heads-bench.log" || status=1
  eval timeout -s INT "${LIMIT:-220}" python3 -m specdec.zoo.recipe.heads --device cuda --out "$OUT/heads-recipe" \
    "${HEADS_RECIPE_ARGS-"--greedy-rows 2048 --eagle-steps 4800"}" 2>&1 | tail -40 > "$OUT/heads-recipe.log" || status=1
fi
if [[ " $PARTS " == *" serving "* ]]; then
  timeout -s INT "${LIMIT:-240}" python3 -m pytest --specdec-suite serving-gpu -p no:cacheprovider --basetemp /tmp/serving \
    --specdec-report-json "$OUT/serving.json" --specdec-report-md "$OUT/serving.md" 2>&1 | tail -40 > "$OUT/serving.log" \
    || status=1
  tar -C /tmp/serving -cf "$OUT/serving-logs.tar" specdec-serve 2>/dev/null
fi
if [[ " $PARTS " == *" batching "* ]]; then
  timeout -s INT "${LIMIT:-90}" python3 -m pytest tests/test_gpu_continuous_batching.py -v -p no:cacheprovider -rs \
    2>&1 | tee "$OUT/batching-tests.log" || status=1
fi
if [[ " $PARTS " == *" ahead "* ]]; then
  # draft models drafting ahead (SPECDEC_DRAFT_AHEAD=1): the speculative exactness tests with it on, then the zoo pair
  # sampled with it off and on in turn, two rounds
  SPECDEC_DRAFT_AHEAD=1 timeout -s INT "${LIMIT:-200}" python3 -m pytest tests/test_gpu.py -q -p no:cacheprovider -rs \
    -k "ahead or zoo_pair or speculative_equals" 2>&1 | tee "$OUT/ahead-tests.log" || status=1
  for round in 1 2; do
    for on in 0 1; do
      SPECDEC_DRAFT_AHEAD=$on timeout -s INT "${LIMIT:-60}" python3 scripts/diag/zoo_sampled.py --device cuda \
        --dtypes bfloat16 2>&1 | sed "s/^/round $round, ahead $on: /" | tee -a "$OUT/ahead-zoo.log" || status=1
    done
  done
fi
if [[ " $PARTS " == *" zoo "* ]]; then
  timeout -s INT "${LIMIT:-60}" python3 scripts/diag/sampling_cost.py --small 2>&1 | tee "$OUT/sampling-small.log" \
    || status=1
  for round in 1 2; do
    for variant in default SPECDEC_GEMV_ROWS=1 SPECDEC_DRAFT_AHEAD=0; do
      settings=()
      [[ $variant != default ]] && settings=("$variant")
      env "${settings[@]}" timeout -s INT "${LIMIT:-90}" python3 scripts/diag/zoo_sampled.py --device cuda \
        --dtypes bfloat16 2>&1 | sed "s/^/round $round, $variant: /" | tee -a "$OUT/zoo.log" || status=1
    done
  done
  mkdir -p "$OUT/profile"
  timeout -s INT "${LIMIT:-120}" python3 scripts/diag/profile_steps.py --out "$OUT/profile" \
    --runs zoo-sampled,zoo-sampled-ar --zoo-dtype bfloat16 --max-new-tokens 128 > "$OUT/profile.log" 2>&1 || status=1
  grep -h -A12 "tokens/s unprofiled" "$OUT"/profile/*.txt | cut -c1-150
fi
if [[ " $PARTS " == *" hfdiag "* ]]; then
  timeout -s INT "${LIMIT:-300}" python3 scripts/diag/hf_compile_bisect.py "${HF_VARIANTS:-full,recapture,empty-cache}" \
    2>&1 | tee "$OUT/hfdiag.log" || status=1
fi
exit $status
