"""A lesson's results, read back from its cell files alone (never from memory of the run)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gptlab.errors import GptlabError
from gptlab.lab import stats
from gptlab.lab.grid import cell_path
from gptlab.train.metrics import read_metrics


@dataclass
class CellResult:
    condition: str
    variant: str
    seed: int
    summary: dict[str, Any]
    curve: list[tuple[int, float]]  # (step, val loss) at each evaluation


@dataclass
class Results:
    directory: Path
    meta: dict[str, Any]  # lesson.json
    cells: list[CellResult]
    conditions: list[str] = field(default_factory=list)
    variants: list[str] = field(default_factory=list)

    def cell_dir(self, c: CellResult) -> Path:
        return cell_path(self.directory, c.condition, c.variant, c.seed)

    def text_units(self) -> dict[str, dict[str, float]]:
        """Dataset key -> bytes and characters per token of its validation text, as the latest invocation that
        measured them recorded (empty for runs older than that record)."""
        return next((h["text_units"] for h in reversed(self.meta.get("history", [])) if h.get("text_units")), {})

    def arm(self, condition: str, variant: str) -> list[CellResult]:
        return sorted((c for c in self.cells if c.condition == condition and c.variant == variant),
                      key=lambda c: c.seed)

    def values(self, condition: str, variant: str, key: str) -> list[float]:
        return [float(c.summary[key]) for c in self.arm(condition, variant)
                if isinstance(c.summary.get(key), (int, float))]

    def summary(self, condition: str, variant: str, key: str) -> stats.Summary:
        return stats.summarize(self.values(condition, variant, key))

    def by_seed(self, condition: str, variant: str, key: str) -> dict[int, float]:
        return {c.seed: float(c.summary[key]) for c in self.arm(condition, variant)
                if isinstance(c.summary.get(key), (int, float))}

    def compare(self, pairs: list[tuple[str, str]], key: str,
                margin: float = math.nan) -> list[tuple[str, stats.Comparison]]:
        """Every (baseline, other) pair within every condition, Holm-corrected across all of them (one family).

        Runs are paired by seed id (same seed = same batches in the same order); a seed one arm lacks is left out."""
        out = []
        for condition in self.conditions:
            for a, b in pairs:
                arm_a, arm_b = self.arm(condition, a), self.arm(condition, b)
                if not arm_a or not arm_b or self.duplicate(condition, pairs, (a, b)):
                    continue
                out.append((condition, stats.compare_by_seed(self.by_seed(condition, a, key),
                                                             self.by_seed(condition, b, key), a, b, margin)))
        adjusted = stats.adjust([c for _, c in out])
        return [(condition, c) for (condition, _), c in zip(out, adjusted)]

    def same_runs(self, condition: str, a: str, b: str) -> bool:
        """Two arms whose cells ran the same configs (the config.yaml of every phase a cell trained), e.g. a variant
        that changes nothing under this condition: comparing them tests nothing, so they are left out of the tests
        and of Holm's family."""
        def configs(variant: str) -> list[str]:
            return [[(str(f.relative_to(self.cell_dir(c))), f.read_text())  # every phase a cell trained
                     for f in sorted(self.cell_dir(c).rglob("config.yaml"))] for c in self.arm(condition, variant)]
        try:
            return configs(a) == configs(b)
        except OSError:
            return False

    def duplicate(self, condition: str, pairs: list[tuple[str, str]], pair: tuple[str, str]) -> str | None:
        """Why `pair` tests nothing new under `condition`: its arms ran the same config, or an earlier pair
        with the same baseline already compared the same runs. None when it is a real comparison."""
        a, b = pair
        if self.same_runs(condition, a, b):
            return f"{a} and {b} ran the same configuration"
        for a2, b2 in pairs[: pairs.index(pair)]:
            if a2 == a and self.arm(condition, b2) and self.same_runs(condition, b, b2):
                return f"{b} ran the same configuration as {b2}"
        return None

    def curve_band(self, condition: str, variant: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Steps evaluated by every seed, and the mean val loss with its 95 % CI at each."""
        arm = self.arm(condition, variant)
        if not arm:
            return (np.array([]),) * 4
        steps = sorted(set.intersection(*(set(s for s, _ in c.curve) for c in arm)))
        mean, low, high = [], [], []
        for step in steps:
            s = stats.summarize([dict(c.curve)[step] for c in arm])
            mean.append(s.mean)
            low.append(s.ci_low if not math.isnan(s.ci_low) else s.mean)
            high.append(s.ci_high if not math.isnan(s.ci_high) else s.mean)
        return np.array(steps), np.array(mean), np.array(low), np.array(high)

    def missing(self) -> int:
        grid = self.meta.get("grid", {})
        pairs = len(grid.get("conditions", [])) * len(grid.get("variants", [])) - len(grid.get("exclude", []))
        planned = pairs * len(grid.get("seeds", []))
        return max(0, planned - len(self.cells))


def load_results(directory: str | Path) -> Results:
    directory = Path(directory)
    meta_path = directory / "lesson.json"
    if not meta_path.is_file():
        raise GptlabError(f"{directory} holds no lesson (no lesson.json); run one with "
                          "`gptlab lab run LESSON --profile quick --out DIR`")
    meta = json.loads(meta_path.read_text())
    cells = []
    for summary_path in sorted(directory.glob("cells/*/*/seed*/summary.json")):
        summary = json.loads(summary_path.read_text())
        records = read_metrics(summary_path.parent / "metrics.jsonl")
        curve = [(int(r["step"]), float(r["val_loss"])) for r in records if r.get("val_loss") is not None]
        cells.append(CellResult(summary["condition"], summary["variant"], int(summary["seed"]), summary, curve))
    grid = meta.get("grid", {})
    order = [c["name"] for c in grid.get("conditions", [])]
    conditions = [c for c in order if any(x.condition == c for x in cells)]
    conditions += sorted({x.condition for x in cells} - set(conditions))
    vorder = [v["name"] for v in grid.get("variants", [])]
    variants = [v for v in vorder if any(x.variant == v for x in cells)]
    variants += sorted({x.variant for x in cells} - set(variants))
    return Results(directory, meta, cells, conditions, variants)
