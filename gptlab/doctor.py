"""`gptlab doctor`: what gptlab will do on this machine, and why, measured in seconds.

Each check returns a `Check`: "ok", "unavailable" (the machine lacks it; gptlab takes another path) or "failed"
(it should work here and does not). The CPU and its features, the integer kernels, the fp32 / bf16 matmul peaks
and read bandwidth, the thread count that trains a small model fastest, torch.compile, a two-process
data-parallel step, and a CPU-vs-GPU logits check where a GPU is present.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch

from gptlab.bench.hardware import best_time, matmul_peak, read_bandwidth


@dataclass
class Check:
    name: str
    status: str  # "ok" | "unavailable" | "failed"
    detail: str
    values: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Sizes:
    """How hard each measurement works: the defaults take ~20 s in all; `fast` is for tests (~2 s)."""
    matmul: int = 2048
    repeats: int = 5
    bandwidth_mb: int = 512
    train_steps: int = 6
    compile: bool = True


FAST = Sizes(matmul=256, repeats=2, bandwidth_mb=32, train_steps=2, compile=False)


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def check_cpu() -> Check:
    flags = cpu_flags()
    features = {"avx2": "avx2" in flags, "avx512": "avx512f" in flags, "avx512_bf16": "avx512_bf16" in flags,
                "amx": "amx_tile" in flags}
    have = ", ".join(k for k, v in features.items() if v) or "none of AVX2 / AVX-512 / AMX"
    return Check("cpu", "ok", f"{cpu_name()}; {os.cpu_count()} logical cores; {have}; torch uses "
                              f"{torch.backends.cpu.get_cpu_capability()}",
                 {"model": cpu_name(), "cores": os.cpu_count(), **features,
                  "torch_capability": torch.backends.cpu.get_cpu_capability()})


def check_kernels() -> Check:
    from gptlab import native

    kernel = native.load()
    if kernel is not None:
        return Check("int_kernels", "ok", f"gptlab's C++ kernels run here, built for {native.isa} (quantized "
                                          "layers, decoding's float32 linear layers, attention in training and "
                                          "decoding, GPT-2's GELU and the training cross-entropy use them)",
                     {"native": True, "isa": native.isa})
    return Check("int_kernels", "unavailable", f"the C++ kernels are not used: {native.why_not}; quantized "
                                               "layers take the torch.compile or dequantize path instead, "
                                               "attention, GELU and cross-entropy torch's kernels",
                 {"native": False, "why_not": native.why_not})


def check_peaks(sizes: Sizes) -> Check:
    fp32 = matmul_peak(sizes.matmul, torch.float32, sizes.repeats)
    bf16 = matmul_peak(sizes.matmul, torch.bfloat16, sizes.repeats)
    bandwidth = read_bandwidth(sizes.bandwidth_mb, sizes.repeats)
    ratio = bf16 / fp32
    advice = ("bf16 matmuls are faster here: bf16 weights pay off" if ratio > 1.2 else
              "bf16 matmuls are not faster here: keep fp32 for speed" if ratio < 0.8 else
              "bf16 and fp32 matmuls run at about the same speed")
    return Check("peaks", "ok", f"matmul {fp32 / 1e9:,.0f} GFLOP/s fp32, {bf16 / 1e9:,.0f} GFLOP/s bf16 "
                                f"({ratio:.2f}×: {advice}); read bandwidth {bandwidth / 1e9:,.1f} GB/s",
                 {"fp32_flops": fp32, "bf16_flops": bf16, "bf16_over_fp32": ratio, "read_bytes_per_s": bandwidth})


def _small_step() -> Callable[[], None]:
    """One optimizer step of a small GPT (2 layers, d 128, block 64, batch 8): the work the thread count is for."""
    from gptlab.budget import training_step
    from gptlab.config import build_config

    cfg = build_config(overrides=["model.vocab_size=65", "model.n_layer=2", "model.n_head=4", "model.n_embd=128",
                                  "model.block_size=64", "train.batch_size=8"])
    return training_step(cfg, 65)


def check_threads(sizes: Sizes) -> Check:
    cores = os.cpu_count() or 1
    counts = sorted({1, max(1, cores // 2), cores})
    before = torch.get_num_threads()
    step, speeds = _small_step(), {}
    try:
        for n in counts:
            torch.set_num_threads(n)
            speeds[n] = 1 / best_time(step, sizes.train_steps)
    finally:
        torch.set_num_threads(before)
    best = max(speeds, key=speeds.get)
    shown = ", ".join(f"{n}: {s:.1f}" for n, s in speeds.items())
    return Check("threads", "ok", f"a small model trains fastest with {best} thread(s) (steps/s by threads: {shown}); "
                                  "train.threads=0 (the default) uses one per core",
                 {"best": best, "steps_per_s": {str(n): s for n, s in speeds.items()}})


def check_compile(sizes: Sizes) -> Check:
    if not sizes.compile:
        return Check("compile", "unavailable", "not checked (--fast)", {"works": None})
    try:
        import torch._dynamo

        torch._dynamo.reset()
        fn = torch.compile(lambda a: torch.nn.functional.gelu(a @ a.T).sum())
        a = torch.randn(32, 32)
        t0 = time.perf_counter()
        got = fn(a)
        seconds = time.perf_counter() - t0
        if not torch.allclose(got, torch.nn.functional.gelu(a @ a.T).sum(), rtol=1e-4, atol=1e-4):
            return Check("compile", "failed", "torch.compile ran but gave a different result", {"works": False})
        return Check("compile", "ok", f"torch.compile works (first compile {seconds:.1f} s); train.compile=true "
                                      "is usable (on the CPU eager training, with gptlab's C++ kernels, measured "
                                      "faster; `gptlab bench train --set train.compile=true` compares)",
                     {"works": True, "first_compile_s": seconds})
    except Exception as e:  # a missing compiler, an unsupported platform: the user should hear which
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        return Check("compile", "failed", f"torch.compile does not work here ({reason}); leave train.compile=false",
                     {"works": False, "error": reason})


def _ddp_worker(rank: int, world: int, port: int) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        t = torch.tensor([float(rank + 1)])
        dist.all_reduce(t)
        if t.item() != world * (world + 1) / 2:
            raise RuntimeError(f"all_reduce gave {t.item()}")
    finally:
        dist.destroy_process_group()


def check_ddp() -> Check:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    try:
        mp.start_processes(_ddp_worker, args=(2, port), nprocs=2, join=True, start_method="spawn")
    except Exception as e:
        reason = str(e).strip().splitlines()[-1][:200] if str(e).strip() else type(e).__name__
        return Check("ddp", "failed", f"two processes could not average a tensor over gloo ({reason}); "
                                      "`--nproc 2` will not work here", {"works": False, "error": reason})
    return Check("ddp", "ok", f"two processes averaged a tensor over gloo in {time.perf_counter() - t0:.1f} s; "
                              "`gptlab train --nproc N` works here", {"works": True})


def check_gpu() -> Check:
    if not torch.cuda.is_available():
        return Check("gpu", "unavailable", "no CUDA device; everything runs on the CPU", {"cuda": False})
    from gptlab.config import ModelConfig
    from gptlab.model import GPT

    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=65, n_layer=2, n_head=4, n_embd=64, block_size=32)).eval()
    x = torch.randint(0, 65, (2, 32))
    with torch.no_grad():
        cpu = model(x)
        gpu = model.cuda()(x.cuda()).cpu()
    diff = float((cpu - gpu).abs().max())
    name = torch.cuda.get_device_name(0)
    status = "ok" if diff < 1e-3 else "failed"
    return Check("gpu", status, f"{name}: CPU and GPU logits of a small model differ by at most {diff:.2e}"
                                f"{'' if status == 'ok' else ' (more than 1e-3: results will not match the CPU)'}",
                 {"cuda": True, "device": name, "max_abs_logit_diff": diff})


CHECKS = ("cpu", "int_kernels", "peaks", "threads", "compile", "ddp", "gpu")


def diagnose(sizes: Sizes = Sizes(), skip: tuple[str, ...] = (), progress: Callable[[str], None] | None = None
             ) -> list[Check]:
    runs = {"cpu": check_cpu, "int_kernels": check_kernels, "peaks": lambda: check_peaks(sizes),
            "threads": lambda: check_threads(sizes), "compile": lambda: check_compile(sizes), "ddp": check_ddp,
            "gpu": check_gpu}
    out = []
    for name in CHECKS:
        if name in skip:
            out.append(Check(name, "unavailable", "skipped (--skip)"))
            continue
        if progress is not None:
            progress(name)
        out.append(runs[name]())
    return out
