#!/usr/bin/env bash
# Run the tests (sets up the virtual environment on first use).
#   ./run_tests.sh            the default set: everything not marked slow (about 10 minutes on 2 CPU cores)
#   ./run_tests.sh --all      everything, slow tests included: card reproduction, container images
#                             (test.sh), smoke training runs; also the default when CI=true (.ci/run)
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
