"""The calibrate profile: many seeds of one recipe, A/A false-positive rates and a normality check."""

import numpy as np
import pytest

from gptlab.lab.calibrate import CALIBRATION_SEEDS, aa_rates, rate_ci
from gptlab.lab.lessons import get_lesson
from gptlab.lab.runner import run_lesson


def test_aa_rates_are_near_alpha_for_normal_noise_and_the_interval_covers():
    rng = np.random.default_rng(0)
    values = {s: float(v) for s, v in enumerate(rng.normal(1.9, 0.01, 40))}
    rates = aa_rates(values, 5, margin=0.01, splits=3000)
    assert 0.02 < rates["welch"] < 0.09 and 0.02 < rates["paired"] < 0.09
    low, high = rate_ci(0.05, 2000)
    assert low < 0.05 < high and high - low < 0.025


@pytest.mark.slow
def test_calibrate_profile_runs_the_baseline_with_many_seeds_and_reports(tmp_path):
    lesson = get_lesson("tying")
    grid = lesson.grid("calibrate-quick")
    assert len(grid.variants) == 1 and grid.variants[0].name == "tied" and len(grid.seeds) == CALIBRATION_SEEDS
    out = tmp_path / "cal"
    result = run_lesson(lesson, "calibrate-quick", out, overrides=["train.max_steps=6", "train.eval_every=6"],
                        progress=False)
    assert result["ran"] == CALIBRATION_SEEDS
    md = (out / "report.md").read_text()
    assert "## Calibration of the test pipeline" in md and "A/A false-positive rate" in md and "Shapiro" in md
    assert (out / "qq.png").stat().st_size > 1000 and "## Verdicts" not in md
