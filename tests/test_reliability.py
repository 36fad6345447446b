"""Nothing lost, nothing read from outside, nothing unexplained: each case a hostile user found, as a test.

Every bad request ends with exit code 2, one line on stderr, no traceback, and nothing already saved changed.
"""

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from gptlab.cli import main
from gptlab.data import prepare
from gptlab.generate import generate
from gptlab.io import atomic_write_text, temp_dir_beside
from gptlab.lock import RunLock
from gptlab.model import GPT
from gptlab.config import ModelConfig
from gptlab.train.checkpoint import checkpoint_dir
from gptlab.train.metrics import read_metrics

TINY = ["--set", "model.n_layer=1", "--set", "model.n_head=2", "--set", "model.n_embd=16",
        "--set", "model.block_size=16", "--set", "train.batch_size=2", "--set", "train.max_steps=6",
        "--set", "train.eval_every=3", "--set", "train.eval_batches=1", "--set", "train.threads=1",
        "--set", "train.checkpoint_every=3", "--set", "train.log_every=1"]


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its bytes (a symlink as its target), to prove nothing changed."""
    out = {}
    for p in sorted(Path(root).rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(root))] = os.readlink(p).encode()
        elif p.is_file():
            out[str(p.relative_to(root))] = p.read_bytes()
    return out


def refused(capsys, argv, fragment, unchanged: Path | None = None):
    capsys.readouterr()
    before = snapshot(unchanged) if unchanged is not None else None
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(err) == 1 and "Traceback" not in err[0] and fragment in err[0], err
    if unchanged is not None:
        assert snapshot(unchanged) == before
    return captured


@pytest.fixture(scope="module")
def run(char_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("rel") / "run"
    assert main(["train", "--data", str(char_data), "--out", str(out)] + TINY) == 0
    return out


@pytest.fixture(scope="module")
def rope_run(char_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("rel") / "rope"
    assert main(["train", "--data", str(char_data), "--out", str(out), "--set", "model.positions=rope"] + TINY) == 0
    return out


@pytest.fixture(scope="module")
def hf_dir(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("rel") / "hf"
    assert main(["export", "hf", "--run", str(run), "--out", str(out)]) == 0
    return out


@pytest.fixture
def copy(tmp_path):
    def make(src: Path, name: str | None = None) -> Path:
        dst = tmp_path / (name or src.name)
        shutil.copytree(src, dst, symlinks=True)
        return dst
    return make


def poison(run_dir: Path, which: str = "best") -> None:
    """Put NaN into one weight of a run's checkpoint."""
    path = checkpoint_dir(run_dir, which) / "model.safetensors"
    state = load_file(str(path))
    name = next(k for k in state if state[k].is_floating_point())
    state[name][0] = float("nan")
    save_file(state, str(path))


# -- data loss ---------------------------------------------------------------------------------------------------
def test_export_never_replaces_a_run_and_overwrites_an_export_only_when_asked(capsys, run, hf_dir, copy):
    other = copy(run, "other")
    refused(capsys, ["export", "hf", "--run", run, "--out", other], "does not hold a transformers", unchanged=other)
    target = copy(hf_dir, "export")
    refused(capsys, ["export", "hf", "--run", run, "--out", target], "pass --overwrite", unchanged=target)
    refused(capsys, ["export", "hf", "--run", run, "--out", run.parent], "would overwrite the input")
    (target / "stray.txt").write_text("x")
    assert main(["export", "hf", "--run", str(run), "--out", str(target), "--overwrite"]) == 0
    assert not (target / "stray.txt").exists() and (target / "model.safetensors").is_file()


def test_prepare_never_replaces_a_run_and_overwrites_data_only_when_asked(capsys, run, char_data, corpus_dir, copy):
    victim = copy(run, "victim")
    refused(capsys, ["prepare", "--corpus", corpus_dir, "--out", victim], "does not hold a gptlab data directory",
            unchanged=victim)
    data = copy(char_data, "data")
    refused(capsys, ["prepare", "--corpus", corpus_dir, "--out", data], "pass --overwrite", unchanged=data)
    assert main(["prepare", "--corpus", str(corpus_dir), "--out", str(data), "--overwrite"]) == 0


def test_merge_quantize_import_refuse_a_run_with_history(capsys, run, hf_dir, copy, tmp_path):
    victim = copy(run, "victim")
    refused(capsys, ["quantize", "--run", run, "--out", victim], "does not hold a model written by", unchanged=victim)
    refused(capsys, ["import", "hf", hf_dir, "--out", victim], "does not hold a model written by", unchanged=victim)
    refused(capsys, ["quantize", "--run", victim, "--out", victim, "--overwrite"], "would overwrite the input",
            unchanged=victim)


def test_a_second_writer_on_the_same_run_is_refused(capsys, run, copy):
    mine = copy(run, "mine")
    with RunLock(mine):  # another process training there
        refused(capsys, ["train", "--resume", mine, "--set", "train.max_steps=8"], "in use by another gptlab process",
                unchanged=mine)
    assert main(["train", "--resume", str(mine), "--set", "train.max_steps=8"]) == 0  # released: works again


def test_the_lock_is_held_across_processes(run, copy):
    mine = copy(run, "mine")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from gptlab.lock import RunLock; "
                               f"lock = RunLock({str(mine)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        r = subprocess.run([sys.executable, "-m", "gptlab", "train", "--resume", str(mine), "--set",
                            "train.max_steps=8"], capture_output=True, text=True)
        assert r.returncode == 2 and f"pid {holder.pid}" in r.stderr and r.stderr.count("\n") == 1
    finally:
        holder.kill()
        holder.wait()
    r = subprocess.run([sys.executable, "-m", "gptlab", "train", "--resume", str(mine), "--set", "train.max_steps=8"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr  # a killed holder leaves no stale lock


def test_a_damaged_metrics_line_loses_only_itself(run, copy):
    mine = copy(run, "mine")
    path = mine / "metrics.jsonl"
    original = read_metrics(path)
    lines = path.read_bytes().splitlines()
    assert len(lines) == len(original)
    lines[2] = b'{"step": 2, "loss": \xff\xfe garbage'  # corrupt bytes, not UTF-8, not JSON
    lines.insert(4, b"[1, 2, 3]")  # JSON but not a record
    path.write_bytes(b"\n".join(lines) + b"\n")
    assert main(["train", "--resume", str(mine), "--set", "train.max_steps=8"]) == 0
    kept = read_metrics(path)
    assert [r for r in kept if r["step"] <= 6] == original[:2] + original[3:]  # only the damaged record is gone
    assert {r["step"] for r in kept if r["step"] > 6} == {7, 8}


def test_a_run_that_never_saved_a_checkpoint_does_not_block_its_out(capsys, char_data, tmp_path):
    out = tmp_path / "r"
    refused(capsys, ["train", "--data", char_data, "--out", out, "--set", "train.batch_size=1000000000"] + TINY[:8],
            "needs at least")
    assert not out.exists()
    out.mkdir()
    (out / "config.yaml").write_text("model: {}\n")  # a start killed before its first checkpoint
    assert main(["train", "--data", str(char_data), "--out", str(out)] + TINY) == 0


def test_train_out_must_be_a_folder_without_foreign_run_files(capsys, char_data, tmp_path):
    f = tmp_path / "file"
    f.write_text("keep")
    refused(capsys, ["train", "--data", char_data, "--out", f] + TINY, "is not a directory")
    assert f.read_text() == "keep"
    d = tmp_path / "d"
    (d / "tokenizer").mkdir(parents=True)
    refused(capsys, ["train", "--data", char_data, "--out", d] + TINY, "does not hold a gptlab run", unchanged=d)


# -- paths outside the given directory -----------------------------------------------------------------------
@pytest.mark.parametrize("shard", ["../../x.safetensors", "/tmp/x.safetensors", "../../../../etc/passwd"])
def test_a_shard_index_cannot_name_files_outside_its_folder(capsys, hf_dir, copy, tmp_path, shard):
    d = copy(hf_dir)
    weights = d / "model.safetensors"
    shutil.copy(weights, tmp_path / "x.safetensors")
    shutil.copy(weights, "/tmp/x.safetensors") if shard.startswith("/tmp") else None
    weights.unlink()
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": shard}}))
    refused(capsys, ["import", "hf", d, "--out", tmp_path / "out"], "only files inside its folder are read")
    assert not (tmp_path / "out").exists()


def test_a_weights_symlink_out_of_the_folder_is_refused(capsys, hf_dir, copy, tmp_path):
    d = copy(hf_dir)
    outside = tmp_path / "elsewhere.safetensors"
    shutil.move(d / "model.safetensors", outside)
    (d / "model.safetensors").symlink_to(outside)
    refused(capsys, ["import", "hf", d, "--out", tmp_path / "out"], "leads outside")


@pytest.mark.parametrize("sharded", [False, True])
def test_a_hugging_face_cache_snapshot_may_link_into_its_blobs(hf_dir, tmp_path, sharded):
    repo = tmp_path / "models--org--tiny"
    snap, blobs = repo / "snapshots" / "abc123", repo / "blobs"
    snap.mkdir(parents=True)
    blobs.mkdir()
    files = {f.name: f.read_bytes() for f in hf_dir.iterdir()}
    if sharded:  # one shard named by an index, both linked into blobs/ as the cache does
        shard = "model-00001-of-00001.safetensors"
        files[shard] = files.pop("model.safetensors")
        keys = load_file(str(hf_dir / "model.safetensors")).keys()
        files["model.safetensors.index.json"] = json.dumps({"metadata": {}, "weight_map": {k: shard for k in keys}}).encode()
    for name, data in files.items():
        (blobs / name).write_bytes(data)
        (snap / name).symlink_to(Path("../../blobs") / name)
    assert main(["import", "hf", str(snap), "--out", str(tmp_path / "out")]) == 0


def test_checkpoint_pointers_cannot_lead_out_of_the_run(capsys, run, copy, tmp_path):
    mine, elsewhere = copy(run, "mine"), copy(run, "elsewhere")
    for target in ("../../elsewhere/checkpoints/" + checkpoint_dir(elsewhere, "last").name, "/etc", ".."):
        for which in ("last", "best"):
            (mine / "checkpoints" / f"{which}.json").write_text(json.dumps({"dir": target, "step": 6}))
        refused(capsys, ["sample", "--run", mine, "--prompt", "a"], "damaged")
        refused(capsys, ["train", "--resume", mine, "--set", "train.max_steps=8"], "damaged")
    (mine / "checkpoints" / "last.json").write_text("[1, 2]")
    refused(capsys, ["train", "--resume", mine], "damaged")


# -- memory -------------------------------------------------------------------------------------------------
def test_a_generation_too_long_for_memory_is_refused_before_printing(capsys, rope_run):
    captured = refused(capsys, ["sample", "--run", rope_run, "--prompt", "a", "--max-new-tokens", 10**12],
                       "KV cache of")
    assert captured.out == ""


def test_the_kv_cache_grows_as_decoding_goes_and_gives_the_same_tokens(monkeypatch):
    import gptlab.generate as gen

    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=11, n_layer=2, n_head=2, n_embd=16, block_size=8, positions="rope")).eval()
    expected = list(generate(model, [1, 2, 3], 40, temperature=0, use_cache=False))
    monkeypatch.setattr(gen, "FIRST_CACHE", 2)  # grows several times
    assert list(generate(model, [1, 2, 3], 40, temperature=0)) == expected


@pytest.mark.parametrize("change, fragment", [
    ({"n_layer": 10**9}, "needs at least"), ({"n_positions": 10**9}, "needs at least"),
    ({"n_layer": 1e9}, "must be a positive integer"), ({"n_embd": "16"}, "must be a positive integer"),
    ({"n_head": True}, "must be a positive integer"), ({"n_layer": None}, "must be a positive integer"),
])
def test_hostile_hf_configs_are_refused_before_allocating(capsys, hf_dir, copy, tmp_path, change, fragment):
    d = copy(hf_dir)
    config = json.loads((d / "config.json").read_text())
    config.update(change)
    (d / "config.json").write_text(json.dumps(config))
    refused(capsys, ["import", "hf", d, "--out", tmp_path / "out"], fragment)


# -- self-checks fail closed on NaN ----------------------------------------------------------------------------
def test_merge_of_a_nan_adapter_writes_nothing(capsys, run, char_data, copy, tmp_path):
    adapter = tmp_path / "ft"
    assert main(["finetune", "--run", str(run), "--data", str(char_data), "--out", str(adapter), "--set", "lora.r=2",
                 "--set", "train.max_steps=2", "--set", "train.eval_every=2", "--set", "train.eval_batches=1",
                 "--set", "train.batch_size=2"]) == 0
    weights = adapter / "adapter_model.safetensors"
    state = load_file(str(weights))
    next(iter(state.values()))[0] = float("nan")
    save_file(state, str(weights))
    refused(capsys, ["merge", "--run", run, "--adapter", adapter, "--out", tmp_path / "merged"], "NaN")
    refused(capsys, ["sample", "--run", run, "--adapter", adapter, "--prompt", "a"], "NaN")
    assert not (tmp_path / "merged").exists()


def test_a_nan_run_is_refused_by_every_command(capsys, run, copy, tmp_path):
    bad = copy(run, "bad")
    poison(bad)
    for argv in (["quantize", "--run", bad, "--out", tmp_path / "q"], ["sample", "--run", bad, "--prompt", "a"],
                 ["eval", "--run", bad], ["export", "hf", "--run", bad, "--out", tmp_path / "hf"]):
        refused(capsys, argv, "NaN")
    assert not (tmp_path / "q").exists() and not (tmp_path / "hf").exists()


def test_a_self_check_with_nan_fails_closed():
    from gptlab.tensorfile import max_abs_diff

    a = torch.zeros(3)
    assert max_abs_diff(a, a) == 0.0
    assert max_abs_diff(a, torch.tensor([0.0, float("nan"), 0.0])) == float("inf")
    assert max_abs_diff(torch.tensor([float("inf")]), torch.tensor([float("inf")])) == float("inf")


# -- bad values --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, fragment", [
    (["--max-new-tokens", "-5"], "--max-new-tokens"), (["--max-new-tokens", "0"], "--max-new-tokens"),
    (["--temperature", "-1"], "--temperature"), (["--temperature", "nan"], "--temperature"),
    (["--temperature", "inf"], "--temperature"), (["--top-p", "1.5"], "--top-p"), (["--top-p", "0"], "--top-p"),
    (["--top-k", "-3"], "--top-k"), (["--num-samples", "-1"], "--num-samples"), (["--seed", "-1"], "--seed"),
    (["--prompt", "t" * 40], "the prompt is 40 tokens"),
])
def test_sample_refuses_bad_values_before_printing(capsys, run, args, fragment):
    argv = ["sample", "--run", run, *(["--prompt", "a"] if "--prompt" not in args else []), *args]
    assert refused(capsys, argv, fragment).out == ""


@pytest.mark.parametrize("args, fragment", [
    (["--lengths", "0"], "at least 1"), (["--lengths", "-5"], "at least 1"), (["--lengths", "8,x"], "integers"),
    (["--max-windows", "-1"], "--max-windows"), (["--max-windows", "0"], "--max-windows"),
    (["--json", "{tmp}"], "is a directory"), (["--plot", "{tmp}"], "is a directory"),
])
def test_eval_refuses_bad_values(capsys, run, tmp_path, args, fragment):
    refused(capsys, ["eval", "--run", run, *[a.format(tmp=tmp_path) for a in args]], fragment)


def test_quantize_and_inspect_need_at_least_one_window(capsys, run, tmp_path):
    refused(capsys, ["quantize", "--run", run, "--out", tmp_path / "q", "--eval-windows", "0"], "--eval-windows")
    refused(capsys, ["quant", "inspect", "--run", run, "--eval-windows", "0"], "--eval-windows")


def test_eval_refuses_data_made_with_another_tokenizer(capsys, run, corpus_dir, tmp_path):
    other = tmp_path / "corpus"
    other.mkdir()
    (other / "a.txt").write_text("XYZ 0123456789 qwerty " * 400)
    prepare(other, tmp_path / "data", "char")
    refused(capsys, ["eval", "--run", run, "--data", tmp_path / "data"], "another tokenizer")
    refused(capsys, ["quantize", "--run", run, "--data", tmp_path / "data", "--out", tmp_path / "q"],
            "another tokenizer")


def test_resume_refuses_token_files_changed_in_place(capsys, char_data, copy, tmp_path):
    data = copy(char_data, "data")
    out = tmp_path / "r"
    assert main(["train", "--data", str(data), "--out", str(out)] + TINY) == 0
    tokens = np.fromfile(data / "train.bin", dtype=np.uint16)
    tokens[100:110] = tokens[200:210][::-1]
    tokens.tofile(data / "train.bin")  # same size, other content
    refused(capsys, ["train", "--resume", out, "--set", "train.max_steps=8"], "was changed after", unchanged=out)


# -- hostile or damaged files -------------------------------------------------------------------------------
@pytest.mark.parametrize("config, fragment", [
    ("[1, 2]", "must hold a JSON object"), ("{not json", "not valid JSON"),
    ('{"model_type": "gpt2"}', "must be a positive integer"),
])
def test_malformed_hf_configs(capsys, hf_dir, copy, tmp_path, config, fragment):
    d = copy(hf_dir)
    (d / "config.json").write_text(config)
    refused(capsys, ["import", "hf", d, "--out", tmp_path / "out"], fragment)


@pytest.mark.parametrize("index, fragment", [
    ("{not json", "not a valid shard index"), ('{"metadata": {}}', "not a valid shard index"),
    ('{"weight_map": {"a": "missing.safetensors"}}', "which is missing"),
    ('{"weight_map": [1]}', "not a valid shard index"),
])
def test_malformed_shard_indexes(capsys, hf_dir, copy, tmp_path, index, fragment):
    d = copy(hf_dir)
    (d / "model.safetensors").unlink()
    (d / "model.safetensors.index.json").write_text(index)
    refused(capsys, ["import", "hf", d, "--out", tmp_path / "out"], fragment)


@pytest.mark.parametrize("header", [2**60, 10**7, 2**64 - 1])
def test_safetensors_headers_larger_than_the_file(capsys, hf_dir, run, copy, tmp_path, header):
    d = copy(hf_dir)
    weights = d / "model.safetensors"
    body = weights.read_bytes()
    weights.write_bytes(header.to_bytes(8, "little") + body[8:])
    refused(capsys, ["import", "hf", d, "--out", tmp_path / "out"], "corrupt or truncated")
    mine = copy(run, "mine")
    ckpt = checkpoint_dir(mine, "best") / "model.safetensors"
    ckpt.write_bytes(header.to_bytes(8, "little") + ckpt.read_bytes()[8:])
    refused(capsys, ["sample", "--run", mine, "--prompt", "a"], "corrupt or truncated")


def test_an_adapter_config_that_is_a_list(capsys, run, tmp_path):
    adapter = tmp_path / "a"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("[1]")
    refused(capsys, ["sample", "--run", run, "--adapter", adapter, "--prompt", "a"], "must hold a JSON object")


# -- permissions and leftovers ------------------------------------------------------------------------------
def test_written_files_follow_the_umask(char_data, corpus_dir, tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "f.txt", "x")
        run = tmp_path / "run"
        assert main(["train", "--data", str(char_data), "--out", str(run)] + TINY) == 0
        assert main(["export", "hf", "--run", str(run), "--out", str(tmp_path / "hf")]) == 0
        prepare(corpus_dir, tmp_path / "d", "char")
    finally:
        os.umask(old)
    for p in [tmp_path / "f.txt", run / "config.yaml", run / "checkpoints" / "last.json", tmp_path / "hf",
              tmp_path / "hf" / "model.safetensors", tmp_path / "hf" / "config.json", tmp_path / "d",
              tmp_path / "d" / "meta.json"]:
        assert stat.S_IMODE(p.stat().st_mode) in (0o644, 0o755), (p, oct(p.stat().st_mode))


def test_temp_folders_of_killed_writers_are_cleaned(tmp_path):
    out = tmp_path / "export"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".export.tmp-{dead.stdout.strip()}-abcd"
    stale.mkdir()
    live = tmp_path / f".export.tmp-{os.getpid()}-live"
    live.mkdir()
    with temp_dir_beside(out) as tmp:
        assert tmp.is_dir()
    assert not stale.exists() and live.exists() and not tmp.exists()
