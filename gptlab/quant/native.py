"""Building and loading gptlab's C++ int8 kernel (csrc/int8_gemv.cpp) on first use.

The kernel is compiled once per machine with torch's extension builder (a C++ compiler and ninja; the `ninja`
package is a gptlab dependency) into torch's extension cache, ~20 s the first time, then loaded in well under a
second. It needs AVX-512; where it cannot be had (another CPU, no compiler) `load()` returns None with the reason
in `why_not`, and callers use the torch.compile path instead.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("csrc") / "int8_gemv.cpp"
FLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mfma", "-fopenmp"]

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
                _module = build("gptlab_int8_gemv", [str(SOURCE)], extra_cflags=FLAGS, extra_ldflags=["-fopenmp"],
                                verbose=False)
            except Exception as e:  # no compiler, no ninja, a failed build: the result is the same, only slower
                why_not = f"it could not be built ({type(e).__name__}: {str(e).strip().splitlines()[-1][:200]})"
    return _module
