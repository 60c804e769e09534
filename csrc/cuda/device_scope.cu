#include "core/cuda_check.h"
#include "core/cuda_device.h"
#include "core/errors.h"

namespace ox {

CudaDeviceScope::CudaDeviceScope(const char* op, int device) {
  int current = 0;
  cuda_check(cudaGetDevice(&current), op);
  if (current == device) return;
  cuda_check(cudaSetDevice(device), op);
  previous_ = current;
}

CudaDeviceScope::~CudaDeviceScope() {
  if (previous_ >= 0) cudaSetDevice(previous_);
}

}  // namespace ox
