"""Building and loading gptlab's C++ integer kernels (csrc/int_gemv.cpp: int8 and 4-bit weights) on first use.

The kernels are compiled once per machine with torch's extension builder (a C++ compiler and ninja; the `ninja`
package is a gptlab dependency) into ~/.cache/gptlab/kernels (or $GPTLAB_KERNEL_CACHE), ~20 s the first time,
then loaded in well under a second. They need AVX-512; where they cannot be had (another CPU, no compiler)
`load()` returns None with the reason in `why_not`, and callers take the torch.compile or dequantizing paths.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("csrc") / "int_gemv.cpp"
FLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mfma", "-fopenmp"]
STALE_LOCK_S = 600  # a build takes ~20 s; a lock this old was left by a killed build

_module = None
why_not: str | None = None  # why the kernel is not used, once a load was tried and failed
_lock = threading.Lock()


def _put_ninja_on_path() -> None:
    """torch's builder calls `ninja` by name; a virtual environment's own bin/ is not on PATH unless activated."""
    try:
        import ninja
    except ImportError:
        return
    bin_dir = getattr(ninja, "BIN_DIR", None)
    if bin_dir and bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")


def build_directory() -> Path:
    """One folder per source, flags and torch version, so an edited kernel is rebuilt and never mixed up.

    torch's builder holds a lock file there while compiling; a build killed midway leaves it behind and every
    later build would wait on it forever, so a lock older than STALE_LOCK_S is removed first.
    """
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode() + torch.__version__.encode()).hexdigest()
    root = Path(os.environ.get("GPTLAB_KERNEL_CACHE", Path.home() / ".cache" / "gptlab" / "kernels"))
    directory = root / f"int_gemv-{digest[:16]}"
    directory.mkdir(parents=True, exist_ok=True)
    lock = directory / "lock"
    if lock.exists() and time.time() - lock.stat().st_mtime > STALE_LOCK_S:
        lock.unlink(missing_ok=True)
    return directory


def load():
    """The compiled extension module, or None (see `why_not`)."""
    global _module, why_not
    if _module is not None or why_not is not None:
        return _module
    with _lock:
        if _module is not None or why_not is not None:
            return _module
        if os.environ.get("GPTLAB_NATIVE_KERNELS", "1") == "0":
            why_not = "turned off by GPTLAB_NATIVE_KERNELS=0"
        elif torch.backends.cpu.get_cpu_capability() != "AVX512":
            why_not = f"this CPU has {torch.backends.cpu.get_cpu_capability()}, the kernel needs AVX512"
        else:
            try:
                from torch.utils.cpp_extension import load as build

                _put_ninja_on_path()
                directory = build_directory()
                if not (directory / "gptlab_int_gemv.so").is_file():  # say why the first call takes a while
                    print("building gptlab's integer kernels (first use on this machine, ~20 s) ...", file=sys.stderr,
                          flush=True)
                _module = build("gptlab_int_gemv", [str(SOURCE)], extra_cflags=FLAGS, extra_ldflags=["-fopenmp"],
                                build_directory=str(directory), verbose=False)
            except Exception as e:  # no compiler, no ninja, a failed build: the result is the same, only slower
                why_not = f"it could not be built ({type(e).__name__}: {str(e).strip().splitlines()[-1][:200]})"
    return _module
