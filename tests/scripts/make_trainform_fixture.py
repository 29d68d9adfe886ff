#!/usr/bin/env python3
"""Train-form FastViTHD fixtures for the converter's reparameterization (tools/tests/convert_hf.rs).

timm is the independent reference: a tiny `fastvit_mci3` is built in train form (every
branch type present: MobileOne conv/scale/identity branches, RepMixer mixer/norm with a
layer scale, ReparamLargeKernelConv with its small kernel, RepCPE, attention blocks,
conv_exp with squeeze-excite), its BatchNorm statistics, affine parameters, biases and
layer scales are randomised so no branch is trivial, and timm's own `reparameterize_model`
fuses it. The script writes, under tests/fixtures/trainform/:

- apple/{config.json, model.safetensors}: the train-form weights in Apple ml-fastvlm
  naming (`model.vision_tower.vision_tower.model.network.{i}...rbr_conv...`, the inverse
  of timm's `checkpoint_filter_fn`, checked by running that filter), F32, as a
  `llava_qwen2` checkpoint with a tiny Qwen2 decoder and projector, plus Apple's unused
  `head.proj`;
- timm/{config.json, model.safetensors}: the same weights in timm naming as a transformers
  `fast_vlm` checkpoint (`model.vision_tower.timm_model.*`), BF16, with a 3-class timm
  classifier head the converter must ignore;
- expected.safetensors: timm's fused tensors, plus the ConvFFN BatchNorm folded by hand,
  under the converter's canonical names and layouts (OHWI, HWC, [O, I]), F32.

All parameters are first rounded to bf16-representable values so the BF16 and F32 copies
hold identical numbers, and the model is then fused in float64, so the expected tensors
are the exact fusion rounded once to f32 (the converter also works in f64).

Pinned environment (CPU wheels):

    python3 -m venv /tmp/venv-torch
    /tmp/venv-torch/bin/pip install torch==2.15.0 timm==1.0.31 safetensors==0.8.0 numpy
    /tmp/venv-torch/bin/python tests/scripts/make_trainform_fixture.py

Seeded: reruns give identical files.
"""

import json
import re
from pathlib import Path

import numpy as np
import safetensors
import timm
import torch
from safetensors.torch import save_file
from timm.models.fastvit import checkpoint_filter_fn
from timm.utils.model import reparameterize_model

PINNED = {"torch": "2.15.0", "timm": "1.0.31", "safetensors": "0.8.0"}
SEED = 20250917
OUT = Path(__file__).resolve().parent.parent / "fixtures" / "trainform"

# Two blocks in one RepMixer and one attention stage exercise block indexing; widths
# double per stage (as in FastViTHD) and the attention stages hold 1 and 2 heads of 32.
LAYERS = [1, 2, 1, 2, 1]
DIMS = [4, 8, 16, 32, 64]
MLP_RATIOS = [3, 3, 3, 2, 1]
IMAGE_SIZE = 256
TEXT = dict(hidden_size=32, intermediate_size=32, num_attention_heads=2, num_key_value_heads=1,
            num_hidden_layers=1, vocab_size=24)
APPLE_PREFIX = "model.vision_tower.vision_tower.model."
TIMM_PREFIX = "model.vision_tower.timm_model."


def check_versions():
    got = {"torch": torch.__version__.split("+")[0], "timm": timm.__version__,
           "safetensors": safetensors.__version__}
    if got != PINNED:
        raise SystemExit(f"pinned {PINNED}, found {got}")


def build_model():
    torch.manual_seed(SEED)
    model = timm.create_model("fastvit_mci3", pretrained=False, inference_mode=False, layers=LAYERS,
                              embed_dims=DIMS, mlp_ratios=MLP_RATIOS, num_classes=3)
    g = torch.Generator().manual_seed(SEED + 1)

    def rand(shape, lo, hi):
        return lo + (hi - lo) * torch.rand(shape, generator=g)

    with torch.no_grad():
        bn_params = set()
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                bn_params |= {id(m.weight), id(m.bias)}
                n = m.num_features
                m.weight.copy_(rand(n, 0.5, 1.5) * torch.where(rand(n, 0, 1) < 0.2, -1.0, 1.0))
                m.bias.copy_(rand(n, -0.3, 0.3))
                m.running_mean.copy_(rand(n, -0.3, 0.3))
                m.running_var.copy_(rand(n, 0.2, 2.0))
                m.num_batches_tracked.fill_(123)
        for name, p in model.named_parameters():
            if id(p) in bn_params:
                continue
            if name.endswith("gamma"):
                # Log-uniform over [1e-3, 1]: big enough that the mixer and FFN branches
                # move the fused kernels well away from the identity.
                p.copy_(torch.exp(rand(p.shape, np.log(1e-3), 0.0)))
            elif name.endswith("bias"):
                p.copy_(rand(p.shape, -0.2, 0.2))
            elif name.endswith("norm.weight"):  # LayerNorm2d of the attention blocks
                p.copy_(rand(p.shape, 0.8, 1.2))
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(t.bfloat16().float())
    return model.eval()


def stage_indices():
    """Apple's flat `network.{i}` index of each stage's downsampler, RepCPE and blocks."""
    down, pos, blocks, i = {}, {}, {}, 0
    for s in range(len(LAYERS)):
        if s > 0:
            down[s] = i
            i += 1
        if s >= 3:  # mci3: RepCPE before the attention stages
            pos[s] = i
            i += 1
        blocks[s] = i
        i += 1
    return down, pos, blocks


def timm_to_apple(k):
    down, pos, blocks = stage_indices()
    m = re.match(r"stages\.(\d+)\.(downsample\.proj|pos_emb\.pos_enc|blocks)(.*)", k)
    if m:
        s, what, rest = int(m.group(1)), m.group(2), m.group(3)
        if what == "downsample.proj":
            k = f"network.{down[s]}.proj{rest}"
        elif what == "pos_emb.pos_enc":
            k = f"network.{pos[s]}.pe{rest}"
        else:
            k = f"network.{blocks[s]}{rest}"
    k = re.sub(r"^stem\.", "patch_embed.", k)
    k = re.sub(r"^final_conv\.", "conv_exp.", k)
    for a, b in [("conv_kxk", "rbr_conv"), ("conv_scale", "rbr_scale"), (".identity.", ".rbr_skip."),
                 ("large_conv", "lkb_origin"), (".mlp.", ".convffn."), ("se.fc1", "se.reduce"),
                 ("se.fc2", "se.expand")]:
        k = k.replace(a, b)
    return re.sub(r"(layer_scale(_\d)?)\.gamma$", r"\1", k)


def decoder_tensors(g):
    """A tiny Qwen2 decoder + projector in HF names (Apple layout), f32, bf16-representable."""
    d, i, v = TEXT["hidden_size"], TEXT["intermediate_size"], TEXT["vocab_size"]
    hd = d // TEXT["num_attention_heads"]
    kv = hd * TEXT["num_key_value_heads"]

    def r(*shape, mean=0.0):
        return (mean + 0.1 * torch.randn(*shape, generator=g)).bfloat16().float()

    t = {"model.embed_tokens.weight": r(v, d), "model.norm.weight": r(d, mean=1.0), "lm_head.weight": r(v, d),
         "model.mm_projector.0.weight": r(d, 2 * DIMS[-1]), "model.mm_projector.0.bias": r(d),
         "model.mm_projector.2.weight": r(d, d), "model.mm_projector.2.bias": r(d)}
    for l in range(TEXT["num_hidden_layers"]):
        p = f"model.layers.{l}."
        t |= {p + "input_layernorm.weight": r(d, mean=1.0), p + "post_attention_layernorm.weight": r(d, mean=1.0),
              p + "self_attn.q_proj.weight": r(d, d), p + "self_attn.q_proj.bias": r(d),
              p + "self_attn.k_proj.weight": r(kv, d), p + "self_attn.k_proj.bias": r(kv),
              p + "self_attn.v_proj.weight": r(kv, d), p + "self_attn.v_proj.bias": r(kv),
              p + "self_attn.o_proj.weight": r(d, d), p + "mlp.gate_proj.weight": r(i, d),
              p + "mlp.up_proj.weight": r(i, d), p + "mlp.down_proj.weight": r(d, i)}
    return t


def hf_decoder_name(k):
    k = k.replace("model.mm_projector.0.", "model.multi_modal_projector.linear_1.")
    k = k.replace("model.mm_projector.2.", "model.multi_modal_projector.linear_2.")
    if k.startswith("model.") and "multi_modal_projector" not in k:
        k = "model.language_model." + k[len("model."):]
    return k


def canonical_decoder(dec):
    out = {}
    for k, v in dec.items():
        m = re.match(r"model\.layers\.(\d+)\.(.*)", k)
        if m:
            l, rest = m.groups()
            rest = (rest.replace("input_layernorm", "attn_norm").replace("post_attention_layernorm", "mlp_norm")
                    .replace("self_attn.", "attn.").replace("_proj", ""))
            out[f"decoder.layers.{l}.{rest}"] = v
            continue
        name = {"model.embed_tokens.weight": "decoder.embed.weight", "model.norm.weight": "decoder.norm.weight",
                "lm_head.weight": "decoder.lm_head.weight"}.get(k)
        if name is None:
            name = k.replace("model.mm_projector.0.", "projector.fc1.").replace("model.mm_projector.2.", "projector.fc2.")
        out[name] = v
    return out


def hwc(w):
    """(C, 1, kh, kw) -> (kh, kw, C)."""
    return w[:, 0].permute(1, 2, 0)


def canonical_vision(fused):
    """timm inference-form state dict (float64) -> canonical names and layouts."""
    out, used = {}, set()

    def take(k):
        used.add(k)
        return fused[k]

    def pair(src, dst, conv):
        out[dst + ".weight"] = conv(take(src + ".weight"))
        out[dst + ".bias"] = take(src + ".bias")

    pair("stem.0.reparam_conv", "vision.stem.0", lambda w: w.permute(0, 2, 3, 1))
    pair("stem.1.reparam_conv", "vision.stem.1", hwc)
    pair("stem.2.reparam_conv", "vision.stem.2", lambda w: w[:, :, 0, 0])
    for s, depth in enumerate(LAYERS):
        st, dst = f"stages.{s}", f"vision.stages.{s}"
        if s > 0:
            pair(f"{st}.downsample.proj.0.reparam_conv", f"{dst}.down.lk", hwc)
            pair(f"{st}.downsample.proj.1.reparam_conv", f"{dst}.down.pw", lambda w: w[:, :, 0, 0])
        if s >= 3:
            pair(f"{st}.pos_emb.reparam_conv", f"{dst}.pos", hwc)
        for b in range(depth):
            p, q = f"{st}.blocks.{b}", f"{dst}.blocks.{b}"
            if s < 3:
                pair(f"{p}.token_mixer.reparam_conv", f"{q}.mixer", hwc)
                out[f"{q}.ffn_scale"] = take(f"{p}.layer_scale.gamma").flatten()
            else:
                pair(f"{p}.norm", f"{q}.norm", lambda w: w)
                out[f"{q}.attn.qkv.weight"] = take(f"{p}.token_mixer.qkv.weight")
                pair(f"{p}.token_mixer.proj", f"{q}.attn.proj", lambda w: w)
                out[f"{q}.attn_scale"] = take(f"{p}.layer_scale_1.gamma").flatten()
                out[f"{q}.ffn_scale"] = take(f"{p}.layer_scale_2.gamma").flatten()
            # ConvFFN: timm keeps conv + BatchNorm; fold by hand (spec §1.2).
            c = f"{p}.mlp.conv"
            w = take(f"{c}.conv.weight")
            gamma, beta = take(f"{c}.bn.weight"), take(f"{c}.bn.bias")
            mean, var = take(f"{c}.bn.running_mean"), take(f"{c}.bn.running_var")
            used.add(f"{c}.bn.num_batches_tracked")
            t = gamma / torch.sqrt(var + 1e-5)
            out[f"{q}.ffn.dw.weight"] = hwc(w * t[:, None, None, None])
            out[f"{q}.ffn.dw.bias"] = beta - mean * t
            pair(f"{p}.mlp.fc1", f"{q}.ffn.fc1", lambda w: w[:, :, 0, 0])
            pair(f"{p}.mlp.fc2", f"{q}.ffn.fc2", lambda w: w[:, :, 0, 0])
    pair("final_conv.reparam_conv", "vision.head.conv", hwc)
    pair("final_conv.se.fc1", "vision.head.se.reduce", lambda w: w[:, :, 0, 0])
    pair("final_conv.se.fc2", "vision.head.se.expand", lambda w: w[:, :, 0, 0])
    left = set(fused) - used - {"head.fc.weight", "head.fc.bias"}
    if left:
        raise SystemExit(f"unmapped fused tensors: {sorted(left)}")
    return out


def f32(d):
    return {k: v.detach().to(torch.float32).contiguous() for k, v in d.items()}


def main():
    check_versions()
    model = build_model()
    train_sd = {k: v.clone() for k, v in model.state_dict().items()}

    # Sanity: timm's fusion is exact (in f64) on this model.
    m64 = model.double()
    fused_model = reparameterize_model(m64)
    x = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(SEED + 2),
                    dtype=torch.float64)
    with torch.no_grad():
        a, b = m64.forward_features(x), fused_model.forward_features(x)
    err = float((a - b).abs().max() / a.abs().max())
    assert err < 1e-10, f"timm reparameterization mismatch {err}"
    fused = {k: v for k, v in fused_model.state_dict().items()}
    assert not any("conv_kxk" in k or "large_conv" in k or "pos_enc" in k for k in fused)

    dec = decoder_tensors(torch.Generator().manual_seed(SEED + 3))
    expected = canonical_vision(fused) | canonical_decoder(dec)

    # Apple naming, checked by timm's own Apple -> timm filter.
    vis = {k: v for k, v in train_sd.items() if not k.startswith("head.")}
    apple = {timm_to_apple(k): v for k, v in vis.items()}
    back = checkpoint_filter_fn(dict(apple), model)
    assert set(back) == set(vis), sorted(set(back) ^ set(vis))
    assert all(torch.equal(back[k], vis[k]) for k in vis)
    apple_st = {APPLE_PREFIX + k: v for k, v in apple.items()}
    apple_st[APPLE_PREFIX + "head.proj"] = torch.randn(2 * DIMS[-1], 8, generator=torch.Generator().manual_seed(5)).bfloat16().float()
    apple_st |= dec

    timm_st = {TIMM_PREFIX + k: v for k, v in train_sd.items()}
    timm_st |= {hf_decoder_name(k): v for k, v in dec.items()}

    for k, v in apple_st.items():
        assert not v.is_floating_point() or torch.equal(v, v.bfloat16().float()), f"{k} is not bf16-exact"

    def to(d, dtype):
        return {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in d.items()}

    vision_args = {"layers": LAYERS, "embed_dims": DIMS, "mlp_ratios": MLP_RATIOS, "inference_mode": False}
    text = dict(TEXT, rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=4096,
                bos_token_id=20, eos_token_id=[21, 22], hidden_act="silu")
    apple_cfg = dict(text, model_type="llava_qwen2", architectures=["LlavaQwen2ForCausalLM"],
                     _name_or_path="tiny-trainform-apple", mm_vision_tower=f"mobileclip_l_{IMAGE_SIZE}",
                     mm_hidden_size=2 * DIMS[-1], mm_projector_type="mlp2x_gelu", image_token_index=23,
                     tie_word_embeddings=False,
                     vision_config={"architecture": "fastvit_mci3", "model_args": vision_args})
    timm_cfg = {"model_type": "fast_vlm", "architectures": ["FastVlmForConditionalGeneration"],
                "_name_or_path": "tiny-trainform-timm", "image_token_id": 23, "tie_word_embeddings": False,
                "vision_feature_select_strategy": "full", "vision_feature_layer": -1,
                "projector_hidden_act": "gelu", "multimodal_projector_bias": True,
                "vision_config": {"model_type": "timm_wrapper", "architecture": "fastvit_mci3",
                                  "hidden_size": 2 * DIMS[-1], "image_size": IMAGE_SIZE, "num_classes": 3,
                                  "model_args": vision_args},
                "text_config": dict(text, model_type="qwen2",
                                    rope_parameters={"rope_theta": 1000000.0, "rope_type": "default"})}
    del timm_cfg["text_config"]["rope_theta"]

    # One key only: safetensors writes metadata from a hash map, so several keys would
    # come out in a different order on every run.
    pins = " ".join(f"{k}=={v}" for k, v in PINNED.items())
    meta = {"generator": f"tests/scripts/make_trainform_fixture.py seed={SEED} {pins}"}
    for sub, cfg, st, dtype in [("apple", apple_cfg, apple_st, torch.float32),
                                ("timm", timm_cfg, timm_st, torch.bfloat16)]:
        d = OUT / sub
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        save_file(to(st, dtype), str(d / "model.safetensors"), metadata=meta)
    save_file(f32(expected), str(OUT / "expected.safetensors"), metadata=meta)
    n_params = sum(v.numel() for v in expected.values())
    sizes = {p.relative_to(OUT).as_posix(): p.stat().st_size for p in sorted(OUT.rglob("*.safetensors"))}
    print(f"{len(expected)} canonical tensors, {n_params} values; files {sizes}; fusion check {err:.1e}")


if __name__ == "__main__":
    main()
