"""`gptlab quickstart`: the built-in tour."""

from __future__ import annotations

import argparse

from gptlab.commands.common import add_set, count, number


def cmd_quickstart(args: argparse.Namespace) -> None:
    from gptlab.quickstart import quickstart

    quickstart(args.out, args.overrides, args.max_steps, args.minutes)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quickstart", help="prepare Shakespeare, train a small model, sample, write a report",
                       description="The built-in tour: char-level Shakespeare, about 3 minutes of training sized "
                                   "to this machine (a few steps are timed first), samples, and a report with a "
                                   "loss curve in OUT/run.")
    p.add_argument("--out", default="runs/quickstart", help="default: runs/quickstart")
    p.add_argument("--minutes", type=number(0, 600, low_open=True), default=3.0,
                   help="training time to plan the steps for on this machine (default 3)")
    p.add_argument("--max-steps", type=count(1), help="a fixed number of steps instead of a time budget")
    add_set(p, "override a setting of the quickstart's config, e.g. --set train.max_steps=500 (repeatable)")
    p.set_defaults(func=cmd_quickstart)
