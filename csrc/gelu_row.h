// GELU (tanh approximation, flax's default) and its derivative, element by element.
// Shared by the C++ CPU kernels (their scalar tails) and the CUDA kernels; no torch headers.
#pragma once

#include <math.h>

#include "fidec_macros.h"

namespace fidec {

constexpr double kGeluBeta = 0.7978845608028654;  // sqrt(2 / pi)
constexpr double kGeluKappa = 0.044715;

// y = 0.5 h (1 + tanh(u)), u = sqrt(2/pi) (h + 0.044715 h^3);
// dy/dh = 0.5 (1 + tanh u) + 0.5 h (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 h^2).
template <typename T>
FIDEC_HD void gelu_tanh_fwd_grad(T h, T* y, T* dy) {
  const T beta = T(kGeluBeta), kappa = T(kGeluKappa);
  const T h2 = h * h;
  const T th = tanh(beta * (h + kappa * h2 * h));
  *y = T(0.5) * h * (T(1) + th);
  *dy = T(0.5) * (T(1) + th) + T(0.5) * h * (T(1) - th * th) * beta * (T(1) + T(3) * kappa * h2);
}

template <typename T>
FIDEC_HD T gelu_tanh(T h) {
  const T beta = T(kGeluBeta), kappa = T(kGeluKappa);
  return T(0.5) * h * (T(1) + tanh(beta * (h + kappa * h * h * h)));
}

}  // namespace fidec
