"""Lesson 1: LoRA vs rank-stabilized LoRA — does a higher rank keep paying off?

LoRA scales its update by alpha/r, rsLoRA by alpha/sqrt(r). One base model is pretrained on the plays, then
fine-tuned on the sonnets and poems (a shifted domain of the same corpus) with both methods at ranks 1 … 256,
and fully (all weights) as a reference. The learning rate is a condition: comparing at one shared rate shows
what a user with default settings sees; picking each method's best rate from the sweep shows whether a
difference is more than a larger effective step size.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gptlab.adapters.lora import update_norms
from gptlab.config import build_config
from gptlab.data import TokenData, eval_batches, prepare
from gptlab.lab import stats
from gptlab.lab.grid import Cell, Condition, Dataset, Grid, Variant, as_overrides
from gptlab.lab.lesson import Lesson
from gptlab.run import is_run, load_model
from gptlab.train.checkpoint import model_state
from gptlab.train.loop import Trainer, lm_loss, resume as resume_run, train

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


class Profile:
    def __init__(self, model: dict, base_train: dict, finetune: dict, ranks: tuple[int, ...], lrs: tuple[float, ...],
                 shared_lr: float, seeds: int):
        self.model, self.base_train, self.finetune = model, base_train, finetune
        self.ranks, self.lrs, self.shared_lr, self.seeds = ranks, lrs, shared_lr, seeds


PROFILES = {
    "quick": Profile(model={"model.n_layer": 1, "model.n_head": 2, "model.n_embd": 32, "model.block_size": 32,
                            "model.bias": False},
                     base_train={"train.max_steps": 60, "train.batch_size": 8, "train.lr": 3e-3, "train.warmup_steps": 5,
                                 "train.eval_every": 30, "train.eval_batches": 4},
                     finetune={"train.max_steps": 16, "train.batch_size": 8, "train.warmup_steps": 2,
                               "train.eval_every": 8, "train.eval_batches": 4, "train.checkpoint_every": 8,
                               "train.log_every": 4, "train.weight_decay": 0.0},
                     ranks=(1, 8, 64), lrs=(3e-3, 1e-2), shared_lr=3e-3, seeds=2),
    "full": Profile(model={"model.n_layer": 4, "model.n_head": 4, "model.n_embd": 128, "model.block_size": 64,
                           "model.bias": False},
                    base_train={"train.max_steps": 1500, "train.batch_size": 32, "train.lr": 3e-3,
                                "train.min_lr": 3e-4, "train.warmup_steps": 100, "train.eval_every": 250,
                                "train.eval_batches": 20, "train.weight_decay": 0.1},
                    finetune={"train.max_steps": 150, "train.batch_size": 32, "train.warmup_steps": 15,
                              "train.eval_every": 25, "train.eval_batches": 20, "train.checkpoint_every": 50,
                              "train.log_every": 25, "train.weight_decay": 0.0},
                    ranks=(1, 4, 16, 64, 256), lrs=(1e-3, 3e-3, 1e-2), shared_lr=3e-3, seeds=5),
}


def lr_name(lr: float) -> str:
    return f"lr{lr:g}"


class LoraRankLesson(Lesson):
    name = "lora-rank"
    title = "LoRA vs rsLoRA across ranks"
    question = ("With LoRA the update is scaled by alpha/r, so as the rank grows the update and its gradient signal "
                "shrink; rank-stabilized LoRA scales by alpha/sqrt(r). Does fine-tuning keep improving with rank "
                "under each? A base model pretrained on Shakespeare's plays is fine-tuned on his sonnets and poems "
                f"(alpha = {ALPHA:g}) at each rank, with full fine-tuning as the reference, at three learning rates "
                "(one shared setting, and each method's best rate from the sweep).")
    table_metrics = (("trainable_parameters", "trainable", "{:,.0f}"), ("delta_norm", "‖ΔW‖", "{:.3f}"),
                     ("start_grad_norm", "start grad", "{:.3g}"))

    def profiles(self) -> dict[str, Grid]:
        grids = {}
        for name, p in PROFILES.items():
            poems = Dataset("shakespeare-poems", "char")
            conditions = tuple(Condition(lr_name(lr), poems, {"train.lr": lr, "train.min_lr": lr / 10},
                                         "shared learning rate" if lr == p.shared_lr else "")
                               for lr in p.lrs)
            grids[name] = Grid(conditions, variants(p.ranks), tuple(range(p.seeds)), {**p.model, **p.finetune})
        return grids

    def comparisons(self) -> list[tuple[str, str]]:
        ranks = sorted({parse_variant(v.name)[1] for g in self.profiles().values() for v in g.variants} - {None})
        return [(f"lora-r{r}", f"rslora-r{r}") for r in ranks]

    # -- shared artifacts: the tokenizer, the two domains, the base model -------------------------------------
    def prepare_data(self, workdir: Path, grid: Grid) -> dict[str, Path]:
        profile = next(p for name, p in PROFILES.items() if dict(self.profiles()[name].base) == dict(grid.base))
        data = workdir / "data"
        if not (data / "all" / "meta.json").is_file():  # one char vocabulary for both domains
            prepare("shakespeare", data / "all", "char")
        for key, corpus in (("plays", "shakespeare-plays"), ("poems", "shakespeare-poems")):
            if not (data / key / "meta.json").is_file():
                prepare(corpus, data / key, tokenizer_from=data / "all" / "tokenizer")
        base = workdir / "base"
        cfg = build_config(overrides=as_overrides({**profile.model, **profile.base_train}))
        last = base / "checkpoints" / "last.json"
        if is_run(base) and not last.is_file():  # killed before its first checkpoint
            shutil.rmtree(base)
        if not is_run(base):
            print(f"pretraining the base model on the plays into {base} ...", flush=True)
            train(data / "plays", base, cfg)
        elif json.loads(last.read_text())["step"] < cfg.train.max_steps:
            resume_run(base)
        return {grid.conditions[0].dataset.key: data / "poems"}

    # -- one fine-tuning cell ----------------------------------------------------------------------------------
    def run_cell(self, cell: Cell, cell_dir: Path, data: TokenData, resume: bool, workdir: Path) -> dict[str, Any]:
        base_model, _, _ = load_model(workdir / "base", "best")
        base = model_state(base_model)
        trainer = Trainer(cell_dir, cell.config, data, resume=resume, progress=False, quiet=True,
                          init_state=None if resume else base, info={"init_from": str(workdir / "base")})
        start_file = cell_dir / "start.json"
        if not resume or not start_file.is_file():
            start_file.write_text(json.dumps({"start_grad_norm": start_grad_norm(trainer, data)}))
        trace = cell_dir / "delta.jsonl"
        every = cell.config.train.eval_every

        def on_step(step: int, loss: float) -> None:
            if step % every == 0:
                record = {"step": step, "delta_norm": total_delta(trainer.model, base),
                          "per_layer": update_norms(trainer.model)}
                with trace.open("a") as f:
                    f.write(json.dumps(record) + "\n")

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
        from gptlab.lab.report import Block

        analysis = analyse(results, self.metric)
        if analysis is None:
            return []
        plot_rank(results, analysis, directory / "loss_vs_rank.png", directory / "delta_vs_rank.png")
        blocks = [Block("h2", "Learning rates"),
                  Block("p", "Mean final val loss over every rank and seed, per method and learning rate; the "
                             "tuned rate of a method is its lowest (chosen on these runs, the same way for each).")]
        rows = [["method"] + [lr_name(lr) for lr in analysis["lrs"]] + ["tuned"]]
        for method in ("lora", "rslora", FULL):
            rows.append([method] + [f"{analysis['lr_means'][method].get(lr, math.nan):.4f}" for lr in analysis["lrs"]]
                        + [lr_name(analysis["tuned"][method])])
        blocks.append(Block("table", items=rows))
        blocks.append(Block("h2", "The trend with rank"))
        blocks.append(Block("p", "Slope of final val loss against log2(rank) (all ranks and seeds, one intercept "
                                 "per seed since a seed fixes the batches; negative = higher ranks fine-tune "
                                 "better), at the shared rate and at each method's tuned rate. "
                                 "Gradient slope: log start-gradient-norm of the adapters against log rank (theory: "
                                 "-0.5 for LoRA, 0 for rsLoRA)."))
        rows = [["method", "learning rate", "slope per doubling of r", "95 % CI", "p", "verdict",
                 "gradient slope"]]
        for method in ("lora", "rslora"):
            for label, lr in (("shared", analysis["shared_lr"]), ("tuned", analysis["tuned"][method])):
                t = analysis["trends"][(method, lr)]
                rows.append([method, f"{label} ({lr:g})", f"{t.slope:+.4f}", f"{t.ci_low:+.4f} to {t.ci_high:+.4f}",
                             "n/a" if math.isnan(t.p) else f"{t.p:.3g}", trend_words(t),
                             f"{analysis['grad_slopes'][(method, lr)]:+.2f}"])
        blocks.append(Block("table", items=rows))
        blocks.append(Block("img", "loss_vs_rank.png", items=["final val loss against rank"]))
        blocks.append(Block("img", "delta_vs_rank.png", items=["size of the update against rank"]))
        return blocks

    def discussion(self, results) -> list[str]:
        analysis = analyse(results, self.metric)
        if analysis is None:
            return []
        text = []
        for method in ("lora", "rslora"):
            t_shared = analysis["trends"][(method, analysis["shared_lr"])]
            t_tuned = analysis["trends"][(method, analysis["tuned"][method])]
            text.append(f"{method}: at the shared rate, {trend_words(t_shared)} ({t_shared.slope:+.4f} per doubling); "
                        f"at its tuned rate {analysis['tuned'][method]:g}, {trend_words(t_tuned)} "
                        f"({t_tuned.slope:+.4f}).")
        full = analysis["full_mean"]
        best = {m: min(analysis["rank_means"][(m, analysis["tuned"][m])].items(), key=lambda kv: kv[1])
                for m in ("lora", "rslora")}
        text.append(f"Full fine-tuning at its tuned rate reaches {full:.4f}; the best LoRA arm {best['lora'][1]:.4f} "
                    f"(r = {best['lora'][0]}), the best rsLoRA arm {best['rslora'][1]:.4f} (r = {best['rslora'][0]}).")
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


def analyse(results, metric: str) -> dict | None:
    cells = [c for c in results.cells if c.summary.get("scaling")]
    if not cells:
        return None
    lrs = sorted({c.summary["lr"] for c in cells})
    lr_means, rank_means, trends, grad_slopes = {}, {}, {}, {}
    for method in ("lora", "rslora", FULL):
        lr_means[method] = {}
        for lr in lrs:
            arm = [c for c in cells if c.summary["scaling"] == method and c.summary["lr"] == lr]
            if arm:
                lr_means[method][lr] = float(np.mean([c.summary[metric] for c in arm]))
                if method != FULL:
                    ranks = sorted({c.summary["rank"] for c in arm})
                    rank_means[(method, lr)] = {r: float(np.mean([c.summary[metric] for c in arm
                                                                  if c.summary["rank"] == r])) for r in ranks}
                    trends[(method, lr)] = stats.trend([math.log2(c.summary["rank"]) for c in arm],
                                                       [c.summary[metric] for c in arm], groups=[c.seed for c in arm])
                    g = [(math.log(c.summary["rank"]), math.log(c.summary["start_grad_norm"])) for c in arm]
                    grad_slopes[(method, lr)] = float(np.polyfit(*zip(*g), 1)[0]) if len(ranks) > 1 else math.nan
    tuned = {m: min(v, key=v.get) for m, v in lr_means.items() if v}
    shared = next((float(c["name"][2:]) for c in results.meta["grid"]["conditions"]
                   if c.get("label") == "shared learning rate"), lrs[0])
    full = [c.summary[metric] for c in cells if c.summary["scaling"] == FULL and c.summary["lr"] == tuned.get(FULL)]
    return {"lrs": lrs, "lr_means": lr_means, "rank_means": rank_means, "trends": trends, "grad_slopes": grad_slopes,
            "tuned": tuned, "shared_lr": shared, "full_mean": float(np.mean(full)) if full else math.nan,
            "full_values": full}


def plot_rank(results, analysis: dict, loss_png: Path, delta_png: Path) -> None:
    import matplotlib.pyplot as plt

    from gptlab.io import atomic_write

    cells = [c for c in results.cells if c.summary.get("scaling")]
    colors = {"lora": "tab:blue", "rslora": "tab:orange"}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=110, sharey=True)
    for ax, label in zip(axes, ("shared", "tuned")):
        for method in ("lora", "rslora"):
            lr = analysis["shared_lr"] if label == "shared" else analysis["tuned"][method]
            ranks = sorted(analysis["rank_means"].get((method, lr), {}))
            summaries = [stats.summarize([c.summary["val_loss"] for c in cells if c.summary["scaling"] == method
                                          and c.summary["lr"] == lr and c.summary["rank"] == r]) for r in ranks]
            mean = np.array([s.mean for s in summaries])
            low = np.array([s.ci_low if not math.isnan(s.ci_low) else s.mean for s in summaries])
            high = np.array([s.ci_high if not math.isnan(s.ci_high) else s.mean for s in summaries])
            ax.plot(ranks, mean, "o-", color=colors[method], label=f"{method} (lr {lr:g})")
            ax.fill_between(ranks, low, high, color=colors[method], alpha=0.2, lw=0)
        lr_full = analysis["shared_lr"] if label == "shared" else analysis["tuned"].get(FULL)
        full = stats.summarize([c.summary["val_loss"] for c in cells if c.summary["scaling"] == FULL
                                and c.summary["lr"] == lr_full])
        if full.n:
            ax.axhline(full.mean, color="k", ls="--", lw=1, label=f"full fine-tuning (lr {lr_full:g})")
            if not math.isnan(full.ci_low):
                ax.axhspan(full.ci_low, full.ci_high, color="k", alpha=0.08)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("rank r")
        ax.set_title(f"{label} learning rate", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("final val loss (poems)")
    fig.suptitle("Fine-tuning loss against rank (mean, 95 % CI over seeds)", fontsize=11)
    fig.tight_layout()
    atomic_write(loss_png, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    lr = analysis["shared_lr"]
    for method in ("lora", "rslora"):
        ranks = sorted(analysis["rank_means"].get((method, lr), {}))
        means = [np.mean([c.summary["delta_norm"] for c in cells if c.summary["scaling"] == method
                          and c.summary["lr"] == lr and c.summary["rank"] == r]) for r in ranks]
        ax.plot(ranks, means, "o-", color=colors[method], label=method)
    full = [c.summary["delta_norm"] for c in cells if c.summary["scaling"] == FULL and c.summary["lr"] == lr]
    if full:
        ax.axhline(np.mean(full), color="k", ls="--", lw=1, label="full fine-tuning")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("rank r")
    ax.set_ylabel("‖ΔW‖ after fine-tuning (all adapted layers)")
    ax.set_title(f"Size of the update (shared lr {lr:g})", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(delta_png, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)
