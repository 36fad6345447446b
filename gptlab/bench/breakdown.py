"""Where a training step's time goes: torch.profiler's self time per operation over a few steps, grouped by what
the operation does, per step. `gptlab bench train --breakdown` prints it for gptlab and for the baseline.

Self time counts each operation once, without its children: an autograd node of gptlab's (its C++ attention,
cross-entropy or GELU) counts the kernel it runs. The profiler adds a little time of its own to each operation,
so the totals run slightly above the timed steps.
"""

from __future__ import annotations

from typing import Callable


# first match wins (a substring of the operation's name), so the specific come before the general
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("matrix products", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::mv", "aten::addmv")),
    ("attention", ("ttention",)),
    ("loss", ("CrossEntropy", "cross_entropy", "log_softmax", "nll_loss")),
    ("optimizer", ("adam", "Adam", "_foreach_", "Muon", "muon")),
    ("layer norm", ("layer_norm", "rms_norm", "LayerNorm", "RmsNorm")),
    ("gradient norm", ("vector_norm", "aten::norm", "aten::dot")),
    ("activation", ("gelu", "Gelu", "relu", "tanh")),
    ("embedding", ("embedding", "index_select", "index_add", "coalesce", "sparse")),
    ("copies and fills", ("copy_", "fill_", "zero_", "clone")),
    ("other elementwise", ("aten::add", "aten::sum", "aten::mul", "aten::div", "aten::sub")),
]
OTHER = "everything else"
PROFILED_STEPS = 2


def category(name: str) -> str:
    for label, needles in CATEGORIES:
        if any(n in name for n in needles):
            return label
    return OTHER


def step_breakdown(step: Callable[[], object], steps: int = PROFILED_STEPS) -> dict[str, float]:
    """Seconds per step in each category (CATEGORIES, then OTHER), profiling `steps` calls of `step`."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    seconds = {label: 0.0 for label, _ in CATEGORIES} | {OTHER: 0.0}
    for event in prof.key_averages():
        seconds[category(event.key)] += event.self_cpu_time_total / 1e6 / steps
    return seconds


def format_breakdown(columns: dict[str, dict[str, float]]) -> list[str]:
    """A table, milliseconds per step: one row per category, one column per side, then the totals."""
    names = list(columns)
    rows = [f"{'':20s}" + "".join(f"{n:>14s}" for n in names)]
    for label in next(iter(columns.values())):
        rows.append(f"{label:20s}" + "".join(f"{1e3 * columns[n][label]:14,.0f}" for n in names))
    rows.append(f"{'total':20s}" + "".join(f"{1e3 * sum(columns[n].values()):14,.0f}" for n in names))
    return rows
