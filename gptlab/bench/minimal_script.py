"""The well-known minimal GPT training script (nanoGPT), run from a checkout the user has, on its own Tiny
Shakespeare CPU recipe, timed as a whole process: its data preparation and its training, evaluations included.

gptlab ships none of its code: `bench time-to-loss --vs-script DIR` copies the files the recipe needs from DIR into
a temporary folder, puts the Tiny Shakespeare text where its preparation step looks first (so nothing is
downloaded), and runs the two commands its README gives for a CPU.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gptlab.errors import GptlabError

NEEDED = ("train.py", "model.py", "configurator.py", "config/train_shakespeare_char.py",
          "data/shakespeare_char/prepare.py")
# The CPU recipe of its README: 4 layers, 4 heads, d 128, block 64, batch 12, 2000 iterations, lr decay over them,
# no dropout, evaluations over 20 batches, no compile.
CPU_RECIPE = ("--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1", "--block_size=64",
              "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", "--max_iters=2000",
              "--lr_decay_iters=2000", "--dropout=0.0")
EVAL_LINE = re.compile(r"step (\d+): train loss ([\d.]+), val loss ([\d.]+)")
ITER_LINE = re.compile(r"iter (\d+): loss [\d.]+, time ([\d.]+)ms")


def check_checkout(checkout: Path) -> None:
    missing = [name for name in NEEDED if not (checkout / name).is_file()]
    if missing:
        raise GptlabError(f"--vs-script {checkout} is not a checkout of the minimal GPT script (nanoGPT): "
                          f"{', '.join(missing)} missing; give the folder that holds its train.py")


def parse_log(text: str) -> dict:
    """Its final evaluation (step, val loss) and its iteration times, from what train.py prints."""
    evals = [(int(s), float(v)) for s, _, v in EVAL_LINE.findall(text)]
    if not evals:
        raise GptlabError("the minimal GPT script printed no 'step N: train loss …, val loss …' line; "
                          "its output format is not the one this benchmark reads")
    iter_ms = [float(ms) for it, ms in ITER_LINE.findall(text) if int(it) > 0]  # iteration 0 includes warm-up
    step, val = evals[-1]
    return {"steps": step, "val_loss": val, "ms_per_iter": sorted(iter_ms)[len(iter_ms) // 2] if iter_ms else None}


def _run(cmd: list[str], cwd: Path, threads: int, what: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise GptlabError(f"the minimal GPT script's {what} failed (exit {proc.returncode}): {last}")
    return proc.stdout


def run_minimal_script(checkout: Path, corpus: Path, threads: int) -> dict:
    """Seconds of the whole process (data preparation + training with its evaluations) and its final val loss."""
    check_checkout(checkout)
    with tempfile.TemporaryDirectory(prefix="gptlab-minimal-") as tmp:
        work = Path(tmp)
        for name in NEEDED:
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(checkout / name, work / name)
        shutil.copyfile(corpus, work / "data/shakespeare_char/input.txt")
        print(f"minimal GPT script ({checkout}): preparing the data and training its 2000-iteration CPU recipe …",
              file=sys.stderr)
        t0 = time.perf_counter()
        _run([sys.executable, "data/shakespeare_char/prepare.py"], work, threads, "data preparation")
        log = _run([sys.executable, "train.py", "config/train_shakespeare_char.py", *CPU_RECIPE], work, threads,
                   "training")
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, **parse_log(log)}
