"""Shared pieces of the tiny FastVLM scripts: seeds, architecture, prompt, tokenizer,
preprocessing and the transformers `fast_vlm` checkpoint layout.

Kept in one place so train.py, eval.py and the export agree on every constant.
"""

import json
import os
import sys
from pathlib import Path

# Explicit softmax attention in timm: the Rust core computes attention the same way, and
# at 16 / 4 tokens the fused kernel buys nothing.
os.environ.setdefault("TIMM_FUSED_ATTN", "0")
# OpenMP threads that sleep instead of spinning while they wait: on a shared machine the
# spinning second thread costs more than it gives (8x the CPU time per step under load).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent.parent
MODEL_DIR = REPO / "models" / "tiny-fastvlm"

# Seeds. Each data stream is `data.sample(seed, index)`; the held-out seed appears
# nowhere in training (neither as data nor for monitoring).
TORCH_SEED = 20251124  # parameter init and anything else torch draws
TRAIN_SEED = 101  # training images
VAL_SEED = 202  # images scored during training, for the log only
HELDOUT_SEED = 909  # the 200 evaluation images exported for the Rust test
HELDOUT_COUNT = 200

PINNED = {
    "torch": "2.15.0",
    "timm": "1.0.31",
    "transformers": "5.23.0",
    "tokenizers": "0.23.3",
    "numpy": "2.4.6",
    "pillow": "13.0.0",
    "safetensors": "0.8.0",
}

RESOLUTION = 128
# FastViTHD's block types (timm fastvit_mci3: RepMixer stages, then RepCPE + attention
# stages, conv_exp with squeeze-excite), narrow and one or two blocks per stage. Four
# stages instead of five: stride 32 gives a 4x4 grid of image tokens at 128 px, where five
# stages leave 2x2 and the decoder can no longer look up objects by position (a trial
# with five stages reached 15% exact match after 800 steps). Like FastViTHD, the last two
# stages are attention with a 7x7 RepCPE in front.
#
# `pos_embs` is written the way config.json carries it (timm takes module factories
# there, which JSON cannot hold; see timm_vision_args and load_fast_vlm).
VISION_ARGS = {
    "layers": [1, 1, 2, 2],
    "embed_dims": [16, 32, 64, 128],
    "mlp_ratios": [3, 3, 3, 3],
    "token_mixers": ["repmixer", "repmixer", "attention", "attention"],
    "pos_embs": [None, None, {"spatial_shape": [7, 7]}, {"spatial_shape": [7, 7]}],
}
VISION_OUT = 2 * VISION_ARGS["embed_dims"][-1]  # conv_exp width, cls_ratio 2
STRIDE = 4 * 2 ** (len(VISION_ARGS["layers"]) - 1)
IMAGE_TOKENS = (RESOLUTION // STRIDE) ** 2

TEXT_ARGS = {
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,  # GQA: two query heads per KV head
    "max_position_embeddings": 256,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    "tie_word_embeddings": True,
    "use_sliding_window": False,
    "attention_dropout": 0.0,
}

# Chat format: FastVLM's qwen_2 template (spec/fastvlm.md 5.1) with its default system
# prompt and a fixed question.
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>"]
IMAGE_TOKEN = "<image>"
SYSTEM = "You are a helpful assistant."
QUESTION = "Describe the image."
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
MAX_NEW_TOKENS = 24

# Qwen2's split regex, exactly as its tokenizer.json writes it (the converter recognises
# the pre-tokenizer by this string).
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def check_versions():
    import PIL
    import safetensors
    import timm
    import tokenizers
    import transformers

    have = {
        "torch": torch.__version__.split("+")[0],
        "timm": timm.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "safetensors": safetensors.__version__,
    }
    bad = [f"{k} {have[k]} (want {v})" for k, v in PINNED.items() if have[k] != v]
    if bad:
        sys.exit("unpinned environment: " + ", ".join(bad) + " (see requirements.txt)")
    return have


def prompt_text():
    """The rendered prompt up to the assistant header (as the chat template writes it)."""
    return (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
        f"<|im_start|>user\n{IMAGE_TOKEN}\n{QUESTION}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def timm_vision_args(inference_mode):
    """VISION_ARGS as timm.create_model takes them (RepCPE entries as module factories)."""
    from functools import partial

    from timm.models.fastvit import RepConditionalPosEnc

    args = dict(VISION_ARGS, inference_mode=inference_mode)
    args["pos_embs"] = [
        None if p is None else partial(RepConditionalPosEnc, spatial_shape=tuple(p["spatial_shape"]))
        for p in VISION_ARGS["pos_embs"]
    ]
    return args


# ---------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------


def build_tokenizer(corpus, vocab_size):
    """Byte-level BPE with Qwen2's pre-tokenizer, trained on `corpus` (a list of strings).

    All 256 bytes are in the base vocabulary, so any text encodes; the specials come
    first (ids 0..3) and are matched whole in text.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers import processors, trainers

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.post_processor = processors.ByteLevel(
        add_prefix_space=False, trim_offsets=False, use_regex=False
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return tok


def tokenizer_config():
    """tokenizer_config.json: specials and the chat template."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "add_bos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": TEXT_ARGS["max_position_embeddings"],
        "padding_side": "right",
        "extra_special_tokens": {"image_token": IMAGE_TOKEN},
        "chat_template": CHAT_TEMPLATE,
    }


def prompt_ids(tok):
    """Prompt token ids with `<image>` expanded to one placeholder per image token, as
    transformers' FastVLM expects (the features overwrite those positions)."""
    image_id = tok.token_to_id(IMAGE_TOKEN)
    ids = tok.encode(prompt_text(), add_special_tokens=False).ids
    out = []
    for i in ids:
        out.extend([image_id] * IMAGE_TOKENS if i == image_id else [i])
    return out


# ---------------------------------------------------------------------------------------
# Pixels
# ---------------------------------------------------------------------------------------


def preprocess(img):
    """PIL image -> float32 [3, R, R] in [0, 1]: pad to square with black, PIL bicubic
    resize, /255, no mean/std (spec/fastvlm.md 6.1). Identity resize for our 128 px
    scenes."""
    from PIL import Image

    img = img.convert("RGB")
    w, h = img.size
    if w != h:
        s = max(w, h)
        canvas = Image.new("RGB", (s, s), (0, 0, 0))
        canvas.paste(img, ((s - w) // 2, (s - h) // 2))
        img = canvas
    if img.size != (RESOLUTION, RESOLUTION):
        img = img.resize((RESOLUTION, RESOLUTION), Image.BICUBIC)
    a = np.asarray(img, dtype=np.float64) / 255.0
    return torch.from_numpy(a.astype(np.float32)).permute(2, 0, 1).contiguous()


# ---------------------------------------------------------------------------------------
# Checkpoint layout
# ---------------------------------------------------------------------------------------


def fast_vlm_config(tok, json_args=False):
    """transformers FastVlmConfig for this model; with `json_args` the vision arguments
    are in their config.json form, else in the form timm can build from."""
    from transformers import FastVlmConfig

    specials = {s: tok.token_to_id(s) for s in SPECIALS}
    text = dict(
        TEXT_ARGS,
        model_type="qwen2",
        vocab_size=tok.get_vocab_size(),
        bos_token_id=specials["<|endoftext|>"],
        eos_token_id=specials["<|im_end|>"],
        pad_token_id=specials["<|endoftext|>"],
    )
    vision = {
        "model_type": "timm_wrapper",
        "architecture": "fastvit_mci3",
        "hidden_size": VISION_OUT,
        "do_pooling": False,
        "model_args": dict(VISION_ARGS, inference_mode=True) if json_args else timm_vision_args(True),
        "num_classes": 0,
    }
    return FastVlmConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=specials[IMAGE_TOKEN],
        image_seq_length=IMAGE_TOKENS,
        projector_hidden_act="gelu",
        tie_word_embeddings=True,
        bos_token_id=specials["<|endoftext|>"],
        eos_token_id=specials["<|im_end|>"],
        pad_token_id=specials["<|endoftext|>"],
    )


def preprocessor_config():
    """preprocessor_config.json: what the converter reads the input size from, and the
    CLIP processor settings FastVLM uses (no mean/std, bicubic)."""
    return {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": RESOLUTION},
        "resample": 3,
        "do_center_crop": True,
        "crop_size": {"height": RESOLUTION, "width": RESOLUTION},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.0, 0.0, 0.0],
        "image_std": [1.0, 1.0, 1.0],
        "do_convert_rgb": True,
    }


def generation_config(tok):
    return {
        "bos_token_id": tok.token_to_id("<|endoftext|>"),
        "eos_token_id": tok.token_to_id("<|im_end|>"),
        "pad_token_id": tok.token_to_id("<|endoftext|>"),
        "do_sample": False,
        "max_new_tokens": MAX_NEW_TOKENS,
    }


def write_json(path, obj):
    Path(path).write_text(json.dumps(obj, indent=2) + "\n")


def load_fast_vlm(model_dir=MODEL_DIR):
    """The committed checkpoint through stock transformers, f32, eval mode."""
    from tokenizers import Tokenizer
    from transformers import FastVlmConfig, FastVlmForConditionalGeneration

    # The one departure from stock loading: config.json's RepCPE entries become the
    # module factories timm expects.
    config = FastVlmConfig.from_pretrained(model_dir)
    args = dict(config.vision_config.model_args)
    if args.get("pos_embs") != VISION_ARGS["pos_embs"]:
        raise SystemExit(f"{model_dir}: vision pos_embs differ from common.VISION_ARGS")
    config.vision_config.model_args = dict(args, pos_embs=timm_vision_args(True)["pos_embs"])
    model = FastVlmForConditionalGeneration.from_pretrained(
        model_dir, config=config, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    tok = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    return model, tok


@torch.no_grad()
def greedy_captions(model, tok, pixels, batch=50):
    """Greedy captions for a float32 [N, 3, R, R] batch, through HF `generate`."""
    ids = torch.tensor(prompt_ids(tok))
    eos = tok.token_to_id("<|im_end|>")
    out = []
    for s in range(0, pixels.shape[0], batch):
        px = pixels[s : s + batch]
        inp = ids.expand(px.shape[0], -1).contiguous()
        gen = model.generate(
            input_ids=inp,
            pixel_values=px,
            attention_mask=torch.ones_like(inp),
            do_sample=False,
            max_new_tokens=MAX_NEW_TOKENS,
            eos_token_id=eos,
            pad_token_id=tok.token_to_id("<|endoftext|>"),
        )
        for row in gen[:, inp.shape[1] :].tolist():
            if eos in row:
                row = row[: row.index(eos)]
            out.append(tok.decode(row, skip_special_tokens=False))
    return out
