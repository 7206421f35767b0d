#!/usr/bin/env bash
# The persistent step on the device, in one call: its tests, a barrier's cost, the step's variants against the fast
# forward, and the engine's autoregressive speed with it off and on (two alternations).
#
#   bash scripts/diag/persistent_check.sh [SHAPES]      # on the device machine, from the repository root
set -uo pipefail
shapes=${1:-gpt2,1b}
export PYTHONPATH=$PWD
timeout 300 python3 -m pytest -q -x -p no:cacheprovider tests/test_persistent.py 2>&1 | tail -5
timeout 60 python3 scripts/diag/persistent.py barrier
timeout 300 python3 scripts/diag/persistent.py step "$shapes"
bash scripts/diag/ab.sh 2 "$shapes" kernels=. persistent=.,SPECDEC_PERSISTENT=1
