"""`gptlab report --run RUN` and `gptlab bands list | make`: a run's report against its config's reference band."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from gptlab.commands.common import count
from gptlab.errors import ConfigError


def cmd_report(args: argparse.Namespace) -> None:
    from gptlab.bands import load_band
    from gptlab.report import band_verdict, run_facts, write_summary
    from gptlab.rundir import is_run

    if not is_run(args.run):
        raise ConfigError(f"{args.run} is not a gptlab run (no config.yaml); give the --out of `gptlab train`")
    chosen = load_band(args.band) if args.band else None
    samples = _samples(args.run, args.samples) if args.samples else []
    path = write_summary(args.run, args.title or f"gptlab run {Path(args.run).as_posix()}", run_facts(args.run), samples,
                         chosen=chosen)
    print(band_verdict(args.run, chosen=chosen)[1])
    print(f"wrote {path} (+ loss_curve.png)")


def _samples(run_dir: str, n: int) -> list[str]:
    from gptlab.generate import sample_text
    from gptlab.run import load_model
    from gptlab.train.distributed import set_threads

    set_threads()
    model, tok, _ = load_model(run_dir, "best")
    return [sample_text(model, tok, None, 200, seed=i) for i in range(n)]


def cmd_bands(args: argparse.Namespace) -> None:
    from gptlab.bands import build_band, packaged_bands, save_band

    if args.action == "list":
        bands = packaged_bands()
        for b in bands:
            print(f"{b.name:24s} {len(b.seeds):3d} seeds, steps {b.steps[0]}–{b.steps[-1]}: {b.title}\n"
                  f"{'':24s} made by: {b.command}")
        if not bands:
            print("no bands are installed")
        return
    command = " && ".join(([args.source] if args.source else [])
                          + [f"gptlab bands make {args.name} {_collapse(args.runs)} --title {args.title!r}"])
    from gptlab.doctor import cpu_name

    band = build_band(args.name, args.title, args.runs, command, args.machine or f"{cpu_name()}, "
                      f"{len(os.sched_getaffinity(0))} cores")
    out = Path(args.out) / f"{args.name}.json"
    save_band(band, out)
    print(f"wrote {out}: {len(band.seeds)} seeds, {len(band.steps)} evaluations, final val "
          f"{band.mean[-1]:.4f} ({band.lo[-1]:.4f}–{band.hi[-1]:.4f})")


def _collapse(runs: list[str]) -> str:
    """`DIR/seed*` for runs that are all DIR/seedN (a lesson's cells), else the runs as given."""
    parents = {str(Path(r).parent) for r in runs}
    if len(parents) == 1 and all(Path(r).name.startswith("seed") for r in runs):
        return f"{parents.pop()}/seed*"
    return " ".join(runs)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="a run's report: loss curve over its config's reference band, and a verdict",
                       description="Rebuild RUN/report.md and RUN/loss_curve.png from a run's files: the validation "
                                   "curve drawn over the reference band of the same config (mean and 95 % range "
                                   "for one new seed), and whether the run is inside it, better or worse, and from "
                                   "which step. A config with no band is told so.")
    p.add_argument("--run", required=True, metavar="RUN_DIR")
    p.add_argument("--band", metavar="BAND_JSON", help="judge against this band file, even one of another config (the verdict names the first "
                        "setting that differs)")
    p.add_argument("--samples", type=count(0, 20), default=0, help="add N text samples from the best checkpoint")
    p.add_argument("--title", help="the report's title (default: the run's folder name)")
    p.set_defaults(func=cmd_report)

    b = sub.add_parser("bands", help="reference loss bands: list the installed ones, or make one from runs",
                       description="A band is the mean and 95 % prediction range of the validation loss at each "
                                   "evaluation over ≥ 5 seeds of one config. `make` builds it from finished runs "
                                   "(all of one config, distinct seeds) and keeps the command in the file.",
                       epilog="example: gptlab bands make stability-baseline runs/cal/cells/lr0.001/baseline/seed* "
                              "--title 'stability lesson baseline' --out gptlab/bands",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = b.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", help="the bands installed with gptlab")
    m = actions.add_parser("make", help="build a band from ≥ 5 finished runs of one config")
    m.add_argument("name", help="the band's file name (NAME.json)")
    m.add_argument("runs", nargs="+", metavar="RUN_DIR")
    m.add_argument("--title", required=True, help="what config this is, in words")
    m.add_argument("--out", required=True, metavar="DIR", help="folder for NAME.json (gptlab/bands to ship it)")
    m.add_argument("--machine", help="the machine the runs trained on (default: this one)")
    m.add_argument("--source", metavar="COMMAND", help="the command that trained the runs, kept in the band so it "
                                                       "can be regenerated, e.g. 'gptlab lab run stability --profile "
                                                       "calibrate --out runs/cal'")
    b.set_defaults(func=cmd_bands)
