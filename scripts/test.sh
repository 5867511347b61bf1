#!/usr/bin/env bash
# The README's test command after set-up: lint, types, then the whole pytest suite.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python  # made by scripts/setup.sh; the tests' subprocesses run sys.executable, i.e. this one
start=$(date +%s)
echo "== ruff"; "$py" -m ruff check hvd tests bench
echo "== mypy --strict hvd"; "$py" -m mypy hvd
echo "== pytest"
"$py" -m pytest -p no:cacheprovider -q -ra --durations=15 "$@"
echo "make test took $(( $(date +%s) - start )) s (after set-up)"
