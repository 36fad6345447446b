"""`gptlab quantize` and `gptlab quant inspect`."""

from __future__ import annotations

import argparse

from gptlab.commands.common import add_set, count, output_file
from gptlab.io import atomic_write_json


def cmd_quantize(args: argparse.Namespace) -> None:
    from gptlab.quant.workflow import describe, quantize_run
    from gptlab.rundir import load_run_config
    from gptlab.train.distributed import set_threads

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
    from gptlab.train.distributed import set_threads

    set_threads()
    q, stats = inspect_run(args.run, args.overrides, args.data, args.eval_windows, not args.no_sensitivity)
    print(f"{args.run}: layers as {describe(q)} would quantize them")
    print(to_markdown([Block("table", items=stats_table(stats))]))
    worst = max((s for s in stats if s.sensitivity is not None), key=lambda s: s.sensitivity, default=None)
    if worst is not None:
        print(f"most sensitive: {worst.name} ({worst.sensitivity:+.4f} val loss when quantized alone)")
    if args.json:
        atomic_write_json(args.json, as_records(stats))


def register(sub: argparse._SubParsersAction) -> None:
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
    add_set(p, "a quant.* setting, e.g. --set quant.bits=4 (repeatable)")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("quant", help="quantization diagnostics (inspect: outliers and per-layer sensitivity)")
    qsub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = qsub.add_parser("inspect", help="per-layer weight/activation statistics and sensitivity of a float run")
    q.add_argument("--run", required=True, metavar="RUN_DIR")
    q.add_argument("--data", metavar="DATA_DIR", help="calibration and evaluation data (default: the run's)")
    q.add_argument("--eval-windows", type=count(1), default=32, help="validation windows per sensitivity evaluation")
    q.add_argument("--no-sensitivity", action="store_true", help="statistics only (skip the per-layer evaluations)")
    q.add_argument("--json", metavar="FILE", type=output_file, help="also write the statistics as JSON")
    add_set(q, "the quant.* config the sensitivity uses, e.g. --set quant.bits=4")
    q.set_defaults(func=cmd_quant)
