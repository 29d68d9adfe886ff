#!/usr/bin/env bash
# Installs arm-none-eabi-gcc (Debian's gcc-arm-none-eabi) for the C firmware of the
# mps3-an547 port (capi/firmware/mps3-an547). Idempotent; needs root (CI runs as root).
# The firmware links no C library (the Rust static library brings memcpy and friends),
# so newlib is not needed.
set -euo pipefail

if command -v arm-none-eabi-gcc >/dev/null 2>&1; then
  echo "arm-none-eabi-gcc already installed: $(arm-none-eabi-gcc --version | head -n1)"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install_arm_gcc.sh: needs root (apt-get install); run it with sudo" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends gcc-arm-none-eabi binutils-arm-none-eabi >/dev/null
command -v arm-none-eabi-gcc >/dev/null 2>&1 || {
  echo "install_arm_gcc.sh: gcc-arm-none-eabi installed but arm-none-eabi-gcc not on PATH" >&2
  exit 1
}
