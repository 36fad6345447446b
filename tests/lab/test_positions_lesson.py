"""Lesson 2 (positional encodings): the quick profile end to end."""

import json

from gptlab.cli import main
from gptlab.lab.lessons.positions import EXTEND, MULTIPLES, SCHEMES, PositionsLesson
from gptlab.lab.results import load_results


def test_quick_positions_lesson(tmp_path):
    out = tmp_path / "positions"
    assert main(["lab", "run", "positions", "--profile", "quick", "--out", str(out)]) == 0
    results = load_results(out)
    assert len(results.cells) == (len(SCHEMES) + len(EXTEND)) * 2
    for c in results.cells:
        evals = c.summary["eval"]
        assert c.summary["loss_1x"] == evals[next(iter(evals))]["1x"]  # the metric: same-target loss at 1×
        if c.variant in EXTEND:  # fine-tuned at 4× with its scaling, read with it kept
            assert set(evals) == {c.variant} and all(evals[c.variant][f"{m}x"] > 0 for m in MULTIPLES)
            assert c.summary["extension"]["step"] >= 2
            assert not (out / "cells" / c.condition / c.variant / f"seed{c.seed}" / "extend" / "checkpoints").exists()
        elif c.variant == "learned":
            assert [evals["learned"][f"{m}x"] is None for m in MULTIPLES] == [False, True, True, True]
            assert all(evals["learned+clamp"][f"{m}x"] > 0 for m in MULTIPLES)
        elif c.variant == "rope":
            assert set(evals) == {"rope", "rope+linear", "rope+ntk", "rope+yarn"}
            # at 1× every extension has factor 1: exactly plain RoPE
            assert len({evals[r]["1x"] for r in evals}) == 1
        else:
            assert all(evals[c.variant][f"{m}x"] > 0 for m in MULTIPLES)
        curves = json.loads((out / "cells" / c.condition / c.variant / f"seed{c.seed}" / "per_position.json")
                            .read_text())
        assert all(len(curve) == curves["length"] == 16 * MULTIPLES[-1] for curve in curves["curves"].values())
    md = (out / "report.md").read_text()
    assert "| learned | " in md and "cannot run" in md and "## Beyond the training length" in md
    assert "## What the literature reports" in md and "ctx16: rope → alibi (loss_4x; paper: lower)" in md
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 4


def test_the_sinusoid_ablation_chooses_on_seeds_the_full_profile_never_tests():
    profiles = PositionsLesson().profiles()
    ablation, full = profiles["sinusoid-ablation"], profiles["full"]
    assert not set(ablation.seeds) & set(full.seeds)
    assert ablation.base == full.base and ablation.settings == full.settings  # same settings and budget
