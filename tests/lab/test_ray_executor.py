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


@pytest.mark.slow
def test_a_node_killed_mid_cell_leaves_every_cell_finished_once_with_the_local_numbers(tmp_path, monkeypatch):
    """Two Ray nodes on loopback; the second is killed while cells run on it. Its tasks are retried on the head
    node and the grid ends complete, each cell once, with the numbers of a local run (same threads, seeds)."""
    import threading
    import time

    from ray.cluster_utils import Cluster

    from gptlab.lab.ray_executor import node_root

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    grid = ["lab", "run", "tying", "--profile", "quick", "--jobs", "2", "--set", "train.max_steps=16"]
    reference, out = tmp_path / "local", tmp_path / "ray"
    assert main([*grid, "--out", str(reference)]) == 0
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    node = cluster.add_node(num_cpus=1)
    killed = []

    def kill_once_cells_run():
        cells = node_root(out) / "cells"
        deadline = time.time() + 300
        while time.time() < deadline and not list(cells.glob("*/*/*/metrics.jsonl")):
            time.sleep(0.05)
        cluster.remove_node(node, allow_graceful=False)
        killed.append(time.time())

    try:
        ray.init(address=cluster.address)
        killer = threading.Thread(target=kill_once_cells_run)
        killer.start()
        assert main([*grid, "--executor", "ray", "--out", str(out)]) == 0
        killer.join()
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert killed and node not in cluster.worker_nodes
    ours, local = summaries(out), summaries(reference)
    assert ours.keys() == local.keys() and len(ours) == QUICK_CELLS
    for name in local:
        assert ours[name]["val_loss"] == local[name]["val_loss"], name
    history = json.loads((out / "lesson.json").read_text())["history"]
    assert history[-1]["ran"] == QUICK_CELLS and history[-1]["failed"] == 0  # each cell finished once


def test_a_shipped_cell_folder_round_trips_and_a_tar_that_leaves_its_folder_is_refused(tmp_path):
    import io
    import tarfile

    from gptlab.lab.ray_executor import pack, unpack

    src = tmp_path / "cell"
    (src / "checkpoints").mkdir(parents=True)
    (src / "summary.json").write_text('{"val_loss": 1.5}')
    (src / "checkpoints" / "last.json").write_text("{}")
    unpack(pack(src), tmp_path / "copy")
    assert (tmp_path / "copy" / "summary.json").read_text() == '{"val_loss": 1.5}'
    assert (tmp_path / "copy" / "checkpoints" / "last.json").is_file()
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w") as tar:
        info = tarfile.TarInfo("../outside.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(tarfile.TarError):
        unpack(evil.getvalue(), tmp_path / "target")
    assert not (tmp_path / "outside.txt").exists() and not (tmp_path / "target").exists()
