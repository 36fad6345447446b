"""`gptlab prepare`: a corpus tokenized into a data directory."""

from __future__ import annotations

import argparse

from gptlab.commands.common import count, number


def cmd_prepare(args: argparse.Namespace) -> None:
    from gptlab.data import prepare

    meta = prepare(args.corpus, args.out, args.tokenizer, args.vocab_size, args.val_fraction, args.tiktoken_file,
                   args.tokenizer_from, args.overwrite)
    print(f"wrote {args.out}: {meta['tokenizer']} tokenizer, vocab {meta['vocab_size']}, "
          f"{meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens "
          f"({meta['documents']} documents, split by {meta['split']['by']})")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="tokenize a corpus into a data directory",
                       description="Tokenize a corpus into DATA_DIR: train.bin, val.bin, tokenizer/, meta.json. "
                                   "Built-in corpora: shakespeare, shakespeare-plays, shakespeare-poems.")
    p.add_argument("--corpus", required=True, help="a text file, a folder of .txt files, or a built-in name")
    p.add_argument("--tokenizer", choices=["char", "bpe", "gpt2"], default="char")
    p.add_argument("--vocab-size", type=count(2, 2**31),
                   help="vocabulary size for a trained BPE tokenizer (default 4096)")
    p.add_argument("--val-fraction", type=number(0, 1, low_open=True), default=0.1,
                   help="share held out for validation (default 0.1)")
    p.add_argument("--tiktoken-file", help="local r50k_base.tiktoken ranks file for --tokenizer gpt2 (offline)")
    p.add_argument("--tokenizer-from", metavar="DIR", help="reuse a saved tokenizer, e.g. RUN_DIR/tokenizer of "
                   "an imported model (overrides --tokenizer)")
    p.add_argument("--out", required=True, metavar="DATA_DIR")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it already holds a data directory "
                   "(anything else is never overwritten)")
    p.set_defaults(func=cmd_prepare)
