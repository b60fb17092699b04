#!/usr/bin/env bash
# Write the files Grand Challenge takes, and print their sizes and sha256:
#   midog25-t2-mix-align-distil_<date>.tar.gz  the gzipped image (Algorithm > Containers; a docker-archive)
#   model.tar.gz                               weights/ in the layout /opt/ml/model expects (Algorithm > Models)
# Extra arguments go to build.sh. With podman 4.3, load the image back with `gunzip -c FILE | podman load`
# (podman 4.3 cannot load the gzipped archive directly; Docker and Grand Challenge can).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/engine.sh
stamp="$(date +%Y-%m-%d)"
tar -czf model.tar.gz -C weights model.safetensors model_card.json
files=(model.tar.gz)
if [ -n "$ENGINE" ]; then
  ./build.sh "$@"
  image="${IMAGE_TAG}_${stamp}.tar.gz"
  echo "saving $IMAGE_TAG to $image (a few minutes: the CUDA libraries dominate)" >&2
  fmt=()
  [ "$ENGINE" = podman ] && fmt=(--format docker-archive)
  "$ENGINE" save "${fmt[@]}" "$IMAGE_TAG" | gzip -c > "$image.partial"
  mv "$image.partial" "$image"
  files=("$image" model.tar.gz)
else
  echo "no container engine (docker or podman): wrote model.tar.gz only; scripts/base-image.sh installs podman (Debian, root)" >&2
fi
ls -l "${files[@]}"
sha256sum "${files[@]}"
