"""Lesson 1 (LoRA vs rsLoRA across ranks): the quick profile end to end."""

import json
from pathlib import Path

import pytest

from gptlab.cli import main
from gptlab.lab.lessons.lora_rank import PROFILES
from gptlab.lab.results import load_results


@pytest.fixture(scope="module")
def quick_lora(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lab") / "lora"
    assert main(["lab", "run", "lora-rank", "--profile", "quick", "--out", str(out)]) == 0
    return out


def test_quick_lora_rank_runs_every_cell(quick_lora):
    p = PROFILES["quick"]
    results = load_results(quick_lora)
    seeds = p["selection_seeds"] + p["test_seeds"]
    assert len(results.cells) == len(p["lrs"]) * (2 * len(p["ranks"]) + 1) * seeds
    d = p["model"]["model.n_embd"]
    per_rank = p["model"]["model.n_layer"] * ((d + 3 * d) + (d + d) + (d + 4 * d) + (4 * d + d))  # r·(in + out) each
    for c in results.cells:
        s = c.summary
        assert s["step"] == p["finetune"]["train.max_steps"] and s["delta_norm"] > 0 and s["start_grad_norm"] > 0
        if s["scaling"] != "full":
            assert s["trainable_parameters"] == s["rank"] * per_rank
        else:
            assert s["trainable_parameters"] == s["parameters"]
    for seed in range(seeds):  # one base model per seed: seed variance includes pretraining
        assert (quick_lora / "base" / f"seed{seed}" / "config.yaml").is_file()
    bases = {(quick_lora / "base" / f"seed{seed}" / "metrics.jsonl").read_text() for seed in range(seeds)}
    assert len(bases) == seeds
    meta = json.loads((quick_lora / "data" / "poems" / "meta.json").read_text())
    assert meta["vocab_size"] == json.loads((quick_lora / "data" / "plays" / "meta.json").read_text())["vocab_size"]


def test_ranks_stay_low_rank_and_choices_use_only_selection_seeds(quick_lora):
    from gptlab.lab.lessons.lora_rank import analyse

    for p in PROFILES.values():  # a rank above half the width is no longer a low-rank update
        assert max(p["ranks"]) <= p["model"]["model.n_embd"] // 2
    results = load_results(quick_lora)
    chosen = analyse(results, "val_loss")
    for c in results.cells:  # spoil every test-seed run of one arm: the choices must not move
        if c.seed >= PROFILES["quick"]["selection_seeds"]:
            c.summary["val_loss"] = 100.0 if c.summary["scaling"] == "rslora" else c.summary["val_loss"]
    spoiled = analyse(results, "val_loss")
    assert spoiled["tuned"] == chosen["tuned"] and spoiled["best"] == chosen["best"]
    assert any(c.significant() for c in spoiled["best_tests"])  # ... while the tests on test seeds see it


def test_quick_lora_rank_report_tests_the_trend_and_the_theory(quick_lora):
    md = (quick_lora / "report.md").read_text()
    assert "## The trend with rank" in md and "## Learning rates" in md and "full fine-tuning" in md.lower()
    assert (quick_lora / "loss_vs_rank.png").stat().st_size > 1000
    assert (quick_lora / "report.html").read_text().count("data:image/png;base64,") == 4
    # The gradient reaching fresh adapters: ∝ 1/√r under LoRA, flat under rsLoRA, on the real model too.
    rows = [line.split("|") for line in md.splitlines() if line.startswith("| lora |") or line.startswith("| rslora |")]
    slopes = {r[1].strip(): float(r[7]) for r in rows if len(r) > 8}
    assert slopes["lora"] == pytest.approx(-0.5, abs=0.15) and slopes["rslora"] == pytest.approx(0.0, abs=0.15)
