"""Data-parallel training under torchrun (gloo, 2 CPU processes) follows the single-process run."""

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from gptlab.errors import GptlabError
from gptlab.train.checkpoint import checkpoint_dir
from gptlab.train.distributed import Distributed
from gptlab.train.loop import train
from gptlab.train.metrics import read_metrics

from tests.conftest import TINY, tiny_config

SETTINGS = ["model.dropout=0.0", "train.batch_size=8", "train.grad_accum=2", "train.max_steps=6",
            "train.eval_every=3", "train.checkpoint_every=3", "train.eval_batches=3", "train.schedule=constant",
            "train.threads=1"]


def gptlab_cli(*args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "gptlab", *args], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


def sets(*overrides: str) -> list[str]:
    out = []
    for o in overrides:
        out += ["--set", o]
    return out


def records(run_dir, key):
    return {r["step"]: r[key] for r in read_metrics(run_dir / "metrics.jsonl") if key in r}


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_two_processes_follow_one_and_resume(char_data, tmp_path, optimizer):
    settings = [*SETTINGS, f"train.optimizer={optimizer}"]
    train(char_data, tmp_path / "one", tiny_config(*settings), progress=False)
    # two processes for 3 steps, then a resume under two processes to 6: the same global batches throughout
    gptlab_cli("train", "--nproc", "2", "--data", str(char_data), "--out", str(tmp_path / "two"),
               *sets(*TINY, *settings, "train.max_steps=3"))
    gptlab_cli("train", "--nproc", "2", "--resume", str(tmp_path / "two"), *sets("train.max_steps=6"))

    one, two = records(tmp_path / "one", "loss"), records(tmp_path / "two", "loss")
    assert sorted(two) == list(range(1, 7))  # rank 0 alone wrote the metrics: each step once
    assert two == pytest.approx(one, rel=1e-5, abs=1e-6)
    assert records(tmp_path / "two", "val_loss") == pytest.approx(records(tmp_path / "one", "val_loss"), rel=1e-5)
    a = load_file(str(checkpoint_dir(tmp_path / "one") / "model.safetensors"))
    b = load_file(str(checkpoint_dir(tmp_path / "two") / "model.safetensors"))
    assert a.keys() == b.keys()  # plain module names: no DDP "module." prefix
    # Muon orthogonalises in bfloat16 (torch's Newton-Schulz), which turns the ~1e-7 differences of a two-process
    # gradient sum into bfloat16 rounding steps of the update: ~1e-4 on weights of ~0.02, the same losses
    atol = 5e-4 if optimizer == "muon" else 1e-5
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=atol)


def test_single_process_group_is_a_no_op_and_uneven_batches_are_refused():
    d = Distributed()
    x = torch.arange(12).view(6, 2)
    assert d.world == 1 and d.main and torch.equal(d.shard(x), x) and d.sum(1.5, 2.0) == [1.5, 2.0]
    d.world, d.rank = 4, 2  # what rank 2 of 4 would see
    assert torch.equal(d.shard(torch.arange(8)), torch.tensor([4, 5]))
    with pytest.raises(GptlabError, match="batch_size=6 does not split over 4 processes"):
        d.check_batch(6)


def test_two_nodes_on_loopback_follow_one_process(char_data, tmp_path):
    """Two "machines" (one process each) meeting at node 0's address, writing one run: the single-process run."""
    import socket

    train(char_data, tmp_path / "one", tiny_config(*SETTINGS), progress=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen([sys.executable, "-m", "gptlab", "train", "--nnodes", "2", "--node-rank", str(rank),
                               "--rdzv-endpoint", f"127.0.0.1:{port}", "--data", str(char_data),
                               "--out", str(tmp_path / "two"), *sets(*TINY, *SETTINGS)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
             for rank in (0, 1)]
    errors = [p.communicate(timeout=300)[1] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], errors
    one, two = records(tmp_path / "one", "loss"), records(tmp_path / "two", "loss")
    assert sorted(two) == list(range(1, 7)) and two == pytest.approx(one, rel=1e-5, abs=1e-6)
    a = load_file(str(checkpoint_dir(tmp_path / "one") / "model.safetensors"))
    b = load_file(str(checkpoint_dir(tmp_path / "two") / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)


def test_bad_multi_node_flags_are_one_line(capsys):
    from gptlab.cli import main

    assert main(["train", "--nnodes", "2", "--node-rank", "2", "--rdzv-endpoint", "h:1", "--data", "d", "--out", "o"]) == 2
    assert main(["train", "--nnodes", "2", "--rdzv-endpoint", "nohost", "--data", "d", "--out", "o"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--node-rank 2 must be below --nnodes 2" in err[0] and "HOST:PORT" in err[1]
