"""Lesson 7 (the speedrun tricks): the arms, the target crossing, and the quick profile end to end."""

from __future__ import annotations

import pytest

from gptlab.cli import main
from gptlab.lab.lessons.speedrun import FULL_RECIPE, REFERENCE, TRICKS, crossing, fewest_tokens_arm, variants


def test_the_arms_are_the_reference_each_trick_alone_all_and_leave_one_out():
    arms = {v.name: v.overrides for v in variants(TRICKS)}
    assert len(arms) == 2 * len(TRICKS) + 2 and arms[REFERENCE] == {}
    everything = {k: v for o in TRICKS.values() for k, v in o.items()}
    assert arms[FULL_RECIPE] == everything
    for name, overrides in TRICKS.items():
        assert arms[f"+{name}"] == overrides
        assert set(arms[f"full-{name}"]) == set(everything) - set(overrides)


def test_the_crossing_is_interpolated_between_the_evaluations_around_it():
    curve = [[100, 1000, 1.0, 2.0], [200, 2000, 2.0, 1.5], [300, 3000, 3.0, 1.0]]
    assert crossing(curve, 1.75) == pytest.approx((1500.0, 1.5))
    assert crossing(curve, 2.5) == (1000.0, 1.0)  # already below at the first evaluation
    assert crossing(curve, 0.5) is None


@pytest.mark.slow
def test_quick_speedrun_lesson(tmp_path):
    out = tmp_path / "speedrun"
    assert main(["lab", "run", "speedrun", "--profile", "quick", "--set", "train.max_steps=20", "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "## Time to target" in md and "| reference | 2/2 |" in md  # every reference seed reaches the target
    assert "## What the literature reports" in md and "arXiv:2502.16982" in md


def test_a_scale_profile_has_no_single_target_to_read():
    from types import SimpleNamespace

    from gptlab.lab.lessons.speedrun import SCALE_ARMS, SpeedrunLesson, to_target

    grid = SpeedrunLesson().profiles()["scale"]
    assert {v.name for v in grid.variants} == set(SCALE_ARMS) and len(grid.conditions) == 6
    results = SimpleNamespace(meta={"grid": {"settings": grid.settings}}, conditions=["xs-500"])
    assert to_target(results) is None


def test_the_recipe_arm_has_the_fewest_tokens_paired_by_seed_among_arms_that_always_reach_the_target():
    arms = {REFERENCE: {0: (100, 10.0), 1: (200, 20.0)},
            "+a": {0: (50, 50.0), 1: (100, 99.0)},  # half the reference's tokens in each seed (slow seconds: ignored)
            "+b": {0: (20, 2.0), 1: None},  # fewer, but misses the target in seed 1
            "+c": {0: (40, 4.0), 1: (180, 18.0)}}  # ratios 0.4 and 0.9: geometric mean 0.6
    name, ratio = fewest_tokens_arm(arms)
    assert name == "+a" and ratio == pytest.approx(0.5)
    assert fewest_tokens_arm({REFERENCE: arms[REFERENCE], "+b": arms["+b"]}) is None
