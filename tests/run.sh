#!/usr/bin/env bash
# The project's test command (README.md): fetches the real-model assets the tests use into
# a cache outside the repository, then runs every workspace test in release mode (the
# numeric tests are heavy). With GLIMPSE_REQUIRE_ASSETS=1 a test whose asset is missing
# fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
# The bare-metal ports build for these targets; rustup adds none by itself (the sim
# builder also adds a missing one, this just does it once, up front, with a clear log).
rustup target add thumbv8m.main-none-eabihf aarch64-unknown-none
bash tests/scripts/fetch_assets.sh
# The bare-metal ports run in QEMU (qemu-system-arm/-aarch64 from bookworm-backports).
bash tests/scripts/install_qemu.sh
# The C firmware (capi/firmware/mps3-an547) is built with arm-none-eabi-gcc.
bash tests/scripts/install_arm_gcc.sh
export GLIMPSE_REQUIRE_ASSETS=1 GLIMPSE_REQUIRE_QEMU=1
cargo test --workspace --release "$@"
# `glimpse flash` (probe-rs) is a cargo feature, off by default: its dry-run tests run here.
cargo test --release -p glimpse-tools --features flash "$@"
