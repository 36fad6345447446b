"""Round-to-nearest integer quantization: scales, codes, dequantization, and fake-quant with its gradients.

A `QuantSpec` says how many bits, symmetric or asymmetric, and which values share a scale: the whole tensor,
each row (a weight's output channel, an activation's token), or groups of `group_size` consecutive values
within a row. Every function works on the last dimension, so weights (out, in) and activations (..., in) are
treated alike.

    symmetric   codes in [-(2^(b-1) - 1), 2^(b-1) - 1], scale = max|x| / q_max, zero point 0
    asymmetric  codes in [0, 2^b - 1], scale = (max - min) / (2^b - 1) over a range that includes 0,
                zero point = the code of 0.0 (so zero is exact)

With the range taken from the values (clip_ratio = 1), every value is within scale / 2 of its dequantized code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from gptlab.errors import ConfigError

TINY_SCALE = 1e-12  # the scale of an all-zero group: every code is then the zero point, exactly 0.0


@dataclass(frozen=True)
class QuantSpec:
    bits: int = 8
    symmetric: bool = True
    granularity: Literal["tensor", "channel"] = "channel"
    group_size: int = 0  # > 0: groups of this many values within a row, each with its own scale
    clip_ratio: float = 1.0

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1) - 1) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2 ** self.bits - 1

    def describe(self) -> str:
        where = ("per tensor" if self.granularity == "tensor" else
                 f"per group of {self.group_size}" if self.group_size else "per channel")
        return f"int{self.bits} {'sym' if self.symmetric else 'asym'} {where}"


def grouped(x: Tensor, spec: QuantSpec, name: str = "tensor") -> Tensor:
    """`x` with its last dimension split into (groups, group_size) when the spec has groups."""
    if not spec.group_size:
        return x
    if x.shape[-1] % spec.group_size:
        raise ConfigError(f"quant.group_size={spec.group_size} does not divide the {x.shape[-1]} input channels of "
                          f"{name}; choose a divisor of {x.shape[-1]}")
    return x.reshape(*x.shape[:-1], x.shape[-1] // spec.group_size, spec.group_size)


def compute_scales(x: Tensor, spec: QuantSpec, name: str = "tensor") -> tuple[Tensor, Tensor]:
    """(scale, zero point) shaped to broadcast against `grouped(x)`; float32, computed without gradient."""
    xv = grouped(x.detach().float(), spec, name)
    if spec.granularity == "tensor":
        lo, hi = xv.amin().reshape([1] * xv.dim()), xv.amax().reshape([1] * xv.dim())
    else:
        lo, hi = xv.amin(dim=-1, keepdim=True), xv.amax(dim=-1, keepdim=True)
    lo, hi = lo * spec.clip_ratio, hi * spec.clip_ratio
    if spec.symmetric:
        scale = torch.maximum(lo.abs(), hi.abs()) / spec.qmax
        return scale.clamp_min(TINY_SCALE), torch.zeros_like(scale)
    lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)  # the range holds 0, so 0.0 has an exact code
    scale = ((hi - lo) / (spec.qmax - spec.qmin)).clamp_min(TINY_SCALE)
    zero = (spec.qmin - torch.round(lo / scale)).clamp(spec.qmin, spec.qmax)
    return scale, zero


def to_codes(x: Tensor, scale: Tensor, zero: Tensor, spec: QuantSpec) -> Tensor:
    """Integer codes (as float values) of grouped `x`: round(x / scale) + zero, clamped to the code range."""
    return (torch.round(x / scale) + zero).clamp(spec.qmin, spec.qmax)


def from_codes(codes: Tensor, scale: Tensor, zero: Tensor, shape: torch.Size) -> Tensor:
    return ((codes.float() - zero) * scale).reshape(shape)


def fake_quant(x: Tensor, spec: QuantSpec, name: str = "tensor") -> Tensor:
    """dequantize(quantize(x)) with scales from `x` itself, no gradient path (round's derivative is zero)."""
    scale, zero = compute_scales(x, spec, name)
    return from_codes(to_codes(grouped(x.float(), spec, name), scale, zero, spec), scale, zero, x.shape).to(x.dtype)


# -- fake-quant with a straight-through estimator, for training -------------------------------------------------

def round_ste(v: Tensor) -> Tensor:
    """round(v) forward, identity backward."""
    return v + (torch.round(v) - v).detach()


def fake_quant_ste(x: Tensor, spec: QuantSpec, mode: str, scale: Tensor | None = None, name: str = "tensor") -> Tensor:
    """Fake-quant whose backward is chosen by `mode`:

    ste      gradient 1 everywhere, even for values clipped to the range's ends
    clipped  gradient 1 inside the range, 0 outside (the values whose rounding clipped)
    lsq      as clipped for x; `scale` is a learned parameter and gets LSQ's gradient
    broken   no straight-through: round's zero derivative reaches x (the silent failure)
    """
    xv = grouped(x, spec, name)
    if mode == "lsq":
        v = (xv / scale).clamp(spec.qmin, spec.qmax)
        return (round_ste(v) * scale).reshape(x.shape)
    s, zero = compute_scales(x, spec, name)
    s, zero = s.to(x.dtype), zero.to(x.dtype)
    if mode == "broken":
        return ((to_codes(xv, s, zero, spec) - zero) * s).reshape(x.shape)
    if mode == "clipped":  # the range in x's units; clamp's derivative is 0 outside it
        xv = torch.minimum(torch.maximum(xv, (spec.qmin - zero) * s), (spec.qmax - zero) * s)
    codes = (torch.round(xv / s) + zero).clamp(spec.qmin, spec.qmax)
    return (xv + ((codes - zero) * s - xv).detach()).reshape(x.shape)


def lsq_grad_scale(numel_per_scale: int, spec: QuantSpec) -> float:
    """LSQ's gradient scale for a step size shared by `numel_per_scale` values: 1 / sqrt(n · q_max)."""
    return 1.0 / (numel_per_scale * spec.qmax) ** 0.5


def scale_with_grad_scale(s: Tensor, g: float) -> Tensor:
    """`s` forward; its gradient multiplied by g backward."""
    return (s - s * g).detach() + s * g


def clipped_fraction(x: Tensor, spec: QuantSpec, scale: Tensor | None = None, name: str = "tensor") -> float:
    """Share of values outside the representable range: their gradient is zero under clipped STE and LSQ."""
    xv = grouped(x.detach().float(), spec, name)
    if scale is None:
        scale, zero = compute_scales(x, spec, name)
    else:
        scale, zero = scale.detach().float().abs(), torch.zeros_like(scale.detach().float())
    v = xv / scale + zero
    return float(((v < spec.qmin - 1e-3) | (v > spec.qmax + 1e-3)).float().mean())
