"""Lesson 4 (quantization): the quick profile end to end: PTQ cells, QAT cells, the broken STE caught."""

from gptlab.cli import main
from gptlab.lab.lessons.quantization import (BITS, QUICK_CLIP_CHOICES, PTQ, QAT, QAT_ARMS, QAT_BITS, SELECTION_SEEDS,
                                           QuantizationLesson, chosen_clips)
from gptlab.lab.results import load_results


def test_quick_quantization_lesson(tmp_path):
    out = tmp_path / "quantization"
    assert main(["lab", "run", "quantization", "--profile", "quick", "--out", str(out)]) == 0
    results = load_results(out)
    assert len(results.cells) == 2 * (len(BITS) * len(PTQ) + len(QAT_BITS) * len(QAT))
    assert results.missing() == 0
    by = {(c.condition, c.variant, c.seed): c.summary for c in results.cells}
    for seed in (0, 1):  # fewer bits never beat more bits by much, and 8 bits is nearly free
        assert abs(by[("w8", "channel", seed)]["loss_increase"]) < 0.01
        assert by[("w3", "channel", seed)]["bytes"] < by[("w8", "channel", seed)]["bytes"]
        assert by[("w4", "qat-broken", seed)]["dead_gradient_step"] == 3  # the alarm fired
        assert "dead_gradient_step" not in by[("w4", "qat-lsq", seed)]
        assert len(by[("w4", "channel", seed)]["layers"]) == 4  # one quick layer: four linear layers
        assert by[("w8", "channel", seed)]["decode_tokens_per_s"] > 0  # speed per weight-only format
        assert "decode_tokens_per_s" not in by[("w8", "act-token", seed)]
    md = (out / "report.md").read_text()
    for section in ("## Loss against bits", "## Model size and decode speed per format", "## Sensitivity map",
                    "## Gradient flow during QAT", "qat-ste → qat-broken"):
        assert section in md
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 5


def test_clip_selection_chooses_each_arms_clip_on_seeds_the_lesson_never_uses(tmp_path):
    out = tmp_path / "clips"
    assert main(["lab", "run", "quantization", "--profile", "clip-selection-quick", "--out", str(out)]) == 0
    results = load_results(out)
    assert len(results.cells) == len(SELECTION_SEEDS) * len(QAT_BITS) * len(QAT_ARMS) * len(QUICK_CLIP_CHOICES)
    assert not set(SELECTION_SEEDS) & set(QuantizationLesson().profiles()["full"].seeds)
    chosen = chosen_clips(results)
    assert set(chosen) == set(QAT_ARMS)
    for arm, (best, means) in chosen.items():  # the chosen clip is the lowest mean over bits and seeds
        values = {c: [v for b in QAT_BITS for v in results.values(f"w{b}", f"{arm}-clip{c:g}", "loss_increase")]
                  for c in QUICK_CLIP_CHOICES}
        assert best == min(values, key=lambda c: sum(values[c]) / len(values[c]))
        assert means[best] == min(means.values())
    by = {(c.condition, c.variant, c.seed): c.summary for c in results.cells}  # the clip reached the quantizer
    assert by[("w3", "float-ft-clip0.6", 100)]["loss_increase"] != by[("w3", "float-ft-clip1", 100)]["loss_increase"]
    assert "## Each arm's clip ratio" in (out / "report.md").read_text()
