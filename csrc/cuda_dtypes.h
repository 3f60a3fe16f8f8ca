// dtype codes shared by the torch-free CUDA launchers (nvcc) and their g++ bindings.
#pragma once

namespace fidec {
enum CudaDtype : int { kCudaFloat = 0, kCudaDouble = 1, kCudaHalf = 2, kCudaBFloat16 = 3 };
}

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace fidec {
template <typename T> struct AccType { using type = float; };
template <> struct AccType<double> { using type = double; };
}  // namespace fidec

// Calls FN<T>(args...) for the element type named by CODE; an unknown code is cudaErrorInvalidValue.
#define FIDEC_CUDA_DISPATCH(CODE, FN, ...)                                      \
  switch (CODE) {                                                               \
    case fidec::kCudaFloat: return FN<float>(__VA_ARGS__);                      \
    case fidec::kCudaDouble: return FN<double>(__VA_ARGS__);                    \
    case fidec::kCudaHalf: return FN<__half>(__VA_ARGS__);                      \
    case fidec::kCudaBFloat16: return FN<__nv_bfloat16>(__VA_ARGS__);           \
    default: return static_cast<int>(cudaErrorInvalidValue);                    \
  }
#endif
