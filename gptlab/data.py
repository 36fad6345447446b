"""Corpus → tokenizer → token files → batches.

A data directory holds `train.bin` and `val.bin` (flat numpy arrays, uint16 when the vocabulary fits, else
uint32), `tokenizer/`, and `meta.json`. It is built in a temp folder and renamed into place, so a failed
`prepare` never leaves a half-written directory, nor touches an existing one.

The split is by document when the corpus has at least `MIN_DOCS_FOR_DOC_SPLIT` documents (a fixed, seeded
choice of whole documents goes to validation), else by position (the last `val_fraction` of the token stream).
Every document is followed by the end-of-text token when the tokenizer has one.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from gptlab.corpus import Document, corpus_sha256, load_corpus
from gptlab.errors import DataError
from gptlab.io import check_output_dir, replace_dir, temp_dir_beside
from gptlab.tokenizers import BPETokenizer, CharTokenizer, GPT2Tokenizer, Tokenizer, encode_many, load_tokenizer

MIN_DOCS_FOR_DOC_SPLIT = 10
TokenizerKind = Literal["char", "bpe", "gpt2"]


def tokens_sha256(tokens: np.ndarray) -> str:
    """SHA-256 of a token array's bytes (what its .bin file holds), read through its buffer: a memmapped split is
    hashed without copying it into memory."""
    return hashlib.sha256(memoryview(np.ascontiguousarray(tokens)).cast("B")).hexdigest()


def is_data_dir(path: Path) -> bool:
    return (path / "meta.json").is_file() and (path / "train.bin").is_file() and not (path / "config.yaml").exists()


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.uint32)


def split_documents(docs: list[Document], val_fraction: float, seed: int = 0) -> tuple[list[Document], list[Document]]:
    rng = np.random.default_rng(seed)
    n_val = max(1, round(len(docs) * val_fraction))
    val_idx = set(rng.permutation(len(docs))[:n_val].tolist())
    return ([d for i, d in enumerate(docs) if i not in val_idx], [d for i, d in enumerate(docs) if i in val_idx])


def build_tokenizer(kind: TokenizerKind, docs: list[Document], vocab_size: int | None,
                    tiktoken_file: str | Path | None) -> Tokenizer:
    if kind == "char":
        return CharTokenizer.train((d.text for d in docs), with_eot=len(docs) > 1)
    if kind == "bpe":
        return BPETokenizer.train((d.text for d in docs), vocab_size or 4096)
    return GPT2Tokenizer(tiktoken_file)


def _stream(tok: Tokenizer, docs: list[Document]) -> np.ndarray:
    ids: list[int] = []
    for doc_ids in encode_many(tok, [d.text for d in docs]):
        ids.extend(doc_ids)
        if tok.eot_id is not None:
            ids.append(tok.eot_id)
    return np.asarray(ids, dtype=token_dtype(tok.vocab_size))


def prepare(corpus: str | Path, out: str | Path, tokenizer: TokenizerKind = "char", vocab_size: int | None = None,
            val_fraction: float = 0.1, tiktoken_file: str | Path | None = None,
            tokenizer_from: str | Path | None = None, overwrite: bool = False) -> dict:
    """Tokenize `corpus` into the data directory `out`; returns its meta.json contents.

    `tokenizer_from` reuses a saved tokenizer (a run's or a data directory's `tokenizer/`) instead of making one.
    A non-empty `out` is refused unless it is a data directory and `overwrite` is set.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    out = Path(out)
    check_output_dir(out, "gptlab data directory", is_data_dir, overwrite)
    docs = load_corpus(corpus)
    tok = load_tokenizer(tokenizer_from) if tokenizer_from else build_tokenizer(tokenizer, docs, vocab_size,
                                                                                  tiktoken_file)
    if len(docs) >= MIN_DOCS_FOR_DOC_SPLIT:
        train_docs, val_docs = split_documents(docs, val_fraction)
        train, val = _stream(tok, train_docs), _stream(tok, val_docs)
        split = {"by": "document", "val_documents": [d.name for d in val_docs]}
    else:
        stream = _stream(tok, docs)
        cut = int(len(stream) * (1 - val_fraction))
        train, val = stream[:cut], stream[cut:]
        split = {"by": "position", "val_fraction": val_fraction}
    if len(train) < 2 or len(val) < 2:
        raise DataError(f"corpus {corpus} is too short: {len(train)} train and {len(val)} val tokens after the "
                        "split; give it more text")
    meta = {
        "tokenizer": tok.kind, "vocab_size": tok.vocab_size, "eot_id": tok.eot_id,
        "dtype": str(token_dtype(tok.vocab_size)), "train_tokens": int(len(train)), "val_tokens": int(len(val)),
        "documents": len(docs), "split": split, "source": str(corpus), "source_sha256": corpus_sha256(docs),
        "tokens_sha256": {"train": tokens_sha256(train), "val": tokens_sha256(val)},
    }
    with temp_dir_beside(out) as tmp:
        train.tofile(tmp / "train.bin")
        val.tofile(tmp / "val.bin")
        tok.save(tmp / "tokenizer")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        for f in ("train.bin", "val.bin", "meta.json"):
            with open(tmp / f, "rb") as fh:
                os.fsync(fh.fileno())
        replace_dir(tmp, out)
    return meta


# ---------------------------------------------------------------------------------------------------------------
@dataclass
class TokenData:
    directory: Path
    meta: dict
    train: np.ndarray
    val: np.ndarray

    @property
    def tokenizer_dir(self) -> Path:
        return self.directory / "tokenizer"

    def tokenizer(self) -> Tokenizer:
        return load_tokenizer(self.tokenizer_dir)

    def check_unchanged(self) -> None:
        """The token files still hold what `prepare` wrote (content hashes in meta.json); data directories made
        before hashes were recorded pass unchecked."""
        recorded = self.meta.get("tokens_sha256")
        if not isinstance(recorded, dict):
            return
        for name, arr in (("train", self.train), ("val", self.val)):
            if tokens_sha256(arr) != recorded.get(name):
                raise DataError(f"{self.directory}/{name}.bin was changed after `gptlab prepare` wrote it (its "
                                "content hash differs from meta.json); prepare the data again")

    def check_fits(self, block_size: int) -> None:
        for name, arr in (("train", self.train), ("val", self.val)):
            if len(arr) <= block_size:
                raise DataError(f"{self.directory}/{name}.bin has {len(arr)} tokens, too few for one block of "
                                f"{block_size} (+1 target); use a larger corpus or a smaller --set model.block_size")


def load_data(directory: str | Path) -> TokenData:
    directory = Path(directory)
    meta_path = directory / "meta.json"
    if not meta_path.is_file():
        raise DataError(f"{directory} is not a gptlab data directory (no meta.json); create one with "
                        "`gptlab prepare --corpus ... --out {directory}`")
    try:
        meta = json.loads(meta_path.read_text())
        dtype = np.dtype(meta["dtype"])
        splits = {}
        for name in ("train", "val"):
            path = directory / f"{name}.bin"
            expected = meta[f"{name}_tokens"] * dtype.itemsize
            if not path.is_file() or path.stat().st_size != expected:
                raise DataError(f"{path} is missing or truncated (expected {expected} bytes); re-run `gptlab prepare`")
            splits[name] = np.memmap(path, dtype=dtype, mode="r")
    except (json.JSONDecodeError, KeyError, TypeError):
        raise DataError(f"{meta_path} is corrupt; re-run `gptlab prepare`") from None
    return TokenData(directory, meta, splits["train"], splits["val"])


# ---------------------------------------------------------------------------------------------------------------
def gather_windows(tokens: np.ndarray, starts: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets for windows of `length` tokens beginning at `starts`."""
    rows = np.stack([tokens[s: s + length + 1] for s in starts.tolist()]).astype(np.int64)
    t = torch.from_numpy(rows)
    return t[:, :-1], t[:, 1:]


class BatchSampler:
    """Random training windows from its own generator, whose state travels in checkpoints (exact resume)."""

    def __init__(self, tokens: np.ndarray, batch_size: int, block_size: int, seed: int):
        self.tokens, self.batch_size, self.block_size = tokens, batch_size, block_size
        self.generator = torch.Generator().manual_seed(seed)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(len(self.tokens) - self.block_size, (self.batch_size,), generator=self.generator)
        return gather_windows(self.tokens, starts, self.block_size)

    def state(self) -> torch.Tensor:
        return self.generator.get_state()

    def load_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)


def eval_batches(tokens: np.ndarray, n_batches: int, batch_size: int, block_size: int, seed: int):
    """The same `n_batches` random windows every time it is called with the same seed."""
    sampler = BatchSampler(tokens, batch_size, block_size, seed)
    for _ in range(n_batches):
        yield sampler.next()
