"""What a lesson is: a question, a grid per profile, the comparisons to test, and how one cell runs.

A new lesson subclasses `Lesson`, declares its grids and comparisons, and overrides a hook only where its cells
differ from "train a model from scratch on the condition's data" (`configure` to adjust a config, `measure` to
record more numbers after training, `run_cell` for a different kind of run). The runner and the report are the
same for every lesson.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gptlab.config import RunConfig
from gptlab.data import TokenData, prepare
from gptlab.errors import ConfigError
from gptlab.lab.calibrate import SOURCES, calibration_grid
from gptlab.lab.grid import Cell, Condition, Dataset, Grid, Variant
from gptlab.model import count_parameters
from gptlab.model.flops import embedding_parameters
from gptlab.train.loop import Trainer


class Lesson:
    name: str = ""
    title: str = ""
    question: str = ""  # one paragraph: what the lesson asks and why it matters
    metric: str = "val_loss"  # the summary.json key the verdicts are about
    metric_label: str = "val loss"
    lower_is_better: bool = True
    # "No effect" must be shown: two one-sided tests against this margin (in the metric's units), stated before
    # the runs. 0.01 nats is about 1 % in perplexity, below what changes a sample a reader can see.
    equivalence_margin: float = 0.01
    # The summary keys a scale profile reads each headline comparison on: (key, label); default the metric
    scale_metrics: tuple[tuple[str, str], ...] = ()
    # More summary.json keys shown (mean over seeds) in the results table: (key, label, format)
    table_metrics: tuple[tuple[str, str, str], ...] = (("parameters", "parameters", "{:,.0f}"),
                                                       ("tokens_per_s", "tokens/s", "{:,.0f}"))

    # -- the grid ---------------------------------------------------------------------------------------------
    def profiles(self) -> dict[str, Grid]:
        raise NotImplementedError

    def grid(self, profile: str) -> Grid:
        """A declared profile, or `calibrate` / `calibrate-quick`: the baseline arm of the full / quick profile
        with many seeds, to measure the test pipeline's false-positive rate (gptlab.lab.calibrate)."""
        profiles = self.profiles()
        if profile in SOURCES:
            return calibration_grid(self.grid(SOURCES[profile]), self.comparisons()[0][0])
        if profile not in profiles:
            raise ConfigError(f"lesson {self.name} has no profile {profile!r}; profiles: "
                              f"{', '.join([*profiles, *SOURCES])}")
        return profiles[profile]

    def comparisons(self) -> list[tuple[str, str]]:
        """(baseline variant, other variant) pairs, each tested within every condition."""
        raise NotImplementedError

    def scale_comparisons(self) -> list[tuple[str | None, str]]:
        """The headline pairs a scale profile's report follows across sizes and budgets; a None baseline follows
        the other variant's own value (an effect already measured inside each cell). Default: `comparisons`."""
        return self.comparisons()

    # -- running cells ----------------------------------------------------------------------------------------
    def prepare_data(self, workdir: Path, grid: Grid) -> dict[str, Path]:
        """Tokenize each dataset the grid uses once, into WORKDIR/data/KEY (kept across reruns)."""
        dirs = {}
        for dataset in dict.fromkeys(c.dataset for c in grid.conditions):
            path = workdir / "data" / dataset.key
            if not _prepared(path, dataset):
                prepare(dataset.corpus, path, dataset.tokenizer, dataset.vocab_size, overwrite=True)
            dirs[dataset.key] = path
        return dirs

    def configure(self, cfg: RunConfig, condition: Condition, variant: Variant) -> RunConfig:
        """Adjust a cell's config after overrides (e.g. match a parameter count); the default keeps it."""
        return cfg

    def run_cell(self, cell: Cell, cell_dir: Path, data: TokenData, resume: bool, workdir: Path) -> dict[str, Any]:
        """Train the cell's model; returns the numbers for summary.json. `workdir` is the lesson's directory
        (shared artifacts made by `prepare_data` live there)."""
        trainer = Trainer(cell_dir, cell.config, data, resume=resume, progress=False, quiet=True)
        summary = trainer.run()
        summary["embedding_parameters"] = embedding_parameters(trainer.model)
        summary["embedding_fraction"] = summary["embedding_parameters"] / count_parameters(trainer.model)
        summary.update(self.measure(trainer, cell))
        return summary

    def measure(self, trainer: Trainer, cell: Cell) -> dict[str, Any]:
        """More numbers to record once a cell has trained; none by default."""
        return {}

    # -- the report -------------------------------------------------------------------------------------------
    def discussion(self, results) -> list[str]:
        """Paragraphs of lesson-specific reading of the results; none by default."""
        return []

    def extra_blocks(self, results, directory: Path) -> list:
        """More report blocks (`gptlab.lab.report.Block`: tables, plots written into `directory`); none by default."""
        return []


def base_dir(workdir: Path, seed: int, key: str = "") -> Path:
    """Where a lesson keeps the shared base run of one seed (cells of that seed start from it); `key` names one
    of several base models per seed (a scale profile's model size, for example)."""
    return workdir / "base" / key / f"seed{seed}" if key else workdir / "base" / f"seed{seed}"


def ensure_trained(directory: Path, data_dir: Path, cfg: RunConfig, message: str) -> Path:
    """A lesson's shared run (a base model its cells start from), trained to `cfg.train.max_steps` once and
    finished after an interruption (bit for bit, like `gptlab train --resume`); later invocations reuse it."""
    from gptlab.train.checkpoint import load_checkpoint
    from gptlab.train.loop import resume, train

    if (directory / "checkpoints" / "last.json").is_file():
        if load_checkpoint(directory, "last", with_state=False).step < cfg.train.max_steps:
            resume(directory)
    else:  # new, or killed before its first checkpoint (nothing to resume: it starts again)
        print(message, flush=True)
        train(data_dir, directory, cfg)
    return directory


def trained_tokens(directory: Path) -> int:
    """Training tokens a shared run has seen up to its last checkpoint (its step × tokens per step)."""
    from gptlab.rundir import load_run_config
    from gptlab.train.checkpoint import load_checkpoint

    cfg = load_run_config(directory)
    step = load_checkpoint(directory, "last", with_state=False).step
    return step * cfg.train.batch_size * cfg.train.grad_accum * cfg.model.block_size


def _prepared(path: Path, dataset: Dataset) -> bool:
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    same_vocab = dataset.vocab_size is None or meta.get("vocab_size") == dataset.vocab_size
    return meta.get("source") == dataset.corpus and meta.get("tokenizer") == dataset.tokenizer and same_vocab
