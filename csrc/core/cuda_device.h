// The CUDA device an op's kernels run on (CUDA builds only; defined in cuda/device_scope.cu).
//
// A kernel runs on the calling thread's current device, while the arrays say where their
// memory is; torch leaves the current device to the user, so a model on cuda:1 is usually
// called with cuda:0 current. For the scope of one op this makes the arrays' device current,
// and restores the caller's on exit.
#pragma once

namespace ox {

class CudaDeviceScope {
 public:
  CudaDeviceScope(const char* op, int device);
  ~CudaDeviceScope();
  CudaDeviceScope(const CudaDeviceScope&) = delete;
  CudaDeviceScope& operator=(const CudaDeviceScope&) = delete;

 private:
  int previous_ = -1;  // the caller's device, when it differs
};

}  // namespace ox
