#!/usr/bin/env bash
# Shared by build.sh, test.sh, export.sh: one image tag, and a working container engine if any.
IMAGE_TAG="${IMAGE_TAG:-midog25-t2-mix-align-distil}"
ENGINE=""
if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  ENGINE=docker
elif command -v podman >/dev/null 2>&1 && podman info >/dev/null 2>&1; then
  ENGINE=podman
fi
export IMAGE_TAG ENGINE
