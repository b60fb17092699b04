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
# the runs -> RECORDS/stack-norm/procedures.md. The scorings need the networks (OUT/<domain>-current-s<seed>,
# so run it in the session that trained them); each is added to the run's record (training.records --update)
# and read from there, so the report needs only the records.
# Environment: FOLDS (default the four domains; a fold without its three (a) runs is an error), PYTHON,
# RECORDS (default records/procedures, as scripts/procedures_lodo.sh),
# THREADS (torch threads of each scoring, default all; 1 beside a training on a 2-core CPU: two processes
# with two threads each on two cores took the training from 42 to 1-3 images/s, 2026-12-05).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bash scripts/stack_norm_lodo.sh OUT}
PY=${PYTHON:-python3}
RECORDS=${RECORDS:-records/procedures}
read -r -a FOLD_LIST <<< "${FOLDS:-TUPAC16 MIDOG21-XR MIDOG21-S360 MIDOG21-CS2}"
VARIANTS=("16 16 all" "16 16 early" "64 16 all" "16 4 all")  # prior, stack size, scope

declare -A LISTS
for d in "${FOLD_LIST[@]}"; do
  for s in 0 1 2; do
    run="$OUT/$d-current-s$s" record="$RECORDS/$d-current-s$s"
    if [[ ! -f "$record/record.json" ]]; then
      echo "error: $record: not recorded (round 1 of scripts/procedures_lodo.sh trains and records it)" >&2
      exit 1
    fi
    LISTS[current]+="${LISTS[current]:+,}$record"
    for v in "${VARIANTS[@]}"; do
      read -r prior size scope <<< "$v"
      key="stack-norm-$prior$([[ $scope == all ]] || echo "-$scope")$([[ $size == 16 ]] || echo "-s$size")"
      name="heldout-$key.json"  # training.heldout's default name for these flags
      if [[ ! -f "$record/$name" ]]; then
        if [[ ! -f "$run/best.pt" ]]; then
          echo "error: $record/$name: not recorded, and $run/best.pt (the network) is gone: train it again" \
               "(scripts/procedures_lodo.sh round 1 with its record moved away)" >&2
          exit 1
        fi
        [[ -f "$run/$name" ]] || "$PY" -m training.heldout "$run" --tta none --stack-norm "$prior" \
          --stack-size "$size" --stack-scope "$scope" --threads "${THREADS:-0}"
        "$PY" -m training.records "$run" --into "$RECORDS" --update
      fi
      LISTS[$key]+="${LISTS[$key]:+,}$record/$name"
    done
  done
done
"$PY" -m training.procedures --procedure "current=${LISTS[current]}" \
  --procedure "stack-norm=${LISTS[stack-norm-16]}" --procedure "stack-norm-early=${LISTS[stack-norm-16-early]}" \
  --procedure "stack-norm-64=${LISTS[stack-norm-64]}" --procedure "stack-norm-s4=${LISTS[stack-norm-16-s4]}" \
  --rule stack-norm=current:0,-0.010,0 --rule stack-norm-early=current:0,-0.010,0 --out "$RECORDS/stack-norm"
