// Helpers for the g++ side of the CUDA ops: the current stream and errors, without c10/cuda headers,
// so these bindings build against CPU and CUDA builds of torch alike.
#pragma once
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include "cuda_dtypes.h"

extern "C" const char* fidec_cuda_error_string(int err);

namespace fidec {

inline void* current_cuda_stream(const at::Device& device) {
  return c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->getStream(device).native_handle();
}

inline int cuda_dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return kCudaFloat;
    case at::kDouble: return kCudaDouble;
    case at::kHalf: return kCudaHalf;
    case at::kBFloat16: return kCudaBFloat16;
    default: TORCH_CHECK(false, "fidec CUDA ops support float32, float64, float16 and bfloat16, got ", t);
  }
}

inline void check_cuda_launch(int err, const char* what) {
  TORCH_CHECK(err == 0, what, ": CUDA error ", err, ": ", fidec_cuda_error_string(err));
}

}  // namespace fidec
