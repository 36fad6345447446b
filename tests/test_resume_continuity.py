"""The resume-continuity alarm: silent when a resume continues the run exactly, loud when the optimizer state is lost."""

from __future__ import annotations

import pytest

from gptlab.data import load_data
from gptlab.train import loop
from gptlab.train.callbacks import ResumeContinuity
from gptlab.train.loop import Trainer
from gptlab.train.metrics import read_metrics
from tests.conftest import tiny_config

# A constant, high learning rate: Adam's first steps after losing its moments move every weight by about lr.
SETTINGS = ["train.lr=3e-2", "train.schedule=constant", "train.batch_size=16", "train.checkpoint_every=150"]


def jumps(run) -> list[dict]:
    return [r for r in read_metrics(run / "metrics.jsonl") if r.get("event") == "resume_jump"]


@pytest.mark.parametrize("seed", [1, 2])
def test_exact_resume_is_silent_and_a_lost_optimizer_state_is_flagged(char_data, tmp_path, monkeypatch, capsys, seed):
    data = load_data(char_data)
    for reset in (False, True):
        run = tmp_path / f"reset{reset}"
        Trainer(run, tiny_config(*SETTINGS, "train.max_steps=150", f"train.seed={seed}"), data, progress=False,
                quiet=True).run()
        with monkeypatch.context() as m:
            if reset:  # the deliberate fault: the checkpoint's Adam moments are not restored
                m.setattr(loop, "restore_optimizer", lambda *args, **kwargs: None)
            Trainer(run, tiny_config(*SETTINGS, "train.max_steps=160", f"train.seed={seed}"), data, resume=True,
                    progress=False, quiet=True).run()
        err = capsys.readouterr().err
        if reset:
            (jump,) = jumps(run)
            assert jump["step"] == 155 and jump["resumed_at"] == 150 and jump["z"] > 4 and jump["loss"] > jump["expected"]
            assert "the loss jumped after resuming" in err and "lost optimizer state" in err
        else:
            assert jumps(run) == [] and "jumped" not in err


def test_the_band_follows_the_trend_and_needs_enough_history():
    falling = [(s, 3.0 - 0.01 * s + (0.02 if s % 2 else -0.02)) for s in range(1, 21)]
    watch = ResumeContinuity(falling)
    watch.after = [(s, 3.0 - 0.01 * s) for s in range(21, 26)]  # the same line continued: no alarm
    assert watch.check() is None
    watch.after = [(s, 3.0 - 0.01 * 20 + 0.2) for s in range(21, 26)]  # back above the last loss: an alarm
    assert watch.check()["z"] > 4
    assert ResumeContinuity(falling[:4]).fit is None  # too few losses before the checkpoint: nothing to compare
