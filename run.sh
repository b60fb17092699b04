#!/usr/bin/env bash
# The main job: classify the bundled test stack exactly as the Grand Challenge container does,
# and print the JSON it writes.  Usage: ./run.sh [INPUT_DIR] [OUTPUT_DIR]
set -euo pipefail
cd "$(dirname "$0")"
source scripts/venv.sh
in="${1:-test/input}"
out="${2:-output}"
"$PY" process.py --input "$in" --output "$out"
cat "$out/multiple-mitotic-figure-classification.json"
