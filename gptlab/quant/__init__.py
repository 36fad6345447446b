"""Quantization: fake-quant building blocks, post-training quantization, quantization-aware training, int8 and
int4 decode paths and diagnostics. Every technique is a transform of a built model; the model knows nothing of it."""

from gptlab.quant.fake import QuantSpec, fake_quant
from gptlab.quant.linear import QuantLinear
from gptlab.quant.ptq import (ON_LOAD, quantize, quantize_on_load, quantized_layers, quantized_structure,
                              state_bytes, target_filter)
from gptlab.quant.qat import QATLinear, convert_qat, prepare_qat, qat_layers

__all__ = ["QuantSpec", "fake_quant", "QuantLinear", "ON_LOAD", "quantize", "quantize_on_load", "quantized_layers",
           "quantized_structure", "state_bytes", "target_filter", "QATLinear", "convert_qat", "prepare_qat", "qat_layers"]
