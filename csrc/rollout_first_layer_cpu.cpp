// CPU kernel of the fused rollout's first layer at one Euler step:
//   rollout_first_layer_gelu_(h[M, H], x[M, d], w_xT[d, H], state_bias[B, H], w_t[H], t, row_state[M])
//   h[r] <- gelu_tanh(state_bias[row_state[r]] + t * w_t + sum_k x[r, k] * w_xT[k])
// The layer's input [s, x, t] splits into a per-state part (W_s s + b, computed once per rollout), the
// time (t w_t) and the action x, whose width d (5 for cube tasks) is too small for a GEMM to run well:
// as a GEMM plus a bias pass plus a GELU pass it read and wrote h three times, here once. The sums run
// in the accumulation dtype (fp32 for fp32/bf16 h, fp64 for fp64), h is written in its own dtype
// (bf16: rounded to nearest even, as c10's conversion).
#include <algorithm>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu_isa.h"
#include "gelu_row.h"

#if defined(__GNUC__) && defined(__x86_64__)
#define FIDEC_MULTI_ISA 1
#endif

#define FIDEC_ALWAYS_INLINE inline __attribute__((always_inline))

namespace fidec {
namespace {

FIDEC_ALWAYS_INLINE uint16_t f32_to_bf16_rne(float f) {
  const uint32_t u = static_cast<uint32_t>(bits_of(f));
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return (u & 0x7FFFFFFFu) > 0x7F800000u ? static_cast<uint16_t>(0x7FC0) : static_cast<uint16_t>(rounded);
}

// acc[j] = sb[j] + t w_t[j] + sum_k x[k] w_xT[k, j]: the k loop outside, so every inner loop runs over
// contiguous j and vectorises.
FIDEC_ALWAYS_INLINE void first_layer_acc(float* __restrict__ acc, const float* __restrict__ x,
                                         const float* __restrict__ wxT, const float* __restrict__ sb,
                                         const float* __restrict__ wt, float t, int64_t d, int64_t H) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) acc[j] = sb[j] + t * wt[j];
  for (int64_t k = 0; k < d; ++k) {
    const float xk = x[k];
    const float* __restrict__ w = wxT + k * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) acc[j] += xk * w[j];
  }
}

FIDEC_ALWAYS_INLINE void first_layer_row_f32_body(float* __restrict__ h, const float* __restrict__ x,
                                                  const float* __restrict__ wxT, const float* __restrict__ sb,
                                                  const float* __restrict__ wt, float t, int64_t d, int64_t H) {
  first_layer_acc(h, x, wxT, sb, wt, t, d, H);
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) h[j] = gelu_tanh<float>(h[j]);
}

FIDEC_ALWAYS_INLINE void first_layer_row_bf16_body(uint16_t* __restrict__ h, const float* __restrict__ x,
                                                   const float* __restrict__ wxT, const float* __restrict__ sb,
                                                   const float* __restrict__ wt, float t, int64_t d, int64_t H,
                                                   float* __restrict__ acc) {
  first_layer_acc(acc, x, wxT, sb, wt, t, d, H);
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) h[j] = f32_to_bf16_rne(gelu_tanh<float>(acc[j]));
}

using RowF32Fn = void (*)(float*, const float*, const float*, const float*, const float*, float, int64_t, int64_t);
using RowBf16Fn = void (*)(uint16_t*, const float*, const float*, const float*, const float*, float, int64_t,
                           int64_t, float*);

struct FirstLayerRows {
  RowF32Fn f32;
  RowBf16Fn bf16;
};

#define FIDEC_FIRST_LAYER_ROWS(ISA, ATTR)                                                                     \
  ATTR void first_layer_row_f32_##ISA(float* h, const float* x, const float* wxT, const float* sb,            \
                                      const float* wt, float t, int64_t d, int64_t H) {                       \
    first_layer_row_f32_body(h, x, wxT, sb, wt, t, d, H);                                                     \
  }                                                                                                           \
  ATTR void first_layer_row_bf16_##ISA(uint16_t* h, const float* x, const float* wxT, const float* sb,        \
                                       const float* wt, float t, int64_t d, int64_t H, float* acc) {          \
    first_layer_row_bf16_body(h, x, wxT, sb, wt, t, d, H, acc);                                               \
  }                                                                                                           \
  constexpr FirstLayerRows kFirstLayerRows_##ISA{first_layer_row_f32_##ISA, first_layer_row_bf16_##ISA};

FIDEC_FIRST_LAYER_ROWS(baseline, )
#ifdef FIDEC_MULTI_ISA
FIDEC_FIRST_LAYER_ROWS(avx2, __attribute__((target("avx2"))))
FIDEC_FIRST_LAYER_ROWS(avx512, __attribute__((target("avx512f,avx512bw"))))
#endif

const FirstLayerRows& first_layer_rows() {
  static const FirstLayerRows rows = [] {
    switch (active_cpu_isa()) {
#ifdef FIDEC_MULTI_ISA
      case CpuIsa::Avx512:
        return kFirstLayerRows_avx512;
      case CpuIsa::Avx2:
        return kFirstLayerRows_avx2;
#endif
      default:
        return kFirstLayerRows_baseline;
    }
  }();
  return rows;
}

void rollout_first_layer_gelu_cpu_(at::Tensor& h, const at::Tensor& x, const at::Tensor& w_xT,
                                   const at::Tensor& state_bias, const at::Tensor& w_t, double t,
                                   const at::Tensor& row_state) {
  constexpr const char* op = "rollout_first_layer_gelu_: ";
  TORCH_CHECK(h.dim() == 2 && h.is_contiguous(), op, "h must be a contiguous [M, H], got ", h.sizes());
  const int64_t M = h.size(0), H = h.size(1);
  TORCH_CHECK(x.dim() == 2 && x.size(0) == M, op, "x must be [M, d] with M = ", M, ", got ", x.sizes());
  const int64_t d = x.size(1);
  TORCH_CHECK(w_xT.dim() == 2 && w_xT.size(0) == d && w_xT.size(1) == H, op, "w_xT must be [d, H] = [", d, ", ",
              H, "], got ", w_xT.sizes());
  TORCH_CHECK(state_bias.dim() == 2 && state_bias.size(1) == H, op, "state_bias must be [B, H] with H = ", H,
              ", got ", state_bias.sizes());
  TORCH_CHECK(w_t.dim() == 1 && w_t.size(0) == H, op, "w_t must be [H] = [", H, "], got ", w_t.sizes());
  TORCH_CHECK(row_state.dim() == 1 && row_state.size(0) == M && row_state.scalar_type() == at::kLong, op,
              "row_state must be int64 [M] = [", M, "], got ", row_state.scalar_type(), " ", row_state.sizes());
  const auto hd = h.scalar_type();
  TORCH_CHECK(hd == at::kFloat || hd == at::kBFloat16 || hd == at::kDouble, op,
              "h must be float32, bfloat16 or float64, got ", hd);
  const auto acc = hd == at::kDouble ? at::kDouble : at::kFloat;
  for (const auto* t_ : {&x, &w_xT, &state_bias, &w_t})
    TORCH_CHECK(t_->scalar_type() == acc, op, "x, w_xT, state_bias and w_t must be ", acc, " (the accumulation dtype of ",
                hd, " h), got ", t_->scalar_type());
  for (const auto* t_ : {&x, &w_xT, &state_bias, &w_t, &row_state})
    TORCH_CHECK(t_->device() == h.device(), op, "every tensor must be on h's device ", h.device());
  const int64_t B = state_bias.size(0);
  const auto xc = x.contiguous(), wc = w_xT.contiguous(), sbc = state_bias.contiguous(), wtc = w_t.contiguous();
  const auto rs = row_state.contiguous();
  const int64_t* rsp = rs.const_data_ptr<int64_t>();
  if (M > 0) {
    const auto [lo, hi] = std::minmax_element(rsp, rsp + M);
    TORCH_CHECK(*lo >= 0 && *hi < B, op, "row_state must index state_bias's ", B, " rows, got values in [", *lo,
                ", ", *hi, "]");
  }
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(H, 1));
  if (hd == at::kDouble) {
    const double *xp = xc.const_data_ptr<double>(), *wp = wc.const_data_ptr<double>();
    const double *sbp = sbc.const_data_ptr<double>(), *wtp = wtc.const_data_ptr<double>();
    double* hp = h.mutable_data_ptr<double>();
    at::parallel_for(0, M, grain, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        double* hr = hp + r * H;
        const double* sb = sbp + rsp[r] * H;
        for (int64_t j = 0; j < H; ++j) hr[j] = sb[j] + t * wtp[j];
        for (int64_t k = 0; k < d; ++k)
          for (int64_t j = 0; j < H; ++j) hr[j] += xp[r * d + k] * wp[k * H + j];
        for (int64_t j = 0; j < H; ++j) hr[j] = gelu_tanh<double>(hr[j]);
      }
    });
    return;
  }
  const float *xp = xc.const_data_ptr<float>(), *wp = wc.const_data_ptr<float>();
  const float *sbp = sbc.const_data_ptr<float>(), *wtp = wtc.const_data_ptr<float>();
  const float tf = static_cast<float>(t);
  const auto& rows = first_layer_rows();
  if (hd == at::kFloat) {
    float* hp = h.mutable_data_ptr<float>();
    at::parallel_for(0, M, grain, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) rows.f32(hp + r * H, xp + r * d, wp, sbp + rsp[r] * H, wtp, tf, d, H);
    });
  } else {
    uint16_t* hp = reinterpret_cast<uint16_t*>(h.mutable_data_ptr<at::BFloat16>());
    at::parallel_for(0, M, grain, [&](int64_t r0, int64_t r1) {
      std::vector<float> acc(static_cast<size_t>(H));
      for (int64_t r = r0; r < r1; ++r)
        rows.bf16(hp + r * H, xp + r * d, wp, sbp + rsp[r] * H, wtp, tf, d, H, acc.data());
    });
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(fidec, CPU, m) { m.impl("rollout_first_layer_gelu_", &rollout_first_layer_gelu_cpu_); }

}  // namespace fidec
