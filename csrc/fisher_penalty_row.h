// Per-row arithmetic of the matrix-free Fisher penalty (SPEC sections 4-5).
//
// Shared, unchanged, by the C++ CPU kernel (plain inline under g++) and the CUDA kernel
// (__host__ __device__ under nvcc): the CPU tests exercise the very arithmetic the GPU runs.
// Only launch geometry and the reductions over d differ between the two.
// No torch headers here: nvcc compiles this file against a CPU-only torch too.
#pragma once

#include <stdint.h>

#include "fidec_macros.h"

namespace fidec {

// 1 / max(1 - t, eps): the score's time factor.
template <typename acc_t>
FIDEC_HD acc_t score_time_factor(acc_t t, acc_t eps) {
  const acc_t den = acc_t(1) - t;
  return acc_t(1) / (den < eps ? eps : den);  // written so a NaN t propagates, as torch.clamp does
}

// g = v / max(1-t, eps) ("velocity") or (t v - x) / max(1-t, eps) ("tweedie").
template <typename acc_t>
FIDEC_HD acc_t score_value(acc_t v, acc_t x, acc_t t, acc_t factor, bool tweedie) {
  return tweedie ? (t * v - x) * factor : v * factor;
}

// c = max(trace(F) / d, trace_eps) with trace(F) = mean_k ||g_k||^2 + damping d.
template <typename acc_t>
FIDEC_HD acc_t fisher_trace_per_dim(acc_t sum_g_sq, int64_t K, int64_t D, acc_t damping, acc_t trace_eps) {
  const acc_t tr = (sum_g_sq / acc_t(K) + damping * acc_t(D)) / acc_t(D);
  return tr < trace_eps ? trace_eps : tr;  // a NaN trace propagates, as torch.clamp does
}

// r^T (F / c) r / d with r^T F r = mean_k (g_k . r)^2 + damping ||r||^2.
template <typename acc_t>
FIDEC_HD acc_t fisher_penalty_value(acc_t sum_dot_sq, acc_t r_sq, int64_t K, int64_t D, acc_t damping,
                                    acc_t c) {
  return (sum_dot_sq / acc_t(K) + damping * r_sq) / (c * acc_t(D));
}

// d pen / d r_j, scaled by the incoming gradient:
//   grad_pen * 2 (mean_k (g_k . r) g_kj + damping r_j) / (c d),  sum_dot_g = sum_k (g_k . r) g_kj.
template <typename acc_t>
FIDEC_HD acc_t fisher_penalty_grad(acc_t grad_pen, acc_t sum_dot_g, acc_t r, int64_t K, int64_t D,
                                   acc_t damping, acc_t c) {
  return acc_t(2) * grad_pen * (sum_dot_g / acc_t(K) + damping * r) / (c * acc_t(D));
}

// One state, one thread (the CPU kernel). v, x, g: [K, D] rows; t: [K]; r: [D].
template <typename in_t, typename acc_t>
FIDEC_HD void fisher_penalty_row_fwd(const in_t* __restrict__ v, const in_t* __restrict__ x,
                                     const acc_t* __restrict__ t, const in_t* __restrict__ r,
                                     acc_t* __restrict__ g, int64_t K, int64_t D, bool tweedie,
                                     acc_t damping, acc_t score_eps, acc_t trace_eps, acc_t* pen,
                                     acc_t* trace) {
  acc_t r_sq = 0;
  for (int64_t j = 0; j < D; ++j) {
    const acc_t rj = static_cast<acc_t>(r[j]);
    r_sq += rj * rj;
  }
  acc_t sum_dot_sq = 0, sum_g_sq = 0;
  for (int64_t k = 0; k < K; ++k) {
    const acc_t tk = t[k];
    const acc_t f = score_time_factor(tk, score_eps);
    const in_t* vk = v + k * D;
    const in_t* xk = x + k * D;
    acc_t* gk = g + k * D;
    acc_t dot = 0, sq = 0;
    for (int64_t j = 0; j < D; ++j) {
      const acc_t gj = score_value(static_cast<acc_t>(vk[j]), static_cast<acc_t>(xk[j]), tk, f, tweedie);
      gk[j] = gj;
      dot += gj * static_cast<acc_t>(r[j]);
      sq += gj * gj;
    }
    sum_dot_sq += dot * dot;
    sum_g_sq += sq;
  }
  const acc_t c = fisher_trace_per_dim(sum_g_sq, K, D, damping, trace_eps);
  *trace = c;
  *pen = fisher_penalty_value(sum_dot_sq, r_sq, K, D, damping, c);
}

// One state, one thread: grad_r[j] for the saved scores g [K, D] and scale c.
template <typename in_t, typename acc_t>
FIDEC_HD void fisher_penalty_row_bwd(acc_t grad_pen, const acc_t* __restrict__ g, const in_t* __restrict__ r,
                                     acc_t c, int64_t K, int64_t D, acc_t damping, acc_t* __restrict__ work,
                                     in_t* __restrict__ grad_r) {
  for (int64_t j = 0; j < D; ++j) work[j] = 0;
  for (int64_t k = 0; k < K; ++k) {
    const acc_t* gk = g + k * D;
    acc_t dot = 0;
    for (int64_t j = 0; j < D; ++j) dot += gk[j] * static_cast<acc_t>(r[j]);
    for (int64_t j = 0; j < D; ++j) work[j] += dot * gk[j];
  }
  for (int64_t j = 0; j < D; ++j) {
    grad_r[j] = static_cast<in_t>(
        fisher_penalty_grad(grad_pen, work[j], static_cast<acc_t>(r[j]), K, D, damping, c));
  }
}

}  // namespace fidec
