#!/usr/bin/env bash
# Build the container image (linux/amd64) with the one tag all scripts use.
# With podman and the local base image of scripts/base-image.sh, the build runs offline
# (--network none, --pull=never) on that base; otherwise it pulls pytorch/pytorch from the registry.
# Extra arguments go to the engine, e.g. ./build.sh --no-cache
set -euo pipefail
cd "$(dirname "$0")"
source scripts/engine.sh
if [ -z "$ENGINE" ]; then
  echo "error: no working container engine (docker or podman) on this machine; scripts/base-image.sh installs podman (Debian, root)" >&2
  exit 1
fi
args=(--platform=linux/amd64 --tag "$IMAGE_TAG")
if [ "$ENGINE" = podman ] && image_exists "$LOCAL_BASE_IMAGE"; then
  wheelhouse="$MIDOG_CACHE/wheelhouse-$(sha1sum requirements.txt | cut -c1-12)"
  if [ ! -f "$wheelhouse/.complete" ] || [ ! -f "$MIDOG_CACHE/pip-offline.conf" ]; then
    echo "error: $wheelhouse is missing or incomplete; run scripts/base-image.sh (requirements.txt changed?)" >&2
    exit 1
  fi
  echo "building $IMAGE_TAG offline on $LOCAL_BASE_IMAGE" >&2
  args+=(--pull=never --network none --build-arg "BASE_IMAGE=$LOCAL_BASE_IMAGE"
         -v "$wheelhouse:/mnt:ro" -v "$MIDOG_CACHE/pip-offline.conf:/etc/pip.conf:ro")
fi
"$ENGINE" build "${args[@]}" "$@" .
