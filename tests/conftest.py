"""Shared fixtures: a small synthetic corpus, data directories made from it, tiny model configs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import settings

from gptlab import native
from gptlab.config import RunConfig, build_config
from gptlab.data import prepare

# Tests never reach the network, and two xdist workers on two cores each get one thread.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(1)

# CI checks a fixed, reproducible set of generated examples; local runs keep exploring new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

SHARED = Path(__file__).resolve().parents[2] / "shared"
WORDS = ("the king queen lord lady sword crown night day love death heart speak hath thou thee my our "
         "what shall be not to and of in is it with").split()


def make_text(n_words: int, seed: int) -> str:
    """Pseudo-verse with a learnable structure (capitalised line starts, punctuation, line breaks)."""
    rng = np.random.default_rng(seed)
    lines, line = [], []
    for w in rng.choice(WORDS, size=n_words):
        line.append(str(w))
        if len(line) >= rng.integers(5, 9):
            lines.append(" ".join(line).capitalize() + rng.choice([",", ".", ";", "!"]))
            line = []
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    """Twelve documents: enough for a split by document."""
    d = tmp_path_factory.mktemp("corpus")
    for i in range(12):
        (d / f"work_{i:02d}.txt").write_text(make_text(1500, seed=i), encoding="utf-8")
    return d


@pytest.fixture(scope="session")
def char_data(corpus_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "char"
    prepare(corpus_dir, out, "char")
    return out


TINY = ["model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.block_size=32",
        "train.batch_size=4", "train.max_steps=20", "train.eval_every=10", "train.eval_batches=2",
        "train.log_every=1", "train.checkpoint_every=10", "train.warmup_steps=2", "train.threads=1"]


def tiny_config(*overrides: str) -> RunConfig:
    return build_config(overrides=TINY + list(overrides))


def kernel_for(isa: str):
    """The C++ kernels built for `isa`, every instruction set this CPU runs; a skip naming why not."""
    if isa not in native.supported_isas():
        pytest.skip(f"this CPU does not run {isa} ({torch.backends.cpu.get_cpu_capability()})")
    try:
        kernel = native.load_isa(isa)
    except Exception as e:  # no compiler here: the library paths are tested instead
        pytest.skip(f"the C++ kernels could not be built here: {e}")
    assert kernel.isa == isa
    return kernel
