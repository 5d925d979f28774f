"""A tiny random-word JSONL corpus for end-to-end CLI tests (`calm tokenize` input)."""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "and",
    "dog",
    "ran",
    "far",
    "away",
    "from",
    "home",
    "while",
    "birds",
    "sing",
]


def write_word_corpus(path: Path, num_docs: int, words_per_doc: int, seed: int = 0) -> Path:
    """Write ``num_docs`` documents of ``words_per_doc`` random :data:`WORDS` to ``path``."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for _ in range(num_docs):
            text = " ".join(rng.choice(WORDS) for _ in range(words_per_doc))
            f.write(json.dumps({"text": text}) + "\n")
    return path
