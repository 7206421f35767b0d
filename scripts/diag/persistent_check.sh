#!/usr/bin/env bash
# The persistent step on the device: its tests, a barrier's cost (two kinds) and float32 atomic sums, the step's
# variants against the decoder's step (STEP_SET=quick or early: a set of them), each kind of phase alone (PARTS=phases,
# not in the default), and the engine's autoregressive speed (two alternations of scripts/diag/ab.sh):
# the kernels, the persistent step with five phases a layer and with the MLP fused into one (SPECDEC_PERSISTENT=1,
# fused), each of those with greedy steps in chunks of 16 per graph (SPECDEC_AR_CHUNK).
#
#   bash scripts/diag/persistent_check.sh [SHAPES]           # on the device machine, from the repository root
#   PARTS="tests barrier" bash scripts/diag/persistent_check.sh   # some parts (default: tests barrier step ab)
#
# The whole check takes longer than one 10-minute device call (each step variant compiles its own kernel): run it as
# PARTS="tests barrier", PARTS=step and PARTS=ab, on one warm machine (Triton's cache carries over).
set -uo pipefail
shapes=${1:-gpt2,1b}
parts=" ${PARTS:-tests barrier step ab} "
export PYTHONPATH=$PWD
# On CUDA: the grid-barrier shapes and the engine through CUDA graphs (the interpreter checks the other shapes' math).
[[ $parts == *" tests "* ]] && timeout 420 python3 -m pytest -q -x -p no:cacheprovider tests/test_persistent.py \
  -k "grid or generation or setting" 2>&1 | tail -5
[[ $parts == *" barrier "* ]] && timeout 120 python3 scripts/diag/persistent.py barrier
[[ $parts == *" step "* ]] && timeout 420 python3 scripts/diag/persistent.py step "$shapes" ${STEP_SET:-}
[[ $parts == *" phases "* ]] && timeout 300 python3 scripts/diag/persistent.py phases "$shapes"
[[ $parts == *" ab "* ]] && bash scripts/diag/ab.sh 2 "$shapes" kernels=. persistent=.,SPECDEC_PERSISTENT=1 \
  fused=.,SPECDEC_PERSISTENT=fused chunks=.,SPECDEC_PERSISTENT=1,SPECDEC_AR_CHUNK=16 \
  fused_chunks=.,SPECDEC_PERSISTENT=fused,SPECDEC_AR_CHUNK=16
exit 0
