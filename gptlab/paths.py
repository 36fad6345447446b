"""Paths named inside files (checkpoint pointers, sharded-weight indexes) stay inside the folder that holds them.

A file may name another file by a relative name only; `..`, absolute paths and symlinks that lead out of the
folder are refused, so a hostile or damaged file can never make gptlab read (or load weights from) elsewhere.
"""

from __future__ import annotations

from pathlib import Path

from gptlab.errors import CheckpointError


def resolve(path: str | Path) -> Path:
    """Path.resolve, with a symlink loop or an unreadable path as a one-line error."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError) as e:
        raise CheckpointError(f"cannot resolve {path}: {e}") from None


def contained(base: str | Path, name: object, source: str, root: str | Path | None = None) -> Path:
    """`base / name`, after checking that it resolves (symlinks followed) to a path inside `root` (default:
    `base`; a folder above it where files of `base` may legitimately link, e.g. a Hugging Face cache)."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise CheckpointError(f"{source} names {name!r}, which is not a file name")
    if Path(name).is_absolute():
        raise CheckpointError(f"{source} names the absolute path {name!r}; only files inside its folder are read")
    base = Path(base)
    path = base / name
    if not resolve(path).is_relative_to(resolve(root if root is not None else base)):
        raise CheckpointError(f"{source} names {name!r}, which leads outside {base}; only files inside its folder "
                              "are read")
    return path


def inside(base: str | Path, path: str | Path, source: str) -> Path:
    """`path` itself (a fixed file name in `base`), refused when a symlink makes it lead outside `base`."""
    return contained(base, str(Path(path).relative_to(base)), source)
