"""`gptlab ab`: a statistical referee for one change to a recipe."""

from __future__ import annotations

import argparse

from gptlab.commands.common import add_executor_args, add_config_args, count, number


def pairs(values: list[str], flag: str) -> dict[str, str]:
    from gptlab.errors import ConfigError

    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE, e.g. {flag} train.lr=3e-3")
        out[key.strip()] = value.strip()
    return out


def cmd_ab(args: argparse.Namespace) -> None:
    from gptlab.config import apply_overrides, build_config
    from gptlab.data import load_data
    from gptlab.lab.ab import config_file_settings, run_ab

    load_data(args.data)  # a clear error now for a folder that is not a data directory
    base = build_config(args.config, args.overrides)
    a, b = pairs(args.a, "--a"), pairs(args.b, "--b")
    for arm in (a, b):  # every key checked now, not in the first cell
        apply_overrides(base, [f"{k}={v}" for k, v in arm.items()])
    settings = {**config_file_settings(args.config), **pairs(args.overrides, "--set")}
    run_ab(args.data, args.out, settings, a, b, margin=args.margin, alpha=args.alpha, min_seeds=args.min_seeds,
           max_seeds=args.max_seeds, jobs=args.jobs, metric=args.metric, executor=args.executor, address=args.address,
           shared_fs=args.shared_fs)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ab", help="is a change real? paired seeds of two arms until a sequential test decides",
                       description="Train arm A (the base config) and arm B (the base with the --b changes) on "
                                   "paired seeds, adding seeds until the difference in the metric is shown, "
                                   "equivalence within --margin is shown, or --max-seeds is reached. Every look uses "
                                   "one boundary set so that the chance of a false 'different' over all looks is "
                                   "--alpha. Resumable: rerun the same command to continue. Writes OUT/report.md "
                                   "and OUT/ab.json.",
                       epilog="example: gptlab ab --data runs/data/char --out runs/ab-qknorm "
                              "--set train.max_steps=600 --b model.qk_norm=true")
    p.add_argument("--data", required=True, metavar="DATA_DIR", help="made by `gptlab prepare`")
    p.add_argument("--out", required=True, metavar="DIR", help="where the cells, ab.json and the report go")
    add_config_args(p)
    p.add_argument("--a", action="append", default=[], metavar="KEY=VALUE", help="a setting of arm A only")
    p.add_argument("--b", action="append", default=[], metavar="KEY=VALUE", required=True,
                   help="the change: a setting of arm B (repeatable)")
    p.add_argument("--margin", type=number(0), default=0.01,
                   help="equivalence margin in the metric's units (default 0.01 nats)")
    p.add_argument("--alpha", type=number(0, 0.5, low_open=True), default=0.05,
                   help="false 'different' rate over all looks (default 0.05)")
    p.add_argument("--min-seeds", type=count(2), default=5, help="seed pairs before the first look (default 5)")
    p.add_argument("--max-seeds", type=count(2), default=15, help="seed pairs at most (default 15)")
    p.add_argument("--jobs", type=count(1), default=1, help="cells in parallel (default 1)")
    p.add_argument("--metric", default="val_loss", help="the summary key compared (default val_loss)")
    add_executor_args(p)
    p.set_defaults(func=cmd_ab)
