#!/usr/bin/env python3
"""Golden fixtures for on-device preprocessing (`glimpse_core::preprocess`).

Reproduces the Apple predict.py path of spec section 6.1 with PIL itself: `expand2square`
(black canvas of side max(w, h), image pasted at ((side - w) // 2, (side - h) // 2)), then
`Image.resize((R, R), Image.BICUBIC)` on the uint8 RGB square. The x/255 step is left to
the test (it is a plain float64 division stored as float32), so the fixture keeps the
resized uint8 image, which is a quarter of the size of the float32 tensor and loses nothing.

Pinned: pillow==13.0.0, numpy==2.4.6 (the resampler's fixed-point details are what the
Rust code must match, so a different Pillow could in principle move a value by one).

    tests/fixtures/preprocess/
        cases.json                 [{name, width, height, input, resolution, output}]
        <image>.rgb                input frame, RGB888 row-major (HWC), width*height*3 bytes
        <image>_r<R>.rgb           PIL output, RGB888 row-major, R*R*3 bytes

Images are odd-sized on purpose (odd padding offsets, non-integer scale factors) and cover
upscaling, mild and strong downscaling, a degenerate 1-pixel-wide frame and a smooth gradient (noise hides
systematic half-pixel shifts that a gradient shows).

Run from the repository root:  python tests/scripts/make_preprocess_fixtures.py
"""

import json
from pathlib import Path

import numpy as np
import PIL
from PIL import Image

OUT = Path(__file__).resolve().parent.parent / "fixtures" / "preprocess"
SEED = 20261124


def expand2square(img: Image.Image, background=(0, 0, 0)) -> Image.Image:
    # Same arithmetic as LLaVA's mm_utils.expand2square, which predict.py uses.
    w, h = img.size
    if w == h:
        return img
    if w > h:
        out = Image.new(img.mode, (w, w), background)
        out.paste(img, (0, (w - h) // 2))
        return out
    out = Image.new(img.mode, (h, h), background)
    out.paste(img, ((h - w) // 2, 0))
    return out


def noise(rng, w, h):
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def gradient(w, h):
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 255.0 * x / max(w - 1, 1)
    g = 255.0 * y / max(h - 1, 1)
    b = 127.5 + 127.5 * np.sin(x / 5.0) * np.cos(y / 7.0)
    return np.clip(np.rint(np.stack([r, g, b], axis=-1)), 0, 255).astype(np.uint8)


def main():
    assert PIL.__version__ == "13.0.0", PIL.__version__
    rng = np.random.default_rng(SEED)
    images = {
        "noise_37x23": (noise(rng, 37, 23), [64, 96]),
        "noise_50x81": (noise(rng, 50, 81), [64]),
        "noise_1x7": (noise(rng, 1, 7), [64]),
        "noise_129x64": (noise(rng, 129, 64), [64]),
        "grad_97x61": (gradient(97, 61), [64]),
        # A 6.3x downscale: the kernel widens to 27 taps, which noise would average away.
        "grad_151x97": (gradient(151, 97), [24]),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    cases = []
    for name, (arr, resolutions) in images.items():
        h, w, _ = arr.shape
        (OUT / f"{name}.rgb").write_bytes(arr.tobytes())
        square = expand2square(Image.fromarray(arr, "RGB"))
        for r in resolutions:
            res = np.asarray(square.resize((r, r), Image.BICUBIC), dtype=np.uint8)
            assert res.shape == (r, r, 3)
            # A fixture that is all black or constant would not test the resampler.
            assert res.std() > 10, (name, r)
            out = f"{name}_r{r}.rgb"
            (OUT / out).write_bytes(res.tobytes())
            cases.append(
                {
                    "name": f"{name}_r{r}",
                    "width": w,
                    "height": h,
                    "input": f"{name}.rgb",
                    "resolution": r,
                    "output": out,
                }
            )
    (OUT / "cases.json").write_text(json.dumps(cases, indent=1) + "\n")
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
