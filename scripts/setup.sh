#!/usr/bin/env bash
# Create .venv in the checkout and install the project into it (with the test tools if asked: `setup.sh dev`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
apt_updated=""
# Install Debian packages, refreshing the package lists once per run (before that, apt may find nothing).
apt_install() {
  if [ -z "$apt_updated" ]; then
    $SUDO apt-get update -qq >/dev/null
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}
# The TEN VAD's native library needs the LLVM C++ runtime (Debian: libc++1).
if ! ldconfig -p 2>/dev/null | grep 'libc++\.so\.1' >/dev/null; then
  if command -v apt-get >/dev/null 2>&1; then
    apt_install libc++1
  else
    echo "warning: libc++1 is missing; the ten VAD will not load" >&2
  fi
fi
# The playground test drives Debian's Chromium through playwright (which must never download a browser).
if [ "${1:-}" = "dev" ] && [ ! -x /usr/bin/chromium ]; then
  if command -v apt-get >/dev/null 2>&1; then
    apt_install chromium
  else
    echo "warning: /usr/bin/chromium is missing; the playground test will fail" >&2
  fi
fi
# The SIP tests drive Debian's SIPp (sip-tester, with its pcap files) and baresip as peers of the server.
if [ "${1:-}" = "dev" ] && [ ! -x /usr/bin/sipp ]; then
  if command -v apt-get >/dev/null 2>&1; then
    apt_install sip-tester
  else
    echo "warning: /usr/bin/sipp is missing; the SIPp tests will fail" >&2
  fi
fi
# SIPp plays RTP from pcap files through a raw socket: without root it needs CAP_NET_RAW.
if [ "${1:-}" = "dev" ] && [ "$(id -u)" != 0 ] && [ -x /usr/bin/sipp ] && command -v apt-get >/dev/null 2>&1; then
  command -v setcap >/dev/null 2>&1 || apt_install libcap2-bin
  $SUDO setcap cap_net_raw+ep /usr/bin/sipp || echo "warning: cannot give sipp CAP_NET_RAW; pcap tests will fail" >&2
fi
if [ "${1:-}" = "dev" ] && [ ! -x /usr/bin/baresip ]; then
  if command -v apt-get >/dev/null 2>&1; then
    apt_install baresip-core
  else
    echo "warning: /usr/bin/baresip is missing; the baresip tests will fail" >&2
  fi
fi
# bench/turn_eval.py speaks part of its labelled set with espeak-ng's voices (other speakers than Piper's one).
if [ "${1:-}" = "dev" ] && [ ! -x /usr/bin/espeak-ng ]; then
  if command -v apt-get >/dev/null 2>&1; then
    apt_install espeak-ng
  else
    echo "warning: /usr/bin/espeak-ng is missing; bench/turn_eval.py will use Piper's voice only" >&2
  fi
fi
# The host tests (tests/hosts) run hosts in network namespaces with iproute2's `ip` (and need root).
if [ "${1:-}" = "dev" ] && ! command -v ip >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    apt_install iproute2
  else
    echo "warning: ip (iproute2) is missing; the host tests will fail" >&2
  fi
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
extra=""
[ "${1:-}" = "dev" ] && extra="[dev]"
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extra}"
