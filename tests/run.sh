#!/usr/bin/env bash
# The project's test command (README.md): fetches the real-model assets the tests use into
# a cache outside the repository, then runs every workspace test in release mode (the
# numeric tests are heavy). With GLIMPSE_REQUIRE_ASSETS=1 a test whose asset is missing
# fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/scripts/fetch_assets.sh
export GLIMPSE_REQUIRE_ASSETS=1
cargo test --workspace --release "$@"
