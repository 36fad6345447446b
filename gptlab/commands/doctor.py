"""`gptlab doctor`: one screen of what gptlab will do on this machine, and why."""

from __future__ import annotations

import argparse
import json
import sys


MARK = {"ok": "ok  ", "unavailable": "--  ", "failed": "FAIL"}


def names(text: str) -> tuple[str, ...]:
    from gptlab.doctor import CHECKS

    chosen = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in chosen if n not in CHECKS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown check {', '.join(unknown)}; checks: {', '.join(CHECKS)}")
    return chosen


def cmd_doctor(args: argparse.Namespace) -> None:
    from gptlab.doctor import FAST, Sizes, diagnose

    def progress(name: str) -> None:
        if not args.json:
            print(f"checking {name} ...", file=sys.stderr, flush=True)

    checks = diagnose(FAST if args.fast else Sizes(), skip=args.skip, progress=progress)
    missing = [c.name for c in checks if c.name in args.need and c.status != "ok"]
    failed = [c.name for c in checks if c.status == "failed"]
    if args.json:
        print(json.dumps({"checks": [c.as_dict() for c in checks], "failed": failed, "needed_but_missing": missing},
                         indent=1))
    else:
        for c in checks:
            print(f"{MARK[c.status]} {c.name:12s} {c.detail}")
        if failed or missing:
            print(f"\n{len(failed)} check(s) failed{': ' + ', '.join(failed) if failed else ''}"
                  + (f"; needed but not working: {', '.join(missing)}" if missing else ""))
    if failed or missing:
        sys.exit(1)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="what gptlab will do on this machine, and why (CPU, kernels, peaks, threads, "
                                      "compile, data parallel, GPU)",
                       description="Checks this machine in about 20 s: the CPU and its features (AVX2, AVX-512, "
                                   "bf16, AMX), whether gptlab's C++ integer kernels run (and why not), the fp32 and "
                                   "bf16 matmul peaks and read bandwidth, the thread count that trains a small "
                                   "model fastest, whether torch.compile works, a two-process data-parallel step, "
                                   "and CPU-vs-GPU logits where a GPU is present. ok = works; -- = not on this "
                                   "machine (gptlab takes another path); FAIL = should work and does not. Exit "
                                   "code 1 when a check fails or one named in --need is not ok.")
    p.add_argument("--json", action="store_true", help="print the results as JSON (for scripts) instead of a screen")
    p.add_argument("--fast", action="store_true", help="small measurements, no compile check (about 2 s)")
    p.add_argument("--skip", type=names, default=(), metavar="CHECK,...", help="leave these checks out")
    p.add_argument("--need", type=names, default=(), metavar="CHECK,...",
                   help="exit 1 unless these are ok, e.g. --need compile,ddp,gpu")
    p.set_defaults(func=cmd_doctor)
