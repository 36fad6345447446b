"""Batch-1 decoding with a step compiled once for the whole generation.

Eager decoding pays Python and dispatch overhead on each of the ~15 operations per layer and token. Compiling the
step removes most of it: on 2 cores, 2.3× more tokens/s for a 4-layer d-128 char model, where overhead is most of
a token's time, and 1.1–1.16× for GPT-2 124M (83–88 % of the read-bandwidth bound, 1.23–1.28× transformers'
`generate`), where reading the weights is (`gptlab bench decode --compile`).
It works only if the step it compiles keeps its shapes: a cache that grows would recompile at every token. So the
step runs on a `StaticKVCache` of fixed size, attends to its slots under a causal mask that hides the empty ones,
and learns where to write from a positions tensor. The prompt is run once, eagerly, through the same cache.
Attention and linear layers (float32 or quantized) call gptlab's C++ kernels (`gptlab.native`) as torch operators
inside the compiled step; the attention kernel reads only the slots written so far. Where compiling fails (no C++
compiler, an operation the compiler cannot trace), the same step runs eagerly and `why_eager` says why.
"""

from __future__ import annotations

import time
import warnings
from typing import Callable, Iterator

import torch
from torch import Tensor

from gptlab import native
from gptlab.model import GPT

SLOTS_ROUNDING = 128  # capacities are rounded up to this, so generations of similar length share one compiled step
status = "not used yet"  # how the last generation's steps ran, for `gptlab sample --compile` and `bench decode`


def _last_logits(model: GPT, idx: Tensor, positions: Tensor, cache) -> Tensor:
    return model(idx, positions, cache)[:, -1]


# cpp_wrapper: the compiled step's ~400 calls per token for 124M are made from generated C++, not Python: 0.65 ms
# less per token (19.5 against 20.1 ms), for a first compile of ~18 s instead of ~10 s (then cached on disk)
_compiled_step = torch.compile(_last_logits, dynamic=False, fullgraph=True, options={"cpp_wrapper": True})


class StaticDecoder:
    def __init__(self, model: GPT, capacity: int, compiled: bool = True):
        capacity = -(-capacity // SLOTS_ROUNDING) * SLOTS_ROUNDING
        self.model, self.length = model, 0
        self.cache = model.new_cache(1, capacity, static=True)
        self.device = model.wte.weight.device
        self.why_eager: str | None = None if compiled else "not asked to compile"
        self.compile_s = 0.0  # the first compiled step's wall time (compiling included)
        if compiled and self.device.type == "cpu":
            native.load()  # built now if need be (~30 s, once per machine), not while the step is being traced

    @property
    def capacity(self) -> int:
        return self.cache.max_len

    def prefill(self, tokens: list[int]) -> Tensor:
        """Logits (1, vocab) after the prompt."""
        positions = torch.arange(self.length, self.length + len(tokens), device=self.device)
        logits = _last_logits(self.model, torch.tensor([tokens], device=self.device), positions, self.cache)
        self.length += len(tokens)
        return logits

    def step(self, token: Tensor) -> Tensor:
        """Logits (1, vocab) after one more token."""
        if self.length >= self.capacity:
            raise ValueError(f"the static cache is full ({self.capacity} positions)")
        idx = token.reshape(1, 1).to(self.device)
        positions = torch.full((1,), self.length, dtype=torch.long, device=self.device)
        logits = self._run(idx, positions)
        self.length += 1
        return logits

    def _run(self, idx: Tensor, positions: Tensor) -> Tensor:
        if self.why_eager is None:
            first = self.compile_s == 0.0
            t0 = time.perf_counter()
            try:
                with warnings.catch_warnings():  # a failure to trace warns at length; `why_eager` says it in a line
                    warnings.simplefilter("ignore")
                    logits = _compiled_step(self.model, idx, positions, self.cache)
            except Exception as e:  # noqa: BLE001 — any failure to compile means: run the same step eagerly
                # (tracing fails before anything runs, so the cache is as it was)
                self.why_eager = f"torch.compile failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
            else:
                if first:
                    self.compile_s = time.perf_counter() - t0
                return logits
        return _last_logits(self.model, idx, positions, self.cache)


def decode_static(model: GPT, prompt: list[int], max_new_tokens: int, pick: Callable[[Tensor], Tensor],
                  compiled: bool = True) -> Iterator[int]:
    """Yield `max_new_tokens` ids, each chosen by `pick` from the last position's logits (1, vocab)."""
    global status
    decoder = StaticDecoder(model, len(prompt) + max_new_tokens, compiled)
    logits = decoder.prefill(prompt)
    for i in range(max_new_tokens):
        token = pick(logits)
        yield int(token)
        if i < max_new_tokens - 1:
            logits = decoder.step(token)
    status = (f"eager static step ({decoder.why_eager})" if decoder.why_eager else
              f"compiled static step (first step {decoder.compile_s:.1f} s, compiling included)"
              if decoder.compile_s >= 0.1 else "compiled static step (compiled already in this process)")
