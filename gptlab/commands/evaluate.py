"""`gptlab eval`: loss and perplexity at one or several context lengths, with the loss per position."""

from __future__ import annotations

import argparse

from gptlab.commands.common import add_device_arg, add_set, checked_device, count, output_file
from gptlab.errors import GptlabError
from gptlab.io import atomic_write_json


def cmd_eval(args: argparse.Namespace) -> None:
    from gptlab.data import load_data
    from gptlab.evaluate import evaluate, text_units
    from gptlab.run import load_model
    from gptlab.rundir import check_data_for_run, run_data_dir
    from gptlab.train.distributed import set_threads

    set_threads()
    try:
        lengths = [int(x) for x in args.lengths.split(",")] if args.lengths else []
    except ValueError:
        raise GptlabError(f"--lengths {args.lengths!r}: expected comma-separated integers, e.g. 64,128,256") from None
    if any(n < 1 for n in lengths):
        raise GptlabError(f"--lengths {args.lengths!r}: every length must be at least 1")
    model, tok, cfg = load_model(args.run, args.checkpoint, device=checked_device(args.device),
                                 overrides=args.overrides)
    if args.tasks:
        return eval_tasks(args, model, tok)
    data = load_data(run_data_dir(args.run, args.data))
    check_data_for_run(args.run, tok, data)
    split = data.val if args.split == "val" else data.train
    lengths = lengths or [cfg.model.block_size]
    units = text_units(split, tok)
    rows, curves = [], {}
    for length in lengths:
        try:
            r = evaluate(model, split, length, max_windows=args.max_windows)
        except GptlabError as e:
            rows.append({"length": length, "error": str(e)})
            print(f"length {length:>6}: cannot run ({e})")
            continue
        rows.append({"length": r.length, "loss": r.loss, "perplexity": r.perplexity, "tokens": r.tokens,
                     "bits_per_byte": units.bits_per_byte(r.loss), "bits_per_char": units.bits_per_char(r.loss),
                     "bytes_per_token": units.bytes_per_token, "per_position": r.per_position})
        curves[length] = r.per_position
        print(f"length {length:>6}: {args.split} loss {r.loss:.4f} nats/token  perplexity {r.perplexity:.3f}  "
              f"{units.bits_per_byte(r.loss):.4f} bits/byte  {units.bits_per_char(r.loss):.4f} bits/char  "
              f"({r.tokens:,} tokens)")
    if curves:
        print(f"bits per byte and per character use the {args.split} split's {units.bytes_per_token:.3f} UTF-8 bytes "
              f"and {units.chars_per_token:.3f} characters per token")
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


def eval_tasks(args: argparse.Namespace, model, tok) -> None:
    """lm-evaluation-harness tasks on the run: one line per task and metric, the full results with --json."""
    from gptlab.interop.lm_eval import run_tasks

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    results = run_tasks(model, tok, tasks, args.include_path, args.limit, num_fewshot=args.num_fewshot)
    for task, metrics in results["results"].items():
        for key, value in metrics.items():
            if key == "alias" or "stderr" in key or not isinstance(value, (int, float)):
                continue
            metric, _, _ = key.partition(",")
            err = metrics.get(key.replace(metric, f"{metric}_stderr", 1))
            shown = f" ± {err:.4f}" if isinstance(err, (int, float)) else ""
            print(f"{task:24s} {metric:18s} {value:.4f}{shown}")
    if args.json:
        atomic_write_json(args.json, {"results": results["results"], "n-samples": results.get("n-samples", {}),
                                      "config": {"tasks": tasks, "limit": args.limit, "num_fewshot": args.num_fewshot}})


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="loss and perplexity of a run, at one or several context lengths")
    p.add_argument("--run", required=True, metavar="RUN_DIR")
    p.add_argument("--data", metavar="DATA_DIR", help="default: the data the run was trained on")
    p.add_argument("--split", choices=["val", "train"], default="val")
    p.add_argument("--lengths", help="comma-separated context lengths, e.g. 64,128,256 (default: block_size)")
    p.add_argument("--max-windows", type=count(1), help="evaluate on at most this many windows per length")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    add_device_arg(p, "evaluate")
    p.add_argument("--json", metavar="FILE", type=output_file,
                   help="also write the results (with per-position losses) as JSON")
    p.add_argument("--plot", metavar="FILE.png", type=output_file,
                   help="plot the loss at each position for every length")
    p.add_argument("--tasks", metavar="T1,T2", help="lm-evaluation-harness tasks instead of the loss, e.g. "
                   "lambada_openai,hellaswag (datasets must be reachable or cached) or your own with --include-path")
    p.add_argument("--include-path", metavar="DIR", help="a folder of lm-eval task YAML files to add")
    p.add_argument("--limit", type=count(1), help="at most this many examples per task (a quick check)")
    p.add_argument("--num-fewshot", type=count(0), help="few-shot examples per prompt (default: the task's)")
    add_set(p, "read positions differently, without retraining: model.rope_scaling=linear|ntk|yarn with "
                        "model.rope_scaling_factor=F, or model.learned_overflow=clamp")
    p.set_defaults(func=cmd_eval)
