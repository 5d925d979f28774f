"""The streaming tokenize pipeline: byte-identical shards on any worker count, the bundled corpus
giving the tokens of calm-core 0.1, flat memory on a 10x larger corpus, every source format
(parquet, zst, globs, Hugging Face datasets), multi-shard reading, format-1 directories, and the
errors for missing extras."""

from __future__ import annotations

import gzip
import hashlib
import json
import sys
import tracemalloc
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from calm_core.cli import main
from calm_core.corpus import BUNDLED_CORPUS
from calm_core.data import BlockLoader, ByteTokenizer, DataError, Document, PackedDataset
from calm_core.data.packing import tokenizer_sample, val_indices, write_data_dir
from calm_core.data.sources import find_input_files, hf_documents, iter_documents

# sha256 of the train tokens calm-core 0.1 (one train.bin) wrote for the bundled corpus, K=4
BUNDLED_BYTE_SHA256 = "5de12848f73b70cbbccf39bb5f412fdd10068f1f159d187ee47f7f079be34a14"
BUNDLED_BPE512_SHA256 = "c039928832fe26825687b47fab043c5a8b4d5fedad4a64446da88dcbd6a206d1"


def _bundled_path(tmp_path: Path) -> Path:
    path = tmp_path / BUNDLED_CORPUS
    path.write_bytes(resources.files("calm_core.corpus").joinpath(BUNDLED_CORPUS).read_bytes())
    return path


def _split_sha256(data_dir: Path, split: str = "train") -> str:
    index = json.loads((data_dir / "index.json").read_text())
    h = hashlib.sha256()
    for shard in index["splits"][split]["shards"]:
        h.update((data_dir / shard["file"]).read_bytes())
    return h.hexdigest()


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    words = ["alpha", "beta", "gamma", "delta", "épsilon", "zeta", "eta", "θeta"]
    return [" ".join(rng.choice(words, size=int(rng.integers(3, 40)))) for _ in range(n)]


def _write_jsonl(path: Path, texts: list[str], field: str = "text") -> Path:
    path.write_text("".join(json.dumps({field: t}) + "\n" for t in texts))
    return path


def test_bundled_corpus_tokenizes_to_the_same_tokens_as_before(tmp_path: Path):
    corpus = _bundled_path(tmp_path)
    common = ["--chunk-size", "4", "--workers", "1"]
    assert (
        main(["tokenize", str(corpus), "--out", str(tmp_path / "b"), "--byte-level", *common]) == 0
    )
    assert _split_sha256(tmp_path / "b") == BUNDLED_BYTE_SHA256
    args = ["tokenize", str(corpus), "--out", str(tmp_path / "p"), "--vocab-size", "512", *common]
    assert main(args) == 0
    assert _split_sha256(tmp_path / "p") == BUNDLED_BPE512_SHA256


def test_shards_are_byte_identical_for_one_and_two_workers(tmp_path: Path):
    corpus = _write_jsonl(tmp_path / "c.jsonl", _texts(300))
    assert (
        main(["tokenize", str(corpus), "--out", str(tmp_path / "tok"), "--vocab-size", "300"]) == 0
    )
    outs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        rc = main([
            "tokenize", str(corpus), "--out", str(out), "--tokenizer", str(tmp_path / "tok"),
            "--val-docs", "17", "--seed", "5", "--shard-tokens", "1000", "--workers", str(workers),
        ])  # fmt: skip
        assert rc == 0
        outs.append(out)
    files = sorted(p.name for p in outs[0].iterdir())
    assert files == sorted(p.name for p in outs[1].iterdir())
    assert "train-00002.bin" in files and "val.offsets.npy" in files  # several shards
    for name in files:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
    val = PackedDataset(outs[0], "val")
    assert val.num_documents == 17 and PackedDataset(outs[0]).num_documents == 283


def test_validation_set_is_seeded_exact_and_spread_over_the_corpus():
    val = val_indices(100_000, 50, seed=3)
    assert len(val) == 50 and len(set(val.tolist())) == 50 and (np.diff(val) > 0).all()
    assert np.array_equal(val, val_indices(100_000, 50, seed=3))
    assert not np.array_equal(val, val_indices(100_000, 50, seed=4))
    assert val.min() < 20_000 and val.max() > 80_000  # not the first or last documents
    with pytest.raises(DataError, match="leaves no training documents"):
        val_indices(5, 5, seed=0)


class _CheapTokenizer(ByteTokenizer):
    """One id per 4 characters: tokenizing costs nothing, memory is the pipeline's own."""

    def encode(self, text: str) -> list[int]:
        return [7] * (len(text) // 4)


def _peak_traced(num_docs: int, out: Path) -> int:
    def docs() -> Iterator[Document]:
        for i in range(num_docs):
            yield Document(("x" * 997) + f"{i:03d}"[-3:], f"gen:{i}")

    tracemalloc.start()
    try:
        write_data_dir(
            out, docs, _CheapTokenizer(), chunk_size=4, val_docs=5, seed=0, shard_tokens=50_000
        )
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_several_workers_refuse_a_tokenizer_they_cannot_load(tmp_path: Path):
    docs = [Document("abcdefgh", "a")]
    with pytest.raises(DataError, match="not _CheapTokenizer; use workers=1"):
        write_data_dir(
            tmp_path, docs, _CheapTokenizer(), chunk_size=4, val_docs=0, seed=0, workers=2
        )


def test_peak_memory_stays_flat_for_a_ten_times_larger_corpus(tmp_path: Path):
    small = _peak_traced(4_000, tmp_path / "small")
    large = _peak_traced(40_000, tmp_path / "large")
    assert PackedDataset(tmp_path / "large").num_documents == 39_995
    assert large < 1.1 * small, (small, large)


def test_multi_shard_data_reads_like_one_stream(tmp_path: Path):
    corpus = _write_jsonl(tmp_path / "c.jsonl", _texts(120))
    for name, shard in (("one", "100000000"), ("many", "52")):
        args = ["--byte-level", "--shard-tokens", shard, "--workers", "1"]
        assert main(["tokenize", str(corpus), "--out", str(tmp_path / name), *args]) == 0
    one, many = PackedDataset(tmp_path / "one"), PackedDataset(tmp_path / "many")
    assert len(one.shards) == 1 and len(many.shards) > 10
    assert all(len(s) == 52 for s in many.shards[:-1])
    assert np.array_equal(np.asarray(one.tokens), many.tokens)
    for start, stop in ((0, 52), (50, 54), (10, 500), (100, 100), (0, many.num_tokens)):
        assert np.array_equal(one.read(start, stop), many.read(start, stop)), (start, stop)
    assert np.array_equal(many.doc_offsets, one.doc_offsets)
    for i in (0, 7, -1):
        assert np.array_equal(many.document(i), one.document(i))
    a, b = BlockLoader(one, 24, 3, seed=1), BlockLoader(many, 24, 3, seed=1)
    for _ in range(5):
        assert a.next_batch().tolist() == b.next_batch().tolist()


def test_a_data_directory_of_format_1_still_loads(tmp_path: Path):
    # what calm-core 0.1 wrote: one token file per split, offsets and sources in index.json
    tokens = np.array([5, 6, 1, 0, 7, 8, 9, 1, 10, 1, 0, 0], dtype=np.uint16)
    tokens.tofile(tmp_path / "train.bin")
    ByteTokenizer().save(tmp_path)
    index = {
        "format": "calm-packed-tokens/1", "tokenizer": ByteTokenizer().config(),
        "vocab_size": 258, "eos_id": 1, "pad_id": 0, "chunk_size": 4, "dtype": "uint16",
        "seed": 0, "sources": [], "splits": {"train": {
            "file": "train.bin", "num_documents": 3, "num_tokens": 12, "content_tokens": 9,
            "doc_offsets": [0, 4, 8], "doc_sources": ["a", "b", "c"],
        }},
    }  # fmt: skip
    (tmp_path / "index.json").write_text(json.dumps(index))
    ds = PackedDataset(tmp_path)
    assert ds.document(1).tolist() == [7, 8, 9, 1] and ds.doc_offsets.tolist() == [0, 4, 8]
    assert np.array_equal(ds.tokens, tokens)
    batch = BlockLoader(ds, 4, 3, shuffle=False).next_batch()
    assert batch.flatten().tolist() == tokens.tolist()


def test_parquet_zst_gzip_and_globs_give_the_same_documents(tmp_path: Path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    zstandard = pytest.importorskip("zstandard")
    texts = _texts(40, seed=2)
    raw = "".join(json.dumps({"body": t}) + "\n" for t in texts).encode()
    (tmp_path / "a.jsonl").write_bytes(raw)
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(raw))
    (tmp_path / "a.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    table = pa.table({"id": list(range(41)), "body": [*texts[:20], None, *texts[20:]]})
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=7)
    for name in ("a.jsonl", "a.jsonl.gz", "a.jsonl.zst", "a.parquet"):
        docs = list(iter_documents([tmp_path / name], text_field="body"))
        assert [d.text for d in docs] == texts, name
    out = tmp_path / "out"
    pattern = str(tmp_path / "a.*")
    args = ["--byte-level", "--text-field", "body", "--json", "--workers", "1"]
    assert main(["tokenize", pattern, "--out", str(out), *args]) == 0
    assert PackedDataset(out).num_documents == 4 * 40
    with pytest.raises(DataError, match=r"a\.parquet: no column 'text' \(columns: id, body\)"):
        list(iter_documents([tmp_path / "a.parquet"]))
    with pytest.raises(DataError, match=r"matches no readable input files"):
        find_input_files([str(tmp_path / "*.csv")])


def test_hugging_face_datasets_stream_local_json_and_parquet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    texts = _texts(25, seed=3)
    jsonl = _write_jsonl(tmp_path / "d.jsonl", texts)
    pq.write_table(pa.table({"text": texts}), tmp_path / "d.parquet")
    for builder, path in (("json", jsonl), ("parquet", tmp_path / "d.parquet")):
        docs = list(hf_documents(builder, data_files=[str(path)]))
        assert [d.text for d in docs] == texts and docs[0].source == f"{builder}[train]:1"
    out = tmp_path / "hf"
    rc = main([
        "tokenize", "--hf-dataset", "json", "--hf-data-files", str(jsonl), "--out", str(out),
        "--byte-level", "--val-docs", "3", "--workers", "1", "--json",
    ])  # fmt: skip
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["val_documents"] == 3
    # the same documents from the file directly give the same shards
    rc = main([
        "tokenize", str(jsonl), "--out", str(tmp_path / "file"), "--byte-level",
        "--val-docs", "3", "--workers", "1",
    ])  # fmt: skip
    assert rc == 0
    for split in ("train", "val"):
        assert _split_sha256(out, split) == _split_sha256(tmp_path / "file", split)
    with pytest.raises(DataError, match="has no column 'body'"):
        list(hf_documents("json", data_files=[str(jsonl)], text_field="body"))


@pytest.mark.parametrize(
    ("module", "args", "extra"),
    [
        ("zstandard", ["{tmp}/c.jsonl.zst"], "zstd"),
        ("pyarrow", ["{tmp}/c.parquet"], "parquet"),
        ("datasets", ["--hf-dataset", "json", "--hf-data-files", "{tmp}/c.jsonl"], "datasets"),
    ],
)
def test_a_missing_extra_is_named_before_work_starts(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    module: str,
    args: list[str],
    extra: str,
):
    for name in ("c.jsonl", "c.jsonl.zst", "c.parquet"):
        (tmp_path / name).write_bytes(b"x")
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    argv = [a.format(tmp=tmp_path) for a in args]
    assert main(["tokenize", *argv, "--out", str(tmp_path / "out"), "--byte-level"]) == 2
    assert f"pip install 'calm-core[{extra}]'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_tokenizer_sample_is_bounded_and_skips_validation_documents():
    docs = [Document("x" * 10, str(i)) for i in range(10)]
    sample = list(tokenizer_sample(docs, np.array([1, 3]), max_bytes=35))
    assert sample == ["x" * 10] * 3  # documents 0, 2, 4: the next would pass 35 bytes
    assert len(list(tokenizer_sample(docs, np.array([], dtype=np.int64), max_bytes=1))) == 1
