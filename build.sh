#!/usr/bin/env bash
# Build the container image (linux/amd64) with the one tag all scripts use.
# Extra arguments go to the engine, e.g. ./build.sh --build-arg BASE_IMAGE=localhost/base
set -euo pipefail
cd "$(dirname "$0")"
source scripts/engine.sh
if [ -z "$ENGINE" ]; then
  echo "error: no working container engine (docker or podman) found on this machine" >&2
  exit 1
fi
"$ENGINE" build --platform=linux/amd64 --tag "$IMAGE_TAG" "$@" .
