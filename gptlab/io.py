"""Atomic file writes: write a temp file beside the target, fsync it, rename it over the target.

A kill at any instant leaves either the old file or the new one, never a half-written one. Files and folders
get the permissions the user's umask gives (temp files are created private, then opened up before the rename),
and a temp folder left behind by a killed process is removed by the next command that writes beside it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from gptlab.errors import GptlabError


def fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def open_up(path: Path) -> None:
    """Give a file or folder made private by mkstemp/mkdtemp the mode a plain open/mkdir would have given it."""
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask())


def write_error(target: Path, e: OSError) -> GptlabError:
    """A one-line error for a failed write (full disk, file-size limit, read-only folder, permissions)."""
    why = {errno.ENOSPC: "the disk is full", errno.EFBIG: "the file-size limit was reached",
           errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
           errno.EPERM: "permission denied", errno.EDQUOT: "the disk quota is exceeded"}.get(
        e.errno, e.strerror or "the write was cut short (a full disk or a file-size limit?)")
    return GptlabError(f"cannot write {target}: {why}; free space or choose another location "
                       "(anything written before is intact)")


@contextlib.contextmanager
def writing(target: str | Path) -> Iterator[None]:
    """Turn an OSError raised while writing `target` into a one-line GptlabError."""
    try:
        yield
    except OSError as e:
        raise write_error(Path(target), e) from None


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temp path to write; on success it replaces `target` atomically, on error it is removed."""
    target = Path(target)
    with writing(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
    tmp = Path(tmp)
    try:
        with writing(target):
            yield tmp
            open_up(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, target)
            fsync_dir(target.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(target: str | Path, write: Callable[[Path], None]) -> None:
    with atomic_path(target) as tmp:
        write(tmp)


def atomic_write_text(target: str | Path, text: str) -> None:
    atomic_write(target, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write_json(target: str | Path, obj: Any) -> None:
    atomic_write_text(target, json.dumps(obj, indent=2) + "\n")


# -- whole output folders -------------------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temp_dirs(out: Path) -> None:
    """Remove `.OUT.tmp-PID-*` folders beside `out` whose process is gone (a kill during an earlier write)."""
    if not out.parent.is_dir():
        return
    for d in out.parent.glob(f".{out.name}.tmp-*"):
        try:
            pid = int(d.name[len(f".{out.name}.tmp-"):].split("-", 1)[0])
        except ValueError:
            continue
        if d.is_dir() and not d.is_symlink() and not _pid_alive(pid):
            shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def temp_dir_beside(out: str | Path) -> Iterator[Path]:
    """A fresh folder beside `out` (same file system, so it can be renamed into place), removed on the way out
    unless it was moved. Folders left by killed processes are cleaned first."""
    out = Path(out)
    with writing(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_dirs(out)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    try:
        with writing(out):
            yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(tmp: Path, out: Path) -> None:
    """Put the finished directory `tmp` at `out`; an old `out` is moved aside first and removed only after."""
    tmp, out = Path(tmp), Path(out)
    old = None
    if out.exists() or out.is_symlink():
        if not out.is_dir() or out.is_symlink():
            raise GptlabError(f"{out} exists and is not a directory; choose another --out")
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    open_up(tmp)
    os.replace(tmp, out)
    fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def check_output_dir(out: str | Path, kind: str, is_kind: Callable[[Path], bool], overwrite: bool = False) -> None:
    """Refuse to write `out` over anything but nothing, an empty folder or, with `overwrite`, a `kind` folder.

    Called before any work, so a refusal costs nothing and changes nothing."""
    out = Path(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise GptlabError(f"{out} exists and is not a directory; choose another --out")
    if not out.exists() or not any(out.iterdir()):
        return
    if not is_kind(out):
        raise GptlabError(f"{out} is not empty and does not hold a {kind}; nothing was changed: choose another --out")
    if not overwrite:
        raise GptlabError(f"{out} already holds a {kind}; pass --overwrite to replace it, or choose another --out")


def check_distinct(out: str | Path, *inputs: str | Path) -> None:
    """An output may not be one of the command's inputs, nor a folder that holds one."""
    from gptlab.paths import resolve

    o = resolve(out)
    for i in inputs:
        i = resolve(i)
        if i.is_relative_to(o):  # replacing `out` would remove the input
            raise GptlabError(f"--out {out} would overwrite the input {i}; choose another --out")
