"""`gptlab quickstart`: the built-in tour."""

from __future__ import annotations

import argparse

from gptlab.commands.common import add_set, count


def cmd_quickstart(args: argparse.Namespace) -> None:
    from gptlab.quickstart import quickstart

    quickstart(args.out, args.overrides, args.max_steps)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quickstart", help="prepare Shakespeare, train a small model, sample, write a report",
                       description="The built-in tour: char-level Shakespeare, a few minutes of training on 2 "
                                   "cores, samples, and a report with a loss curve in OUT/run.")
    p.add_argument("--out", default="runs/quickstart", help="default: runs/quickstart")
    p.add_argument("--max-steps", type=count(1), help="shorten or lengthen training")
    add_set(p, "override a setting of the quickstart's config, e.g. --set train.max_steps=500 (repeatable)")
    p.set_defaults(func=cmd_quickstart)
