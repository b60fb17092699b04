#!/usr/bin/env bash
# Prepared calls for a lent GPU machine: bring the training data over in parts, then run a
# leave-one-domain-out sweep inside a time budget and bring back every run's logs, curves and
# held-out report (not the checkpoints).
#
#   bash scripts/gpu_sweep.sh unpack DIR   unpack the pack parts in DIR into .data/ami-br (ignored, so it
#                                          stays on the machine between calls while it is held)
#   bash scripts/gpu_sweep.sh sweep        the sweep on .data/ami-br; results under $OUT
#
# A call carries at most 64 MiB, working tree included (~30 MiB), so the data (two ~35 MiB parts)
# travels one part per call. Here, once:
#   python scripts/pack_data.py pack ../shared/data/ami-br .data/pack --parts 2
#   mkdir -p .data/call1 .data/call2 && mv .data/pack/part1.zip .data/call1/ && mv .data/pack/part2.zip .data/call2/
# Then, back to back (the machine is given back after a short idle time):
#   run(command="bash scripts/gpu_sweep.sh unpack .data/call1", carry=[".data/call1"])
#   run(command="bash scripts/gpu_sweep.sh unpack .data/call2 && bash scripts/gpu_sweep.sh sweep",
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
# (flags added to every run; a CPU dry run: EXTRA="--limit 64 --epochs 1 --input-size 64 --device cpu").
# Afterwards, here: copy $OUT/sweep into runs/ and `python -m training.compare --held-out runs/<sweep>/*`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DATA=.data/ami-br
export PYTHONUNBUFFERED=1

case "${1:-}" in
unpack)
    shopt -s nullglob
    parts=("${2:?usage: gpu_sweep.sh unpack DIR}"/part*.zip)
    [ ${#parts[@]} -gt 0 ] || { echo "error: no part*.zip in $2" >&2; exit 1; }
    $PY scripts/pack_data.py unpack "${parts[@]}" --out "$DATA"
    ;;
sweep)
    OUT_DIR=${OUT:-/tmp/gpu-sweep-out}
    BUDGET_MIN=${BUDGET_MIN:-8.5}
    SEEDS=${SEEDS:-1}
    FOLDS=${FOLDS:-TUPAC16 MIDOG21-S360 MIDOG21-XR MIDOG21-CS2}
    ARMS=${ARMS:-"erm-light=--no-mixstyle --no-align --no-kd --light-aug-epochs 10
erm-light-hed=--no-mixstyle --no-align --no-kd --light-aug-epochs 10 --hed-jitter 0.2"}
    [ -f "$DATA/AMI-BR.csv" ] || { echo "error: $DATA/AMI-BR.csv missing: unpack the parts first" >&2; exit 1; }
    mkdir -p "$OUT_DIR"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT_DIR/gpu.txt" 2>&1 || true
    $PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, \
'cuda', torch.cuda.is_available())" | tee "$OUT_DIR/versions.txt"
    arm_flags=()
    while IFS= read -r arm; do
        [ -n "$arm" ] && arm_flags+=(--arm "$arm")
    done <<< "$ARMS"
    # shellcheck disable=SC2086  # FOLDS, SEEDS and EXTRA are word lists
    $PY -m training.sweep --out "$OUT_DIR/sweep" --fold $FOLDS "${arm_flags[@]}" --seeds $SEEDS --parallel 8 \
        --budget-min "$BUDGET_MIN" -- --data "amibr=$DATA" --workers 2 --threads 1 --plot-every 0 ${EXTRA:-} \
        2>&1 | tee "$OUT_DIR/sweep.log"
    find "$OUT_DIR/sweep" -name '*.pt' -delete  # checkpoints (~60 MB a run) cannot come back; reports can
    shopt -s nullglob
    reports=("$OUT_DIR"/sweep/*/heldout.json)
    if [ ${#reports[@]} -gt 0 ]; then
        # The first arm's runs first: compare pairs every other run with that arm's run of the same fold and seed.
        first_arm=${ARMS%%=*}
        ordered=("$OUT_DIR"/sweep/*-"$first_arm"-s*/heldout.json)
        for r in "${reports[@]}"; do
            case " ${ordered[*]} " in *" $r "*) ;; *) ordered+=("$r") ;; esac
        done
        $PY -m training.compare --held-out "${ordered[@]%/heldout.json}" | tee "$OUT_DIR/compare.md"
    fi
    ;;
*)
    sed -n '2,/^set -euo/{/^set -euo/!p}' "$0" >&2  # the header comment
    exit 2
    ;;
esac
