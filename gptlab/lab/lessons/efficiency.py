"""Lesson 6: computational efficiency — what each speed technique buys on this machine, and what it costs.

One model and budget; each variant switches one technique relative to the baseline (fp32, fused attention,
eager, one micro-batch, no checkpointing, one process): bf16 autocast, the manual attention path, torch.compile,
gradient accumulation (same global batch in 4 micro-batches), activation checkpointing, and data parallelism
over 2 processes (torchrun, gloo). Each cell records steady-state training tokens/s, MFU against the fp32
matmul peak measured in the cell, the memory autograd holds for backward, and the val loss after the budget, so
"no quality loss" is a tested claim. The baseline cells also time decoding with and without the KV cache.

Timings are only comparable when nothing else runs: run this lesson with --jobs 1.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gptlab.bench.hardware import matmul_peak
from gptlab.config import save_yaml
from gptlab.data import TokenData, eval_batches
from gptlab.evaluate import evaluate
from gptlab.generate import generate
from gptlab.lab import stats
from gptlab.lab.grid import Cell, Condition, Dataset, Grid, Variant
from gptlab.lab.lesson import Lesson
from gptlab.model import GPT, flops_per_token
from gptlab.run import load_model
from gptlab.train.efficiency import checkpoint_blocks, saved_bytes
from gptlab.train.losses import lm_loss
from gptlab.train.loop import Trainer, autocast
from gptlab.train.metrics import read_metrics

BASELINE = "baseline"


def variants(batch: int) -> tuple[Variant, ...]:
    return (Variant(BASELINE, {}, "fp32, fused attention (sdpa), eager, 1 micro-batch, 1 process"),
            Variant("bf16", {"train.dtype": "bfloat16"}, "bf16 autocast (weights stay fp32)"),
            Variant("manual-attn", {"model.attention": "manual"}, "attention spelled out (scores materialised)"),
            Variant("compile", {"train.compile": True}, "torch.compile of the training model"),
            Variant("accum4", {"train.batch_size": batch // 4, "train.grad_accum": 4},
                    "the same global batch as 4 accumulated micro-batches"),
            Variant("checkpointing", {"train.activation_checkpointing": True}, "activation checkpointing per block"),
            Variant("ddp2", {}, "2 processes, data parallel (torchrun, gloo), 1 thread each"))


FULL = {"model.n_layer": 4, "model.n_head": 4, "model.n_embd": 128, "model.block_size": 128, "model.bias": False,
        "train.batch_size": 16, "train.max_steps": 200, "train.warmup_steps": 20, "train.lr": 3e-3,
        "train.min_lr": 3e-4, "train.eval_every": 100, "train.eval_batches": 20, "train.checkpoint_every": 100,
        "train.log_every": 20}
QUICK = {"model.n_layer": 1, "model.n_head": 2, "model.n_embd": 32, "model.block_size": 32, "model.bias": False,
         "train.batch_size": 8, "train.max_steps": 12, "train.warmup_steps": 2, "train.lr": 3e-3,
         "train.min_lr": 3e-4, "train.eval_every": 6, "train.eval_batches": 2, "train.checkpoint_every": 6,
         "train.log_every": 3}
DECODE_REPEATS = 3
EVAL_WINDOWS_FULL, EVAL_WINDOWS_QUICK = 256, 16


class EfficiencyLesson(Lesson):
    name = "efficiency"
    title = "computational efficiency"
    question = ("Which speed techniques pay on this machine, and do any cost quality? Each variant switches one "
                "technique on the same model, data and budget: bf16 autocast, manual (unfused) attention, "
                "torch.compile, gradient accumulation, activation checkpointing, and 2-process data parallelism. "
                "Recorded: steady training tokens/s, MFU, memory held for backward, and the val loss after the "
                "budget with seeds; the baseline also times decoding with and without the KV cache. Timings need "
                "an otherwise idle machine (--jobs 1).")
    table_metrics = (("steady_tokens_per_s", "tokens/s", "{:,.0f}"), ("mfu", "MFU", "{:.1%}"),
                     ("saved_mb", "held for backward (MB)", "{:.1f}"), ("compile_s", "first step (s)", "{:.1f}"))

    def profiles(self) -> dict[str, Grid]:
        text = Dataset("shakespeare", "char")
        return {"quick": Grid((Condition("char", text, {}, "char Shakespeare"),), variants(QUICK["train.batch_size"]),
                              (0, 1), QUICK),
                "full": Grid((Condition("char", text, {}, "char Shakespeare"),), variants(FULL["train.batch_size"]),
                             tuple(range(5)), FULL)}

    def comparisons(self) -> list[tuple[str, str]]:
        return [(BASELINE, v.name) for v in variants(8) if v.name != BASELINE]

    def run_cell(self, cell: Cell, cell_dir: Path, data: TokenData, resume: bool, workdir: Path) -> dict[str, Any]:
        cfg = cell.config
        peak = matmul_peak(2048)
        if cell.variant.name == "ddp2":
            summary = run_ddp(cell, cell_dir, data, resume)
        else:
            summary = Trainer(cell_dir, cfg, data, resume=resume, progress=False, quiet=True).run()
        records = [r for r in read_metrics(cell_dir / "metrics.jsonl") if r.get("tokens_per_s")]
        steady = [r["tokens_per_s"] for r in records[1:]] or [r["tokens_per_s"] for r in records]
        summary["steady_tokens_per_s"] = statistics.median(steady) if steady else None
        summary["compile_s"] = first_window_seconds(records, cfg)
        model, _, _ = load_model(cell_dir, "last")
        fpt = flops_per_token(model, cfg.model.block_size)
        summary["mfu"] = summary["steady_tokens_per_s"] * fpt / peak if summary["steady_tokens_per_s"] else None
        summary["fp32_peak_gflops"] = peak / 1e9
        summary["saved_mb"] = held_for_backward(cell, data) / 1e6
        # every variant is judged on the same validation windows (the training loop's own evaluation draws its
        # windows in batches of train.batch_size, which accumulation changes)
        summary["loop_val_loss"] = summary.get("val_loss")
        windows = EVAL_WINDOWS_FULL if cfg.model.n_embd >= 64 else EVAL_WINDOWS_QUICK
        summary["val_loss"] = evaluate(model, data.val, cfg.model.block_size, max_windows=windows).loss
        if cell.variant.name == BASELINE:
            summary["decode"] = decode_speeds(model, cfg.model.block_size)
        return summary

    def extra_blocks(self, results, directory: Path) -> list:
        from gptlab.document import Block

        cells = [c for c in results.cells if c.variant == BASELINE and c.summary.get("decode")]
        blocks = []
        base = results.summary("char", BASELINE, "steady_tokens_per_s")
        if base.n:
            rows = [["variant", "tokens/s", "speed-up vs baseline", "MFU", "held for backward (MB)",
                     "memory vs baseline", "Δ val loss (Holm-consistent CI)"]]
            base_mem = np.mean(results.values("char", BASELINE, "saved_mb"))
            comparisons = dict((c.b, c) for _, c in results.compare(self.comparisons(), self.metric,
                                                                    self.equivalence_margin))
            for v in results.variants:
                tps = results.summary("char", v, "steady_tokens_per_s")
                if not tps.n:
                    continue
                mem = np.mean(results.values("char", v, "saved_mb"))
                c = comparisons.get(v)
                loss = "—" if c is None else f"{c.diff:+.4f} ({c.ci_low:+.4f} to {c.ci_high:+.4f}; {stats.outcome(c)})"
                rows.append([v, f"{tps.mean:,.0f}", f"{tps.mean / base.mean:.2f}×",
                             f"{np.mean(results.values('char', v, 'mfu')):.1%}", f"{mem:.1f}",
                             f"{mem / base_mem:.2f}×", loss])
            blocks += [Block("h2", "Speed, memory and quality per technique"),
                       Block("p", "Mean over seeds. Speed-up = steady tokens/s (median of the logged windows after "
                                  "the first, which holds compilation) over the baseline's; MFU against the fp32 "
                                  "matmul peak measured in each cell; memory = bytes autograd holds for backward "
                                  "after one forward of a training batch; Δ val loss = variant − baseline after the "
                                  "same budget (paired by seed id, Holm-consistent CI): lower / higher, equivalent "
                                  f"within ±{self.equivalence_margin:g} (TOST), or inconclusive at these seeds."),
                       Block("table", items=rows)]
            plot_speed(results, directory / "speed.png")
            blocks.append(Block("img", "speed.png", items=["tokens/s and memory per technique"]))
        if cells:
            lengths = sorted({int(k) for c in cells for k in c.summary["decode"]})
            rows = [["tokens generated", "with KV cache (tokens/s)", "without (tokens/s)", "speed-up", "same tokens"]]
            for n in lengths:
                w = [c.summary["decode"][str(n)]["cache"] for c in cells]
                wo = [c.summary["decode"][str(n)]["no_cache"] for c in cells]
                same = all(c.summary["decode"][str(n)]["same"] for c in cells)
                rows.append([str(n), f"{np.mean(w):,.0f}", f"{np.mean(wo):,.0f}", f"{np.mean(w) / np.mean(wo):.1f}×",
                             "yes" if same else "no"])
            blocks += [Block("h2", "KV cache"),
                       Block("p", "Batch-1 greedy decoding from a one-token prompt with the trained baseline model, "
                                  f"best of {DECODE_REPEATS}, mean over seeds: each step without the cache re-reads "
                                  "the whole prefix, so the gap grows with length."),
                       Block("table", items=rows)]
        return blocks


def first_window_seconds(records: list[dict], cfg) -> float | None:
    """Seconds of the first logged window (holds compilation when compiling)."""
    if not records:
        return None
    return records[0]["step"] * cfg.train.batch_size * cfg.train.grad_accum * cfg.model.block_size / \
        records[0]["tokens_per_s"]


def held_for_backward(cell: Cell, data: TokenData) -> int:
    """Bytes autograd keeps after one forward of a training micro-batch of this cell's settings."""
    cfg = cell.config
    torch.manual_seed(0)
    model = GPT(cfg.model)
    if cfg.train.activation_checkpointing:
        checkpoint_blocks(model)
    rows = cfg.train.batch_size // (2 if cell.variant.name == "ddp2" else 1)
    x, y = next(iter(eval_batches(data.train, 1, rows, cfg.model.block_size, seed=0)))

    def step():
        with autocast(cfg.train):
            return lm_loss(model(x), y)

    return saved_bytes(step)


def decode_speeds(model: GPT, block: int) -> dict[str, dict]:
    out = {}
    for n in (block // 4, block // 2, block - 1):
        times, tokens = {}, {}
        for use_cache in (True, False):
            best = float("inf")
            for _ in range(DECODE_REPEATS):
                t0 = time.perf_counter()
                tokens[use_cache] = list(generate(model, [0], n, temperature=0.0, use_cache=use_cache))
                best = min(best, time.perf_counter() - t0)
            times[use_cache] = best
        out[str(n)] = {"cache": n / times[True], "no_cache": n / times[False], "same": tokens[True] == tokens[False]}
    return out


def run_ddp(cell: Cell, cell_dir: Path, data: TokenData, resume: bool) -> dict[str, Any]:
    """The cell trained by 2 processes under torchrun; the summary is read back from its files."""
    from gptlab.config import apply_overrides

    threads = max(1, cell.config.train.threads // 2)
    cfg = apply_overrides(cell.config, [f"train.threads={threads}"])
    config = cell_dir / "ddp-config.yaml"
    save_yaml(cfg, config)
    base = [sys.executable, "-m", "gptlab", "train", "--nproc", "2"]
    cmd = base + (["--resume", str(cell_dir)] if resume else
                  ["--data", str(data.directory), "--out", str(cell_dir), "--config", str(config)])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    for attempt in range(2):  # a rendezvous can fail to start (a port taken at the wrong moment): once more
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode == 0:
            break
        if (cell_dir / "checkpoints" / "last.json").is_file():
            cmd = base + ["--resume", str(cell_dir)]
        else:  # nothing worth keeping yet: start the cell's run again
            for name in ("config.yaml", "run.json", "metrics.jsonl"):
                (cell_dir / name).unlink(missing_ok=True)
            shutil.rmtree(cell_dir / "tokenizer", ignore_errors=True)
            shutil.rmtree(cell_dir / "checkpoints", ignore_errors=True)
    if done.returncode != 0:
        from gptlab.errors import GptlabError

        (cell_dir / "ddp.log").write_text(done.stdout + done.stderr)
        lines = [l for l in (done.stderr or done.stdout).splitlines() if "error" in l.lower()]
        tail = lines[-1:] or ["no output"]
        raise GptlabError(f"2-process training of {cell.name} failed: {tail[0]}")
    records = read_metrics(cell_dir / "metrics.jsonl")
    vals = [r["val_loss"] for r in records if r.get("val_loss") is not None]
    steps = [r for r in records if "loss" in r]
    return {"step": steps[-1]["step"], "final_loss": steps[-1]["loss"], "val_loss": vals[-1],
            "best_val_loss": min(vals), "elapsed_s": steps[-1]["elapsed"], "threads": threads, "processes": 2,
            "attempts": attempt + 1}


def plot_speed(results, path: Path) -> None:
    import matplotlib.pyplot as plt

    from gptlab.lab.plots import write_figure

    variants_ = [v for v in results.variants if results.values("char", v, "steady_tokens_per_s")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), dpi=110)
    for ax, key, label in ((axes[0], "steady_tokens_per_s", "training tokens/s"),
                           (axes[1], "saved_mb", "MB held for backward")):
        means = [np.mean(results.values("char", v, key)) for v in variants_]
        errs = []
        for v in variants_:
            s = results.summary("char", v, key)
            errs.append(0 if np.isnan(s.ci_low) else s.half_width)
        ax.bar(range(len(variants_)), means, yerr=errs, capsize=3, color="tab:blue", alpha=0.8)
        ax.set_xticks(range(len(variants_)), variants_, rotation=25, ha="right", fontsize=8)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle("Speed and memory per technique (mean, 95 % CI over seeds)", fontsize=11)
    write_figure(fig, path)
