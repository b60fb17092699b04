#!/usr/bin/env bash
# Make the container build work on a machine with no image registry (Debian 12, root):
#   1. install podman (+ runc, buildah, debootstrap) from the machine's apt mirror, if no engine works;
#   2. a Debian bookworm minbase root filesystem with python3 -> image localhost/midog25-t2-os:bookworm;
#   3. a wheelhouse of requirements.txt made on the host with `pip download`;
#   4. localhost/midog25-t2-base:latest = (2) + torch/torchvision from (3), built with --network none.
# build.sh then builds the real Dockerfile on that base, unchanged, with --build-arg BASE_IMAGE.
# Idempotent and cached in $MIDOG_CACHE (default ~/.cache/midog25-t2): a second run takes seconds.
# Docker users with registry access do not need this script: build.sh pulls pytorch/pytorch.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
source scripts/engine.sh

log() { echo "[base-image] $*" >&2; }

if [ "$ENGINE" = docker ]; then
  log "docker works here; build.sh uses the registry's pytorch/pytorch base. Nothing to do."
  exit 0
fi
if [ -z "$ENGINE" ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "error: no container engine here, and installing podman needs root and apt-get" >&2
    exit 1
  fi
  log "installing podman, buildah, runc, debootstrap from the apt mirror"
  export DEBIAN_FRONTEND=noninteractive
  pkgs=(podman buildah runc debootstrap)
  apt-get install -y -q "${pkgs[@]}" >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q "${pkgs[@]}" >/dev/null; }
  unset CONTAINERS_CONF
  source scripts/engine.sh
  if [ "$ENGINE" != podman ]; then
    echo "error: podman was installed but 'podman info' fails" >&2
    exit 1
  fi
fi
if ! command -v debootstrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null
  else
    echo "error: debootstrap is needed to make the local base image (apt-get install debootstrap)" >&2
    exit 1
  fi
fi
mkdir -p "$MIDOG_CACHE"

# 2. The OS image.
os_image="localhost/midog25-t2-os:bookworm"
if ! image_exists "$os_image"; then
  mirror="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
  mirror="${mirror:-http://deb.debian.org/debian}"
  rootfs="$MIDOG_CACHE/rootfs"
  rm -rf "$rootfs"
  log "debootstrap bookworm (minbase) from $mirror"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$mirror" >"$MIDOG_CACHE/debootstrap.log" 2>&1 \
    || { tail -n 20 "$MIDOG_CACHE/debootstrap.log" >&2; echo "error: debootstrap failed (log: $MIDOG_CACHE/debootstrap.log)" >&2; exit 1; }
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  # An existing /etc/pip.conf, so builds can mount an offline pip configuration over it
  # (a bind mount onto a path missing from the image leaves an empty file behind in the layer).
  touch "$rootfs/etc/pip.conf"
  log "importing $os_image"
  tar -C "$rootfs" -c . | podman import --change 'CMD ["/bin/bash"]' - "$os_image" >/dev/null
  rm -rf "$rootfs"
fi

# 3. The wheelhouse: every wheel requirements.txt needs, for the image's Python 3.11 on x86_64.
req_hash="$(sha1sum requirements.txt | cut -c1-12)"
wheelhouse="$MIDOG_CACHE/wheelhouse-$req_hash"
if [ ! -f "$wheelhouse/.complete" ]; then
  log "pip download -r requirements.txt -> $wheelhouse"
  rm -rf "$wheelhouse"
  # The host's own Python 3.11 on x86_64 Linux picks the wheels the image's Python 3.11 needs.
  if ! python3 -m pip download -q --only-binary=:all: -r requirements.txt -d "$wheelhouse" \
       >"$MIDOG_CACHE/pip-download.log" 2>&1; then
    grep -v "is neither a file nor a directory" "$MIDOG_CACHE/pip-download.log" | tail -n 20 >&2
    echo "error: pip download -r requirements.txt failed (log: $MIDOG_CACHE/pip-download.log)" >&2
    exit 1
  fi
  touch "$wheelhouse/.complete"
fi
printf '[global]\nno-index = true\nfind-links = /mnt\n' > "$MIDOG_CACHE/pip-offline.conf"

# 4. The base image with torch + torchvision, rebuilt when requirements.txt changes.
if ! podman image exists "$LOCAL_BASE_IMAGE" \
   || [ "$(podman image inspect --format '{{index .Labels "midog25.requirements"}}' "$LOCAL_BASE_IMAGE")" != "$req_hash" ]; then
  ctx="$(mktemp -d)"
  trap 'rm -rf "$ctx"' EXIT
  grep -E '^(torch|torchvision)==' requirements.txt > "$ctx/torch-requirements.txt"
  log "building $LOCAL_BASE_IMAGE (torch from the wheelhouse, --network none)"
  podman build --pull=never --network none --platform=linux/amd64 \
    --build-arg OS_IMAGE="$os_image" --label "midog25.requirements=$req_hash" \
    -v "$wheelhouse:/mnt:ro" -v "$MIDOG_CACHE/pip-offline.conf:/etc/pip.conf:ro" \
    -f "$root/scripts/base.Dockerfile" -t "$LOCAL_BASE_IMAGE" "$ctx"
fi
log "ready: $LOCAL_BASE_IMAGE (wheelhouse $wheelhouse)"
