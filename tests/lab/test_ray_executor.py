"""Lesson cells as Ray tasks: the same numbers as the local executor; a retried task resumes its cell."""

from __future__ import annotations

import json

import pytest

from gptlab.cli import main
from gptlab.lab.ray_executor import run_cell_task
from gptlab.lab.runner import cell_state, execute_cell
from tests.lab.test_runner import QUICK_CELLS, summaries

ray = pytest.importorskip("ray")


SHORT = ["--set", "train.max_steps=4", "--set", "train.eval_every=4", "--set", "train.checkpoint_every=4"]


@pytest.mark.slow
def test_ray_runs_the_grid_with_the_local_executors_numbers(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    out, reference = tmp_path / "tying-ray", tmp_path / "tying-local"
    assert main(["lab", "run", "tying", "--profile", "quick", *SHORT, "--out", str(reference)]) == 0
    assert main(["lab", "run", "tying", "--profile", "quick", *SHORT, "--executor", "ray", "--out", str(out)]) == 0
    ours, local = summaries(out), summaries(reference)
    assert len(ours) == QUICK_CELLS and ours.keys() == local.keys()
    for name in local:  # the same thread count, seeds and batches: the same numbers
        assert ours[name]["val_loss"] == local[name]["val_loss"], name
    assert (out / "report.md").is_file() and not ray.is_initialized()  # the local Ray it started is gone


def test_a_retried_task_resumes_its_cell_or_returns_it_done(monkeypatch, tmp_path):
    """What a task does when Ray runs it again after its worker died: it asks the cell's files, not the driver."""
    calls = []

    def execute(lesson, cell, directory, data_dir, resume, keep):
        calls.append(resume)
        return {"val_loss": 1.0}

    states = iter([("partial", []), ("new", []), ("done", [])])
    (tmp_path / "summary.json").write_text(json.dumps({"val_loss": 2.0}))
    args = (None, None, tmp_path, None, False, False)  # the driver planned "new" (resume False) for all three
    assert run_cell_task(args, 1, lambda c, d: next(states), execute) == {"val_loss": 1.0}
    assert run_cell_task(args, 1, lambda c, d: next(states), execute) == {"val_loss": 1.0}
    assert run_cell_task(args, 1, lambda c, d: next(states), execute) == {"val_loss": 2.0}
    assert calls == [True, False]  # half done: resumed from its checkpoint; done: not run again
    assert callable(cell_state) and callable(execute_cell)


def test_an_unreachable_cluster_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    assert main(["lab", "run", "tying", "--profile", "quick", "--executor", "ray", "--address", "127.0.0.1:1",
                 "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could not reach a Ray cluster" in err[0]
