"""`gptlab ab`: is a change to a recipe real? Paired seeds of arm A (the base) and arm B (the change), added until
the sequential test (gptlab.lab.sequential) shows a difference or equivalence, or the seed budget ends.

It is a lesson with one condition (the user's data) and two variants, run by the lab runner, so it resumes like
one (finished cells are kept; rerunning the command continues) and runs arms in parallel with --jobs.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any, Callable

from gptlab.errors import ConfigError
from gptlab.io import atomic_write_json
from gptlab.lab.grid import Condition, Dataset, Grid, Variant
from gptlab.lab.lesson import Lesson
from gptlab.lab.results import load_results
from gptlab.lab.runner import run_lesson
from gptlab.lab.sequential import Look, boundary, look

PROFILE = "ab"
STATE = "ab.json"


def config_file_settings(path: str | Path | None) -> dict[str, Any]:
    """A --config YAML file as dotted keys ({"model.n_layer": 4, ...}), the form a grid's base settings take."""
    if path is None:
        return {}
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    return {f"{section}.{key}": value for section, values in data.items() if isinstance(values, dict)
            for key, value in values.items()}


class ABLesson(Lesson):
    name = "ab"
    title = "A/B: does the change matter?"
    metric_label = "val loss"

    def __init__(self, data_dir: str | Path, base: dict[str, Any], a: dict[str, Any], b: dict[str, Any],
                 max_seeds: int, margin: float, metric: str = "val_loss"):
        self.data_dir, self.base, self.a, self.b = Path(data_dir), base, a, b
        self.max_seeds, self.equivalence_margin, self.metric = max_seeds, margin, metric
        self.metric_label = metric.replace("_", " ")
        self.question = (f"Arm A: the base config{_shown(a)}; arm B: {_shown(b).lstrip('; ') or 'the same'}. Paired "
                         "seeds (the same seed gives both arms the same initialisation draws and batches) are added "
                         f"until a sequential test shows a difference in {self.metric_label} or equivalence within "
                         f"±{margin:g}, or {max_seeds} seeds have run.")

    def profiles(self) -> dict[str, Grid]:
        data = Condition("data", Dataset(str(self.data_dir), "given"))
        return {PROFILE: Grid((data,), (Variant("A", self.a), Variant("B", self.b)), tuple(range(self.max_seeds)),
                              self.base)}

    def comparisons(self) -> list[tuple[str, str]]:
        return []  # the fixed-sample test would ignore the optional stopping; the sequential verdict replaces it

    def prepare_data(self, workdir: Path, grid: Grid) -> dict[str, Path]:
        return {grid.conditions[0].dataset.key: self.data_dir}

    def extra_blocks(self, results, directory: Path) -> list:
        from gptlab.document import Block

        state = json.loads((directory / STATE).read_text()) if (directory / STATE).is_file() else None
        if not state or not state.get("looks"):
            return []
        rows = [["seeds", "B − A (mean)", "interval (mean ± c·SE)", "t", "decision"]]
        for lk in state["looks"]:
            rows.append([str(lk["n"]), f"{lk['mean']:+.4f}", f"{lk['mean'] - lk['half_width']:+.4f} to "
                                                             f"{lk['mean'] + lk['half_width']:+.4f}",
                         f"{lk['t']:+.2f}", lk["status"]])
        return [Block("h2", "Sequential verdict"),
                Block("p", verdict_text(state)),
                Block("p", f"Each look after {state['min_seeds']}..{state['max_seeds']} seed pairs compares |t| of "
                           f"the paired differences with one boundary c = {state['boundary']:.3f}, set by "
                           f"simulation so that crossing it at any look has probability {state['alpha']:g} when the "
                           "arms do not differ (normal seed differences); equivalence: the interval inside "
                           f"±{state['margin']:g}."),
                Block("table", items=rows)]


def _shown(overrides: dict[str, Any]) -> str:
    return "; " + ", ".join(f"{k}={v}" for k, v in overrides.items()) if overrides else ""


def verdict_text(state: dict) -> str:
    last = state["looks"][-1]
    span = f"B − A = {last['mean']:+.4f} (interval {last['mean'] - last['half_width']:+.4f} to " \
           f"{last['mean'] + last['half_width']:+.4f}) after {last['n']} seed pairs"
    return {"different": f"The arms differ: {span}.",
            "equivalent": f"Equivalent within ±{state['margin']:g}: {span}.",
            "inconclusive": f"Inconclusive: the seed budget ran out with neither a difference nor equivalence shown; "
                            f"{span}.",
            "continue": f"Not finished: {span}; rerun the command to add seeds."}[last["status"]]


def run_ab(data_dir: str | Path, out: str | Path, base: dict[str, Any], a: dict[str, Any], b: dict[str, Any],
           margin: float = 0.01, alpha: float = 0.05, min_seeds: int = 5, max_seeds: int = 15, jobs: int = 1,
           metric: str = "val_loss", progress: bool | None = None,
           say: Callable[[str], None] = print, executor: str = "local", address: str | None = None,
           shared_fs: bool = False) -> dict[str, Any]:
    """Run the sequential A/B comparison into `out`; returns the state written to OUT/ab.json."""
    if not 2 <= min_seeds <= max_seeds:
        raise ConfigError(f"need 2 <= --min-seeds <= --max-seeds, got {min_seeds} and {max_seeds}")
    if not (0 < alpha < 0.5 and margin >= 0 and math.isfinite(margin)):
        raise ConfigError(f"--alpha must be in (0, 0.5) and --margin a finite number >= 0, got {alpha}, {margin}")
    if a == b:
        raise ConfigError("arms A and B have the same settings; give the change with --b KEY=VALUE")
    out = Path(out)
    lesson = ABLesson(data_dir, base, a, b, max_seeds, margin, metric)
    c = boundary(min_seeds, max_seeds, alpha)
    state: dict[str, Any] = {"min_seeds": min_seeds, "max_seeds": max_seeds, "alpha": alpha, "margin": margin,
                             "boundary": c, "metric": metric, "a": a, "b": b, "looks": []}
    session = contextlib.nullcontext()
    if executor == "ray":  # one Ray session for every look, not one per look
        from gptlab.lab.ray_executor import ray_session

        session = ray_session(address)
    with session:
        return _looks(lesson, out, state, c, min_seeds, max_seeds, jobs, metric, margin, progress, say,
                      executor, address, shared_fs)


def _looks(lesson, out: Path, state: dict, c: float, min_seeds: int, max_seeds: int, jobs: int, metric: str,
           margin: float, progress, say, executor: str, address: str | None, shared_fs: bool) -> dict[str, Any]:
    for n in range(min_seeds, max_seeds + 1):
        run_lesson(lesson, PROFILE, out, jobs=jobs, seeds=n, report=False, progress=progress, executor=executor,
                   address=address, shared_fs=shared_fs)
        results = load_results(out)
        a_values, b_values = (results.by_seed("data", arm, metric) for arm in ("A", "B"))
        seeds = sorted(set(a_values) & set(b_values) & set(range(n)))
        if len(seeds) < n:
            raise ConfigError(f"{metric!r} is missing from some finished cells in {out}; choose another --metric")
        current = look([b_values[s] - a_values[s] for s in seeds], c, margin, last=n == max_seeds)
        state["looks"].append(as_record(current))
        atomic_write_json(out / STATE, state)
        say(f"{n} seed pairs: B − A = {current.mean:+.4f} (interval {current.low:+.4f} to {current.high:+.4f}, "
            f"|t| {abs(current.t):.2f} vs {c:.2f}): {current.status}")
        if current.status != "continue":
            break
    from gptlab.lab.report import write_report

    state["report"] = str(write_report(out, lesson))
    say(verdict_text(state))
    return state


def as_record(lk: Look) -> dict[str, Any]:
    return {"n": lk.n, "mean": lk.mean, "half_width": lk.half_width, "t": lk.t, "status": lk.status}
