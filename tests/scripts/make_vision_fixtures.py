#!/usr/bin/env python3
"""Golden fixtures for the FastViTHD encoder and the mlp2x_gelu projector.

For each reduced config below this script builds timm `fastvit_mci3` in train form
(inference_mode=False), randomizes every weight, BatchNorm statistic and layer scale,
reparameterizes it (`timm.utils.reparameterize_model`), loads the result into a model built
with inference_mode=True (strict, so the key sets must agree), and records:

    tests/fixtures/vision/<name>/
        config.json         Apple `llava_qwen2` config + `vision_config.model_args` (the
                            converter's extension for reduced towers) + a tiny Qwen2 part
        model.safetensors   F16, Apple FastVLM key layout (`model.vision_tower.vision_tower.
                            model.*`, `model.mm_projector.{0,2}.*`, a 1-layer Qwen2 decoder)
        input.npy           float32 [3, R, R], preprocessed pixels (random uint8 / 255),
                            what `glimpse encode --pixels` takes
        stem.npy, stage{i}.npy, encoder.npy, projector.npy
                            float32 [tokens, channels], tokens row-major over the grid
                            (i.e. NHWC), taken after the stem, after each stage,
                            after conv_exp (forward_features) and after the projector

Why the randomization: timm's default init (trunc-normal 0.02 weights, layer scales 1e-5,
identity BatchNorm statistics) makes every residual branch vanish, so the output would
hardly depend on most weights and a broken block could go unnoticed. Here weights are
N(0, 1/fan_in), layer scales U(0.2, 0.8), BatchNorm statistics random, and the script
asserts that each recorded tensor is non-trivial (finite, spread out, not mostly zero).

Weights are rounded to f16 *before* the references are computed (and stored as f16), so
the checkpoint holds exactly the weights that produced the outputs, at half the size.
References are computed in float32 on the CPU with TIMM_FUSED_ATTN=0 (explicit softmax).

Pinned environment (checked at start): torch 2.15.0, timm 1.0.31, numpy 2.4.6,
safetensors 0.8.0. Deterministic: one torch generator per config, seeded from SEED.

    /work/venv-torch/bin/python tests/scripts/make_vision_fixtures.py
"""

import json
import os
import sys
from functools import partial
from pathlib import Path

os.environ["TIMM_FUSED_ATTN"] = "0"

import numpy as np  # noqa: E402
import safetensors  # noqa: E402
import safetensors.torch  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from timm.models.fastvit import LayerScale2d, RepConditionalPosEnc  # noqa: E402
from timm.utils.model import reparameterize_model  # noqa: E402

PINNED = {
    "torch": (torch.__version__.split("+")[0], "2.15.0"),
    "timm": (timm.__version__, "1.0.31"),
    "numpy": (np.__version__, "2.4.6"),
    "safetensors": (safetensors.__version__, "0.8.0"),
}
SEED = 20250917
OUT = Path(__file__).resolve().parent.parent / "fixtures" / "vision"
APPLE = "model.vision_tower.vision_tower.model."

# Tiny Qwen2 decoder: the converter needs a decoder, and its hidden size is the
# projector's width.
TEXT = {
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 1,
    "num_key_value_heads": 1,
    "intermediate_size": 64,
    "vocab_size": 64,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "max_position_embeddings": 512,
    "tie_word_embeddings": True,
    "hidden_act": "silu",
    "bos_token_id": 1,
    "eos_token_id": 2,
    "use_sliding_window": False,
}

CONFIGS = [
    # Five stages like FastViTHD, every block type (RepMixer, PatchEmbed with 1 -> 2
    # channels per group, RepCPE, attention with 2 and 4 heads, conv_exp + SE), at a
    # resolution that is not a power of two (192 -> 3 x 3 tokens).
    {
        "name": "mci3_192",
        "resolution": 192,
        "model_args": {
            "layers": [1, 1, 1, 2, 1],
            "embed_dims": [8, 16, 32, 64, 128],
            "mlp_ratios": [4, 4, 4, 2, 1],
        },
        "pos_kernel": 7,
    },
    # Four stages with attention at stride 16: 100 tokens, so the streamed attention
    # crosses query and key blocks; two blocks per stage, mlp ratio 3.
    {
        "name": "four_stage_160",
        "resolution": 160,
        "model_args": {
            "layers": [2, 1, 2, 1],
            "embed_dims": [8, 16, 32, 64],
            "mlp_ratios": [3, 3, 3, 3],
            "token_mixers": ["repmixer", "repmixer", "attention", "attention"],
            "pos_embs": [None, None, "rcpe", "rcpe"],
            "downsamples": [False, True, True, True],
            "se_downsamples": [False] * 4,
        },
        "pos_kernel": 7,
    },
    # Three stages, attention straight after the stem (576 tokens), other kernel sizes
    # (RepMixer 5, downsample 5, RepCPE 3), downsamples with 1 -> 1 and 1 -> 3 channels
    # per group and a 1 -> 3 conv_exp.
    {
        "name": "three_stage_96",
        "resolution": 96,
        "model_args": {
            "layers": [1, 1, 1],
            "embed_dims": [32, 32, 96],
            "mlp_ratios": [2, 2, 2],
            "token_mixers": ["attention", "repmixer", "attention"],
            "pos_embs": [None, None, "rcpe"],
            "downsamples": [False, True, True],
            "se_downsamples": [False] * 3,
            "repmixer_kernel_size": 5,
            "down_patch_size": 5,
            "cls_ratio": 3.0,
        },
        "pos_kernel": 3,
    },
]


def check_versions():
    bad = [f"{k} {have} (want {want})" for k, (have, want) in PINNED.items() if have != want]
    if bad:
        sys.exit("unpinned environment: " + ", ".join(bad))


def timm_args(cfg):
    """model_args with the RepCPE markers turned into the module factories timm takes."""
    args = dict(cfg["model_args"])
    k = cfg["pos_kernel"]
    if "pos_embs" in args:
        args["pos_embs"] = [
            partial(RepConditionalPosEnc, spatial_shape=(k, k)) if p else None
            for p in args["pos_embs"]
        ]
    return args


def json_args(cfg):
    """model_args as the converter reads them from config.json."""
    args = dict(cfg["model_args"])
    k = cfg["pos_kernel"]
    if "pos_embs" in args:
        args["pos_embs"] = [{"spatial_shape": [k, k]} if p else None for p in args["pos_embs"]]
    return args


@torch.no_grad()
def randomize(model, gen):
    def normal(t, std, mean=0.0):
        t.copy_(torch.randn(t.shape, generator=gen) * std + mean)

    def uniform(t, lo, hi):
        t.copy_(torch.rand(t.shape, generator=gen) * (hi - lo) + lo)

    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            fan_in = m.weight[0].numel()
            normal(m.weight, fan_in**-0.5)
            if m.bias is not None:
                normal(m.bias, 0.1)
        elif isinstance(m, torch.nn.BatchNorm2d):
            uniform(m.weight, 0.5, 1.5)
            normal(m.bias, 0.2)
            normal(m.running_mean, 0.2)
            uniform(m.running_var, 0.5, 2.0)
        elif isinstance(m, torch.nn.LayerNorm):
            uniform(m.weight, 0.5, 1.5)
            normal(m.bias, 0.1)
        elif isinstance(m, LayerScale2d):
            uniform(m.gamma, 0.2, 0.8)


def to_apple(timm_sd, cfg):
    """timm fastvit names -> Apple mci.py names (spec §7.4, generalised to any stage list)."""
    args = cfg["model_args"]
    n = len(args["layers"])
    pos = [p is not None for p in args.get("pos_embs", [None, None, None, "rcpe", "rcpe"])]
    down_idx, pos_idx, blocks_idx, i = [], [], [], 0
    for s in range(n):
        down_idx.append(i)
        if s > 0:
            i += 1
        pos_idx.append(i)
        if pos[s]:
            i += 1
        blocks_idx.append(i)
        i += 1

    out = {}
    for k, v in timm_sd.items():
        p = k.split(".")
        if p[0] == "stem":
            name = "patch_embed." + ".".join(p[1:])
        elif p[0] == "final_conv":
            name = "conv_exp." + ".".join(p[1:])
            name = name.replace("se.fc1", "se.reduce").replace("se.fc2", "se.expand")
        elif p[0] == "stages":
            s, part = int(p[1]), p[2]
            rest = ".".join(p[3:])
            if part == "downsample":
                name = f"network.{down_idx[s]}.{rest}"
                name = name.replace("proj.0.reparam_conv", "proj.0.lkb_reparam")
            elif part == "pos_emb":
                name = f"network.{pos_idx[s]}.{rest}"
            elif part == "blocks":
                name = f"network.{blocks_idx[s]}.{rest}"
                name = name.replace(".mlp.", ".convffn.")
                for ls in ("layer_scale_1", "layer_scale_2", "layer_scale"):
                    name = name.replace(f".{ls}.gamma", f".{ls}")
            else:
                raise ValueError(k)
        elif p[0] == "head":
            continue
        else:
            raise ValueError(k)
        out[APPLE + name] = v
    return out


def check_nontrivial(what, x):
    x = np.asarray(x, dtype=np.float64)
    assert np.isfinite(x).all(), f"{what}: not finite"
    std = x.std()
    zeros = np.mean(np.abs(x) < 1e-6)
    assert std > 0.05, f"{what}: degenerate (std {std})"
    assert zeros < 0.2, f"{what}: {zeros:.0%} zeros"
    assert np.abs(x).max() < 1e4, f"{what}: exploding ({np.abs(x).max()})"


def nhwc_tokens(t):
    """NCHW (batch 1) -> [H*W, C] float32."""
    _, c, h, w = t.shape
    return t[0].permute(1, 2, 0).reshape(h * w, c).contiguous().numpy().astype(np.float32)


def tiny_decoder(gen, dtype):
    h, f, v = TEXT["hidden_size"], TEXT["intermediate_size"], TEXT["vocab_size"]
    kv = h // TEXT["num_attention_heads"] * TEXT["num_key_value_heads"]
    shapes = {
        "model.embed_tokens.weight": (v, h),
        "model.layers.0.self_attn.q_proj.weight": (h, h),
        "model.layers.0.self_attn.q_proj.bias": (h,),
        "model.layers.0.self_attn.k_proj.weight": (kv, h),
        "model.layers.0.self_attn.k_proj.bias": (kv,),
        "model.layers.0.self_attn.v_proj.weight": (kv, h),
        "model.layers.0.self_attn.v_proj.bias": (kv,),
        "model.layers.0.self_attn.o_proj.weight": (h, h),
        "model.layers.0.mlp.gate_proj.weight": (f, h),
        "model.layers.0.mlp.up_proj.weight": (f, h),
        "model.layers.0.mlp.down_proj.weight": (h, f),
        "model.layers.0.input_layernorm.weight": (h,),
        "model.layers.0.post_attention_layernorm.weight": (h,),
        "model.norm.weight": (h,),
    }
    return {k: (torch.randn(s, generator=gen) * 0.02).to(dtype) for k, s in shapes.items()}


@torch.no_grad()
def build(cfg, seed):
    gen = torch.Generator().manual_seed(seed)
    res = cfg["resolution"]
    train = timm.create_model(
        "fastvit_mci3", pretrained=False, num_classes=0, inference_mode=False, **timm_args(cfg)
    ).eval()
    randomize(train, gen)
    fused = reparameterize_model(train)
    model = timm.create_model(
        "fastvit_mci3", pretrained=False, num_classes=0, inference_mode=True, **timm_args(cfg)
    ).eval()
    # Round every weight to f16 so the stored checkpoint is exactly what runs.
    sd = {k: v.half().float() if v.is_floating_point() else v for k, v in fused.state_dict().items()}
    model.load_state_dict(sd, strict=True)

    pixels_u8 = torch.randint(0, 256, (1, 3, res, res), generator=gen, dtype=torch.uint8)
    x = pixels_u8.float() / 255.0
    # The train form and the reparameterized form agree (before the f16 rounding).
    ref = train.forward_features(x)
    assert torch.allclose(fused.forward_features(x), ref, rtol=1e-4, atol=1e-4 * ref.abs().max())

    taps = {}
    h = model.stem(x)
    taps["stem"] = nhwc_tokens(h)
    for i, stage in enumerate(model.stages):
        h = stage(h)
        taps[f"stage{i}"] = nhwc_tokens(h)
    feat = model.final_conv(h)
    assert torch.equal(feat, model.forward_features(x))
    taps["encoder"] = nhwc_tokens(feat)

    out_dim, hidden = feat.shape[1], TEXT["hidden_size"]
    proj = torch.nn.Sequential(
        torch.nn.Linear(out_dim, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, hidden)
    )
    randomize(proj, gen)
    for p in proj.parameters():
        p.copy_(p.half().float())
    taps["projector"] = proj(torch.from_numpy(taps["encoder"])).numpy().astype(np.float32)
    for k, v in taps.items():
        check_nontrivial(f"{cfg['name']}/{k}", v)

    # BatchNorm counters stay int64 scalars, as in Apple's checkpoints.
    tensors = {
        k: v.half() if v.is_floating_point() else v
        for k, v in to_apple(model.state_dict(), cfg).items()
    }
    for i, lin in ((0, proj[0]), (2, proj[2])):
        tensors[f"model.mm_projector.{i}.weight"] = lin.weight.half()
        tensors[f"model.mm_projector.{i}.bias"] = lin.bias.half()
    tensors.update(tiny_decoder(gen, torch.float16))
    return x[0].numpy().astype(np.float32), taps, tensors, out_dim


def config_json(cfg, out_dim):
    res = cfg["resolution"]
    c = {
        "_name_or_path": f"vision-fixture-{cfg['name']}",
        "architectures": ["LlavaQwen2ForCausalLM"],
        "model_type": "llava_qwen2",
        "mm_vision_tower": f"mobileclip_l_{res}",
        "image_size": res,
        "mm_hidden_size": out_dim,
        "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "mm_patch_merge_type": "flat",
        "image_aspect_ratio": "pad",
        "vision_config": {"architecture": "fastvit_mci3", "model_args": json_args(cfg)},
        "torch_dtype": "float16",
    }
    c.update(TEXT)
    return c


def main():
    check_versions()
    torch.set_num_threads(1)
    total = 0
    for n, cfg in enumerate(CONFIGS):
        pixels, taps, tensors, out_dim = build(cfg, SEED + n)
        d = OUT / cfg["name"]
        d.mkdir(parents=True, exist_ok=True)
        for old in d.glob("*"):
            old.unlink()
        np.save(d / "input.npy", pixels)
        for k, v in taps.items():
            np.save(d / f"{k}.npy", v)
        safetensors.torch.save_file(
            {k: v.contiguous() for k, v in sorted(tensors.items())},
            d / "model.safetensors",
            metadata={"format": "pt"},
        )
        (d / "config.json").write_text(json.dumps(config_json(cfg, out_dim), indent=2) + "\n")
        size = sum(f.stat().st_size for f in d.glob("*"))
        total += size
        print(f"{cfg['name']}: {len(tensors)} tensors, {size / 1024:.0f} KiB, "
              f"encoder {taps['encoder'].shape}, |max| {np.abs(taps['encoder']).max():.3g}")
    print(f"total {total / 1024:.0f} KiB")
    assert total < 3 * 1024 * 1024, "fixtures must stay under 3 MB"


if __name__ == "__main__":
    main()
