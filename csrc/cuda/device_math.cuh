// Device math shared by the kernels: a warp's sum, exp_/log_ for either precision, and the
// activations' formulas, one copy for the elementwise kernels (activation.cu) and the matrix product's
// epilogue (gemm.cu), so that linear(..., "sigmoid") equals sigmoid(linear(...)) bit for bit
// on the GPU as on the CPU.
//   relu(x) = x < 0 ? 0 : x              (NaN and −0 kept, as torch's clamp_min)
//   sigmoid(x) = x ≥ 0 ? r : e·r,  e = e^{−|x|},  r = 1 / (1 + e)   (no overflow in either tail)
#pragma once

namespace ox {

// Σ of v over the warp, in every lane (a fixed xor tree: the same order on every call).
template <class T> __device__ inline T warp_sum(T v) {
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ inline float exp_(float x) { return expf(x); }
__device__ inline double exp_(double x) { return exp(x); }
__device__ inline float log_(float x) { return logf(x); }
__device__ inline double log_(double x) { return log(x); }

template <class T> __device__ inline T relu1(T x) { return x < T(0) ? T(0) : x; }
template <class T> __device__ inline T sigmoid1(T x) {
  const T e = exp_(x < T(0) ? x : -x);  // e^{−|x|}; NaN stays NaN
  const T r = T(1) / (T(1) + e);
  return x >= T(0) ? r : e * r;
}

}  // namespace ox
