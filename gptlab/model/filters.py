"""Which layers a transform touches: one filter signature, `(module, fqn) -> bool` (torchao's `filter_fn`
convention), shared by quantization, QAT and LoRA, and helpers to find and swap the layers it picks."""

from __future__ import annotations

import re
from typing import Callable, Iterable

from torch import nn

LayerFilter = Callable[[nn.Module, str], bool]
BLOCK_LINEARS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def block_linears(targets: Iterable[str] = BLOCK_LINEARS, head: bool = False) -> LayerFilter:
    """The blocks' linear layers named by `targets` (e.g. attn.c_attn), and the output head if `head`."""
    pattern = re.compile(r"^h\.\d+\.(" + "|".join(re.escape(t) for t in targets) + r")$")

    def chosen(module: nn.Module, fqn: str) -> bool:
        return bool(pattern.match(fqn)) or (head and fqn == "lm_head")
    return chosen


def named(fqns: Iterable[str]) -> LayerFilter:
    """Exactly these layers (e.g. the ones a saved model recorded)."""
    wanted = set(fqns)
    return lambda module, fqn: fqn in wanted


def linears(model: nn.Module, only: LayerFilter) -> dict[str, nn.Linear]:
    """The plain linear layers `only` picks, by fully qualified name."""
    return {fqn: m for fqn, m in model.named_modules() if isinstance(m, nn.Linear) and only(m, fqn)}


def replace_module(model: nn.Module, fqn: str, new: nn.Module) -> None:
    parent, _, attr = fqn.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)
