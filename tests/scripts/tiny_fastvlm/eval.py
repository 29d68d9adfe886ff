#!/usr/bin/env python3
"""Score the committed tiny FastVLM on the held-out scenes and export them for Rust tests.

Loads models/tiny-fastvlm with stock transformers (FastVlmForConditionalGeneration, f32,
eager attention), captions the HELDOUT_COUNT scenes data.sample(HELDOUT_SEED, i) greedily
and reports exact-match accuracy. The held-out seed is used nowhere in train.py.

With --export it also writes, into the model directory:
    heldout.png    the scenes as one contact sheet: tile i is at column i % COLUMNS,
                   row i // COLUMNS, each RESOLUTION x RESOLUTION RGB (flat colours
                   compress far better in one PNG than in 200)
    heldout.json   seed, geometry, the expected (canonical) captions in tile order, and
                   the captions PyTorch produced
    samples/*.png  three single scenes for the README demo
    eval.json      accuracy and failures

    /work/venv-torch/bin/python tests/scripts/tiny_fastvlm/eval.py [--export]
"""

import argparse
import json
import time
from pathlib import Path

import common
import data
import torch
from common import HELDOUT_COUNT, HELDOUT_SEED, MODEL_DIR, RESOLUTION
from PIL import Image

COLUMNS = 20
# README samples: the first held-out scenes of three different kinds.
def _relation(c):
    return any(f" {r} " in c for r in data.RELATIONS)


SAMPLE_KINDS = (
    ("relation_pair", lambda c: _relation(c) and "two " in c),
    ("relation_singles", lambda c: _relation(c) and "two " not in c),
    ("group", lambda c: c.startswith("three ")),
)


def heldout():
    imgs, caps = [], []
    for i in range(HELDOUT_COUNT):
        img, cap = data.sample(HELDOUT_SEED, i)
        imgs.append(img)
        caps.append(cap)
    return imgs, caps


def sheet(imgs):
    rows = (len(imgs) + COLUMNS - 1) // COLUMNS
    out = Image.new("RGB", (COLUMNS * RESOLUTION, rows * RESOLUTION), (0, 0, 0))
    for i, im in enumerate(imgs):
        out.paste(im, ((i % COLUMNS) * RESOLUTION, (i // COLUMNS) * RESOLUTION))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=MODEL_DIR)
    ap.add_argument("--export", action="store_true", help="write the held-out set and samples")
    ap.add_argument("--min-accuracy", type=float, default=0.95)
    args = ap.parse_args()

    common.check_versions()
    torch.set_num_threads(2)
    t0 = time.time()
    model, tok = common.load_fast_vlm(args.model)
    imgs, expected = heldout()
    pixels = torch.stack([common.preprocess(im) for im in imgs])
    got = common.greedy_captions(model, tok, pixels)
    ok = [g == e for g, e in zip(got, expected)]
    acc = sum(ok) / len(ok)
    failures = [
        {"index": i, "expected": e, "got": g}
        for i, (g, e, k) in enumerate(zip(got, expected, ok))
        if not k
    ]
    print(f"exact match on {len(ok)} held-out scenes (seed {HELDOUT_SEED}): {acc:.3f}")
    for f in failures:
        print(f"  #{f['index']:3d} expected {f['expected']!r}\n       got      {f['got']!r}")
    print(f"{time.time() - t0:.1f}s")

    if args.export:
        out = args.model
        sheet(imgs).save(out / "heldout.png", optimize=True)
        meta = {
            "seed": HELDOUT_SEED,
            "count": len(imgs),
            "tile": RESOLUTION,
            "columns": COLUMNS,
            "layout": "tile i at x = (i % columns) * tile, y = (i / columns) * tile; RGB",
            "question": common.QUESTION,
            "captions": expected,
            "pytorch_f32_captions": got,
        }
        common.write_json(out / "heldout.json", meta)
        (out / "samples").mkdir(exist_ok=True)
        samples = {}
        for name, pred in SAMPLE_KINDS:
            kind = [i for i, c in enumerate(expected) if pred(c)]
            i = next((i for i in kind if ok[i]), kind[0])
            imgs[i].save(out / "samples" / f"{name}.png", optimize=True)
            samples[f"samples/{name}.png"] = {"heldout_index": i, "caption": expected[i]}
        common.write_json(
            out / "eval.json",
            {
                "heldout_seed": HELDOUT_SEED,
                "count": len(ok),
                "exact_match": acc,
                "failures": failures,
                "samples": samples,
                "runtime": "PyTorch f32, transformers FastVlmForConditionalGeneration, greedy",
            },
        )
        print(f"exported the held-out set and samples to {out}")
    if acc < args.min_accuracy:
        raise SystemExit(f"accuracy {acc:.3f} is below {args.min_accuracy}")


if __name__ == "__main__":
    main()
