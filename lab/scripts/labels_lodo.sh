#!/usr/bin/env bash
# docs/experiments.md §34 (issue 51): learn from everything the labels say. Inside each leave-one-domain-out
# fold, networks of the shipped procedure (--config shipped --all-figures, the last epoch's EMA model, the
# fold's committed out-of-fold threshold) trained with
#   votes     --targets votes              the experts' vote share as the BCE target
#   subtype   --subtype-weight 0.5         an auxiliary subtype head on the pooled CBAM descriptor
#   both      --targets votes --subtype-weight 0.5
# against the committed baseline arm (records/procedures/<fold>-all-s<seed>: the same code path, majority
# targets, no head), paired over the unseen domain's slides by python -m lab.procedures with the rules
# written before the runs.
#
#   bash lab/scripts/labels_lodo.sh OUT [STEP ...]     STEP: votes subtype both report (default: all, in order)
#
# Each arm is one lab.sweep (its runs OUT/<fold>-<arm>-s<seed>, seed-major: every fold of seed 0, then
# seed 1), resumed when run again (a CPU session's end); every finished run is recorded in RECORDS and not
# trained again, so a later session or another machine continues where the records stop.
# Environment: FOLDS (default TUPAC16 first: the smallest training set, the largest unseen one), SEEDS
# (default 0 1), PARALLEL (runs side by side: 1 on a 2-core CPU, 8 on the H200), BUDGET_MIN (per sweep,
# 0 = none), DATA (default amibr=../shared/data/ami-br), RECORDS (default records/labels), BASE (the
# baseline's records, default records/procedures), SUBTYPE_WEIGHT (default 0.5, the rule's), EXTRA (flags
# for every run; a smoke test: EXTRA="--limit 160 --epochs 1 --input-size 64").
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:?usage: bash lab/scripts/labels_lodo.sh OUT [votes subtype both report]}
shift
STEPS=${*:-votes subtype both report}
PY=${PYTHON:-python3}
read -r -a FOLD_LIST <<< "${FOLDS:-TUPAC16 MIDOG21-XR MIDOG21-S360 MIDOG21-CS2}"
read -r -a SEED_LIST <<< "${SEEDS:-0 1}"
read -r -a EXTRA_FLAGS <<< "${EXTRA:-}"
RECORDS=${RECORDS:-records/labels}
BASE=${BASE:-records/procedures}
W=${SUBTYPE_WEIGHT:-0.5}
COMMON=(--data "${DATA:-amibr=../shared/data/ami-br}" --eval-tta none --resume "${EXTRA_FLAGS[@]}")
SWEEP=("$PY" -m lab.sweep --fold "${FOLD_LIST[@]}" --out "$OUT" --parallel "${PARALLEL:-1}"
       --budget-min "${BUDGET_MIN:-0}" --record "$RECORDS")
SHIPPED="shipped --all-figures --threshold-from $BASE/{fold}-oof/oof.json"
declare -A FLAGS=([votes]="--targets votes" [subtype]="--subtype-weight $W" [both]="--targets votes --subtype-weight $W")

# The runs of one arm over the folds and seeds, comma-separated (lab.procedures' form).
runs() { local dir=$1 arm=$2 list=(); for d in "${FOLD_LIST[@]}"; do for s in "${SEED_LIST[@]}"; do
  list+=("$dir/$d-$arm-s$s"); done; done; (IFS=,; echo "${list[*]}"); }

for step in $STEPS; do
  echo "== $step ($(date -u +%H:%M:%S))"
  case $step in
    votes|subtype|both)
      "${SWEEP[@]}" --arm "$step=$SHIPPED ${FLAGS[$step]}" --seeds "${SEED_LIST[@]}" -- "${COMMON[@]}" ;;
    report)
      # Only the arms with a record on every fold and seed are compared (a study part-way: say so).
      procs=(--procedure "base=$(runs "$BASE" all)"); rules=()
      for arm in votes subtype both; do
        complete=1
        IFS=, read -r -a mine <<< "$(runs "$RECORDS" "$arm")"
        for r in "${mine[@]}"; do [ -f "$r/record.json" ] || complete=0; done
        if [ $complete = 1 ]; then
          procs+=(--procedure "$arm=$(runs "$RECORDS" "$arm")"); rules+=(--rule "$arm=base:0.003,-0.010,-0.005")
        else echo "report: $arm is not recorded on every fold and seed yet; left out" >&2; fi
      done
      "$PY" -m lab.procedures "${procs[@]}" "${rules[@]}" --out "$RECORDS/report" ;;
    *) echo "unknown step $step (votes subtype both report)" >&2; exit 2 ;;
  esac
done
