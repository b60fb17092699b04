#!/usr/bin/env bash
# Create (once) and return the project's virtual environment with everything installed: the pinned
# requirements-dev.txt, then the project itself, editable (pyproject.toml; setuptools for the build
# comes from the package index). Usage: source scripts/venv.sh   -> sets $PY to the venv's python
set -euo pipefail
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_venv="${VENV:-$_root/.venv}"
_stamp="$_venv/.installed-$(cat "$_root/requirements.txt" "$_root/requirements-dev.txt" "$_root/pyproject.toml" | sha1sum | cut -c1-12)"
if [ ! -f "$_stamp" ]; then
  echo "setting up $_venv (first run installs torch, ~5 GB, a few minutes)..." >&2
  python3 -m venv "$_venv"
  "$_venv/bin/python" -m pip install -q --upgrade pip >&2 || true
  "$_venv/bin/python" -m pip install -q -r "$_root/requirements-dev.txt" >&2
  "$_venv/bin/python" -m pip install -q --no-deps -e "$_root" >&2
  rm -f "$_venv"/.installed-*
  touch "$_stamp"
fi
PY="$_venv/bin/python"
export PY
