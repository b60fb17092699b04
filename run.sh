#!/usr/bin/env bash
# The main job: build the container image and run it, as the organisers do, on the bundled test
# stack (test/input); print the JSON it writes.   Usage: ./run.sh [INPUT_DIR] [OUTPUT_DIR]
#
# Engine: docker if it runs, else podman. On a Debian machine with neither (and root), this first
# runs scripts/base-image.sh: it installs podman and builds an offline base image (torch from the
# local wheels; ~4 minutes once, cached). Where no engine can be had, or with MIDOG_NO_CONTAINER=1,
# it runs the same process.py from the local virtual environment instead, and says so.
set -euo pipefail
cd "$(dirname "$0")"
in="$(realpath "${1:-test/input}")"
out="${2:-output}"
source scripts/engine.sh
if [ "${MIDOG_NO_CONTAINER:-0}" = 1 ]; then
  ENGINE=""
elif [ "$ENGINE" != docker ] && ! image_exists "$LOCAL_BASE_IMAGE" \
     && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  scripts/base-image.sh
  source scripts/engine.sh
fi

if [ -z "$ENGINE" ]; then
  echo "no container engine (docker or podman): running process.py from the local virtual environment" >&2
  source scripts/venv.sh
  "$PY" process.py --input "$in" --output "$out"
else
  ./build.sh >&2
  mkdir -p "$out"
  chmod 0777 "$out"  # the image's non-root user writes here
  out="$(realpath "$out")"
  rm -f "$out/multiple-mitotic-figure-classification.json"
  vol="midog25-t2-tmp-$$"
  "$ENGINE" volume create "$vol" >/dev/null
  trap '"$ENGINE" volume rm -f "$vol" >/dev/null 2>&1' EXIT
  echo "running $IMAGE_TAG ($ENGINE) on $in" >&2
  "$ENGINE" run "${GC_RUN_FLAGS[@]}" --read-only \
    -v "$in:/input:ro" -v "$out:/output" -v "$vol:/tmp" "$IMAGE_TAG" >&2
fi
cat "$out/multiple-mitotic-figure-classification.json"
