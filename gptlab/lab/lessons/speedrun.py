"""Lesson 7: the speedrun — which of the tricks the public small-GPT speedruns use buy time to a target loss on
this hardware?

The reference is the minimal-GPT CPU recipe (4 layers, d 128, context 64, AdamW at lr 1e-3, cosine, tied, learned
positions). Each trick is added to it alone, all of them together make the full recipe, and each is removed from
the full recipe in turn (leave-one-out): a trick that helps alone but not within the others, or the reverse, shows
up. Every arm trains the same budget on the same seeds (same batches).

Read three ways: the final validation loss at the fixed budget (the lesson's metric, one Holm family); the tokens
each arm needs to reach the loss every reference seed reaches within its budget (the highest of the reference's
final losses; hardware-independent); and the training seconds to that loss (this machine's figure). Tokens and seconds are compared on the log scale, paired by
seed, in a second Holm family, for the arms that reach the target in every seed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from gptlab.lab import scale, stats
from gptlab.lab.grid import Cell, Condition, Dataset, Grid, Variant
from gptlab.lab.lesson import Lesson
from gptlab.train.loop import Trainer
from gptlab.train.metrics import read_metrics

REFERENCE = "reference"
FULL_RECIPE = "full"
# Each trick as overrides of the reference; the speedrun records that use them are cited in the report's
# literature section.
TRICKS = {
    "muon": {"train.optimizer": "muon"},
    "relu2": {"model.activation": "relu2"},
    "zero-init": {"model.zero_init_proj": True},
    "qk-norm": {"model.qk_norm": True},
    "rope": {"model.positions": "rope"},
    "untied": {"model.tie_embeddings": False},
    "wsd": {"train.schedule": "wsd"},
    "lr3x": {"train.lr": 3e-3, "train.min_lr": 3e-4},
}
# The minimal-GPT CPU recipe (see gptlab/configs/tinyshakespeare-char.yaml), evaluated often enough to place the
# target crossing: every 100 of 2,000 steps.
FULL_BASE = {"model.n_layer": 4, "model.n_head": 4, "model.n_embd": 128, "model.block_size": 64, "model.bias": False,
             "train.batch_size": 12, "train.max_steps": 2000, "train.lr": 1e-3, "train.min_lr": 1e-4,
             "train.warmup_steps": 100, "train.weight_decay": 0.1, "train.beta2": 0.99, "train.grad_clip": 1.0,
             "train.eval_every": 100, "train.eval_batches": 20, "train.checkpoint_every": 500, "train.log_every": 50}
QUICK_BASE = {"model.n_layer": 1, "model.n_head": 2, "model.n_embd": 32, "model.block_size": 32, "model.bias": False,
              "train.batch_size": 8, "train.max_steps": 40, "train.lr": 1e-3, "train.min_lr": 1e-4,
              "train.warmup_steps": 4, "train.weight_decay": 0.1, "train.beta2": 0.99, "train.eval_every": 5,
              "train.eval_batches": 4, "train.checkpoint_every": 20, "train.log_every": 5}
# Effect versus scale of the full recipe and of Muon (the trick the speedrun records lean on most) against the
# reference, at scale.SIZES (the reference's own size is the largest) and two budgets 4x apart. -quick: seconds.
SCALE_ARMS = (REFERENCE, "+muon", FULL_RECIPE)
SCALE_BUDGETS = {"500": 500, "2000": 2000}
QUICK_SCALE_BUDGETS = {"10": 10, "40": 40}


def variants(tricks: dict[str, dict[str, Any]]) -> tuple[Variant, ...]:
    """The reference, each trick added alone, the full recipe, and the full recipe without each trick."""
    everything = {k: v for overrides in tricks.values() for k, v in overrides.items()}
    out = [Variant(REFERENCE, {}, "the minimal-GPT CPU recipe")]
    out += [Variant(f"+{name}", dict(o), f"reference + {name}") for name, o in tricks.items()]
    out.append(Variant(FULL_RECIPE, everything, "every trick together"))
    for name in tricks:
        rest = {k: v for other, o in tricks.items() if other != name for k, v in o.items()}
        out.append(Variant(f"full-{name}", rest, f"every trick but {name}"))
    return tuple(out)


def crossing(curve: list[list[float]], target: float) -> tuple[float, float] | None:
    """(tokens, training seconds) at which a val curve of [step, tokens, seconds, loss] points first reaches
    `target`, linear between the evaluations around the crossing; None if it never does."""
    previous = None
    for point in curve:
        _, tokens, seconds, loss = point
        if loss <= target:
            if previous is None or previous[3] == loss:
                return float(tokens), float(seconds)
            w = (previous[3] - target) / (previous[3] - loss)
            return (float(previous[1] + w * (tokens - previous[1])), float(previous[2] + w * (seconds - previous[2])))
        previous = point
    return None


def scale_grid(dataset: Dataset, sizes: dict, budgets: dict, seeds: tuple[int, ...], base: dict) -> Grid:
    arms = tuple(v for v in variants(TRICKS) if v.name in SCALE_ARMS)
    return Grid(scale.scale_conditions(dataset, sizes, budgets), arms, seeds, base,
                settings=scale.scale_settings(sizes, budgets))


class SpeedrunLesson(Lesson):
    name = "speedrun"
    title = "the speedrun tricks"
    question = ("Which of the tricks the public small-GPT speedruns rely on (Muon, ReLU², zero-initialised "
                "projections, QK-norm, RoPE, an untied head, a warmup-stable-decay schedule, a 3× learning rate) "
                "buy time to a target loss on this hardware? Each added alone to the minimal-GPT CPU recipe, all "
                "together, and each left out of the full recipe, at a fixed budget: final loss, and tokens and "
                "training seconds to the loss every reference seed reaches within the budget.")
    table_metrics = (("parameters", "parameters", "{:,.0f}"), ("tokens_per_s", "tokens/s", "{:,.0f}"))

    def profiles(self) -> dict[str, Grid]:
        return {"quick": Grid((Condition("poems", Dataset("shakespeare-poems", "char")),), variants(TRICKS), (0, 1),
                              QUICK_BASE),
                "full": Grid((Condition("char", Dataset("shakespeare", "char")),), variants(TRICKS),
                             tuple(range(5)), FULL_BASE),
                "scale": scale_grid(Dataset("shakespeare", "char"), scale.SIZES, SCALE_BUDGETS, tuple(range(5)),
                                    FULL_BASE),
                "scale-quick": scale_grid(Dataset("shakespeare-poems", "char"), scale.QUICK_SIZES,
                                          QUICK_SCALE_BUDGETS, (0, 1), QUICK_BASE)}

    def comparisons(self) -> list[tuple[str, str]]:
        return ([(REFERENCE, f"+{t}") for t in TRICKS] + [(REFERENCE, FULL_RECIPE)]
                + [(FULL_RECIPE, f"full-{t}") for t in TRICKS])

    def scale_comparisons(self) -> list[tuple[str | None, str]]:
        return [(REFERENCE, arm) for arm in SCALE_ARMS if arm != REFERENCE]

    def measure(self, trainer: Trainer, cell: Cell) -> dict[str, Any]:
        """The validation curve as [step, tokens, training seconds, loss], for the time-to-target readings."""
        per_step = cell.config.train.batch_size * cell.config.train.grad_accum * cell.config.model.block_size
        curve = [[r["step"], r["step"] * per_step, r.get("elapsed", math.nan), r["val_loss"]]
                 for r in read_metrics(trainer.run_dir / "metrics.jsonl") if r.get("val_loss") is not None]
        return {"val_curve": curve}

    # -- the report --------------------------------------------------------------------------------------------
    def extra_blocks(self, results, directory: Path) -> list:
        from gptlab.document import Block, fmt_p

        reached = to_target(results)
        if reached is None:
            return []
        target, arms = reached
        base = arms.get(REFERENCE, {})
        blocks = [Block("h2", "Time to target"),
                  Block("p", f"Target: val {target:.4f}, the highest final loss of the reference's seeds (so every "
                             "reference seed reaches it). Tokens and training seconds "
                             "at which each arm first reaches it (linear between evaluations); ratio = the arm's "
                             "geometric mean over the reference's, paired by seed. Arms that miss the target in some "
                             "seed are shown, not tested.")]
        rows = [["arm", "reached", "tokens (mean)", "seconds (mean)", "tokens vs reference", "seconds vs reference"]]
        for arm, per_seed in arms.items():
            hit = {s: v for s, v in per_seed.items() if v is not None}
            tokens = [v[0] for v in hit.values()]
            seconds = [v[1] for v in hit.values()]
            ratios = [ratio_to_reference(per_seed, base, i) for i in (0, 1)] if arm != REFERENCE else [None, None]
            rows.append([arm, f"{len(hit)}/{len(per_seed)}", f"{np.mean(tokens):,.0f}" if tokens else "—",
                         f"{np.mean(seconds):.1f}" if seconds else "—",
                         *(f"{r:.2f}×" if r is not None else "—" for r in ratios)])
        blocks.append(Block("table", items=rows))
        fewest = fewest_tokens_arm(arms)
        if fewest is not None:
            blocks.append(Block("p", f"Fewest tokens to the target: **{fewest[0]}**, {fewest[1]:.2f}× the reference's. "
                                     "gptlab's speedrun recipe (gptlab/configs/speedrun.yaml) is chosen by this rule: "
                                     "tokens do not depend on the machine or on what else it runs, training "
                                     "seconds do (a cell's seconds grow with any other load during it). "
                                     "`gptlab bench time-to-loss` times the recipe against the reference, alone on "
                                     "the machine, on other data and another seed."))
        comps = target_comparisons(arms, self.comparisons())
        if comps:
            blocks.append(Block("p", f"Log tokens to target, paired by seed: a second Holm family of {len(comps)} "
                                     "comparisons (difference < 0: fewer tokens than the baseline arm; exp(difference) "
                                     "is the ratio)."))
            blocks.append(Block("ul", items=[f"{c.a} → {c.b}: ratio {math.exp(c.diff):.2f}× "
                                             f"(CI {math.exp(c.ci_low):.2f}× to {math.exp(c.ci_high):.2f}×, Holm "
                                             f"{fmt_p(c.p_adjusted)}): {stats.outcome(c)}" for c in comps]))
        return blocks

    def discussion(self, results) -> list[str]:
        comparisons = dict(((c.a, c.b), c) for _, c in results.compare(self.comparisons(), self.metric,
                                                                        self.equivalence_margin))
        if not comparisons or scale.is_scale(results):
            return []
        alone = {t: stats.outcome(comparisons[(REFERENCE, f"+{t}")]) for t in TRICKS
                 if (REFERENCE, f"+{t}") in comparisons}
        within = {t: stats.outcome(comparisons[(FULL_RECIPE, f"full-{t}")]) for t in TRICKS
                  if (FULL_RECIPE, f"full-{t}") in comparisons}
        helps_alone = [t for t, o in alone.items() if o == "lower"]
        needed = [t for t, o in within.items() if o == "higher"]  # removing it raises the loss
        return [f"At the fixed budget, alone: lower final loss with {', '.join(helps_alone) or 'none'}. Within the "
                f"full recipe, leaving out {', '.join(needed) or 'none'} significantly raises the loss (those "
                "tricks still pull their weight beside the others); the rest are equivalent or inconclusive there "
                "(see the verdicts). A trick that only matters at larger scale shows here as equivalent or "
                "inconclusive, not as harmful."]


def to_target(results) -> tuple[float, dict[str, dict[int, tuple[float, float] | None]]] | None:
    """The target (the highest final val loss of the reference's seeds) and, per arm and seed, (tokens, seconds)
    to reach it."""
    if scale.is_scale(results):  # one target per condition would not compare across sizes: the scale section reads it
        return None
    condition = results.conditions[0] if results.conditions else None
    finals = results.values(condition, REFERENCE, "val_loss") if condition else []
    if not finals:
        return None
    target = float(max(finals))
    arms = {}
    for arm in results.variants:
        arms[arm] = {c.seed: crossing(c.summary.get("val_curve", []), target) for c in results.arm(condition, arm)}
    return target, {a: v for a, v in arms.items() if v}


def ratio_to_reference(per_seed: dict, base: dict, i: int) -> float | None:
    """Geometric mean over seeds of an arm's tokens (i=0) or seconds (i=1) to the target over the reference's,
    for an arm that reaches the target in every seed; None otherwise."""
    if not per_seed or any(v is None for v in per_seed.values()):
        return None
    shared = [s for s in per_seed if base.get(s)]
    if not shared:
        return None
    return math.exp(np.mean([math.log(per_seed[s][i] / base[s][i]) for s in shared]))


def fewest_tokens_arm(arms: dict) -> tuple[str, float] | None:
    """The arm with the fewest tokens to the target relative to the reference (paired by seed, geometric mean),
    among the arms that reach it in every seed; None when no arm but the reference does."""
    base = arms.get(REFERENCE, {})
    ratios = {arm: ratio_to_reference(per_seed, base, 0) for arm, per_seed in arms.items() if arm != REFERENCE}
    ratios = {arm: r for arm, r in ratios.items() if r is not None}
    if not ratios:
        return None
    best = min(ratios, key=ratios.get)
    return best, ratios[best]


def target_comparisons(arms: dict, pairs: list[tuple[str, str]]) -> list[stats.Comparison]:
    """Log tokens to target, paired by seed, for pairs whose arms reach it in every seed; one Holm family."""
    raw = []
    for a, b in pairs:
        if a not in arms or b not in arms:
            continue
        if any(v is None for v in arms[a].values()) or any(v is None for v in arms[b].values()):
            continue
        raw.append(stats.compare_by_seed({s: math.log(v[0]) for s, v in arms[a].items()},
                                         {s: math.log(v[0]) for s, v in arms[b].items()}, a, b, math.log(1.05)))
    return stats.adjust(raw)
