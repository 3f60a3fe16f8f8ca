// CPU kernels of the fused rollout's first and last layers at one Euler step:
//   rollout_first_layer_gelu_(h[M, H], x[M, d], w_xT[d, H], state_bias[B, H], w_t[H], t, row_state[M])
//   h[r] <- gelu_tanh(state_bias[row_state[r]] + t * w_t + sum_k x[r, k] * w_xT[k])
//   rollout_out_layer_euler_(x[M, d], h[M, H], b[H], w_out[d, H], b_out[d], scale)
//   x[r] += scale * (b_out + w_out @ gelu_tanh(h[r] + b))
// The layer's input [s, x, t] splits into a per-state part (W_s s + b, computed once per rollout), the
// time (t w_t) and the action x, whose width d (5 for cube tasks) is too small for a GEMM to run well:
// as a GEMM plus a bias pass plus a GELU pass it read and wrote h three times, here once. The sums run
// in the accumulation dtype (fp32 for fp32/bf16 h, fp64 for fp64), h is written in its own dtype
// (bf16: rounded to nearest even, as c10's conversion). At the other end, the last hidden layer's bias + GELU, the
// d-wide output layer and the Euler step x += v / N become one pass over that layer's GEMM output, in fp32,
// without writing the activation back (it was a bias + GELU pass, a GEMM with 5 outputs and an add).
#include <algorithm>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu_isa.h"
#include "gelu_row.h"

namespace fidec {
namespace {

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
  for (int64_t j = 0; j < H; ++j) h[j] = f32_to_bf16(gelu_tanh<float>(acc[j]));
}

// ---------------------------------------------------------------------------------------------------------------
// rollout_out_layer_euler_(x[M, d], h[M, H], b[H], w_out[d, H], b_out[d], scale)
//   x[r] += scale * (b_out + w_out @ gelu_tanh(h[r] + b))
// The last hidden layer's bias + GELU, the output layer (d outputs: too narrow for a GEMM to run well) and the
// Euler update in one pass over h, without writing the activation back.

FIDEC_ALWAYS_INLINE void out_layer_tail(float* __restrict__ x, const float* __restrict__ a,
                                        const float* __restrict__ w, const float* __restrict__ bo, float scale,
                                        int64_t d, int64_t H) {
  for (int64_t k = 0; k < d; ++k) {
    const float* __restrict__ wk = w + k * H;
    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
    for (int64_t j = 0; j < H; ++j) dot += a[j] * wk[j];
    x[k] += scale * (bo[k] + dot);
  }
}

FIDEC_ALWAYS_INLINE void out_layer_row_f32_body(float* __restrict__ x, const float* __restrict__ h,
                                                const float* __restrict__ b, const float* __restrict__ w,
                                                const float* __restrict__ bo, float scale, int64_t d, int64_t H,
                                                float* __restrict__ a) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) a[j] = gelu_tanh<float>(h[j] + b[j]);
  out_layer_tail(x, a, w, bo, scale, d, H);
}

FIDEC_ALWAYS_INLINE void out_layer_row_bf16_body(float* __restrict__ x, const uint16_t* __restrict__ h,
                                                 const float* __restrict__ b, const float* __restrict__ w,
                                                 const float* __restrict__ bo, float scale, int64_t d, int64_t H,
                                                 float* __restrict__ a) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) a[j] = gelu_tanh<float>(bf16_to_f32(h[j]) + b[j]);
  out_layer_tail(x, a, w, bo, scale, d, H);
}

using RowF32Fn = void (*)(float*, const float*, const float*, const float*, const float*, float, int64_t, int64_t);
using RowBf16Fn = void (*)(uint16_t*, const float*, const float*, const float*, const float*, float, int64_t,
                           int64_t, float*);
using OutRowF32Fn = void (*)(float*, const float*, const float*, const float*, const float*, float, int64_t, int64_t,
                             float*);
using OutRowBf16Fn = void (*)(float*, const uint16_t*, const float*, const float*, const float*, float, int64_t,
                              int64_t, float*);

struct RolloutLayerRows {
  RowF32Fn f32;
  RowBf16Fn bf16;
  OutRowF32Fn out_f32;
  OutRowBf16Fn out_bf16;
};

#define FIDEC_ROLLOUT_LAYER_ROWS(ISA, ATTR)                                                                     \
  ATTR void first_layer_row_f32_##ISA(float* h, const float* x, const float* wxT, const float* sb,            \
                                      const float* wt, float t, int64_t d, int64_t H) {                       \
    first_layer_row_f32_body(h, x, wxT, sb, wt, t, d, H);                                                     \
  }                                                                                                           \
  ATTR void first_layer_row_bf16_##ISA(uint16_t* h, const float* x, const float* wxT, const float* sb,        \
                                       const float* wt, float t, int64_t d, int64_t H, float* acc) {          \
    first_layer_row_bf16_body(h, x, wxT, sb, wt, t, d, H, acc);                                               \
  }                                                                                                           \
  ATTR void out_layer_row_f32_##ISA(float* x, const float* h, const float* b, const float* w, const float* bo,   \
                                    float scale, int64_t d, int64_t H, float* a) {                            \
    out_layer_row_f32_body(x, h, b, w, bo, scale, d, H, a);                                                   \
  }                                                                                                           \
  ATTR void out_layer_row_bf16_##ISA(float* x, const uint16_t* h, const float* b, const float* w,             \
                                     const float* bo, float scale, int64_t d, int64_t H, float* a) {          \
    out_layer_row_bf16_body(x, h, b, w, bo, scale, d, H, a);                                                  \
  }                                                                                                           \
  constexpr RolloutLayerRows kRolloutLayerRows_##ISA{first_layer_row_f32_##ISA, first_layer_row_bf16_##ISA,       \
                                                 out_layer_row_f32_##ISA, out_layer_row_bf16_##ISA};

FIDEC_ROLLOUT_LAYER_ROWS(baseline, )
#ifdef FIDEC_MULTI_ISA
FIDEC_ROLLOUT_LAYER_ROWS(avx2, __attribute__((target("avx2"))))
FIDEC_ROLLOUT_LAYER_ROWS(avx512, __attribute__((target("avx512f,avx512bw"))))
#endif

const RolloutLayerRows& rollout_layer_rows() {
#ifdef FIDEC_MULTI_ISA
  static const RolloutLayerRows& rows =
      rows_for_active_isa(kRolloutLayerRows_avx512, kRolloutLayerRows_avx2, kRolloutLayerRows_baseline);
#else
  static const RolloutLayerRows& rows = kRolloutLayerRows_baseline;
#endif
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
  const auto& rows = rollout_layer_rows();
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

void rollout_out_layer_euler_cpu_(at::Tensor& x, const at::Tensor& h, const at::Tensor& b, const at::Tensor& w_out,
                                  const at::Tensor& b_out, double scale) {
  constexpr const char* op = "rollout_out_layer_euler_: ";
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), op, "x must be a contiguous [M, d], got ", x.sizes());
  const int64_t M = x.size(0), d = x.size(1);
  TORCH_CHECK(h.dim() == 2 && h.size(0) == M, op, "h must be [M, H] with M = ", M, ", got ", h.sizes());
  const int64_t H = h.size(1);
  TORCH_CHECK(b.dim() == 1 && b.size(0) == H, op, "b must be [H] = [", H, "], got ", b.sizes());
  TORCH_CHECK(w_out.dim() == 2 && w_out.size(0) == d && w_out.size(1) == H, op, "w_out must be [d, H] = [", d, ", ",
              H, "], got ", w_out.sizes());
  TORCH_CHECK(b_out.dim() == 1 && b_out.size(0) == d, op, "b_out must be [d] = [", d, "], got ", b_out.sizes());
  const auto xd = x.scalar_type(), hd = h.scalar_type();
  TORCH_CHECK(xd == at::kFloat || xd == at::kDouble, op, "x must be float32 or float64 (the state), got ", xd);
  TORCH_CHECK(hd == xd || (xd == at::kFloat && hd == at::kBFloat16), op, "h must be x's dtype ", xd,
              (xd == at::kFloat ? " or bfloat16" : ""), ", got ", hd);
  for (const auto* t_ : {&b, &w_out, &b_out})
    TORCH_CHECK(t_->scalar_type() == xd, op, "b, w_out and b_out must be x's dtype ", xd, ", got ", t_->scalar_type());
  for (const auto* t_ : {&h, &b, &w_out, &b_out})
    TORCH_CHECK(t_->device() == x.device(), op, "every tensor must be on x's device ", x.device());
  const auto hc = h.contiguous(), bc = b.contiguous(), wc = w_out.contiguous(), boc = b_out.contiguous();
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(H, 1));
  if (xd == at::kDouble) {
    const double *hp = hc.const_data_ptr<double>(), *bp = bc.const_data_ptr<double>();
    const double *wp = wc.const_data_ptr<double>(), *bop = boc.const_data_ptr<double>();
    double* xp = x.mutable_data_ptr<double>();
    at::parallel_for(0, M, grain, [&](int64_t r0, int64_t r1) {
      std::vector<double> a(static_cast<size_t>(H));
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t j = 0; j < H; ++j) a[j] = gelu_tanh<double>(hp[r * H + j] + bp[j]);
        for (int64_t k = 0; k < d; ++k) {
          double dot = 0.0;
          for (int64_t j = 0; j < H; ++j) dot += a[j] * wp[k * H + j];
          xp[r * d + k] += scale * (bop[k] + dot);
        }
      }
    });
    return;
  }
  const float *bp = bc.const_data_ptr<float>(), *wp = wc.const_data_ptr<float>(), *bop = boc.const_data_ptr<float>();
  float* xp = x.mutable_data_ptr<float>();
  const float sf = static_cast<float>(scale);
  const auto& rows = rollout_layer_rows();
  at::parallel_for(0, M, grain, [&](int64_t r0, int64_t r1) {
    std::vector<float> a(static_cast<size_t>(H));
    if (hd == at::kFloat) {
      const float* hp = hc.const_data_ptr<float>();
      for (int64_t r = r0; r < r1; ++r) rows.out_f32(xp + r * d, hp + r * H, bp, wp, bop, sf, d, H, a.data());
    } else {
      const uint16_t* hp = reinterpret_cast<const uint16_t*>(hc.const_data_ptr<at::BFloat16>());
      for (int64_t r = r0; r < r1; ++r) rows.out_bf16(xp + r * d, hp + r * H, bp, wp, bop, sf, d, H, a.data());
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fidec, CPU, m) {
  m.impl("rollout_first_layer_gelu_", &rollout_first_layer_gelu_cpu_);
  m.impl("rollout_out_layer_euler_", &rollout_out_layer_euler_cpu_);
}

}  // namespace fidec
