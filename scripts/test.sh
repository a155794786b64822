#!/usr/bin/env bash
# The test command (README, .ci/run): the static checks first, since they take seconds and a style
# or type error should fail the run before the database and speech-model tests start, then pytest.
# Extra arguments go to pytest: bash scripts/test.sh -x -q tests/unit/test_layout.py
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${DHGQ_VENV:-.venv}

step() { echo "test: $*" >&2; }

step "ruff check"
"$VENV/bin/ruff" check .
step "ruff format --check"
"$VENV/bin/ruff" format --check .
step "mypy dhgq modal_gpu"
"$VENV/bin/mypy" dhgq modal_gpu
step "pytest $*"
"$VENV/bin/python" -m pytest "$@"
