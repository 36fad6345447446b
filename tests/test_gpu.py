"""The GPU path (`--device cuda`): training, exact resume, CPU-vs-GPU parity, sampling, evaluation, benchmarks and
lesson cells. Marked `gpu`: they skip on machines without a CUDA GPU (the CPU wheel this project pins has none);
`scripts/gpu-check.sh` runs them, with the benchmarks, where one exists."""

from __future__ import annotations

import json

import pytest
import torch

from gptlab.cli import main
from gptlab.model import GPT
from gptlab.run import load_model
from gptlab.train.loop import resume, train
from tests.conftest import tiny_config

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU and a CUDA build of torch")]


def test_cpu_and_gpu_compute_the_same_logits():
    torch.manual_seed(0)
    model = GPT(tiny_config().model).eval()
    x = torch.randint(0, model.cfg.vocab_size, (2, 32))
    with torch.no_grad():
        cpu = model(x)
        gpu = model.to("cuda")(x.to("cuda")).cpu()
    assert torch.allclose(cpu, gpu, atol=1e-4), float((cpu - gpu).abs().max())


def test_training_on_the_gpu_resumes_bit_for_bit(char_data, tmp_path):
    cfg = tiny_config("train.device=cuda")
    train(char_data, tmp_path / "whole", cfg)
    half = tiny_config("train.device=cuda", "train.max_steps=10")
    train(char_data, tmp_path / "split", half)
    resume(tmp_path / "split", ["train.max_steps=20"])
    a, _, _ = load_model(tmp_path / "whole", "last")
    b, _, _ = load_model(tmp_path / "split", "last")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


def test_bf16_autocast_trains_on_the_gpu(char_data, tmp_path):
    summary = train(char_data, tmp_path / "bf16", tiny_config("train.device=cuda", "train.dtype=bfloat16"))
    assert summary["step"] == 20 and summary["val_loss"] < 4.0


def test_sample_and_eval_run_on_the_gpu_and_agree_with_the_cpu(char_data, tmp_path, capsys):
    train(char_data, tmp_path / "run", tiny_config())
    losses = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / f"eval-{device}.json"
        assert main(["eval", "--run", str(tmp_path / "run"), "--device", device, "--json", str(out)]) == 0
        losses[device] = json.loads(out.read_text())[0]["loss"]
    assert losses["cuda"] == pytest.approx(losses["cpu"], abs=1e-4)
    assert main(["sample", "--run", str(tmp_path / "run"), "--device", "cuda", "--max-new-tokens", "20",
                 "--seed", "0"]) == 0
    assert len(capsys.readouterr().out) > 10


@pytest.mark.parametrize("what", ["train", "decode"])
def test_benchmarks_run_on_the_gpu_against_transformers(tmp_path, what):
    out = tmp_path / f"{what}.json"
    small = ["--set", "model.n_layer=2", "--set", "model.n_head=2", "--set", "model.n_embd=64"]
    extra = ["--steps", "3"] if what == "train" else ["--new-tokens", "8", "--repeats", "1"]
    assert main(["bench", what, *small, *extra, "--device", "cuda", "--vs", "transformers", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["device"] == "cuda" and result["gptlab_tokens_per_s"] > 0
    assert result["transformers_tokens_per_s"] > 0


def test_a_lesson_runs_its_cells_on_the_gpu(tmp_path):
    out = tmp_path / "tying"
    assert main(["lab", "run", "tying", "--profile", "quick", "--device", "cuda", "--out", str(out)]) == 0
    cell = next(out.glob("cells/*/*/seed0/config.yaml"))
    assert "device: cuda" in cell.read_text()
