"""Effect versus scale: the trend words on synthetic effects, the SIZE-BUDGET conditions, and a scale profile
end to end."""

from __future__ import annotations

import numpy as np
import pytest

from gptlab.cli import main
from gptlab.lab.grid import Dataset
from gptlab.lab.scale import Point, classify, fit, scale_conditions


def synthetic(effect_at, seeds: int = 6, noise: float = 0.005, sizes=(2 ** 14, 2 ** 16, 2 ** 18)) -> list[Point]:
    """Points whose difference at `parameters` is effect_at(log2 parameters) plus per-seed noise and offsets."""
    rng = np.random.default_rng(0)
    offsets = rng.normal(0, 0.01, seeds)  # a seed's own shift, shared across sizes
    return [Point(f"s{i}", "b", float(n), 1e6, {s: effect_at(np.log2(n)) + offsets[s] + rng.normal(0, noise)
                                                for s in range(seeds)})
            for i, n in enumerate(sizes)]


@pytest.mark.parametrize("effect,words", [
    (lambda x: -0.01 * (x - 12), "grows"),      # negative and more negative with size
    (lambda x: 0.05 - 0.01 * (x - 14), "shrinks"),  # positive, falling towards 0
    (lambda x: 0.06 - 0.0225 * (x - 14), "flips"),  # +0.06 at the smallest, −0.03 at the largest
    (lambda x: 0.02, "holds"),                   # the same effect at every size
])
def test_the_trend_words_follow_the_synthetic_effect(effect, words):
    pts = synthetic(effect)
    assert classify(pts, fit(pts, "parameters"), margin=0.005) == words


def test_a_noisy_effect_is_inconclusive_and_the_slope_is_within_seed():
    pts = synthetic(lambda x: 0.0, seeds=3, noise=0.05)
    assert classify(pts, fit(pts, "parameters"), margin=0.005) == "inconclusive"
    # seed offsets cancel: a clean slope of −0.01 per doubling is found exactly despite offsets of ±0.01
    clean = synthetic(lambda x: -0.01 * x, noise=0.0)
    t = fit(clean, "parameters")
    assert t.slope == pytest.approx(-0.01) and t.ci_high - t.ci_low < 1e-9


def test_scale_conditions_cross_sizes_and_budgets_with_the_schedule_scaled():
    conditions = scale_conditions(Dataset("shakespeare", "char"), {"s": {"model.n_embd": 32}, "m": {"model.n_embd": 64}},
                                  {"100": 100, "400": 400})
    assert [c.name for c in conditions] == ["s-100", "s-400", "m-100", "m-400"]
    m400 = conditions[-1].overrides
    assert m400["model.n_embd"] == 64 and m400["train.max_steps"] == 400 and m400["train.warmup_steps"] == 40


@pytest.mark.slow
def test_a_scale_profile_reports_the_effect_against_parameters_and_tokens(tmp_path):
    out = tmp_path / "scale"
    assert main(["lab", "run", "tying", "--profile", "scale-quick", "--seeds", "2", "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "## Effect versus scale" in md and "Largest scale measured" in md
    assert "| tied → untied | val loss | parameters | budget 8 | 2 |" in md
    assert (out / "scale.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("name", ["positions", "stability", "tying"])
def test_each_scale_profile_spans_8x_in_parameters_3_sizes_and_budgets_4x_apart(name):
    from gptlab.config import RunConfig, apply_overrides
    from gptlab.lab.grid import as_overrides
    from gptlab.lab.lessons import get_lesson
    from gptlab.lab.lessons.tying import parameters

    grid = get_lesson(name).profiles()["scale"]
    scale = grid.settings["scale"]
    assert len(scale["sizes"]) >= 3 and len(grid.seeds) >= 5
    vocab = 2048 if name == "tying" else 85
    counts, steps = [], []
    for c in grid.conditions:
        cfg = apply_overrides(RunConfig(), as_overrides(grid.base) + as_overrides(c.overrides)
                              + [f"model.vocab_size={vocab}"])
        counts.append(parameters(cfg))
        steps.append(cfg.train.max_steps)
    assert max(counts) >= 8 * min(counts) and max(steps) >= 4 * min(steps)
