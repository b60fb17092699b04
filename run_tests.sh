#!/usr/bin/env bash
# Run the tests (sets up the virtual environment on first use).
#   ./run_tests.sh            the default set: everything not marked slow (about 4 minutes on 2 CPU cores
#                             without bf16, 2 with it, when nothing else runs)
#   ./run_tests.sh --all      everything, slow tests included: the card's out-of-fold numbers recomputed,
#                             container images (test.sh), the born-again chain and the GPU sweep call;
#                             also what CI=true runs (.ci/run passes --all)
# Other arguments go to pytest (e.g. ./run_tests.sh tests/test_tta.py -x).
set -euo pipefail
cd "$(dirname "$0")"
all=0
[ "${CI:-}" = true ] && all=1
args=()
for arg in "$@"; do
  if [ "$arg" = --all ]; then all=1; else args+=("$arg"); fi
done
source scripts/venv.sh
if [ "$all" = 1 ]; then
  echo "run_tests.sh: all tests, slow ones included" >&2
  exec "$PY" -m pytest -q ${args[@]+"${args[@]}"}
fi
echo "run_tests.sh: the default set (-m 'not slow'); ./run_tests.sh --all or CI=true runs everything" >&2
exec "$PY" -m pytest -q -m "not slow" ${args[@]+"${args[@]}"}
