#!/usr/bin/env python3
"""Golden fixtures for the decoder: two tiny random HF decoders and their f32 logits.

Writes tests/fixtures/decoder/:
  qwen2_tiny/   config.json + model.safetensors (bf16, tied embeddings, q/k/v biases,
                rope_theta 1e6)
  llama_tiny/   config.json + model.safetensors (f16, separate lm_head, no biases,
                rope_theta 1e5)
  <model>.logits.npy   float32 [n_tokens, vocab]: transformers' logits at every position
  tokens.json          the token ids both models are run on, and the shapes

The weights are rounded to their storage dtype *before* the reference forward pass, and
the pass itself runs in float32 with eager attention, so the logits are exactly what an
f32 runtime reading the stored checkpoint should produce (up to f32 summation order).

Pinned: torch 2.15.0, transformers 5.23.0, safetensors 0.8.0, numpy 2.x (the venv at
/work/venv-torch). Run:  /work/venv-torch/bin/python tests/scripts/make_decoder_fixture.py
"""

import json
import pathlib
import shutil

import numpy as np
import safetensors
import torch
import transformers

PINNED = {"torch": "2.15.0", "transformers": "5.23.0", "safetensors": "0.8.0"}
for mod, want in [(torch, PINNED["torch"]), (transformers, PINNED["transformers"]),
                  (safetensors, PINNED["safetensors"])]:
    have = mod.__version__.split("+")[0]
    assert have == want, f"{mod.__name__} {have}, fixture pinned to {want}"

OUT = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "decoder"
SEED = 20240611
N_TOKENS = 24
VOCAB = 256

COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    intermediate_size=128,
    max_position_embeddings=512,
    rms_norm_eps=1e-6,
    hidden_act="silu",
)

MODELS = {
    "qwen2_tiny": dict(
        cls=transformers.Qwen2ForCausalLM,
        cfg=transformers.Qwen2Config(**COMMON, rope_theta=1e6, tie_word_embeddings=True,
                                     use_sliding_window=False),
        dtype=torch.bfloat16,
    ),
    "llama_tiny": dict(
        cls=transformers.LlamaForCausalLM,
        cfg=transformers.LlamaConfig(**COMMON, rope_theta=1e5, tie_word_embeddings=False,
                                     attention_bias=False, mlp_bias=False),
        dtype=torch.float16,
    ),
}


def randomize(model, gen):
    """Weights with O(1) activations: HF's default init (std 0.02, unit norms, zero
    biases) gives near-uniform logits whose argmax is decided by noise and leaves the
    norm and bias paths untested."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            elif "embed_tokens" in name or "lm_head" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                fan_in = p.shape[-1]
                p.copy_(torch.randn(p.shape, generator=gen) * (1.5 / fan_in ** 0.5))


def main():
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    tokens = torch.randint(0, VOCAB, (N_TOKENS,), generator=gen)
    OUT.mkdir(parents=True, exist_ok=True)
    meta = {"tokens": tokens.tolist(), "models": {}}
    for name, spec in MODELS.items():
        cfg = spec["cfg"]
        cfg._attn_implementation = "eager"
        model = spec["cls"](cfg).float().eval()
        randomize(model, gen)
        # Round to the storage dtype first, so the f32 reference sees the stored values.
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(spec["dtype"]).float())
            logits = model(tokens[None, :]).logits[0].float().numpy()
        top2 = np.sort(logits, axis=-1)[:, -2:]
        margin = float((top2[:, 1] - top2[:, 0]).min())
        # The Rust test demands the same argmax at every position; a near-tie would make
        # that a coin toss on f32 rounding. 1e-2 is 10x the test's logit tolerance.
        assert margin > 1e-2, f"{name}: top-2 margin {margin}"
        d = OUT / name
        if d.exists():
            shutil.rmtree(d)
        model.to(spec["dtype"]).save_pretrained(d, safe_serialization=True)
        for extra in d.iterdir():
            if extra.name not in ("config.json", "model.safetensors"):
                extra.unlink()
        np.save(OUT / f"{name}.logits.npy", logits.astype("<f4"))
        meta["models"][name] = {
            "logits": f"{name}.logits.npy",
            "shape": list(logits.shape),
            "dtype": str(spec["dtype"]).removeprefix("torch."),
            "min_top2_margin": margin,
        }
        print(f"{name}: logits {logits.shape}, |logits| max {np.abs(logits).max():.2f}, "
              f"min top-2 margin {margin:.4f}")
    (OUT / "tokens.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
