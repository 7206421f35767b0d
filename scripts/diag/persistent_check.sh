#!/usr/bin/env bash
# The persistent step on the device: its tests, a barrier's cost (two kinds) and float32 atomic sums, the step's
# variants against the decoder's step (STEP_SET=quick, early or wide: a set of them), each kind of phase alone
# (PARTS=phases, not in the default), and the engine's autoregressive speed (two alternations of scripts/diag/ab.sh):
# the kernels, the persistent step with five phases a layer and with the MLP fused into one (SPECDEC_PERSISTENT=1,
# fused), each of those with greedy steps in chunks of 16 per graph (SPECDEC_AR_CHUNK); with AB_SET=early the
# kernels and eight warps with two tiles loaded before each barrier (alone, the MLP fused, the merge in attention);
# with AB_SET=wide the kernels, the old default cut (four warps, 16 KB tiles, three stages) and the wide cut (eight
# warps, 32 KB tiles read ahead: the default since the seventeenth session) with and without the merge in
# attention. PARTS=timeline times each phase inside one launch at six cuts. Before a device call,
# `python scripts/diag/compile_sm90.py` checks here that a cut compiles for sm_90 and what it spills.
#
#   bash scripts/diag/persistent_check.sh [SHAPES]           # on the device machine, from the repository root
#   PARTS="tests barrier" bash scripts/diag/persistent_check.sh   # some parts (default: tests barrier step ab)
#   PARTS="tests timeline" bash scripts/diag/persistent_check.sh  # each phase's time inside the launch
#   PARTS=ncu SPECDEC_PERSISTENT_SHAPE="stages=0" bash scripts/diag/persistent_check.sh 1b   # Nsight Compute
#
# The whole check takes longer than one 10-minute device call (each step variant compiles its own kernel): run it as
# PARTS="tests barrier", PARTS=step and PARTS=ab, on one warm machine (Triton's cache carries over).
set -uo pipefail
shapes=${1:-gpt2,1b}
parts=" ${PARTS:-tests barrier step ab} "
export PYTHONPATH=$PWD
# On CUDA: the grid-barrier shapes and the engine through CUDA graphs (the interpreter checks the other shapes' math).
[[ $parts == *" tests "* ]] && timeout 420 python3 -m pytest -q -x -p no:cacheprovider tests/test_persistent.py \
  -k "grid or generation or setting or timeline" 2>&1 | tail -5
[[ $parts == *" barrier "* ]] && timeout 120 python3 scripts/diag/persistent.py barrier
[[ $parts == *" step "* ]] && timeout 420 python3 scripts/diag/persistent.py step "$shapes" ${STEP_SET:-}
[[ $parts == *" phases "* ]] && timeout 300 python3 scripts/diag/persistent.py phases "$shapes"
wide="warps=8 tile_elements=16384 head_tile_elements=16384 stages=0"  # the wide cut, the default (compile_sm90.py)
# Each phase inside one launch, by the GPU's timer: the default cut; no pipelined loop with two tiles before each
# barrier, at four and eight warps (no spills at eight, sm_90); the wide cut; eight warps with the merge in attention
# and with the MLP fused.
early8="warps=8 stages=0 early_tiles=2"
[[ $parts == *" timeline "* ]] && timeout 480 python3 scripts/diag/persistent.py timeline "$shapes" "" \
  "stages=0 early_tiles=2" "$early8" "$wide" "$early8 merge_in_attention=1 max_splits=8" "$early8 fused_mlp=1"
if [[ $parts == *" ab "* && ${AB_SET:-} == wide ]]; then  # the wide cut, with and without the merge in attention
  bash scripts/diag/ab.sh 2 "$shapes" kernels=. \
    "old_default=.,SPECDEC_PERSISTENT=1,SPECDEC_PERSISTENT_SHAPE=warps=4 tile_elements=8192 head_tile_elements=8192 stages=3" \
    "wide=.,SPECDEC_PERSISTENT=1,SPECDEC_PERSISTENT_SHAPE=$wide" \
    "wide_merge=.,SPECDEC_PERSISTENT=1,SPECDEC_PERSISTENT_SHAPE=$wide merge_in_attention=1 max_splits=8"
elif [[ $parts == *" ab "* && ${AB_SET:-} == early ]]; then  # eight warps, two tiles before each barrier
  bash scripts/diag/ab.sh 2 "$shapes" kernels=. "early8=.,SPECDEC_PERSISTENT=1,SPECDEC_PERSISTENT_SHAPE=$early8" \
    "early8_fused=.,SPECDEC_PERSISTENT=1,SPECDEC_PERSISTENT_SHAPE=$early8 fused_mlp=1" \
    "early8_merge=.,SPECDEC_PERSISTENT=1,SPECDEC_PERSISTENT_SHAPE=$early8 merge_in_attention=1 max_splits=8"
elif [[ $parts == *" ab "* ]]; then
  bash scripts/diag/ab.sh 2 "$shapes" kernels=. persistent=.,SPECDEC_PERSISTENT=1 \
    fused=.,SPECDEC_PERSISTENT=fused chunks=.,SPECDEC_PERSISTENT=1,SPECDEC_AR_CHUNK=16 \
    fused_chunks=.,SPECDEC_PERSISTENT=fused,SPECDEC_AR_CHUNK=16
fi
# Nsight Compute (PARTS=ncu; needs a machine whose runtime lets ncu read the counters: the device's KINDS.md): the
# decoder's one-token step and each kind of phase at the cut SPECDEC_PERSISTENT_SHAPE names, one launch each; the
# report and its CSV go to $OUT, one line per kernel to stdout.
if [[ $parts == *" ncu "* ]]; then
  for shape in ${shapes//,/ }; do
    report=${OUT:-/tmp}/ncu_$shape
    timeout 420 ncu --clock-control none --profile-from-start off -f -o "$report" \
      --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats \
      --section WarpStateStats python3 scripts/diag/persistent.py launches "$shape" 2>&1 | tail -4
    ncu --import "$report.ncu-rep" --csv --page details >"$report.csv" && python3 scripts/diag/ncu_summary.py "$report.csv"
  done
fi
exit 0
