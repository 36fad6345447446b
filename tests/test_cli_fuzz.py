"""A CLI fuzzer: hypothesis draws commands, options and hostile values and checks gptlab's contract for each.

The contract: the command ends with exit 0 (and its output exists), or with exit 2 and exactly one line on
stderr; never an exception escaping `main` (a traceback for a user); and nothing outside the command's own
`--out` changes (every file of the fixtures is hashed before and after). Commands that run for as long as
they are told to (training for N steps, lessons, benchmarks) get values bounded in time, so the suite stays fast.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from gptlab.cli import main
from gptlab.train.checkpoint import checkpoint_dir

pytestmark = pytest.mark.slow

TINY = ["model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.block_size=16", "train.batch_size=2",
        "train.max_steps=2", "train.eval_every=2", "train.eval_batches=1", "train.threads=1", "train.log_every=1"]
EXAMPLES = int(os.environ.get("GPTLAB_FUZZ_EXAMPLES", "200"))

# hostile values by kind (strings, as a shell would pass them)
INTS = ["-5", "-1", "0", "1", "3", "2147483648", "9223372036854775808", "1" + "0" * 30, "nan", "inf", "", "1e9",
        "x", "٣", " 2"]
FLOATS = ["-1", "0", "1e-9", "0.5", "1", "1.5", "nan", "inf", "-inf", "", "1e308", "x"]
TEXTS = ["", "a", "ROMEO.", "\x00", "\udcff", "t" * 300, "✓ Zebra", "<|endoftext|>", "\n\n"]
SET_VALUES = {  # --set keys with values that must each be refused or run quickly
    "model.n_layer": ["0", "-1", "1", "1000000000", "x", "1.5"],
    "model.n_embd": ["0", "3", "16", "100000000", "nan"],
    "model.n_head": ["0", "2", "7"],
    "model.block_size": ["0", "8", "16", "1000000", "-3"],
    "model.positions": ["rope", "alibi", "none", "sinusoidal", "bogus"],
    "model.dropout": ["-0.1", "0.5", "1", "nan"],
    "train.lr": ["0", "-1", "nan", "inf", "1e300", "0.01"],
    "train.batch_size": ["0", "-1", "1", "1000000000000"],
    "train.grad_clip": ["-1", "0", "nan"],
    "train.warmup_steps": ["-1", "0", "1000000000"],
    "train.dtype": ["bfloat16", "float16"],
    "train.on_nonfinite": ["skip", "rollback", "explode"],
    "train.bogus": ["1"],
    "lora.r": ["-1", "0", "2"],
    "quant.bits": ["1", "4", "9", "nan"],
    "quant.group_size": ["-1", "0", "8", "7"],
}


@pytest.fixture(scope="module")
def world(char_data, corpus_dir, tmp_path_factory):
    """Everything a command may be pointed at; none of it may change."""
    w = tmp_path_factory.mktemp("world")
    shutil.copytree(char_data, w / "data")
    run = w / "run"
    assert main(["train", "--data", str(w / "data"), "--out", str(run)] + [a for t in TINY for a in ("--set", t)]) == 0
    assert main(["finetune", "--run", str(run), "--data", str(w / "data"), "--out", str(w / "adapter"),
                 "--set", "lora.r=2", "--set", "train.max_steps=2", "--set", "train.eval_every=2",
                 "--set", "train.eval_batches=1", "--set", "train.batch_size=2"]) == 0
    assert main(["export", "hf", "--run", str(run), "--out", str(w / "hf")]) == 0
    shutil.copytree(run, w / "nan-run")
    weights = checkpoint_dir(w / "nan-run", "best") / "model.safetensors"
    from safetensors.torch import load_file, save_file

    state = load_file(str(weights))
    state["wte.weight"][0, 0] = float("nan")
    save_file(state, str(weights))
    shutil.copytree(corpus_dir, w / "corpus")
    (w / "file.txt").write_text("just a file\n")
    (w / "empty").mkdir()
    (w / "binary.txt").write_bytes(b"\xff\xfe\x00\x01" * 50)
    outside = tmp_path_factory.mktemp("outside") / "secret.txt"
    outside.write_text("outside the world\n")
    (w / "link-out").symlink_to(outside)
    (w / "link-loop").symlink_to(w / "link-loop")
    return w


def snapshot(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            key = str(p.relative_to(root))
            if p.is_symlink():
                out[key] = "link:" + os.readlink(p)
            elif p.is_file():
                out[key] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[key] = "dir"
    return out


def paths(world: Path, out: Path):
    """Where a path argument may point: real inputs of every kind, and things that are not what was asked for."""
    names = ["run", "data", "hf", "adapter", "nan-run", "corpus", "file.txt", "empty", "binary.txt", "link-out",
             "link-loop", "missing", "run/checkpoints", "run/tokenizer"]
    return st.sampled_from([str(world / n) for n in names] + [str(out / "new"), "", "/", "\udcff"])


@st.composite
def commands(draw, world: Path, out: Path):
    p = paths(world, out)
    opt = lambda name, values: [name, draw(st.sampled_from(values))] if draw(st.booleans()) else []  # noqa: E731
    outs = st.sampled_from([str(out / "new"), str(out / "new"), str(world / "run"), str(world / "data"),
                            str(world / "hf"), str(world / "file.txt"), str(out / "empty"), str(world / "link-out"),
                            str(out / "deep" / "sub")])
    command = draw(st.sampled_from(["sample", "eval", "prepare", "train", "quantize", "inspect", "export", "import",
                                    "merge", "finetune", "resume", "lab", "junk"]))
    if command == "sample":
        argv = ["sample", "--run", draw(st.sampled_from([str(world / "run"), str(world / "run")]) | p),
                *opt("--prompt", TEXTS), *opt("--max-new-tokens", INTS[:5] + ["1e12", "x"]),
                *opt("--temperature", FLOATS), *opt("--top-k", INTS), *opt("--top-p", FLOATS),
                *opt("--seed", INTS), *opt("--num-samples", ["-1", "0", "1", "2"]), *opt("--adapter", [draw(p)]),
                *opt("--quant", ["none", "int8", "int4", "int3"]), *opt("--checkpoint", ["best", "last", "worst"])]
    elif command == "eval":
        argv = ["eval", "--run", draw(st.just(str(world / "run")) | p), *opt("--lengths", ["0", "-5", "8,16", "16,x",
                "100000000", "8,,8", ""]), *opt("--max-windows", INTS), *opt("--data", [draw(p)]),
                *opt("--json", [str(out / "e.json"), str(world / "empty"), str(world / "run"), "", "/"]), *opt("--set", ["model.n_layer=2", "model.learned_overflow=clamp",
                                                              "model.rope_scaling=yarn", "x"])]
    elif command == "prepare":
        argv = ["prepare", "--corpus", draw(st.just(str(world / "corpus")) | p), "--out", draw(outs),
                *opt("--tokenizer", ["char", "bpe", "gpt2", "word"]), *opt("--vocab-size", INTS),
                *opt("--val-fraction", FLOATS), *opt("--tokenizer-from", [draw(p)]),
                *opt("--tiktoken-file", [draw(p)])]
    elif command in ("train", "finetune"):
        sets = [f"{k}={draw(st.sampled_from(v))}" for k, v in draw(st.lists(
            st.sampled_from(sorted(SET_VALUES.items())), max_size=3))]
        base = TINY if command == "train" else [t for t in TINY if t.startswith("train.")] + ["lora.r=2"]
        argv = [command, "--data", draw(st.just(str(world / "data")) | p), "--out", draw(outs),
                *(["--run", draw(st.just(str(world / "run")) | p)] if command == "finetune" else []),
                *[a for t in base + sets + ["train.max_steps=2"] for a in ("--set", t)],
                *opt("--nproc", ["0", "-1", "x"]), *opt("--config", [draw(p)])]
    elif command == "resume":
        argv = ["train", "--resume", draw(p.filter(lambda s: not s.endswith(("run", "nan-run"))))]
    elif command in ("quantize", "inspect"):
        argv = (["quantize", "--out", draw(outs)] if command == "quantize" else ["quant", "inspect"]) + \
            ["--run", draw(st.just(str(world / "run")) | p), *opt("--eval-windows", ["0", "-1", "1", "x"]),
             *opt("--data", [draw(p)]),
             *opt("--set", ["quant.bits=4", "quant.bits=0", "quant.group_size=8", "model.n_layer=2", "quant=1"])]
    elif command == "export":
        argv = ["export", draw(st.sampled_from(["hf", "gguf"])), "--run", draw(st.just(str(world / "run")) | p),
                "--out", draw(outs), *opt("--checkpoint", ["best", "last"])]
    elif command == "import":
        argv = ["import", "hf", draw(st.just(str(world / "hf")) | p), "--out", draw(outs),
                *(["--allow-pickle"] if draw(st.booleans()) else [])]
    elif command == "merge":
        argv = ["merge", "--run", draw(st.just(str(world / "run")) | p),
                "--adapter", draw(st.just(str(world / "adapter")) | p), "--out", draw(outs)]
    elif command == "lab":
        argv = ["lab", draw(st.sampled_from(["report", "run", "list2"])), draw(p),
                *opt("--jobs", ["0", "-1"]), *opt("--seeds", ["0", "1", "-2"]), *opt("--profile", ["huge", ""])]
        if argv[1] == "run":  # any lesson name drawn is a path, so the command must refuse it before training
            argv[2] = draw(st.sampled_from(["nope", "", "../tying"]))
    else:
        argv = draw(st.lists(st.sampled_from(["--set", "x=1", "sample", "--help2", "\udcff", "--run", "-"]),
                             max_size=4))
    return argv


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def test_the_cli_contract_holds_for_drawn_commands(world, tmp_path_factory):
    seen = {"ok": 0, "refused": 0}

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def check(data):
        out = tmp_path_factory.mktemp("out")
        (out / "empty").mkdir()  # an empty folder is a fine --out
        argv = data.draw(commands(world, out), label="argv")
        before = snapshot(world)
        code, stdout, stderr = run_cli(argv)
        lines = stderr.strip().splitlines()
        assert code in (0, 2), (argv, code, stderr[-2000:])
        if code == 2:
            assert len(lines) == 1 and "Traceback" not in stderr, (argv, lines)
            seen["refused"] += 1
        else:
            seen["ok"] += 1
            if "--out" in argv:
                assert Path(argv[argv.index("--out") + 1]).exists(), argv
        assert snapshot(world) == before, argv  # nothing outside the output changed
        shutil.rmtree(out, ignore_errors=True)

    check()
    print(f"fuzzer: {seen['ok']} commands succeeded, {seen['refused']} refused with one line")
    assert seen["refused"] > 0
