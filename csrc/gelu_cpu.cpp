// CPU kernels of the fused GELU ops used by the MLP rollouts and the velocity JVP:
//   bias_gelu_(h[G, R, H], bias[G, H])      h <- gelu(h + bias[g])  (in place; one bias row per group of
//                                            R rows: the per-state first-layer bias of an Euler step)
//   gelu_jvp(h[N, H], bias[H], th[N, H])    y = gelu(h + b), dy = gelu'(h + b), ty = dy * th
// Vectorised with at::vec (the same Sleef tanh ATen's own GELU uses), one pass over memory.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include "gelu_row.h"

namespace fidec {
namespace {

using at::vec::Vectorized;

template <typename T>
inline Vectorized<T> vgelu(const Vectorized<T>& h) {
  const auto half = Vectorized<T>(T(0.5)), one = Vectorized<T>(T(1));
  const auto beta = Vectorized<T>(T(kGeluBeta)), kappa = Vectorized<T>(T(kGeluKappa));
  const auto th = (beta * (h + kappa * h * h * h)).tanh();
  return half * h * (one + th);
}

template <typename T>
inline void vgelu_grad(const Vectorized<T>& h, Vectorized<T>& y, Vectorized<T>& dy) {
  const auto half = Vectorized<T>(T(0.5)), one = Vectorized<T>(T(1)), three = Vectorized<T>(T(3));
  const auto beta = Vectorized<T>(T(kGeluBeta)), kappa = Vectorized<T>(T(kGeluKappa));
  const auto h2 = h * h;
  const auto th = (beta * (h + kappa * h2 * h)).tanh();
  y = half * h * (one + th);
  dy = half * (one + th) + half * h * (one - th * th) * beta * (one + three * kappa * h2);
}

// One row of H elements: h <- gelu(h + b). float/double run vectorised; bf16/half through float.
template <typename scalar_t>
void bias_gelu_row(scalar_t* h, const scalar_t* b, int64_t H) {
  if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>) {
    using V = Vectorized<scalar_t>;
    int64_t j = 0;
    for (; j + V::size() <= H; j += V::size()) vgelu(V::loadu(h + j) + V::loadu(b + j)).store(h + j);
    for (; j < H; ++j) h[j] = gelu_tanh<scalar_t>(h[j] + b[j]);
  } else {
    using acc_t = at::opmath_type<scalar_t>;
    for (int64_t j = 0; j < H; ++j)
      h[j] = static_cast<scalar_t>(gelu_tanh<acc_t>(static_cast<acc_t>(h[j]) + static_cast<acc_t>(b[j])));
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
        int64_t j = 0;
        if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>) {
          using V = Vectorized<scalar_t>;
          for (; j + V::size() <= H; j += V::size()) {
            V yv, dv;
            vgelu_grad(V::loadu(hp + o + j) + V::loadu(bp + j), yv, dv);
            yv.store(yp + o + j);
            dv.store(dyp + o + j);
            (dv * V::loadu(tp + o + j)).store(typ + o + j);
          }
        }
        using acc_t = at::opmath_type<scalar_t>;
        for (; j < H; ++j) {
          acc_t yv, dv;
          gelu_tanh_fwd_grad<acc_t>(static_cast<acc_t>(hp[o + j]) + static_cast<acc_t>(bp[j]), &yv, &dv);
          yp[o + j] = static_cast<scalar_t>(yv);
          dyp[o + j] = static_cast<scalar_t>(dv);
          typ[o + j] = static_cast<scalar_t>(dv * static_cast<acc_t>(tp[o + j]));
        }
      }
    });
  });
  return {y, ty, dy};
}

}  // namespace

TORCH_LIBRARY_IMPL(fidec, CPU, m) {
  m.impl("bias_gelu_", &bias_gelu_cpu_);
  m.impl("gelu_jvp", &gelu_jvp_cpu);
}

}  // namespace fidec
