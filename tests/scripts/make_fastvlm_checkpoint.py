#!/usr/bin/env python3
"""Write a random checkpoint shaped exactly like Apple's FastVLM-0.5B (LLaVA `llava_qwen2`).

No real weights are needed to exercise the converter at full size: this script writes a
directory with config.json (the fields of spec §7.2 / §4.1) and model.safetensors holding
exactly the tensor names and shapes of /work/shared/spec/fastvlm-0.5b-keys.txt (parsed,
not retyped), in BF16 like the released checkpoint, with `num_batches_tracked` as I64
scalars. Values are plausible rather than trained: fan-in scaled vision weights, N(0, 0.02)
decoder and projector weights, BatchNorm variances in [0.5, 2], layer scales log-uniform
in [1e-5, 1e-1], norm weights near 1.

Only numpy (tested with 2.4) is used; the safetensors file is written by hand (8-byte LE
header length, JSON header, raw little-endian data) and BF16 is the upper half of the f32
bits after round-to-nearest-even. Every tensor draws from its own generator seeded by the
base seed and a CRC of its name, so the output does not depend on write order and reruns
give identical bytes. The ~1.5 GB output is never committed:

    python3 tests/scripts/make_fastvlm_checkpoint.py --out /tmp/fastvlm-0.5b-random
"""

import argparse
import json
import re
import sys
import zlib
from pathlib import Path

import numpy as np

SEED = 20250901
KEYS = Path("/work/shared/spec/fastvlm-0.5b-keys.txt")
# Rows generated per step for big matrices, so memory stays near one chunk.
CHUNK_ELEMS = 1 << 24

CONFIG = {
    "_name_or_path": "fastvlm-0.5b-random",
    "architectures": ["LlavaQwen2ForCausalLM"],
    "model_type": "llava_qwen2",
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "hidden_act": "silu",
    "hidden_size": 896,
    "initializer_range": 0.02,
    "intermediate_size": 4864,
    "max_position_embeddings": 32768,
    "max_window_layers": 24,
    "num_attention_heads": 14,
    "num_hidden_layers": 24,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "use_sliding_window": False,
    # lm_head.weight is stored (spec §4.1 caveat); this copy of the config keeps it.
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.39.3",
    "use_cache": True,
    "vocab_size": 151936,
    "mm_vision_tower": "mobileclip_l_1024",
    "mm_hidden_size": 3072,
    "mm_projector_type": "mlp2x_gelu",
    "mm_vision_select_layer": -2,
    "mm_vision_select_feature": "patch",
    "mm_patch_merge_type": "flat",
    "mm_use_im_start_end": False,
    "mm_use_im_patch_token": False,
    "image_aspect_ratio": "pad",
    "image_grid_pinpoints": None,
    "unfreeze_mm_vision_tower": True,
    "tokenizer_model_max_length": 8192,
    "tokenizer_padding_side": "right",
    "image_token_index": 151646,
}


def parse_keys(path):
    """[(name, shape, is_int64)] in file order."""
    out = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        name, shape, kind = (line.split("\t") + [""])[:3]
        dims = tuple(int(d) for d in re.findall(r"\d+", shape))
        out.append((name, dims, kind.strip().startswith("int64")))
    return out


def bf16_bytes(x):
    """f32 array -> little-endian bf16 bytes, round to nearest even (no NaNs occur)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    u = (u + (((u >> 16) & 1) + 0x7FFF)) >> 16
    return u.astype("<u2").tobytes()


def fan_in(shape):
    return int(np.prod(shape[1:])) if len(shape) > 1 else 1


def sampler(name, shape):
    """A function (rng, n) -> f32 values for `n` elements of this tensor."""
    leaf = name.rsplit(".", 1)[-1]
    vision = ".vision_tower." in name

    def normal(std, mean=0.0):
        return lambda rng, n: (mean + std * rng.standard_normal(n, dtype=np.float32)).astype(np.float32)

    if name.endswith("running_var"):
        return lambda rng, n: rng.uniform(0.5, 2.0, n).astype(np.float32)
    if name.endswith("running_mean"):
        return normal(0.1)
    if ".bn." in name:
        return normal(0.1, 1.0) if leaf == "weight" else normal(0.05)
    if "layer_scale" in name:
        return lambda rng, n: np.exp(rng.uniform(np.log(1e-5), np.log(1e-1), n)).astype(np.float32)
    if "norm" in name and leaf == "weight":
        return normal(0.05, 1.0)
    if leaf == "bias":
        return normal(0.02)
    if vision:
        return normal(1.0 / np.sqrt(fan_in(shape)))
    return normal(0.02)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="output directory (created)")
    ap.add_argument("--keys", type=Path, default=KEYS, help="name/shape list to follow")
    args = ap.parse_args()

    keys = parse_keys(args.keys)
    names = [k[0] for k in keys]
    if len(set(names)) != len(names):
        sys.exit("duplicate names in the key list")

    header = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, is_i64 in keys:
        n = int(np.prod(shape)) if shape else 1
        size = n * (8 if is_i64 else 2)
        header[name] = {
            "dtype": "I64" if is_i64 else "BF16",
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    hbytes = json.dumps(header, separators=(",", ":")).encode()
    hbytes += b" " * (-len(hbytes) % 8)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "config.json").write_text(json.dumps(CONFIG, indent=2) + "\n")
    path = args.out / "model.safetensors"
    total = 0
    with open(path, "wb") as f:
        f.write(len(hbytes).to_bytes(8, "little"))
        f.write(hbytes)
        for name, shape, is_i64 in keys:
            n = int(np.prod(shape)) if shape else 1
            rng = np.random.default_rng([SEED, zlib.crc32(name.encode())])
            if is_i64:
                f.write(np.array([int(rng.integers(1, 1 << 20))] * n, dtype="<i8").tobytes())
                continue
            draw = sampler(name, shape)
            done = 0
            while done < n:
                m = min(CHUNK_ELEMS, n - done)
                f.write(bf16_bytes(draw(rng, m)))
                done += m
            total += n
    size = path.stat().st_size
    print(f"wrote {path} ({size / 2**30:.2f} GiB, {len(keys)} tensors, {total:,} bf16 values)")


if __name__ == "__main__":
    main()
