// GELU (tanh approximation, flax's default) and its derivative, element by element.
// Shared by the C++ CPU kernels and the CUDA kernels, so the CPU tests exercise the GPU's arithmetic.
// No torch headers. The float path avoids libm: tanh comes from an exp built of multiplies, adds and
// an exponent-bit shift, which compilers vectorise (std::tanh in a loop stays scalar, and ATen's
// GELU-tanh costs ~5x its plain tanh on CPU).
#pragma once

#include <math.h>
#include <stdint.h>

#include "fidec_macros.h"

namespace fidec {

constexpr double kGeluBeta = 0.7978845608028654;  // sqrt(2 / pi)
constexpr double kGeluKappa = 0.044715;

FIDEC_HD int32_t bits_of(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_int(x);
#else
  return __builtin_bit_cast(int32_t, x);
#endif
}

FIDEC_HD float float_of(int32_t b) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(b);
#else
  return __builtin_bit_cast(float, b);
#endif
}

// e^r on |r| <= ln(2) / 2 by its degree-7 Taylor polynomial (relative error < 1e-8 there).
FIDEC_HD float exp_reduced_f32(float r) {
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  return p * r + 1.0f;
}

// exp(-y) for y >= 0 (clamped at 87, where it underflows float): 2^(-y log2 e) split into
// 2^n * 2^f with n = round(-y log2 e), |f| <= 1/2, and 2^f = e^(f ln 2) by its degree-7 Taylor
// polynomial (relative error < 1e-8 on |f| <= 1/2). Branch-free, so loops of it vectorise.
FIDEC_HD float exp_neg_f32(float y) {
  // min(y, 87) on the bit patterns (monotone for y >= 0; a NaN clamps too): a float compare-select
  // here stops GCC from vectorising the loop, an integer min does not.
  int32_t yb = bits_of(y);
  yb = yb < 0x42AE0000 ? yb : 0x42AE0000;  // 87.0f
  y = float_of(yb);
  const float z = -y * 1.4426950408889634f;
  const int32_t n = static_cast<int32_t>(z - 0.5f);  // round to nearest: z <= 0 and the cast truncates
  const float r = (z - static_cast<float>(n)) * 0.6931471805599453f;
  const int32_t bits = (n + 127) << 23;  // 2^n for n in [-126, 0]
  return exp_reduced_f32(r) * float_of(bits);
}

// tanh(u) = sign(u) (1 - e) / (1 + e), e = exp(-2|u|) in (0, 1]: no overflow anywhere.
FIDEC_HD float tanh_f32(float u) {
  const float e = exp_neg_f32(2.0f * fabsf(u));
  return copysignf((1.0f - e) / (1.0f + e), u);
}

FIDEC_HD float tanh_any(float u) { return tanh_f32(u); }
FIDEC_HD double tanh_any(double u) { return tanh(u); }

// sign(h) min(|h|, 30): where GELU's derivative term h (1 - tanh^2) (1 + 3 kappa h^2) is exactly 0
// in float anyway (|h| > 10), clamping keeps h^2 from overflowing into 0 * inf = NaN.
FIDEC_HD float clamp_abs30(float h) {
  int32_t ab = bits_of(fabsf(h));
  ab = ab < 0x41F00000 ? ab : 0x41F00000;  // 30.0f
  return copysignf(float_of(ab), h);
}
FIDEC_HD double clamp_abs30(double h) { return h > 30.0 ? 30.0 : (h < -30.0 ? -30.0 : h); }

// y = 0.5 h (1 + tanh(u)), u = sqrt(2/pi) (h + 0.044715 h^3);
// dy/dh = 0.5 (1 + tanh u) + 0.5 h (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 h^2).
template <typename T>
FIDEC_HD void gelu_tanh_fwd_grad(T h, T* y, T* dy) {
  const T beta = T(kGeluBeta), kappa = T(kGeluKappa);
  const T th = tanh_any(beta * (h + kappa * h * h * h));
  const T hc = clamp_abs30(h);
  *y = T(0.5) * h * (T(1) + th);
  *dy = T(0.5) * (T(1) + th) + T(0.5) * hc * (T(1) - th * th) * beta * (T(1) + T(3) * kappa * hc * hc);
}

template <typename T>
FIDEC_HD T gelu_tanh(T h) {
  const T beta = T(kGeluBeta), kappa = T(kGeluKappa);
  return T(0.5) * h * (T(1) + tanh_any(beta * (h + kappa * h * h * h)));
}

// exp(z) for z clamped to [-87, 87]: n = round(z / ln 2) by the 1.5 * 2^23 shifter, r = z - n ln 2 in two parts
// (Cody-Waite), e^r times 2^n from the exponent bits.
FIDEC_HD float exp_clamped_f32(float z) {
  // |z| <= 87 by an integer min on its bit pattern (a float compare-select keeps GCC from vectorising)
  int32_t ab = bits_of(fabsf(z));
  ab = ab < 0x42AE0000 ? ab : 0x42AE0000;  // 87.0f
  z = copysignf(float_of(ab), z);
  const float shifter = 12582912.0f;  // 1.5 * 2^23
  const float nf = (z * 1.4426950408889634f + shifter) - shifter;
  const float r = (z - nf * 0.693145751953125f) - nf * 1.428606765330187e-06f;
  return exp_reduced_f32(r) * float_of((static_cast<int32_t>(nf) + 127) << 23);
}

// fp32 GELU as h sigmoid(2u) = h / (1 + e^(-2u)), the same function as 0.5 h (1 + tanh u): one exp and one
// division, no sign handling (~25% fewer operations than the tanh form; the rollouts' GELU passes are ~10%
// of a bf16 update).
template <>
FIDEC_HD float gelu_tanh<float>(float h) {
  const float beta = static_cast<float>(kGeluBeta), kappa = static_cast<float>(kGeluKappa);
  const float z = -2.0f * beta * (h + kappa * h * h * h);
  // past z = 87, sigmoid(-z) < 2^-125: the product h * 0 (-0 for finite h, NaN for -inf: as the tanh form and
  // torch, which compute h * (1 + tanh u) = -inf * 0 there)
  const float y = h / (1.0f + exp_clamped_f32(z)), y_sat = h * 0.0f;
  // z >= 87 (or a NaN z) <=> its bit pattern, read as an integer, is at least 87's: selected by bit masks
  const int32_t sat = bits_of(z) >= 0x42AE0000 ? -1 : 0;
  return float_of((bits_of(y) & ~sat) | (bits_of(y_sat) & sat));
}

// bf16 <-> fp32 on the bit patterns (c10's conversions: widening is exact, narrowing rounds to nearest even and
// maps every NaN to 0x7FC0), written so loops of them vectorise.
FIDEC_HD float bf16_to_f32(uint16_t b) { return float_of(static_cast<int32_t>(static_cast<uint32_t>(b) << 16)); }

FIDEC_HD uint16_t f32_to_bf16(float f) {
  const uint32_t u = static_cast<uint32_t>(bits_of(f));
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return (u & 0x7FFFFFFFu) > 0x7F800000u ? static_cast<uint16_t>(0x7FC0) : static_cast<uint16_t>(rounded);
}

}  // namespace fidec
