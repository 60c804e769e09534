// Fused Adam / AdamW step over a list of tensors (one parameter group).
//
// Per element, in this order (torch.optim.Adam / AdamW, fused CPU path):
//   g ← g / grad_scale                         (optional; the unscaled g is written back)
//   g ← −g                                     (maximize)
//   Adam (L2):  g ← g + λθ      AdamW (decoupled):  θ ← θ·(1 − lr·λ)   (when λ ≠ 0)
//   m ← m + (1−β₁)(g − m)                      (= β₁m + (1−β₁)g, torch's lerp)
//   v ← β₂v + (1−β₂)g²
//   v̂ ← max(v̂max, v) (amsgrad, stored in v̂max) else v
//   θ ← θ − step_size·m / (√v̂ / √(1−β₂ᵗ) + ε),   step_size = lr / (1−β₁ᵗ)
// (the CPU multiplies √v̂ by 1/√(1−β₂ᵗ) instead of dividing: ≤ 1 ulp from torch, one division less)
// t is the tensor's step count after this step's increment. The step-dependent
// scalars are computed in double on the host (or on the device when t and lr
// live there, the capturable mode), then rounded to float as torch does.
//
// found_inf ≠ 0 (torch.amp.GradScaler) skips the whole step: nothing is
// written and step counts are not incremented.
#pragma once
#include <cstdint>

#include "core/view.h"

namespace ox {

struct AdamHyper {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0;
  bool decoupled = false, amsgrad = false, maximize = false;
};

inline AdamHyper make_adam_hyper(double lr, double beta1, double beta2, double eps, double weight_decay,
                                 bool decoupled, bool amsgrad, bool maximize) {
  AdamHyper h;
  h.lr = lr;
  h.beta1 = beta1;
  h.beta2 = beta2;
  h.eps = eps;
  h.weight_decay = weight_decay;
  h.decoupled = decoupled;
  h.amsgrad = amsgrad;
  h.maximize = maximize;
  return h;
}

// One tensor of the group: raw pointers (validated by the caller) and its step.
struct AdamTensor {
  void* param = nullptr;     // float32 / float64 on CPU; float32 / bf16 / fp16 on CUDA
  void* grad = nullptr;      // dtype of param
  void* exp_avg = nullptr;  // float32 (float64 when param is float64)
  void* exp_avg_sq = nullptr;
  void* max_exp_avg_sq = nullptr;  // amsgrad only
  int64_t numel = 0;
  // Step count after the increment, when it is known on the host. Step tensors
  // on the device (capturable): step_device points at a float32 the kernel
  // increments and reads.
  double step = 1;
  float* step_device = nullptr;
};

// Validates one call's lists: equal lengths, every tensor contiguous, same shape
// as its param, param dtype allowed for the device, states float32 (or the param's
// float64), one device for all; grads writable only when grads_written (grad
// scaling writes the unscaled grads back). `op` names the caller in messages.
void adam_check(const char* op, const View* params, const View* grads, const View* exp_avgs,
                const View* exp_avg_sqs, const View* max_exp_avg_sqs, int64_t count, bool amsgrad,
                bool grads_written);
void adam_check_hyper(const char* op, const AdamHyper& h);

// CPU: all tensors in one parallel pass over a flattened list of chunks.
// param_dtype: f32 or f64. grad_scale: nullptr or the host value of the scale.
void adam_step_cpu(const AdamTensor* tensors, int64_t count, DType param_dtype, const AdamHyper& h,
                   const double* grad_scale);

// CUDA: one launch over all tensors (more only for very long lists), on the current device.
// lr_device, grad_scale and found_inf are device float32 scalars or nullptr.
void adam_step_cuda(const AdamTensor* tensors, int64_t count, DType param_dtype, const AdamHyper& h,
                    const float* lr_device, const float* grad_scale, const float* found_inf, uintptr_t stream);

}  // namespace ox
