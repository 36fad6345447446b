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


@pytest.mark.parametrize("name", ["positions", "stability", "tying", "quantization", "lora-rank", "speedrun"])
def test_each_scale_profile_spans_8x_in_parameters_3_sizes_and_budgets_4x_apart(name):
    from gptlab.config import RunConfig, apply_overrides
    from gptlab.lab.grid import as_overrides
    from gptlab.lab.lessons import get_lesson
    from gptlab.lab.lessons.tying import parameters

    grid = get_lesson(name).profiles()["scale"]
    scale = grid.settings["scale"]
    assert len(scale["sizes"]) >= 3 and len(grid.seeds) >= 5
    vocab = 2048 if name in ("tying", "quantization") else 85
    counts, steps = [], []
    for c in grid.conditions:
        cfg = apply_overrides(RunConfig(), as_overrides(grid.base) + as_overrides(c.overrides)
                              + [f"model.vocab_size={vocab}"])
        counts.append(parameters(cfg))
        steps.append(cfg.train.max_steps)
    assert max(counts) >= 8 * min(counts) and max(steps) >= 4 * min(steps)


def test_a_one_variant_comparison_follows_that_variants_own_value():
    from types import SimpleNamespace

    from gptlab.lab.scale import pair_name, points

    def cell(seed, value, params):
        return SimpleNamespace(seed=seed, summary={"loss_increase": value, "parameters": params, "tokens": 1000})

    arms = {("s-1", "ptq3"): [cell(0, 0.02, 100), cell(1, 0.04, 100)],
            ("m-1", "ptq3"): [cell(0, 0.01, 800), cell(1, 0.01, 800)]}
    results = SimpleNamespace(arm=lambda condition, variant: arms.get((condition, variant), []))
    pts = points(results, None, "ptq3", "loss_increase", ["s", "m"], ["1"])
    assert [p.mean for p in pts] == pytest.approx([0.03, 0.01]) and pts[1].parameters == 800
    assert pair_name(None, "ptq3") == "ptq3" and pair_name("a", "b") == "a → b"


@pytest.mark.slow
def test_the_quantization_scale_profile_trains_a_float_model_per_size_and_budget(tmp_path):
    out = tmp_path / "q"
    assert main(["lab", "run", "quantization", "--profile", "scale-quick", "--out", str(out)]) == 0
    bases = sorted(p.parent.name + "/" + p.name for p in (out / "base").glob("*/seed*"))
    assert bases == [f"{c}/seed{s}" for c in ("xs-10", "xs-40", "xxs-10", "xxs-40") for s in (0, 1)]
    md = (out / "report.md").read_text()
    assert "## Effect versus scale" in md and "Largest scale measured" in md
    assert (out / "scale.png").read_bytes()[:4] == b"\x89PNG"
    assert "| ptq3 | Δ loss vs float | tokens | size xs | 2 |" in md
    assert "| float-ft3 → qat-ste3 | Δ loss vs float | parameters | budget 40 | 2 |" in md
    import json
    qat = json.loads((out / "cells" / "xs-40" / "qat-ste3" / "seed0" / "summary.json").read_text())
    ptq = json.loads((out / "cells" / "xs-40" / "ptq3" / "seed0" / "summary.json").read_text())
    assert qat["step"] == 8 and qat["tokens"] > ptq["tokens"] == ptq["float_tokens"] == 40 * 8 * 32


def test_the_lora_scale_profile_starts_each_cell_from_its_sizes_own_base_model(tmp_path):
    import json

    from gptlab.lab.lessons.lora_rank import LoraRankLesson
    from gptlab.lab.runner import execute_cell, plan_cells

    lesson = LoraRankLesson()
    grid = lesson.profiles()["scale-quick"].with_seeds(1)
    dirs = lesson.prepare_data(tmp_path, grid)  # pretrains one base model per size (and seed)
    assert sorted(p.parent.name for p in (tmp_path / "base").glob("*/seed0")) == ["xs", "xxs"]
    cells = {c.name: c for c in plan_cells(lesson, grid, dirs, [], 1)}
    for name, size in (("xs-8/rslora-r4/seed0", "xs"), ("xxs-8/lora-r4/seed0", "xxs")):
        cell = cells[name]
        summary = execute_cell(lesson, cell, cell.directory(tmp_path), dirs[cell.condition.dataset.key], False)
        info = json.loads((cell.directory(tmp_path) / "run.json").read_text())
        assert info["init_from"] == str(tmp_path / "base" / size / "seed0") and summary["rank"] == 4
