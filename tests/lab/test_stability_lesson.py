"""Lesson 5 (training stability): the quick profile end to end, and divergence recorded as a result."""

import json
import math

from gptlab.cli import main
from gptlab.lab.lessons import stability
from gptlab.lab.lessons.stability import QUICK_LRS, VARIANTS
from gptlab.lab.results import load_results
from gptlab.lab.runner import run_lesson
from gptlab.train.loop import NonFiniteStep


def test_quick_stability_lesson(tmp_path):
    out = tmp_path / "stability"
    assert main(["lab", "run", "stability", "--profile", "quick", "--out", str(out)]) == 0
    results = load_results(out)
    assert len(results.cells) == len(QUICK_LRS) * len(VARIANTS) * 2
    qk = [c.summary["max_attn_logit"] for c in results.cells if c.variant == "qk-norm"]
    assert all(c.summary["max_attn_logit"] > 0 and c.summary["diverged"] == 0 for c in results.cells)
    assert max(qk) < 30  # normalised queries and keys bound the scores by the gains
    md = (out / "report.md").read_text()
    assert "## Learning-rate sensitivity" in md and "LR sensitivity" in md
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 4


def test_a_diverged_cell_is_a_result_not_a_failure(tmp_path, monkeypatch):
    class Diverging(stability.Trainer):
        def train_step(self):
            if self.step == 5 and self.cfg.train.lr > 0.1:
                raise NonFiniteStep(6, "loss", float("nan"), self.cfg.train)
            return super().train_step()

    monkeypatch.setattr(stability, "Trainer", Diverging)
    out = tmp_path / "diverge"
    result = run_lesson(stability.StabilityLesson(), "quick", out, seeds=1, progress=False)
    assert result["ran"] == len(QUICK_LRS) * len(VARIANTS)
    vocab = json.loads(next((out / "data").glob("*/meta.json")).read_text())["vocab_size"]
    for c in load_results(out).cells:
        if c.condition == "lr0.3":
            assert c.summary["diverged"] == 1 and c.summary["diverged_step"] == 6
            assert c.summary["val_loss"] == math.log(vocab)  # counted as a uniform guess
        else:
            assert c.summary["diverged"] == 0
