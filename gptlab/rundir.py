"""A run directory on disk, with no model in sight: its layout, what it records, and who may write it.

    RUN_DIR/config.yaml     the resolved RunConfig (vocab_size filled in from the data)
    RUN_DIR/run.json        where the data came from (path, tokenizer kind, hashes), the transforms applied
    RUN_DIR/tokenizer/      a copy of the data's tokenizer
    RUN_DIR/metrics.jsonl   one JSON record per logged step and per evaluation
    RUN_DIR/checkpoints/    see gptlab.train.checkpoint

Training (gptlab.train) and loading (gptlab.run) both stand on this module; it imports neither.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from gptlab.config import RunConfig, build_config, save_yaml
from gptlab.data import TokenData
from gptlab.errors import CheckpointError
from gptlab.io import atomic_write_json, check_output_dir, writing
from gptlab.tokenizers import Tokenizer


RUN_FILES = ("config.yaml", "run.json", "tokenizer", "metrics.jsonl", "checkpoints", "tensorboard")


def is_run(run_dir: str | Path) -> bool:
    return (Path(run_dir) / "config.yaml").is_file()


def check_run_out(run_dir: str | Path) -> None:
    """`run_dir` may receive a new run: it is absent, empty, a run that never saved a checkpoint (nothing
    resumable to lose), or a lesson's cell folder (cell.json) without a run's files yet."""
    from gptlab.lock import LOCK_FILE

    run_dir = Path(run_dir)
    if run_dir.is_symlink() or (run_dir.exists() and not run_dir.is_dir()):
        raise CheckpointError(f"{run_dir} exists and is not a directory; choose another --out")
    if (run_dir / "checkpoints" / "last.json").exists():
        raise CheckpointError(f"{run_dir} already holds a run; continue it with `gptlab train --resume {run_dir}` "
                              "or choose another --out")
    if not run_dir.exists() or is_run(run_dir) or not any(p.name != LOCK_FILE for p in run_dir.iterdir()):
        return
    if any((run_dir / name).exists() for name in RUN_FILES) or not (run_dir / "cell.json").is_file():
        raise CheckpointError(f"{run_dir} is not empty and does not hold a gptlab run; nothing was changed: "
                              "choose another --out")


def create_run(run_dir: str | Path, cfg: RunConfig, data: TokenData, info: dict | None = None) -> None:
    run_dir = Path(run_dir)
    check_run_out(run_dir)
    save_yaml(cfg, run_dir / "config.yaml")  # first: from here on a rerun sees a run that it may start again
    atomic_write_json(run_dir / "run.json", {"data": str(data.directory.resolve()), "tokenizer": data.meta["tokenizer"],
                                             "source_sha256": data.meta.get("source_sha256"),
                                             "tokens_sha256": data.meta.get("tokens_sha256"), **(info or {})})
    with writing(run_dir):
        shutil.rmtree(run_dir / "tokenizer", ignore_errors=True)  # of a start that never saved a checkpoint
        shutil.copytree(data.tokenizer_dir, run_dir / "tokenizer")


def load_run_config(run_dir: str | Path) -> RunConfig:
    run_dir = Path(run_dir)
    if not is_run(run_dir):
        raise CheckpointError(f"{run_dir} is not a gptlab run directory (no config.yaml); "
                              "create one with `gptlab train --data DATA_DIR --out RUN_DIR`")
    return build_config(run_dir / "config.yaml")


def run_info(run_dir: str | Path) -> dict:
    path = Path(run_dir) / "run.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        raise CheckpointError(f"{path} is missing or corrupt; the run directory is damaged") from None


def is_run_output(path: Path) -> bool:
    """A run directory that a single command wrote whole (import, merge, quantize): step-0 checkpoint only."""
    return is_run(path) and not (path / "metrics.jsonl").exists()


def check_model_run_out(out: str | Path, overwrite: bool = False) -> None:
    """Refuse `out` unless it is absent, empty, or (with `overwrite`) a run written by import/merge/quantize."""
    check_output_dir(out, "model written by gptlab import/merge/quantize", is_run_output, overwrite)


def _files_digest(directory: Path) -> str | None:
    import hashlib

    h = hashlib.sha256()
    try:
        for f in sorted(p for p in directory.rglob("*") if p.is_file()):
            h.update(str(f.relative_to(directory)).encode() + b"\0" + f.read_bytes() + b"\0")
    except OSError:
        return None
    return h.hexdigest()


def same_tokenizer(tok: Tokenizer, tok_dir: Path, data: TokenData) -> bool:
    """Whether `data` was tokenized by `tok` (saved in `tok_dir`): the same files, or else the same ids for the
    data's own text (its first tokens, decoded by the data's tokenizer and encoded again by `tok`)."""
    from gptlab.errors import GptlabError

    digest = _files_digest(tok_dir)
    if digest is not None and digest == _files_digest(data.tokenizer_dir):
        return True
    if data.meta.get("vocab_size") != tok.vocab_size:
        return False
    sample = [int(t) for t in data.train[:2000]]
    if data.meta.get("eot_id") in sample:
        sample = sample[: sample.index(data.meta["eot_id"])]
    try:
        keep = max(1, len(sample) - 16)  # the slice may end mid-word, which encodes differently
        return tok.encode(data.tokenizer().decode(sample))[:keep] == sample[:keep]
    except GptlabError:
        return False


def check_data_for_run(run_dir: str | Path, tok: Tokenizer, data: TokenData) -> None:
    """Refuse data that the run's tokenizer did not make: its loss would be meaningless."""
    run_dir = Path(run_dir)
    if not same_tokenizer(tok, run_dir / "tokenizer", data):
        raise CheckpointError(f"{data.directory} was tokenized with another tokenizer than {run_dir} "
                              f"({data.meta.get('vocab_size')} vs {tok.vocab_size} tokens, or other ids); prepare it "
                              f"with `gptlab prepare --tokenizer-from {run_dir / 'tokenizer'}`")


def run_data_dir(run_dir: str | Path, data_dir: str | Path | None = None) -> Path:
    """The data directory to use with a run: the one given, else the one it was trained on."""
    if data_dir is not None:
        return Path(data_dir)
    recorded = run_info(run_dir).get("data")
    if not recorded:
        raise CheckpointError(f"{run_dir} has no training data on record (an imported model); pass --data DATA_DIR "
                              f"made with `gptlab prepare --tokenizer-from {Path(run_dir) / 'tokenizer'}`")
    return Path(recorded)
