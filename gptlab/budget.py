"""Training budgets in wall time: measure how long a step takes on this machine, then plan the steps that fit."""

from __future__ import annotations

import math
import time
from typing import Callable

import torch

from gptlab.config import RunConfig


def seconds_per_step(step: Callable[[], None], steps: int = 4, warmup: int = 2,
                     clock: Callable[[], float] = time.perf_counter) -> float:
    """Median seconds of `steps` calls after `warmup` untimed ones (the first calls allocate and warm caches)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = clock()
        step()
        times.append(clock() - t0)
    times.sort()
    return times[len(times) // 2]


def plan_steps(step_seconds: float, minutes: float, rungs: tuple[int, ...], overhead: float = 0.1) -> int:
    """The most optimizer steps on the ladder `rungs` that fit `minutes` of training at `step_seconds` each, leaving
    `overhead` of the time for evaluations and checkpoints; the lowest rung when none fits (a curve worth looking
    at). A ladder, not any count: each rung has a reference band of seeds to judge the run by, and the rungs are
    about √2 apart, so at most ~30 % of the time is left unused."""
    rungs = tuple(sorted(rungs))
    if not (step_seconds > 0 and math.isfinite(step_seconds)):
        return rungs[0]
    fit = minutes * 60 * (1 - overhead) / step_seconds
    return max((r for r in rungs if r <= fit), default=rungs[0])


def training_step(cfg: RunConfig, vocab_size: int) -> Callable[[], None]:
    """One optimizer step of the model `cfg` describes, on random tokens: what a budget measures. Nothing of it is
    kept, and the global RNG is restored, so the run that follows is the same as without the measurement."""
    from gptlab.model import GPT
    from gptlab.train.losses import lm_loss
    from gptlab.train.optim import build_optimizer

    state = torch.get_rng_state()
    torch.manual_seed(0)
    model = GPT(cfg.model)
    optimizer = build_optimizer(model, cfg.train)
    x = torch.randint(0, vocab_size, (cfg.train.batch_size, cfg.model.block_size))
    torch.set_rng_state(state)

    def step() -> None:
        for _ in range(cfg.train.grad_accum):
            lm_loss(model(x), x).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step
