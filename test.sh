#!/usr/bin/env bash
# Run the image exactly as the organisers do on test/input and compare with test/expected_output.json.
# Without a container engine, says so and runs process.py from the local virtual environment instead.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/engine.sh
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
chmod 0777 "$out"
if [ -n "$ENGINE" ]; then
  ./build.sh "$@"
  vol="midog25-t2-tmp-$$"
  "$ENGINE" volume create "$vol" >/dev/null
  gpus=""
  if [ "$ENGINE" = docker ] && docker info 2>/dev/null | grep -qi nvidia; then gpus="--gpus all"; fi
  # shellcheck disable=SC2086
  "$ENGINE" run --rm --network none $gpus --platform=linux/amd64 \
    -v "$PWD/test/input:/input:ro" -v "$out:/output" -v "$vol:/tmp" "$IMAGE_TAG"
  "$ENGINE" volume rm "$vol" >/dev/null
else
  echo "no container engine (docker or podman) here: running process.py from the local virtual environment" >&2
  source scripts/venv.sh
  "$PY" process.py --input test/input --output "$out"
fi
source scripts/venv.sh
"$PY" test/compare.py test/expected_output.json "$out/multiple-mitotic-figure-classification.json"
