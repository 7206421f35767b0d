#!/usr/bin/env bash
# The whole GPU check in one device call: kernel and fast-path tests on CUDA, the GPU speed report, and the h100
# benchmark suite through the pytest plugin. Logs and JSON go to $OUT (default results/gpu).
#
#   bash scripts/gpu_check.sh            # everything
#   PARTS="tests bench" bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu}
PARTS=${PARTS:-"tests bench suite"}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1
status=0

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"

if [[ " $PARTS " == *" tests "* ]]; then
  python3 -m pytest tests/test_kernels.py tests/test_gpu.py tests/test_fast_path.py -q -p no:cacheprovider -rs \
    2>&1 | tee "$OUT/tests.log" || status=1
fi
if [[ " $PARTS " == *" bench "* ]]; then
  python3 -m specdec.benchmarks.gpu --out "$OUT" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log" || status=1
fi
if [[ " $PARTS " == *" suite "* ]]; then
  python3 -m pytest --specdec-suite h100 -p no:cacheprovider --benchmark-json "$OUT/h100-suite.json" \
    2>&1 | tee "$OUT/h100-suite.log" || status=1
fi
exit $status
