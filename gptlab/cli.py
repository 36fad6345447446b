"""`gptlab <command>`: each command is a thin wrapper over a library function.

Errors in the user's input end the command with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from gptlab.errors import GptlabError
from gptlab.io import atomic_write_json

EXAMPLES = """\
examples:
  gptlab quickstart
  gptlab prepare --corpus shakespeare --tokenizer char --out runs/data/char
  gptlab train --data runs/data/char --out runs/small --set model.n_layer=4 --set train.max_steps=2000
  gptlab train --resume runs/small --set train.max_steps=4000
  gptlab sample --run runs/small --prompt "ROMEO." --max-new-tokens 300 --temperature 0.8 --top-k 40
  gptlab eval --run runs/small --lengths 64,128,256
  gptlab finetune --run runs/small --data runs/data/poems --out runs/lora --set lora.r=8 --set lora.scaling=rslora
  gptlab lab run tying --profile quick
  gptlab bench train --set model.n_layer=4 --set model.n_embd=128
  gptlab quantize --run runs/small --out runs/small-int4 --set quant.bits=4 --set quant.group_size=32
  gptlab quant inspect --run runs/small --set quant.bits=4
  gptlab sample --run runs/small --quant int8 --prompt "ROMEO."
  gptlab export hf --run runs/small --out runs/small-hf
  gptlab import hf path/to/gpt2-dir --out runs/gpt2 && gptlab train --init-from runs/gpt2 --data DATA --out runs/ft
"""


class Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (the usage is one `--help` away), exit code 2."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}; see `{self.prog} --help`\n")


def count(low: int, high: int = 2**63 - 1):
    """An argparse type: an integer in [low, high]."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in {low}..{high}, got {value}" if high < 2**63 - 1
                                             else f"must be at least {low}, got {value}")
        return value
    return parse


def number(low: float, high: float = math.inf, low_open: bool = False, what: str = ""):
    """An argparse type: a finite number in [low, high] (or (low, high] with `low_open`)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < low or (low_open and value == low) or value > high:
            span = f"{'(' if low_open else '['}{low:g}, {high:g}]" if math.isfinite(high) else \
                f"{'>' if low_open else '>='} {low:g}"
            raise argparse.ArgumentTypeError(f"must be a finite number {span}{what}, got {text!r}")
        return value
    return parse


def output_file(text: str) -> str:
    """An argparse type: a file to write (not an existing folder)."""
    if not text or Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory, not a file name; give a file path")
    return text


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file of config values, nested as model: {n_layer: 4}")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set model.n_layer=6 (repeatable)")


def cmd_prepare(args: argparse.Namespace) -> None:
    from gptlab.data import prepare

    meta = prepare(args.corpus, args.out, args.tokenizer, args.vocab_size, args.val_fraction, args.tiktoken_file,
                   args.tokenizer_from, args.overwrite)
    print(f"wrote {args.out}: {meta['tokenizer']} tokenizer, vocab {meta['vocab_size']}, "
          f"{meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens "
          f"({meta['documents']} documents, split by {meta['split']['by']})")


def launch_processes(nproc: int, argv: list[str]) -> None:
    """Run this same command under torchrun with `nproc` processes (data parallel); returns when they end."""
    import subprocess

    rest, skip = [], False
    for a in argv:  # the same arguments without --nproc
        if skip or a.startswith("--nproc="):
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        rest.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "gptlab", *rest]
    import os

    threads = max(1, len(os.sched_getaffinity(0)) // nproc)  # torchrun's default of 1 starves larger machines
    rc = subprocess.call(cmd, env={"OMP_NUM_THREADS": str(threads), **os.environ})
    if rc:
        raise SystemExit(rc)


def cmd_train(args: argparse.Namespace) -> None:
    from gptlab.config import build_config
    from gptlab.train.distributed import is_main_process, launched_by_torchrun
    from gptlab.train.loop import resume, train

    if args.nproc < 1:
        raise GptlabError(f"--nproc must be at least 1, got {args.nproc}")
    if args.device:
        args.overrides = [*args.overrides, f"train.device={args.device}"]
    if args.nproc > 1 and not launched_by_torchrun():
        return launch_processes(args.nproc, args.argv)
    if args.resume:
        if args.config:
            raise GptlabError("--config cannot be combined with --resume: the run keeps its own config.yaml")
        summary = resume(args.resume, args.overrides, args.data)
        run_dir = args.resume
    else:
        if not args.data or not args.out:
            raise GptlabError("train needs --data DATA_DIR and --out RUN_DIR (or --resume RUN_DIR)")
        summary = train(args.data, args.out, build_config(args.config, args.overrides), init_from=args.init_from)
        run_dir = args.out
    if not is_main_process():
        return
    val = "" if summary["val_loss"] is None else f", val loss {summary['val_loss']:.4f}"
    print(f"{run_dir}: step {summary['step']}, train loss {summary['final_loss']:.4f}{val} "
          f"({summary['elapsed_s']:.0f}s of training)")


def cmd_finetune(args: argparse.Namespace) -> None:
    from gptlab.config import build_config
    from gptlab.train.loop import resume, train

    if args.resume:
        summary, out = resume(args.resume, args.overrides, args.data), args.resume
    else:
        if not (args.run and args.data and args.out):
            raise GptlabError("finetune needs --run BASE_RUN --data DATA_DIR --out ADAPTER_DIR (or --resume ADAPTER_DIR)")
        cfg = build_config(args.config, args.overrides)
        if cfg.lora.r == 0:
            raise GptlabError("finetune trains LoRA adapters: give a rank, e.g. --set lora.r=16 "
                              "(and lora.alpha, lora.scaling=rslora); for full fine-tuning use `train --init-from`")
        summary, out = train(args.data, args.out, cfg, init_from=args.run), args.out
    val = "" if summary["val_loss"] is None else f", val loss {summary['val_loss']:.4f}"
    print(f"{out}: step {summary['step']}{val}; adapter (PEFT format) in {out}/adapter_config.json + "
          "adapter_model.safetensors")


def cmd_merge(args: argparse.Namespace) -> None:
    from gptlab.adapters.merge import merge_adapter

    diff = merge_adapter(args.run, args.adapter, args.out, args.overwrite)
    print(f"wrote {args.out}: {args.run} with {args.adapter} merged in (verified: max |Δlogits| {diff:.1e})")


def cmd_sample(args: argparse.Namespace) -> None:
    from gptlab.generate import StreamingDecoder, check_prompt, generate
    from gptlab.run import load_model, set_threads

    set_threads()
    if args.adapter:
        from gptlab.adapters.merge import load_with_adapter

        model, tok, _ = load_with_adapter(args.run, args.adapter, args.checkpoint)
    else:
        model, tok, _ = load_model(args.run, args.checkpoint, quant=args.quant)
    prompt = args.prompt if args.prompt is not None else ("\n" if tok.eot_id is None else None)
    ids = tok.encode(prompt) if prompt is not None else [tok.eot_id]
    check_prompt(model, ids, args.max_new_tokens)  # before anything is printed
    for i in range(args.num_samples):
        seed = None if args.seed is None else args.seed + i
        tokens = generate(model, ids, args.max_new_tokens, args.temperature, args.top_k, args.top_p, seed)
        if prompt:
            sys.stdout.write(prompt)
        decoder = StreamingDecoder(tok)
        for t in tokens:
            sys.stdout.write(decoder.push(t))
            sys.stdout.flush()
        sys.stdout.write(decoder.flush() + "\n")
        if i + 1 < args.num_samples:
            sys.stdout.write("-" * 40 + "\n")


def cmd_eval(args: argparse.Namespace) -> None:
    from gptlab.data import load_data
    from gptlab.evaluate import evaluate
    from gptlab.run import check_data_for_run, load_model, run_data_dir, set_threads

    set_threads()
    try:
        lengths = [int(x) for x in args.lengths.split(",")] if args.lengths else []
    except ValueError:
        raise GptlabError(f"--lengths {args.lengths!r}: expected comma-separated integers, e.g. 64,128,256") from None
    if any(n < 1 for n in lengths):
        raise GptlabError(f"--lengths {args.lengths!r}: every length must be at least 1")
    model, tok, cfg = load_model(args.run, args.checkpoint, overrides=args.overrides)
    data = load_data(run_data_dir(args.run, args.data))
    check_data_for_run(args.run, tok, data)
    split = data.val if args.split == "val" else data.train
    lengths = lengths or [cfg.model.block_size]
    rows, curves = [], {}
    for length in lengths:
        try:
            r = evaluate(model, split, length, max_windows=args.max_windows)
        except GptlabError as e:
            rows.append({"length": length, "error": str(e)})
            print(f"length {length:>6}: cannot run ({e})")
            continue
        rows.append({"length": r.length, "loss": r.loss, "perplexity": r.perplexity, "tokens": r.tokens,
                     "per_position": r.per_position})
        curves[length] = r.per_position
        print(f"length {length:>6}: {args.split} loss {r.loss:.4f}  perplexity {r.perplexity:.3f}  "
              f"({r.tokens:,} tokens)")
    if curves:  # where in the window the loss goes: the mean loss of tokens in each eighth of the longest window
        longest = max(curves)
        edges = [round(longest * i / 8) for i in range(9)]
        print("per-position loss (positions: mean loss) at length", longest)
        print("  " + "  ".join(f"{a}-{b - 1}: {sum(curves[longest][a:b]) / (b - a):.3f}"
                               for a, b in zip(edges, edges[1:]) if b > a))
    if args.plot and curves:
        from gptlab.report import plot_per_position

        plot_per_position(curves, args.plot, f"{args.run} ({args.split})", cfg.model.block_size)
        print(f"wrote {args.plot}")
    if args.json:
        atomic_write_json(args.json, rows)


def cmd_quantize(args: argparse.Namespace) -> None:
    from gptlab.quant.workflow import describe, quantize_run
    from gptlab.run import load_run_config, set_threads

    set_threads()
    r = quantize_run(args.run, args.out, args.overrides, args.data, args.eval_windows, args.overwrite)
    q = load_run_config(args.out).quant
    print(f"wrote {args.out}: {describe(q)}")
    print(f"  val loss {r['val_loss_float']:.4f} (float) → {r['val_loss_quantized']:.4f} (quantized), "
          f"Δ {r['val_loss_quantized'] - r['val_loss_float']:+.4f} on {r['eval_windows']} windows of {r['length']}")
    print(f"  model on disk {r['bytes_float'] / 1e6:.2f} MB → {r['bytes_quantized'] / 1e6:.2f} MB "
          f"({r['bytes_quantized'] / max(r['bytes_float'], 1):.0%})")
    if args.json:
        atomic_write_json(args.json, r)


def cmd_quant(args: argparse.Namespace) -> None:
    from gptlab.document import Block, to_markdown
    from gptlab.quant.inspect import as_records, stats_table
    from gptlab.quant.workflow import describe, inspect_run
    from gptlab.run import set_threads

    set_threads()
    q, stats = inspect_run(args.run, args.overrides, args.data, args.eval_windows, not args.no_sensitivity)
    print(f"{args.run}: layers as {describe(q)} would quantize them")
    print(to_markdown([Block("table", items=stats_table(stats))]))
    worst = max((s for s in stats if s.sensitivity is not None), key=lambda s: s.sensitivity, default=None)
    if worst is not None:
        print(f"most sensitive: {worst.name} ({worst.sensitivity:+.4f} val loss when quantized alone)")
    if args.json:
        atomic_write_json(args.json, as_records(stats))


def cmd_export(args: argparse.Namespace) -> None:
    from gptlab.interop.hf import export_hf

    diff = export_hf(args.run, args.out, args.checkpoint, args.overwrite)
    print(f"wrote {args.out}: transformers GPT2LMHeadModel + tokenizer (verified: max |Δlogits| {diff:.1e})")


def cmd_import(args: argparse.Namespace) -> None:
    from gptlab.interop.hf import import_hf

    diff = import_hf(args.hf_dir, args.out, args.allow_pickle, args.overwrite)
    print(f"wrote run {args.out} from {args.hf_dir} (verified: max |Δlogits| {diff:.1e})")


def cmd_quickstart(args: argparse.Namespace) -> None:
    from gptlab.quickstart import quickstart

    quickstart(args.out, args.overrides, args.max_steps)


def cmd_bench(args: argparse.Namespace) -> None:
    if args.what == "time-to-loss":
        from gptlab.bench.time_to_loss import bench_time_to_loss

        if args.config:
            raise GptlabError("bench time-to-loss runs its two fixed recipes; change the fast one with --set")
        bench_time_to_loss(args.corpus, args.target, args.check_every, args.overrides, args.threads, args.json)
    elif args.what == "decode":
        from gptlab.bench.decode import bench_decode

        bench_decode(args.config, args.overrides, args.prompt_tokens, args.new_tokens, args.repeats, args.dtype,
                     args.vs, args.json, args.quant)
    else:
        from gptlab.bench.train import bench_train

        bench_train(args.config, args.overrides, args.steps, args.warmup, args.vs, args.json)


def cmd_lab(args: argparse.Namespace) -> None:
    from gptlab.lab.lessons import get_lesson, lessons

    if args.action == "list":
        for lesson in lessons().values():
            grids = lesson.profiles()
            sizes = ", ".join(f"{name}: {g.size} cells"
                              for name, g in grids.items())
            print(f"{lesson.name:<12} {lesson.title} ({sizes})")
            print(f"{'':<12} {lesson.question}")
        return
    if args.action == "report":
        from gptlab.lab.report import write_report

        print(f"wrote {write_report(args.dir)} (+ report.html, curves.png, final.png)")
        return
    from gptlab.lab.runner import run_lesson

    args.interrupt_hint = "finished cells are saved; rerun the same command to run only the missing ones"
    lesson = get_lesson(args.lesson)
    out = args.out or f"runs/lab/{lesson.name}-{args.profile}"
    result = run_lesson(lesson, args.profile, out, args.jobs, args.seeds, args.overrides, args.redo_changed,
                        args.keep_checkpoints)
    print(f"{out}: {result['ran']} cells run, {result['skipped']} already done, {result['wall_s'] / 60:.1f} min; "
          f"report: {result['report']}")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="gptlab", description="Build, train, sample and evaluate GPT-2-style models from scratch.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("prepare", help="tokenize a corpus into a data directory",
                       description="Tokenize a corpus into DATA_DIR: train.bin, val.bin, tokenizer/, meta.json. "
                                   "Built-in corpora: shakespeare, shakespeare-plays, shakespeare-poems.")
    p.add_argument("--corpus", required=True, help="a text file, a folder of .txt files, or a built-in name")
    p.add_argument("--tokenizer", choices=["char", "bpe", "gpt2"], default="char")
    p.add_argument("--vocab-size", type=count(2, 2**31), help="vocabulary size for a trained BPE tokenizer (default 4096)")
    p.add_argument("--val-fraction", type=number(0, 1, low_open=True), default=0.1, help="share held out for validation (default 0.1)")
    p.add_argument("--tiktoken-file", help="local r50k_base.tiktoken ranks file for --tokenizer gpt2 (offline)")
    p.add_argument("--tokenizer-from", metavar="DIR", help="reuse a saved tokenizer, e.g. RUN_DIR/tokenizer of "
                   "an imported model (overrides --tokenizer)")
    p.add_argument("--out", required=True, metavar="DATA_DIR")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it already holds a data directory "
                   "(anything else is never overwritten)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train a model (or resume a run)",
                       description="Train a GPT on DATA_DIR into RUN_DIR, or continue RUN_DIR with --resume. "
                                   "A resumed run continues bit for bit: same batches, same losses.")
    p.add_argument("--data", metavar="DATA_DIR", help="made by `gptlab prepare`")
    p.add_argument("--out", metavar="RUN_DIR", help="new run directory")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue this run from its last checkpoint")
    p.add_argument("--init-from", metavar="RUN_DIR", help="start from this run's weights and model config "
                   "(fine-tuning, e.g. a model made by `gptlab import hf`)")
    p.add_argument("--nproc", type=count(1, 1024), default=1, metavar="N",
                   help="data-parallel processes, launched with torchrun (gloo on CPU, nccl on GPU); "
                   "train.batch_size stays the global batch, so the run follows the single-process one (default 1; "
                   "`torchrun --nproc_per_node=N -m gptlab train ...` does the same)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="where to train (same as --set train.device=...; "
                   "default cpu); with --nproc N on cuda, one GPU per process over nccl")
    _add_config_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("finetune", help="fine-tune a run with LoRA / rsLoRA adapters (PEFT-compatible files)",
                       description="Train low-rank adapters on a base run's frozen weights. Only the adapters train; "
                                   "the result is a run directory that is also a PEFT adapter directory. "
                                   "Scale: alpha/r (lora.scaling=lora) or alpha/sqrt(r) (lora.scaling=rslora).",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="example:\n  gptlab finetune --run runs/base --data runs/data/poems --out runs/lora16 "
                              "--set lora.r=16 --set lora.alpha=16 --set lora.scaling=rslora --set train.max_steps=300")
    p.add_argument("--run", metavar="BASE_RUN", help="the run to adapt (its best checkpoint)")
    p.add_argument("--data", metavar="DATA_DIR", help="prepared with the base run's tokenizer "
                   "(`gptlab prepare --tokenizer-from BASE_RUN/tokenizer`)")
    p.add_argument("--out", metavar="ADAPTER_DIR")
    p.add_argument("--resume", metavar="ADAPTER_DIR", help="continue an interrupted fine-tune")
    _add_config_args(p)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("merge", help="fold a LoRA adapter into its base run, as a new plain run")
    p.add_argument("--run", required=True, metavar="BASE_RUN")
    p.add_argument("--adapter", required=True, metavar="ADAPTER_DIR")
    p.add_argument("--out", required=True, metavar="RUN_DIR")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it already holds a model written by "
                   "merge, quantize or import (anything else is never overwritten)")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("sample", help="generate text from a trained run",
                       description="Generate text with the KV cache, streaming it to the terminal.")
    p.add_argument("--run", required=True, metavar="RUN_DIR")
    p.add_argument("--prompt", help="text to continue (default: start of a document)")
    p.add_argument("--max-new-tokens", type=count(1), default=200)
    p.add_argument("--temperature", type=number(0), default=0.8, help="0 = greedy (default 0.8)")
    p.add_argument("--top-k", type=count(1), help="sample among the k most likely tokens")
    p.add_argument("--top-p", type=number(0, 1, low_open=True), help="sample among the most likely tokens whose probability sums to p")
    p.add_argument("--seed", type=count(0, 2**63 - 1 - 10**6), help="make sampling repeatable")
    p.add_argument("--num-samples", type=count(1, 10**6), default=1)
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.add_argument("--adapter", metavar="ADAPTER_DIR", help="add a LoRA adapter (gptlab finetune or PEFT) to --run")
    p.add_argument("--quant", choices=["none", "int8", "int4"], default="none", help="quantize the weights of "
                   "every linear layer, head included, on loading: int8 per channel or int4 in groups of 32, with "
                   "gptlab's integer decode kernels")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("quantize", help="quantize a run's weights (and activations) into a new run",
                       description="Post-training quantization of a float run, or the integer form of a "
                       "quantization-aware run (train with --set quant.qat=ste|clipped|lsq). The new run "
                       "samples and evaluates like any other; the val loss before and after and the size on disk "
                       "are printed.", formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  gptlab quantize --run runs/small --out runs/small-int8\n"
                              "  gptlab quantize --run runs/small --out runs/small-int4 --set quant.bits=4 "
                              "--set quant.group_size=32\n"
                              "  gptlab quantize --run runs/small --out runs/small-w8a8 --set quant.activations=token "
                              "--set quant.smooth=0.5\n"
                              "settings: quant.bits (2-8), quant.scheme (symmetric|asymmetric), quant.granularity "
                              "(tensor|channel), quant.group_size,\n  quant.clip_ratio, quant.targets (blocks|all), "
                              "quant.activations (none|tensor|token|static), quant.act_bits, quant.smooth, "
                              "quant.calib_batches")
    p.add_argument("--run", required=True, metavar="RUN_DIR")
    p.add_argument("--out", required=True, metavar="RUN_DIR")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it already holds a model written by "
                   "merge, quantize or import (anything else is never overwritten)")
    p.add_argument("--data", metavar="DATA_DIR", help="calibration and evaluation data (default: the run's)")
    p.add_argument("--eval-windows", type=count(1), default=64, help="validation windows for the before/after loss")
    p.add_argument("--json", metavar="FILE", type=output_file, help="also write the figures as JSON")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a quant.* setting, e.g. --set quant.bits=4 (repeatable)")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("quant", help="quantization diagnostics (inspect: outliers and per-layer sensitivity)")
    qsub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = qsub.add_parser("inspect", help="per-layer weight/activation statistics and sensitivity of a float run")
    q.add_argument("--run", required=True, metavar="RUN_DIR")
    q.add_argument("--data", metavar="DATA_DIR", help="calibration and evaluation data (default: the run's)")
    q.add_argument("--eval-windows", type=count(1), default=32, help="validation windows per sensitivity evaluation")
    q.add_argument("--no-sensitivity", action="store_true", help="statistics only (skip the per-layer evaluations)")
    q.add_argument("--json", metavar="FILE", type=output_file, help="also write the statistics as JSON")
    q.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="the quant.* config the sensitivity uses, e.g. --set quant.bits=4")
    q.set_defaults(func=cmd_quant)

    p = sub.add_parser("eval", help="loss and perplexity of a run, at one or several context lengths")
    p.add_argument("--run", required=True, metavar="RUN_DIR")
    p.add_argument("--data", metavar="DATA_DIR", help="default: the data the run was trained on")
    p.add_argument("--split", choices=["val", "train"], default="val")
    p.add_argument("--lengths", help="comma-separated context lengths, e.g. 64,128,256 (default: block_size)")
    p.add_argument("--max-windows", type=count(1), help="evaluate on at most this many windows per length")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.add_argument("--json", metavar="FILE", type=output_file, help="also write the results (with per-position losses) as JSON")
    p.add_argument("--plot", metavar="FILE.png", type=output_file, help="plot the loss at each position for every length")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="read positions differently, without retraining: model.rope_scaling=linear|ntk|yarn with "
                        "model.rope_scaling_factor=F, or model.learned_overflow=clamp")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("quickstart", help="prepare Shakespeare, train a small model, sample, write a report",
                       description="The built-in tour: char-level Shakespeare, a few minutes of training on 2 "
                                   "cores, samples, and a report with a loss curve in OUT/run.")
    p.add_argument("--out", default="runs/quickstart", help="default: runs/quickstart")
    p.add_argument("--max-steps", type=count(1), help="shorten or lengthen training")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser("export", help="export a run to another format (hf: a transformers GPT-2 directory)")
    p.add_argument("format", choices=["hf"])
    p.add_argument("--run", required=True, metavar="RUN_DIR")
    p.add_argument("--out", required=True, metavar="HF_DIR")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it already holds a transformers "
                   "GPT-2 directory (anything else is never overwritten)")
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

    p = sub.add_parser("lab", help="run a lesson: a grid of variants × seeds with statistics and a report",
                       description="Lessons are controlled experiments: every (condition, variant, seed) cell "
                                   "trains into OUT/cells/..., then a report (Markdown, HTML, PNG) gives means, 95 %% "
                                   "CIs, tests and verdicts. Rerunning continues an interrupted grid.",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  gptlab lab list\n  gptlab lab run tying --profile quick\n"
                              "  gptlab lab run tying --profile full --jobs 2 --out runs/lab/tying\n"
                              "  gptlab lab report runs/lab/tying")
    lab = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    lab.add_parser("list", help="the lessons, their question and grid sizes").set_defaults(func=cmd_lab)
    q = lab.add_parser("run", help="run (or continue) a lesson's grid and write its report")
    q.add_argument("lesson", help="a lesson name from `gptlab lab list`")
    q.add_argument("--profile", default="quick", help="quick (minutes, for a first look and tests), full "
                   "(the real experiment, up to an hour on 2 cores), or calibrate / calibrate-quick (the baseline arm "
                   "of full / quick with 20 seeds: the false-positive rate of the lesson's tests on A/A splits of "
                   "real runs, and a normality check); default quick")
    q.add_argument("--out", metavar="DIR", help="default: runs/lab/LESSON-PROFILE")
    q.add_argument("--jobs", type=count(1, 256), default=1, help="cells run in parallel processes, sharing the cores "
                   "(default 1)")
    q.add_argument("--seeds", type=count(2, 10**4), help="seeds per arm (default: the profile's)")
    q.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value in every cell, e.g. --set train.max_steps=100")
    q.add_argument("--redo-changed", action="store_true", help="rerun cells whose saved config differs from "
                   "the planned one (otherwise that is an error)")
    q.add_argument("--keep-checkpoints", action="store_true", help="keep each cell's checkpoints (default: "
                   "removed once the cell is finished)")
    q.set_defaults(func=cmd_lab)
    q = lab.add_parser("report", help="rebuild a lesson's report from its cell files")
    q.add_argument("dir", metavar="DIR")
    q.set_defaults(func=cmd_lab)

    p = sub.add_parser("bench", help="measure speed against a baseline and the machine's limits, in the same run",
                       description="train: tokens/s and MFU of a training step (default GPT-2 124M shape, batch "
                       "4 × 256). decode: batch-1 greedy decoding with the KV cache (default GPT-2 124M, prompt 16, "
                       "128 new tokens) against the memory-bandwidth bound. --vs transformers times "
                       "transformers' GPT2LMHeadModel on the same shape (and, for decode, the same weights). "
                       "time-to-loss: training seconds until the Tiny Shakespeare char model reaches a val loss, for "
                       "the reference recipe and gptlab's fast recipe (--set changes the fast one), side by side.")
    p.add_argument("what", choices=["train", "decode", "time-to-loss"], help="what to measure")
    _add_config_args(p)
    p.add_argument("--steps", type=count(1), default=20, help="train: timed optimizer steps (default 20)")
    p.add_argument("--warmup", type=count(0), default=3, help="train: untimed steps first (default 3)")
    p.add_argument("--prompt-tokens", type=count(1), default=16, help="decode: prompt length (default 16)")
    p.add_argument("--new-tokens", type=count(1), default=128, help="decode: tokens generated (default 128)")
    p.add_argument("--repeats", type=count(1), default=3, help="decode: timed generations, the fastest counts "
                   "(default 3)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="decode: weight and cache dtype (default float32)")
    p.add_argument("--quant", choices=["none", "int8", "int4"], default="none", help="decode: int8 (per channel) or "
                   "int4 (groups of 32) weights in every linear layer, on gptlab's integer kernels; transformers "
                   "stays fp32, the baseline a user would otherwise run")
    p.add_argument("--corpus", metavar="PATH", help="time-to-loss: tinyshakespeare.txt (default: "
                   "../shared/data/tinyshakespeare.txt when present)")
    p.add_argument("--target", type=number(0, low_open=True), default=1.886, help="time-to-loss: val loss to reach (default 1.886, "
                   "the reference recipe's final val loss)")
    p.add_argument("--check-every", type=count(1), default=50, help="time-to-loss: steps between val checks (default 50)")
    p.add_argument("--threads", type=count(0, 4096), default=0, help="time-to-loss: intra-op threads (default: one per core)")
    p.add_argument("--vs", choices=["transformers"], help="also time transformers' GPT2LMHeadModel, same shape")
    p.add_argument("--json", metavar="FILE", type=output_file, help="also write the results as JSON")
    p.set_defaults(func=cmd_bench)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, `kill`, torchrun stopping its workers): handled like Ctrl-C."""


def _terminate(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    import signal
    import threading

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a bad argument (one line already printed)
        return e.code if isinstance(e.code, int) else 2
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        args.func(args)
    except GptlabError as e:
        print(f"gptlab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path the user gave that cannot be read or written (loops, permissions, long names)
        what = f"{e.filename}: " if e.filename else ""
        print(f"gptlab {args.command}: error: {what}{e.strerror or e}; check the path and try again", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        hint = getattr(args, "interrupt_hint", "continue a run with `gptlab train --resume RUN_DIR`")
        how = "terminated" if isinstance(e, Terminated) else "interrupted"
        print(f"\ngptlab {args.command}: {how}; checkpoints already written are intact ({hint})", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
        if "torch" in sys.modules:  # leave a torchrun process group cleanly
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
