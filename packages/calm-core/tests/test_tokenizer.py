"""Tokenizers: BPE train/save/load round-trip, the byte fallback, foreign tokenizer.json files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from calm_core.data import BPETokenizer, ByteTokenizer, Tokenizer, TokenizerError

CORPUS = [
    "The cat sat on the mat. The dog sat on the log.",
    "A quick brown fox jumps over the lazy dog; the dog sleeps.",
    "Caf\u00e9 cr\u00e8me br\u00fbl\u00e9e \u2014 na\u00efve r\u00e9sum\u00e9 \U0001f600 and more text here.",
] * 3


def test_bpe_train_save_load_round_trip(tmp_path: Path):
    tok = Tokenizer.train_bpe(CORPUS, vocab_size=300)
    assert isinstance(tok, BPETokenizer)
    assert (tok.pad_id, tok.eos_id) == (0, 1)  # PAD 0 like the reference, then EOS
    assert 258 < tok.vocab_size <= 300  # bytes + specials + some merges
    for text in [*CORPUS[:3], "unseen words: zebra \u00e6\u00f8\u00e5 \u4e2d\u6587"]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text  # byte-level: lossless even on unseen characters
        assert tok.pad_id not in ids and tok.eos_id not in ids
    # merges learned: the frequent word costs fewer ids than its bytes
    assert len(tok.encode(" the")) < len(b" the")

    tok.save(tmp_path)
    meta = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert meta == {
        "kind": "bpe", "vocab_size": tok.vocab_size, "pad_id": 0, "eos_id": 1,
        "pad": "<|pad|>", "eos": "<|endoftext|>",
    }  # fmt: skip
    loaded = Tokenizer.load(tmp_path)
    assert isinstance(loaded, BPETokenizer)
    assert (loaded.vocab_size, loaded.pad_id, loaded.eos_id) == (tok.vocab_size, 0, 1)
    assert loaded.encode_batch(CORPUS[:3]) == [tok.encode(t) for t in CORPUS[:3]]
    assert loaded.decode([*tok.encode("hi"), 1, 0], skip_special=False) == "hi<|endoftext|><|pad|>"
    assert loaded.decode([*tok.encode("hi"), 1, 0]) == "hi"


def test_bpe_training_is_deterministic():
    a = Tokenizer.train_bpe(CORPUS, vocab_size=290)
    b = Tokenizer.train_bpe(CORPUS, vocab_size=290)
    assert a.backend.get_vocab() == b.backend.get_vocab()


def test_too_small_bpe_vocab_is_refused():
    with pytest.raises(TokenizerError, match="vocab size 100 is too small.*at least 258"):
        Tokenizer.train_bpe(CORPUS, vocab_size=100)


def test_byte_tokenizer_round_trip(tmp_path: Path):
    tok = Tokenizer.byte_level()
    assert (tok.vocab_size, tok.pad_id, tok.eos_id) == (258, 0, 1)
    text = "h\u00e9llo \U0001f600"
    ids = tok.encode(text)
    assert ids == [b + 2 for b in text.encode()]
    assert tok.decode(ids) == text
    assert tok.decode([*ids, 1, 0], skip_special=False) == text + "<|endoftext|><|pad|>"
    assert tok.decode([*ids, 300, 5000]) == text  # ids a larger model may emit: no byte, skipped
    tok.save(tmp_path)
    assert isinstance(Tokenizer.load(tmp_path), ByteTokenizer)
    assert isinstance(Tokenizer.load(tmp_path / "tokenizer.json"), ByteTokenizer)


def test_foreign_tokenizer_json_gets_pad_and_eos(tmp_path: Path):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers

    hf = HFTokenizer(models.WordLevel({"hello": 0, "world": 1, "[UNK]": 2}, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path / "tokenizer.json"
    hf.save(str(path))
    renamed = tmp_path / "word_level.json"  # any file name works
    renamed.write_text(path.read_text())
    assert Tokenizer.load(renamed).vocab_size == 5
    tok = Tokenizer.from_file(path)
    assert tok.encode("hello world") == [0, 1]  # existing ids keep their meaning
    assert (tok.pad_id, tok.eos_id, tok.vocab_size) == (3, 4, 5)  # appended specials
    out = tmp_path / "saved"
    tok.save(out)
    again = Tokenizer.load(out)
    assert (again.pad_id, again.eos_id, again.vocab_size) == (3, 4, 5)


def test_load_errors_name_the_path(tmp_path: Path):
    with pytest.raises(TokenizerError, match=f"no tokenizer.json in {tmp_path}"):
        Tokenizer.load(tmp_path)
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(TokenizerError, match="is not a `tokenizers` tokenizer.json"):
        Tokenizer.from_file(bad)


def test_vocab_size_covers_the_largest_id_of_a_tokenizer_with_gaps(tmp_path: Path):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers

    vocab = {"[UNK]": 0, "hello": 1, "world": 7, "</s>": 8, "<pad>": 9}  # ids 2..6 unused
    hf = HFTokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    hf.save(str(tmp_path / "tokenizer.json"))
    tok = Tokenizer.from_file(tmp_path / "tokenizer.json")
    assert tok.encode("hello world") == [1, 7] and (tok.eos_id, tok.pad_id) == (8, 9)
    assert tok.vocab_size == 10  # an embedding of this size holds every id


def test_special_token_text_inside_a_document_stays_text():
    tok = Tokenizer.train_bpe(CORPUS, vocab_size=300)
    text = "see <|endoftext|> and <|pad|> in a doc"
    for ids in (tok.encode(text), tok.encode_batch([text])[0]):
        assert tok.eos_id not in ids and tok.pad_id not in ids
        assert tok.decode(ids) == text
