// Fused Adam / AdamW on the CPU (formula in adam.h).
//
// The tensors of a group are laid end to end in one index space [0, total);
// the thread pool splits that space into equal ranges, so a list of small
// tensors is balanced as well as one big one, and the whole group is one
// parallel pass. float32 runs on AVX-512 / AVX2 vectors (masked loads and
// stores for the tails); float64 and the scalar build use the plain loop.
#include "adam.h"

#include <cmath>
#include <cstdint>

#include "core/isa.h"
#include "core/threading.h"
#include "cpu/simd.h"

namespace ox {

// The per-call constants of the element formula, already rounded to the
// parameter type (as torch rounds its double scalars to float).
template <class T> struct AdamConstants {
  T lerp_coeff;      // m ← base + lerp_coeff·(g − m): (1−β₁) when < 0.5, else (1−β₁) − 1 with base g
  bool lerp_from_grad;
  T beta2, one_minus_beta2, eps, weight_decay, decay_factor;  // decay_factor = 1 − lr·λ (AdamW)
  bool l2, decoupled, amsgrad, maximize, scaled;
  T grad_scale;
};

namespace OX_ISA {
namespace {

// One tensor's range [b, e) in plain C++: the reference order of operations.
template <class T>
void adam_range_plain(const AdamTensor& t, int64_t b, int64_t e, const AdamConstants<T>& c, T step_size,
                      T inv_bc2_sqrt) {
  T* __restrict p = static_cast<T*>(t.param);
  T* __restrict gp = static_cast<T*>(t.grad);
  T* __restrict m = static_cast<T*>(t.exp_avg);
  T* __restrict v = static_cast<T*>(t.exp_avg_sq);
  T* __restrict vmax = static_cast<T*>(t.max_exp_avg_sq);
  for (int64_t i = b; i < e; ++i) {
    T g = gp[i], theta = p[i];
    if (c.scaled) {
      g = g / c.grad_scale;
      gp[i] = g;
    }
    if (c.maximize) g = -g;
    if (c.l2) g = g + theta * c.weight_decay;
    if (c.decoupled) theta = theta * c.decay_factor;
    const T diff = g - m[i];
    const T mi = (c.lerp_from_grad ? g : m[i]) + c.lerp_coeff * diff;
    const T vi = v[i] * c.beta2 + c.one_minus_beta2 * g * g;
    m[i] = mi;
    v[i] = vi;
    T vhat = vi;
    if (c.amsgrad) {
      vhat = vmax[i] > vi ? vmax[i] : vi;
      vmax[i] = vhat;
    }
    const T denom = std::sqrt(vhat) * inv_bc2_sqrt + c.eps;
    p[i] = theta - step_size * mi / denom;
  }
}

#if defined(__AVX512F__) || defined(__AVX2__)
using V = Vec<float>;
using vf = V::R;

// Loads/stores either a full vector or the first n lanes (tail).
struct Full {
  static vf ld(const float* p) { return V::loadu(p); }
  static void st(float* p, vf x) { V::storeu(p, x); }
};
struct Tail {
  V::M k;
  vf ld(const float* p) const { return V::loadz(k, p); }
  void st(float* p, vf x) const { V::store(p, k, x); }
};

// The element formula on one vector of lanes at offset i; IO is Full or Tail.
// Same operations, same order as adam_range_plain (the lerp as one fma, as torch's vectorised lerp).
template <bool kAmsgrad, class IO>
static inline void adam_vector(const IO& io, float* p, float* gp, float* m, float* v, float* vmax,
                               const AdamConstants<float>& c, vf step_size, vf inv_bc2_sqrt) {
  vf g = io.ld(gp), theta = io.ld(p), mi = io.ld(m), vi = io.ld(v);
  if (c.scaled) {
    g = V::div(g, V::set1(c.grad_scale));
    io.st(gp, g);
  }
  if (c.maximize) g = V::sub(V::set1(0.0f), g);
  if (c.l2) g = V::add(g, V::mul(theta, V::set1(c.weight_decay)));
  if (c.decoupled) theta = V::mul(theta, V::set1(c.decay_factor));
  const vf diff = V::sub(g, mi);
  mi = V::fma(V::set1(c.lerp_coeff), diff, c.lerp_from_grad ? g : mi);
  vi = V::add(V::mul(vi, V::set1(c.beta2)), V::mul(V::mul(V::set1(c.one_minus_beta2), g), g));
  io.st(m, mi);
  io.st(v, vi);
  vf vhat = vi;
  if (kAmsgrad) {
    vhat = V::max(io.ld(vmax), vi);
    io.st(vmax, vhat);
  }
  const vf denom = V::fma(V::sqrt(vhat), inv_bc2_sqrt, V::set1(c.eps));
  io.st(p, V::sub(theta, V::div(V::mul(step_size, mi), denom)));
}

template <bool kAmsgrad>
static void adam_range_vec(const AdamTensor& t, int64_t b, int64_t e, const AdamConstants<float>& c,
                           float step_size_s, float inv_bc2_sqrt_s) {
  float* p = static_cast<float*>(t.param);
  float* gp = static_cast<float*>(t.grad);
  float* m = static_cast<float*>(t.exp_avg);
  float* v = static_cast<float*>(t.exp_avg_sq);
  float* vmax = static_cast<float*>(t.max_exp_avg_sq);
  const vf step_size = V::set1(step_size_s), inv_bc2_sqrt = V::set1(inv_bc2_sqrt_s);
  int64_t i = b;
  const Full full;
  for (; i + V::L <= e; i += V::L)
    adam_vector<kAmsgrad>(full, p + i, gp + i, m + i, v + i, kAmsgrad ? vmax + i : nullptr, c, step_size,
                          inv_bc2_sqrt);
  if (i < e) {
    const Tail tail{V::mask(e - i)};
    adam_vector<kAmsgrad>(tail, p + i, gp + i, m + i, v + i, kAmsgrad ? vmax + i : nullptr, c, step_size,
                          inv_bc2_sqrt);
  }
}
#endif

template <class T>
static void adam_range(const AdamTensor& t, int64_t b, int64_t e, const AdamConstants<T>& c, T step_size,
                       T inv_bc2_sqrt) {
#if defined(__AVX512F__) || defined(__AVX2__)
  if constexpr (sizeof(T) == 4) {
    if (c.amsgrad) adam_range_vec<true>(t, b, e, c, step_size, inv_bc2_sqrt);
    else adam_range_vec<false>(t, b, e, c, step_size, inv_bc2_sqrt);
    return;
  }
#endif
  adam_range_plain(t, b, e, c, step_size, inv_bc2_sqrt);
}

template <class T>
static void adam_all(const AdamTensor* tensors, const int64_t* offsets, const double* step_size,
                     const double* inv_bc2_sqrt, int64_t count, const AdamConstants<T>& c) {
  const int64_t total = offsets[count];
  // Ranges of at least 16k elements (~450 kB of traffic) per thread.
  parallel_for(total, int64_t(1) << 14, [&](int64_t begin, int64_t end) {
    // The first tensor holding `begin`: offsets[k] <= begin < offsets[k + 1].
    int64_t lo = 0, hi = count - 1;
    while (lo < hi) {
      const int64_t mid = (lo + hi + 1) / 2;
      if (offsets[mid] <= begin) lo = mid;
      else hi = mid - 1;
    }
    for (int64_t k = lo; k < count && offsets[k] < end; ++k) {
      const int64_t b = begin > offsets[k] ? begin - offsets[k] : 0;
      const int64_t e = (end < offsets[k + 1] ? end : offsets[k + 1]) - offsets[k];
      if (b < e) adam_range<T>(tensors[k], b, e, c, static_cast<T>(step_size[k]), static_cast<T>(inv_bc2_sqrt[k]));
    }
  });
}

}  // namespace

void adam_kernel(const AdamTensor* tensors, const int64_t* offsets, const double* step_size,
                 const double* inv_bc2_sqrt, int64_t count, const AdamConstants<float>* c32,
                 const AdamConstants<double>* c64) {
  if (c64) adam_all<double>(tensors, offsets, step_size, inv_bc2_sqrt, count, *c64);
  else adam_all<float>(tensors, offsets, step_size, inv_bc2_sqrt, count, *c32);
}

}  // namespace OX_ISA
}  // namespace ox

#if OX_ISA_IS_scalar
#include <vector>

#include "core/checks.h"

OX_ISA_DECLARE(void, adam_kernel, (const AdamTensor*, const int64_t*, const double*, const double*, int64_t,
                                   const AdamConstants<float>*, const AdamConstants<double>*))

namespace ox {

namespace {

template <class T> AdamConstants<T> adam_constants(const AdamHyper& h, const double* grad_scale) {
  AdamConstants<T> c{};
  const double w = 1.0 - h.beta1;  // torch's lerp weight
  c.lerp_from_grad = !(w < 0.5);
  c.lerp_coeff = static_cast<T>(c.lerp_from_grad ? w - 1.0 : w);
  c.beta2 = static_cast<T>(h.beta2);
  c.one_minus_beta2 = static_cast<T>(1.0 - h.beta2);
  c.eps = static_cast<T>(h.eps);
  c.weight_decay = static_cast<T>(h.weight_decay);
  c.decay_factor = static_cast<T>(1.0 - h.lr * h.weight_decay);
  c.l2 = h.weight_decay != 0 && !h.decoupled;
  c.decoupled = h.weight_decay != 0 && h.decoupled;
  c.amsgrad = h.amsgrad;
  c.maximize = h.maximize;
  c.scaled = grad_scale != nullptr;
  c.grad_scale = static_cast<T>(grad_scale ? *grad_scale : 1.0);
  return c;
}

}  // namespace

void adam_check_hyper(const char* op, const AdamHyper& h) {
  if (!(h.lr >= 0)) value_error(op, ": argument 'lr' must be >= 0, got ", h.lr);
  if (!(h.eps >= 0)) value_error(op, ": argument 'eps' must be >= 0, got ", h.eps);
  if (!(h.beta1 >= 0 && h.beta1 < 1)) value_error(op, ": argument 'beta1' must be in [0, 1), got ", h.beta1);
  if (!(h.beta2 >= 0 && h.beta2 < 1)) value_error(op, ": argument 'beta2' must be in [0, 1), got ", h.beta2);
  if (!(h.weight_decay >= 0))
    value_error(op, ": argument 'weight_decay' must be >= 0, got ", h.weight_decay);
}

static void check_companion(const char* op, const char* list, int64_t i, const View& v, const View& param,
                            DType want, bool written = true) {
  const std::string arg = cat(list, "[", i, "]");
  const std::string ref = cat("params[", i, "]");
  check_same_device(op, arg.c_str(), v, ref.c_str(), param);
  check_dtype(op, arg.c_str(), v, {want});
  if (v.numel() != param.numel() || v.ndim != param.ndim)
    value_error(op, ": argument '", arg, "' must have the shape of '", ref, "' ", shape_str(param), ", got ",
                shape_str(v));
  for (int d = 0; d < v.ndim; ++d)
    if (v.shape[d] != param.shape[d])
      value_error(op, ": argument '", arg, "' must have the shape of '", ref, "' ", shape_str(param), ", got ",
                  shape_str(v));
  if (v.numel() > 0) check_same_layout(op, arg.c_str(), v, ref.c_str(), param);  // a flat walk pairs elements
  if (written) check_writable(op, arg.c_str(), v);
}

void adam_check(const char* op, const View* params, const View* grads, const View* exp_avgs,
                const View* exp_avg_sqs, const View* max_exp_avg_sqs, int64_t count, bool amsgrad,
                bool grads_written) {
  for (int64_t i = 0; i < count; ++i) {
    const View& p = params[i];
    const std::string arg = cat("params[", i, "]");
    if (i > 0) {
      check_same_device(op, arg.c_str(), p, "params[0]", params[0]);
      check_same_dtype(op, arg.c_str(), p, "params[0]", params[0]);
    }
    if (p.device == Device::cuda) check_dtype(op, arg.c_str(), p, {DType::f32, DType::bf16, DType::f16});
    else check_dtype(op, arg.c_str(), p, {DType::f32, DType::f64});  // also refuses other devices
    check_dense(op, arg.c_str(), p);  // element-wise: any dense layout runs as a flat array
    check_writable(op, arg.c_str(), p);
    check_numel_fits(op, arg.c_str(), p);
    const DType state = p.dtype == DType::f64 ? DType::f64 : DType::f32;
    check_companion(op, "grads", i, grads[i], p, p.dtype, grads_written);
    check_companion(op, "exp_avgs", i, exp_avgs[i], p, state);
    check_companion(op, "exp_avg_sqs", i, exp_avg_sqs[i], p, state);
    if (amsgrad) check_companion(op, "max_exp_avg_sqs", i, max_exp_avg_sqs[i], p, state);
  }
}

void adam_step_cpu(const AdamTensor* tensors, int64_t count, DType param_dtype, const AdamHyper& h,
                   const double* grad_scale) {
  if (count <= 0) return;
  // Host scalars in double, as torch: step_size = lr/(1−β₁ᵗ), and 1/√(1−β₂ᵗ): torch divides
  // √v̂ by √(1−β₂ᵗ); we multiply by the reciprocal (≤ 1 ulp apart) because the divider is
  // the bottleneck of cache-resident steps (sqrt, div and div would share it).
  std::vector<int64_t> offsets(count + 1, 0);
  std::vector<double> step_size(count), inv_bc2_sqrt(count);
  for (int64_t k = 0; k < count; ++k) {
    offsets[k + 1] = offsets[k] + tensors[k].numel;
    const double t = tensors[k].step;
    step_size[k] = h.lr / (1.0 - std::pow(h.beta1, t));
    inv_bc2_sqrt[k] = 1.0 / std::sqrt(1.0 - std::pow(h.beta2, t));
  }
  if (param_dtype == DType::f64) {
    const AdamConstants<double> c = adam_constants<double>(h, grad_scale);
    OX_ISA_DISPATCH(adam_kernel, tensors, offsets.data(), step_size.data(), inv_bc2_sqrt.data(), count, nullptr, &c);
  } else {
    const AdamConstants<float> c = adam_constants<float>(h, grad_scale);
    OX_ISA_DISPATCH(adam_kernel, tensors, offsets.data(), step_size.data(), inv_bc2_sqrt.data(), count, &c, nullptr);
  }
}

}  // namespace ox
#endif
