import json
import math
import os
import subprocess
import sys

import pytest

from gptlab.cli import main

TINY = ["--set", "model.n_layer=1", "--set", "model.n_head=2", "--set", "model.n_embd=16",
        "--set", "model.block_size=16", "--set", "train.batch_size=2", "--set", "train.max_steps=6",
        "--set", "train.eval_every=3", "--set", "train.eval_batches=1", "--set", "train.threads=1"]


@pytest.fixture(scope="module")
def trained_run(char_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--data", str(char_data), "--out", str(run)] + TINY) == 0
    return run


def one_line_error(capsys, argv, fragment):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and "Traceback" not in err[0] and fragment in err[0], err


def test_sample_and_eval(trained_run, capsys):
    assert main(["sample", "--run", str(trained_run), "--prompt", "The king", "--max-new-tokens", "20",
                 "--seed", "1", "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("The king") and len(out) >= len("The king") + 20
    assert main(["eval", "--run", str(trained_run), "--lengths", "8,16,32"]) == 0
    out = capsys.readouterr().out
    assert "length      8: val loss" in out and "length     32: cannot run" in out


def test_sample_compile_streams_the_same_text_and_says_how_it_decoded(trained_run, capsys, monkeypatch):
    import torch

    from gptlab import static_decode

    torch._dynamo.reset()  # traced by Dynamo, run without Inductor: the CLI path, without seconds of compiling
    monkeypatch.setattr(static_decode, "_compiled_step", torch.compile(
        static_decode._last_logits, backend="eager", dynamic=False, fullgraph=True))
    argv = ["sample", "--run", str(trained_run), "--prompt", "The ", "--max-new-tokens", "10", "--temperature", "0"]
    assert main(argv) == 0
    eager = capsys.readouterr().out
    assert main(argv + ["--compile"]) == 0
    out = capsys.readouterr()
    assert out.out == eager and "decoding: compiled static step" in out.err
    torch._dynamo.reset()


def test_eval_per_position_curve_and_eval_time_settings(trained_run, tmp_path, capsys):
    out_json, out_png = tmp_path / "eval.json", tmp_path / "pos.png"
    assert main(["eval", "--run", str(trained_run), "--lengths", "16,32", "--set", "model.learned_overflow=clamp",
                 "--json", str(out_json), "--plot", str(out_png)]) == 0
    out = capsys.readouterr().out
    assert "length     32: val loss" in out and "per-position loss" in out and out_png.stat().st_size > 1000
    rows = json.loads(out_json.read_text())
    assert [len(r["per_position"]) for r in rows] == [16, 32]
    assert abs(sum(rows[1]["per_position"]) / 32 - rows[1]["loss"]) < 1e-9  # the curve averages to the loss
    assert "bits/byte" in out and abs(rows[1]["bits_per_byte"] * rows[1]["bytes_per_token"] * math.log(2)
                                      - rows[1]["loss"]) < 1e-9
    one_line_error(capsys, ["eval", "--run", str(trained_run), "--set", "model.n_layer=2"],
                   "would change the trained model")


def test_train_resume_extends(trained_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    assert main(["train", "--resume", str(run), "--set", "train.max_steps=8"]) == 0
    assert "step 8" in capsys.readouterr().out


@pytest.mark.parametrize("argv, fragment", [
    (["prepare", "--corpus", "/no/such/file.txt", "--out", "{tmp}/d"], "does not exist"),
    (["train", "--data", "{data}", "--out", "{tmp}/r", "--set", "model.n_layr=2"], "unknown config key 'model.n_layr'"),
    (["train", "--data", "{data}", "--out", "{tmp}/r", "--set", "model.n_head=5"], "not divisible by model.n_head=5"),
    (["train", "--data", "{data}", "--out", "{tmp}/r", "--set", "train.batch_size=0"], "train.batch_size: must be positive"),
    (["train", "--data", "{data}", "--out", "{tmp}/r", "--set", "train.lr=high"], "train.lr: expected a number"),
    (["train", "--data", "{data}", "--out", "{tmp}/r", "--set", "model.block_size=1000000"], "too few for one block"),
    (["train", "--data", "{tmp}", "--out", "{tmp}/r"], "not a gptlab data directory"),
    (["train", "--data", "{data}", "--out", "{tmp}/r", "--device", "cuda"], "train.device=cuda but"),  # CPU torch
    (["train", "--resume", "{tmp}"], "not a gptlab run directory"),
    (["sample", "--run", "{run}", "--prompt", "t" * 40], "the prompt is 40 tokens but this model's context is 16"),
    (["sample", "--run", "{run}", "--prompt", "Zebra ✓"], "not in this char-level vocabulary"),
    (["sample", "--run", "{tmp}", "--prompt", "a"], "not a gptlab run directory"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, char_data, trained_run, argv, fragment):
    argv = [a.format(tmp=tmp_path, data=char_data, run=trained_run) for a in argv]
    one_line_error(capsys, argv, fragment)
    assert not (tmp_path / "r").exists()


def test_truncated_checkpoint_via_cli(capsys, tmp_path, trained_run):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    name = json.loads((run / "checkpoints/last.json").read_text())["dir"]
    weights = run / "checkpoints" / name / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    one_line_error(capsys, ["sample", "--run", str(run), "--prompt", "a"], "corrupt or truncated")
    one_line_error(capsys, ["train", "--resume", str(run)], "corrupt or truncated")


def test_console_command_help_and_error_exit_code(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    for cmd in ["prepare", "train", "sample", "eval", "quickstart", "bench"]:
        r = subprocess.run([sys.executable, "-m", "gptlab", cmd, "--help"], capture_output=True, text=True, env=env)
        assert r.returncode == 0 and "usage: gptlab " + cmd in r.stdout
    r = subprocess.run([sys.executable, "-m", "gptlab", "prepare", "--corpus", str(tmp_path / "none"), "--out",
                        str(tmp_path / "d")], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_every_help_page_renders_without_format_leftovers():
    import argparse

    from gptlab.cli import build_parser

    def pages(parser):
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from pages(sub)

    seen = 0
    for parser in pages(build_parser()):
        text = parser.format_help()
        assert "%%" not in text and "%(" not in text, parser.prog
        seen += 1
    assert seen > 20
