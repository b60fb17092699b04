#!/usr/bin/env bash
# docs/experiments.md §33: test-time batch-norm adaptation on the stack, read on the networks of §32's (a)
# (three seeds of the shipped recipe per leave-one-domain-out fold, from lab/scripts/procedures_lodo.sh round 1).
#
#   bash lab/scripts/stack_norm_lodo.sh OUT [score] [report]   # OUT: the folder of lab/scripts/procedures_lodo.sh
#
# score: each (a) run's validation and unseen figures scored again in stacks of one slide, single view, with
# the adaptation (lab.heldout --stack-norm N: the candidates, prior N = 16 on every batch-norm layer and
# on the early ones only; reported only: N = 64, and stacks of 4), added to the run's record (training.records
# --update). It needs the networks (OUT/<domain>-current-s<seed>): lab/scripts/procedures_lodo.sh round 1 runs it
# for the early candidate right after training them. A run not recorded yet is passed over with a note.
# report: python -m lab.procedures compares the adapted ensembles with the same networks unadapted
# (their heldout.json), from the records alone, under the rules written before the runs
# -> RECORDS/stack-norm/procedures.md.
# Environment: FOLDS (default the four domains; in the report a fold without its three (a) runs is an
# error), VARIANTS (default all four: "16 16 all,16 16 early,64 16 all,16 4 all", each "PRIOR SIZE SCOPE"),
# PYTHON, RECORDS (default records/procedures, as lab/scripts/procedures_lodo.sh),
# THREADS (torch threads of each scoring, default all; 1 beside a training on a 2-core CPU: two processes
# with two threads each on two cores took the training from 42 to 1-3 images/s, 2026-12-05).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:?usage: bash lab/scripts/stack_norm_lodo.sh OUT [score] [report]}
shift
STEPS=${*:-score report}
PY=${PYTHON:-python3}
RECORDS=${RECORDS:-records/procedures}
read -r -a FOLD_LIST <<< "${FOLDS:-TUPAC16 MIDOG21-XR MIDOG21-S360 MIDOG21-CS2}"
IFS=, read -r -a VARIANTS <<< "${VARIANTS:-16 16 all,16 16 early,64 16 all,16 4 all}"  # prior, stack size, scope

key_of() {  # lab.heldout's default report name for PRIOR SIZE SCOPE is heldout-KEY.json
  local prior=$1 size=$2 scope=$3
  echo "stack-norm-$prior$([[ $scope == all ]] || echo "-$scope")$([[ $size == 16 ]] || echo "-s$size")"
}

for step in $STEPS; do
  case $step in
    score)
      for d in "${FOLD_LIST[@]}"; do
        for s in 0 1 2; do
          run="$OUT/$d-current-s$s" record="$RECORDS/$d-current-s$s"
          if [[ ! -f "$record/record.json" ]]; then
            echo "note: $record: not recorded (not trained yet); not scored" >&2
            continue
          fi
          for v in "${VARIANTS[@]}"; do
            read -r prior size scope <<< "$v"
            name="heldout-$(key_of "$prior" "$size" "$scope").json"
            [[ -f "$record/$name" ]] && continue
            if [[ ! -f "$run/best.pt" ]]; then
              echo "error: $record/$name: not recorded, and $run/best.pt (the network) is gone: train it again" \
                   "(lab/scripts/procedures_lodo.sh round 1 with its record moved away)" >&2
              exit 1
            fi
            [[ -f "$run/$name" ]] || "$PY" -m lab.heldout "$run" --tta none --stack-norm "$prior" \
              --stack-size "$size" --stack-scope "$scope" --threads "${THREADS:-0}"
            "$PY" -m training.records "$run" --into "$RECORDS" --update
          done
        done
      done ;;
    report)
      declare -A LISTS
      for d in "${FOLD_LIST[@]}"; do
        for s in 0 1 2; do
          record="$RECORDS/$d-current-s$s"
          LISTS[current]+="${LISTS[current]:+,}$record"
          for v in "${VARIANTS[@]}"; do
            key=$(key_of $v)
            if [[ ! -f "$record/heldout-$key.json" ]]; then
              echo "error: $record/heldout-$key.json: not recorded (the score step makes it)" >&2
              exit 1
            fi
            LISTS[$key]+="${LISTS[$key]:+,}$record/heldout-$key.json"
          done
        done
      done
      declare -A names=([stack-norm-16]=stack-norm [stack-norm-16-early]=stack-norm-early [stack-norm-64]=stack-norm-64
                        [stack-norm-16-s4]=stack-norm-s4)
      args=(--procedure "current=${LISTS[current]}")
      for v in "${VARIANTS[@]}"; do
        key=$(key_of $v)
        name=${names[$key]:-$key}
        args+=(--procedure "$name=${LISTS[$key]}")
        # the candidates' rule (written before the runs); the other variants are reported only
        [[ $name == stack-norm || $name == stack-norm-early ]] && args+=(--rule "$name=current:0,-0.010,0")
      done
      "$PY" -m lab.procedures "${args[@]}" --out "$RECORDS/stack-norm" ;;
    *) echo "unknown step $step (score report)" >&2; exit 2 ;;
  esac
done
