"""`gptlab bench train`: training tokens/s and MFU, against the fp32 matmul peak (and transformers) measured in
the same run. Random tokens stand in for data: speed does not depend on the text.

Default shape: GPT-2 124M at batch 4 × 256 tokens (override with --set / --config).
"""

from __future__ import annotations

import json
import time

import torch

from gptlab.allocator import minor_faults, retain_freed_memory
from gptlab.bench.breakdown import PROFILED_STEPS, format_breakdown, step_breakdown
from gptlab.bench.hardware import matmul_peak, synchronize
from gptlab.config import RunConfig, build_config
from gptlab.io import atomic_write_text
from gptlab.model import GPT, count_parameters, flops_per_token
from gptlab.train.distributed import set_threads
from gptlab.train.loop import check_device, optimizer_step
from gptlab.train.optim import build_optimizer

BENCH_DEFAULTS = ["model.block_size=256", "train.batch_size=4"]


def _time_steps(step_fn, steps: int, warmup: int, device: str = "cpu") -> tuple[float, float]:
    """Seconds for `steps` steps after `warmup`, and the minor page faults per timed step."""
    for _ in range(warmup):
        step_fn()
    synchronize(device)
    f0, t0 = minor_faults(), time.perf_counter()
    for _ in range(steps):
        step_fn()
    synchronize(device)
    return time.perf_counter() - t0, (minor_faults() - f0) / steps


def time_gptlab(cfg: RunConfig, steps: int, warmup: int, breakdown: bool = False) -> dict:
    device = cfg.train.device
    torch.manual_seed(0)
    model = GPT(cfg.model).to(device).train()
    opt = build_optimizer(model, cfg.train)
    runner = torch.compile(model) if cfg.train.compile else model  # as the trainer runs it (warmup compiles)
    B, T, V = cfg.train.batch_size, cfg.model.block_size, cfg.model.vocab_size

    def step():
        batches = [(torch.randint(V, (B, T), device=device), torch.randint(V, (B, T), device=device))
                   for _ in range(cfg.train.grad_accum)]
        optimizer_step(runner, opt, batches, cfg.train, cfg.train.lr)

    seconds, faults = _time_steps(step, steps, warmup, device)
    tokens = steps * B * T * cfg.train.grad_accum
    return {"tokens_per_s": tokens / seconds, "faults_per_step": faults, "flops_per_token": flops_per_token(model, T),
            "parameters": count_parameters(model), "breakdown": step_breakdown(step) if breakdown else None}


def time_transformers(cfg: RunConfig, steps: int, warmup: int, breakdown: bool = False) -> dict:
    from gptlab.interop.hf import hf_config, quiet_transformers

    quiet_transformers()
    from transformers import GPT2LMHeadModel

    m, device = cfg.model, cfg.train.device
    torch.manual_seed(0)
    model = GPT2LMHeadModel(hf_config(m, None, attn_implementation="sdpa")).to(device).train()
    t = cfg.train
    opt = torch.optim.AdamW(model.parameters(), lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps,
                            weight_decay=t.weight_decay, foreach=True)
    B, T, V = t.batch_size, m.block_size, m.vocab_size
    dtype = torch.bfloat16 if t.dtype == "bfloat16" else None

    def step():
        for _ in range(t.grad_accum):
            x = torch.randint(V, (B, T), device=device)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=dtype is not None):
                loss = model(input_ids=x, labels=x).loss / t.grad_accum
            loss.backward()
        if t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    seconds, faults = _time_steps(step, steps, warmup, device)
    return {"tokens_per_s": steps * B * T * t.grad_accum / seconds, "faults_per_step": faults,
            "breakdown": step_breakdown(step) if breakdown else None}


def bench_train(config_file: str | None, overrides: list[str], steps: int, warmup: int, vs: str | None,
                json_out: str | None, breakdown: bool = False) -> dict:
    cfg = build_config(config_file, BENCH_DEFAULTS + list(overrides))
    check_device(cfg.train.device)
    threads = set_threads(cfg.train.threads)
    retained = retain_freed_memory()  # as in training; it holds for transformers' steps too (one process)
    peak = matmul_peak(device=cfg.train.device)
    ours = time_gptlab(cfg, steps, warmup, breakdown)
    mfu = ours["tokens_per_s"] * ours["flops_per_token"] / peak
    result = {"bench": "train", "device": cfg.train.device, "threads": threads, "dtype": cfg.train.dtype, "parameters": ours["parameters"],
              "batch": cfg.train.batch_size, "block_size": cfg.model.block_size,
              "fp32_matmul_peak_gflops": peak / 1e9, "gptlab_tokens_per_s": ours["tokens_per_s"], "gptlab_mfu": mfu,
              "freed_memory_retained": retained, "gptlab_faults_per_step": ours["faults_per_step"]}
    m = cfg.model
    print(f"shape: {m.n_layer} layers, {m.n_head} heads, d {m.n_embd}, vocab {m.vocab_size}, "
          f"{ours['parameters'] / 1e6:.1f}M parameters; batch {cfg.train.batch_size} × {m.block_size}, "
          f"{cfg.train.dtype}, {threads} threads" + (", torch.compile" if cfg.train.compile else "")
          + (", on the GPU" if cfg.train.device == "cuda" else "")
          + ("" if retained else "; freed memory goes back to the system (GPTLAB_MALLOC=system or not glibc)"))
    print(f"fp32 matmul peak (2048², same run): {peak / 1e9:8.1f} GFLOP/s")
    print(f"gptlab:        {ours['tokens_per_s']:10,.0f} tokens/s   MFU {100 * mfu:5.1f} % of that peak   "
          f"{ours['faults_per_step']:9,.0f} page faults per step")
    theirs = None
    if vs == "transformers":
        theirs = time_transformers(cfg, steps, warmup, breakdown)
        ratio = ours["tokens_per_s"] / theirs["tokens_per_s"]
        result.update({"transformers_tokens_per_s": theirs["tokens_per_s"], "ratio_vs_transformers": ratio,
                       "transformers_faults_per_step": theirs["faults_per_step"]})
        print(f"transformers:  {theirs['tokens_per_s']:10,.0f} tokens/s   gptlab / transformers = {ratio:.2f}×   "
              f"{theirs['faults_per_step']:9,.0f} page faults per step")
    if breakdown:
        result.update(_print_breakdown(ours, theirs, cfg.train.batch_size * m.block_size * cfg.train.grad_accum))
    print(json.dumps(result))
    if json_out:
        atomic_write_text(json_out, json.dumps(result, indent=2) + "\n")
    return result


def _print_breakdown(ours: dict, theirs: dict | None, tokens_per_step: int) -> dict:
    """The table of where a step's time goes, and how far removing everything but the matrix products could take
    the ratio: the baseline's timed step over gptlab's matrix products alone."""
    columns = {"gptlab": ours["breakdown"]} | ({"transformers": theirs["breakdown"]} if theirs else {})
    print(f"where a step's time goes (torch.profiler self time, ms per step, {PROFILED_STEPS} profiled steps each):")
    for row in format_breakdown(columns):
        print("  " + row)
    products = ours["breakdown"]["matrix products"]
    share = products / sum(ours["breakdown"].values())
    print(f"matrix products are {100 * share:.0f} % of gptlab's profiled step", end="")
    extra = {"breakdown_ms_per_step": {side: {k: 1e3 * v for k, v in col.items()} for side, col in columns.items()},
             "matrix_product_share": share}
    if theirs:
        ceiling = tokens_per_step / theirs["tokens_per_s"] / products
        extra["ratio_ceiling_vs_transformers"] = ceiling
        print(f"; with nothing else in it, gptlab's step would run at most {ceiling:.2f}× transformers' "
              "(its timed step ÷ gptlab's matrix products)", end="")
    print()
    return extra
