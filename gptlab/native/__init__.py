"""Building and loading gptlab's C++ kernels on first use: int8 and 4-bit weight-only matrix products
(csrc/int_gemv.cpp) and float32 ones for a few rows (csrc/float_gemv.cpp, decoding's linear layers), one token's
attention over a fixed-size KV cache (csrc/decode_attention.cpp), and, with their gradients, a whole sequence's
causal attention (csrc/causal_attention.cpp), GPT-2's tanh GELU (csrc/gelu.cpp) and the training cross-entropy
(csrc/cross_entropy.cpp).

The kernels are compiled once per machine with torch's extension builder (a C++ compiler and ninja; the `ninja`
package is a gptlab dependency) into ~/.cache/gptlab/kernels (or $GPTLAB_KERNEL_CACHE), ~30 s the first time,
then loaded in well under a second. One source is built per instruction set: AVX-512 (16 lanes) where the CPU has
it, else AVX2 + FMA (8 lanes); GPTLAB_KERNEL_ISA=avx2 forces the AVX2 build on an AVX-512 CPU. Where neither can
be had (another CPU, no compiler) `load()` returns None with the reason in `why_not`, and callers take their
library paths. Each build is also registered as torch operators, `torch.ops.gptlab_<isa>.<kernel>` (`operator`),
which a compiled graph calls without returning to Python; eager code calls the module's functions, which is cheaper.
This is the lowest layer of gptlab: it imports nothing of it.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
from pathlib import Path

import torch

CSRC = Path(__file__).with_name("csrc")
# compiled into one module per instruction set; they share the header vec.h
SOURCES = ["int_gemv.cpp", "float_gemv.cpp", "decode_attention.cpp", "causal_attention.cpp", "gelu.cpp",
           "cross_entropy.cpp", "module.cpp"]
FLAGS = {"avx512": ["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mfma", "-fopenmp", "-DGPTLAB_AVX512"],
         "avx2": ["-O3", "-mavx2", "-mfma", "-fopenmp"]}
STALE_LOCK_S = 600  # a build takes ~30 s; a lock this old was left by a killed build

_module = None
why_not: str | None = None  # why the kernel is not used, once a load was tried and failed
isa: str | None = None  # the instruction set of the loaded kernels
_lock = threading.Lock()
_by_isa: dict[str, object] = {}  # builds asked for by name (tests force each path the CPU supports)
_shapes_registered: set[str] = set()


def supported_isas() -> list[str]:
    """The kernel builds this CPU can run, fastest first."""
    return {"AVX512": ["avx512", "avx2"], "AVX2": ["avx2"]}.get(torch.backends.cpu.get_cpu_capability(), [])


def _put_ninja_on_path() -> None:
    """torch's builder calls `ninja` by name; a virtual environment's own bin/ is not on PATH unless activated."""
    try:
        import ninja
    except ImportError:
        return
    bin_dir = getattr(ninja, "BIN_DIR", None)
    if bin_dir and bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")


def build_directory(isa: str = "avx512") -> Path:
    """One folder per source, flags and torch version, so an edited kernel is rebuilt and never mixed up.

    torch's builder holds a lock file there while compiling; a build killed midway leaves it behind and every
    later build would wait on it forever, so a lock older than STALE_LOCK_S is removed first.
    """
    code = b"".join(path.read_bytes() for path in sorted(CSRC.iterdir()) if path.suffix in (".cpp", ".h"))
    digest = hashlib.sha256(code + " ".join(FLAGS[isa]).encode() + torch.__version__.encode()).hexdigest()
    root = Path(os.environ.get("GPTLAB_KERNEL_CACHE", Path.home() / ".cache" / "gptlab" / "kernels"))
    directory = root / f"kernels-{isa}-{digest[:16]}"
    directory.mkdir(parents=True, exist_ok=True)
    lock = directory / "lock"
    if lock.exists() and time.time() - lock.stat().st_mtime > STALE_LOCK_S:
        lock.unlink(missing_ok=True)
    return directory


def build(isa: str):
    """Compile (once per machine, then cached) and import the kernels for `isa`."""
    from torch.utils.cpp_extension import load as load_extension

    _put_ninja_on_path()
    directory = build_directory(isa)
    name = f"gptlab_kernels_{isa}"
    library = directory / f"{name}.so"
    module = _import_built(name, library) if library.is_file() else None
    if module is None:
        print(f"building gptlab's C++ kernels for {isa} (first use on this machine, ~30 s) ...", file=sys.stderr,
              flush=True)
        module = load_extension(name, [str(CSRC / source) for source in SOURCES], extra_cflags=FLAGS[isa],
                                extra_ldflags=["-fopenmp"], build_directory=str(directory), verbose=False)
    _register_shapes(f"gptlab_{isa}", module)
    return module


def _import_built(name: str, library: Path):
    """The module built earlier into `library`, imported directly; None if it cannot be (a build cut short).

    torch's builder takes its lock file on every load, even of a finished build, so a process killed while loading
    (Ctrl-C, a crash, a killed lab cell) would leave every later load waiting on the lock. The folder is named by
    the sources' digest, so a library in it is the build of exactly these sources.
    """
    import importlib.util

    try:
        spec = importlib.util.spec_from_file_location(name, library)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    except (ImportError, OSError):
        library.unlink(missing_ok=True)
        return None


def _register_shapes(namespace: str, module) -> None:
    """What each operator returns, for tracing without running it (torch.compile); `module` is the build, which
    knows how many attention weights the causal attention keeps."""
    if namespace in _shapes_registered:
        return
    _shapes_registered.add(namespace)
    fake = torch.library.register_fake
    kept_per_pair = module.kept_weights_per_pair
    fake(f"{namespace}::int8_gemv")(lambda x, w, scale, bias: x.new_empty((x.shape[0], w.shape[0])))
    fake(f"{namespace}::float_gemv")(lambda x, w, bias: x.new_empty((x.shape[0], w.shape[0])))
    fake(f"{namespace}::int4_gemv")(
        lambda x, w, scale, offset, group, bias: x.new_empty((x.shape[0], w.shape[0])))
    fake(f"{namespace}::gelu_tanh")(lambda x: torch.empty_like(x))
    fake(f"{namespace}::gelu_tanh_backward")(lambda grad, x: torch.empty_like(x))
    fake(f"{namespace}::cross_entropy")(
        lambda logits, targets: (logits.new_empty(()), logits.new_empty(logits.shape[:1])))
    fake(f"{namespace}::cross_entropy_with_grad")(
        lambda logits, targets: (logits.new_empty(()), torch.empty_like(logits)))
    fake(f"{namespace}::causal_attention")(  # qkv (B, T, 3, H, D) -> y (B, T, H, D), lse (B, H, T), weights
        lambda qkv, keep: (qkv.new_empty((*qkv.shape[:2], *qkv.shape[3:])),
                           qkv.new_empty((qkv.shape[0], qkv.shape[3], qkv.shape[1])),
                           qkv.new_empty(qkv.shape[0] * qkv.shape[3] * kept_per_pair(qkv.shape[1]) if keep else 0)))
    fake(f"{namespace}::causal_attention_backward")(lambda grad, qkv, y, lse, weights: torch.empty_like(qkv))
    fake(f"{namespace}::decode_attention")(
        lambda q, k, v, visible: q.new_empty((k.shape[0], k.shape[1], 1, k.shape[3])))


def operator(name: str):
    """The loaded build's kernel `name` as a torch operator (load() first)."""
    return getattr(getattr(torch.ops, f"gptlab_{isa}"), name)


def ready_for(*tensors: torch.Tensor) -> bool:
    """Whether eager code may hand `tensors` to the loaded kernels' autograd paths: contiguous float32 CPU tensors,
    outside torch.compile (asked first: tracing into load() would take its lock and split the graph; the compiler
    runs torch's versions), with a build loaded."""
    if torch.compiler.is_compiling():
        return False
    if not all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in tensors):
        return False
    return load() is not None


def inference_operands(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                       weight_dtype: torch.dtype) -> bool:
    """Whether a few-row product kernel (float32 or integer weights; none has a backward) may take these operands:
    float32 x on the CPU, a contiguous `weight` of `weight_dtype`, a contiguous float32 bias or none, and nothing
    that autograd would need a gradient for. Unlike `ready_for`, it holds while torch.compile traces: the compiled
    decode step calls these kernels as operators."""
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                              or (bias is not None and bias.requires_grad))
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == weight_dtype
            and weight.is_contiguous() and (bias is None or (bias.dtype == torch.float32 and bias.is_contiguous()))
            and not needs_grad)


def kernel(name: str):
    """The loaded build's kernel `name` as the caller should call it: the torch operator while torch.compile
    traces (a graph cannot call the Python module), else the module's function (a cheaper call)."""
    return operator(name) if torch.compiler.is_compiling() else getattr(_module, name)


def load_isa(name: str):
    """The kernels built for one instruction set the CPU supports (to test each path), or None."""
    if name not in supported_isas():
        return None
    with _lock:
        if name not in _by_isa:
            _by_isa[name] = build(name)
        return _by_isa[name]


def load():
    """The compiled extension module for this CPU, or None (see `why_not`)."""
    global _module, why_not, isa
    if _module is not None or why_not is not None:
        return _module
    with _lock:
        if _module is not None or why_not is not None:
            return _module
        wanted = os.environ.get("GPTLAB_KERNEL_ISA")
        supported = supported_isas()
        if os.environ.get("GPTLAB_NATIVE_KERNELS", "1") == "0":
            why_not = "turned off by GPTLAB_NATIVE_KERNELS=0"
        elif not supported:
            why_not = (f"this CPU has {torch.backends.cpu.get_cpu_capability()}; the kernels need AVX2 + FMA or "
                       "AVX-512")
        elif wanted and wanted not in supported:
            why_not = f"GPTLAB_KERNEL_ISA={wanted} is not one this CPU runs ({', '.join(supported)})"
        else:
            choice = wanted or supported[0]
            try:
                _module, isa = build(choice), choice
            except Exception as e:  # no compiler, no ninja, a failed build: the result is the same, only slower
                why_not = f"it could not be built ({type(e).__name__}: {str(e).strip().splitlines()[-1][:200]})"
    return _module
