"""`gptlab bench time-to-loss`: training wall time until the Tiny Shakespeare char model reaches a val loss,
for the reference recipe (the minimal GPT script's CPU recipe, run by gptlab) and gptlab's speedrun recipe
(`gptlab/configs/speedrun.yaml`, chosen by lesson 7), side by side in the same run on the same data and the same
validation windows; optionally also the minimal GPT script itself, as a whole process (`--vs-script`).

Validation follows the reference's definition: mean loss over 20 fixed random windows of 12 × 64 tokens from the
last 10 % of the file, checked every `check_every` steps; evaluation time is not counted in the training seconds
(the reference's figure is training time only), and is counted in the whole-process seconds. A recipe reaches the
target at the first check at or below it.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

from gptlab.allocator import retain_freed_memory
from gptlab.config import RunConfig, build_config, to_dict
from gptlab.data import BatchSampler, TokenData, eval_batches, load_data, prepare
from gptlab.errors import GptlabError
from gptlab.io import atomic_write_text
from gptlab.model import GPT
from gptlab.train.distributed import set_threads
from gptlab.train.losses import lm_loss
from gptlab.train.loop import model_config_for, optimizer_step
from gptlab.train.optim import build_optimizer, lr_at

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRESET = CONFIGS / "tinyshakespeare-char.yaml"
RECIPE = CONFIGS / "speedrun.yaml"
TARGET = 1.886  # the reference recipe's final val loss (../shared/REFERENCE.md)
EVAL = {"batches": 20, "batch_size": 12, "block_size": 64, "seed": 1337}
CORPUS_CANDIDATES = ("../shared/data/tinyshakespeare.txt", "shared/data/tinyshakespeare.txt")


def find_corpus(corpus: str | None) -> Path:
    if corpus is not None:
        path = Path(corpus)
        if not path.is_file():
            raise GptlabError(f"--corpus {corpus} is not a file; give the path of tinyshakespeare.txt")
        return path
    for candidate in CORPUS_CANDIDATES:
        if Path(candidate).is_file():
            return Path(candidate)
    raise GptlabError("Tiny Shakespeare not found (looked for ../shared/data/tinyshakespeare.txt); "
                      "give its path with --corpus")


@torch.no_grad()
def reference_val_loss(model: GPT, val) -> float:
    model.eval()
    losses = [lm_loss(model(x), y).item() for x, y in eval_batches(val, EVAL["batches"], EVAL["batch_size"],
                                                                   EVAL["block_size"], EVAL["seed"])]
    model.train()
    return sum(losses) / len(losses)


def time_to_loss(cfg: RunConfig, data: TokenData, target: float, check_every: int, label: str) -> dict:
    """Train `cfg` until the reference val loss ≤ `target` or the schedule ends: training seconds (steps only)
    and wall seconds (model building and the checks too)."""
    start = time.perf_counter()
    cfg = model_config_for(cfg, data)
    torch.manual_seed(cfg.train.seed)
    model = GPT(cfg.model).train()
    optimizer = build_optimizer(model, cfg.train)
    sampler = BatchSampler(data.train, cfg.train.batch_size, cfg.model.block_size, seed=cfg.train.seed)
    t = cfg.train
    seconds, curve, reached = 0.0, [(0, reference_val_loss(model, data.val))], None
    bar = tqdm(total=t.max_steps, desc=label, unit="step", dynamic_ncols=True, file=sys.stderr, leave=False)
    for step in range(t.max_steps):
        t0 = time.perf_counter()
        optimizer_step(model, optimizer, (sampler.next() for _ in range(t.grad_accum)), t, lr_at(step, t), step)
        seconds += time.perf_counter() - t0
        bar.update(1)
        if (step + 1) % check_every == 0 or step + 1 == t.max_steps:
            val = reference_val_loss(model, data.val)
            curve.append((step + 1, val))
            bar.set_postfix(val=f"{val:.4f}", refresh=False)
            if val <= target:
                reached = step + 1
                break
    bar.close()
    tokens = curve[-1][0] * t.batch_size * t.grad_accum * cfg.model.block_size
    return {"recipe": label, "reached": reached is not None, "steps": curve[-1][0], "tokens": tokens,
            "seconds": seconds, "wall_seconds": time.perf_counter() - start, "val_loss": curve[-1][1],
            "tokens_per_s": tokens / seconds if seconds else math.nan, "curve": curve}


def recipe_settings(reference: RunConfig, recipe: RunConfig) -> list[str]:
    """The recipe's settings that differ from the reference's, as `section.key=value`."""
    ref, ours = to_dict(reference), to_dict(recipe)
    return [f"{section}.{key}={value}" for section in ours for key, value in ours[section].items()
            if ref[section][key] != value and key != "threads"]


def ratio(ours: dict, theirs: dict, key: str) -> float:
    """ours / theirs, NaN when ours missed the target (then it has no time to the target)."""
    return ours[key] / theirs[key] if ours["reached"] else math.nan


def process_start_seconds() -> float:
    """Wall seconds for a fresh Python to import this benchmark (and with it torch and gptlab)."""
    import subprocess

    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import gptlab.bench.time_to_loss"], check=True, capture_output=True)
    return time.perf_counter() - t0


def bench_time_to_loss(corpus: str | None, target: float, check_every: int, recipe_file: str | None,
                       overrides: list[str], threads: int, json_out: str | None, vs_script: str | None = None) -> dict:
    if check_every < 1 or not target > 0:
        raise GptlabError("--check-every must be at least 1 and --target above 0")
    path = find_corpus(corpus)
    recipe_path = Path(recipe_file) if recipe_file else RECIPE
    threads = set_threads(threads)
    retain_freed_memory()  # as in training (gptlab.allocator); both recipes run under it
    reference_cfg = build_config(PRESET, [f"train.threads={threads}"])
    recipe_cfg = build_config(recipe_path, [f"train.threads={threads}", *overrides])
    settings = recipe_settings(reference_cfg, recipe_cfg)
    print(f"speedrun recipe ({recipe_path.name}{' with --set' if overrides else ''}): the reference with "
          + (", ".join(settings) or "no change"), file=sys.stderr)
    script = None
    if vs_script:
        from gptlab.bench.minimal_script import run_minimal_script

        script = run_minimal_script(Path(vs_script), path, threads)
    with tempfile.TemporaryDirectory(prefix="gptlab-ttl-") as tmp:
        t0 = time.perf_counter()
        prepare(path, Path(tmp) / "data", "char", val_fraction=0.1)
        data = load_data(Path(tmp) / "data")
        prep_seconds = time.perf_counter() - t0
        print(f"Tiny Shakespeare ({data.meta['train_tokens']:,} train / {data.meta['val_tokens']:,} val characters), "
              f"target val loss ≤ {target} (20 × 12 × 64 fixed windows, checked every {check_every} steps), "
              f"{threads} threads", file=sys.stderr)
        results = [time_to_loss(reference_cfg, data, target, check_every, "reference"),
                   time_to_loss(recipe_cfg, data, target, check_every, "speedrun")]
    # a whole process also starts Python and imports torch: timed here in a fresh interpreter, since this one had
    # already done it when the clock started (the script's own start is inside its measured time)
    start_seconds = process_start_seconds()
    print(f"whole process = Python start and imports {start_seconds:.1f} s + data preparation {prep_seconds:.1f} s + "
          "model building, training and checks", file=sys.stderr)
    for r in results:
        r["whole_seconds"] = start_seconds + prep_seconds + r["wall_seconds"]
        status = f"reached at step {r['steps']}" if r["reached"] else f"NOT reached ({r['steps']} steps)"
        print(f"{r['recipe']:<10} {r['seconds']:7.1f} s training  {r['whole_seconds']:7.1f} s whole process  "
              f"val {r['val_loss']:.4f}  {r['tokens']:>9,} tokens  {r['tokens_per_s']:9,.0f} tokens/s  {status}")
    ref, ours = results
    time_ratio, token_ratio = ratio(ours, ref, "seconds"), ratio(ours, ref, "tokens")
    # a reference that misses the target would need more than its whole schedule: its time and tokens are then
    # lower bounds, and the ratios upper bounds (favourable to the reference)
    bound = "" if ref["reached"] else " at most (the reference missed the target within its schedule)"
    if not ours["reached"]:
        print("no ratio: the speedrun recipe missed the target")
    else:
        print(f"speedrun / reference: training time {time_ratio:.2f}×, tokens {token_ratio:.2f}×{bound}")
    result = {"bench": "time-to-loss", "target": target, "threads": threads, "recipe_file": str(recipe_path),
              "recipe": settings, "reference_seconds": ref["seconds"], "speedrun_seconds": ours["seconds"],
              "time_ratio": time_ratio, "reference_tokens": ref["tokens"], "speedrun_tokens": ours["tokens"],
              "token_ratio": token_ratio, "reference_reached": ref["reached"], "speedrun_reached": ours["reached"],
              "reference_tokens_per_s": ref["tokens_per_s"], "speedrun_tokens_per_s": ours["tokens_per_s"],
              "start_seconds": start_seconds, "data_seconds": prep_seconds,
              "speedrun_whole_seconds": ours["whole_seconds"]}
    if script is not None:
        script_ratio = ours["whole_seconds"] / script["seconds"] if ours["reached"] else math.nan
        short = "" if script["val_loss"] <= target else f" (it ends at val {script['val_loss']:.4f}, above the target: " \
                                                         "its time is a lower bound, the ratio an upper bound)"
        print(f"minimal GPT script, whole process: {script['seconds']:.1f} s, {script['steps']} iterations "
              f"({script['ms_per_iter']} ms median), val {script['val_loss']:.4f} on its own 20 random batches")
        print(f"speedrun whole process / minimal GPT script whole process: {script_ratio:.2f}×{short}")
        result.update({"script_seconds": script["seconds"], "script_val_loss": script["val_loss"],
                       "script_ms_per_iter": script["ms_per_iter"], "script_ratio": script_ratio})
    print(json.dumps(result))
    if json_out:
        atomic_write_text(json_out, json.dumps({**result, "curves": {r["recipe"]: r["curve"] for r in results}},
                                             indent=2) + "\n")
    return result
