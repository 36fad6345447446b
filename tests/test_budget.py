"""Wall-time budgets: step timing on a fake clock, the steps that fit, and the quickstart sized by them."""

from __future__ import annotations

import torch

from gptlab import budget, quickstart
from gptlab.budget import plan_steps, seconds_per_step, training_step
from tests.conftest import tiny_config


def test_step_time_is_the_median_after_warmup_on_a_fake_clock():
    durations = iter([0.5, 0.25, 0.375, 9.0, 0.3125])  # exact in binary  # a warmup call, then one slow outlier among four timed calls
    now = [0.0]
    calls = []

    def clock() -> float:
        return now[0]

    def step() -> None:
        calls.append(1)
        now[0] += next(durations)

    assert seconds_per_step(step, steps=4, warmup=1, clock=clock) == 0.375
    assert len(calls) == 5


def test_planned_steps_are_the_highest_rung_that_fits():
    rungs = (250, 350, 500, 700, 1000, 1500)
    assert plan_steps(0.2, 3, rungs) == 700  # 180 s × 0.9 / 0.2 = 810 steps fit
    assert plan_steps(0.1620, 3, rungs) == 1000  # exactly 1,000 fit
    assert plan_steps(0.05, 3, rungs) == 1500  # a fast machine stops at the ladder's top
    assert plan_steps(5.0, 3, rungs) == 250  # a slow one still gets a curve worth reading
    assert plan_steps(float("nan"), 3, rungs) == 250


def test_measuring_a_step_leaves_the_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    training_step(tiny_config(), 40)()
    assert torch.equal(torch.rand(3), expected)


def test_the_quickstart_plans_its_steps_from_the_measured_step_time(monkeypatch, capsys):
    monkeypatch.setattr(budget, "seconds_per_step", lambda step: 0.05)  # 3,240 steps fit in 3 min less 10 %
    cfg = quickstart.sized_to_machine(tiny_config("train.max_steps=1500"), 40, minutes=3)
    assert cfg.train.max_steps == 2800 and "2800 steps fit in about 3 min" in capsys.readouterr().out
    cfg = quickstart.sized_to_machine(tiny_config("train.max_steps=1500"), 40, minutes=30)
    assert cfg.train.max_steps == max(quickstart.RUNGS) and "the ladder's top" in capsys.readouterr().out
    monkeypatch.setattr(budget, "seconds_per_step", lambda step: 1.0)
    cfg = quickstart.sized_to_machine(tiny_config("train.max_steps=1500"), 40, minutes=3)
    assert cfg.train.max_steps == min(quickstart.RUNGS) and "the lowest rung" in capsys.readouterr().out


def test_a_rung_scales_the_schedule_but_keeps_what_the_user_set():
    cfg = quickstart.on_rung(tiny_config("train.max_steps=1500", "train.warmup_steps=100"), 500)
    assert (cfg.train.max_steps, cfg.train.warmup_steps, cfg.train.eval_every, cfg.train.checkpoint_every) == \
        (500, 50, 100, 100)
    cfg = quickstart.on_rung(tiny_config("train.warmup_steps=100"), 1500)
    assert (cfg.train.warmup_steps, cfg.train.eval_every) == (100, 300)
    cfg = quickstart.on_rung(tiny_config("train.warmup_steps=7", "train.eval_every=10"), 500,
                             keep={"train.warmup_steps", "train.eval_every"})
    assert (cfg.train.warmup_steps, cfg.train.eval_every, cfg.train.checkpoint_every) == (7, 10, 100)
