#!/usr/bin/env bash
# qgen set-up on a fresh Debian/Ubuntu machine: system toolchains, Python package (+ test extras),
# and the npm package that runs real MicroPython under Node for the MicroPython tests.
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

APT_PACKAGES="gcc make gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm nodejs npm"
missing=""
for p in $APT_PACKAGES; do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
# Node may come from elsewhere than Debian's package: only ask apt for it when no node is on PATH
if command -v node >/dev/null 2>&1; then missing="$(echo "$missing" | sed 's/ nodejs//; s/ npm//')"; fi
if [ -n "${missing// /}" ]; then
    echo "[setup] apt-get install$missing"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

echo "[setup] pip install qgen (torch pinned to 2.13.0, CPU)"
python3 -m pip install -q --disable-pip-version-check "torch==2.13.0"
python3 -m pip install -q --disable-pip-version-check -e ".[test]"

if [ -f package-lock.json ] && command -v npm >/dev/null 2>&1; then
    echo "[setup] npm ci (MicroPython for the MicroPython target tests)"
    npm ci --silent --no-audit --no-fund
fi
echo "[setup] done: try 'qgen demo'"
