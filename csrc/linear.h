// Linear layer with a fused bias + activation epilogue:
//   forward:  y = act(x Wᵀ + b)                       x (R, K), W (N, K), b (N,), y (R, N)
//   backward: dz = dy ⊙ act'(y)  (relu' = [y > 0], sigmoid' = y(1 − y), from the saved output y)
//             dx = dz W,  dW = dzᵀ x,  db = Σ_rows dz
// x may have leading dimensions (R = their product). Both products of the backward
// apply act'(y) while packing dy (GemmArgs::aux), so dz is never written to memory.
#pragma once
#include <cstdint>

#include "core/view.h"
#include "gemm.h"

namespace ox {

Activation parse_activation(const char* op, const char* name);  // "none"/"relu"/"sigmoid"

// Validation shared by CPU and CUDA (throws TypeError/ValueError naming the argument).
void linear_check(const char* op, const View& x, const View& w, const View* bias, const View& y);
void linear_backward_check(const char* op, const View& dy, const View& x, const View& w, const View* y,
                           Activation act, const View* dx, const View* dw, const View* db);

// The products of the layer as GemmArgs (rows R = x.numel() / K).
GemmArgs linear_forward_gemm(const View& x, const View& w, const View* bias, Activation act, const View& y);
GemmArgs linear_grad_x_gemm(const View& dy, const View& w, const View* y, Activation act, const View& dx);
GemmArgs linear_grad_w_gemm(const View& dy, const View& x, const View* y, Activation act, const View& dw);

void linear_cpu(const View& x, const View& w, const View* bias, Activation act, const View& y);
void linear_backward_cpu(const View& dy, const View& x, const View& w, const View* y, Activation act,
                         const View* dx, const View* dw, const View* db);
// workspace: the split-K scratch of the products (gemm_cuda_workspace; null when none needs it).
void linear_cuda(const View& x, const View& w, const View* bias, Activation act, const View& y, uintptr_t stream,
                 const View* workspace);
void linear_backward_cuda(const View& dy, const View& x, const View& w, const View* y, Activation act,
                          const View* dx, const View* dw, const View* db, uintptr_t stream, const View* workspace);

}  // namespace ox
