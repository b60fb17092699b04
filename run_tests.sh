#!/usr/bin/env bash
# Run the whole test suite (sets up the virtual environment on first use).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/venv.sh
exec "$PY" -m pytest -q "$@"
