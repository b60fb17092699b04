#!/usr/bin/env bash
# Shared by run.sh, build.sh, test.sh, export.sh: one image tag, and a working container engine if any.
# Sets IMAGE_TAG, ENGINE (docker | podman | empty) and, for podman, CONTAINERS_CONF.
IMAGE_TAG="${IMAGE_TAG:-midog25-t2-mix-align-distil}"
# The offline base image made by scripts/base-image.sh (podman only): Debian bookworm + torch.
LOCAL_BASE_IMAGE="${LOCAL_BASE_IMAGE:-localhost/midog25-t2-base:latest}"
MIDOG_CACHE="${MIDOG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/midog25-t2}"
ENGINE=""
if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  ENGINE=docker
elif command -v podman >/dev/null 2>&1; then
  # Sandboxed machines: crun fails on hybrid cgroups ("cgroups in hybrid mode not supported") and
  # podman's default ulimits fail at setrlimit without CAP_SYS_RESOURCE. runc plus ulimits at the
  # current hard limits works for podman build, podman run and buildah bud alike.
  if [ -z "${CONTAINERS_CONF:-}" ] && command -v runc >/dev/null 2>&1; then
    mkdir -p "$MIDOG_CACHE"
    _nofile="$(ulimit -Hn)"
    [ "$_nofile" = unlimited ] && _nofile=1048576
    cat > "$MIDOG_CACHE/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=${_nofile}:${_nofile}", "nproc=32768:32768"]

[engine]
runtime = "runc"
CONF
    CONTAINERS_CONF="$MIDOG_CACHE/containers.conf"
    export CONTAINERS_CONF
  fi
  if podman info >/dev/null 2>&1; then ENGINE=podman; fi
fi

# image_exists NAME: whether the engine holds an image of that name (never contacts a registry).
image_exists() {
  case "$ENGINE" in
    podman) podman image exists "$1" ;;
    docker) docker image inspect "$1" >/dev/null 2>&1 ;;
    *) return 1 ;;
  esac
}

# The organisers' run flags (Grand Challenge's example do_test_run.sh), for run.sh and test.sh;
# plus the GPU when Docker has the NVIDIA runtime.
GC_RUN_FLAGS=(--rm --platform=linux/amd64 --network none --cap-drop ALL --security-opt no-new-privileges
              --shm-size 128m --pids-limit 256 --memory "${MEM_LIMIT:-8g}" --memory-swap "${MEM_LIMIT:-8g}")
if [ "$ENGINE" = docker ] && docker info 2>/dev/null | grep -qi nvidia; then GC_RUN_FLAGS+=(--gpus all); fi
export IMAGE_TAG LOCAL_BASE_IMAGE MIDOG_CACHE ENGINE
