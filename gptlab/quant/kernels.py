"""The integer weight-only matrix products used at inference: decoding one token at a time, prompts, evaluation.

Decoding reads every weight once per token, so its speed is set by bytes read: int8 weights read a quarter of
fp32's, 4-bit ones an eighth. Library int8 kernels (`torch._weight_int8pack_mm`, torchao's weight-only int8) are
slower than fp32 on 2-core AVX-512 CPUs. int8, in order of preference:
1. gptlab's C++ kernel (native/csrc/int_gemv.cpp, built on first use, see `gptlab.native`) for up to NATIVE_MAX_ROWS
   rows: about 2.5× faster than fp32 `F.linear` over a 124M model's layers;
2. a dequantize-multiply-sum fused by `torch.compile` (≤ MAX_GEMV_ROWS rows; ~1.5× fp32 with weights streaming
   from memory, ~2× in cache), or a compiled dequantize + matmul for more rows;
3. dequantize + `F.linear` in eager mode (slower than fp32: the float weights are rebuilt on every call).
4-bit (`int4_linear`): the C++ kernel (about 4× fp32 over the same layers), else the caller dequantizes.
`status` says which one ran last, for the decode benchmark.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from gptlab import native

MAX_GEMV_ROWS = 4  # above this many rows a dequantized matmul is faster than the fused row loop
NATIVE_MAX_ROWS = 64  # measured: the C++ kernel beats the compiled dequantize + matmul up to here, ties at 128

_compiled = None
status = "not used yet"  # which kernel ran: reported by the decode benchmark


def _gemv(x: Tensor, w: Tensor, scale: Tensor) -> Tensor:
    return (x.unsqueeze(-2) * w.to(x.dtype)).sum(-1) * scale.to(x.dtype)


def _dequant_matmul(x: Tensor, w: Tensor, scale: Tensor) -> Tensor:
    return x @ (w.to(x.dtype) * scale.to(x.dtype)[:, None]).t()


_compiled_matmul = None


def _native_fits(x: Tensor, w: Tensor, scale: Tensor, bias: Tensor | None, code_dtype=torch.int8) -> bool:
    """float32 inputs on the CPU without autograd (the kernels have no backward), contiguous operands."""
    return (native.inference_operands(x, w, bias, code_dtype) and scale.dtype == torch.float32
            and scale.is_contiguous())


def int4_linear(x: Tensor, packed: Tensor, scale: Tensor, offset: Tensor, group: int,
                bias: Tensor | None) -> Tensor | None:
    """x @ ((codes − offset) · scale).T + bias for 4-bit codes packed two per byte (low nibble first), with one
    scale and offset per (output row, group of `group` inputs), both (out, in / group); None when the C++ kernel
    cannot take the call (more than NATIVE_MAX_ROWS rows, a group size not a multiple of 32, no kernel): the
    caller then dequantizes."""
    global status
    rows, k = x.numel() // x.shape[-1], x.shape[-1]
    if (rows > NATIVE_MAX_ROWS or group % 32 or k % group or not _native_fits(x, packed, scale, bias, torch.uint8)
            or offset.dtype != torch.float32 or not offset.is_contiguous()):
        return None
    if native.load() is None:
        return None
    status = f"gptlab int4 kernel (C++, {native.isa})"
    gemv = native.kernel("int4_gemv")
    y = gemv(x.reshape(rows, k), packed, scale, offset, group, bias if bias is not None else x.new_empty(0))
    return y.reshape(*x.shape[:-1], packed.shape[0])


def int8_linear(x: Tensor, w: Tensor, scale: Tensor, bias: Tensor | None) -> Tensor:
    """x (..., in) @ (w (out, in) int8 · scale (out,)).T + bias."""
    global _compiled, _compiled_matmul, status
    rows = x.numel() // x.shape[-1]
    if rows <= NATIVE_MAX_ROWS and _native_fits(x, w, scale, bias) and native.load() is not None:
        status = f"gptlab int8 kernel (C++, {native.isa})"
        empty = x.new_empty(0)
        gemv = native.kernel("int8_gemv")
        y = gemv(x.reshape(rows, x.shape[-1]), w, scale, bias if bias is not None else empty)
        return y.reshape(*x.shape[:-1], w.shape[0])
    if rows > MAX_GEMV_ROWS and x.device.type == "cpu" and _compiled is not False and not torch.is_grad_enabled():
        if _compiled_matmul is None:  # a prompt: dequantizing in eager mode would take longer than the matmul
            _compiled_matmul = torch.compile(_dequant_matmul, dynamic=True)
        try:
            y = _compiled_matmul(x.reshape(rows, x.shape[-1]), w, scale).reshape(*x.shape[:-1], w.shape[0])
            status = "dequantize + matmul (torch.compile)"
            return y + bias.to(y.dtype) if bias is not None else y
        except Exception as e:  # the same fallback as below, said once
            _compiled = False
            status = f"dequantize + matmul (torch.compile failed: {type(e).__name__})"
            warnings.warn(f"the int8 kernels could not be compiled ({type(e).__name__}: {e}); int8 layers fall back "
                          "to dequantize + matmul, which is slower than fp32", stacklevel=2)
    if rows <= MAX_GEMV_ROWS and x.device.type == "cpu" and _compiled is not False:
        if _compiled is None:
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
            _compiled = torch.compile(_gemv, dynamic=False)
        try:
            y = _compiled(x.reshape(rows, x.shape[-1]), w, scale).reshape(*x.shape[:-1], w.shape[0])
            status = "fused int8 gemv (torch.compile)"
            return y + bias.to(y.dtype) if bias is not None else y
        except Exception as e:  # no C++ compiler, say: the result is the same, only slower
            _compiled = False
            status = f"dequantize + matmul (torch.compile failed: {type(e).__name__})"
            warnings.warn(f"the fused int8 kernel could not be compiled ({type(e).__name__}: {e}); int8 decoding "
                          "falls back to dequantize + matmul, which is slower than fp32", stacklevel=2)
    weight = w.to(x.dtype) * scale.to(x.dtype)[:, None]
    return F.linear(x, weight, bias.to(x.dtype) if bias is not None else None)
