#!/usr/bin/env bash
# Installs qemu-system-arm and qemu-system-aarch64 (Debian's qemu-system-arm package carries
# both) for the simulated bare-metal ports. Idempotent; needs root (CI runs as root).
#
# The machine image carries qemu-utils 10 from bookworm-backports, and qemu-system-arm 7.2
# from bookworm proper depends on a qemu-system-common that conflicts with it, so the
# emulator comes from bookworm-backports too. Backports also brings the newer emulator
# (mps3-an547's DDR, Cortex-M55 MVE fixes).
set -euo pipefail

have_qemu() {
  command -v qemu-system-arm >/dev/null 2>&1 && command -v qemu-system-aarch64 >/dev/null 2>&1
}

if have_qemu; then
  echo "qemu already installed: $(qemu-system-aarch64 --version | head -n1)"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install_qemu.sh: needs root (apt-get install); run it with sudo" >&2
  exit 1
fi

. /etc/os-release
codename="${VERSION_CODENAME:-bookworm}"
backports="${codename}-backports"
list=/etc/apt/sources.list.d/glimpse-backports.list
if ! grep -rqs "${backports}" /etc/apt/sources.list /etc/apt/sources.list.d/; then
  echo "deb http://deb.debian.org/debian ${backports} main" > "$list"
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends -t "${backports}" qemu-system-arm >/dev/null

if ! have_qemu; then
  echo "install_qemu.sh: qemu-system-arm installed but qemu-system-arm/-aarch64 not on PATH" >&2
  exit 1
fi
echo "installed: $(qemu-system-aarch64 --version | head -n1)"
