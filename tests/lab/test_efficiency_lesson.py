"""Lesson 6 (efficiency): the quick profile end to end, every technique measured on the same model."""

from gptlab.cli import main
from gptlab.lab.lessons.efficiency import variants
from gptlab.lab.results import load_results


def test_quick_efficiency_lesson(tmp_path):
    out = tmp_path / "efficiency"
    assert main(["lab", "run", "efficiency", "--profile", "quick", "--out", str(out)]) == 0
    results = load_results(out)
    assert len(results.cells) == 2 * len(variants(8))
    by = {(c.variant, c.seed): c.summary for c in results.cells}
    for seed in (0, 1):
        base = by[("baseline", seed)]
        assert all(s["steady_tokens_per_s"] > 0 and 0 < s["mfu"] < 1 for s in results_of(by, seed))
        # techniques that do not change the maths reach the same val loss on the same windows
        for v in ("manual-attn", "checkpointing", "compile", "ddp2"):
            assert abs(by[(v, seed)]["val_loss"] - base["val_loss"]) < 1e-3, v
        assert by[("checkpointing", seed)]["saved_mb"] < base["saved_mb"] / 2  # only block inputs are kept
        assert by[("ddp2", seed)]["processes"] == 2
        assert all(d["same"] for d in base["decode"].values())  # the KV cache changes speed, not tokens
    md = (out / "report.md").read_text()
    assert "## Speed, memory and quality per technique" in md and "## KV cache" in md


def results_of(by, seed):
    return [s for (v, s_), s in by.items() if s_ == seed]
