"""What every command shares: one-line argument errors, argument types that check ranges, --config / --set."""

from __future__ import annotations

import argparse
import math
from pathlib import Path


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


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file of config values, nested as model: {n_layer: 4}")
    add_set(p)


def add_set(p: argparse.ArgumentParser, help: str = "override one config value, e.g. --set model.n_layer=6 "
            "(repeatable)") -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)


def add_executor_args(p: argparse.ArgumentParser) -> None:
    """--executor / --address / --shared-fs: where cells run (`gptlab lab run`, `gptlab ab`)."""
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local: processes on this machine (--jobs); ray: each cell a Ray task reserving cores / "
                   "--jobs CPUs, on a local Ray or the cluster at --address; the data and each finished cell's "
                   "files travel through Ray (see --shared-fs); a cell whose worker dies is retried")
    p.add_argument("--address", metavar="HOST:PORT", help="with --executor ray: a running Ray cluster "
                   "(default: start one on this machine)")
    p.add_argument("--shared-fs", action="store_true", help="with --executor ray: OUT is on a filesystem every "
                   "node sees, so tasks read the data and write their cells there directly (and a retried cell "
                   "resumes from its checkpoint on any node) instead of shipping them through Ray")


def add_device_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help=f"where to {what} (default cpu; cuda "
                   "needs a CUDA build of torch and a visible GPU)")


def checked_device(device: str) -> str:
    """`device`, once it is known to work here (a one-line error otherwise)."""
    from gptlab.train.loop import check_device

    check_device(device, "--device")
    return device
