#!/usr/bin/env bash
# Create .venv in the checkout and install the project into it (with the test tools if asked: `setup.sh dev`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# The TEN VAD's native library needs the LLVM C++ runtime (Debian: libc++1).
if ! ldconfig -p 2>/dev/null | grep 'libc++\.so\.1' >/dev/null; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq libc++1 >/dev/null
  else
    echo "warning: libc++1 is missing; the ten VAD will not load" >&2
  fi
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
extra=""
[ "${1:-}" = "dev" ] && extra="[dev]"
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extra}"
