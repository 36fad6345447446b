// gptlab's C++ kernels, twice: as a Python module (the cheapest call from eager code) and as torch operators in a
// namespace of their own per instruction set (gptlab_avx512, gptlab_avx2), so a compiled graph calls them from C++
// without going back to Python, and both builds can be loaded in one process (the tests compare them).
#include <torch/extension.h>

#include "vec.h"

torch::Tensor int8_gemv(torch::Tensor x, torch::Tensor w, torch::Tensor scale, torch::Tensor bias);
torch::Tensor int4_gemv(torch::Tensor x, torch::Tensor w, torch::Tensor scale, torch::Tensor offset, int64_t G,
                        torch::Tensor bias);
torch::Tensor float_gemv(torch::Tensor x, torch::Tensor w, torch::Tensor bias);
torch::Tensor decode_attention(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor visible);
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> causal_attention(torch::Tensor qkv, bool keep_weights);
torch::Tensor causal_attention_backward(torch::Tensor grad, torch::Tensor qkv, torch::Tensor y, torch::Tensor lse,
                                        torch::Tensor weights);
bool causal_attention_available();
int64_t weights_per_pair(int64_t T);
torch::Tensor gelu_tanh(torch::Tensor x);
std::tuple<torch::Tensor, torch::Tensor> cross_entropy(torch::Tensor logits, torch::Tensor targets);
std::tuple<torch::Tensor, torch::Tensor> cross_entropy_with_grad(torch::Tensor logits, torch::Tensor targets);
torch::Tensor gelu_tanh_backward(torch::Tensor grad, torch::Tensor x);

#if defined(GPTLAB_AVX512)
#define GPTLAB_OPS gptlab_avx512
#else
#define GPTLAB_OPS gptlab_avx2
#endif
// one more macro level, so the namespace is expanded before TORCH_LIBRARY pastes it into names
#define GPTLAB_LIBRARY(ns, m) TORCH_LIBRARY(ns, m)
#define GPTLAB_LIBRARY_IMPL(ns, k, m) TORCH_LIBRARY_IMPL(ns, k, m)

GPTLAB_LIBRARY(GPTLAB_OPS, m) {
  m.def("int8_gemv(Tensor x, Tensor w, Tensor scale, Tensor bias) -> Tensor");
  m.def("int4_gemv(Tensor x, Tensor w, Tensor scale, Tensor offset, int group, Tensor bias) -> Tensor");
  m.def("float_gemv(Tensor x, Tensor w, Tensor bias) -> Tensor");
  m.def("decode_attention(Tensor q, Tensor k, Tensor v, Tensor visible) -> Tensor");
  m.def("causal_attention(Tensor qkv, bool keep_weights) -> (Tensor, Tensor, Tensor)");
  m.def("causal_attention_backward(Tensor grad, Tensor qkv, Tensor y, Tensor lse, Tensor weights) -> Tensor");
  m.def("gelu_tanh(Tensor x) -> Tensor");
  m.def("gelu_tanh_backward(Tensor grad, Tensor x) -> Tensor");
  m.def("cross_entropy(Tensor logits, Tensor targets) -> (Tensor, Tensor)");
  m.def("cross_entropy_with_grad(Tensor logits, Tensor targets) -> (Tensor, Tensor)");
}

GPTLAB_LIBRARY_IMPL(GPTLAB_OPS, CPU, m) {
  m.impl("int8_gemv", &int8_gemv);
  m.impl("int4_gemv", &int4_gemv);
  m.impl("float_gemv", &float_gemv);
  m.impl("decode_attention", &decode_attention);
  m.impl("causal_attention", &causal_attention);
  m.impl("causal_attention_backward", &causal_attention_backward);
  m.impl("gelu_tanh", &gelu_tanh);
  m.impl("gelu_tanh_backward", &gelu_tanh_backward);
  m.impl("cross_entropy", &cross_entropy);
  m.impl("cross_entropy_with_grad", &cross_entropy_with_grad);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("int8_gemv", &int8_gemv, "int8 weight-only matrix product for a few rows");
  m.def("int4_gemv", &int4_gemv, "packed 4-bit weight-only matrix product with group scales");
  m.def("float_gemv", &float_gemv, "float32 matrix product for a few rows (decoding's linear layers)");
  m.def("decode_attention", &decode_attention, "one token's attention over the slots a mask shows");
  m.def("causal_attention", &causal_attention, "causal attention of a whole sequence, each query's logsumexp and the "
        "weights if asked to keep them");
  m.def("causal_attention_backward", &causal_attention_backward, "its gradient for the fused (B, T, 3, H, D) qkv");
  m.def("kept_weights_per_pair", &weights_per_pair,
        "floats of the attention weights causal_attention keeps per (batch, head) pair");
  m.def("gelu_tanh", &gelu_tanh, "GPT-2's tanh-approximated GELU");
  m.def("gelu_tanh_backward", &gelu_tanh_backward, "its gradient: grad · dGELU/dx");
  m.def("cross_entropy", &cross_entropy, "mean cross-entropy of rows of logits, and each row's logsumexp");
  m.def("cross_entropy_with_grad", &cross_entropy_with_grad,
        "the mean cross-entropy and its gradient, (softmax − one-hot) / rows counted");
  m.attr("isa") = gptlab::V::isa;
  m.attr("has_blas") = causal_attention_available();  // the causal attention kernel needs torch's sgemm_
}
