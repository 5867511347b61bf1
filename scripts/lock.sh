#!/usr/bin/env bash
# `make lock`: refresh the pinned, hashed dependency locks from pyproject.toml with pip-tools.
#   requirements-dev.lock  everything `make test` installs (runtime + the dev extra)
#   requirements.lock      the runtime subset, at the same versions (what the .deb ships)
# Existing pins are kept (only new or changed requirements move); `make lock-upgrade` (or
# UPGRADE=1) moves every pin to the newest release allowed by pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
tools=build/lock-venv
if [ ! -x "$tools/bin/pip-compile" ]; then
  "$PY" -m venv "$tools"
  "$tools/bin/pip" install -q "pip-tools==7.5.*"
fi
# only PyPI (the public index every machine reaches), never a machine's local mirror or wheel directory
unset PIP_FIND_LINKS PIP_EXTRA_INDEX_URL PIP_INDEX_URL PIP_CONSTRAINT
export PIP_CONFIG_FILE=/dev/null
upgrade=()
if [ "${UPGRADE:-0}" = 1 ]; then upgrade=(--upgrade); fi
# pip itself is pinned too: set-up upgrades a venv's pip first (Debian's pip 23.0 rebuilds sdists
# such as libvirt-python on every install in hash-checking mode; newer pips reuse the wheel cache)
echo "pip" > build/pip.in
common=(--quiet --allow-unsafe --generate-hashes --strip-extras --no-emit-index-url --no-emit-find-links --resolver=backtracking)
"$tools/bin/pip-compile" "${common[@]}" "${upgrade[@]}" --extra dev -o requirements-dev.lock pyproject.toml build/pip.in
# the runtime lock follows the dev lock's versions, so tests run what the package ships
"$tools/bin/pip-compile" "${common[@]}" -c requirements-dev.lock -o requirements.lock pyproject.toml build/pip.in
echo "lock: wrote requirements-dev.lock ($(grep -c '==' requirements-dev.lock) pins)" \
     "and requirements.lock ($(grep -c '==' requirements.lock) pins)"
