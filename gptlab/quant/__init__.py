"""Quantization: fake-quant building blocks (`fake`), the quantized linear layer (`linear`) and its int8 / int4
kernels (`kernels`, `native`), post-training quantization (`ptq`), quantization-aware training (`qat`), the
command workflows (`workflow`) and diagnostics (`inspect`). Every technique is a transform of a built model; the
model knows nothing of it. Import from the submodules: the package itself re-exports nothing, so no submodule
imports another through it."""
