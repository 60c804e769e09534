#include "activation.h"

#include <cmath>
#include <cstdint>

#include "core/isa.h"
#include "core/threading.h"
#include "cpu/vexp.h"

namespace ox {
namespace OX_ISA {

// Elements per parallel task: small enough to split a (64,6,28,28) batch over
// two cores, large enough that a task costs more than waking a thread.
constexpr int64_t kGrain = 32768;

// relu: y = x < 0 ? 0 : x keeps NaN (and −0) exactly as torch's clamp_min does.
template <class T> static void relu_fwd(const T* x, T* y, int64_t n) {
  parallel_for(n, kGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) y[i] = x[i] < T(0) ? T(0) : x[i];
  });
}

// dx = y > 0 ? g : 0 for y = relu(x); NaN in y passes g through, as torch's threshold_backward.
template <class T> static void relu_bwd(const T* g, const T* y, T* dx, int64_t n) {
  parallel_for(n, kGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const T gi = g[i], yi = y[i];  // both loaded unconditionally, so the select vectorises
      dx[i] = yi <= T(0) ? T(0) : gi;
    }
  });
}

// float64 (gradcheck): via e = e^{−|x|} ∈ (0, 1], exact in both tails:
// y = x ≥ 0 ? 1/(1+e) : e/(1+e). float32 uses sigmoid_array (cpu/vexp.h).
static inline double sigmoid1(double x) {
  const double e = std::exp(-std::fabs(x));
  const double r = 1.0 / (1.0 + e);
  return x >= 0.0 ? r : e * r;
}

static void sigmoid_fwd(const double* x, double* y, int64_t n) {
  parallel_for(n, kGrain / 2, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) y[i] = sigmoid1(x[i]);
  });
}
static void sigmoid_fwd(const float* x, float* y, int64_t n) {
  parallel_for(n, kGrain / 2, [&](int64_t b, int64_t e) { sigmoid_array(x + b, y + b, e - b); });
}

template <class T> static void sigmoid_bwd(const T* g, const T* y, T* dx, int64_t n) {
  parallel_for(n, kGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) dx[i] = g[i] * y[i] * (T(1) - y[i]);
  });
}

void activation_fwd(bool relu, const void* x, void* y, int64_t n, bool f64) {
  if (f64) {
    if (relu) relu_fwd(static_cast<const double*>(x), static_cast<double*>(y), n);
    else sigmoid_fwd(static_cast<const double*>(x), static_cast<double*>(y), n);
  } else {
    if (relu) relu_fwd(static_cast<const float*>(x), static_cast<float*>(y), n);
    else sigmoid_fwd(static_cast<const float*>(x), static_cast<float*>(y), n);
  }
}

void activation_bwd(bool relu, const void* g, const void* y, void* dx, int64_t n, bool f64) {
  if (f64) {
    if (relu) relu_bwd(static_cast<const double*>(g), static_cast<const double*>(y), static_cast<double*>(dx), n);
    else sigmoid_bwd(static_cast<const double*>(g), static_cast<const double*>(y), static_cast<double*>(dx), n);
  } else {
    if (relu) relu_bwd(static_cast<const float*>(g), static_cast<const float*>(y), static_cast<float*>(dx), n);
    else sigmoid_bwd(static_cast<const float*>(g), static_cast<const float*>(y), static_cast<float*>(dx), n);
  }
}

}  // namespace OX_ISA
}  // namespace ox

#if OX_ISA_IS_scalar
#include "core/checks.h"

OX_ISA_DECLARE(void, activation_fwd, (bool, const void*, void*, int64_t, bool))
OX_ISA_DECLARE(void, activation_bwd, (bool, const void*, const void*, void*, int64_t, bool))

namespace ox {

// Element-wise kernels run over the memory as a flat array: every array dense (row-major,
// channels-last, ...) and all in one layout, so that flat element i is the same element of each.
// `arg` must match `ref` (named ref_arg) in device, dtype, shape and layout.
static void check_same_array_shape(const char* op, const char* arg, const View& out, const char* ref_arg,
                                   const View& x) {
  check_same_device(op, arg, out, ref_arg, x);
  check_same_dtype(op, arg, out, ref_arg, x);
  check_same_shape(op, arg, out, x);
  check_same_layout(op, arg, out, ref_arg, x);
}

void activation_check(const char* op, const View& x, const View& out) {
  check_dtype(op, "x", x, {DType::f32, DType::f64});
  check_dense(op, "x", x);
  check_numel_fits(op, "x", x);
  check_same_array_shape(op, "out", out, "x", x);
  check_writable(op, "out", out);
}

void activation_backward_check(const char* op, const View& g, const View& y, const View& out) {
  check_dtype(op, "grad", g, {DType::f32, DType::f64});
  check_dense(op, "grad", g);
  check_numel_fits(op, "grad", g);
  check_same_array_shape(op, "y", y, "grad", g);
  check_same_array_shape(op, "out", out, "grad", g);
  check_writable(op, "out", out);
}

void activation_forward_cpu(Activation act, const View& x, const View& y) {
  OX_ISA_DISPATCH(activation_fwd, act == Activation::relu, x.data, y.data, x.numel(), x.dtype == DType::f64);
}

void activation_backward_cpu(Activation act, const View& g, const View& y, const View& dx) {
  OX_ISA_DISPATCH(activation_bwd, act == Activation::relu, g.data, y.data, dx.data, g.numel(), g.dtype == DType::f64);
}

}  // namespace ox
#endif
