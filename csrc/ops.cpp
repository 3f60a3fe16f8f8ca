// The fidec op library: schemas of every compiled op, and the Python module that reports the build.
// Kernels register themselves per device in their own files (TORCH_LIBRARY_IMPL).
#include <torch/extension.h>
#include <torch/library.h>

#include "cpu_isa.h"

TORCH_LIBRARY(fidec, m) {
  // Fake (meta) impls and autograd are registered in Python by fisher_decorator.ops, which is the
  // module that loads this library (fdkernels.fisher_penalty.register_fisher_penalty_op).
  // penalty[B], trace_per_dim[B] (in the input dtype) and the scores[B, K, d] (accumulation dtype)
  // that the backward needs. t: [B, K] in the accumulation dtype.
  m.def(
      "fisher_penalty_fwd(Tensor velocity, Tensor x_t, Tensor t, Tensor residual, str score, float damping, "
      "float score_eps, float trace_eps) -> (Tensor, Tensor, Tensor)");
  m.def(
      "fisher_penalty_bwd(Tensor grad_penalty, Tensor scores, Tensor residual, Tensor trace_per_dim, "
      "float damping) -> Tensor");
  // h[G, R, H] <- gelu_tanh(h + bias[g]) in place: the first MLP layer of an Euler step, whose bias
  // (state part of the layer + time) is per state g and shared by its R = K samples.
  m.def("bias_gelu_(Tensor(a!) h, Tensor bias) -> ()");
  // y = gelu_tanh(h + bias), ty = gelu_tanh'(h + bias) * th, and dy = gelu_tanh'(h + bias) (for backward).
  m.def("gelu_jvp(Tensor h, Tensor bias, Tensor th) -> (Tensor, Tensor, Tensor)");
  // y = gelu_tanh(x) and dy = gelu_tanh'(x), any shape: the forward of the networks' GELU, whose
  // backward is then one multiply (grad * dy).
  m.def("gelu_fwd(Tensor x) -> (Tensor, Tensor)");
  // h[r] <- gelu_tanh(state_bias[row_state[r]] + t * w_t + x[r] @ w_xT) in place: the first MLP layer of an
  // Euler step in one pass (CPU; x, w_xT[d, H], state_bias, w_t in h's accumulation dtype).
  m.def(
      "rollout_first_layer_gelu_(Tensor(a!) h, Tensor x, Tensor w_xT, Tensor state_bias, Tensor w_t, float t, "
      "Tensor row_state) -> ()");
  // x[r] += scale * (b_out + w_out @ gelu_tanh(h[r] + b)) in place: an Euler step's last hidden bias + GELU, output
  // layer and update in one pass (CPU; h in x's dtype or bf16, b, w_out[d, H], b_out in x's dtype).
  m.def("rollout_out_layer_euler_(Tensor(a!) x, Tensor h, Tensor b, Tensor w_out, Tensor b_out, float scale) -> ()");
}

#ifdef FIDEC_WITH_CUDA
static constexpr bool kWithCuda = true;
#else
static constexpr bool kWithCuda = false;
#endif
#ifndef FIDEC_CUDA_ARCHS
#define FIDEC_CUDA_ARCHS ""
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fisher-decorator compiled ops (registered under torch.ops.fidec)";
  m.attr("with_cuda") = kWithCuda;
  m.attr("cuda_archs") = FIDEC_CUDA_ARCHS;
#ifdef _OPENMP
  m.attr("with_openmp") = true;
#else
  m.attr("with_openmp") = false;
#endif
  // Resolving here makes a bad FIDEC_CPU_ISA an import error rather than a failure at the first op.
  m.attr("cpu_isa") = fidec::cpu_isa_name(fidec::active_cpu_isa());
  m.attr("supported_cpu_isas") = fidec::supported_cpu_isas();
}
