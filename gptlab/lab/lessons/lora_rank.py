"""Lesson 1: LoRA vs rank-stabilized LoRA — does a higher rank keep paying off?

LoRA scales its update by alpha/r, rsLoRA by alpha/sqrt(r). Each seed pretrains its own base model on the plays
(so seed variance includes pretraining), then fine-tunes it on the sonnets and poems (a shifted domain of the
same corpus) with both methods at ranks 1 … n_embd/2 (beyond that "rank" no longer means a low-rank update), and
fully (all weights) as a reference. The learning rate is a condition: comparing at one shared rate shows what a
user with default settings sees; each method's best rate and best arm, chosen on selection seeds and tested on
the other seeds, show whether a difference is more than a larger effective step size."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gptlab.adapters.lora import update_norms
from gptlab.config import build_config
from gptlab.data import TokenData, eval_batches, prepare
from gptlab.lab import scale, stats
from gptlab.lab.grid import Cell, Condition, Dataset, Grid, Variant, as_overrides
from gptlab.io import atomic_write_json
from gptlab.lab.lesson import Lesson, base_dir, ensure_trained
from gptlab.run import load_model
from gptlab.train.checkpoint import model_state
from gptlab.train.losses import lm_loss
from gptlab.train.loop import Trainer

ALPHA = 8.0
FULL = "full"


def variants(ranks: tuple[int, ...]) -> tuple[Variant, ...]:
    out = []
    for scaling in ("lora", "rslora"):
        for r in ranks:
            out.append(Variant(f"{scaling}-r{r}", {"lora.r": r, "lora.alpha": ALPHA, "lora.scaling": scaling},
                               f"{scaling}, scale {ALPHA / (r if scaling == 'lora' else math.sqrt(r)):.3g}"))
    out.append(Variant(FULL, {}, "full fine-tuning (every weight), the reference"))
    return tuple(out)


def parse_variant(name: str) -> tuple[str, int | None]:
    if name == FULL:
        return FULL, None
    scaling, r = name.rsplit("-r", 1)
    return scaling, int(r)


# Per profile: the base model (model, base_train: pretrained once per seed on the plays), the fine-tune budget,
# the ranks (at most half the smallest adapted width, n_embd: above that "rank" stops meaning a low-rank update),
# the learning rates, and the seeds: the first `selection_seeds` choose each method's learning rate and best arm,
# the other `test_seeds` test them (a choice is never tested on the runs it was made on).
PROFILES = {
    "quick": {"model": {"model.n_layer": 1, "model.n_head": 2, "model.n_embd": 32, "model.block_size": 32,
                        "model.bias": False},
              "base_train": {"train.max_steps": 60, "train.batch_size": 8, "train.lr": 3e-3, "train.warmup_steps": 5,
                             "train.eval_every": 30, "train.eval_batches": 4},
              "finetune": {"train.max_steps": 16, "train.batch_size": 8, "train.warmup_steps": 2,
                           "train.eval_every": 8, "train.eval_batches": 4, "train.checkpoint_every": 8,
                           "train.log_every": 4, "train.weight_decay": 0.0},
              "ranks": (1, 4, 16), "lrs": (3e-3, 1e-2), "shared_lr": 3e-3, "selection_seeds": 1, "test_seeds": 2},
    "full": {"model": {"model.n_layer": 4, "model.n_head": 4, "model.n_embd": 128, "model.block_size": 64,
                       "model.bias": False},
             "base_train": {"train.max_steps": 1500, "train.batch_size": 32, "train.lr": 3e-3, "train.min_lr": 3e-4,
                            "train.warmup_steps": 100, "train.eval_every": 250, "train.eval_batches": 20,
                            "train.weight_decay": 0.1},
             "finetune": {"train.max_steps": 150, "train.batch_size": 32, "train.warmup_steps": 15,
                          "train.eval_every": 25, "train.eval_batches": 20, "train.checkpoint_every": 50,
                          "train.log_every": 25, "train.weight_decay": 0.0},
             "ranks": (1, 4, 16, 64), "lrs": (1e-3, 3e-3, 1e-2), "shared_lr": 3e-3, "selection_seeds": 3,
             "test_seeds": 5},
}

# Effect versus scale of rsLoRA against LoRA at a high rank (16: half the smallest width, an eighth of the largest)
# and the full profile's shared rate: one base model per size and seed (the full profile's pretraining), fine-tuned
# for two budgets 4x apart. Same rank at every size, so the model, not the rank, changes along the axis.
SCALE_RANK = 16
SCALE_BUDGETS = {"150": 150, "600": 600}
QUICK_SCALE_BUDGETS = {"8": 8, "32": 32}


def scale_grid(p: dict, sizes: dict, budgets: dict, seeds: tuple[int, ...], rank: int) -> Grid:
    lr = {"train.lr": p["shared_lr"], "train.min_lr": p["shared_lr"] / 10}
    finetune = {k: v for k, v in p["finetune"].items() if k not in scale.schedule(1)}
    arms = tuple(v for v in variants((rank,)) if v.name != FULL)
    return Grid(scale.scale_conditions(Dataset("shakespeare-poems", "char"), sizes, budgets), arms, seeds,
                {**p["model"], **finetune, **lr},
                settings={**p, "sizes": sizes, **scale.scale_settings(sizes, budgets)})


def base_key(settings, condition: str) -> str:
    """Which base model a cell of `condition` starts from: one per seed, or per seed and size in a scale profile."""
    return scale.split_condition(condition)[0] if settings.get("scale") else ""


def lr_name(lr: float) -> str:
    return f"lr{lr:g}"


class LoraRankLesson(Lesson):
    name = "lora-rank"
    title = "LoRA vs rsLoRA across ranks"
    question = ("With LoRA the update is scaled by alpha/r, so as the rank grows the update and its gradient signal "
                "shrink; rank-stabilized LoRA scales by alpha/sqrt(r). Does fine-tuning keep improving with rank "
                "under each? A base model pretrained on Shakespeare's plays is fine-tuned on his sonnets and poems "
                f"(alpha = {ALPHA:g}) at each rank (up to half the width), with full fine-tuning as the reference, at three "
                "learning rates: one shared setting, and each method's best rate and best arm, chosen on selection "
                "seeds and tested on the others. Each seed pretrains its own base model.")
    table_metrics = (("trainable_parameters", "trainable", "{:,.0f}"), ("delta_norm", "‖ΔW‖", "{:.3f}"),
                     ("start_grad_norm", "start grad", "{:.3g}"))

    def profiles(self) -> dict[str, Grid]:
        grids = {}
        for name, p in PROFILES.items():
            poems = Dataset("shakespeare-poems", "char")
            conditions = tuple(Condition(lr_name(lr), poems, {"train.lr": lr, "train.min_lr": lr / 10},
                                         "shared learning rate" if lr == p["shared_lr"] else "")
                               for lr in p["lrs"])
            seeds = tuple(range(p["selection_seeds"] + p["test_seeds"]))
            grids[name] = Grid(conditions, variants(p["ranks"]), seeds, {**p["model"], **p["finetune"]}, settings=p)
        full, quick = PROFILES["full"], PROFILES["quick"]
        grids["scale"] = scale_grid(full, scale.SIZES, SCALE_BUDGETS, tuple(range(5)), SCALE_RANK)
        grids["scale-quick"] = scale_grid(quick, scale.QUICK_SIZES, QUICK_SCALE_BUDGETS, (0, 1), 4)
        return grids

    def comparisons(self) -> list[tuple[str, str]]:
        ranks = sorted({parse_variant(v.name)[1] for g in self.profiles().values() for v in g.variants} - {None})
        return [(f"lora-r{r}", f"rslora-r{r}") for r in ranks]

    def scale_comparisons(self) -> list[tuple[str | None, str]]:
        return [(f"lora-r{r}", f"rslora-r{r}") for r in (SCALE_RANK, 4)]  # the scale and scale-quick ranks

    # -- shared artifacts: the tokenizer, the two domains, the base model -------------------------------------
    def prepare_data(self, workdir: Path, grid: Grid) -> dict[str, Path]:
        data = workdir / "data"
        if not (data / "all" / "meta.json").is_file():  # one char vocabulary for both domains
            prepare("shakespeare", data / "all", "char", overwrite=True)
        for key, corpus in (("plays", "shakespeare-plays"), ("poems", "shakespeare-poems")):
            if not (data / key / "meta.json").is_file():
                prepare(corpus, data / key, tokenizer_from=data / "all" / "tokenizer", overwrite=True)
        sizes = grid.settings.get("sizes") or {"": {}}  # a scale profile: one base model per size
        for size, model in sizes.items():
            for seed in grid.seeds:  # one base model per seed, so seed variance includes pretraining
                cfg = build_config(overrides=as_overrides({**grid.settings["model"], **model,
                                                           **grid.settings["base_train"], "train.seed": seed}))
                where = base_dir(workdir, seed, size)
                ensure_trained(where, data / "plays", cfg,
                               f"pretraining the base model for seed {seed} on the plays into {where} ...")
        return {grid.conditions[0].dataset.key: data / "poems"}

    # -- one fine-tuning cell ----------------------------------------------------------------------------------
    def run_cell(self, cell: Cell, cell_dir: Path, data: TokenData, resume: bool, workdir: Path) -> dict[str, Any]:
        origin = base_dir(workdir, cell.seed, base_key(cell.settings, cell.condition.name))
        base_model, _, _ = load_model(origin, "best")
        base = model_state(base_model)
        trainer = Trainer(cell_dir, cell.config, data, resume=resume, progress=False, quiet=True,
                          init_state=None if resume else base, info={"init_from": str(origin)})
        start_file = cell_dir / "start.json"
        if not resume or not start_file.is_file():
            atomic_write_json(start_file, {"start_grad_norm": start_grad_norm(trainer, data)})
        every = cell.config.train.eval_every

        def on_step(step: int, loss: float) -> None:  # in metrics.jsonl, so a resume drops what it redoes
            if step % every == 0:
                trainer.metrics.log({"step": step, "delta_norm": total_delta(trainer.model, base),
                                     "per_layer": update_norms(trainer.model)})

        trainer.on_step = on_step
        summary = trainer.run()
        params = {id(p): p for p in trainer.model.parameters()}.values()
        summary["trainable_parameters"] = sum(p.numel() for p in params if p.requires_grad)
        summary["delta_norm"] = total_delta(trainer.model, base)
        summary["start_grad_norm"] = json.loads(start_file.read_text())["start_grad_norm"]
        scaling, r = parse_variant(cell.variant.name)
        summary.update({"scaling": scaling, "rank": r, "lr": cell.config.train.lr})
        return summary

    # -- the report --------------------------------------------------------------------------------------------
    def extra_blocks(self, results, directory: Path) -> list:
        from gptlab.document import Block
        from gptlab.lab.lessons.lora_rank_plots import plot_rank

        analysis = analyse(results, self.metric, self.equivalence_margin)
        if analysis is None:
            return []
        plot_rank(results, analysis, directory / "loss_vs_rank.png", directory / "delta_vs_rank.png", FULL)
        sel, test = analysis["n_select"], analysis["n_test"]
        blocks = [Block("h2", "Learning rates"),
                  Block("p", f"Mean final val loss over every rank on the {sel} selection seed(s), per method and "
                             "learning rate; a method's tuned rate is its lowest there, and its best arm the lowest "
                             f"(rate, rank). Everything below is measured on the {test} other seeds, which no choice "
                             "looked at.")]
        rows = [["method"] + [lr_name(lr) for lr in analysis["lrs"]] + ["tuned", "best arm (selection seeds)"]]
        for method in ("lora", "rslora", FULL):
            if method not in analysis["tuned"]:
                continue
            rows.append([method] + [f"{analysis['lr_means'][method].get(lr, math.nan):.4f}" for lr in analysis["lrs"]]
                        + [lr_name(analysis["tuned"][method]), arm_name(method, analysis["best"][method])])
        blocks.append(Block("table", items=rows))
        if analysis["best_tests"]:
            blocks.append(Block("p", "The best arms against each other on the test seeds (paired by seed id; a "
                                     f"third Holm family of {len(analysis['best_tests'])} comparisons, equivalence "
                                     f"margin ±{self.equivalence_margin:g}):"))
            blocks.append(Block("ul", items=[stats.verdict(c, "val loss") for c in analysis["best_tests"]]))
        blocks.append(Block("h2", "The trend with rank"))
        blocks.append(Block("p", "Slope of final val loss against log2(rank) on the test seeds (one intercept "
                                 "per seed since a seed fixes the base model and the batches; negative = higher ranks "
                                 "fine-tune better), at the shared rate and at each method's tuned rate. "
                                 "Gradient slope: log start-gradient-norm of the adapters against log rank (theory: "
                                 "-0.5 for LoRA, 0 for rsLoRA)."))
        rows = [["method", "learning rate", "slope per doubling of r", "95 % CI", "p", "verdict",
                 "gradient slope"]]
        for method in ("lora", "rslora"):
            for label, lr in (("shared", analysis["shared_lr"]), ("tuned", analysis["tuned"].get(method))):
                t = analysis["trends"].get((method, lr))
                if t is None:
                    continue
                rows.append([method, f"{label} ({lr:g})", f"{t.slope:+.4f}", f"{t.ci_low:+.4f} to {t.ci_high:+.4f}",
                             "n/a" if math.isnan(t.p) else f"{t.p:.3g}", trend_words(t),
                             f"{analysis['grad_slopes'][(method, lr)]:+.2f}"])
        blocks.append(Block("table", items=rows))
        blocks.append(Block("img", "loss_vs_rank.png", items=["final val loss against rank"]))
        blocks.append(Block("img", "delta_vs_rank.png", items=["size of the update against rank"]))
        return blocks

    def discussion(self, results) -> list[str]:
        analysis = analyse(results, self.metric, self.equivalence_margin)
        if analysis is None:
            return []
        text = []
        for method in ("lora", "rslora"):
            t_shared = analysis["trends"].get((method, analysis["shared_lr"]))
            t_tuned = analysis["trends"].get((method, analysis["tuned"].get(method)))
            if t_shared is None or t_tuned is None:
                continue
            text.append(f"{method}: at the shared rate, {trend_words(t_shared)} ({t_shared.slope:+.4f} per doubling); "
                        f"at its tuned rate {analysis['tuned'][method]:g}, {trend_words(t_tuned)} "
                        f"({t_tuned.slope:+.4f}).")
        for c in analysis["best_tests"]:
            text.append(f"Best arms (chosen on the selection seeds, tested on the others): {stats.verdict(c, 'val loss')}.")
        return text


def start_grad_norm(trainer: Trainer, data: TokenData) -> float:
    """Norm of the gradient reaching the trainable weights on one fixed batch, before any update."""
    model, cfg = trainer.model, trainer.cfg
    x, y = next(iter(eval_batches(data.train, 1, cfg.train.batch_size, cfg.model.block_size, seed=cfg.train.seed)))
    lm_loss(model(x), y).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    norm = float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads)))
    model.zero_grad(set_to_none=True)
    return norm


def total_delta(model, base: dict[str, torch.Tensor]) -> float:
    """‖ΔW‖ over all adapted layers: scale·B·A for adapters, W − W_base of the same layers for full fine-tuning."""
    norms = update_norms(model)
    if norms:
        return float(math.sqrt(sum(v ** 2 for v in norms.values())))
    state = model.state_dict()
    total = 0.0
    for name, w in base.items():
        if any(t in name for t in (".c_attn.weight", ".c_proj.weight", ".c_fc.weight")):
            total += float(((state[name] - w) ** 2).sum())
    return math.sqrt(total)


def trend_words(t: stats.Trend) -> str:
    if math.isnan(t.p):
        return "too few runs"
    if t.p >= 0.05:  # not evidence of a flat line: the CI of the slope says how flat it may be
        return f"inconclusive: no trend shown with rank (slope CI {t.ci_low:+.4f} to {t.ci_high:+.4f})"
    return "loss falls as rank grows" if t.slope < 0 else "loss rises as rank grows"


def analyse(results, metric: str, margin: float = math.nan) -> dict | None:
    """Choices on the selection seeds, tests on the test seeds.

    On the selection seeds: each method's tuned learning rate (lowest mean over its ranks) and best arm (lowest
    mean over (learning rate, rank); full fine-tuning over learning rates). On the test seeds, never used for a
    choice: the trend with rank at the shared and the tuned rates, and the best arms against each other (paired by
    seed id, one Holm family)."""
    cells = [c for c in results.cells if c.summary.get("scaling")]
    if not cells or scale.is_scale(results):  # a scale profile has one rank: its own section reads it
        return None
    n_select = int(results.meta.get("grid", {}).get("settings", {}).get("selection_seeds", 0))
    select = [c for c in cells if c.seed < n_select] or cells  # a grid without selection seeds: descriptive only
    test = [c for c in cells if c.seed >= n_select]
    lrs = sorted({c.summary["lr"] for c in cells})

    def mean(arm) -> float:
        return float(np.mean([c.summary[metric] for c in arm])) if arm else math.nan

    def of(pool, method, lr=None, rank=None):
        return [c for c in pool if c.summary["scaling"] == method and (lr is None or c.summary["lr"] == lr)
                and (rank is None or c.summary["rank"] == rank)]

    lr_means = {m: {lr: mean(of(select, m, lr)) for lr in lrs if of(select, m, lr)} for m in ("lora", "rslora", FULL)}
    tuned = {m: min(v, key=v.get) for m, v in lr_means.items() if v}
    best = {}
    for m in ("lora", "rslora"):
        arms = {(lr, r): mean(of(select, m, lr, r)) for lr in lrs for r in {c.summary["rank"] for c in of(select, m)}
                if of(select, m, lr, r)}
        if arms:
            best[m] = min(arms, key=arms.get)
    if FULL in tuned:
        best[FULL] = (tuned[FULL], None)
    rank_means, trends, grad_slopes = {}, {}, {}
    for m in ("lora", "rslora"):
        for lr in lrs:
            arm = of(test, m, lr)
            if not arm:
                continue
            ranks = sorted({c.summary["rank"] for c in arm})
            rank_means[(m, lr)] = {r: mean(of(arm, m, rank=r)) for r in ranks}
            trends[(m, lr)] = stats.trend([math.log2(c.summary["rank"]) for c in arm], [c.summary[metric] for c in arm],
                                          groups=[c.seed for c in arm])
            g = [(math.log(c.summary["rank"]), math.log(c.summary["start_grad_norm"])) for c in of(cells, m, lr)]
            grad_slopes[(m, lr)] = float(np.polyfit(*zip(*g), 1)[0]) if len(ranks) > 1 else math.nan

    def test_values(m) -> dict[int, float]:
        lr, r = best[m]
        return {c.seed: c.summary[metric] for c in of(test, m, lr, r)}

    pairs = [("lora", "rslora"), ("lora", FULL), ("rslora", FULL)]
    best_tests = stats.adjust([stats.compare_by_seed(test_values(a), test_values(b), arm_name(a, best[a]),
                                                     arm_name(b, best[b]), margin)
                               for a, b in pairs if a in best and b in best and test_values(a) and test_values(b)])
    shared = next((float(c["name"][2:]) for c in results.meta["grid"]["conditions"]
                   if c.get("label") == "shared learning rate"), lrs[0])
    full = [c.summary[metric] for c in of(test, FULL, tuned.get(FULL))]
    return {"lrs": lrs, "lr_means": lr_means, "rank_means": rank_means, "trends": trends, "grad_slopes": grad_slopes,
            "tuned": tuned, "best": best, "best_tests": best_tests, "shared_lr": shared, "n_select": n_select,
            "n_test": len({c.seed for c in test}), "full_mean": float(np.mean(full)) if full else math.nan,
            "full_values": full}


def arm_name(method: str, choice: tuple[float, int | None]) -> str:
    lr, r = choice
    return f"{method} lr {lr:g}" + (f" r {r}" if r is not None else "")
