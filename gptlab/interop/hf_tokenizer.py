"""Tokenizers to and from Hugging Face `transformers` directories.

- `gpt2` (tiktoken ranks) → GPT-2's `vocab.json` + `merges.txt`, recovered from the ranks: a token's merge is
  the pair that byte-pair encoding of the token, with only lower-ranked merges allowed, ends on.
- `bpe` / `hf` (a `tokenizers` file) → `tokenizer.json` as it is.
- `char` → a `tokenizers` WordLevel model over single characters, which decodes by concatenation.
Import wraps whatever `AutoTokenizer` reads from the directory as a gptlab tokenizer of kind `hf`.
"""

from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path

from gptlab.errors import TokenizerError
from gptlab.tokenizers import EOT, BPETokenizer, CharTokenizer, GPT2Tokenizer, HFTokenizer, Tokenizer


@lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (the alphabet of vocab.json)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _merge_of(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    rank = ranks[token]
    parts = [bytes([b]) for b in token]
    while True:
        best = None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < rank and (best is None or r < best[1]):
                best = (i, r)
        if best is None:
            break
        i = best[0]
        parts[i: i + 2] = [parts[i] + parts[i + 1]]
    if len(parts) != 2:
        raise TokenizerError(f"token {token!r} has no BPE merge in the ranks file; is it a tiktoken BPE file?")
    return parts[0], parts[1]


def ranks_to_vocab_merges(ranks: dict[bytes, int], eot_id: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    to_str = lambda b: "".join(byte_to_unicode()[x] for x in b)  # noqa: E731
    vocab = {to_str(tok): rank for tok, rank in ranks.items()}
    vocab[EOT] = eot_id
    merges = []
    for tok, _ in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(tok) > 1:
            a, b = _merge_of(tok, ranks)
            merges.append((to_str(a), to_str(b)))
    return vocab, merges


def _char_backend(tok: CharTokenizer):
    from tokenizers import Regex, Tokenizer as Backend, decoders, models, pre_tokenizers

    vocab = {c: i for i, c in enumerate(tok.chars)}
    special = EOT if tok.eot_id is not None else None
    backend = Backend(models.WordLevel(vocab, unk_token=special or tok.chars[0]))
    if special:
        backend.add_special_tokens([special])
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("(?m)."), behavior="isolated")  # (?m): '.' matches '\n'
    backend.decoder = decoders.Fuse()
    return backend


def export_tokenizer(tok: Tokenizer, out: Path) -> None:
    """Write files that `transformers.AutoTokenizer.from_pretrained(out)` loads as the same tokenizer."""
    from transformers import GPT2TokenizerFast, PreTrainedTokenizerFast

    if isinstance(tok, GPT2Tokenizer):
        vocab, merges = ranks_to_vocab_merges(tok.enc._mergeable_ranks, tok.eot_id)
        hf = GPT2TokenizerFast(vocab=vocab, merges=merges)
    elif isinstance(tok, BPETokenizer):  # also HFTokenizer
        eot = EOT if tok.eot_id is not None else None
        hf = PreTrainedTokenizerFast(tokenizer_object=tok.tok, eos_token=eot, bos_token=eot)
    elif isinstance(tok, CharTokenizer):
        eot = EOT if tok.eot_id is not None else None
        hf = PreTrainedTokenizerFast(tokenizer_object=_char_backend(tok), eos_token=eot, bos_token=eot)
    else:
        raise TokenizerError(f"cannot export a tokenizer of kind {tok.kind!r} to transformers")
    hf.save_pretrained(str(out))


def import_tokenizer(hf_dir: Path) -> HFTokenizer:
    """The tokenizer saved in a transformers model directory, as a gptlab tokenizer."""
    from transformers import AutoTokenizer

    hf_dir = Path(hf_dir)
    if not any((hf_dir / f).is_file() for f in ("tokenizer.json", "vocab.json", "tokenizer_config.json")):
        raise TokenizerError(f"{hf_dir} has no tokenizer files; save one there with tokenizer.save_pretrained(DIR)")
    try:
        hf = AutoTokenizer.from_pretrained(str(hf_dir), local_files_only=True)
    except Exception as e:  # transformers raises many types for an unreadable tokenizer
        raise TokenizerError(f"cannot read the tokenizer in {hf_dir}: {str(e).splitlines()[0]}") from None
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise TokenizerError(f"the tokenizer in {hf_dir} has no fast (tokenizers) form; gptlab needs tokenizer.json")
    with tempfile.TemporaryDirectory() as tmp:  # a deep copy through the file format
        backend.save(str(Path(tmp) / "t.json"))
        from tokenizers import Tokenizer as Backend

        return HFTokenizer(Backend.from_file(str(Path(tmp) / "t.json")))

