"""Fault injection: real `gptlab` processes killed at many instants, a file-size limit, a read-only folder,
SIGINT/SIGTERM during training, and two trainers on one folder.

After every fault: what was there before is intact (or the new output is complete, never half of it), and
running the same command again completes. Kill instants are spread over the whole run, measured first.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gptlab.data import load_data
from gptlab.run import load_model
from gptlab.train.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

TINY = ["model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.block_size=16", "train.batch_size=2",
        "train.eval_every=4", "train.eval_batches=1", "train.threads=1", "train.log_every=1",
        "train.checkpoint_every=1", "train.schedule=constant", "train.warmup_steps=0"]
KILLS = int(os.environ.get("GPTLAB_FAULT_KILLS", "4"))
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


def sets(items):
    return [a for t in items for a in ("--set", t)]


def default_sigint() -> None:
    """In the child before it starts: SIGINT back to its default. A test suite started in the background (`nohup
    make test &`) inherits SIGINT ignored, Python then keeps ignoring it, and Ctrl-C could not be tested."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def gptlab(*argv, log: Path | None = None) -> subprocess.Popen:
    """Start a command in the background. Its output goes to files (or nowhere), never to a pipe nobody reads
    until the end: a long run fills a pipe, blocks on the write, and then answers a signal only once read."""
    command = [sys.executable, "-m", "gptlab", *map(str, argv)]
    if log is None:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV,
                                preexec_fn=default_sigint)
    with open(log.with_suffix(".out"), "w") as out, open(log.with_suffix(".err"), "w") as err:
        return subprocess.Popen(command, stdout=out, stderr=err, env=ENV, preexec_fn=default_sigint)


def exit_code(proc: subprocess.Popen, log: Path, timeout: float = 120) -> tuple[int, str]:
    """Wait for a signalled command to exit; its stderr, or a failure that shows where it was stuck."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"no exit {timeout:.0f} s after the signal; stderr ends with: "
                    f"{log.with_suffix('.err').read_text()[-2000:]}")
    return proc.returncode, log.with_suffix(".err").read_text()


def finish(*argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gptlab", *map(str, argv)], capture_output=True, text=True,
                          env=ENV, timeout=300, **kw)


def timed(*argv) -> float:
    t0 = time.perf_counter()
    r = finish(*argv)
    assert r.returncode == 0, r.stderr
    return time.perf_counter() - t0


def kill_instants(duration: float, n: int = KILLS, seed: int = 0) -> list[float]:
    """`n` instants spread over a run of `duration` seconds (each in its own slice, jittered)."""
    rng = np.random.default_rng(seed)
    return [duration * (i + rng.uniform(0.15, 1.0)) / n for i in range(n)]


def killed_at(argv, delay: float) -> bool:
    """Run the command and SIGKILL it after `delay` seconds; False when it finished first."""
    proc = gptlab(*argv)
    try:
        proc.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def one_line_error(r: subprocess.CompletedProcess, fragment: str) -> None:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr and fragment in lines[0], r.stderr


def limited_file_size(nbytes: int):
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))


# -- kill -9 at many instants --------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["train", "finetune"])
def test_training_killed_again_and_again_resumes_to_the_same_weights(char_data, base, tmp_path, command):
    if command == "train":
        steps = sets(TINY + ["train.max_steps=24"])
    else:
        steps = ["--run", base[0], "--set", "lora.r=2", *sets([t for t in TINY if t.startswith("train.")] +
                                                               ["train.max_steps=24"])]

    def start(out):
        return [command, "--data", char_data, "--out", out, *steps]

    reference = tmp_path / "reference"
    duration = timed(*start(reference))
    run = tmp_path / "run"
    kills = 0
    for delay in kill_instants(duration):
        started = (run / "checkpoints" / "last.json").exists()
        kills += killed_at([command, "--resume", run] if started else start(run), delay)
        if (run / "checkpoints" / "last.json").exists():  # what a kill leaves always loads
            load_checkpoint(run, "last")
            load_model(run, "best")
    assert kills >= 2
    r = finish(*([command, "--resume", run] if (run / "checkpoints" / "last.json").exists() else start(run)))
    assert r.returncode == 0, r.stderr
    a, b = load_checkpoint(reference, "last"), load_checkpoint(run, "last")
    assert a.step == b.step == 24
    for name in a.model:
        assert torch.equal(a.model[name], b.model[name]), name
    ref_losses = {r["step"]: r["loss"] for r in map(json.loads, (reference / "metrics.jsonl").read_text().splitlines())
                  if "loss" in r}
    losses = {r["step"]: r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
              if "loss" in r}
    assert losses == ref_losses  # every step logged once, with the same loss


def test_prepare_killed_leaves_the_old_data_or_the_new(corpus_dir, tmp_path):
    old, new_corpus = tmp_path / "data", tmp_path / "corpus2"
    shutil.copytree(corpus_dir, new_corpus)
    (new_corpus / "extra.txt").write_text("A new document. " * 200)
    assert finish("prepare", "--corpus", corpus_dir, "--out", old).returncode == 0
    before = load_data(old).meta["source_sha256"]
    scratch = tmp_path / "scratch"
    duration = timed("prepare", "--corpus", new_corpus, "--out", scratch)
    after = load_data(scratch).meta["source_sha256"]
    for delay in kill_instants(duration):
        killed_at(["prepare", "--corpus", new_corpus, "--out", old, "--overwrite"], delay)
        assert load_data(old).meta["source_sha256"] in (before, after)  # complete, old or new
    assert finish("prepare", "--corpus", new_corpus, "--out", old, "--overwrite").returncode == 0
    assert load_data(old).meta["source_sha256"] == after
    assert leftovers(tmp_path) == []  # temp folders of the killed runs were cleaned


@pytest.fixture(scope="module")
def base(char_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("faults") / "base"
    assert finish("train", "--data", char_data, "--out", run, *sets(TINY + ["train.max_steps=4"])).returncode == 0
    adapter = run.parent / "adapter"
    r = finish("finetune", "--run", run, "--data", char_data, "--out", adapter, "--set", "lora.r=2",
               *sets(["train.max_steps=2", "train.eval_every=2", "train.eval_batches=1", "train.batch_size=2"]))
    assert r.returncode == 0, r.stderr
    return run, adapter


@pytest.mark.parametrize("command", ["quantize", "merge", "export", "import"])
def test_single_shot_writers_killed_leave_nothing_or_everything(base, tmp_path, command):
    run, adapter = base
    hf = tmp_path / "hf"
    if command == "import":
        assert finish("export", "hf", "--run", run, "--out", hf).returncode == 0

    def argv(out):
        return {"quantize": ["quantize", "--run", run, "--out", out, "--set", "quant.bits=4"],
                "merge": ["merge", "--run", run, "--adapter", adapter, "--out", out],
                "export": ["export", "hf", "--run", run, "--out", out],
                "import": ["import", "hf", hf, "--out", out]}[command]

    duration = timed(*argv(tmp_path / "scratch"))
    out = tmp_path / "out"
    for delay in kill_instants(duration, n=max(2, KILLS - 2)):
        killed_at(argv(out), delay)
        if out.exists():  # complete, or not there at all
            (lambda: json.loads((out / "config.json").read_text()) if command == "export" else load_model(out))()
            break
    r = finish(*argv(out)) if not out.exists() else finish(*argv(out), "--overwrite")
    assert r.returncode == 0, r.stderr
    assert leftovers(tmp_path) == []


# -- full disk and read-only folders ------------------------------------------------------------------------
def test_a_file_size_limit_while_checkpointing_is_one_line_and_keeps_the_last_checkpoint(char_data, tmp_path):
    run = tmp_path / "run"
    assert finish("train", "--data", char_data, "--out", run, *sets(TINY + ["train.max_steps=2"])).returncode == 0
    before = load_checkpoint(run, "last")
    size = max(p.stat().st_size for p in (run / "checkpoints").rglob("*.safetensors"))
    r = finish("train", "--resume", run, "--set", "train.max_steps=4", preexec_fn=limited_file_size(size // 2))
    one_line_error(r, "file-size limit")
    after = load_checkpoint(run, "last")
    assert after.step == before.step == 2 and all(torch.equal(after.model[k], before.model[k]) for k in before.model)
    assert [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")] == []
    assert finish("train", "--resume", run, "--set", "train.max_steps=4").returncode == 0


@pytest.mark.parametrize("command", ["prepare", "export", "quantize"])
def test_a_file_size_limit_while_writing_an_output_is_one_line_and_writes_nothing(base, corpus_dir, tmp_path, command):
    run, _ = base
    out = tmp_path / "out"
    argv = {"prepare": ["prepare", "--corpus", corpus_dir, "--out", out],
            "export": ["export", "hf", "--run", run, "--out", out],
            "quantize": ["quantize", "--run", run, "--out", out]}[command]
    one_line_error(finish(*argv, preexec_fn=limited_file_size(2000)), "cannot write")
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.fixture
def read_only(tmp_path):
    """A folder no one may write in: mode 0555, or for root (who ignores modes) the immutable attribute or a
    read-only tmpfs mount."""
    d = tmp_path / "ro"
    d.mkdir()
    undo = None
    if os.geteuid() != 0:
        d.chmod(0o555)
        undo = lambda: d.chmod(0o755)  # noqa: E731
    elif subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode == 0:
        undo = lambda: subprocess.run(["chattr", "-i", str(d)])  # noqa: E731
    elif subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(d)], capture_output=True).returncode == 0:
        undo = lambda: subprocess.run(["umount", str(d)])  # noqa: E731
    else:
        pytest.skip("no way to make a read-only folder here (root without chattr or mount)")
    yield d
    undo()


@pytest.mark.parametrize("command", ["prepare", "train", "export"])
def test_a_read_only_output_folder_is_one_line_and_writes_nothing(base, char_data, corpus_dir, read_only, command):
    run, _ = base
    out = read_only / "out"
    argv = {"prepare": ["prepare", "--corpus", corpus_dir, "--out", out],
            "train": ["train", "--data", char_data, "--out", out, *sets(TINY + ["train.max_steps=2"])],
            "export": ["export", "hf", "--run", run, "--out", out]}[command]
    r = finish(*argv)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert list(read_only.iterdir()) == []


# -- signals and two writers ---------------------------------------------------------------------------------
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_sigint_and_sigterm_during_training_exit_cleanly_and_resume(char_data, tmp_path, sig, code):
    run = tmp_path / "run"
    log = tmp_path / "first"
    proc = gptlab("train", "--data", char_data, "--out", run, *sets(TINY + ["train.max_steps=100000"]), log=log)
    deadline = time.time() + 120
    while not (run / "checkpoints" / "last.json").exists() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(sig)
    returncode, err = exit_code(proc, log)
    assert returncode == code and "checkpoints already written are intact" in err and "Traceback" not in err, err
    step = load_checkpoint(run, "last").step
    r = finish("train", "--resume", run, "--set", f"train.max_steps={step + 2}")
    assert r.returncode == 0, r.stderr


def test_two_trainers_on_one_folder_the_second_refuses(char_data, tmp_path):
    run = tmp_path / "run"
    log = tmp_path / "first"
    first = gptlab("train", "--data", char_data, "--out", run, *sets(TINY + ["train.max_steps=100000"]), log=log)
    try:
        deadline = time.time() + 120
        while not (run / "config.yaml").exists() and time.time() < deadline:
            time.sleep(0.1)
        for argv in (["train", "--data", char_data, "--out", run, *sets(TINY)], ["train", "--resume", run]):
            r = finish(*argv)
            one_line_error(r, "in use by another gptlab process" if "--resume" in argv else "")
    finally:
        first.send_signal(signal.SIGINT)
        returncode, err = exit_code(first, log)
    assert returncode == 130, err
