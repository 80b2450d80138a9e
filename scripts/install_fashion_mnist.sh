#!/usr/bin/env bash
# Real images offline: Debian's dataset-fashion-mnist puts the original idx files under
# /usr/share/datasets/fashion-mnist, where maehelpers looks for them (--dataset fashion_mnist).
set -euo pipefail
[ -d /usr/share/datasets/fashion-mnist ] && exit 0
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || {
  $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null; }
ls /usr/share/datasets/fashion-mnist
