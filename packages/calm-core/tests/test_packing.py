"""Packing and ``calm tokenize``: K alignment, document boundaries, the seeded split, every
bad-input error (naming file and line), and the shared WikiText corpus."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from calm_core.cli import main
from calm_core.data import PackedDataset, Tokenizer, pack_documents
from calm_core.data.packing import (
    DataError,
    choose_dtype,
    find_input_files,
    read_documents,
    split_documents,
)

WIKITEXT = Path(__file__).resolve().parents[3] / ".." / "shared" / "data"
WIKITEXT_FILE = WIKITEXT / "wikitext103-test-docs.jsonl"


def test_every_document_ends_with_eos_and_is_padded_to_k():
    docs = [[5, 6, 7], [8], [9, 10, 11, 12], []]
    packed = pack_documents(docs, chunk_size=4, eos_id=1, pad_id=0, dtype=np.dtype("uint16"))
    assert packed.tokens.tolist() == [
        5, 6, 7, 1,
        8, 1, 0, 0,
        9, 10, 11, 12, 1, 0, 0, 0,
        1, 0, 0, 0,
    ]  # fmt: skip
    assert packed.doc_offsets == [0, 4, 8, 16]
    assert packed.content_tokens == (3 + 1) + (1 + 1) + (4 + 1) + (0 + 1)  # tokens + EOS
    assert packed.tokens.dtype == np.uint16


def test_split_is_by_document_and_deterministic_from_the_seed():
    train, val = split_documents(10, 3, seed=0)
    assert sorted(train + val) == list(range(10)) and len(val) == 3
    assert split_documents(10, 3, seed=0) == (train, val)
    others = {tuple(split_documents(10, 3, seed=s)[1]) for s in range(1, 6)}
    assert len(others | {tuple(val)}) > 1
    with pytest.raises(DataError, match="leaves no training documents"):
        split_documents(3, 3, seed=0)


def test_vocab_that_does_not_fit_the_dtype_is_refused():
    assert choose_dtype(65536) == np.uint16
    assert choose_dtype(65537) == np.uint32
    with pytest.raises(DataError, match="vocab size 70000 does not fit uint16"):
        choose_dtype(70000, "uint16")


def _write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def test_tokenize_cli_packs_aligned_documents(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    texts = [f"document number {i} " + "word " * (i % 5) for i in range(12)]
    corpus = tmp_path / "in"
    corpus.mkdir()
    _write_jsonl(corpus / "a.jsonl", texts[:8])
    (corpus / "b.txt").write_text(texts[8])
    (corpus / "skip.bin").write_bytes(b"\xff")  # not a text suffix: ignored in a directory
    (tmp_path / "c.txt").write_text(texts[9])
    out = tmp_path / "data"
    rc = main([
        "tokenize", str(corpus), str(tmp_path / "c.txt"), "--out", str(out), "--byte-level",
        "--chunk-size", "4", "--val-docs", "2", "--seed", "3", "--json",
    ])  # fmt: skip
    assert rc == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert "calm tokenize config" in captured.err and '"chunk_size": 4' in captured.err
    assert summary["train_documents"] == 8 and summary["val_documents"] == 2

    tok = Tokenizer.byte_level()
    seen = []
    for split in ("train", "val"):
        ds = PackedDataset(out, split)
        assert ds.tokens.dtype == np.uint16 and ds.num_tokens % 4 == 0
        assert (ds.vocab_size, ds.pad_id, ds.eos_id, ds.chunk_size) == (258, 0, 1, 4)
        for i in range(ds.num_documents):
            doc = ds.document(i)
            assert ds.doc_offsets[i] % 4 == 0 and len(doc) % 4 == 0
            content = doc[doc != 0]
            assert content[-1] == 1 and 1 not in content[:-1]  # one EOS, at the end
            assert len(doc) - len(content) < 4  # padding shorter than a chunk
            seen.append(tok.decode(content.tolist()))
        # no K-chunk holds tokens of two documents: every chunk's EOS is followed only by PAD
        chunks = np.asarray(ds.tokens).reshape(-1, 4)
        for row in chunks[(chunks == 1).any(axis=1)]:
            assert (row[list(row).index(1) + 1 :] == 0).all()
    assert sorted(seen) == sorted(texts[:10])
    assert isinstance(PackedDataset(out).tokenizer, type(tok))


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.jsonl", b"", r"empty\.jsonl: empty input: the file is empty"),
        ("blank.jsonl", b"\n\n", r"blank\.jsonl: empty input: no non-blank documents"),
        ("bad.jsonl", b'{"text": "ok"}\n{"text": "\xff\xfe"}\n', r"bad\.jsonl:2: undecodable"),
        ("bad.txt", b"fine\nfine\nbad \xc3\x28 here\n", r"bad\.txt:3: undecodable bytes.*col"),
        ("nofield.jsonl", b'{"text": "a"}\n\n{"body": "b"}\n', r"nofield\.jsonl:3: missing 'text'"),
        ("notjson.jsonl", b'{"text": "a"}\n{oops\n', r"notjson\.jsonl:2: invalid JSON"),
        ("num.jsonl", b'{"text": 5}\n', r"num\.jsonl:1: the 'text' field must be a string"),
        ("sur.jsonl", b'{"text": "a"}\n{"text": "x\\ud800"}\n', r"sur\.jsonl:2: .*lone surrogate"),
        ("broken.jsonl.gz", b"not gzip at all", r"broken\.jsonl\.gz: not a readable gzip"),
    ],
)
def test_bad_inputs_name_the_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, content: bytes, message: str
):
    path = tmp_path / name
    path.write_bytes(content)
    rc = main(["tokenize", str(path), "--out", str(tmp_path / "out"), "--byte-level"])
    assert rc == 2
    assert re.search(message, capsys.readouterr().err)


def test_documents_index_like_a_sequence(tmp_path: Path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": "doc " * (i + 1)}) + "\n" for i in range(4)))
    assert main(["tokenize", str(corpus), "--out", str(tmp_path / "d"), "--byte-level"]) == 0
    data = PackedDataset(tmp_path / "d")
    assert np.array_equal(data.document(-1), data.document(data.num_documents - 1))
    assert np.array_equal(data.document(-data.num_documents), data.document(0))
    with pytest.raises(IndexError, match="out of range: the split holds 4 documents"):
        data.document(4)


def test_a_file_named_twice_is_read_once(tmp_path: Path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("a", "b"):
        (corpus / f"{name}.txt").write_text(f"document {name}")
    files = find_input_files([corpus, corpus / "a.txt", tmp_path / "corpus" / ".." / "corpus"])
    assert [f.name for f in files] == ["a.txt", "b.txt"]  # so it cannot land in both splits


def test_jsonl_lines_end_at_newlines_only_plain_or_gzipped(tmp_path: Path):
    import gzip

    texts = ["first\u2028still first", "second \x85 doc", "third"]
    raw = "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts).encode()
    (tmp_path / "c.jsonl").write_bytes(raw)
    (tmp_path / "c.jsonl.gz").write_bytes(gzip.compress(raw))
    for name in ("c.jsonl", "c.jsonl.gz"):
        docs = read_documents(find_input_files([tmp_path / name]))
        assert [d.text for d in docs] == texts
    assert {f.name for f in find_input_files([tmp_path])} == {"c.jsonl", "c.jsonl.gz"}


def test_other_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    empty_dir = tmp_path / "nothing"
    empty_dir.mkdir()
    good = _write_jsonl(tmp_path / "g.jsonl", ["one", "two"])
    cases = [
        ([str(empty_dir)], "empty input: the directory holds no"),
        ([str(tmp_path / "missing.txt")], "missing.txt: input does not exist"),
        ([str(good), "--dtype", "uint16", "--vocab-size", "70000"], "does not fit uint16"),
        ([str(good), "--val-docs", "2"], "leaves no training documents"),
        ([str(good), "--tokenizer", str(tmp_path), "--byte-level"], "exclude each other"),
    ]
    for i, (extra, message) in enumerate(cases):
        assert main(["tokenize", *extra, "--out", str(tmp_path / f"o{i}")]) == 2
        assert message in capsys.readouterr().err
    # an existing output directory is not silently overwritten
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert main(["tokenize", str(good), "--out", str(tmp_path / "full"), "--byte-level"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_dataset_errors_point_to_calm_tokenize(tmp_path: Path):
    with pytest.raises(DataError, match="calm tokenize"):
        PackedDataset(tmp_path)


@pytest.mark.skipif(not WIKITEXT_FILE.is_file(), reason=f"{WIKITEXT_FILE} not present")
def test_wikitext_tokenizes_with_bpe_and_reuses_its_tokenizer(tmp_path: Path):
    out = tmp_path / "wt"
    args = ["tokenize", str(WIKITEXT_FILE), "--out", str(out), "--vocab-size", "4096"]
    assert main([*args, "--val-docs", "6"]) == 0
    train, val = PackedDataset(out), PackedDataset(out, "val")
    assert (train.num_documents, val.num_documents) == (56, 6)
    assert train.vocab_size == 4096 and train.tokens.dtype == np.uint16
    assert train.tokens.max() < 4096
    first = train.tokenizer.decode(train.document(0).tolist())
    assert first.startswith(" = ") and len(first) > 1000
    # the saved tokenizer is reused as-is for another corpus
    again = tmp_path / "again"
    assert main(["tokenize", str(WIKITEXT_FILE), "--out", str(again), "--tokenizer", str(out)]) == 0
    reused = PackedDataset(again)
    assert reused.num_documents == 62 and reused.vocab_size == 4096
    first_text = json.loads(WIKITEXT_FILE.read_text().splitlines()[0])["text"]
    assert reused.tokenizer.decode(reused.document(0).tolist()) == first_text
