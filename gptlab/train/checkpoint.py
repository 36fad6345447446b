"""Checkpoints: safetensors for every tensor, JSON for the rest, never a pickle.

    RUN_DIR/checkpoints/step-00000500/model.safetensors        weights of the plain module (one copy of a tie)
                                     /train_state.safetensors  optimizer moments, RNG and sampler states
                                     /state.json               step, best val loss, optimizer hyper-parameters
    RUN_DIR/checkpoints/last.json, best.json                   pointers {"dir": "step-00000500", "step": 500}

A checkpoint directory is written under a temp name, fsynced and renamed; then the pointer file is replaced
atomically. A kill at any instant leaves the previous pointer and the directory it names intact.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gptlab.errors import CheckpointError
from gptlab.io import atomic_write_json, fsync_dir, writing
from gptlab.paths import contained
from gptlab.tensorfile import read_tensors, write_tensors

MODEL_FILE = "model.safetensors"
STATE_FILE = "train_state.safetensors"
META_FILE = "state.json"
DIR_NAME = re.compile(r"^step-\d{8}$")


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under torch.compile / DDP wrappers, so saved keys carry no `_orig_mod.` / `module.`."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if inner is None or not isinstance(inner, nn.Module):
            return model
        model = inner


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with each shared tensor once (safetensors refuses aliases; a tie is restored on load)."""
    state, seen = {}, {}
    for name, t in unwrap(model).state_dict().items():
        key = (t.data_ptr(), t.shape, t.dtype) if t.numel() else None
        if key is not None and key in seen:
            continue
        if key is not None:
            seen[key] = name
        state[name] = t.detach().contiguous().cpu()
    return state


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load `state` into `model`, checking names and shapes first so a mismatch is a clear error."""
    model = unwrap(model)
    expected = model.state_dict()
    tied = set(expected) - set(model_state(model))  # aliases of tensors saved under another name
    missing = sorted(set(expected) - set(state) - tied)
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{source} does not match this model: missing {missing[:5]}, unexpected "
                              f"{unexpected[:5]}; was it saved with another config?")
    for name, t in state.items():
        if t.shape != expected[name].shape:
            raise CheckpointError(f"{source}: {name} has shape {tuple(t.shape)} but the config needs "
                                  f"{tuple(expected[name].shape)}; was it saved with another config?")
    model.load_state_dict(state, strict=False)


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    return read_tensors(path, "checkpoint file")


# ---------------------------------------------------------------------------------------------------------------
def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    sd = opt.state_dict()
    tensors = {f"optim.{idx}.{k}": v.detach().contiguous().cpu() for idx, st in sd["state"].items()
               for k, v in st.items() if isinstance(v, torch.Tensor)}
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, groups


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = t
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in groups]
    try:
        opt.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"optimizer state does not fit this model ({e}); was it saved with another config?") from None


@dataclass
class Checkpoint:
    step: int
    model: dict[str, torch.Tensor]
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # optimizer, RNG, sampler
    meta: dict[str, Any] = field(default_factory=dict)


def _dir_name(step: int) -> str:
    return f"step-{step:08d}"


def save_checkpoint(run_dir: Path, ckpt: Checkpoint, pointers: tuple[str, ...] = ("last",)) -> Path:
    """Write the checkpoint directory atomically, then point `last` (and/or `best`) at it.

    A failed write (full disk, file-size limit) is one error line; the previous checkpoint stays intact."""
    root = Path(run_dir) / "checkpoints"
    final = root / _dir_name(ckpt.step)
    tmp = root / f".{final.name}.tmp"
    try:
        with writing(final):
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            write_tensors(ckpt.model, tmp / MODEL_FILE)
            if ckpt.tensors:
                write_tensors(ckpt.tensors, tmp / STATE_FILE)
            (tmp / META_FILE).write_text(json.dumps({"step": ckpt.step, **ckpt.meta}, indent=2) + "\n")
            for f in tmp.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            fsync_dir(tmp)
            if final.exists():  # an older attempt at this step that no pointer can name any more
                if final.name in {_pointer(root, p) for p in ("last", "best")}:
                    old = root / f".{final.name}.old"
                    shutil.rmtree(old, ignore_errors=True)
                    os.replace(final, old)
                else:
                    shutil.rmtree(final)
            os.replace(tmp, final)
            fsync_dir(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for p in pointers:
        atomic_write_json(root / f"{p}.json", {"dir": final.name, "step": ckpt.step})
    _collect_garbage(root)
    return final


class _Corrupt(str):
    """What a pointer file that exists but cannot be trusted reads as."""


def _pointer(root: Path, name: str) -> str | None:
    """The checkpoint folder a pointer file names (a plain `step-NNNNNNNN` inside `root`), None when the file is
    absent, or a `_Corrupt` string saying what is wrong with it."""
    path = root / f"{name}.json"
    if not path.exists():
        return None
    try:
        target = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return _Corrupt("it is not readable JSON")
    d = target.get("dir") if isinstance(target, dict) else None
    if not isinstance(d, str) or not DIR_NAME.match(d):
        return _Corrupt(f"it names {d!r}, not a step-NNNNNNNN folder of {root}")
    return d


def _collect_garbage(root: Path) -> None:
    keep = {_pointer(root, p) for p in ("last", "best")}
    if any(isinstance(k, _Corrupt) for k in keep):  # never delete what a damaged pointer may have named
        return
    for d in root.iterdir():
        if d.is_dir() and d.name not in keep:
            shutil.rmtree(d, ignore_errors=True)


def checkpoint_dir(run_dir: Path, which: str = "last") -> Path:
    root = Path(run_dir) / "checkpoints"
    name = _pointer(root, which)
    if isinstance(name, _Corrupt):
        raise CheckpointError(f"{root / (which + '.json')} is damaged ({name}); the run cannot be read from it: "
                              f"restore it, or use the other checkpoint (--checkpoint)")
    if name is None:
        if which == "best" and isinstance(_pointer(root, "last"), str):
            return checkpoint_dir(run_dir, "last")
        raise CheckpointError(f"no '{which}' checkpoint in {run_dir}; is it a gptlab run directory "
                              "(created by `gptlab train`)?")
    d = contained(root, name, str(root / f"{which}.json"))
    if not d.is_dir():
        raise CheckpointError(f"checkpoint {d} named by {root / (which + '.json')} is missing; the run is damaged")
    return d


def load_checkpoint(run_dir: Path, which: str = "last", with_state: bool = True) -> Checkpoint:
    d = checkpoint_dir(run_dir, which)
    try:
        meta = json.loads((d / META_FILE).read_bytes())
        step = meta.pop("step")
        if not isinstance(step, int) or step < 0:
            raise ValueError
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        raise CheckpointError(f"{d / META_FILE} is missing or corrupt; use another checkpoint") from None
    model = read_safetensors(contained(d, MODEL_FILE, str(d)))
    state = contained(d, STATE_FILE, str(d))
    tensors = read_safetensors(state) if with_state and state.exists() else {}
    return Checkpoint(step=step, model=model, tensors=tensors, meta=meta)
