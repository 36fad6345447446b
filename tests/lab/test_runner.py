"""The lab runner: a lesson's quick profile end to end, resuming after a kill, config changes, reports from files."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gptlab.cli import main
from gptlab.errors import GptlabError
from gptlab.lab.grid import Condition, Dataset, Grid, Variant
from gptlab.lab.lesson import Lesson
from gptlab.lab.lessons import get_lesson
from gptlab.lab.lessons.tying import TyingLesson, parameters
from gptlab.lab.report import write_report
from gptlab.lab.results import load_results
from gptlab.lab.runner import run_lesson

QUICK_CELLS = 12  # 2 conditions × 3 variants × 2 seeds


def summaries(out: Path) -> dict[str, dict]:
    return {str(p.parent.relative_to(out / "cells")): json.loads(p.read_text())
            for p in sorted(out.glob("cells/*/*/seed*/summary.json"))}


@pytest.fixture(scope="module")
def quick_tying(tmp_path_factory) -> Path:
    """`gptlab lab run tying --profile quick`, exactly as a user types it."""
    out = tmp_path_factory.mktemp("lab") / "tying"
    assert main(["lab", "run", "tying", "--profile", "quick", "--out", str(out)]) == 0
    return out


def test_quick_tying_lesson_runs_every_cell_and_writes_the_report(quick_tying):
    cells = summaries(quick_tying)
    assert len(cells) == QUICK_CELLS
    for name, s in cells.items():
        cell = quick_tying / "cells" / name
        assert (cell / "config.yaml").is_file() and (cell / "metrics.jsonl").is_file()
        assert s["step"] == 24 and 0 < s["val_loss"] < 10 and 0 < s["embedding_fraction"] < 1
        assert not (cell / "checkpoints").exists()  # finished cells keep numbers, not weights
    for f in ("report.md", "report.html", "curves.png", "final.png"):
        assert (quick_tying / f).stat().st_size > 1000
    md = (quick_tying / "report.md").read_text()
    assert "## Verdicts" in md and "tied → untied-matched" in md and "seeds per arm" in md
    units = json.loads((quick_tying / "lesson.json").read_text())["history"][-1]["text_units"]
    assert units  # one entry per dataset of the grid
    for key, u in units.items():
        assert u["bytes_per_token"] >= u["chars_per_token"] > 0
        assert f"on {key}'s validation text, 1 nat/token = {1 / (math.log(2) * u['bytes_per_token']):.4f}" in md
    html = (quick_tying / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2  # self-contained: the images are inside the page


def test_report_numbers_come_from_the_cell_files(quick_tying, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(quick_tying, copy)
    for f in ("report.md", "report.html", "curves.png", "final.png"):
        (copy / f).unlink()
    assert main(["lab", "report", str(copy)]) == 0
    assert (copy / "report.md").read_text() == (quick_tying / "report.md").read_text()
    # Change one cell's result: the rebuilt report's mean for that arm changes accordingly.
    path = copy / "cells/char-tiny/tied/seed0/summary.json"
    s = json.loads(path.read_text())
    other = json.loads((copy / "cells/char-tiny/tied/seed1/summary.json").read_text())["val_loss"]
    s["val_loss"] = 9.0
    path.write_text(json.dumps(s))
    write_report(copy)
    assert f"| char-tiny | tied | 2 | {(9.0 + other) / 2:.4f} ±" in (copy / "report.md").read_text()


def test_rerun_skips_finished_cells_and_refuses_changed_ones(quick_tying, tmp_path, capsys):
    import shutil

    out = tmp_path / "again"
    shutil.copytree(quick_tying, out)
    before = {p: p.stat().st_mtime_ns for p in out.glob("cells/*/*/seed*/summary.json")}
    result = run_lesson(get_lesson("tying"), "quick", out, progress=False)
    assert (result["ran"], result["skipped"]) == (0, QUICK_CELLS)
    assert before == {p: p.stat().st_mtime_ns for p in out.glob("cells/*/*/seed*/summary.json")}

    assert main(["lab", "run", "tying", "--profile", "quick", "--out", str(out), "--set", "train.lr=0.001"]) == 2
    err = capsys.readouterr().err
    assert "12 cell(s)" in err and "train.lr 0.003 -> 0.001" in err and "--redo-changed" in err
    assert before == {p: p.stat().st_mtime_ns for p in out.glob("cells/*/*/seed*/summary.json")}  # nothing lost

    # More seeds later: only the new cells run.
    result = run_lesson(get_lesson("tying"), "quick", out, seeds=3, progress=False)
    assert (result["ran"], result["skipped"]) == (6, QUICK_CELLS)
    assert len(summaries(out)) == 18


def test_a_run_killed_mid_grid_completes_only_the_missing_cells(quick_tying, tmp_path):
    out = tmp_path / "killed"
    # Longer cells than the fixture's, so the kill lands mid-grid and often mid-cell (checkpoints every 8 steps).
    args = ["lab", "run", "tying", "--profile", "quick", "--out", str(out), "--set", "train.max_steps=64",
            "--set", "train.checkpoint_every=8"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-m", "gptlab", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(list(out.glob("cells/*/*/seed*/summary.json"))) < 4 and time.time() < deadline:
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p: p.read_bytes() for p in out.glob("cells/*/*/seed*/summary.json")}
    assert 4 <= len(finished) < QUICK_CELLS

    result = run_lesson(get_lesson("tying"), "quick", out, overrides=args[8::2], progress=False)
    assert result["skipped"] == len(finished) and result["ran"] == QUICK_CELLS - len(finished)
    assert finished == {p: p.read_bytes() for p in finished}  # finished cells were not run again
    resumed = summaries(out)
    assert len(resumed) == QUICK_CELLS
    # The killed invocation's wall time still counts, up to its last finished cell.
    killed, rerun = json.loads((out / "lesson.json").read_text())["history"]
    assert "finished" not in killed and killed["ran"] >= 3 and killed["wall_s"] > 0 and "finished" in rerun
    assert "2 invocation(s), 1 of them interrupted" in (out / "report.md").read_text()

    # The interrupted grid reaches the same numbers as one that never stopped (resume is bit for bit).
    clean = tmp_path / "clean"
    run_lesson(get_lesson("tying"), "quick", clean, overrides=args[8::2], progress=False)
    for name, s in summaries(clean).items():
        assert resumed[name]["val_loss"] == s["val_loss"], name


def _workers_of(pid: int) -> list[int]:
    """Pool workers (spawned interpreters) whose parent is `pid`, from /proc."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b"spawn_main" in cmdline:
            out.append(int(stat.parent.name))
    return out


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_a_terminated_parallel_run_takes_its_workers_with_it(tmp_path):
    out = tmp_path / "terminated"
    args = ["lab", "run", "tying", "--profile", "quick", "--jobs", "2", "--out", str(out), "--set",
            "train.max_steps=400"]  # cells long enough that the signal lands mid-cell
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-m", "gptlab", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    workers = []
    while (len(workers) < 2 or not list(out.glob("cells/*/*/seed*/metrics.jsonl"))) and time.time() < deadline:
        assert proc.poll() is None, "the run ended before it could be terminated"
        workers = _workers_of(proc.pid)
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 143
    deadline = time.time() + 15
    while any(Path(f"/proc/{w}").exists() for w in workers) and time.time() < deadline:
        time.sleep(0.1)
    assert not [w for w in workers if Path(f"/proc/{w}").exists()], "workers outlived the terminated run"


def test_parallel_jobs_run_the_same_grid(tmp_path):
    out = tmp_path / "jobs"
    result = run_lesson(get_lesson("tying"), "quick", out, jobs=2, seeds=1, progress=False)
    assert result["ran"] == 6 and len(summaries(out)) == 6
    assert all(s["threads"] == max(1, len(os.sched_getaffinity(0)) // 2) for s in summaries(out).values())
    if len(os.sched_getaffinity(0)) > 1:  # the thread count is part of a cell: another one is a changed cell
        with pytest.raises(GptlabError, match="train.threads.*use the --jobs of the first run"):
            run_lesson(get_lesson("tying"), "quick", out, jobs=1, seeds=1, progress=False)


def test_untied_matched_has_about_the_tied_parameter_count():
    lesson = TyingLesson()
    grid = lesson.grid("full")
    from gptlab.lab.grid import cell_config

    for condition in grid.conditions:
        vocab = {"char": 85, "bpe2k": 2048, "bpe8k": 8192}[condition.name.split("-")[0]]
        counts = {}
        for variant in grid.variants:
            cfg = lesson.configure(cell_config(grid, condition, variant, 0, vocab_size=vocab), condition, variant)
            counts[variant.name] = parameters(cfg)
        assert counts["untied"] > counts["tied"]
        gap = abs(counts["untied-matched"] - counts["tied"])
        assert gap <= counts["untied"] - counts["tied"], condition.name  # never farther than plain untied
        if vocab > 1000:  # where the head matrix is large, narrowing can match it closely
            assert gap / counts["tied"] < 0.05, condition.name


class LearningRateLesson(Lesson):
    """A lesson defined outside the package: it plugs into the same runner and report unchanged."""
    name, title, question = "lr", "learning rate", "Does a larger learning rate train faster here?"

    def profiles(self):
        condition = Condition("tiny", Dataset("shakespeare-poems", "char"),
                              {"model.n_layer": 1, "model.n_head": 2, "model.n_embd": 16})
        base = {"model.block_size": 16, "train.batch_size": 4, "train.max_steps": 10, "train.eval_every": 5,
                "train.eval_batches": 2, "train.warmup_steps": 2}
        variants = (Variant("slow", {"train.lr": 1e-4}), Variant("fast", {"train.lr": 3e-3}),
                    Variant("fast-again", {"train.lr": 0.003}))  # the same runs as "fast", under another name
        return {"quick": Grid((condition,), variants, (0, 1, 2), base)}

    def comparisons(self):
        return [("slow", "fast"), ("slow", "fast-again")]


def test_a_new_lesson_plugs_into_the_runner(tmp_path):
    out = tmp_path / "lr"
    result = run_lesson(LearningRateLesson(), "quick", out, progress=False)
    assert result["ran"] == 9
    results = load_results(out)
    (_, comparison), = results.compare(LearningRateLesson().comparisons(), "val_loss")  # the repeat is left out
    assert comparison.diff < 0 and comparison.test == "paired"  # 30× the learning rate learns faster in 10 steps
    assert comparison.p_adjusted == comparison.p  # a family of one
    md = (out / "report.md").read_text()
    assert "fast lowers val loss" in md and "fast-again ran the same configuration as fast" in md
    with pytest.raises(GptlabError, match="holds lesson 'lr'"):
        run_lesson(TyingLesson(), "quick", out, progress=False)


def test_bad_lab_input_is_one_line(tmp_path, capsys):
    assert main(["lab", "run", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "unknown lesson 'nope'; lessons: efficiency, lora-rank, positions, quantization, stability, tying" in capsys.readouterr().err
    assert main(["lab", "run", "tying", "--profile", "huge", "--out", str(tmp_path / "x")]) == 2
    assert "no profile 'huge'; profiles: quick, full" in capsys.readouterr().err
    assert main(["lab", "report", str(tmp_path / "empty")]) == 2
    assert "no lesson.json" in capsys.readouterr().err


class MeasureOnlyLesson(LearningRateLesson):
    """Cells that train nothing (like post-training quantization): a metric from the cell's settings alone."""
    name = "measure"
    calls = 0

    def run_cell(self, cell, cell_dir, data, resume, workdir):
        MeasureOnlyLesson.calls += 1
        return {"val_loss": cell.config.train.lr * 1000 + cell.seed}


def test_cells_that_train_nothing_are_done_after_one_run(tmp_path):
    out = tmp_path / "measure"
    assert run_lesson(MeasureOnlyLesson(), "quick", out, progress=False)["ran"] == 9
    again = run_lesson(MeasureOnlyLesson(), "quick", out, progress=False)
    assert (again["ran"], again["skipped"], MeasureOnlyLesson.calls) == (0, 9, 9)
    with pytest.raises(GptlabError, match="other settings"):  # their settings are recorded, so changes show
        run_lesson(MeasureOnlyLesson(), "quick", out, overrides=["train.max_steps=12"], progress=False)
