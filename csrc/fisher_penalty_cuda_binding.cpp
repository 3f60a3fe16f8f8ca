// Registers the torch-free CUDA launchers of fisher_penalty_cuda.cu as the CUDA kernels of fidec:: ops.
#include <torch/library.h>

#include "checks.h"
#include "cuda_launch.h"

extern "C" int fidec_fisher_penalty_fwd_cuda(int dtype, const void* v, const void* x, const void* t,
                                             const void* r, void* pen, void* trace, void* scores, int64_t B,
                                             int64_t K, int64_t D, int tweedie, double damping, double score_eps,
                                             double trace_eps, void* stream);
extern "C" int fidec_fisher_penalty_bwd_cuda(int dtype, const void* grad_penalty, const void* scores,
                                             const void* r, const void* trace_per_dim, void* grad_r, int64_t B,
                                             int64_t K, int64_t D, double damping, void* stream);

namespace fidec {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> fisher_penalty_fwd_cuda(
    const at::Tensor& velocity_, const at::Tensor& x_t_, const at::Tensor& t_, const at::Tensor& residual_,
    c10::string_view score, double damping, double score_eps, double trace_eps) {
  check_fisher_penalty_fwd_args(velocity_, x_t_, t_, residual_, score);
  check_fisher_penalty_options("fisher_penalty", damping, score_eps, trace_eps);
  c10::DeviceGuard guard(velocity_.device());
  const auto velocity = velocity_.contiguous(), x_t = x_t_.contiguous(), t = t_.contiguous(),
             residual = residual_.contiguous();
  const int64_t B = velocity.size(0), K = velocity.size(1), D = velocity.size(2);
  const auto acc = acc_type_of(velocity.scalar_type());
  auto scores = at::empty({B, K, D}, velocity.options().dtype(acc));
  auto pen = at::empty({B}, velocity.options().dtype(acc));
  auto trace = at::empty({B}, velocity.options().dtype(acc));
  check_cuda_launch(
      fidec_fisher_penalty_fwd_cuda(cuda_dtype_code(velocity.scalar_type()), velocity.const_data_ptr(),
                                    x_t.const_data_ptr(), t.const_data_ptr(), residual.const_data_ptr(),
                                    pen.mutable_data_ptr(), trace.mutable_data_ptr(), scores.mutable_data_ptr(), B,
                                    K, D, score == "tweedie", damping, score_eps, trace_eps,
                                    current_cuda_stream(velocity.device())),
      "fisher_penalty_fwd");
  return {pen.to(velocity.scalar_type()), trace.to(velocity.scalar_type()), scores};
}

at::Tensor fisher_penalty_bwd_cuda(const at::Tensor& grad_penalty_, const at::Tensor& scores_,
                                   const at::Tensor& residual_, const at::Tensor& trace_per_dim_, double damping) {
  check_fisher_penalty_bwd_args(grad_penalty_, scores_, residual_, trace_per_dim_);
  check_fisher_penalty_options("fisher_penalty_bwd", damping, 1.0, 1.0);
  c10::DeviceGuard guard(scores_.device());
  const auto scores = scores_.contiguous(), residual = residual_.contiguous();
  const auto grad_penalty = grad_penalty_.to(scores.scalar_type()).contiguous();
  const auto trace_per_dim = trace_per_dim_.to(scores.scalar_type()).contiguous();
  const int64_t B = scores.size(0), K = scores.size(1), D = scores.size(2);
  auto grad_r = at::empty({B, D}, residual.options());
  check_cuda_launch(
      fidec_fisher_penalty_bwd_cuda(cuda_dtype_code(residual.scalar_type()), grad_penalty.const_data_ptr(),
                                    scores.const_data_ptr(), residual.const_data_ptr(),
                                    trace_per_dim.const_data_ptr(), grad_r.mutable_data_ptr(), B, K, D, damping,
                                    current_cuda_stream(scores.device())),
      "fisher_penalty_bwd");
  return grad_r;
}

}  // namespace

TORCH_LIBRARY_IMPL(fidec, CUDA, m) {
  m.impl("fisher_penalty_fwd", &fisher_penalty_fwd_cuda);
  m.impl("fisher_penalty_bwd", &fisher_penalty_bwd_cuda);
}

}  // namespace fidec
