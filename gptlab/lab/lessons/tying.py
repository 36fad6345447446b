"""Lesson 3: weight tying — when does sharing the token embedding and the output head help, and when does it hurt?

Three arms per condition: tied; untied (one more V × d matrix); and untied with the width narrowed until the
parameter count matches the tied model, which separates "more parameters" from "shared parameters". The
conditions cross the vocabulary (char, BPE 2k, BPE 8k: the share of parameters in the embeddings grows with it)
with two model sizes, at a fixed token budget.
"""

from __future__ import annotations

import dataclasses

import torch

from gptlab.config import RunConfig
from gptlab.lab import stats
from gptlab.lab.grid import Condition, Dataset, Grid, Variant
from gptlab.lab.lesson import Lesson
from gptlab.lab import scale
from gptlab.model import GPT, count_parameters

VARIANTS = (
    Variant("tied", {"model.tie_embeddings": True}, "head = embedding matrix"),
    Variant("untied", {"model.tie_embeddings": False}, "separate head matrix"),
    Variant("untied-matched", {"model.tie_embeddings": False},
            "separate head, width narrowed to the tied model's parameter count"),
)

# Weight decay off: only an untied head is a decayed Linear, so decay would differ between the arms.
FULL_BASE = {"model.block_size": 64, "model.bias": False, "train.batch_size": 32, "train.max_steps": 300,
             "train.warmup_steps": 30, "train.lr": 3e-3, "train.min_lr": 3e-4, "train.weight_decay": 0.0,
             "train.eval_every": 50, "train.eval_batches": 20, "train.checkpoint_every": 100, "train.log_every": 25}
QUICK_BASE = {"model.block_size": 32, "model.bias": False, "train.batch_size": 8, "train.max_steps": 24,
              "train.warmup_steps": 4, "train.lr": 3e-3, "train.min_lr": 3e-4, "train.weight_decay": 0.0,
              "train.eval_every": 8, "train.eval_batches": 4, "train.checkpoint_every": 8, "train.log_every": 4}

SIZES = {"small": {"model.n_layer": 2, "model.n_head": 4, "model.n_embd": 64},
         "medium": {"model.n_layer": 4, "model.n_head": 4, "model.n_embd": 128}}
# Effect versus scale, on a BPE vocabulary (the question is about real-sized vocabularies): 11× in parameters
# (~90k to ~1.05M with bpe2k), budgets 4× apart that bracket the full profile's 300 steps (at 200 / 800 steps the
# profile would need ~80 min on 2 cores, the largest size and budget most of it). -quick: to try it in seconds.
SCALE_BUDGETS = {"100": 100, "400": 400}
QUICK_SCALE_BUDGETS = {"8": 8, "32": 32}
VOCABS = {"char": Dataset("shakespeare", "char"), "bpe2k": Dataset("shakespeare", "bpe", 2048),
          "bpe8k": Dataset("shakespeare", "bpe", 8192)}


def parameters(cfg: RunConfig) -> int:
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        return count_parameters(GPT(cfg.model))


def matched_width(cfg: RunConfig, target: int) -> int:
    """The width (a multiple of n_head, at most the current one) whose parameter count is closest to `target`."""
    step = cfg.model.n_head
    best = None
    for width in range(step, cfg.model.n_embd + 1, step):
        n = parameters(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, n_embd=width)))
        if best is None or abs(n - target) < abs(best[1] - target):
            best = (width, n)
    return best[0]


class TyingLesson(Lesson):
    name = "tying"
    title = "weight tying"
    question = ("When does sharing one matrix between the token embedding and the output head help, and when does "
                "it hurt? Tied, untied, and untied with the parameter count matched to the tied model (narrower), "
                "across vocabulary sizes (char, BPE 2k, BPE 8k: the embeddings' share of the parameters grows with "
                "the vocabulary) and two model sizes, at a fixed token budget per cell.")
    table_metrics = (("parameters", "parameters", "{:,.0f}"), ("embedding_fraction", "embedding share", "{:.1%}"),
                     ("tokens_per_s", "tokens/s", "{:,.0f}"))

    def profiles(self) -> dict[str, Grid]:
        full = tuple(Condition(f"{vocab}-{size}", dataset, SIZES[size]) for vocab, dataset in VOCABS.items()
                     for size in SIZES)
        quick_data = {"char": Dataset("shakespeare-poems", "char"), "bpe512": Dataset("shakespeare-poems", "bpe", 512)}
        quick = tuple(Condition(f"{vocab}-tiny", dataset, {"model.n_layer": 1, "model.n_head": 2, "model.n_embd": 32})
                      for vocab, dataset in quick_data.items())
        by_size = scale.scale_conditions(VOCABS["bpe2k"], scale.SIZES, SCALE_BUDGETS)
        quick_by_size = scale.scale_conditions(quick_data["bpe512"], scale.QUICK_SIZES, QUICK_SCALE_BUDGETS)
        return {"quick": Grid(quick, VARIANTS, (0, 1), QUICK_BASE),
                "full": Grid(full, VARIANTS, tuple(range(5)), FULL_BASE),
                "scale": Grid(by_size, VARIANTS, tuple(range(5)), FULL_BASE,
                              settings=scale.scale_settings(scale.SIZES, SCALE_BUDGETS)),
                "scale-quick": Grid(quick_by_size, VARIANTS, (0, 1, 2), QUICK_BASE,
                                    settings=scale.scale_settings(scale.QUICK_SIZES, QUICK_SCALE_BUDGETS))}

    def comparisons(self) -> list[tuple[str, str]]:
        return [("tied", "untied"), ("tied", "untied-matched")]

    def configure(self, cfg: RunConfig, condition: Condition, variant: Variant) -> RunConfig:
        if variant.name != "untied-matched":
            return cfg
        tied = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, tie_embeddings=True))
        width = matched_width(cfg, parameters(tied))
        return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, n_embd=width))

    def discussion(self, results) -> list[str]:
        comparisons = results.compare(self.comparisons(), self.metric, self.equivalence_margin)
        kinds: dict[str, list[str]] = {"higher": [], "lower": [], "equivalent": [], "inconclusive": []}
        for condition, c in comparisons:
            # the comparison is tied (baseline) → untied; tying helps when untying raises the loss
            kinds[stats.outcome(c)].append(f"{condition} (vs {c.b}: {c.diff:+.3f})")
        shares = []
        for condition in results.conditions:
            tied = results.values(condition, "tied", "embedding_fraction")
            untied = results.values(condition, "untied", "embedding_fraction")
            if tied and untied:
                shares.append(f"{condition} {tied[0]:.0%} tied / {untied[0]:.0%} untied")
        text = [f"Tying significantly helps (untying raises {self.metric_label}) in: {', '.join(kinds['higher']) or 'none'}. "
                f"Tying significantly hurts (untying lowers it) in: {', '.join(kinds['lower']) or 'none'}. "
                f"Equivalent within ±{self.equivalence_margin:g} in: {', '.join(kinds['equivalent']) or 'none'}. "
                f"Inconclusive at these seeds in: {', '.join(kinds['inconclusive']) or 'none'}. "
                "Differences are mean(untied arm) − mean(tied), one Holm family."]
        if shares:
            text.append("Share of parameters in the embedding tables: " + "; ".join(shares) + ".")
        widths = {c.condition: c.summary.get("parameters") for c in results.cells if c.variant == "untied-matched"}
        tied_params = {c.condition: c.summary.get("parameters") for c in results.cells if c.variant == "tied"}
        if widths and tied_params:
            text.append("Parameter matching (untied-matched vs tied): " + "; ".join(
                f"{k} {widths[k]:,} vs {tied_params[k]:,}" for k in widths if k in tied_params) + ".")
        return text
