"""Lesson 5: training stability — which refinements widen the range of learning rates that train well?

A baseline (pre-LN, warmup, clipping at 1.0) and variants that remove a safeguard (no warmup, post-LN, no
clipping) or add one (QK-norm, z-loss, both) are trained at peak learning rates spanning two orders of
magnitude, several seeds each, at a fixed budget. A run that produces a non-finite loss stops there and counts
as diverged; its loss is recorded as ln(vocabulary), the loss of a uniform guess.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from gptlab.data import TokenData
from gptlab.lab import stats
from gptlab.lab.grid import Cell, Condition, Dataset, Grid, Variant
from gptlab.lab.lesson import Lesson
from gptlab.lab.scale import QUICK_SIZES, SIZES, scale_conditions, scale_settings
from gptlab.train.loop import NonFiniteStep, Trainer

BASELINE = "baseline"
VARIANTS = (
    Variant(BASELINE, {}, "pre-LN, warmup, clip 1.0"),
    Variant("no-warmup", {"train.warmup_steps": 0}),
    Variant("post-ln", {"model.norm_placement": "post"}),
    Variant("no-clip", {"train.grad_clip": 0.0}),
    Variant("qk-norm", {"model.qk_norm": True}),
    Variant("z-loss", {"train.z_loss": 1e-4}),
    Variant("qk-norm+z-loss", {"model.qk_norm": True, "train.z_loss": 1e-4}),
)
FULL = {"model.n_layer": 4, "model.n_head": 4, "model.n_embd": 64, "model.block_size": 64, "model.bias": False,
        "train.batch_size": 16, "train.max_steps": 300, "train.warmup_steps": 30, "train.weight_decay": 0.1,
        "train.eval_every": 50, "train.eval_batches": 10, "train.checkpoint_every": 100, "train.log_every": 10}
QUICK = {"model.n_layer": 2, "model.n_head": 2, "model.n_embd": 32, "model.block_size": 32, "model.bias": False,
         "train.batch_size": 8, "train.max_steps": 24, "train.warmup_steps": 4, "train.eval_every": 8,
         "train.eval_batches": 4, "train.checkpoint_every": 8, "train.log_every": 4}
FULL_LRS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
QUICK_LRS = (3e-3, 3e-1)


# Effect versus scale of the headline (QK-norm against the baseline at a high learning rate, where attention
# logits grow): 3 sizes over ~28x in parameters, budgets 4x apart.
SCALE_LR = 3e-2
SCALE_BUDGETS = {"150": 150, "600": 600}
QUICK_SCALE_BUDGETS = {"8": 8, "32": 32}
SCALE_VARIANTS = tuple(v for v in VARIANTS if v.name in (BASELINE, "qk-norm"))


def lr_condition(lr: float, dataset: Dataset) -> Condition:
    return Condition(f"lr{lr:g}", dataset, {"train.lr": lr, "train.min_lr": lr / 10})


def condition_lr(name: str) -> float | None:
    """The peak learning rate an lr-condition is named after; None for other conditions (a scale profile's)."""
    try:
        return float(name[2:]) if name.startswith("lr") else None
    except ValueError:
        return None


def lrs_of(results) -> list[float]:
    return sorted({lr for c in results.cells if (lr := condition_lr(c.condition)) is not None})


class StabilityLesson(Lesson):
    name = "stability"
    title = "training stability"
    question = ("Which refinements buy stability? A baseline (pre-LN, warmup, gradient clipping) and variants without "
                "warmup, with post-LN, without clipping, with QK-norm, with z-loss and with both, trained at peak "
                "learning rates across two orders of magnitude: final loss against learning rate, how much worse "
                "than its best each variant gets across the range, divergence, loss spikes and the growth of the "
                "largest attention logit.")
    table_metrics = (("diverged", "diverged", "{:.0%}"), ("spikes", "spikes", "{:.1f}"),
                     ("max_attn_logit", "max attn logit", "{:.1f}"), ("max_output_logit", "max |logit|", "{:.1f}"))

    def profiles(self) -> dict[str, Grid]:
        full_data, quick_data = Dataset("shakespeare", "char"), Dataset("shakespeare-poems", "char")
        high = {"train.lr": SCALE_LR, "train.min_lr": SCALE_LR / 10}
        return {"quick": Grid(tuple(lr_condition(lr, quick_data) for lr in QUICK_LRS), VARIANTS, (0, 1), QUICK),
                "full": Grid(tuple(lr_condition(lr, full_data) for lr in FULL_LRS), VARIANTS, tuple(range(5)), FULL),
                "scale": Grid(scale_conditions(full_data, SIZES, SCALE_BUDGETS), SCALE_VARIANTS,
                              tuple(range(5)), {**FULL, **high}, settings=scale_settings(SIZES, SCALE_BUDGETS)),
                "scale-quick": Grid(scale_conditions(quick_data, QUICK_SIZES, QUICK_SCALE_BUDGETS),
                                    SCALE_VARIANTS, (0, 1), {**QUICK, **high},
                                    settings=scale_settings(QUICK_SIZES, QUICK_SCALE_BUDGETS))}

    def comparisons(self) -> list[tuple[str, str]]:
        return [(BASELINE, v.name) for v in VARIANTS if v.name != BASELINE]

    def run_cell(self, cell: Cell, cell_dir: Path, data: TokenData, resume: bool, workdir: Path) -> dict[str, Any]:
        trainer = Trainer(cell_dir, cell.config, data, resume=resume, progress=False, quiet=True)
        try:
            summary = trainer.run()
            summary.update(diverged=0, diverged_step=None)
        except NonFiniteStep as e:  # divergence is a result here, not a failure
            chance = math.log(data.meta["vocab_size"])
            summary = trainer.summary(math.nan, None)
            summary.update(diverged=1, diverged_step=e.step, val_loss=chance, final_loss=None)
        return summary

    # -- the report --------------------------------------------------------------------------------------------
    def extra_blocks(self, results, directory: Path) -> list:
        from gptlab.document import Block
        from gptlab.lab.lessons.stability_plots import plot_lr_curves, plot_attention_growth

        lrs = lrs_of(results)
        if len(lrs) < 2:
            return []
        plot_lr_curves(results, lrs, directory / "loss_vs_lr.png", BASELINE)
        growth_lr = plot_attention_growth(results, lrs, directory / "attention_growth.png")
        sens = sensitivities(results, lrs)
        blocks = [Block("h2", "Learning-rate sensitivity"),
                  Block("p", "Per seed: the mean, over the learning rates, of how much worse the final val loss is "
                             "than that seed's best learning rate (0 = equally good everywhere). Each variant against "
                             "the baseline, paired by seed, Holm-corrected; diverged runs count at ln(vocabulary).")]
        rows = [["variant", "sensitivity (mean ± 95 % CI)", "diverged runs", "best lr"]]
        for variant, values in sens.items():
            s = stats.summarize(list(values.values()))
            div = [c.summary.get("diverged", 0) for c in results.cells if c.variant == variant]
            means = {lr: np.mean(results.values(f"lr{lr:g}", variant, "val_loss") or [math.nan]) for lr in lrs}
            rows.append([variant, f"{s.mean:.4f}" + ("" if math.isnan(s.ci_low) else f" ± {s.half_width:.4f}"),
                         f"{sum(div)}/{len(div)}", f"{min(means, key=means.get):g}"])
        blocks.append(Block("table", items=rows))
        comps = sensitivity_comparisons(sens, self.equivalence_margin)
        blocks.append(Block("p", f"A second Holm family, separate from the final-loss table's (another question): these "
                                 f"{len(comps)} comparisons of sensitivity, equivalence margin ±{self.equivalence_margin:g}."))
        blocks.append(Block("ul", items=[stats.verdict(c, "LR sensitivity") for c in comps]))
        blocks.append(Block("img", "loss_vs_lr.png", items=["final val loss against peak learning rate"]))
        blocks.append(Block("img", "attention_growth.png",
                            items=[f"largest attention logit during training at lr {growth_lr:g}"]))
        return blocks

    def discussion(self, results) -> list[str]:
        lrs = lrs_of(results)
        if len(lrs) < 2:
            return []
        sens = sensitivities(results, lrs)
        if BASELINE not in sens:
            return []
        comps = sensitivity_comparisons(sens, self.equivalence_margin)
        kinds = {k: [c.b for c in comps if stats.outcome(c) == k] for k in ("lower", "higher", "equivalent", "inconclusive")}
        return [f"Widen the stable range (lower sensitivity than the baseline): {', '.join(kinds['lower']) or 'none'}. "
                f"Narrow it: {', '.join(kinds['higher']) or 'none'}. Equivalent to the baseline within "
                f"±{self.equivalence_margin:g}: {', '.join(kinds['equivalent']) or 'none'}. Inconclusive at these seeds: "
                f"{', '.join(kinds['inconclusive']) or 'none'}."]


def sensitivity_comparisons(sens: dict[str, dict[int, float]], margin: float) -> list[stats.Comparison]:
    """Each variant's sensitivity against the baseline's, paired by seed id; one Holm family."""
    if BASELINE not in sens:
        return []
    return stats.adjust([stats.compare_by_seed(sens[BASELINE], sens[v], BASELINE, v, margin)
                         for v in sens if v != BASELINE])


def sensitivities(results, lrs: list[float]) -> dict[str, dict[int, float]]:
    out = {}
    for variant in results.variants:
        per_seed = {}
        for c in results.cells:
            if c.variant == variant and isinstance(c.summary.get("val_loss"), (int, float)):
                per_seed.setdefault(c.seed, {})[condition_lr(c.condition)] = c.summary["val_loss"]
        complete = {seed: v for seed, v in per_seed.items() if len(v) == len(lrs)}
        if complete:
            out[variant] = {seed: float(np.mean([loss - min(v.values()) for loss in v.values()]))
                            for seed, v in sorted(complete.items())}
    return out
