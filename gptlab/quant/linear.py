"""A linear layer with integer weights (codes + scales) and, optionally, quantized input activations.

Weights are stored as integers: int8 (symmetric) or uint8 (asymmetric) codes for 5-8 bits, two 4-bit codes per
byte for 2-4 bits, with float32 scales (and zero points when asymmetric). Symmetric 5-8-bit weights with one
scale per row or per tensor take the int8 kernels (`gptlab.quant.kernels`), 2-4-bit weights the 4-bit kernel
(groups of a multiple of 32 inputs, a few rows); other cases dequantize and multiply. Activation
quantization (dynamic per tensor / per token, or static per tensor) is simulated: inputs are rounded to
`act_bits` integers and back, which gives the accuracy of an integer matmul without needing one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gptlab.quant.fake import QuantSpec, compute_scales, from_codes, grouped, to_codes
from gptlab.quant.kernels import int4_linear, int8_linear


def pack_nibbles(u: Tensor) -> Tensor:
    """Unsigned codes < 16, last dimension even → two per byte (low nibble first)."""
    u = u.to(torch.uint8)
    return u[..., 0::2] | (u[..., 1::2] << 4)


def unpack_nibbles(p: Tensor) -> Tensor:
    return torch.stack((p & 0xF, p >> 4), dim=-1).reshape(*p.shape[:-1], p.shape[-1] * 2)


def storage_shape(out_features: int, in_features: int, spec: QuantSpec) -> tuple[tuple[int, ...], torch.dtype]:
    if spec.bits <= 4:
        return (out_features, (in_features + 1) // 2), torch.uint8
    return (out_features, in_features), torch.int8 if spec.symmetric else torch.uint8


def scale_shape(out_features: int, in_features: int, spec: QuantSpec) -> tuple[int, ...]:
    if spec.granularity == "tensor":
        return (1, 1)
    if spec.group_size:
        return (out_features, in_features // spec.group_size, 1)
    return (out_features, 1)


class QuantLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool, spec: QuantSpec, act_mode: str = "none",
                 act_bits: int = 8, smooth: bool = False, name: str = "layer"):
        super().__init__()
        self.in_features, self.out_features, self.spec, self.name = in_features, out_features, spec, name
        self.act_mode, self.act_spec = act_mode, QuantSpec(act_bits, True, "tensor" if act_mode in ("tensor", "static")
                                                           else "channel")
        shape, dtype = storage_shape(out_features, in_features, spec)
        self.register_buffer("qweight", torch.zeros(shape, dtype=dtype))
        self.register_buffer("scale", torch.ones(scale_shape(out_features, in_features, spec)))
        if not spec.symmetric:
            self.register_buffer("zero", torch.zeros(scale_shape(out_features, in_features, spec)))
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None
        if smooth:  # SmoothQuant: inputs divided by this per-channel factor, weights multiplied by it
            self.register_buffer("smooth", torch.ones(in_features))
        if act_mode == "static":
            self.register_buffer("act_scale", torch.ones(()))

    @classmethod
    def from_float(cls, linear: nn.Linear, spec: QuantSpec, act_mode: str = "none", act_bits: int = 8,
                   smooth: Tensor | None = None, act_scale: Tensor | None = None, name: str = "layer") -> "QuantLinear":
        q = cls(linear.in_features, linear.out_features, linear.bias is not None, spec, act_mode, act_bits,
                smooth is not None, name)
        weight = linear.weight.detach().float()
        if smooth is not None:
            q.smooth.copy_(smooth)
            weight = weight * smooth[None, :]
        q.set_weight(weight)
        if linear.bias is not None:
            q.bias.data.copy_(linear.bias.detach().float())
        if act_scale is not None:
            q.act_scale.copy_(act_scale)
        return q.to(linear.weight.device)

    @torch.no_grad()
    def set_weight(self, weight: Tensor, scale: Tensor | None = None) -> None:
        """Quantize a float weight (out, in) into the stored codes; `scale` fixes the scales (e.g. LSQ's)."""
        if scale is None:
            scale, zero = compute_scales(weight, self.spec, self.name)
        else:
            scale, zero = scale.detach().float().abs().reshape(self.scale.shape), torch.zeros_like(self.scale)
        codes = to_codes(grouped(weight.float(), self.spec, self.name), scale, zero, self.spec).reshape(weight.shape)
        self.scale.copy_(scale)
        if not self.spec.symmetric:
            self.zero.copy_(zero)
        if self.spec.bits <= 4:
            u = codes - self.spec.qmin
            if u.shape[-1] % 2:
                u = F.pad(u, (0, 1))
            self.qweight.copy_(pack_nibbles(u))
        else:
            self.qweight.copy_(codes.to(self.qweight.dtype))

    def codes(self) -> Tensor:
        if self.spec.bits <= 4:
            return unpack_nibbles(self.qweight)[:, : self.in_features].float() + self.spec.qmin
        return self.qweight.float()

    def dequantized(self) -> Tensor:
        """The weight the layer multiplies by, (out, in), float32 (smoothing still folded in)."""
        zero = self.zero if not self.spec.symmetric else torch.zeros_like(self.scale)
        shape = torch.Size((self.out_features, self.in_features))
        return from_codes(grouped(self.codes(), self.spec, self.name), self.scale, zero, shape)

    def quantize_input(self, x: Tensor) -> Tensor:
        if self.act_mode == "none":
            return x
        spec = self.act_spec
        if self.act_mode == "static":
            scale, zero = self.act_scale.float(), torch.zeros((), device=x.device)
        else:
            scale, zero = compute_scales(x, spec)
        return from_codes(to_codes(x.float(), scale, zero, spec), scale, zero, x.shape).to(x.dtype)

    @property
    def fast_int8(self) -> bool:
        """Symmetric 5-8-bit codes are int8 bytes with one scale per row (or one for all): the int8 kernel's input."""
        return self.spec.bits >= 5 and self.spec.symmetric and not self.spec.group_size

    def row_scales(self) -> Tensor:
        if self.spec.granularity == "tensor":
            return self.scale.reshape(1).expand(self.out_features).contiguous()
        return self.scale[:, 0]

    def group_scales(self) -> tuple[Tensor, Tensor, int]:
        """(scale, offset, group size) with w = (stored nibble − offset) · scale, both (out, in / group); kept
        until the scales or zero points change in place (set_weight, load_state_dict bump their versions)."""
        if torch.compiler.is_compiling() and hasattr(self, "_group_scales"):  # a compiled decode step: the prompt,
            return self._group_scales[1:]  # run eagerly just before, made them from the weights it decodes with
        key = (self.scale._version, self.scale.data_ptr(), getattr(self, "zero", self.scale)._version)
        if getattr(self, "_group_scales", (None,))[0] != key:
            self._group_scales = (key, *self._compute_group_scales())
        return self._group_scales[1:]

    def _compute_group_scales(self) -> tuple[Tensor, Tensor, int]:
        group = self.spec.group_size or self.in_features
        shape = (self.out_features, self.in_features // group)
        scale = self.scale.reshape(self.scale.shape[0], -1).expand(shape).contiguous()
        zero = (self.zero.reshape(self.zero.shape[0], -1).expand(shape) if not self.spec.symmetric
                else torch.zeros(shape, device=scale.device))
        return scale, (zero - self.spec.qmin).contiguous(), group

    def forward(self, x: Tensor) -> Tensor:
        if hasattr(self, "smooth"):
            x = x / self.smooth.to(x.dtype)
        x = self.quantize_input(x)
        if self.fast_int8:
            return int8_linear(x, self.qweight, self.row_scales(), self.bias)
        if self.spec.bits <= 4:  # the C++ 4-bit kernel where it applies (a few rows, groups of 32k inputs)
            y = int4_linear(x, self.qweight, *self.group_scales(), self.bias)
            if y is not None:
                return y
        w = self.dequantized().to(x.dtype)
        return F.linear(x, w, self.bias.to(x.dtype) if self.bias is not None else None)

    def weight_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.buffers() if t is not getattr(self, "act_scale", None))

    def extra_repr(self) -> str:
        acts = f", activations int{self.act_spec.bits} {self.act_mode}" if self.act_mode != "none" else ""
        return f"{self.in_features} → {self.out_features}, {self.spec.describe()}{acts}"
