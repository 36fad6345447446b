"""Tokenizers behind one protocol: `encode`, `decode`, `vocab_size`, `eot_id`, `save`, and `load_tokenizer`.

- `char`: one id per character of the corpus (plus an end-of-text id when the corpus has several documents);
- `bpe`: byte-level BPE trained with the `tokenizers` library to a chosen vocabulary size;
- `gpt2`: GPT-2's own encoding (r50k_base ranks) through `tiktoken`, read from a local ranks file;
- `hf`: any `tokenizers` file, as imported from a transformers model directory.

A saved tokenizer is a directory holding `gptlab_tokenizer.json` (the kind and its settings) and the kind's own
files. Nothing here reaches for the network unless the caller explicitly allows it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Protocol

from gptlab.errors import TokenizerError

EOT = "<|endoftext|>"
MANIFEST = "gptlab_tokenizer.json"
R50K_FILE = "r50k_base.tiktoken"
R50K_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
R50K_URL = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"


class Tokenizer(Protocol):
    kind: str
    vocab_size: int
    eot_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def save(self, directory: Path) -> None: ...


def _write_manifest(directory: Path, manifest: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------------
class CharTokenizer:
    kind = "char"

    def __init__(self, chars: list[str], with_eot: bool = False):
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.eot_id = len(self.chars) if with_eot else None
        self.vocab_size = len(self.chars) + (1 if with_eot else 0)

    @classmethod
    def train(cls, texts: Iterable[str], with_eot: bool = False) -> "CharTokenizer":
        alphabet: set[str] = set()
        for t in texts:
            alphabet.update(t)
        return cls(sorted(alphabet), with_eot)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            unknown = sorted({c for c in text if c not in self.stoi})
            shown = " ".join(repr(c) for c in unknown[:20]) + (" ..." if len(unknown) > 20 else "")
            raise TokenizerError(f"{len(unknown)} character(s) not in this char-level vocabulary: {shown}; "
                                 "remove them from the text") from None

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(EOT if i == self.eot_id else self.chars[i] for i in ids)

    def save(self, directory: Path) -> None:
        _write_manifest(Path(directory), {"kind": "char", "chars": self.chars, "eot": self.eot_id is not None})


# ---------------------------------------------------------------------------------------------------------------
class BPETokenizer:
    """Byte-level BPE: every string is encodable, and decode(encode(s)) == s."""

    kind = "bpe"
    FILE = "bpe.json"

    def __init__(self, tok):
        self.tok = tok
        self.vocab_size = tok.get_vocab_size()
        self.eot_id = tok.token_to_id(EOT)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> "BPETokenizer":
        from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

        if vocab_size < 257:
            raise TokenizerError(f"--vocab-size {vocab_size} is too small for byte-level BPE: "
                                 "it needs 256 byte tokens plus end-of-text, so at least 257")
        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer)
        return cls(tok)

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        try:
            return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]
        except Exception as e:  # the tokenizers library raises a bare Exception, e.g. for an unknown symbol
            raise TokenizerError(f"this tokenizer cannot encode the text: {e}") from None

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tok.save(str(directory / self.FILE))
        _write_manifest(directory, {"kind": "bpe", "file": self.FILE})


class HFTokenizer(BPETokenizer):
    """Any `tokenizers` file, as imported from a transformers model directory (GPT-2's own, for instance)."""

    kind = "hf"
    FILE = "tokenizer.json"

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tok.save(str(directory / self.FILE))
        _write_manifest(directory, {"kind": "hf", "file": self.FILE})


# ---------------------------------------------------------------------------------------------------------------
def _tiktoken_cache_candidates() -> list[Path]:
    """Where tiktoken itself would have cached the ranks file (named by the SHA-1 of its URL)."""
    key = hashlib.sha1(R50K_URL.encode()).hexdigest()
    dirs = [os.environ.get("TIKTOKEN_CACHE_DIR"), os.environ.get("DATA_GYM_CACHE_DIR"),
            os.path.join(tempfile.gettempdir(), "data-gym-cache")]
    return [Path(d) / key for d in dirs if d]


def find_gpt2_ranks(explicit: str | Path | None = None) -> Path:
    """The local r50k_base ranks file: an explicit path, $GPTLAB_TIKTOKEN_FILE, or tiktoken's cache."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise TokenizerError(f"GPT-2 ranks file {path} does not exist")
        return path
    env = os.environ.get("GPTLAB_TIKTOKEN_FILE")
    candidates = ([Path(env)] if env else []) + _tiktoken_cache_candidates()
    for path in candidates:
        if path.is_file():
            return path
    raise TokenizerError("GPT-2 tokenizer ranks (r50k_base.tiktoken) not found offline; pass "
                         "--tiktoken-file PATH, set GPTLAB_TIKTOKEN_FILE, or set TIKTOKEN_CACHE_DIR to a "
                         "folder holding tiktoken's cached copy")


class GPT2Tokenizer:
    kind = "gpt2"

    def __init__(self, ranks_file: str | Path | None = None, expected_sha256: str | None = R50K_SHA256):
        """`expected_sha256=None` accepts any ranks file of the same format (tests use a small stand-in)."""
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe
        from tiktoken_ext.openai_public import r50k_pat_str

        self.ranks_file = find_gpt2_ranks(ranks_file)
        self.sha256 = expected_sha256
        try:
            ranks = load_tiktoken_bpe(str(self.ranks_file), expected_hash=expected_sha256)
        except ValueError as e:
            raise TokenizerError(f"{self.ranks_file} is not the GPT-2 r50k_base ranks file ({e})") from None
        self.enc = tiktoken.Encoding("r50k_base", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                                     special_tokens={EOT: len(ranks)})
        self.vocab_size = self.enc.n_vocab
        self.eot_id = self.enc.eot_token

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)  # a literal "<|endoftext|>" in text is ordinary text

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.enc.encode_ordinary_batch(texts)

    def decode(self, ids: Iterable[int]) -> str:
        return self.enc.decode(list(ids))

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.ranks_file.resolve() != (directory / R50K_FILE).resolve():
            shutil.copyfile(self.ranks_file, directory / R50K_FILE)
        _write_manifest(directory, {"kind": "gpt2", "file": R50K_FILE, "sha256": self.sha256})


# ---------------------------------------------------------------------------------------------------------------
def load_tokenizer(directory: str | Path) -> Tokenizer:
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise TokenizerError(f"no tokenizer in {directory} (missing {MANIFEST}); run `gptlab prepare` first")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        kind = manifest["kind"]
    except (json.JSONDecodeError, KeyError, UnicodeDecodeError):
        raise TokenizerError(f"{path} is corrupt; re-run `gptlab prepare`") from None
    if kind == "char":
        return CharTokenizer(manifest["chars"], manifest.get("eot", False))
    if kind in ("bpe", "hf"):
        from tokenizers import Tokenizer as Backend

        try:
            wrapper = BPETokenizer if kind == "bpe" else HFTokenizer
            return wrapper(Backend.from_file(str(directory / manifest["file"])))
        except Exception as e:  # the tokenizers library raises its own exception types
            raise TokenizerError(f"cannot load BPE tokenizer from {directory}: {e}") from None
    if kind == "gpt2":
        return GPT2Tokenizer(directory / manifest["file"], manifest.get("sha256", R50K_SHA256))
    raise TokenizerError(f"{path}: unknown tokenizer kind {kind!r} (expected char, bpe, gpt2 or hf)")


def encode_many(tok: Tokenizer, texts: list[str]) -> list[list[int]]:
    batch = getattr(tok, "encode_batch", None)
    return batch(texts) if batch else [tok.encode(t) for t in texts]
