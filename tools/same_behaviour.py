"""Does a refactor change behaviour? Run the same fixed-seed gptlab commands with two checkouts of the code and
compare digests of everything they produce, bit for bit.

    python tools/same_behaviour.py OLD_CHECKOUT NEW_CHECKOUT      (e.g. a `git worktree` of the commit before)

Covered: train (plain, quantization-aware, and a rollback after a non-finite step), LoRA fine-tuning, merge,
quantize, sample and eval. Weights are hashed tensor by tensor from the last checkpoint, metrics without their
timings. Both runs happen on this machine, with one thread, so the digests must agree exactly; prints each
digest and exits 1 on the first difference. Uses the built-in Shakespeare poems as the corpus.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

TINY = ["model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.block_size=32", "train.batch_size=4",
        "train.eval_every=10", "train.eval_batches=2", "train.log_every=1", "train.checkpoint_every=10",
        "train.warmup_steps=2", "train.threads=1"]
TIMINGS = {"time", "elapsed", "tokens_per_s", "step_time", "wall", "seconds"}
ROLLBACK = """
import sys, torch
from gptlab.config import build_config
from gptlab.data import load_data
from gptlab.train.loop import Trainer
trainer = Trainer(sys.argv[2], build_config(overrides=sys.argv[3:]), load_data(sys.argv[1]), progress=False, quiet=True)
def corrupt(step, loss):  # a weight goes bad after step 12: the next loss is NaN and the run rolls back
    if step == 12 and trainer.counts["rollbacks"] == 0:
        with torch.no_grad():
            trainer.model.h[0].mlp.c_fc.weight[0, 0] = float("nan")
trainer.on_step = corrupt
trainer.run()
"""


def sets(items):
    return [a for t in items for a in ("--set", t)]


def weights(run: Path) -> str:
    from safetensors.numpy import load_file

    files = sorted(f for f in (run / "checkpoints").rglob("*.safetensors") if f.parent.name not in ("best", "last"))
    tensors = load_file(files[-1])
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].tobytes())
    return f"{files[-1].parent.name} {h.hexdigest()[:16]}"


def metrics(run: Path) -> str:
    records = [{k: v for k, v in json.loads(line).items() if k not in TIMINGS}
               for line in (run / "metrics.jsonl").read_text().splitlines()]
    return hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest()[:16]


def digests(code: Path, out: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}

    def run(*argv) -> str:
        r = subprocess.run([sys.executable, *map(str, argv)], env=env, capture_output=True, text=True, cwd=out)
        if r.returncode:
            sys.exit(f"{code}: {' '.join(map(str, argv))} failed: {r.stderr.strip()[-500:]}")
        return r.stdout

    def gptlab(*argv) -> str:
        return run("-m", "gptlab", *argv)

    data = out / "data"
    gptlab("prepare", "--corpus", "shakespeare-poems", "--out", data)
    gptlab("train", "--data", data, "--out", out / "plain", *sets(TINY + ["train.max_steps=30"]))
    gptlab("train", "--data", data, "--out", out / "qat", *sets(TINY + ["train.max_steps=20", "quant.qat=ste",
                                                                          "quant.bits=4"]))
    run("-c", ROLLBACK, data, out / "rollback", *TINY, "train.max_steps=20", "train.on_nonfinite=rollback",
        "train.checkpoint_every=5", "train.rollback_lr_factor=0.25")
    gptlab("finetune", "--run", out / "plain", "--data", data, "--out", out / "lora",
           *sets(["lora.r=4", "train.max_steps=10", "train.threads=1", "train.eval_every=5", "train.eval_batches=2",
                  "train.checkpoint_every=5"]))
    gptlab("merge", "--run", out / "plain", "--adapter", out / "lora", "--out", out / "merged")
    gptlab("quantize", "--run", out / "plain", "--out", out / "quantized")
    sample = gptlab("sample", "--run", out / "plain", "--max-new-tokens", 50, "--seed", 3, "--prompt", "ROMEO")
    evaluation = gptlab("eval", "--run", out / "plain", "--lengths", "16,32")
    return {"train weights": weights(out / "plain"), "train metrics": metrics(out / "plain"),
            "qat weights": weights(out / "qat"), "qat metrics": metrics(out / "qat"),
            "rollback weights": weights(out / "rollback"), "rollback metrics": metrics(out / "rollback"),
            "lora metrics": metrics(out / "lora"), "merge weights": weights(out / "merged"),
            "quantize weights": weights(out / "quantized"),
            "sample": hashlib.sha256(sample.encode()).hexdigest()[:16],
            "eval": hashlib.sha256(evaluation.encode()).hexdigest()[:16]}


def main() -> int:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    with tempfile.TemporaryDirectory() as tmp:
        for side in ("old", "new"):
            Path(tmp, side).mkdir()
        old = digests(Path(sys.argv[1]).resolve(), Path(tmp, "old"))
        new = digests(Path(sys.argv[2]).resolve(), Path(tmp, "new"))
    same = True
    for key in old:
        mark = "same" if old[key] == new[key] else "DIFFERENT"
        same &= old[key] == new[key]
        print(f"{key:18s} {old[key]:28s} {new[key]:28s} {mark}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
