#!/usr/bin/env bash
# qgen set-up on a fresh Debian/Ubuntu machine: system toolchains, a project virtual environment
# (.venv: Debian's own python3 is "externally managed", PEP 668, so nothing is pip-installed into it)
# holding qgen + test extras with torch pinned, and the npm package that runs real MicroPython under
# Node for the MicroPython tests.
# Idempotent: re-running only installs what is missing.
#   QGEN_PYTHON=/path/to/python3   interpreter the venv is made from (default: python3 on PATH)
#   QGEN_VENV=DIR                  where the venv lives (default: .venv in the project)
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
PYTHON="${QGEN_PYTHON:-python3}"
VENV="${QGEN_VENV:-.venv}"

# chromium: headless, for the HTML report's real-browser test (tests/test_report_html.py skips without it)
APT_PACKAGES="gcc make gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm cmake ninja-build nodejs npm gcc-avr avr-libc simavr arduino-builder arduino-core-avr chromium"
missing=""
for p in $APT_PACKAGES; do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
# Node may come from elsewhere than Debian's package: only ask apt for it when no node is on PATH
if command -v node >/dev/null 2>&1; then missing="$(echo "$missing" | sed 's/ nodejs//; s/ npm//')"; fi
# python3 -m venv needs ensurepip, which Debian ships separately (python3-venv / python3.X-venv)
if ! "$PYTHON" -c "import ensurepip, venv" >/dev/null 2>&1; then
    pyver="$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
    missing="$missing python3-venv python${pyver}-venv"
fi
if [ -n "${missing// /}" ]; then
    echo "[setup] apt-get install$missing"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# A venv whose interpreter is gone (moved project, removed Python) is rebuilt rather than half-used.
if [ -e "$VENV" ] && ! "$VENV/bin/python" -c "import sys" >/dev/null 2>&1; then
    echo "[setup] $VENV is broken: recreating it"
    rm -rf "$VENV"
fi
if [ ! -e "$VENV/bin/python" ]; then
    echo "[setup] creating the virtual environment $VENV ($("$PYTHON" --version 2>&1))"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)

echo "[setup] pip install qgen into $VENV (torch pinned to 2.13.0, CPU)"
"${PIP[@]}" "torch==2.13.0"
"${PIP[@]}" -e ".[test,tune]"

if [ -f package-lock.json ] && command -v npm >/dev/null 2>&1; then
    echo "[setup] npm ci (MicroPython for the MicroPython target tests)"
    npm ci --silent --no-audit --no-fund
fi
echo "[setup] done: try '$VENV/bin/qgen demo'"
