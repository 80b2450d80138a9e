#!/usr/bin/env bash
# Debian's chromium for the browser test (Playwright drives it; it never downloads a browser).
set -euo pipefail
command -v chromium >/dev/null && exit 0
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -q chromium >/dev/null 2>&1 || {
  $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q chromium >/dev/null; }
command -v chromium
