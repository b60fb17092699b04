#!/usr/bin/env bash
# docs/experiments.md §32: inside each leave-one-domain-out fold, the procedure that would ship
#   (a) current      three networks of the shipped recipe on the fold's 75% split, halfway threshold on
#                    their validation scores;
#   (b) all-figures  a 4-fold cross-fit of the fold's figures (its out-of-fold threshold), then three
#                    networks on all of them (--all-figures, the last epoch's EMA model);
#   (c) distilled    one network on all of them distilled from (b)'s ensemble, (b)'s out-of-fold threshold;
#   (b') cross-fit   the cross-fit's own four networks, the same out-of-fold threshold (report only);
# compared on the unseen domain by python -m lab.procedures with the rules written before the runs.
#
#   bash lab/scripts/procedures_lodo.sh OUT [ROUND ...]     ROUND: 1 2 3 report (default: all, in order)
#
# Round 1: (a) seeds 0-2 (and §33's stack-norm candidate scored on them: lab/scripts/stack_norm_lodo.sh score)
# and cross-fit folds 1-3 (fold 0 of the cross-fit is (a)'s split, so (a)'s seed-0 run is reused as it); round 2: training.oof per domain, (b) seeds 0-2; round 3: (b)'s networks (trained
# again where they are gone), exported as an ensemble, then (c), for each fold whose (c) is not recorded yet;
# report: RECORDS/report/procedures.md.
# Every step is a lab.sweep (a run's folder OUT/<domain>-<arm>-s<seed>); a round run again resumes its
# runs (see COMMON). The study outlives runs/: every finished run is recorded in RECORDS (training.records:
# its reports, committed) and not trained again; the out-of-fold files and the report are written there
# too and read from there, so a later session or another machine continues where the records stop.
# Environment: FOLDS (default the four domains), PARALLEL (runs side by side: 2 on a 2-core CPU, 8 on the
# H200), BUDGET_MIN (per sweep, 0 = none), DATA (default amibr=../shared/data/ami-br), RECORDS (default
# records/procedures), EXTRA (flags for every run; a smoke test: EXTRA="--limit 160 --epochs 1 --input-size 64").
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:?usage: bash lab/scripts/procedures_lodo.sh OUT [1 2 3 report]}
shift
ROUNDS=${*:-1 2 3 report}
PY=${PYTHON:-python3}
read -r -a FOLD_LIST <<< "${FOLDS:-TUPAC16 MIDOG21-XR MIDOG21-S360 MIDOG21-CS2}"
read -r -a EXTRA_FLAGS <<< "${EXTRA:-}"
# --resume: a round stopped part-way (a CPU session's end) continues from each run's last epoch when run
# again; a finished run only writes its reports again.
COMMON=(--data "${DATA:-amibr=../shared/data/ami-br}" --eval-tta none --resume "${EXTRA_FLAGS[@]}")
RECORDS=${RECORDS:-records/procedures}
SWEEP_OPTS=(--out "$OUT" --parallel "${PARALLEL:-1}" --budget-min "${BUDGET_MIN:-0}" --record "$RECORDS")
SWEEP=("$PY" -m lab.sweep --fold "${FOLD_LIST[@]}" "${SWEEP_OPTS[@]}")
OOF="$RECORDS/{fold}-oof/oof.json"
ALL=(--arm all="shipped --all-figures --threshold-from $OOF" --seeds 0 1 2 -- "${COMMON[@]}")

for round in $ROUNDS; do
  echo "== round $round ($(date -u +%H:%M:%S))"
  case $round in
    1)
      # §33's candidate on (a)'s networks that finished before a stop (a CPU session's end), before the
      # round goes on: the scoring after the sweep below may come sessions later, on another machine. A
      # network gone (another machine) does not stop the training here; the scoring after the sweep says so.
      VARIANTS="16 16 early" FOLDS="${FOLD_LIST[*]}" PYTHON="$PY" RECORDS="$RECORDS" \
        bash lab/scripts/stack_norm_lodo.sh "$OUT" score || echo "note: §33 scoring incomplete; round 1 goes on" >&2
      # One sweep for (a) and the cross-fit (its folds with seed 0 only), so that runs side by side
      # (PARALLEL=2 on a 2-core CPU: ~1.2x the images of one run at a time) always have a partner.
      "${SWEEP[@]}" --arm current=shipped --arm cv1="shipped --cv-fold 1" --arm cv2="shipped --cv-fold 2" \
        --arm cv3="shipped --cv-fold 3" --seeds 0 1 2 --arm-seeds cv1=0 --arm-seeds cv2=0 --arm-seeds cv3=0 \
        -- "${COMMON[@]}"
      # experiments.md §33's candidate (batch-norm statistics of the stack, early layers) on (a)'s networks
      # while this machine has them; recorded beside them for lab/scripts/stack_norm_lodo.sh's report.
      VARIANTS="16 16 early" FOLDS="${FOLD_LIST[*]}" PYTHON="$PY" RECORDS="$RECORDS" \
        bash lab/scripts/stack_norm_lodo.sh "$OUT" score ;;
    2)
      for d in "${FOLD_LIST[@]}"; do
        "$PY" -m training.oof "$RECORDS/$d-current-s0" "$RECORDS/$d-cv1-s0" "$RECORDS/$d-cv2-s0" \
          "$RECORDS/$d-cv3-s0" --out "$RECORDS/$d-oof"
      done
      "${SWEEP[@]}" "${ALL[@]}" ;;
    3)
      # A fold whose student is recorded already (another session, a lent GPU) is done: its teacher's three
      # networks would otherwise be trained again below for nothing.
      TODO=()
      for d in "${FOLD_LIST[@]}"; do
        if [ -f "$RECORDS/$d-distilled-s0/record.json" ]; then echo "round 3: $d's student is recorded already; skipped"
        else TODO+=("$d"); fi
      done
      [ ${#TODO[@]} -gt 0 ] || continue
      SWEEP3=("$PY" -m lab.sweep --fold "${TODO[@]}" "${SWEEP_OPTS[@]}")
      # The teacher's networks: a finished run only writes its reports again (--resume); gone, it trains again.
      "${SWEEP3[@]}" --retrain-recorded "${ALL[@]}"
      for d in "${TODO[@]}"; do
        "$PY" -m training.export "$OUT/$d-all-s0" "$OUT/$d-all-s1" "$OUT/$d-all-s2" --config shipped --tta none \
          --threshold-from "$RECORDS/$d-oof/oof.json" --out "$OUT/$d-all-weights"
      done
      # As lab.born_again's students: distilled from the first step, KD weight 1, T = 2, label term kept.
      "${SWEEP3[@]}" --arm distilled="shipped --all-figures --kd --kd-teacher {out}/{fold}-all-weights \
--kd-start-epoch 0 --kd-warmup-epochs 0 --kd-weight 1 --kd-temperature 2 --threshold-from $OOF" \
        --seeds 0 -- "${COMMON[@]}" ;;
    report)
      runs() { local arm=$1; shift; local list=(); for d in "${FOLD_LIST[@]}"; do for s in "$@"; do
        list+=("$RECORDS/$d-$arm-s$s"); done; done; (IFS=,; echo "${list[*]}"); }
      crossfit=(); for d in "${FOLD_LIST[@]}"; do for r in current-s0 cv1-s0 cv2-s0 cv3-s0; do
        crossfit+=("$RECORDS/$d-$r"); done; done
      # (b') cross-fit: the cross-fit's own four networks at their out-of-fold threshold (rule of 2026-12-05).
      "$PY" -m lab.procedures --procedure "current=$(runs current 0 1 2)" \
        --procedure "all-figures=$(runs all 0 1 2)" --procedure "distilled=$(runs distilled 0)" \
        --procedure "cross-fit=$(IFS=,; echo "${crossfit[*]}")" \
        --threshold-from "cross-fit=$RECORDS/{domain}-oof/oof.json" \
        --rule all-figures=current:0,-0.010,0 --rule distilled=all-figures:-0.005,-0.015,-0.010 \
        --rule cross-fit=current:0,-0.010,0 --rule cross-fit=all-figures:-0.005,-0.015,-0.010 \
        --out "$RECORDS/report" ;;
    *) echo "unknown round $round (1 2 3 report)" >&2; exit 2 ;;
  esac
done
