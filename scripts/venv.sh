#!/usr/bin/env bash
# Create or refresh a virtual environment with hvd and its pinned dependencies.
#   scripts/venv.sh [--python PY] [--dir DIR] [--lock FILE] [--no-editable]
# Defaults: python3, .venv, requirements-dev.lock, editable install of this checkout.
# Debian's python3 refuses `pip install` outside a venv (PEP 668), so everything runs from one.
# Idempotent: nothing is installed when DIR was built by the same interpreter from the same
# lock, pyproject.toml and checkout (a stamp in DIR records them).
set -euo pipefail
cd "$(dirname "$0")/.."
py=python3 dir=.venv lock=requirements-dev.lock editable=1
while [ $# -gt 0 ]; do
  case "$1" in
    --python) py="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    --lock) lock="$2"; shift 2 ;;
    --no-editable) editable=0; shift ;;
    *) echo "venv: unknown argument $1" >&2; exit 2 ;;
  esac
done
here=$(pwd)
dir=$(realpath -m "$dir")
pybin=$(command -v "$py") || { echo "venv: no $py on PATH" >&2; exit 1; }
if ! "$pybin" -c "import sys; sys.exit(sys.version_info < (3, 11))"; then
  echo "venv: hvd needs Python 3.11 or newer; $pybin is $("$pybin" -V 2>&1)" >&2
  exit 1
fi
if ! "$pybin" -c "import venv, ensurepip" 2>/dev/null; then
  echo "venv: $pybin has no venv/ensurepip module (on Debian: apt-get install python3-venv)" >&2
  exit 1
fi
# the interpreter that will run the venv, after pyenv shims and symlinks
real_py=$("$pybin" -c "import os, sys; print(os.path.realpath(sys.executable))")
stamp=$( (echo "$real_py $here $editable"; cat "$lock" pyproject.toml) | sha256sum | cut -d' ' -f1)

if [ -f "$dir/.hvd-stamp" ] && [ "$(cat "$dir/.hvd-stamp")" = "$stamp" ] \
   && "$dir/bin/python" -c "import hvd" 2>/dev/null; then
  exit 0
fi
# a venv made by another interpreter (or a broken one) is rebuilt, not patched
if [ -d "$dir" ] && ! { [ -x "$dir/bin/python" ] \
    && [ "$("$dir/bin/python" -c 'import os, sys; print(os.path.realpath(sys._base_executable))' 2>/dev/null)" = "$real_py" ]; }; then
  echo "venv: $dir was made by another interpreter: rebuilding it"
  rm -rf "$dir"
fi
[ -x "$dir/bin/python" ] || "$pybin" -m venv "$dir"
echo "venv: installing $lock into $dir ($real_py)"
# quiet: this machine kind's pip config names local mirrors that lack most projects, and
# setuptools warns about every editable install
pip=(env PYTHONWARNINGS=ignore "$dir/bin/python" -m pip --disable-pip-version-check)
# pip first, from its pinned line (an older pip rebuilds sdists such as libvirt-python every time)
pip_lock=$(mktemp); trap 'rm -f "$pip_lock"' EXIT
awk '/^pip==/{p=1} p&&/^[^ ]/&&!/^pip==/{p=0} p' "$lock" > "$pip_lock"
pip_install() { "${pip[@]}" install -q "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
pip_install --require-hashes -r "$pip_lock"
pip_install --require-hashes -r "$lock"
if [ "$editable" = 1 ]; then pip_install --no-deps -e .; else pip_install --no-deps .; fi
# a requirement added to pyproject.toml but not yet locked is missing now: say how to fix it
if ! problems=$("${pip[@]}" check 2>&1); then
  echo "venv: $lock does not satisfy pyproject.toml (run: make lock):" >&2
  echo "$problems" >&2
  exit 1
fi
# after an editable install of another checkout, `import hvd` must still find THIS one
(cd / && "$dir/bin/python" -c "import hvd, sys; sys.exit(hvd.__file__ != '$here/hvd/__init__.py' and $editable)") \
  || { echo "venv: hvd in $dir is not this checkout's" >&2; exit 1; }
echo "$stamp" > "$dir/.hvd-stamp"
