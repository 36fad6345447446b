// gptlab's float32 matrix product for a few rows of x: y = x · wᵀ + bias, the linear layers of decoding.
//
// Batch-1 decoding reads every weight once per token, so a linear layer's speed is the speed of streaming its
// weight matrix from memory. Library GEMMs reach ~20 GB/s on the 2304- and 3072-row matrices of GPT-2 124M and
// on its 50,257-row head (2 Xeon cores) where a 1 GB matrix-vector product reaches ~32: a few MB per call is too
// short a stream for the hardware prefetcher to ramp up. Here several output rows are streamed together, one
// vector of each per step, and every cache line is also asked for 16 KB ahead, which keeps more lines in flight:
// 10-20 % faster on those shapes; the compiled 124M decode step 11-15 % more tokens/s (`bench decode --compile`,
// A/B against `F.linear`, 2 Xeon cores). Rows of x share each weight load.
// One row of x streams 8 weight rows at once, more rows of x 4 (registers). One source, built once per
// instruction set (vec.h); the loop is gemv_block.h's, shared with the int8 kernel.
#include "gemv_block.h"

// bytes ahead of each weight row's position, fetched once per cache line
constexpr int64_t kPrefetch = 16384;

at::Tensor float_gemv(at::Tensor x, at::Tensor w, at::Tensor bias) {
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kFloat && w.is_contiguous(), "w must be contiguous float32");
  return gptlab::checked_few_rows_product<8, 4, kPrefetch, float>(x, w, nullptr, bias);
}
