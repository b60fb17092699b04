#!/usr/bin/env bash
# Build the image and run it as the organisers do, on test/input, then compare each output with
# test/expected_output.json:
#   1. the baked-in weights (no /opt/ml/model), read-only root filesystem, no network;
#   2. the same with model.tar.gz (the Grand Challenge model upload) extracted at /opt/ml/model:ro,
#      whose log must say it used /opt/ml/model;
#   3. test/image_check.py inside the image: non-root, weights load, no socket, writes only
#      /output and /tmp.
# Without a container engine (or with MIDOG_NO_CONTAINER=1) it says so and runs process.py from the
# local virtual environment instead. Extra arguments go to build.sh.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/engine.sh
[ "${MIDOG_NO_CONTAINER:-0}" = 1 ] && ENGINE=""
work="$(mktemp -d)"
vol=""
cleanup() {
  [ -n "$vol" ] && "$ENGINE" volume rm -f "$vol" >/dev/null 2>&1
  # Files the container user wrote may belong to a mapped uid under rootless podman.
  rm -rf "$work" 2>/dev/null || { [ "$ENGINE" = podman ] && podman unshare rm -rf "$work"; } || true
}
trap cleanup EXIT
source scripts/venv.sh  # test/compare.py runs here, outside the image

if [ -z "$ENGINE" ]; then
  echo "no container engine (docker or podman) in use: running process.py from the local virtual environment" >&2
  mkdir -m 0777 "$work/out"
  "$PY" process.py --input test/input --output "$work/out"
  "$PY" test/compare.py test/expected_output.json "$work/out/multiple-mitotic-figure-classification.json"
  exit 0
fi

./build.sh "$@"
run_image() {  # run_image NAME [engine run options...]: the organisers' flags (scripts/engine.sh)
  local name="$1"; shift
  mkdir -m 0777 "$work/$name"
  vol="midog25-t2-tmp-$$-$name"
  "$ENGINE" volume create "$vol" >/dev/null
  "$ENGINE" run "${GC_RUN_FLAGS[@]}" \
    -v "$PWD/test/input:/input:ro" -v "$work/$name:/output" -v "$vol:/tmp" "$@" 2>&1 | tee "$work/$name.log"
  local rc="${PIPESTATUS[0]}"
  "$ENGINE" volume rm -f "$vol" >/dev/null
  vol=""
  return "$rc"
}

echo "== run 1: baked-in weights" >&2
run_image baked --read-only "$IMAGE_TAG"
grep -q "^weights /opt/app/weights " "$work/baked.log" || { echo "error: run 1 did not use /opt/app/weights" >&2; exit 1; }
"$PY" test/compare.py test/expected_output.json "$work/baked/multiple-mitotic-figure-classification.json"

echo "== run 2: model tarball mounted at /opt/ml/model" >&2
mkdir -m 0755 "$work/model"
tar -czf "$work/model.tar.gz" -C weights model.safetensors model_card.json
tar -xzf "$work/model.tar.gz" -C "$work/model"
chmod -R a+rX "$work/model"
run_image mounted --read-only -v "$work/model:/opt/ml/model:ro" "$IMAGE_TAG"
grep -q "^weights /opt/ml/model " "$work/mounted.log" || { echo "error: run 2 did not use /opt/ml/model" >&2; exit 1; }
"$PY" test/compare.py test/expected_output.json "$work/mounted/multiple-mitotic-figure-classification.json"
# Same weights on the same machine: the same numbers as run 1, not merely within tolerance.
"$PY" test/compare.py --tolerance 1e-6 "$work/baked/multiple-mitotic-figure-classification.json" \
  "$work/mounted/multiple-mitotic-figure-classification.json"

echo "== run 3: checks inside the image" >&2
run_image check --entrypoint python -e PYTHONPATH=/opt/app \
  -v "$PWD/test/image_check.py:/opt/check/image_check.py:ro" "$IMAGE_TAG" /opt/check/image_check.py
echo "test.sh: the image passed (engine $ENGINE, image $IMAGE_TAG)"
