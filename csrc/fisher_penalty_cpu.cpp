// CPU kernels of the Fisher penalty: one state per task of at::parallel_for (OpenMP), the row
// arithmetic from fisher_penalty_row.h, which the CUDA kernel shares.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "checks.h"
#include "fisher_penalty_row.h"

namespace fidec {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> fisher_penalty_fwd_cpu(
    const at::Tensor& velocity_, const at::Tensor& x_t_, const at::Tensor& t_, const at::Tensor& residual_,
    c10::string_view score, double damping, double score_eps, double trace_eps) {
  check_fisher_penalty_fwd_args(velocity_, x_t_, t_, residual_, score);
  check_fisher_penalty_options("fisher_penalty", damping, score_eps, trace_eps);
  const auto velocity = velocity_.contiguous(), x_t = x_t_.contiguous(), t = t_.contiguous(),
             residual = residual_.contiguous();
  const int64_t B = velocity.size(0), K = velocity.size(1), D = velocity.size(2);
  const bool tweedie = score == "tweedie";
  const auto acc_type = acc_type_of(velocity.scalar_type());
  auto scores = at::empty({B, K, D}, velocity.options().dtype(acc_type));
  auto pen = at::empty({B}, velocity.options().dtype(acc_type));
  auto trace = at::empty({B}, velocity.options().dtype(acc_type));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, velocity.scalar_type(), "fisher_penalty_fwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* v = velocity.const_data_ptr<scalar_t>();
    const scalar_t* x = x_t.const_data_ptr<scalar_t>();
    const scalar_t* r = residual.const_data_ptr<scalar_t>();
    const acc_t* tp = t.const_data_ptr<acc_t>();
    acc_t* g = scores.mutable_data_ptr<acc_t>();
    acc_t* pp = pen.mutable_data_ptr<acc_t>();
    acc_t* tr = trace.mutable_data_ptr<acc_t>();
    // A grain of ~16k elements keeps tiny batches on one thread.
    const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, K * D));
    at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        fisher_penalty_row_fwd<scalar_t, acc_t>(v + b * K * D, x + b * K * D, tp + b * K, r + b * D, g + b * K * D,
                                                K, D, tweedie, acc_t(damping), acc_t(score_eps),
                                                acc_t(trace_eps), pp + b, tr + b);
      }
    });
  });
  return {pen.to(velocity.scalar_type()), trace.to(velocity.scalar_type()), scores};
}

at::Tensor fisher_penalty_bwd_cpu(const at::Tensor& grad_penalty_, const at::Tensor& scores_,
                                  const at::Tensor& residual_, const at::Tensor& trace_per_dim_, double damping) {
  check_fisher_penalty_bwd_args(grad_penalty_, scores_, residual_, trace_per_dim_);
  check_fisher_penalty_options("fisher_penalty_bwd", damping, 1.0, 1.0);
  const auto scores = scores_.contiguous(), residual = residual_.contiguous();
  const auto acc_type = scores.scalar_type();
  const auto grad_penalty = grad_penalty_.to(acc_type).contiguous().reshape({-1});
  const auto trace_per_dim = trace_per_dim_.to(acc_type).contiguous().reshape({-1});
  const int64_t B = scores.size(0), K = scores.size(1), D = scores.size(2);
  auto grad_r = at::empty({B, D}, residual.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, residual.scalar_type(), "fisher_penalty_bwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* g = scores.const_data_ptr<acc_t>();
    const scalar_t* r = residual.const_data_ptr<scalar_t>();
    const acc_t* gp = grad_penalty.const_data_ptr<acc_t>();
    const acc_t* c = trace_per_dim.const_data_ptr<acc_t>();
    scalar_t* out = grad_r.mutable_data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, K * D));
    at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> work(D);
      for (int64_t b = begin; b < end; ++b) {
        fisher_penalty_row_bwd<scalar_t, acc_t>(gp[b], g + b * K * D, r + b * D, c[b], K, D, acc_t(damping),
                                                work.data(), out + b * D);
      }
    });
  });
  return grad_r;
}

}  // namespace

TORCH_LIBRARY_IMPL(fidec, CPU, m) {
  m.impl("fisher_penalty_fwd", &fisher_penalty_fwd_cpu);
  m.impl("fisher_penalty_bwd", &fisher_penalty_bwd_cpu);
}

}  // namespace fidec
