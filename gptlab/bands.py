"""Reference loss bands: how a bundled config's validation curve runs over seeds, and where a user's run falls.

A band is the mean and a 95 % prediction interval for one new seed (mean ± t(0.975, n−1)·sd·√(1 + 1/n)) of the
validation loss at each evaluation step, from n ≥ MIN_SEEDS runs of one config. A run is judged against the band
whose config matches its own in everything that shapes the curve (its `fingerprint`); a run with no such band is
told so, never compared with a band of another config.

    gptlab/bands/NAME.json   one band, written by `gptlab bands make NAME RUN...` (the command is kept in the file)
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from gptlab.config import RunConfig, from_dict, load_yaml, to_dict
from gptlab.errors import ConfigError
from gptlab.io import atomic_write_json
from gptlab.train.metrics import read_metrics

LEVEL = 0.95
MIN_SEEDS = 5
# Settings that do not change the validation curve: the seed is what the band spreads over; threads change
# gradients by ~1e-9; the rest say how often to log or save, or how a step is computed, not what it computes.
IGNORED = frozenset({"train.seed", "train.threads", "train.eval_every", "train.checkpoint_every", "train.log_every",
                     "train.tensorboard", "train.compile", "train.activation_checkpointing", "train.device"})


@dataclass(frozen=True)
class Band:
    name: str
    title: str
    command: str  # the command that wrote this band, so it can be regenerated
    machine: str
    fingerprint: str
    seeds: tuple[int, ...]
    steps: tuple[int, ...]
    mean: tuple[float, ...]
    lo: tuple[float, ...]
    hi: tuple[float, ...]
    identity: dict[str, Any] = field(default_factory=dict)  # the settings the fingerprint is made of

    def at(self, step: float) -> tuple[float, float, float] | None:
        """(mean, lo, hi) at `step`, linear between evaluations; None outside the band's steps."""
        if not self.steps or step < self.steps[0] or step > self.steps[-1]:
            return None
        return tuple(float(np.interp(step, self.steps, v)) for v in (self.mean, self.lo, self.hi))


@dataclass(frozen=True)
class Verdict:
    kind: str  # "inside" | "better" | "worse" | "unjudged"
    since: int | None  # better / worse: the first step of the stretch outside the band that lasts to the end
    text: str
    points: tuple[tuple[int, float, str], ...] = ()  # (step, val loss, "below" | "inside" | "above")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def curve_identity(cfg: RunConfig, tokenizer: str, tokens_sha256: dict | None) -> dict[str, Any]:
    """Everything that shapes a run's validation curve: the config (less IGNORED) and the exact token data."""
    settings = {k: v for k, v in _flatten(to_dict(cfg)).items() if k not in IGNORED}
    return {**settings, "data.tokenizer": tokenizer, "data.tokens_sha256": tokens_sha256}


def fingerprint(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read_run(run_dir: str | Path) -> tuple[RunConfig, dict[str, Any]]:
    """A run's config (defaults filled in for keys added since) and its curve identity."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file() or not (run_dir / "run.json").is_file():
        raise ConfigError(f"{run_dir} is not a gptlab run (no config.yaml and run.json); give a run directory")
    cfg = from_dict(RunConfig, load_yaml(run_dir / "config.yaml"))
    info = json.loads((run_dir / "run.json").read_text())
    return cfg, curve_identity(cfg, info.get("tokenizer", ""), info.get("tokens_sha256"))


def run_identity(run_dir: str | Path) -> dict[str, Any]:
    return _read_run(run_dir)[1]


def val_curve(run_dir: str | Path) -> list[tuple[int, float]]:
    """(step, val loss) of every evaluation of a run, in step order (the last record of a step wins)."""
    by_step = {r["step"]: float(r["val_loss"]) for r in read_metrics(Path(run_dir) / "metrics.jsonl")
               if isinstance(r.get("val_loss"), (int, float)) and isinstance(r.get("step"), int)}
    return sorted(by_step.items())


def build_band(name: str, title: str, run_dirs: list[str | Path], command: str, machine: str) -> Band:
    """The band of `run_dirs`: one config, distinct seeds, at least MIN_SEEDS; the steps every run evaluated."""
    if len(run_dirs) < MIN_SEEDS:
        raise ConfigError(f"a band needs at least {MIN_SEEDS} runs (seeds), got {len(run_dirs)}; train more seeds")
    runs = [_read_run(d) for d in run_dirs]  # each run's files read once
    identities = [identity for _, identity in runs]
    first = identities[0]
    for d, ident in zip(run_dirs[1:], identities[1:]):
        if fingerprint(ident) != fingerprint(first):
            key = next(k for k in sorted(set(first) | set(ident)) if first.get(k) != ident.get(k))
            raise ConfigError(f"{d} differs from {run_dirs[0]} in {key} ({ident.get(key)!r} vs {first.get(key)!r}); "
                              "a band is made of runs of one config")
    seeds = [int(cfg.train.seed) for cfg, _ in runs]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"the runs repeat a seed ({sorted(seeds)}); a band spreads over distinct seeds")
    curves = [dict(val_curve(d)) for d in run_dirs]
    for d, (cfg, _), curve in zip(run_dirs, runs, curves):
        last = max(curve, default=0)
        if last < cfg.train.max_steps:  # a band of runs still training would stop at their last common evaluation
            raise ConfigError(f"{d} has not finished: its last evaluation is at step {last} of "
                              f"{cfg.train.max_steps}; a band is made of finished runs (let it finish, or resume it)")
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    if not steps:
        raise ConfigError("the runs share no evaluation step (no val_loss in common); let them finish evaluating")
    values = np.array([[c[s] for s in steps] for c in curves])  # runs × steps
    n = len(run_dirs)
    mean, sd = values.mean(axis=0), values.std(axis=0, ddof=1)
    half = stats.t.ppf(0.5 + LEVEL / 2, n - 1) * sd * math.sqrt(1 + 1 / n)
    return Band(name, title, command, machine, fingerprint(first), tuple(sorted(seeds)), tuple(steps),
                tuple(mean.tolist()), tuple((mean - half).tolist()), tuple((mean + half).tolist()), first)


def save_band(band: Band, path: str | Path) -> None:
    atomic_write_json(path, asdict(band))


def load_band(path: str | Path) -> Band:
    try:
        d = json.loads(Path(path).read_text())
        return Band(**{**d, **{k: tuple(d[k]) for k in ("seeds", "steps", "mean", "lo", "hi")}})
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"{path} is not a readable loss band ({e}); regenerate it with `gptlab bands make`") from None


def packaged_bands() -> list[Band]:
    """The bands that ship with gptlab, by name."""
    folder = resources.files("gptlab") / "bands"
    if not folder.is_dir():
        return []
    return [load_band(Path(str(f))) for f in sorted(folder.iterdir(), key=lambda f: f.name) if f.name.endswith(".json")]


def find_band(identity: dict[str, Any], bands: list[Band] | None = None) -> Band | None:
    key = fingerprint(identity)
    return next((b for b in (packaged_bands() if bands is None else bands) if b.fingerprint == key), None)


def judge(band: Band, curve: list[tuple[int, float]]) -> Verdict:
    """Where a run's validation curve falls against `band`. "better" / "worse" need the run to stay below / above
    the band from some step to its last judged evaluation; a run that strays and comes back ends "inside"
    (with a 95 % band, one evaluation in twenty of a normal run is outside by chance)."""
    points = []
    for step, loss in curve:
        ref = band.at(step)
        if ref is not None:
            points.append((step, loss, "below" if loss < ref[1] else "above" if loss > ref[2] else "inside"))
    if not points:
        return Verdict("unjudged", None, f"no evaluation of this run falls within the band's steps "
                                         f"({band.steps[0]}–{band.steps[-1]})")
    last_step, last_loss, last = points[-1]
    mean, lo, hi = band.at(last_step)
    where = f"val {last_loss:.4f} at step {last_step}; band {lo:.4f}–{hi:.4f}, mean {mean:.4f}"
    beyond = ("" if curve[-1][0] <= band.steps[-1] else
              f"; the band ends at step {band.steps[-1]}, later evaluations are not judged")
    if last == "inside":
        strays = [(s, side) for s, _, side in points if side != "inside"]
        if not strays:
            text = f"inside the reference band at every evaluation ({where})"
        else:
            text = (f"inside the reference band at the end ({where}); outside at step "
                    + ", ".join(f"{s} ({'below' if side == 'below' else 'above'})" for s, side in strays))
        return Verdict("inside", None, text + beyond, tuple(points))
    i = len(points) - 1
    while i > 0 and points[i - 1][2] == last:
        i -= 1
    kind = "better" if last == "below" else "worse"
    since = points[i][0]
    text = f"{kind} than the reference band from step {since} on ({where})"
    return Verdict(kind, since, text + beyond, tuple(points))
