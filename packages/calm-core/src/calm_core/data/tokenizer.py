"""Tokenizers: a byte-level BPE (trained or loaded, via the ``tokenizers`` library) and a
dependency-free byte tokenizer as fallback.

What is unusual: every tokenizer has exactly one PAD and one EOS id and remembers them. Tokenizers
we train put PAD at id 0 and EOS at id 1 (the reference pads with id 0). A tokenizer is saved as
two files in a directory: ``tokenizer.json`` (the ``tokenizers`` format, or a tiny description of
the byte tokenizer) and ``tokenizer_config.json`` (kind, PAD/EOS tokens and ids, vocab size), so it
can sit next to the data and next to every model that uses it. Nothing is ever downloaded.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "EOS_TOKEN",
    "PAD_TOKEN",
    "TOKENIZER_CONFIG_FILE",
    "TOKENIZER_FILE",
    "BPETokenizer",
    "ByteTokenizer",
    "Tokenizer",
    "TokenizerError",
]

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
PAD_TOKEN = "<|pad|>"
EOS_TOKEN = "<|endoftext|>"

# special-token spellings recognised when loading a tokenizer.json trained elsewhere
_PAD_CANDIDATES = (PAD_TOKEN, "<pad>", "[PAD]", "<|finetune_right_pad_id|>")
_EOS_CANDIDATES = (EOS_TOKEN, "</s>", "<eos>", "<|end_of_text|>", "<|eot_id|>", "[SEP]")


class TokenizerError(ValueError):
    """A tokenizer that cannot be built, trained, saved or loaded; the message says why."""


class Tokenizer(ABC):
    """Text <-> token ids, with one PAD and one EOS id.

    Use :meth:`train_bpe`, :meth:`from_file`, :meth:`byte_level` or :meth:`load` to get one.
    """

    kind: str = ""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids (largest id + 1), special tokens included."""

    @property
    @abstractmethod
    def eos_id(self) -> int:
        """Id appended to every document."""

    @property
    @abstractmethod
    def pad_id(self) -> int:
        """Id used to pad documents to a multiple of the chunk size."""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no EOS appended)."""

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of several texts (parallel where the backend allows)."""
        return [self.encode(t) for t in texts]

    @abstractmethod
    def decode(self, ids: Sequence[int], *, skip_special: bool = True) -> str:
        """Text of ``ids``; PAD and EOS are dropped unless ``skip_special=False``, and ids
        outside the vocabulary (a model may have more) are skipped."""

    @abstractmethod
    def _save_files(self, directory: Path) -> None: ...

    def config(self) -> dict[str, Any]:
        """The metadata written to ``tokenizer_config.json`` (and the data index)."""
        return {
            "kind": self.kind,
            "vocab_size": self.vocab_size,
            "pad_id": self.pad_id,
            "eos_id": self.eos_id,
        }

    def save(self, directory: str | Path) -> Path:
        """Write ``tokenizer.json`` and ``tokenizer_config.json`` into ``directory``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self._save_files(d)
        (d / TOKENIZER_CONFIG_FILE).write_text(json.dumps(self.config(), indent=2) + "\n")
        return d

    @staticmethod
    def load(directory: str | Path) -> Tokenizer:
        """Load a tokenizer saved with :meth:`save` (a directory), or a ``tokenizer.json`` file."""
        p = Path(directory)
        d, path = (p.parent, p) if p.is_file() else (p, p / TOKENIZER_FILE)
        if not path.is_file():
            raise TokenizerError(
                f"no {TOKENIZER_FILE} in {d}; a data directory written by `calm tokenize` or a "
                "model directory saved with its tokenizer holds one"
            )
        meta: dict[str, Any] = {}
        cfg_path = d / TOKENIZER_CONFIG_FILE
        if cfg_path.is_file() and path.name == TOKENIZER_FILE:  # the metadata of this file
            meta = json.loads(cfg_path.read_text(encoding="utf-8"))
        if meta.get("kind") == ByteTokenizer.kind or _is_byte_description(path):
            return ByteTokenizer()
        return BPETokenizer.load_file(path, pad_token=meta.get("pad"), eos_token=meta.get("eos"))

    @staticmethod
    def byte_level() -> ByteTokenizer:
        """The dependency-free fallback: PAD 0, EOS 1, byte b -> id b + 2 (vocab 258)."""
        return ByteTokenizer()

    @staticmethod
    def train_bpe(texts: Iterable[str], vocab_size: int) -> BPETokenizer:
        """Train a byte-level BPE with ``vocab_size`` ids (PAD 0 and EOS 1 included)."""
        return BPETokenizer.train(texts, vocab_size)

    @staticmethod
    def from_file(path: str | Path) -> BPETokenizer:
        """Load an existing local ``tokenizer.json`` (EOS/PAD found by name, or added)."""
        return BPETokenizer.load_file(Path(path))


def _is_byte_description(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and data.get("calm_tokenizer") == ByteTokenizer.kind


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as tokens: needs nothing, never fails, and gives long sequences."""

    kind = "byte"
    _OFFSET = 2

    @property
    def vocab_size(self) -> int:
        return 256 + self._OFFSET

    @property
    def eos_id(self) -> int:
        return 1

    @property
    def pad_id(self) -> int:
        return 0

    def encode(self, text: str) -> list[int]:
        return [b + self._OFFSET for b in text.encode("utf-8")]

    def decode(self, ids: Sequence[int], *, skip_special: bool = True) -> str:
        out = bytearray()
        pieces: list[str] = []
        for i in ids:
            i = int(i)
            if i >= self.vocab_size:  # e.g. from a model with a larger vocabulary: no byte
                continue
            if i >= self._OFFSET:
                out.append(i - self._OFFSET)
            elif not skip_special:
                pieces.append(out.decode("utf-8", errors="replace"))
                out.clear()
                pieces.append(PAD_TOKEN if i == self.pad_id else EOS_TOKEN)
        pieces.append(out.decode("utf-8", errors="replace"))
        return "".join(pieces)

    def _save_files(self, directory: Path) -> None:
        desc = {"calm_tokenizer": self.kind, "offset": self._OFFSET, "pad_id": 0, "eos_id": 1}
        (directory / TOKENIZER_FILE).write_text(json.dumps(desc, indent=2) + "\n")


class BPETokenizer(Tokenizer):
    """A ``tokenizers.Tokenizer`` (byte-level BPE when trained here) with known PAD/EOS."""

    kind = "bpe"

    def __init__(self, backend: Any, pad_token: str, eos_token: str) -> None:
        self._tok = backend
        self.pad_token = pad_token
        self.eos_token = eos_token
        pad, eos = backend.token_to_id(pad_token), backend.token_to_id(eos_token)
        if pad is None or eos is None:
            raise TokenizerError(f"tokenizer has no id for {pad_token!r} or {eos_token!r}")
        self._pad_id, self._eos_id = int(pad), int(eos)
        # text is data: a literal "<|endoftext|>" inside a document must not become an EOS id
        if hasattr(backend, "encode_special_tokens"):
            backend.encode_special_tokens = True
        # ids may have gaps (a foreign tokenizer.json): the embedding needs the largest id + 1
        ids = backend.get_vocab(with_added_tokens=True).values()
        self._vocab_size = max(ids) + 1 if ids else 0

    @property
    def backend(self) -> Any:
        """The underlying ``tokenizers.Tokenizer``."""
        return self._tok

    @property
    def vocab_size(self) -> int:
        return int(self._vocab_size)

    @property
    def eos_id(self) -> int:
        return self._eos_id

    @property
    def pad_id(self) -> int:
        return self._pad_id

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        # the same ids; the fast variant (tokenizers >= 0.21) skips character offsets, unused here
        batch = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)
        return [e.ids for e in batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], *, skip_special: bool = True) -> str:
        return str(self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special))

    def config(self) -> dict[str, Any]:
        return {**super().config(), "pad": self.pad_token, "eos": self.eos_token}

    def _save_files(self, directory: Path) -> None:
        self._tok.save(str(directory / TOKENIZER_FILE))

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BPETokenizer:
        """Train a byte-level BPE; ids 0 and 1 are PAD and EOS, then the 256 byte symbols."""
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        minimum = 2 + len(pre_tokenizers.ByteLevel.alphabet())
        if vocab_size < minimum:
            raise TokenizerError(
                f"vocab size {vocab_size} is too small for a byte-level BPE (needs at least "
                f"{minimum}: 256 byte symbols plus PAD and EOS); use --byte-level for a "
                f"{minimum}-id byte tokenizer"
            )
        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[PAD_TOKEN, EOS_TOKEN],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok, PAD_TOKEN, EOS_TOKEN)

    @classmethod
    def load_file(
        cls, path: Path, *, pad_token: str | None = None, eos_token: str | None = None
    ) -> BPETokenizer:
        """Load a local ``tokenizer.json``; PAD/EOS are found by name or added as new tokens."""
        from tokenizers import AddedToken
        from tokenizers import Tokenizer as HFTokenizer

        if path.is_dir():
            path = path / TOKENIZER_FILE
        if not path.is_file():
            raise TokenizerError(f"tokenizer file {path} does not exist")
        try:
            tok = HFTokenizer.from_file(str(path))
        except Exception as exc:  # the Rust side raises a bare Exception
            raise TokenizerError(
                f"{path} is not a `tokenizers` tokenizer.json file: {exc}"
            ) from None
        vocab = tok.get_vocab(with_added_tokens=True)
        pad = pad_token or next((t for t in _PAD_CANDIDATES if t in vocab), None)
        eos = eos_token or next((t for t in _EOS_CANDIDATES if t in vocab), None)
        # a tokenizer without PAD/EOS gets them appended, so its existing ids keep their meaning
        missing = [t for t, found in ((PAD_TOKEN, pad), (EOS_TOKEN, eos)) if found is None]
        if missing:
            tok.add_special_tokens([AddedToken(t, special=True) for t in missing])
        return cls(tok, pad or PAD_TOKEN, eos or EOS_TOKEN)
