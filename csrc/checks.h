// Argument checks shared by the CPU and CUDA bindings: each error names the argument.
#pragma once
#include <ATen/ATen.h>

#include <cmath>

namespace fidec {

inline at::ScalarType acc_type_of(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_fisher_penalty_fwd_args(const at::Tensor& velocity, const at::Tensor& x_t,
                                          const at::Tensor& t, const at::Tensor& residual,
                                          c10::string_view score) {
  TORCH_CHECK(velocity.dim() == 3, "fisher_penalty: velocity must be [B, K, d], got ", velocity.sizes());
  TORCH_CHECK(x_t.sizes() == velocity.sizes(), "fisher_penalty: x_t must have velocity's shape ",
              velocity.sizes(), ", got ", x_t.sizes());
  const auto B = velocity.size(0), K = velocity.size(1), D = velocity.size(2);
  TORCH_CHECK(K > 0 && D > 0, "fisher_penalty: K and d must be positive, got K=", K, " d=", D);
  TORCH_CHECK(residual.dim() == 2 && residual.size(0) == B && residual.size(1) == D,
              "fisher_penalty: residual must be [B, d] = [", B, ", ", D, "], got ", residual.sizes());
  TORCH_CHECK(t.dim() == 2 && t.size(0) == B && t.size(1) == K, "fisher_penalty: t must be [B, K] = [", B,
              ", ", K, "], got ", t.sizes());
  TORCH_CHECK(at::isFloatingType(velocity.scalar_type()), "fisher_penalty: velocity must be floating, got ",
              velocity.scalar_type());
  TORCH_CHECK(x_t.scalar_type() == velocity.scalar_type() && residual.scalar_type() == velocity.scalar_type(),
              "fisher_penalty: velocity, x_t and residual must share a dtype, got ", velocity.scalar_type(),
              ", ", x_t.scalar_type(), ", ", residual.scalar_type());
  TORCH_CHECK(t.scalar_type() == acc_type_of(velocity.scalar_type()), "fisher_penalty: t must be ",
              acc_type_of(velocity.scalar_type()), " for ", velocity.scalar_type(), " inputs, got ",
              t.scalar_type());
  TORCH_CHECK(x_t.device() == velocity.device() && t.device() == velocity.device() &&
                  residual.device() == velocity.device(),
              "fisher_penalty: all tensors must be on one device, got velocity on ", velocity.device(),
              ", x_t on ", x_t.device(), ", t on ", t.device(), ", residual on ", residual.device());
  TORCH_CHECK(score == "velocity" || score == "tweedie", "fisher_penalty: score must be 'velocity' or ",
              "'tweedie', got '", score, "'");
}

// Options: finite (inf damping or eps would give NaN everywhere), damping >= 0, the eps > 0.
inline void check_fisher_penalty_options(const char* op, double damping, double score_eps, double trace_eps) {
  TORCH_CHECK(std::isfinite(damping) && damping >= 0, op, ": damping must be finite and >= 0, got ", damping);
  TORCH_CHECK(std::isfinite(score_eps) && score_eps > 0, op, ": score_eps must be finite and > 0, got ", score_eps);
  TORCH_CHECK(std::isfinite(trace_eps) && trace_eps > 0, op, ": trace_eps must be finite and > 0, got ", trace_eps);
}

inline void check_fisher_penalty_bwd_args(const at::Tensor& grad_penalty, const at::Tensor& scores,
                                          const at::Tensor& residual, const at::Tensor& trace_per_dim) {
  TORCH_CHECK(scores.dim() == 3, "fisher_penalty_bwd: scores must be [B, K, d], got ", scores.sizes());
  const auto B = scores.size(0), D = scores.size(2);
  TORCH_CHECK(scores.size(1) > 0, "fisher_penalty_bwd: scores must have K >= 1 samples per state, got K=0");
  TORCH_CHECK(residual.dim() == 2 && residual.size(0) == B && residual.size(1) == D,
              "fisher_penalty_bwd: residual must be [B, d] = [", B, ", ", D, "], got ", residual.sizes());
  TORCH_CHECK(grad_penalty.numel() == B && trace_per_dim.numel() == B,
              "fisher_penalty_bwd: grad_penalty and trace_per_dim must have B = ", B, " elements, got ",
              grad_penalty.numel(), " and ", trace_per_dim.numel());
  TORCH_CHECK(scores.scalar_type() == acc_type_of(residual.scalar_type()),
              "fisher_penalty_bwd: scores must be in the accumulation dtype ",
              acc_type_of(residual.scalar_type()), ", got ", scores.scalar_type());
  TORCH_CHECK(grad_penalty.device() == scores.device() && residual.device() == scores.device() &&
                  trace_per_dim.device() == scores.device(),
              "fisher_penalty_bwd: all tensors must be on one device");
}

}  // namespace fidec
