// CUDA kernels of the fused GELU ops (see gelu_cpu.cpp for the contracts). Torch-free: compiled by
// nvcc against any torch, registered by gelu_cuda_binding.cpp. Math from gelu_row.h (shared with CPU).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "cuda_dtypes.h"
#include "gelu_row.h"

namespace fidec {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void bias_gelu_kernel(T* __restrict__ h, const T* __restrict__ b, int64_t total, int64_t R, int64_t H) {
  using acc_t = typename AccType<T>::type;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / H, j = i - row * H;
    const acc_t v = static_cast<acc_t>(h[i]) + static_cast<acc_t>(b[(row / R) * H + j]);
    h[i] = static_cast<T>(gelu_tanh<acc_t>(v));
  }
}

template <typename T>
__global__ void gelu_jvp_kernel(const T* __restrict__ h, const T* __restrict__ b, const T* __restrict__ th,
                                T* __restrict__ y, T* __restrict__ ty, T* __restrict__ dy, int64_t total, int64_t H) {
  using acc_t = typename AccType<T>::type;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    acc_t yv, dv;
    gelu_tanh_fwd_grad<acc_t>(static_cast<acc_t>(h[i]) + static_cast<acc_t>(b[i % H]), &yv, &dv);
    y[i] = static_cast<T>(yv);
    dy[i] = static_cast<T>(dv);
    ty[i] = static_cast<T>(dv * static_cast<acc_t>(th[i]));
  }
}

template <typename T>
__global__ void gelu_fwd_kernel(const T* __restrict__ x, T* __restrict__ y, T* __restrict__ dy, int64_t total) {
  using acc_t = typename AccType<T>::type;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    acc_t yv, dv;
    gelu_tanh_fwd_grad<acc_t>(static_cast<acc_t>(x[i]), &yv, &dv);
    y[i] = static_cast<T>(yv);
    dy[i] = static_cast<T>(dv);
  }
}

unsigned grid_for(int64_t total) {
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < 65535 * 8 ? (blocks > 0 ? blocks : 1) : 65535 * 8);
}

template <typename T>
int launch_bias_gelu(void* h, const void* b, int64_t G, int64_t R, int64_t H, cudaStream_t stream) {
  const int64_t total = G * R * H;
  if (total == 0) return 0;
  bias_gelu_kernel<T><<<grid_for(total), kThreads, 0, stream>>>(static_cast<T*>(h), static_cast<const T*>(b), total,
                                                                 R, H);
  return static_cast<int>(cudaGetLastError());
}

template <typename T>
int launch_gelu_jvp(const void* h, const void* b, const void* th, void* y, void* ty, void* dy, int64_t N, int64_t H,
                    cudaStream_t stream) {
  const int64_t total = N * H;
  if (total == 0) return 0;
  gelu_jvp_kernel<T><<<grid_for(total), kThreads, 0, stream>>>(
      static_cast<const T*>(h), static_cast<const T*>(b), static_cast<const T*>(th), static_cast<T*>(y),
      static_cast<T*>(ty), static_cast<T*>(dy), total, H);
  return static_cast<int>(cudaGetLastError());
}

template <typename T>
int launch_gelu_fwd(const void* x, void* y, void* dy, int64_t total, cudaStream_t stream) {
  if (total == 0) return 0;
  gelu_fwd_kernel<T><<<grid_for(total), kThreads, 0, stream>>>(static_cast<const T*>(x), static_cast<T*>(y),
                                                                static_cast<T*>(dy), total);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace
}  // namespace fidec

extern "C" int fidec_gelu_fwd_cuda(int dtype, const void* x, void* y, void* dy, int64_t total, void* stream) {
  FIDEC_CUDA_DISPATCH(dtype, fidec::launch_gelu_fwd, x, y, dy, total, static_cast<cudaStream_t>(stream));
}

extern "C" int fidec_bias_gelu_cuda(int dtype, void* h, const void* bias, int64_t G, int64_t R, int64_t H,
                                    void* stream) {
  FIDEC_CUDA_DISPATCH(dtype, fidec::launch_bias_gelu, h, bias, G, R, H, static_cast<cudaStream_t>(stream));
}

extern "C" int fidec_gelu_jvp_cuda(int dtype, const void* h, const void* bias, const void* th, void* y, void* ty,
                                   void* dy, int64_t N, int64_t H, void* stream) {
  FIDEC_CUDA_DISPATCH(dtype, fidec::launch_gelu_jvp, h, bias, th, y, ty, dy, N, H, static_cast<cudaStream_t>(stream));
}
