"""The model's linear layer: `nn.Linear`, with the few-row products of decoding on gptlab's C++ kernel.

Decoding one token multiplies a single row by every weight matrix, so each product streams its matrix from memory
once, and the library GEMM reaches only ~20 GB/s on GPT-2 124M's shapes on 2 Xeon cores, where a long stream
reaches ~32. gptlab's float32 kernel (native/csrc/float_gemv.cpp) keeps more of the matrix in flight: ~10 % less
time in a 124M token's linear layers. It is taken for up to FEW_ROWS rows of float32 on the CPU outside autograd
(it has no backward), eager or inside a compiled decode step; everything else is `F.linear`, unchanged. The class
is an `nn.Linear` (same parameters, same state dict), so filters, quantization, LoRA and interop see no difference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gptlab import native

FEW_ROWS = 4  # the kernel's row block: beyond it the library GEMM reuses each weight across more rows


def few_rows_kernel_applies(x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    """Whether x @ weight.T + bias goes to the C++ kernel: 1..FEW_ROWS float32 rows on the CPU, no autograd."""
    return (0 < x.numel() <= FEW_ROWS * x.shape[-1] and native.inference_operands(x, weight, bias, torch.float32)
            and native.load() is not None)


class Linear(nn.Linear):
    def forward(self, x: Tensor) -> Tensor:
        if few_rows_kernel_applies(x, self.weight, self.bias):
            bias = self.bias if self.bias is not None else x.new_empty(0)
            y = native.kernel("float_gemv")(x.reshape(-1, x.shape[-1]), self.weight, bias)
            return y.view(*x.shape[:-1], self.out_features)
        return F.linear(x, self.weight, self.bias)
