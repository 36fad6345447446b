"""Run a lesson's grid, one directory per cell, resumably, in one or several processes.

    OUT/lesson.json                           which lesson and profile, the grid, the --set extras, run history
    OUT/data/KEY/                             each dataset, tokenized once
    OUT/cells/CONDITION/VARIANT/seedN/        a cell: config.yaml, cell.json, metrics.jsonl, summary.json
    OUT/report.md, report.html, *.png         rebuilt from the cell files by `gptlab lab report OUT`

A cell is finished when its summary.json exists (written last, atomically). Running the same command again
skips finished cells, resumes a cell that stopped midway from its last checkpoint (bit for bit, like
`gptlab train --resume`), and refuses to reuse a cell whose config has changed unless told to redo it.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import json
import multiprocessing
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from gptlab.config import RunConfig, apply_overrides, save_yaml, to_dict
from gptlab.data import load_data
from gptlab.errors import ConfigError, GptlabError
from gptlab.io import atomic_write_json
from gptlab.lab.grid import Cell, Grid, cell_config
from gptlab.lab.lesson import Lesson
from gptlab.rundir import is_run, load_run_config

# Settings that may differ between the first and a later run of a cell without changing its result. The thread
# count is not one of them: 1 and 2 threads give gradients that differ by ~1e-9, so it is part of a cell's
# identity (set by --jobs and the machine's cores) and a rerun with another count is a changed cell.
IGNORED_CHANGES = {"train.tensorboard", "train.checkpoint_every", "train.log_every"}


def cell_dir(out: Path, cell: Cell) -> Path:
    return cell.directory(out)


def plan_cells(lesson: Lesson, grid: Grid, data_dirs: dict[str, Path], extra: list[str], threads: int) -> list[Cell]:
    cells = []
    for condition in grid.conditions:
        vocab = json.loads((data_dirs[condition.dataset.key] / "meta.json").read_text())["vocab_size"]
        for variant in grid.variants:
            if not grid.applies(condition, variant):
                continue
            for seed in grid.seeds:
                cfg = cell_config(grid, condition, variant, seed, extra, vocab_size=vocab)
                cfg = lesson.configure(cfg, condition, variant)
                cfg = apply_overrides(cfg, [f"train.threads={threads}"])
                cells.append(Cell(condition, variant, seed, cfg, grid.settings))
    return cells


def _flat(cfg: RunConfig) -> dict[str, Any]:
    return {f"{section}.{k}": v for section, values in to_dict(cfg).items() for k, v in values.items()}


def config_changes(saved: RunConfig, wanted: RunConfig) -> list[str]:
    a, b = _flat(saved), _flat(wanted)
    return [f"{k} {a[k]!r} -> {b[k]!r}" for k in b if a.get(k) != b[k] and k not in IGNORED_CHANGES]


def cell_state(cell: Cell, directory: Path) -> tuple[str, list[str]]:
    """("done" | "partial" | "new" | "changed", what changed)."""
    if not is_run(directory):
        return "new", []
    try:
        identity = json.loads((directory / "cell.json").read_text())
        saved = load_run_config(directory)
    except (OSError, ValueError, GptlabError):
        return "new", []  # a cell killed while it was being created: start it again
    changes = config_changes(saved, cell.config)
    changes += [f"{k} {identity.get(k)!r} -> {v!r}" for k, v in cell.identity().items() if identity.get(k) != v]
    if changes:
        return "changed", changes
    if (directory / "summary.json").is_file():
        return "done", []
    if (directory / "checkpoints" / "last.json").is_file():
        return "partial", []
    return "new", []


def execute_cell(lesson: Lesson, cell: Cell, directory: Path, data_dir: Path, resume: bool,
                 keep_checkpoints: bool = False) -> dict[str, Any]:
    """Run one cell to its summary.json; a module-level function so worker processes can run it."""
    if not resume:
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        atomic_write_json(directory / "cell.json", cell.identity())
    t0 = time.perf_counter()
    summary = lesson.run_cell(cell, directory, load_data(data_dir), resume, directory.parents[3])
    summary = {**cell.identity(), **summary, "wall_s": time.perf_counter() - t0, "resumed": resume}
    if not is_run(directory):  # a cell that trains nothing (e.g. post-training quantization): record its settings
        save_yaml(cell.config, directory / "config.yaml")  # so a rerun sees it done, or changed
    atomic_write_json(directory / "summary.json", summary)
    if not keep_checkpoints:  # the numbers are kept; the weights (and the tokenizer copy) are not needed for them
        shutil.rmtree(directory / "checkpoints", ignore_errors=True)
        shutil.rmtree(directory / "tokenizer", ignore_errors=True)
    return summary


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _record(out: Path, lesson: Lesson, profile: str, grid: Grid, extra: list[str], entry: dict,
            replace_last: bool = False) -> None:
    """lesson.json: what runs here, and one history entry per invocation (replaced when it finishes)."""
    path = out / "lesson.json"
    history = json.loads(path.read_text()).get("history", []) if path.is_file() else []
    if replace_last:
        history = history[:-1]
    atomic_write_json(path, {"lesson": lesson.name, "profile": profile, "grid": grid.describe(), "set": extra,
                             "history": history + [entry]})


def _stop_workers(pool: cf.ProcessPoolExecutor) -> None:
    """End a pool's workers mid-cell. Left alone they would finish their cells as orphans, and a rerun started
    meanwhile would resume those same cells from a second process; a killed cell resumes from its last (atomic)
    checkpoint instead. ProcessPoolExecutor has no public way to do this before Python 3.14."""
    workers = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for worker in workers:
        if worker.is_alive():
            worker.terminate()
    for worker in workers:
        worker.join(timeout=10)


def dataset_text_units(data_dirs: dict[str, Path]) -> dict[str, dict[str, float]]:
    """Per dataset, the UTF-8 bytes and characters per token of its validation text, so a report can give its
    losses in bits per byte too."""
    from gptlab.data import load_data

    out = {}
    for key, directory in data_dirs.items():
        hashes = load_data(directory).meta.get("tokens_sha256") or {}
        out[key] = dict(_text_units(str(Path(directory).resolve()), str(hashes.get("val"))))
    return out


@functools.lru_cache(maxsize=16)
def _text_units(directory: str, val_sha256: str) -> dict[str, float]:
    """Decoding a split is the costly part: once per process and split content (`gptlab ab` calls the runner at
    every look)."""
    from gptlab.data import load_data
    from gptlab.evaluate import text_units
    from gptlab.tokenizers import load_tokenizer

    units = text_units(load_data(directory).val, load_tokenizer(Path(directory) / "tokenizer"))
    return {"bytes_per_token": units.bytes_per_token, "chars_per_token": units.chars_per_token}


def run_lesson(lesson: Lesson, profile: str, out: str | Path, jobs: int = 1, seeds: int | None = None,
               overrides: list[str] | None = None, redo_changed: bool = False, keep_checkpoints: bool = False,
               progress: bool | None = None, report: bool = True, executor: str = "local",
               address: str | None = None, shared_fs: bool = False) -> dict[str, Any]:
    """Run every unfinished cell of `lesson` under `profile` into `out`; returns counts and the report path."""
    out, extra = Path(out), list(overrides or [])
    if jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {jobs}")
    grid = lesson.grid(profile)
    if seeds is not None:
        if seeds < 1:
            raise ConfigError(f"--seeds must be at least 1, got {seeds}")
        grid = grid.with_seeds(seeds)
    previous = out / "lesson.json"
    if previous.is_file():
        owner = json.loads(previous.read_text()).get("lesson")
        if owner != lesson.name:
            raise GptlabError(f"{out} holds lesson {owner!r}, not {lesson.name!r}; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    cores = len(os.sched_getaffinity(0))
    threads = max(1, cores // jobs)
    started = time.time()  # preparing data (tokenizers, a lesson's base models) is part of the wall time
    data_dirs = lesson.prepare_data(out, grid)
    cells = plan_cells(lesson, grid, data_dirs, extra, threads)

    states = {c.name: cell_state(c, cell_dir(out, c)) for c in cells}
    changed = [(name, what) for name, (state, what) in states.items() if state == "changed"]
    if changed and not redo_changed:
        name, what = changed[0]
        hint = (" (the thread count comes from --jobs and the cores: use the --jobs of the first run)"
                if any(w.startswith("train.threads") for w in what) else "")
        raise GptlabError(f"{len(changed)} cell(s) in {out} were run with other settings (e.g. {name}: "
                          f"{'; '.join(what[:3])}){hint}; rerun with --redo-changed to run them again, or use another "
                          "--out")
    todo = [c for c in cells if states[c.name][0] != "done"]
    done = len(cells) - len(todo)
    entry = {"started": started, "cells": len(cells), "to_run": len(todo), "jobs": jobs, "threads_per_job": threads,
             "text_units": dataset_text_units(data_dirs)}
    _record(out, lesson, profile, grid, extra, {**entry, "wall_s": time.time() - started, "ran": 0})
    bar = tqdm(total=len(cells), initial=done, desc=f"lab {lesson.name} ({profile})", unit="cell", dynamic_ncols=True,
               disable=(not progress) if progress is not None else None, file=sys.stderr)
    failures: list[tuple[str, str]] = []

    count = [done]  # tqdm stops counting when it is disabled

    def finished(c: Cell, summary: dict | None) -> None:
        count[0] += 1
        # the wall time so far, so a report still counts an invocation that is later interrupted
        _record(out, lesson, profile, grid, extra, {**entry, "wall_s": time.time() - started, "ran": count[0] - done},
                replace_last=True)
        bar.set_postfix_str(c.name, refresh=False)
        bar.update(1)
        if bar.disable and progress is None:  # a log file rather than a terminal: one line per cell
            value = summary.get(lesson.metric) if summary else None
            result = "failed" if summary is None else f"{lesson.metric_label} {value:.4f}, {summary['wall_s']:.0f} s"
            print(f"[{count[0]}/{len(cells)}] {c.name}: {result}", file=sys.stderr, flush=True)

    def submit_args(c: Cell):
        return (lesson, c, cell_dir(out, c), data_dirs[c.condition.dataset.key], states[c.name][0] == "partial",
                keep_checkpoints)

    try:
        if executor == "ray":
            from gptlab.lab.ray_executor import run_on_ray

            run_on_ray(todo, submit_args, threads, address, finished, failures, cell_state, execute_cell, out,
                       shared=shared_fs)
        elif jobs == 1:
            _worker_init(threads)
            for c in todo:
                bar.set_postfix_str(c.name, refresh=True)
                try:
                    finished(c, execute_cell(*submit_args(c)))
                except GptlabError as e:
                    failures.append((c.name, str(e)))
                    finished(c, None)
        else:
            ctx = multiprocessing.get_context("spawn")  # a fresh interpreter per worker: no forked torch state
            with cf.ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init, initargs=(threads,)) as pool:
                futures = {pool.submit(execute_cell, *submit_args(c)): c for c in todo}
                try:
                    for future in cf.as_completed(futures):
                        c = futures[future]
                        try:
                            finished(c, future.result())
                        except GptlabError as e:
                            failures.append((c.name, str(e)))
                            finished(c, None)
                except BaseException:  # Ctrl-C, SIGTERM, a bug: stop the workers now, not after their cells
                    _stop_workers(pool)
                    raise
    finally:
        bar.close()
    wall = time.time() - started
    _record(out, lesson, profile, grid, extra, {"started": started, "finished": time.time(), "wall_s": wall,
                                                "cells": len(cells), "ran": len(todo) - len(failures),
                                                "failed": len(failures), "jobs": jobs, "threads_per_job": threads,
                                                "text_units": entry["text_units"]},
            replace_last=True)
    report_path = None
    if report:
        from gptlab.lab.report import write_report

        report_path = write_report(out, lesson)
    if failures:
        name, why = failures[0]
        raise GptlabError(f"{len(failures)} cell(s) failed (e.g. {name}: {why}); the others are saved; fix the cause "
                          "and rerun the same command to run only the missing cells")
    return {"cells": len(cells), "ran": len(todo), "skipped": done, "wall_s": wall, "report": report_path}
