// Small torch-free helpers the g++ bindings need from the CUDA runtime (linked statically).
#include <cuda_runtime.h>

extern "C" const char* fidec_cuda_error_string(int err) {
  return cudaGetErrorString(static_cast<cudaError_t>(err));
}
