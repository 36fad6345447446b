"""Reading safetensors files that may be hostile or damaged: every failure is one clear error, never a traceback
or an allocation sized by a corrupt header."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import torch

from gptlab.errors import CheckpointError

MAX_HEADER = 100 * 2**20  # safetensors itself refuses headers over 100 MB


def read_tensors(path: str | Path, what: str = "weights file") -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, on the CPU."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} is missing")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise CheckpointError(f"cannot read {what} {path}: {e.strerror}") from None
    if len(head) < 8:
        raise CheckpointError(f"{what} {path} is truncated ({size} bytes); use another copy")
    (n,) = struct.unpack("<Q", head)
    if n > MAX_HEADER or n > size - 8:
        raise CheckpointError(f"{what} {path} is corrupt or truncated (its header claims {n:,} bytes of a "
                              f"{size:,}-byte file); use another copy")
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own error types for a corrupt or truncated file
        raise CheckpointError(f"{what} {path} is corrupt or truncated ({str(e).splitlines()[0][:200]}); "
                              "use another copy") from None


def non_finite(state: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor holding NaN or ±inf, or None."""
    for name, t in state.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            return name
    return None


def require_finite(state: dict[str, torch.Tensor], source: str) -> None:
    bad = non_finite(state)
    if bad is not None:
        raise CheckpointError(f"{source}: {bad} holds NaN or infinite values; the model cannot be used "
                              "(train it again from an earlier checkpoint, or with a lower train.lr)")


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b|, or inf when either side holds a non-finite value: a self-check must fail closed on NaN
    (every comparison with NaN is false, so `diff > tol` would let it through)."""
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return float("inf")
    return float((a.float() - b.float()).abs().max())


def write_tensors(state: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors' save_file, with its I/O failures (full disk, file-size limit) raised as OSError so the
    callers' one-line write errors apply."""
    import re

    from safetensors.torch import save_file

    from gptlab.io import umask

    try:
        save_file(state, str(path), metadata=metadata)
        os.chmod(path, 0o666 & ~umask())  # safetensors may create it private
    except OSError:
        raise
    except Exception as e:  # SafetensorError wraps the OS error in its message
        m = re.search(r"os error (\d+)", str(e))
        if m is None:
            raise
        code = int(m.group(1))
        raise OSError(code, os.strerror(code) if code else str(e), str(path)) from None
