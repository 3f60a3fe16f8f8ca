// CPU kernels of the fused GELU ops used by the MLP rollouts and the velocity JVP:
//   bias_gelu_(h[G, R, H], bias[G, H])      h <- gelu(h + bias[g])  (in place; one bias row per group of
//                                            R rows: the per-state first-layer bias of an Euler step)
//   gelu_jvp(h[N, H], bias[H], th[N, H])    y = gelu(h + b), dy = gelu'(h + b), ty = dy * th
// One pass over memory; the row loops are plain arithmetic (gelu_row.h) that the compiler vectorises,
// compiled for AVX-512 / AVX2 / baseline and picked once for the CPU at hand (or by FIDEC_CPU_ISA: cpu_isa.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "gelu_row.h"

#include "cpu_isa.h"

namespace fidec {
namespace {

// fp32 row bodies: inlined into one function per ISA below, where the compiler vectorises them
// for that ISA.
FIDEC_ALWAYS_INLINE void bias_gelu_row_f32_body(float* __restrict__ h, const float* __restrict__ b, int64_t H) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) h[j] = gelu_tanh<float>(h[j] + b[j]);
}

FIDEC_ALWAYS_INLINE void gelu_jvp_row_f32_body(const float* __restrict__ h, const float* __restrict__ b,
                                               const float* __restrict__ th, float* __restrict__ y,
                                               float* __restrict__ ty, float* __restrict__ dy, int64_t H) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    float yv, dv;
    gelu_tanh_fwd_grad<float>(h[j] + b[j], &yv, &dv);
    y[j] = yv;
    dy[j] = dv;
    ty[j] = dv * th[j];
  }
}

FIDEC_ALWAYS_INLINE void gelu_fwd_row_f32_body(const float* __restrict__ x, float* __restrict__ y,
                                               float* __restrict__ dy, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    float yv, dv;
    gelu_tanh_fwd_grad<float>(x[j], &yv, &dv);
    y[j] = yv;
    dy[j] = dv;
  }
}

// bf16 rows: the fp32 arithmetic above on values widened from bf16, rounded back to nearest-even
// (c10's BFloat16 conversions, NaN -> 0x7FC0), written on the bit patterns so the whole loop vectorises;
// the scalar at::BFloat16 loop it replaces ran ~6x slower than fp32 (the rollouts' bf16 GELU).
FIDEC_ALWAYS_INLINE void bias_gelu_row_bf16_body(uint16_t* __restrict__ h, const uint16_t* __restrict__ b,
                                                 int64_t H) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) h[j] = f32_to_bf16(gelu_tanh<float>(bf16_to_f32(h[j]) + bf16_to_f32(b[j])));
}

FIDEC_ALWAYS_INLINE void gelu_jvp_row_bf16_body(const uint16_t* __restrict__ h, const uint16_t* __restrict__ b,
                                                const uint16_t* __restrict__ th, uint16_t* __restrict__ y,
                                                uint16_t* __restrict__ ty, uint16_t* __restrict__ dy, int64_t H) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    float yv, dv;
    gelu_tanh_fwd_grad<float>(bf16_to_f32(h[j]) + bf16_to_f32(b[j]), &yv, &dv);
    y[j] = f32_to_bf16(yv);
    dy[j] = f32_to_bf16(dv);
    ty[j] = f32_to_bf16(dv * bf16_to_f32(th[j]));
  }
}

FIDEC_ALWAYS_INLINE void gelu_fwd_row_bf16_body(const uint16_t* __restrict__ x, uint16_t* __restrict__ y,
                                                uint16_t* __restrict__ dy, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    float yv, dv;
    gelu_tanh_fwd_grad<float>(bf16_to_f32(x[j]), &yv, &dv);
    y[j] = f32_to_bf16(yv);
    dy[j] = f32_to_bf16(dv);
  }
}

using BiasGeluRowFn = void (*)(float*, const float*, int64_t);
using GeluJvpRowFn = void (*)(const float*, const float*, const float*, float*, float*, float*, int64_t);
using GeluFwdRowFn = void (*)(const float*, float*, float*, int64_t);

using BiasGeluRowBf16Fn = void (*)(uint16_t*, const uint16_t*, int64_t);
using GeluJvpRowBf16Fn = void (*)(const uint16_t*, const uint16_t*, const uint16_t*, uint16_t*, uint16_t*,
                                  uint16_t*, int64_t);
using GeluFwdRowBf16Fn = void (*)(const uint16_t*, uint16_t*, uint16_t*, int64_t);

struct GeluRowsF32 {
  BiasGeluRowFn bias_gelu;
  GeluJvpRowFn jvp;
  GeluFwdRowFn fwd;
  BiasGeluRowBf16Fn bias_gelu_bf16;
  GeluJvpRowBf16Fn jvp_bf16;
  GeluFwdRowBf16Fn fwd_bf16;
};

// One set of row functions per ISA (ATTR: the target attribute, empty for the baseline).
#define FIDEC_GELU_ROWS(ISA, ATTR)                                                                      \
  ATTR void bias_gelu_row_f32_##ISA(float* h, const float* b, int64_t H) { bias_gelu_row_f32_body(h, b, H); } \
  ATTR void gelu_jvp_row_f32_##ISA(const float* h, const float* b, const float* th, float* y, float* ty, \
                                   float* dy, int64_t H) {                                              \
    gelu_jvp_row_f32_body(h, b, th, y, ty, dy, H);                                                      \
  }                                                                                                     \
  ATTR void gelu_fwd_row_f32_##ISA(const float* x, float* y, float* dy, int64_t n) {                    \
    gelu_fwd_row_f32_body(x, y, dy, n);                                                                 \
  }                                                                                                     \
  ATTR void bias_gelu_row_bf16_##ISA(uint16_t* h, const uint16_t* b, int64_t H) {                       \
    bias_gelu_row_bf16_body(h, b, H);                                                                   \
  }                                                                                                     \
  ATTR void gelu_jvp_row_bf16_##ISA(const uint16_t* h, const uint16_t* b, const uint16_t* th, uint16_t* y, \
                                    uint16_t* ty, uint16_t* dy, int64_t H) {                            \
    gelu_jvp_row_bf16_body(h, b, th, y, ty, dy, H);                                                     \
  }                                                                                                     \
  ATTR void gelu_fwd_row_bf16_##ISA(const uint16_t* x, uint16_t* y, uint16_t* dy, int64_t n) {          \
    gelu_fwd_row_bf16_body(x, y, dy, n);                                                                \
  }                                                                                                     \
  constexpr GeluRowsF32 kGeluRows_##ISA{bias_gelu_row_f32_##ISA,  gelu_jvp_row_f32_##ISA,  gelu_fwd_row_f32_##ISA, \
                                        bias_gelu_row_bf16_##ISA, gelu_jvp_row_bf16_##ISA, gelu_fwd_row_bf16_##ISA};

FIDEC_GELU_ROWS(baseline, )
#ifdef FIDEC_MULTI_ISA
FIDEC_GELU_ROWS(avx2, __attribute__((target("avx2"))))
FIDEC_GELU_ROWS(avx512, __attribute__((target("avx512f,avx512bw"))))
#endif

const GeluRowsF32& gelu_rows_f32() {
#ifdef FIDEC_MULTI_ISA
  static const GeluRowsF32& rows = rows_for_active_isa(kGeluRows_avx512, kGeluRows_avx2, kGeluRows_baseline);
#else
  static const GeluRowsF32& rows = kGeluRows_baseline;
#endif
  return rows;
}

void bias_gelu_row_f32(float* h, const float* b, int64_t H) { gelu_rows_f32().bias_gelu(h, b, H); }
void gelu_jvp_row_f32(const float* h, const float* b, const float* th, float* y, float* ty, float* dy, int64_t H) {
  gelu_rows_f32().jvp(h, b, th, y, ty, dy, H);
}
void gelu_fwd_row_f32(const float* x, float* y, float* dy, int64_t n) { gelu_rows_f32().fwd(x, y, dy, n); }

// at::BFloat16 is a struct of one uint16_t: its storage read as the raw bit patterns.
static_assert(sizeof(at::BFloat16) == sizeof(uint16_t), "BFloat16 must be 16 bits");
inline uint16_t* as_bits(at::BFloat16* p) { return reinterpret_cast<uint16_t*>(p); }
inline const uint16_t* as_bits(const at::BFloat16* p) { return reinterpret_cast<const uint16_t*>(p); }

template <typename scalar_t>
void gelu_fwd_range(const scalar_t* x, scalar_t* y, scalar_t* dy, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    gelu_fwd_row_f32(x, y, dy, n);
  } else if constexpr (std::is_same_v<scalar_t, at::BFloat16>) {
    gelu_rows_f32().fwd_bf16(as_bits(x), as_bits(y), as_bits(dy), n);
  } else {
    using acc_t = at::opmath_type<scalar_t>;
    for (int64_t i = 0; i < n; ++i) {
      acc_t yv, dv;
      gelu_tanh_fwd_grad<acc_t>(static_cast<acc_t>(x[i]), &yv, &dv);
      y[i] = static_cast<scalar_t>(yv);
      dy[i] = static_cast<scalar_t>(dv);
    }
  }
}

template <typename scalar_t>
void bias_gelu_row(scalar_t* h, const scalar_t* b, int64_t H) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    bias_gelu_row_f32(h, b, H);
  } else if constexpr (std::is_same_v<scalar_t, at::BFloat16>) {
    gelu_rows_f32().bias_gelu_bf16(as_bits(h), as_bits(b), H);
  } else {
    using acc_t = at::opmath_type<scalar_t>;
    for (int64_t j = 0; j < H; ++j)
      h[j] = static_cast<scalar_t>(gelu_tanh<acc_t>(static_cast<acc_t>(h[j]) + static_cast<acc_t>(b[j])));
  }
}

template <typename scalar_t>
void gelu_jvp_row(const scalar_t* h, const scalar_t* b, const scalar_t* th, scalar_t* y, scalar_t* ty,
                  scalar_t* dy, int64_t H) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    gelu_jvp_row_f32(h, b, th, y, ty, dy, H);
  } else if constexpr (std::is_same_v<scalar_t, at::BFloat16>) {
    gelu_rows_f32().jvp_bf16(as_bits(h), as_bits(b), as_bits(th), as_bits(y), as_bits(ty), as_bits(dy), H);
  } else {
    using acc_t = at::opmath_type<scalar_t>;
    for (int64_t j = 0; j < H; ++j) {
      acc_t yv, dv;
      gelu_tanh_fwd_grad<acc_t>(static_cast<acc_t>(h[j]) + static_cast<acc_t>(b[j]), &yv, &dv);
      y[j] = static_cast<scalar_t>(yv);
      dy[j] = static_cast<scalar_t>(dv);
      ty[j] = static_cast<scalar_t>(dv * static_cast<acc_t>(th[j]));
    }
  }
}

void bias_gelu_cpu_(at::Tensor& h, const at::Tensor& bias) {
  TORCH_CHECK(h.dim() == 3, "bias_gelu_: h must be [G, R, H], got ", h.sizes());
  TORCH_CHECK(h.is_contiguous(), "bias_gelu_: h must be contiguous (it is written in place)");
  const int64_t G = h.size(0), R = h.size(1), H = h.size(2);
  TORCH_CHECK(bias.dim() == 2 && bias.size(0) == G && bias.size(1) == H, "bias_gelu_: bias must be [G, H] = [",
              G, ", ", H, "], got ", bias.sizes());
  TORCH_CHECK(bias.scalar_type() == h.scalar_type(), "bias_gelu_: bias must have h's dtype ", h.scalar_type(),
              ", got ", bias.scalar_type());
  TORCH_CHECK(bias.device() == h.device(), "bias_gelu_: bias is on ", bias.device(), ", h on ", h.device());
  const auto b = bias.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "bias_gelu_cpu_", [&] {
    scalar_t* hp = h.mutable_data_ptr<scalar_t>();
    const scalar_t* bp = b.const_data_ptr<scalar_t>();
    at::parallel_for(0, G * R, std::max<int64_t>(1, 32768 / std::max<int64_t>(H, 1)), [&](int64_t lo, int64_t hi) {
      for (int64_t row = lo; row < hi; ++row) bias_gelu_row(hp + row * H, bp + (row / R) * H, H);
    });
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gelu_jvp_cpu(const at::Tensor& h_, const at::Tensor& bias_,
                                                            const at::Tensor& th_) {
  TORCH_CHECK(h_.dim() == 2, "gelu_jvp: h must be [N, H], got ", h_.sizes());
  TORCH_CHECK(th_.sizes() == h_.sizes(), "gelu_jvp: th must have h's shape ", h_.sizes(), ", got ", th_.sizes());
  TORCH_CHECK(bias_.dim() == 1 && bias_.size(0) == h_.size(1), "gelu_jvp: bias must be [H] = [", h_.size(1),
              "], got ", bias_.sizes());
  TORCH_CHECK(th_.scalar_type() == h_.scalar_type() && bias_.scalar_type() == h_.scalar_type(),
              "gelu_jvp: h, bias and th must share a dtype, got ", h_.scalar_type(), ", ", bias_.scalar_type(), ", ",
              th_.scalar_type());
  TORCH_CHECK(th_.device() == h_.device() && bias_.device() == h_.device(), "gelu_jvp: tensors on different devices");
  const auto h = h_.contiguous(), th = th_.contiguous(), b = bias_.contiguous();
  const int64_t N = h.size(0), H = h.size(1);
  auto y = at::empty_like(h), ty = at::empty_like(h), dy = at::empty_like(h);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "gelu_jvp_cpu", [&] {
    const scalar_t* hp = h.const_data_ptr<scalar_t>();
    const scalar_t* tp = th.const_data_ptr<scalar_t>();
    const scalar_t* bp = b.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    scalar_t* typ = ty.mutable_data_ptr<scalar_t>();
    scalar_t* dyp = dy.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, N, std::max<int64_t>(1, 16384 / std::max<int64_t>(H, 1)), [&](int64_t lo, int64_t hi) {
      for (int64_t row = lo; row < hi; ++row) {
        const int64_t o = row * H;
        gelu_jvp_row(hp + o, bp, tp + o, yp + o, typ + o, dyp + o, H);
      }
    });
  });
  return {y, ty, dy};
}

std::tuple<at::Tensor, at::Tensor> gelu_fwd_cpu(const at::Tensor& x_) {
  TORCH_CHECK(at::isFloatingType(x_.scalar_type()), "gelu_fwd: x must be floating, got ", x_.scalar_type());
  const auto x = x_.contiguous();
  auto y = at::empty_like(x), dy = at::empty_like(x);
  const int64_t n = x.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gelu_fwd_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    scalar_t* dyp = dy.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, 16384, [&](int64_t lo, int64_t hi) { gelu_fwd_range(xp + lo, yp + lo, dyp + lo, hi - lo); });
  });
  return {y, dy};
}

}  // namespace

TORCH_LIBRARY_IMPL(fidec, CPU, m) {
  m.impl("gelu_fwd", &gelu_fwd_cpu);
  m.impl("bias_gelu_", &bias_gelu_cpu_);
  m.impl("gelu_jvp", &gelu_jvp_cpu);
}

}  // namespace fidec
