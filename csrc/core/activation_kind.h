// The activations of the course networks, shared by the elementwise kernels
// (activation.h) and the matrix-product epilogue/prologue (gemm.h).
#pragma once

namespace ox {

enum class Activation : int { none = 0, relu = 1, sigmoid = 2 };

}  // namespace ox
