"""`gptlab lab list | run | report`: lessons, their grids and reports."""

from __future__ import annotations

import argparse

from gptlab.commands.common import add_executor_args, add_set, count


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
    if args.device:  # every cell's training; checked here so a grid never half-starts on a missing GPU
        from gptlab.commands.common import checked_device

        args.overrides = [*args.overrides, f"train.device={checked_device(args.device)}"]
    result = run_lesson(lesson, args.profile, out, args.jobs, args.seeds, args.overrides, args.redo_changed,
                        args.keep_checkpoints, executor=args.executor, address=args.address,
                        shared_fs=args.shared_fs)
    print(f"{out}: {result['ran']} cells run, {result['skipped']} already done, {result['wall_s'] / 60:.1f} min; "
          f"report: {result['report']}")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lab", help="run a lesson: a grid of variants × seeds with statistics and a report",
                       description="Lessons are controlled experiments: every (condition, variant, seed) cell "
                                   "trains into OUT/cells/..., then a report (Markdown, HTML, PNG) gives means, 95 % "
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
                   "(the real experiment, up to an hour on 2 cores), scale / scale-quick (the headline comparisons at 3 "
                   "model sizes and 2 training budgets, with the effect's trend), calibrate / calibrate-quick (the "
                   "baseline arm of full / quick with 20 seeds: the false-positive rate of the lesson's tests on A/A "
                   "splits of real runs, and a normality check), or a lesson's own (`gptlab lab list` names each "
                   "lesson's profiles); default quick")
    q.add_argument("--out", metavar="DIR", help="default: runs/lab/LESSON-PROFILE")
    q.add_argument("--device", choices=["cpu", "cuda"], help="where the cells train (default cpu; same as --set "
                   "train.device=...); with --executor ray each cuda cell reserves one GPU")
    q.add_argument("--jobs", type=count(1, 256), default=1, help="cells run in parallel processes, sharing the cores "
                   "(default 1)")
    add_executor_args(q)
    q.add_argument("--seeds", type=count(2, 10**4), help="seeds per arm (default: the profile's)")
    add_set(q, "override a config value in every cell, e.g. --set train.max_steps=100")
    q.add_argument("--redo-changed", action="store_true", help="rerun cells whose saved config differs from "
                   "the planned one (otherwise that is an error)")
    q.add_argument("--keep-checkpoints", action="store_true", help="keep each cell's checkpoints (default: "
                   "removed once the cell is finished)")
    q.set_defaults(func=cmd_lab)
    q = lab.add_parser("report", help="rebuild a lesson's report from its cell files")
    q.add_argument("dir", metavar="DIR")
    q.set_defaults(func=cmd_lab)
