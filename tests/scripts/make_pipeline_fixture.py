#!/usr/bin/env python3
"""End-to-end golden fixture for the whole FastVLM pipeline (`glimpse_core::session`).

Builds a tiny FastVLM with transformers' own `FastVlmForConditionalGeneration` (vision
tower: timm `fastvit_mci3` through `TimmWrapperModel`, with reduced widths; a 2-layer
Qwen2 text model; the `linear_1 -> GELU -> linear_2` projector), gives it seeded random
non-degenerate weights, and records what it does with one picture and one prompt:

    tests/fixtures/pipeline/
        config.json, model.safetensors   `save_pretrained` output (transformers `fast_vlm`
                                         layout, F16), what `glimpse convert` reads
        preprocessor_config.json         the input resolution (192), as HF checkpoints carry it
        tokenizer.json                   a 300-token byte-level BPE with Qwen2's split rules
                                         and the Qwen2 special tokens, `<image>` included
        image.png                        61 x 47 RGB picture (odd size: padding and resampling)
        expected.json                    prompt text, input ids, image-token positions,
                                         16 greedy tokens and their top-2 margins
        logits.npy                       float32 [vocab], last prompt position

Preprocessing is Apple's (spec section 6.1), not the HF processor's: pad to a black square,
PIL bicubic resize, /255. The prompt is FastVLM's `qwen_2` template with the default system
prompt; `<image>` is an added special token repeated once per image token (9 at 192x192),
which is how transformers places the features (masked scatter over those positions).

Why the weights are randomized by hand: the default init (0.02 std weights, layer scales
1e-5, identity BatchNorm statistics) makes the vision residual branches vanish and the logits
nearly flat, so greedy tokens would hinge on rounding. Here weights are N(0, 1/fan_in),
layer scales U(0.2, 0.8), BatchNorm statistics random, embeddings N(0, 1); the script
asserts that features and logits are spread out, that the picture changes the logits, and
that every greedy step has a top-2 margin far above float rounding. Every float parameter is
rounded to f16 before the reference runs, so the F16 checkpoint is exactly what produced it.

Pinned environment (checked at start): torch 2.15.0, timm 1.0.31, transformers 5.23.0,
tokenizers 0.23.3, pillow 13.0.0, numpy 2.4.6. CPU, float32, TIMM_FUSED_ATTN=0, one thread.

    /work/venv-torch/bin/python tests/scripts/make_pipeline_fixture.py
"""

import json
import os
import sys
from pathlib import Path

os.environ["TIMM_FUSED_ATTN"] = "0"

import numpy as np  # noqa: E402
import PIL  # noqa: E402
import timm  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from PIL import Image  # noqa: E402
from timm.models.fastvit import LayerScale2d  # noqa: E402
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers  # noqa: E402
from transformers import FastVlmConfig, FastVlmForConditionalGeneration  # noqa: E402

PINNED = {
    "torch": (torch.__version__.split("+")[0], "2.15.0"),
    "timm": (timm.__version__, "1.0.31"),
    "transformers": (transformers.__version__, "5.23.0"),
    "tokenizers": (tokenizers.__version__, "0.23.3"),
    "pillow": (PIL.__version__, "13.0.0"),
    "numpy": (np.__version__, "2.4.6"),
}
SEED = 20251124
OUT = Path(__file__).resolve().parent.parent / "fixtures" / "pipeline"

RESOLUTION = 192
# Five stages like FastViTHD (RepMixer x3, attention with RepCPE x2), narrow enough that
# the checkpoint stays small: 3 x 3 = 9 image tokens of width 128 at 192 x 192.
VISION_ARGS = {
    "inference_mode": True,
    "layers": [1, 1, 1, 2, 1],
    "embed_dims": [8, 16, 32, 32, 64],
    "mlp_ratios": [3, 3, 3, 2, 2],
}
VISION_OUT = 2 * VISION_ARGS["embed_dims"][-1]
VOCAB = 320
TEXT = {
    "model_type": "qwen2",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "intermediate_size": 96,
    "vocab_size": VOCAB,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "max_position_embeddings": 512,
    # Untied: with a tied random head the residual stream's own token embedding wins and
    # greedy decoding repeats the last token forever.
    "tie_word_embeddings": False,
    "hidden_act": "silu",
    "use_sliding_window": False,
}
QUESTION = "Describe the image in one word."
SYSTEM = "You are a helpful assistant."
# spec/fastvlm.md section 5.1, with `<image>` expanded below.
TEMPLATE = (
    "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n<image>\n{question}<|im_end|>\n"
    "<|im_start|>assistant\n"
)
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>"]
CORPUS = [
    "You are a helpful assistant.",
    "Describe the image in one word.",
    "The picture shows a red square on a dark background, with a green gradient.",
    "What is in this photo? A cat, a dog and the sea.",
    "Tell me the colours of the image and what the shapes are.",
]
GREEDY_STEPS = 16


def check_versions():
    bad = [f"{k} {have} (want {want})" for k, (have, want) in PINNED.items() if have != want]
    if bad:
        sys.exit("unpinned environment: " + ", ".join(bad))


def make_tokenizer():
    """Byte-level BPE with Qwen2's pre-tokenizer, trained on a fixed corpus to VOCAB - 24
    tokens (so merges exist), then Qwen2's special tokens appended."""
    tok = tokenizers.Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB - 24,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        special_tokens=[],
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.add_special_tokens(SPECIALS)
    assert tok.get_vocab_size() <= VOCAB
    return tok


@torch.no_grad()
def randomize(model, gen):
    def normal(t, std, mean=0.0):
        t.copy_(torch.randn(t.shape, generator=gen) * std + mean)

    def uniform(t, lo, hi):
        t.copy_(torch.rand(t.shape, generator=gen) * (hi - lo) + lo)

    for name, m in model.named_modules():
        # In the vision tower a gain of 1.5 and small biases keep the picture's signal
        # alive through the five stages (at gain 1 with 0.1 biases the constant parts win
        # and the features hardly depend on the input; at gain 2 they blow up).
        vision = name.startswith("model.vision_tower")
        if isinstance(m, torch.nn.Embedding):
            normal(m.weight, 1.0)
        elif isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            fan_in = m.weight[0].numel()
            normal(m.weight, (1.5 if vision else 1.0) * fan_in**-0.5)
            if m.bias is not None:
                normal(m.bias, 0.02 if vision else 0.1)
        elif isinstance(m, torch.nn.BatchNorm2d):
            uniform(m.weight, 0.5, 1.5)
            normal(m.bias, 0.05)
            normal(m.running_mean, 0.05)
            uniform(m.running_var, 0.5, 2.0)
        elif isinstance(m, torch.nn.LayerNorm):
            uniform(m.weight, 0.5, 1.5)
            normal(m.bias, 0.1)
        elif isinstance(m, LayerScale2d):
            uniform(m.gamma, 0.2, 0.8)
        elif type(m).__name__.endswith("RMSNorm"):
            uniform(m.weight, 0.5, 1.5)
    # Round to f16 so the stored checkpoint is exactly what runs. Only what is saved:
    # non-persistent buffers (RoPE's inv_freq) are recomputed in f32 by every loader.
    saved = set(model.state_dict().keys())
    for p in model.parameters():
        p.copy_(p.half().float())
    for n, b in model.named_buffers():
        if b.is_floating_point() and n in saved:
            b.copy_(b.half().float())


def make_picture(gen):
    """61 x 47: a colour gradient with a bright rectangle and noise, as uint8 RGB."""
    w, h = 61, 47
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 255 // (w + h - 2)], -1)
    img[10:25, 20:45] = [250, 240, 30]
    noise = torch.randint(-20, 21, (h, w, 3), generator=gen).numpy()
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def preprocess(rgb):
    """Apple predict.py: expand2square (black), PIL bicubic to R x R, /255, CHW float32."""
    h, w, _ = rgb.shape
    side = max(w, h)
    canvas = Image.new("RGB", (side, side), (0, 0, 0))
    canvas.paste(Image.fromarray(rgb), ((side - w) // 2, (side - h) // 2))
    canvas = canvas.resize((RESOLUTION, RESOLUTION), Image.BICUBIC)
    x = np.asarray(canvas, dtype=np.float64) / 255.0
    return torch.from_numpy(x.astype(np.float32).transpose(2, 0, 1).copy())[None]


def check_spread(what, x, min_std):
    x = np.asarray(x, dtype=np.float64)
    assert np.isfinite(x).all(), f"{what}: not finite"
    assert x.std() > min_std, f"{what}: degenerate (std {x.std():.3g})"
    assert np.mean(np.abs(x) < 1e-6) < 0.2, f"{what}: mostly zeros"


def build(seed, tok):
    gen = torch.Generator().manual_seed(seed)
    image_id = tok.token_to_id("<image>")
    cfg = FastVlmConfig(
        vision_config={
            "model_type": "timm_wrapper",
            "architecture": "fastvit_mci3",
            "hidden_size": VISION_OUT,
            "model_args": VISION_ARGS,
        },
        text_config=dict(TEXT, bos_token_id=tok.token_to_id("<|endoftext|>"),
                         eos_token_id=tok.token_to_id("<|im_end|>")),
        image_token_id=image_id,
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )
    model = FastVlmForConditionalGeneration(cfg).eval()
    randomize(model, gen)
    return model, gen


@torch.no_grad()
def run(model, ids, pixels):
    """Last-position logits of the prompt, then GREEDY_STEPS greedy tokens (cached decode,
    no stop token) with the top-2 margin of every step."""
    out = model(input_ids=ids, pixel_values=pixels, use_cache=True)
    last = out.logits[0, -1].float()
    logits, past = last.clone(), out.past_key_values
    tokens, margins = [], []
    for _ in range(GREEDY_STEPS):
        top = torch.topk(logits, 2)
        tokens.append(int(top.indices[0]))
        margins.append(float(top.values[0] - top.values[1]))
        step = model(input_ids=torch.tensor([[tokens[-1]]]), past_key_values=past, use_cache=True)
        logits, past = step.logits[0, -1].float(), step.past_key_values
    return last.numpy(), tokens, margins


def main():
    check_versions()
    torch.set_num_threads(1)
    tok = make_tokenizer()
    image_id = tok.token_to_id("<image>")
    tokens_per_image = (RESOLUTION // 64) ** 2

    prompt = TEMPLATE.format(system=SYSTEM, question=QUESTION)
    expanded = prompt.replace("<image>", "<image>" * tokens_per_image)
    ids = tok.encode(expanded).ids
    assert ids.count(image_id) == tokens_per_image
    # Apple's form (spec 5.2): the chunks around <image> tokenized separately give the
    # same text ids, so the runtime's split-and-splice sees the same sequence.
    before, after = prompt.split("<image>")
    assert ids == tok.encode(before).ids + [image_id] * tokens_per_image + tok.encode(after).ids

    gen0 = torch.Generator().manual_seed(SEED)
    rgb = make_picture(gen0)
    pixels = preprocess(rgb)

    # Greedy steps whose top-2 margin is close to float rounding would make the token test
    # a coin toss; walk the seed until every margin is clear (deterministic either way).
    for seed in range(SEED, SEED + 50):
        model, _ = build(seed, tok)
        with torch.no_grad():
            feats = model.model.get_image_features(pixel_values=pixels).pooler_output
            raw = model.model.vision_tower(pixels).last_hidden_state
        logits, greedy, margins = run(model, torch.tensor([ids]), pixels)
        blank, _, _ = run(model, torch.tensor([ids]), torch.zeros_like(pixels))
        scale = float(np.abs(logits).max())
        image_effect = float(np.abs(logits - blank).max())
        if min(margins) > 0.02 * scale and image_effect > 0.1 * scale:
            break
        print(f"seed {seed}: min margin {min(margins):.3g}, image effect {image_effect:.3g}; next")
    else:
        sys.exit("no seed with clear greedy margins")
    check_spread("vision features", raw.numpy(), 0.05)
    check_spread("projected features", feats.numpy(), 0.05)
    check_spread("logits", logits, 0.5)
    assert tuple(raw.shape) == (1, VISION_OUT, RESOLUTION // 64, RESOLUTION // 64), raw.shape

    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*"):
        old.unlink()
    # Every float was rounded to f16 before the reference ran: storing f16 loses nothing.
    model.to(torch.float16).save_pretrained(OUT, safe_serialization=True)
    (OUT / "generation_config.json").unlink(missing_ok=True)
    (OUT / "model.safetensors").chmod(0o644)
    # HF checkpoints carry the input size in the processor config.
    (OUT / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "crop_size": {"height": RESOLUTION, "width": RESOLUTION},
                "size": {"shortest_edge": RESOLUTION},
                "do_normalize": True,
                "image_mean": [0.0, 0.0, 0.0],
                "image_std": [1.0, 1.0, 1.0],
            },
            indent=2,
        )
        + "\n"
    )
    tok.save(str(OUT / "tokenizer.json"))
    Image.fromarray(rgb).save(OUT / "image.png", optimize=True)
    np.save(OUT / "logits.npy", logits.astype(np.float32))
    expected = {
        "seed": seed,
        "resolution": RESOLUTION,
        "image_size": [int(rgb.shape[1]), int(rgb.shape[0])],
        "system": SYSTEM,
        "question": QUESTION,
        "prompt": prompt,
        "image_token_id": image_id,
        "image_tokens": tokens_per_image,
        "eos_token_id": tok.token_to_id("<|im_end|>"),
        "input_ids": ids,
        "greedy": greedy,
        "greedy_margins": [round(m, 6) for m in margins],
        "logits_max_abs": scale,
        "image_effect_max_abs": image_effect,
    }
    (OUT / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")

    size = sum(f.stat().st_size for f in OUT.glob("*"))
    print(
        f"seed {seed}: {len(ids)} prompt ids, greedy {greedy}, min margin {min(margins):.3g}, "
        f"|logits| max {scale:.3g}, image effect {image_effect:.3g}; {size / 1024:.0f} KiB"
    )
    assert size < 1024 * 1024, "the pipeline fixture must stay under 1 MB"


if __name__ == "__main__":
    main()
