#!/usr/bin/env bash
# docs/experiments.md §33: test-time batch-norm adaptation on the stack, read on the networks of §32's (a)
# (three seeds of the shipped recipe per leave-one-domain-out fold, from scripts/procedures_lodo.sh round 1).
#
#   bash scripts/stack_norm_lodo.sh OUT      # OUT: the folder of scripts/procedures_lodo.sh
#
# Each run's validation and unseen figures are scored again in stacks of one slide, single view, with the
# adaptation (training.heldout --stack-norm N: the candidates, prior N = 16 on every batch-norm layer and on
# the early ones only; reported only: N = 64, and stacks of 4), then python -m training.procedures compares
# the adapted ensembles with the same networks unadapted (their heldout.json) under the rules written before
# the runs -> OUT/stack-norm/procedures.md.
# Environment: FOLDS (default the four domains; a fold without its three (a) runs is an error), PYTHON,
# THREADS (torch threads of each scoring, default all; 1 beside a training on a 2-core CPU: two processes
# with two threads each on two cores took the training from 42 to 1-3 images/s, 2026-12-05).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bash scripts/stack_norm_lodo.sh OUT}
PY=${PYTHON:-python3}
read -r -a FOLD_LIST <<< "${FOLDS:-TUPAC16 MIDOG21-XR MIDOG21-S360 MIDOG21-CS2}"
VARIANTS=("16 16 all" "16 16 early" "64 16 all" "16 4 all")  # prior, stack size, scope

declare -A LISTS
for d in "${FOLD_LIST[@]}"; do
  for s in 0 1 2; do
    run="$OUT/$d-current-s$s"
    if [[ ! -f "$run/heldout.json" ]]; then
      echo "error: $run/heldout.json: not found (round 1 of scripts/procedures_lodo.sh trains it)" >&2
      exit 1
    fi
    LISTS[current]+="${LISTS[current]:+,}$run"
    for v in "${VARIANTS[@]}"; do
      read -r prior size scope <<< "$v"
      key="stack-norm-$prior$([[ $scope == all ]] || echo "-$scope")$([[ $size == 16 ]] || echo "-s$size")"
      name="heldout-$key.json"  # training.heldout's default name for these flags
      [[ -f "$run/$name" ]] || "$PY" -m training.heldout "$run" --tta none --stack-norm "$prior" \
        --stack-size "$size" --stack-scope "$scope" --threads "${THREADS:-0}"
      LISTS[$key]+="${LISTS[$key]:+,}$run/$name"
    done
  done
done
"$PY" -m training.procedures --procedure "current=${LISTS[current]}" \
  --procedure "stack-norm=${LISTS[stack-norm-16]}" --procedure "stack-norm-early=${LISTS[stack-norm-16-early]}" \
  --procedure "stack-norm-64=${LISTS[stack-norm-64]}" --procedure "stack-norm-s4=${LISTS[stack-norm-16-s4]}" \
  --rule stack-norm=current:0,-0.010,0 --rule stack-norm-early=current:0,-0.010,0 --out "$OUT/stack-norm"
