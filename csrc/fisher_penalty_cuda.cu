// CUDA kernels of the Fisher penalty. No torch headers: this file compiles with nvcc against any
// torch (CPU builds included); fisher_penalty_cuda_binding.cpp registers the launchers as torch ops.
// One warp per state; the row arithmetic comes from fisher_penalty_row.h, shared with the CPU kernel.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "cuda_dtypes.h"
#include "fisher_penalty_row.h"

namespace fidec {
namespace {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 4;

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename in_t, typename acc_t>
__global__ void fisher_penalty_fwd_kernel(const in_t* __restrict__ v, const in_t* __restrict__ x,
                                          const acc_t* __restrict__ t, const in_t* __restrict__ r,
                                          acc_t* __restrict__ pen, acc_t* __restrict__ trace,
                                          acc_t* __restrict__ g, int64_t B, int64_t K, int64_t D, bool tweedie,
                                          acc_t damping, acc_t score_eps, acc_t trace_eps) {
  const int lane = threadIdx.x % kWarp;
  const int64_t b = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (b >= B) return;  // the whole warp leaves together, so the shuffles below stay full-warp
  const in_t* rb = r + b * D;
  acc_t r_sq = 0;
  for (int64_t j = lane; j < D; j += kWarp) {
    const acc_t rj = static_cast<acc_t>(rb[j]);
    r_sq += rj * rj;
  }
  r_sq = warp_sum(r_sq);
  acc_t sum_dot_sq = 0, sum_g_sq = 0;
  for (int64_t k = 0; k < K; ++k) {
    const int64_t row = (b * K + k) * D;
    const acc_t tk = t[b * K + k];
    const acc_t f = score_time_factor(tk, score_eps);
    acc_t dot = 0, sq = 0;
    for (int64_t j = lane; j < D; j += kWarp) {
      const acc_t gj =
          score_value(static_cast<acc_t>(v[row + j]), static_cast<acc_t>(x[row + j]), tk, f, tweedie);
      g[row + j] = gj;
      dot += gj * static_cast<acc_t>(rb[j]);
      sq += gj * gj;
    }
    dot = warp_sum(dot);
    sum_dot_sq += dot * dot;
    sum_g_sq += sq;
  }
  sum_g_sq = warp_sum(sum_g_sq);
  if (lane == 0) {
    const acc_t c = fisher_trace_per_dim(sum_g_sq, K, D, damping, trace_eps);
    trace[b] = c;
    pen[b] = fisher_penalty_value(sum_dot_sq, r_sq, K, D, damping, c);
  }
}

// Columns of the gradient row each lane accumulates in registers per pass over the K samples.
constexpr int kColsPerLane = 4;

// No shared memory, so any K runs: each pass over the K samples recomputes (g_k . r) by a warp reduction (every
// lane gets it) and adds its g_kj terms for up to kWarp * kColsPerLane columns; rows wider than that (d > 128)
// take more passes. Per column the sum runs over k in order, as the CPU kernel's.
template <typename in_t, typename acc_t>
__global__ void fisher_penalty_bwd_kernel(const acc_t* __restrict__ gp, const acc_t* __restrict__ g,
                                          const in_t* __restrict__ r, const acc_t* __restrict__ c,
                                          in_t* __restrict__ grad_r, int64_t B, int64_t K, int64_t D,
                                          acc_t damping) {
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t b = int64_t(blockIdx.x) * kWarpsPerBlock + warp;
  if (b >= B) return;  // the whole warp shares b, so the full-mask shuffles below stay valid
  const in_t* rb = r + b * D;
  const acc_t gpb = gp[b], cb = c[b];
  for (int64_t j0 = 0; j0 < D; j0 += int64_t(kWarp) * kColsPerLane) {
    acc_t s[kColsPerLane];
#pragma unroll
    for (int q = 0; q < kColsPerLane; ++q) s[q] = 0;
    for (int64_t k = 0; k < K; ++k) {
      const acc_t* gk = g + (b * K + k) * D;
      acc_t dot = 0;
      for (int64_t j = lane; j < D; j += kWarp) dot += gk[j] * static_cast<acc_t>(rb[j]);
      dot = warp_sum(dot);
#pragma unroll
      for (int q = 0; q < kColsPerLane; ++q) {
        const int64_t j = j0 + q * kWarp + lane;
        if (j < D) s[q] += dot * gk[j];
      }
    }
#pragma unroll
    for (int q = 0; q < kColsPerLane; ++q) {
      const int64_t j = j0 + q * kWarp + lane;
      if (j < D)
        grad_r[b * D + j] =
            static_cast<in_t>(fisher_penalty_grad(gpb, s[q], static_cast<acc_t>(rb[j]), K, D, damping, cb));
    }
  }
}

template <typename in_t>
int launch_fwd(const void* v, const void* x, const void* t, const void* r, void* pen, void* trace, void* g,
               int64_t B, int64_t K, int64_t D, bool tweedie, double damping, double score_eps,
               double trace_eps, cudaStream_t stream) {
  using acc_t = typename AccType<in_t>::type;
  if (B == 0) return 0;
  const unsigned grid = static_cast<unsigned>((B + kWarpsPerBlock - 1) / kWarpsPerBlock);
  fisher_penalty_fwd_kernel<in_t, acc_t><<<grid, kWarp * kWarpsPerBlock, 0, stream>>>(
      static_cast<const in_t*>(v), static_cast<const in_t*>(x), static_cast<const acc_t*>(t),
      static_cast<const in_t*>(r), static_cast<acc_t*>(pen), static_cast<acc_t*>(trace), static_cast<acc_t*>(g),
      B, K, D, tweedie, acc_t(damping), acc_t(score_eps), acc_t(trace_eps));
  return static_cast<int>(cudaGetLastError());
}

template <typename in_t>
int launch_bwd(const void* gp, const void* g, const void* r, const void* c, void* grad_r, int64_t B, int64_t K,
               int64_t D, double damping, cudaStream_t stream) {
  using acc_t = typename AccType<in_t>::type;
  if (B == 0) return 0;
  const unsigned grid = static_cast<unsigned>((B + kWarpsPerBlock - 1) / kWarpsPerBlock);
  fisher_penalty_bwd_kernel<in_t, acc_t><<<grid, kWarp * kWarpsPerBlock, 0, stream>>>(
      static_cast<const acc_t*>(gp), static_cast<const acc_t*>(g), static_cast<const in_t*>(r),
      static_cast<const acc_t*>(c), static_cast<in_t*>(grad_r), B, K, D, acc_t(damping));
  return static_cast<int>(cudaGetLastError());
}

}  // namespace
}  // namespace fidec

extern "C" int fidec_fisher_penalty_fwd_cuda(int dtype, const void* v, const void* x, const void* t,
                                             const void* r, void* pen, void* trace, void* scores, int64_t B,
                                             int64_t K, int64_t D, int tweedie, double damping, double score_eps,
                                             double trace_eps, void* stream) {
  FIDEC_CUDA_DISPATCH(dtype, fidec::launch_fwd, v, x, t, r, pen, trace, scores, B, K, D, tweedie != 0, damping,
                      score_eps, trace_eps, static_cast<cudaStream_t>(stream));
}

extern "C" int fidec_fisher_penalty_bwd_cuda(int dtype, const void* grad_penalty, const void* scores,
                                             const void* r, const void* trace_per_dim, void* grad_r, int64_t B,
                                             int64_t K, int64_t D, double damping, void* stream) {
  FIDEC_CUDA_DISPATCH(dtype, fidec::launch_bwd, grad_penalty, scores, r, trace_per_dim, grad_r, B, K, D, damping,
                      static_cast<cudaStream_t>(stream));
}
