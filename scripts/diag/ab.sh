#!/usr/bin/env bash
# Alternate checkouts (or settings) of the engine in one device call: each round runs every variant's
# `gemv_ab.py ar SHAPES` (greedy and sampled tokens/s, bf16, batch 1) in turn, so that drift hits them alike.
#
#   bash scripts/diag/ab.sh ROUNDS SHAPES VARIANT...      VARIANT: label=DIR[,ENV=VALUE...]
#   git archive main specdec | (mkdir -p ab_main && tar -x -C ab_main)     # a checkout of main beside the tree
#   bash scripts/diag/ab.sh 2 1b,gpt2 main=ab_main new=. off=.,SPECDEC_PDL=0
#
# DIR goes first on PYTHONPATH (the script itself runs from the working tree). Lines go to stdout, prefixed by the
# variant's label.
set -uo pipefail
rounds=$1 shapes=$2
shift 2
for round in $(seq "$rounds"); do
  for variant in "$@"; do
    label=${variant%%=*} rest=${variant#*=}
    IFS=, read -r dir settings <<<"$rest"
    env_args=()
    [[ -n ${settings:-} ]] && IFS=, read -ra env_args <<<"$settings"
    env "${env_args[@]}" PYTHONPATH="$dir:$PWD" python3 scripts/diag/gemv_ab.py ar "$shapes" 2>&1 \
      | grep -E "tok/s|Error|error" | sed "s/^/round $round $label: /"
  done
done
