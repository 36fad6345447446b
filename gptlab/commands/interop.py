"""`gptlab export hf` and `gptlab import hf`: transformers GPT-2 directories both ways, verified."""

from __future__ import annotations

import argparse


def cmd_export(args: argparse.Namespace) -> None:
    if args.format == "gguf":
        from gptlab.interop.gguf_export import export_gguf

        r = export_gguf(args.run, args.out, args.type, args.checkpoint, args.overwrite)
        print(f"wrote {args.out}: GGUF, llama.cpp's gpt2 architecture, {r['type']}, {r['bytes']:,} bytes (read back "
              f"and checked: max |Δlogits| {r['max_abs_logit_diff']:.1e})")
        print(f"    verified by {r['llama_cpp'].summary()}" if r["llama_cpp"] else
              "    not loaded in llama.cpp: llama-cpp-python is not installed (`make install` installs it)")
        return
    if args.type is not None:
        from gptlab.errors import GptlabError

        raise GptlabError("--type applies to `export gguf` only")
    from gptlab.interop.hf import export_hf

    diff = export_hf(args.run, args.out, args.checkpoint, args.overwrite)
    print(f"wrote {args.out}: transformers GPT2LMHeadModel + tokenizer (verified: max |Δlogits| {diff:.1e})")


def cmd_import(args: argparse.Namespace) -> None:
    from gptlab.interop.hf import import_hf

    diff = import_hf(args.hf_dir, args.out, args.allow_pickle, args.overwrite)
    print(f"wrote run {args.out} from {args.hf_dir} (verified: max |Δlogits| {diff:.1e})")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a run to another format (hf: a transformers GPT-2 directory; gguf: "
                                      "a llama.cpp file)")
    p.add_argument("format", choices=["hf", "gguf"])
    p.add_argument("--run", required=True, metavar="RUN_DIR")
    p.add_argument("--out", required=True, metavar="HF_DIR|FILE.gguf")
    p.add_argument("--type", choices=["f32", "f16", "q8_0", "q4_0"],
                   help="gguf only: how the weight matrices are stored (default f16)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it already holds what this format "
                   "writes (a transformers GPT-2 directory, a GGUF file); anything else is never overwritten")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import", help="import a model (hf: a local transformers GPT-2 directory) as a run")
    p.add_argument("format", choices=["hf"])
    p.add_argument("hf_dir", metavar="HF_DIR")
    p.add_argument("--out", required=True, metavar="RUN_DIR")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it already holds a model written by "
                   "merge, quantize or import (anything else is never overwritten)")
    p.add_argument("--allow-pickle", action="store_true", help="accept a pytorch_model.bin, loaded with "
                   "torch.load(weights_only=True); safetensors needs no flag")
    p.set_defaults(func=cmd_import)
