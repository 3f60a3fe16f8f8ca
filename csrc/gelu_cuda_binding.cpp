// Registers the torch-free CUDA launchers of gelu_cuda.cu as the CUDA kernels of fidec::bias_gelu_ / gelu_jvp.
#include <torch/library.h>

#include "cuda_launch.h"

extern "C" int fidec_bias_gelu_cuda(int dtype, void* h, const void* bias, int64_t G, int64_t R, int64_t H,
                                    void* stream);
extern "C" int fidec_gelu_jvp_cuda(int dtype, const void* h, const void* bias, const void* th, void* y, void* ty,
                                   void* dy, int64_t N, int64_t H, void* stream);

extern "C" int fidec_gelu_fwd_cuda(int dtype, const void* x, void* y, void* dy, int64_t total, void* stream);

namespace fidec {
namespace {

std::tuple<at::Tensor, at::Tensor> gelu_fwd_cuda(const at::Tensor& x_) {
  c10::DeviceGuard guard(x_.device());
  const auto x = x_.contiguous();
  auto y = at::empty_like(x), dy = at::empty_like(x);
  check_cuda_launch(fidec_gelu_fwd_cuda(cuda_dtype_code(x.scalar_type()), x.const_data_ptr(), y.mutable_data_ptr(),
                                        dy.mutable_data_ptr(), x.numel(), current_cuda_stream(x.device())),
                    "gelu_fwd");
  return {y, dy};
}

void bias_gelu_cuda_(at::Tensor& h, const at::Tensor& bias) {
  TORCH_CHECK(h.dim() == 3 && h.is_contiguous(), "bias_gelu_: h must be a contiguous [G, R, H], got ", h.sizes());
  const int64_t G = h.size(0), R = h.size(1), H = h.size(2);
  TORCH_CHECK(bias.dim() == 2 && bias.size(0) == G && bias.size(1) == H, "bias_gelu_: bias must be [G, H] = [",
              G, ", ", H, "], got ", bias.sizes());
  TORCH_CHECK(bias.scalar_type() == h.scalar_type() && bias.device() == h.device(),
              "bias_gelu_: bias must have h's dtype and device");
  c10::DeviceGuard guard(h.device());
  const auto b = bias.contiguous();
  check_cuda_launch(fidec_bias_gelu_cuda(cuda_dtype_code(h.scalar_type()), h.mutable_data_ptr(), b.const_data_ptr(),
                                         G, R, H, current_cuda_stream(h.device())),
                    "bias_gelu_");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gelu_jvp_cuda(const at::Tensor& h_, const at::Tensor& bias_,
                                                             const at::Tensor& th_) {
  TORCH_CHECK(h_.dim() == 2 && th_.sizes() == h_.sizes(), "gelu_jvp: h and th must be [N, H] of one shape");
  TORCH_CHECK(bias_.dim() == 1 && bias_.size(0) == h_.size(1), "gelu_jvp: bias must be [H]");
  TORCH_CHECK(th_.scalar_type() == h_.scalar_type() && bias_.scalar_type() == h_.scalar_type(),
              "gelu_jvp: h, bias and th must share a dtype");
  c10::DeviceGuard guard(h_.device());
  const auto h = h_.contiguous(), th = th_.contiguous(), b = bias_.contiguous();
  auto y = at::empty_like(h), ty = at::empty_like(h), dy = at::empty_like(h);
  check_cuda_launch(fidec_gelu_jvp_cuda(cuda_dtype_code(h.scalar_type()), h.const_data_ptr(), b.const_data_ptr(),
                                        th.const_data_ptr(), y.mutable_data_ptr(), ty.mutable_data_ptr(),
                                        dy.mutable_data_ptr(), h.size(0), h.size(1), current_cuda_stream(h.device())),
                    "gelu_jvp");
  return {y, ty, dy};
}

}  // namespace

TORCH_LIBRARY_IMPL(fidec, CUDA, m) {
  m.impl("gelu_fwd", &gelu_fwd_cuda);
  m.impl("bias_gelu_", &bias_gelu_cuda_);
  m.impl("gelu_jvp", &gelu_jvp_cuda);
}

}  // namespace fidec
