#!/usr/bin/env bash
# Write the files Grand Challenge takes: the gzipped image (Algorithm > Containers) and
# model.tar.gz of weights/ (Algorithm > Models, extracted to /opt/ml/model).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/engine.sh
stamp="$(date +%Y-%m-%d)"
tar -czf model.tar.gz -C weights model.safetensors model_card.json
if [ -n "$ENGINE" ]; then
  ./build.sh "$@"
  "$ENGINE" save "$IMAGE_TAG" | gzip -c > "${IMAGE_TAG}_${stamp}.tar.gz"
  ls -l "${IMAGE_TAG}_${stamp}.tar.gz" model.tar.gz
  sha256sum "${IMAGE_TAG}_${stamp}.tar.gz" model.tar.gz
else
  echo "no container engine: wrote model.tar.gz only" >&2
  ls -l model.tar.gz
  sha256sum model.tar.gz
fi
