#!/usr/bin/env bash
# Prepared calls for a lent GPU machine: bring the training data over in parts, then run a
# leave-one-domain-out sweep inside a time budget and bring back every run's logs, curves and
# held-out report (not the checkpoints).
#
#   bash lab/scripts/gpu_sweep.sh unpack DIR   unpack the pack parts in DIR into .data/ami-br (ignored, so it
#                                          stays on the machine between calls while it is held)
#   bash lab/scripts/gpu_sweep.sh sweep        the sweep on .data/ami-br; results under $OUT, packed to come back
#   bash lab/scripts/gpu_sweep.sh procedures   experiments.md §32 (lab/scripts/procedures_lodo.sh) on .data/ami-br, 8 runs
#                                          side by side; its records come back as $OUT/records.tar.gz
#   bash lab/scripts/gpu_sweep.sh labels [STEP ...]   experiments.md §34 (docs/study-labels.md, lab/scripts/labels_lodo.sh:
#                                          votes subtype both report) on .data/ami-br, 8 runs side by side; its
#                                          records come back as $OUT/labels.tar.gz
#
# Only 8 files (at most 2 folders down) come back from $OUT: the runs train in SWEEP_DIR (default
# /tmp/gpu-sweep) and $OUT gets 7: gpu.txt, versions.txt, sweep.log, sweep.json, compare.md,
# compare-halfway.md (BA at the halfway threshold) and sweep.tar.gz (every run's folder without its
# checkpoints: heldout.json, history, curves, train.log). Here: tar -xzf sweep.tar.gz -C runs/<sweep>.
# (On 2026-12-04 the run folders were written straight into $OUT and only 8 of their files came back.)
#
# A call carries at most 64 MiB, working tree included (~30 MiB), so the data (two ~35 MiB parts)
# travels one part per call. Here, once:
#   python scripts/pack_data.py pack ../shared/data/ami-br .data/pack --parts 2
#   mkdir -p .data/call1 .data/call2 && mv .data/pack/part1.zip .data/call1/ && mv .data/pack/part2.zip .data/call2/
# Then, back to back (the machine is given back after a short idle time):
#   run(command="bash lab/scripts/gpu_sweep.sh unpack .data/call1", carry=[".data/call1"])
#   run(command="bash lab/scripts/gpu_sweep.sh unpack .data/call2 && bash lab/scripts/gpu_sweep.sh sweep",
#       carry=[".data/call2"], timeout_s=600)
# The tracked tree plus a 35 MiB part is close to the limit: move weights/model.safetensors aside for the
# calls (the sweep does not need it; git checkout weights restores it).
#
# Defaults: ERM + the augmentation curriculum (--light-aug-epochs 10, the shipped teachers' recipe) with and
# without stain jitter (--hed-jitter 0.2), seed 1, all four folds = 8 runs side by side (~8 min on an H200):
# the question the TUPAC16 CPU pair of 2026-12-03 (README Notes) left for more folds. Earlier defaults:
# ARMS="erm=--no-mixstyle --no-align --no-kd" beside erm-light (the curriculum on the MIDOG21 folds), and
# erm-hed without the curriculum.
# Environment: SEEDS="0 1", FOLDS="TUPAC16", BUDGET_MIN=8.5, ARMS (one NAME=flags per line), EXTRA
# (flags added to every run; a CPU dry run: EXTRA="--limit 64 --epochs 1 --input-size 64 --device cpu"),
# DATA_DIR (default .data/ami-br), SWEEP_DIR.
# Afterwards, here: mkdir runs/<sweep> && tar -xzf <files_at>/sweep.tar.gz -C runs/<sweep>, then
# `python -m lab.compare --held-out runs/<sweep>/*`.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
DATA=${DATA_DIR:-.data/ami-br}
export PYTHONUNBUFFERED=1

# A leave-one-domain-out study of lab/scripts/ whose records (RECORDS, tracked) travel with the working tree and
# come back packed: recorded_study SCRIPT WORK NAME TARBALL [ARGS...] runs the script 8 runs side by side in WORK,
# its log in $OUT/NAME.log, RECORDS packed as $OUT/TARBALL.
recorded_study() {
    local script=$1 work=$2 name=$3 tarball=$4 out_dir=${OUT:-/tmp/gpu-sweep-out} rc=0
    shift 4
    [ -f "$DATA/AMI-BR.csv" ] || { echo "error: $DATA/AMI-BR.csv missing: unpack the parts first" >&2; exit 1; }
    mkdir -p "$out_dir" "$RECORDS"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out_dir/gpu.txt" 2>&1 || true
    $PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, \
'cuda', torch.cuda.is_available())" | tee "$out_dir/versions.txt"
    PARALLEL=8 BUDGET_MIN=${BUDGET_MIN:-8.5} DATA="amibr=$DATA" PYTHON=$PY RECORDS=$RECORDS \
        EXTRA="--workers 2 --threads 1 --plot-every 0 ${EXTRA:-}" \
        bash "lab/scripts/$script" "$work" "$@" 2>&1 | tee "$out_dir/$name.log" || rc=$?
    tar -C "$(dirname "$RECORDS")" -czf "$out_dir/$tarball" "$(basename "$RECORDS")"
    exit "$rc"
}

case "${1:-}" in
unpack)
    shopt -s nullglob
    parts=("${2:?usage: gpu_sweep.sh unpack DIR}"/part*.zip)
    [ ${#parts[@]} -gt 0 ] || { echo "error: no part*.zip in $2" >&2; exit 1; }
    $PY scripts/pack_data.py unpack "${parts[@]}" --out "$DATA"
    ;;
sweep)
    OUT_DIR=${OUT:-/tmp/gpu-sweep-out}
    WORK=${SWEEP_DIR:-/tmp/gpu-sweep}
    BUDGET_MIN=${BUDGET_MIN:-8.5}
    SEEDS=${SEEDS:-1}
    FOLDS=${FOLDS:-TUPAC16 MIDOG21-S360 MIDOG21-XR MIDOG21-CS2}
    ARMS=${ARMS:-"erm-light=--no-mixstyle --no-align --no-kd --light-aug-epochs 10
erm-light-hed=--no-mixstyle --no-align --no-kd --light-aug-epochs 10 --hed-jitter 0.2"}
    [ -f "$DATA/AMI-BR.csv" ] || { echo "error: $DATA/AMI-BR.csv missing: unpack the parts first" >&2; exit 1; }
    if [ -d "$WORK" ] && [ -n "$(ls -A "$WORK")" ]; then
        echo "error: $WORK is not empty (an earlier sweep?): remove it or set SWEEP_DIR" >&2; exit 1
    fi
    mkdir -p "$OUT_DIR"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT_DIR/gpu.txt" 2>&1 || true
    $PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, \
'cuda', torch.cuda.is_available())" | tee "$OUT_DIR/versions.txt"
    arm_flags=()
    while IFS= read -r arm; do
        [ -n "$arm" ] && arm_flags+=(--arm "$arm")
    done <<< "$ARMS"
    # shellcheck disable=SC2086  # FOLDS, SEEDS and EXTRA are word lists
    $PY -m lab.sweep --out "$WORK" --fold $FOLDS "${arm_flags[@]}" --seeds $SEEDS --parallel 8 \
        --budget-min "$BUDGET_MIN" -- --data "amibr=$DATA" --workers 2 --threads 1 --plot-every 0 ${EXTRA:-} \
        2>&1 | tee "$OUT_DIR/sweep.log" || sweep_rc=$?  # no run finished: still bring back the logs
    cp "$WORK/sweep.json" "$OUT_DIR/"
    # Checkpoints (~60 MB a run) cannot come back; everything else does, as one file.
    tar -C "$WORK" --exclude '*.pt' -czf "$OUT_DIR/sweep.tar.gz" .
    shopt -s nullglob
    reports=("$WORK"/*/heldout.json)
    if [ ${#reports[@]} -gt 0 ]; then
        # The first arm's runs first: compare pairs every other run with that arm's run of the same fold and seed.
        first_arm=${ARMS%%=*}
        ordered=("$WORK"/*-"$first_arm"-s*/heldout.json)
        for r in "${reports[@]}"; do
            case " ${ordered[*]} " in *" $r "*) ;; *) ordered+=("$r") ;; esac
        done
        $PY -m lab.compare --held-out "${ordered[@]%/heldout.json}" | tee "$OUT_DIR/compare.md"
        $PY -m lab.compare --held-out "${ordered[@]%/heldout.json}" --ba-at halfway > "$OUT_DIR/compare-halfway.md"
    fi
    exit "${sweep_rc:-0}"
    ;;
procedures)
    # The records made so far travel with the working tree (records/procedures is tracked), so a recorded run
    # is not trained again; the new ones come back with the old in records.tar.gz. Here:
    #   tar -xzf <files_at>/records.tar.gz -C records/    then commit records/procedures.
    # ROUNDS (default 1), FOLDS (default the four domains), BUDGET_MIN (per sweep; round 1 is one sweep:
    # (a)'s three seeds and the cross-fit's folds 1-3), EXTRA, RECORDS (default records/procedures).
    RECORDS=${RECORDS:-records/procedures}
    # shellcheck disable=SC2086  # ROUNDS is a word list
    recorded_study procedures_lodo.sh "${SWEEP_DIR:-/tmp/gpu-procedures}" procedures records.tar.gz ${ROUNDS:-1}
    ;;
labels)
    # As procedures: records/labels (tracked) travels with the tree, so a recorded run is not trained again; the
    # baseline arm is records/procedures. Here: tar -xzf <files_at>/labels.tar.gz -C records/, then commit
    # records/labels. One arm (8 networks: 4 folds x 2 seeds) is ~8-10 min side by side on an H200, so one call
    # per arm: `gpu_sweep.sh labels votes`, then subtype, then both, then report (CPU-cheap).
    shift
    RECORDS=${RECORDS:-records/labels}
    recorded_study labels_lodo.sh "${SWEEP_DIR:-/tmp/gpu-labels}" labels labels.tar.gz "${@:-votes}"
    ;;
*)
    sed -n '2,/^set -euo/{/^set -euo/!p}' "$0" >&2  # the header comment
    exit 2
    ;;
esac
