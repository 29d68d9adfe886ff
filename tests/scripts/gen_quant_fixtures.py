#!/usr/bin/env python3
"""Golden fixtures for glimpse-quant (quant/tests/golden.rs), from independent references.

References: ml_dtypes for the OCP FP8 formats, gguf-py (llama.cpp's Python package) for
the ggml block formats. Pinned:

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install numpy "ml_dtypes==0.6.0" "gguf==0.19.0"
    /tmp/venv/bin/python tests/scripts/gen_quant_fixtures.py

Everything is little-endian raw arrays so the Rust side needs no parser; manifest.json
records versions, the seed and what each file holds. Seeded: reruns give identical bytes.
"""

import json
import math
import sys
from fractions import Fraction
from pathlib import Path

import ml_dtypes
import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

PINNED = {"ml_dtypes": "0.6.0", "gguf": "0.19.0"}
SEED = 20240611
OUT = Path(__file__).resolve().parent.parent / "fixtures" / "quant"

E4M3 = ml_dtypes.float8_e4m3fn
E5M2 = ml_dtypes.float8_e5m2
F32 = np.float32


def versions():
    import importlib.metadata as md

    v = {
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "ml_dtypes": ml_dtypes.__version__,
        "gguf": md.version("gguf"),
    }
    for k, want in PINNED.items():
        if v[k] != want:
            sys.exit(f"{k} {v[k]} installed, {want} pinned")
    return v


files = {}


def write(name, arr, what):
    arr = np.ascontiguousarray(arr)
    assert arr.dtype.byteorder in "<=|"
    (OUT / name).write_bytes(arr.tobytes())
    files[name] = {"dtype": str(arr.dtype), "count": int(arr.size), "what": what}


# ---------------------------------------------------------------------------------------
# FP8 decode and encode
# ---------------------------------------------------------------------------------------


def fp8_fixtures(rng, name, dt, max_code, log2_lo):
    codes = np.arange(256, dtype=np.uint8)
    dec = codes.view(dt).astype(F32)
    write(f"{name}_decode.u32", dec.view(np.uint32), f"f32 bits of every {name} code, by ml_dtypes")

    # Probes: every finite positive value, every midpoint between neighbours (exact in
    # f32: one more mantissa bit), and the f32 neighbours of both, so each rounding
    # decision is pinned from both sides; f32 subnormals and zero; then random values
    # log-uniform over the whole range plus uniform in range.
    vals = dec[: max_code + 1].astype(np.float64)
    mids = (vals[:-1] + vals[1:]) / 2
    top = vals[-1]
    # The would-be next value above the max (the NaN or inf code); its midpoint is where a
    # non-saturating cast stops returning the max.
    step = vals[-1] - vals[-2]
    mids = np.append(mids, top + step / 2)
    base = np.concatenate([vals, mids]).astype(F32)
    assert np.all(base.astype(np.float64) == np.concatenate([vals, mids]))
    up = np.nextafter(base, F32(np.inf))
    down = np.nextafter(base, F32(-np.inf))
    special = np.array(
        [0.0, 1e-45, 2.0**-130, 2.0**-126, float(vals[1]) / 4, float(vals[1]) * 0.75],
        dtype=F32,
    )
    n_rand = 2000
    mag = np.exp2(rng.uniform(log2_lo, math.log2(top), n_rand)).astype(F32)
    uni = rng.uniform(-top, top, 1000).astype(F32)
    pos = np.concatenate([base, up, down, special, mag])
    probes = np.concatenate([pos, -pos, uni]).astype(F32)
    probes = probes[np.isfinite(probes)]
    enc = probes.astype(dt)
    # ml_dtypes does not saturate: keep only probes it maps to a finite code. Saturation
    # itself is tested on the Rust side.
    keep = np.isfinite(enc.astype(F32))
    probes, enc = probes[keep], enc[keep]
    write(f"{name}_encode_in.f32", probes, f"f32 probes for {name} encoding")
    write(f"{name}_encode_out.u8", enc.view(np.uint8), f"{name} codes of the probes, by ml_dtypes (RNE)")


# ---------------------------------------------------------------------------------------
# Block quantizers: Q8_0 by gguf-py, E4M3/E5M2/MXFP8 by numpy + ml_dtypes
# ---------------------------------------------------------------------------------------


def block_inputs(rng):
    blocks = []
    # Gaussian blocks of widely varied magnitude.
    for s in np.exp2(rng.uniform(-20, 16, 96)):
        blocks.append(rng.standard_normal(32) * s)
    # Heavy tails.
    for _ in range(8):
        blocks.append(rng.standard_t(3, 32))
    blocks.append(np.zeros(32))
    blocks.append(np.concatenate([np.zeros(31), [-0.0]]))
    # Exact .5 ties after scaling: amax = 127 * 2^k gives d = 2^k and an exact 1/d, so
    # x = (n + 1/2) * 2^k hits x*id = n + 1/2 exactly.
    for k in (-3, 0, 5):
        n = rng.integers(-126, 126, 31)
        b = np.concatenate([[127.0], n + 0.5]) * 2.0**k
        b[rng.integers(0, 32)] *= -1
        blocks.append(b)
    # Ties of the FP8 grids too: amax = 448 (d = 1, exact) with E4M3 midpoints.
    e4 = np.arange(0x7F, dtype=np.uint8).view(E4M3).astype(np.float64)
    m4 = (e4[:-1] + e4[1:]) / 2
    blocks.append(np.concatenate([[448.0], rng.choice(m4, 31) * rng.choice([-1, 1], 31)]))
    # amax = 57344 (d = 1) with E5M2 midpoints.
    e5 = np.arange(0x7C, dtype=np.uint8).view(E5M2).astype(np.float64)
    m5 = (e5[:-1] + e5[1:]) / 2
    blocks.append(np.concatenate([[57344.0], rng.choice(m5, 31) * rng.choice([-1, 1], 31)]))
    # Tiny values: scales in the f16 subnormal range, and below it (d rounds to 0). Not
    # below ~1e-37, where ggml's 1/d overflows and its codes are undefined behaviour.
    for s in (1e-5, 3e-7, 1e-9, 1e-30, 1e-36):
        blocks.append(rng.standard_normal(32) * s)
    # One outlier among small values, both signs; a negative amax.
    for sign in (1.0, -1.0):
        b = rng.standard_normal(32) * 0.01
        b[rng.integers(0, 32)] = sign * 1000.0
        blocks.append(b)
    # Near the f16 limit of the Q8_0 scale (amax/127 <= 65504).
    blocks.append(rng.uniform(-1, 1, 32) * 8.0e6)
    # Constant blocks.
    blocks.append(np.full(32, 3.3))
    blocks.append(np.full(32, -1e-3))
    x = np.concatenate(blocks).astype(F32)
    assert x.size % 32 == 0 and np.all(np.isfinite(x))
    return x


def rceil(amax):
    """127 + ceil(log2(amax/448)) computed exactly, clamped to [0, 254]; 0 for amax 0."""
    if amax == 0:
        return 0
    r = Fraction(float(amax)) / 448
    k = r.numerator.bit_length() - r.denominator.bit_length()
    while Fraction(2) ** k < r:
        k += 1
    while Fraction(2) ** (k - 1) >= r:
        k -= 1
    return min(max(127 + k, 0), 254)


def fp8_block_ref(x, dt, elem_max):
    out = []
    for b in x.reshape(-1, 32):
        amax = np.max(np.abs(b))
        d32 = F32(amax) / F32(elem_max)
        d = d32.astype(np.float16)
        # glimpse's one exception to RNE: a scale rounded down into the f16 subnormal
        # range is bumped to the next f16 up, so the block's top elements do not clip.
        if F32(d) < d32 and d < np.finfo(np.float16).smallest_normal:
            d = np.nextafter(d, np.float16(np.inf))
        ds = F32(d)
        if ds == 0:
            q = np.zeros(32, dtype=np.uint8)
        else:
            v = np.clip(b / ds, -elem_max, elem_max).astype(F32)
            q = v.astype(dt).view(np.uint8)
        out.append(np.concatenate([np.array([d]).view(np.uint8), q]))
    return np.concatenate(out)


def mxfp8_ref(x):
    out = []
    for b in x.reshape(-1, 32):
        e = rceil(np.max(np.abs(b)))
        # b * 2^(127-e) is exact in f32 (values that would land in the f32 subnormal
        # range are far below the E4M3 grid and round to zero either way).
        v = (b.astype(np.float64) * 2.0 ** (127 - e)).astype(F32)
        v = np.clip(v, -448, 448)
        q = v.astype(E4M3).view(np.uint8)
        out.append(np.concatenate([[np.uint8(e)], q]))
    return np.concatenate(out).astype(np.uint8)


def block_fixtures(rng):
    x = block_inputs(rng)
    write("blocks_in.f32", x, "f32 rows (blocks of 32) for the block quantizers")
    q8 = quantize(x, T.Q8_0)
    codes = q8.reshape(-1, 34)[:, 2:].view(np.int8)
    assert codes.min() >= -127
    write("q8_0_out.u8", q8.view(np.uint8), "Q8_0 bytes of blocks_in by gguf.quants.quantize")
    write("e4m3_blocks_out.u8", fp8_block_ref(x, E4M3, 448.0), "E4M3 blocks (f16 d = amax/448) by numpy + ml_dtypes")
    write("e5m2_blocks_out.u8", fp8_block_ref(x, E5M2, 57344.0), "E5M2 blocks (f16 d = amax/57344) by numpy + ml_dtypes")
    write("mxfp8_blocks_out.u8", mxfp8_ref(x), "MXFP8 blocks (RCEIL E8M0) by numpy + ml_dtypes")


# ---------------------------------------------------------------------------------------
# GGUF decoders
# ---------------------------------------------------------------------------------------


def random_f16(rng, n):
    """Finite f16 scales of both signs over most of the range, subnormals included."""
    v = rng.standard_normal(n) * np.exp2(rng.uniform(-26, 6, n))
    return v.astype(np.float16)


def gguf_fixtures(rng):
    # (type, blocks, byte offsets of f16 scale fields)
    cases = [
        (T.Q4_0, 48, [0]),
        (T.Q4_1, 48, [0, 2]),
        (T.Q8_0, 48, [0]),
        (T.Q4_K, 6, [0, 2]),
        (T.Q6_K, 6, [208]),
    ]
    out = []
    for ty, n_blocks, scale_offs in cases:
        _, bb = gguf.GGML_QUANT_SIZES[ty]
        raw = rng.integers(0, 256, (n_blocks, bb), dtype=np.uint8)
        for off in scale_offs:
            raw[:, off : off + 2] = random_f16(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
        out.append((ty, raw.reshape(-1)))
    # Plain types: random bit patterns, so NaN/inf/subnormal decoding is covered too.
    out.append((T.F16, rng.integers(0, 256, 2048, dtype=np.uint8)))
    out.append((T.BF16, rng.integers(0, 256, 2048, dtype=np.uint8)))
    cases_meta = []
    for ty, raw in out:
        deq = np.asarray(dequantize(raw, ty), dtype=F32).reshape(-1)
        name = ty.name.lower()
        write(f"gguf_{name}.bin", raw, f"random GGUF {ty.name} data")
        write(f"gguf_{name}_deq.u32", deq.view(np.uint32), f"f32 bits of gguf.quants.dequantize on gguf_{name}.bin")
        cases_meta.append({"type": ty.name, "id": int(ty), "bytes": f"gguf_{name}.bin", "f32": f"gguf_{name}_deq.u32"})
    return cases_meta


def main():
    v = versions()
    print("versions:", v)
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    fp8_fixtures(rng, "e4m3", E4M3, 0x7E, -12)
    fp8_fixtures(rng, "e5m2", E5M2, 0x7B, -18)
    block_fixtures(rng)
    gguf_cases = gguf_fixtures(rng)
    manifest = {
        "generator": "tests/scripts/gen_quant_fixtures.py",
        "seed": SEED,
        "versions": v,
        "files": files,
        "gguf_cases": gguf_cases,
        # gguf-py's type ids and (block elements, block bytes), to check GgmlType against.
        "ggml_types": {t.name: [int(t), *gguf.GGML_QUANT_SIZES[t]] for t in T},
    }
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    total = sum((OUT / f).stat().st_size for f in files)
    print(f"wrote {len(files)} files, {total} bytes, to {OUT}")


if __name__ == "__main__":
    main()
