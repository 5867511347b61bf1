#!/usr/bin/env bash
# The README's test command after set-up: lint, types, then the whole pytest suite.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
echo "== ruff"; python3 -m ruff check hvd tests bench
echo "== mypy --strict hvd"; python3 -m mypy hvd
echo "== pytest"
python3 -m pytest -p no:cacheprovider -q -ra --durations=15 "$@"
echo "make test took $(( $(date +%s) - start )) s (after set-up)"
