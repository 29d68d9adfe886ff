#!/usr/bin/env python3
"""Synthetic coloured-shape scenes and their canonical captions for the tiny FastVLM.

A scene is one to three flat-coloured shapes on a flat grey background, 128x128 px. The
caption is a deterministic function of what is drawn, so a model can be scored by exact
match:

    a large red circle                         one object
    two small blue squares                     a group of identical objects
    a large green triangle below a small yellow circle
    two large purple squares left of a small orange circle

Grammar (every word is in the lists below):

    caption  := group | group " " relation " " group
    group    := count " " size " " colour " " shape ["s"]
    count    := "a" | "two" | "three"
    relation := "above" | "below" | "left of" | "right of"

Canonical form, so that one picture has exactly one caption:
- objects with the same colour, shape and size always form one group ("two red circles",
  never "a red circle left of a red circle");
- a scene with two groups has one large and one small group (one or two objects each,
  three at most in all), and the large group is named first; the relation says where
  it is relative to the small one, so all four relations occur.
Naming the larger group first keeps the order a property of each object rather than of
the whole scene: an earlier rule ("the single object first; of two singles the upper or
left one") needed the model to compare objects before it could start the caption, and
binding colour and shape to the right object stayed the main error long into training.

No near-ties: shapes never touch (at least GAP px apart), sizes come from two separated
ranges, colours are far apart in RGB even after jitter, and a relation is only drawn
when it is clear: every object of the first group lies entirely on one side of every
object of the second with at least REL_GAP px between them, and the two groups overlap on
the other axis by at least half the narrower group's extent (so "above" is never also
"left of").

Every scene is a pure function of (seed, index): `sample(seed, i)` draws from
numpy's PCG64 seeded with [seed, i], so any subset can be regenerated independently.

    python data.py --seed 7 --count 16 --out /tmp/shapes   # PNGs + captions.json
"""

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZE = 128
# Colour centres; each channel is jittered by up to +-JITTER per object. The closest
# pair (red / orange) differs by 100 in green, far more than 2 * JITTER.
COLOURS = {
    "red": (215, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (235, 215, 35),
    "green": (40, 170, 60),
    "blue": (45, 85, 220),
    "purple": (145, 60, 195),
}
JITTER = 12
SHAPES = ("circle", "square", "triangle")
# Extent (width) in pixels; the largest small shape is 10 px narrower than the smallest
# large one, so size is never a judgement call.
SIZES = {"small": (18, 24), "large": (34, 42)}
COUNT_WORDS = {1: "a", 2: "two", 3: "three"}
RELATIONS = ("above", "below", "left of", "right of")
MARGIN = 3  # to the image border
GAP = 6  # between any two shapes
REL_GAP = 8  # between the two groups along the relation's axis

# Scene kinds and their probabilities: relations carry most of the difficulty, so they
# get most of the samples.
# Two-group kinds are named large<n>_small<m> after the two groups' object counts.
KINDS = (
    ("one", 0.10),
    ("pair", 0.10),
    ("triple", 0.10),
    ("large1_small1", 0.30),
    ("large1_small2", 0.20),
    ("large2_small1", 0.20),
)
GROUP_KINDS = {"one": 1, "pair": 2, "triple": 3}
TWO_GROUP_KINDS = {"large1_small1": (1, 1), "large1_small2": (1, 2), "large2_small1": (2, 1)}


@dataclass(frozen=True)
class Obj:
    """One drawn shape: attributes and its bounding box (x0, y0 inclusive; x1, y1 exclusive)."""

    colour: str
    shape: str
    size: str
    rgb: tuple
    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def attrs(self):
        return (self.size, self.colour, self.shape)


@dataclass(frozen=True)
class Scene:
    background: int
    groups: tuple  # one or two tuples of Obj; all objects of a group share attrs
    relation: str | None  # of groups[0] to groups[1]

    @property
    def objects(self):
        return [o for g in self.groups for o in g]


def group_phrase(group):
    size, colour, shape = group[0].attrs
    n = len(group)
    return f"{COUNT_WORDS[n]} {size} {colour} {shape}{'s' if n > 1 else ''}"


def caption(scene):
    """The canonical caption of a scene."""
    first = group_phrase(scene.groups[0])
    if scene.relation is None:
        return first
    return f"{first} {scene.relation} {group_phrase(scene.groups[1])}"


def vocabulary_text():
    """Every caption word, for tokenizer training."""
    words = list(COUNT_WORDS.values()) + list(SIZES) + list(COLOURS)
    words += [s for s in SHAPES] + [s + "s" for s in SHAPES]
    words += [w for r in RELATIONS for w in r.split()]
    return " ".join(words)


def _extent(shape, width):
    """(w, h) of a shape whose width is `width`; triangles are equilateral."""
    if shape == "triangle":
        return width, int(round(width * 0.866))
    return width, width


def _apart(a, b, gap):
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def _union(boxes):
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


def _overlap(lo0, hi0, lo1, hi1):
    return min(hi0, hi1) - max(lo0, lo1)


def relation_holds(as_, bs, relation):
    """Whether the boxes `as_` are clearly `relation` of the boxes `bs` (see module doc)."""
    a, b = _union(as_), _union(bs)
    if relation == "above":
        gap = b[1] - a[3]
    elif relation == "below":
        gap = a[1] - b[3]
    elif relation == "left of":
        gap = b[0] - a[2]
    else:
        gap = a[0] - b[2]
    # Extents on the other axis: x for vertical relations, y for horizontal ones.
    lo, hi = (0, 2) if relation in ("above", "below") else (1, 3)
    ov = _overlap(a[lo], a[hi], b[lo], b[hi])
    narrow = min(a[hi] - a[lo], b[hi] - b[lo])
    return gap >= REL_GAP and 2 * ov >= narrow


SIZE_NAMES = tuple(SIZES)
COLOUR_NAMES = tuple(COLOURS)
# Candidate placements drawn per batch of the rejection sampler (one numpy call each).
PLACE_BATCH = 64
PLACE_TRIES = 4


def _attrs(rng, size=None):
    s, c, h = rng.integers(0, [len(SIZE_NAMES), len(COLOUR_NAMES), len(SHAPES)])
    return (size or SIZE_NAMES[s], COLOUR_NAMES[c], SHAPES[h])


def _placements(rng, extents):
    """Candidate box lists: random top-left corners, every box inside the image."""
    ext = np.array(extents)
    room = SIZE - 2 * MARGIN - ext + 1  # positions per axis, per box
    u = rng.random((PLACE_BATCH, len(extents), 2))
    xy = MARGIN + (u * room).astype(np.int64)
    boxes = np.concatenate([xy, xy + ext], axis=2).tolist()
    return [[tuple(b) for b in cand] for cand in boxes]


def random_scene(rng, kinds=None):
    """Draw a scene; rejection-samples positions until every constraint holds. `kinds`
    overrides the KINDS probabilities (a curriculum may start with simpler scenes)."""
    kinds = KINDS if kinds is None else kinds
    u, kind = rng.random(), kinds[-1][0]
    for name, p in kinds:
        if u < p:
            kind = name
            break
        u -= p
    background = int(rng.integers(0, 256))
    while True:
        if kind in GROUP_KINDS:
            spec = [(_attrs(rng), GROUP_KINDS[kind])]
            relation = None
        else:
            na, nb = TWO_GROUP_KINDS[kind]
            spec = [(_attrs(rng, "large"), na), (_attrs(rng, "small"), nb)]
            relation = RELATIONS[int(rng.integers(0, len(RELATIONS)))]
        # Per-object widths and colours (jittered) for each group.
        objs = []
        for (size, colour, shape), n in spec:
            lo, hi = SIZES[size]
            g = []
            for _ in range(n):
                w = int(rng.integers(lo, hi + 1))
                jit = rng.integers(-JITTER, JITTER + 1, 3).tolist()
                rgb = tuple(min(255, max(0, c + j)) for c, j in zip(COLOURS[colour], jit))
                g.append((size, colour, shape, w, rgb))
            objs.append(g)
        extents = [_extent(o[2], o[3]) for g in objs for o in g]
        boxes = None
        for _ in range(PLACE_TRIES):
            for cand in _placements(rng, extents):
                if all(
                    _apart(cand[i], cand[j], GAP)
                    for i in range(len(cand))
                    for j in range(i + 1, len(cand))
                ) and (relation is None or relation_holds(cand[: spec[0][1]], cand[spec[0][1] :], relation)):
                    boxes = cand
                    break
            if boxes is not None:
                break
        if boxes is None:
            continue  # these sizes do not fit well; draw new attributes
        it = iter(boxes)
        groups = tuple(
            tuple(
                Obj(colour, shape, size, rgb, *next(it)) for (size, colour, shape, _, rgb) in g
            )
            for g in objs
        )
        return Scene(background, groups, relation)


def render(scene):
    """The scene as a 128x128 RGB PIL image (no antialiasing: flat colours, crisp edges)."""
    bg = scene.background
    img = Image.new("RGB", (SIZE, SIZE), (bg, bg, bg))
    d = ImageDraw.Draw(img)
    for o in scene.objects:
        box = (o.x0, o.y0, o.x1 - 1, o.y1 - 1)
        if o.shape == "circle":
            d.ellipse(box, fill=o.rgb)
        elif o.shape == "square":
            d.rectangle(box, fill=o.rgb)
        else:
            d.polygon([(o.x0, o.y1 - 1), (o.x1 - 1, o.y1 - 1), ((o.x0 + o.x1 - 1) / 2, o.y0)], fill=o.rgb)
    return img


def sample(seed, index, kinds=None):
    """(PIL image, caption) number `index` of the stream `seed`."""
    rng = np.random.default_rng([seed, index])
    scene = random_scene(rng, kinds)
    return render(scene), caption(scene)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--count", type=int, default=16)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    caps = {}
    for i in range(args.count):
        img, cap = sample(args.seed, i)
        name = f"{i:04d}.png"
        img.save(args.out / name, optimize=True)
        caps[name] = cap
    (args.out / "captions.json").write_text(json.dumps(caps, indent=1) + "\n")
    print(f"wrote {args.count} images to {args.out}")


if __name__ == "__main__":
    main()
