#!/usr/bin/env python3
"""Render the bundled synthetic clip for `glimpse stream`: a few of the tiny model's scenes,
each held for several frames, first still, then sliding across the picture.

    python make_clip.py        # writes models/tiny-fastvlm/clip/{clip.png,clip.json}

clip.png is an animated PNG (lossless, so every frame is exactly the scene data.py draws),
clip.json gives the frame rate and each frame's ground-truth caption. A scene slides as a
whole (every object by the same offset, never past data.MARGIN of the border), which keeps
every gap and relation, so its caption stays the canonical one for every frame.

Scenes come from a data seed (CLIP_SEED) that training, validation and the held-out set
never used. Needs only numpy and Pillow, at the versions in requirements.txt.
"""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import PIL
from PIL import Image

import data

HERE = Path(__file__).resolve().parent
OUT = HERE.parent.parent.parent / "models" / "tiny-fastvlm" / "clip"

CLIP_SEED = 4242
SCENES = 4
STILL = 3  # identical frames a scene starts with (change gating skips all but the first)
MOVING = 5  # frames it then slides for
STEP = 3  # pixels per frame
FPS = 10
PINNED = {"numpy": "2.4.6", "pillow": "13.0.0"}


def shifted(scene, dx, dy):
    groups = tuple(
        tuple(replace(o, x0=o.x0 + dx, x1=o.x1 + dx, y0=o.y0 + dy, y1=o.y1 + dy) for o in g)
        for g in scene.groups
    )
    return replace(scene, groups=groups)


def room(scene):
    """How far the scene can slide (left, right, up, down) keeping data.MARGIN."""
    objs = scene.objects
    x0, y0 = min(o.x0 for o in objs), min(o.y0 for o in objs)
    x1, y1 = max(o.x1 for o in objs), max(o.y1 for o in objs)
    m = data.MARGIN
    return x0 - m, data.SIZE - m - x1, y0 - m, data.SIZE - m - y1


def main():
    have = {"numpy": np.__version__, "pillow": PIL.__version__}
    bad = [f"{k} {have[k]} (want {v})" for k, v in PINNED.items() if have[k] != v]
    if bad:
        raise SystemExit("unpinned environment: " + ", ".join(bad))
    frames, meta = [], []
    for k in range(SCENES):
        scene = data.random_scene(np.random.default_rng([CLIP_SEED, k]))
        cap = data.caption(scene)
        left, right, up, down = room(scene)
        # Slide along the axis with the most room, towards the side that has it.
        options = [(-1, 0, left), (1, 0, right), (0, -1, up), (0, 1, down)]
        ux, uy, free = max(options, key=lambda o: o[2])
        step = min(STEP, free // MOVING)
        for i in range(STILL + MOVING):
            t = max(0, i - STILL + 1) * step
            frames.append(data.render(shifted(scene, ux * t, uy * t)))
            meta.append({"scene": k, "caption": cap, "dx": ux * t, "dy": uy * t})
    OUT.mkdir(parents=True, exist_ok=True)
    frames[0].save(
        OUT / "clip.png",
        save_all=True,
        append_images=frames[1:],
        duration=1000 // FPS,
        loop=0,
        optimize=True,
    )
    (OUT / "clip.json").write_text(
        json.dumps(
            {
                "fps": FPS,
                "size": data.SIZE,
                "seed": CLIP_SEED,
                "versions": have,
                "frames": meta,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {len(frames)} frames ({SCENES} scenes) to {OUT}")


if __name__ == "__main__":
    main()
