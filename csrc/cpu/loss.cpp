#include "loss.h"

#include <cmath>
#include <cstdint>

#include "core/isa.h"
#include "core/threading.h"
#include "cpu/vexp.h"
#include "loss_targets.h"

namespace ox {
namespace OX_ISA {

static inline float exp1(float x) { return vexp(x); }
static inline double exp1(double x) { return std::exp(x); }
static inline void exp_inplace(float* v, int64_t n) { exp_array(v, v, n); }
static inline void exp_inplace(double* v, int64_t n) {
  for (int64_t k = 0; k < n; ++k) v[k] = std::exp(v[k]);
}

// Elements of scratch per chunk of rows (L1-sized).
constexpr int64_t kChunk = 1024;
// Rows of a fixed reduction block: the loss sums block partials in block order.
constexpr int64_t kBlockElems = 32768;

// For `rows` contiguous rows of C logits: e[r, j] = e^{x_rj − m_r} and lse_r = m_r + log Σ_j e[r, j].
// The e^{} pass runs over the whole chunk at once, so it vectorises even for C = 10.
template <class T> static void chunk_lse(const T* x, int64_t rows, int64_t C, T* e, T* lse) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * C;
    T m = xr[0];
    for (int64_t j = 1; j < C; ++j) m = xr[j] > m ? xr[j] : m;
    lse[r] = m;
    T* er = e + r * C;
    for (int64_t j = 0; j < C; ++j) er[j] = xr[j] - m;
  }
  exp_inplace(e, rows * C);
  for (int64_t r = 0; r < rows; ++r) {
    const T* er = e + r * C;
    T s = 0;
    for (int64_t j = 0; j < C; ++j) s += er[j];
    lse[r] += std::log(s);
  }
}

static inline int64_t chunk_rows(int64_t C) { return C >= kChunk ? 1 : kChunk / C; }

// Row targets in the general form of loss.h: ℓ_i = A_i lse_i − Σ_j b_ij x_ij and
// ∂ℓ_i/∂x_ij = A_i softmax_ij − b_ij, for class targets (index) or probabilities (probs),
// with class weights w (weight, or all ones).
template <class T> struct Targets {
  const int64_t* index;
  const T* probs;
  const T* weight;
  int64_t C, ignore;
  T keep, smooth;  // 1 − ε, ε/C
  T weight_sum;    // Σ_j w_j

  bool ignored(int64_t i) const { return index && index[i] == ignore; }
  T w(int64_t j) const { return weight ? weight[j] : T(1); }
  T b_prob(int64_t i, int64_t j) const { return probability_coefficient(w(j), probs[i * C + j], keep, smooth); }

  // A_i = Σ_j b_ij: exactly 1 for unweighted class targets ((1−ε) + C·ε/C), 0 for an ignored row.
  T mass(int64_t i) const {
    if (ignored(i)) return T(0);
    if (index) return weight ? class_target_mass(weight[index[i]], weight_sum, keep, smooth) : T(1);
    T a = 0;
    for (int64_t j = 0; j < C; ++j) a += b_prob(i, j);
    return a;
  }

  // ℓ_i from lse_i, the row x_i and a = mass(i) (0 for an ignored row).
  T loss(int64_t i, const T* x, T lse, T a) const {
    if (ignored(i)) return T(0);
    T l = a * lse;
    if (index) {
      const int64_t t = index[i];
      l -= keep * w(t) * x[t];
      if (smooth != 0) {
        T sx = 0;
        for (int64_t j = 0; j < C; ++j) sx += w(j) * x[j];
        l -= smooth * sx;
      }
      return l;
    }
    T bx = 0;
    for (int64_t j = 0; j < C; ++j) bx += b_prob(i, j) * x[j];
    return l - bx;
  }

  // Row i of the gradient scaled by s, from er = e^{x − m} (the chunk_lse scratch;
  // softmax = er / Σ er) and a = mass(i): d_j = s (A_i softmax_j − b_ij), 0 for an ignored row.
  void grad_row(int64_t i, const T* er, T s, T a, T* d) const {
    if (ignored(i)) {
      for (int64_t j = 0; j < C; ++j) d[j] = 0;
      return;
    }
    T sum = 0;
    for (int64_t j = 0; j < C; ++j) sum += er[j];
    const T p_scale = s * a / sum;
    if (index) {
      if (weight) {
        for (int64_t j = 0; j < C; ++j) d[j] = er[j] * p_scale - s * smooth * weight[j];
      } else {
        const T shift = s * smooth;
        for (int64_t j = 0; j < C; ++j) d[j] = er[j] * p_scale - shift;
      }
      d[index[i]] -= s * keep * w(index[i]);
      return;
    }
    for (int64_t j = 0; j < C; ++j) d[j] = er[j] * p_scale - s * b_prob(i, j);
  }

  // What 'mean' divides by: Σ w_{t_i} over the rows not ignored (their count without
  // weights), or N for probabilities.
  T mean_divisor(int64_t N) const {
    if (!index) return static_cast<T>(N);
    double total = 0;
    for (int64_t i = 0; i < N; ++i) total += class_target_divisor_share(index[i], ignore, C, weight);
    return static_cast<T>(total);
  }
};

// Per-row losses of rows [r0, r1) (0 where ignored); returns their sum in double.
// With dx, also the rows of ∂ℓ_i/∂x_i scaled by s (the gradient for an incoming grad of 1).
template <class T>
static double ce_rows(const T* x, const Targets<T>& tg, int64_t r0, int64_t r1, T* row_loss, T* dx = nullptr,
                      T s = T(1)) {
  const int64_t C = tg.C, cr = chunk_rows(C);
  T* e = new T[cr * C];
  T lse[kChunk];
  double total = 0;
  for (int64_t c0 = r0; c0 < r1; c0 += cr) {
    const int64_t rows = c0 + cr <= r1 ? cr : r1 - c0;
    chunk_lse(x + c0 * C, rows, C, e, lse);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = c0 + r;
      const T a = tg.mass(i);  // O(C) for probabilities: once for the loss and the gradient
      const T l = tg.loss(i, x + i * C, lse[r], a);
      if (row_loss) row_loss[i] = l;
      total += static_cast<double>(l);
      if (dx) tg.grad_row(i, e + r * C, s, a, dx + i * C);
    }
  }
  delete[] e;
  return total;
}

// The loss, and with dx its gradient for an incoming grad of 1 (s_i = 1 for none and sum,
// 1/divisor for mean): the same numbers the backward writes for g = 1, in the same pass.
template <class T> static void ce_forward(const T* x, const Targets<T>& tg, int64_t N, const Reduction reduction,
                                          T* out, T* dx) {
  const int64_t C = tg.C;
  const int64_t block = C >= kBlockElems ? 1 : kBlockElems / C;
  const T divisor = reduction == Reduction::mean ? tg.mean_divisor(N) : T(1);
  const T s = reduction == Reduction::mean ? T(1) / divisor : T(1);
  if (reduction == Reduction::none) {
    for_each_block(N, block, [&](int64_t, int64_t b, int64_t e) { ce_rows(x, tg, b, e, out, dx, s); });
    return;
  }
  const int64_t nblocks = (N + block - 1) / block;
  double one_partial;
  double* partial = nblocks <= 1 ? &one_partial : new double[nblocks];
  for_each_block(N, block, [&](int64_t k, int64_t b, int64_t e) {
    partial[k] = ce_rows(x, tg, b, e, static_cast<T*>(nullptr), dx, s);
  });
  double total = 0;
  for (int64_t k = 0; k < nblocks; ++k) total += partial[k];
  if (partial != &one_partial) delete[] partial;
  if (reduction == Reduction::mean) total /= static_cast<double>(divisor);
  out[0] = static_cast<T>(total);
}

template <class T>
static void ce_backward(const T* g, const T* x, const Targets<T>& tg, int64_t N, Reduction reduction, T* dx) {
  const int64_t C = tg.C;
  T scale_all = 0;
  if (reduction == Reduction::sum) scale_all = g[0];
  if (reduction == Reduction::mean) scale_all = g[0] / tg.mean_divisor(N);
  const int64_t cr = chunk_rows(C);
  const int64_t block = C >= kBlockElems ? 1 : kBlockElems / C;
  parallel_for(N, block, [&](int64_t b, int64_t end) {
    T* e = new T[cr * C];
    T lse[kChunk];
    for (int64_t c0 = b; c0 < end; c0 += cr) {
      const int64_t rows = c0 + cr <= end ? cr : end - c0;
      chunk_lse(x + c0 * C, rows, C, e, lse);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t i = c0 + r;
        tg.grad_row(i, e + r * C, reduction == Reduction::none ? g[i] : scale_all, tg.mass(i), dx + i * C);
      }
    }
    delete[] e;
  });
}

template <class T>
static Targets<T> targets(const void* index_or_probs, bool probs, const void* weight, int64_t C,
                          const CrossEntropy& ce) {
  const T* w = static_cast<const T*>(weight);
  T weight_sum = 0;
  for (int64_t j = 0; j < C; ++j) weight_sum += w ? w[j] : T(1);
  return Targets<T>{probs ? nullptr : static_cast<const int64_t*>(index_or_probs),
                    probs ? static_cast<const T*>(index_or_probs) : nullptr,
                    w,
                    C,
                    ce.ignore_index,
                    T(1 - ce.label_smoothing),
                    T(ce.label_smoothing / static_cast<double>(C)),
                    weight_sum};
}

void cross_entropy_fwd(const void* x, const void* target, bool probs, const void* weight, int64_t N, int64_t C,
                       const CrossEntropy& ce, void* out, void* dx, bool f64) {
  if (f64)
    ce_forward(static_cast<const double*>(x), targets<double>(target, probs, weight, C, ce), N, ce.reduction,
               static_cast<double*>(out), static_cast<double*>(dx));
  else
    ce_forward(static_cast<const float*>(x), targets<float>(target, probs, weight, C, ce), N, ce.reduction,
               static_cast<float*>(out), static_cast<float*>(dx));
}

void cross_entropy_bwd(const void* g, const void* x, const void* target, bool probs, const void* weight, int64_t N,
                       int64_t C, const CrossEntropy& ce, void* dx, bool f64) {
  if (f64)
    ce_backward(static_cast<const double*>(g), static_cast<const double*>(x),
                targets<double>(target, probs, weight, C, ce), N, ce.reduction, static_cast<double*>(dx));
  else
    ce_backward(static_cast<const float*>(g), static_cast<const float*>(x),
                targets<float>(target, probs, weight, C, ce), N, ce.reduction, static_cast<float*>(dx));
}

// ---- softmax / log_softmax over the middle axis of (outer, C, inner) ----

template <class T>
static void softmax_fwd_rows(const T* x, int64_t outer, int64_t C, int64_t inner, bool log, T* y) {
  if (inner == 1) {  // contiguous rows: the chunked, vectorised path
    const int64_t cr = chunk_rows(C);
    parallel_for(outer, kBlockElems / (C < kBlockElems ? C : kBlockElems), [&](int64_t b, int64_t end) {
      T* e = new T[cr * C];
      T lse[kChunk];
      for (int64_t c0 = b; c0 < end; c0 += cr) {
        const int64_t rows = c0 + cr <= end ? cr : end - c0;
        chunk_lse(x + c0 * C, rows, C, e, lse);
        for (int64_t r = 0; r < rows; ++r) {
          const T* xr = x + (c0 + r) * C;
          T* yr = y + (c0 + r) * C;
          if (log) {
            for (int64_t j = 0; j < C; ++j) yr[j] = xr[j] - lse[r];
          } else {
            const T* er = e + r * C;
            T s = 0;
            for (int64_t j = 0; j < C; ++j) s += er[j];
            const T inv = T(1) / s;
            for (int64_t j = 0; j < C; ++j) yr[j] = er[j] * inv;
          }
        }
      }
      delete[] e;
    });
    return;
  }
  // Strided rows (dim is not the last one): plain loops, one row at a time.
  parallel_for(outer * inner, 256, [&](int64_t b, int64_t end) {
    for (int64_t q = b; q < end; ++q) {
      const int64_t o = q / inner, in = q % inner;
      const T* xr = x + o * C * inner + in;
      T* yr = y + o * C * inner + in;
      T m = xr[0];
      for (int64_t j = 1; j < C; ++j) m = xr[j * inner] > m ? xr[j * inner] : m;
      T s = 0;
      for (int64_t j = 0; j < C; ++j) s += exp1(xr[j * inner] - m);
      const T lse = m + std::log(s);
      for (int64_t j = 0; j < C; ++j)
        yr[j * inner] = log ? xr[j * inner] - lse : exp1(xr[j * inner] - lse);
    }
  });
}

// softmax: dx = y (g − Σ g y);  log_softmax: dx = g − e^{y} Σ g.
template <class T>
static void softmax_bwd_rows(const T* g, const T* y, int64_t outer, int64_t C, int64_t inner, bool log, T* dx) {
  parallel_for(outer * inner, inner == 1 ? 1 + 4096 / (C ? C : 1) : 256, [&](int64_t b, int64_t end) {
    for (int64_t q = b; q < end; ++q) {
      const int64_t o = q / inner, in = q % inner;
      const int64_t base = o * C * inner + in;
      const T* gr = g + base;
      const T* yr = y + base;
      T* dr = dx + base;
      T dot = 0;
      if (log) {
        for (int64_t j = 0; j < C; ++j) dot += gr[j * inner];
        for (int64_t j = 0; j < C; ++j) dr[j * inner] = gr[j * inner] - exp1(yr[j * inner]) * dot;
      } else {
        for (int64_t j = 0; j < C; ++j) dot += gr[j * inner] * yr[j * inner];
        for (int64_t j = 0; j < C; ++j) dr[j * inner] = yr[j * inner] * (gr[j * inner] - dot);
      }
    }
  });
}

void softmax_fwd(const void* x, int64_t outer, int64_t C, int64_t inner, bool log, void* y, bool f64) {
  if (f64) softmax_fwd_rows(static_cast<const double*>(x), outer, C, inner, log, static_cast<double*>(y));
  else softmax_fwd_rows(static_cast<const float*>(x), outer, C, inner, log, static_cast<float*>(y));
}

void softmax_bwd(const void* g, const void* y, int64_t outer, int64_t C, int64_t inner, bool log, void* dx,
                 bool f64) {
  if (f64)
    softmax_bwd_rows(static_cast<const double*>(g), static_cast<const double*>(y), outer, C, inner, log,
                     static_cast<double*>(dx));
  else
    softmax_bwd_rows(static_cast<const float*>(g), static_cast<const float*>(y), outer, C, inner, log,
                     static_cast<float*>(dx));
}

}  // namespace OX_ISA
}  // namespace ox

#if OX_ISA_IS_scalar
#include "core/checks.h"

OX_ISA_DECLARE(void, cross_entropy_fwd,
               (const void*, const void*, bool, const void*, int64_t, int64_t, const CrossEntropy&, void*, void*, bool))
OX_ISA_DECLARE(void, cross_entropy_bwd, (const void*, const void*, const void*, bool, const void*, int64_t, int64_t,
                                         const CrossEntropy&, void*, bool))
OX_ISA_DECLARE(void, softmax_fwd, (const void*, int64_t, int64_t, int64_t, bool, void*, bool))
OX_ISA_DECLARE(void, softmax_bwd, (const void*, const void*, int64_t, int64_t, int64_t, bool, void*, bool))

namespace ox {

bool is_probability_target(const View& target) {
  return target.dtype == DType::f32 || target.dtype == DType::f64 || target.dtype == DType::f16 ||
         target.dtype == DType::bf16;
}

void cross_entropy_check(const char* op, const View& logits, const View& target, const CrossEntropy& ce) {
  check_dtype(op, "logits", logits, {DType::f32, DType::f64});
  check_rank_between(op, "logits", logits, 1, 2);
  check_contiguous(op, "logits", logits);
  check_numel_fits(op, "logits", logits);
  check_same_device(op, "target", target, "logits", logits);
  const bool probs = is_probability_target(target);
  const bool index_shape =
      logits.ndim == 2 ? target.ndim == 1 && target.shape[0] == logits.shape[0] : target.ndim == 0;
  if (probs && index_shape)  // meant as class indices
    type_error(op, ": argument 'target' must be int64 for class indices, got ", dtype_of(target),
               " of shape ", shape_str(target), " (a floating target is read as class probabilities, of the "
               "logits' shape ", shape_str(logits), ")");
  if (probs) {  // class probabilities, one row per row of logits
    check_same_dtype(op, "target", target, "logits", logits);
    check_same_shape(op, "target", target, logits);
    check_contiguous(op, "target", target);
  } else {
    check_dtype(op, "target", target, {DType::i64});
    check_contiguous(op, "target", target);
    if (logits.ndim == 2) check_shape(op, "target", target, {logits.shape[0]});
    else check_shape(op, "target", target, {});
  }
  const int64_t C = logits.size(-1);
  if (C < 1) value_error(op, ": argument 'logits' must have at least one class, got shape ", shape_str(logits));
  if (ce.weight) {
    check_like(op, "weight", *ce.weight, "logits", logits);
    check_shape(op, "weight", *ce.weight, {C});
  }
  if (!(ce.label_smoothing >= 0.0 && ce.label_smoothing <= 1.0))
    value_error(op, ": argument 'label_smoothing' must be in [0, 1], got ", ce.label_smoothing);
  const int r = static_cast<int>(ce.reduction);
  if (r < 0 || r > 2) value_error(op, ": argument 'reduction' must be 'none', 'mean' or 'sum'");
  if (!probs && target.device == Device::cpu) {
    const int64_t* t = target.ptr<int64_t>();
    const int64_t n = target.numel();
    for (int64_t i = 0; i < n; ++i)
      if ((t[i] < 0 || t[i] >= C) && t[i] != ce.ignore_index)
        value_error(op, ": argument 'target' holds class ", t[i], " at position ", i, ", outside [0, ", C,
                    ") and not ignore_index (", ce.ignore_index, ")");
  }
}

void cross_entropy_check_out(const char* op, const View& out, const View& logits, const CrossEntropy& ce) {
  if (ce.reduction == Reduction::none && logits.ndim == 2) check_output(op, "out", out, logits, {logits.shape[0]});
  else check_output(op, "out", out, logits, {});
}

void cross_entropy_forward_cpu(const View& logits, const View& target, const CrossEntropy& ce, const View& out,
                               const View* dx) {
  const int64_t N = logits.ndim == 2 ? logits.shape[0] : 1, C = logits.size(-1);
  OX_ISA_DISPATCH(cross_entropy_fwd, logits.data, static_cast<const void*>(target.data), is_probability_target(target),
                  ce.weight ? static_cast<const void*>(ce.weight->data) : nullptr, N, C, ce, out.data,
                  dx ? dx->data : nullptr, logits.dtype == DType::f64);
}

void cross_entropy_backward_cpu(const View& grad, const View& logits, const View& target, const CrossEntropy& ce,
                                const View& dx) {
  const int64_t N = logits.ndim == 2 ? logits.shape[0] : 1, C = logits.size(-1);
  OX_ISA_DISPATCH(cross_entropy_bwd, static_cast<const void*>(grad.data), static_cast<const void*>(logits.data),
                  static_cast<const void*>(target.data), is_probability_target(target),
                  ce.weight ? static_cast<const void*>(ce.weight->data) : nullptr, N, C, ce, dx.data,
                  logits.dtype == DType::f64);
}

void softmax_check(const char* op, const View& x, int dim, const View& out) {
  check_dtype(op, "x", x, {DType::f32, DType::f64});
  check_contiguous(op, "x", x);
  check_numel_fits(op, "x", x);
  if (x.ndim == 0) value_error(op, ": argument 'x' must have at least one dimension, got a scalar");
  if (dim < 0 || dim >= x.ndim)
    value_error(op, ": argument 'dim' is out of range for 'x' with ", x.ndim, " dimensions");
  check_same_device(op, "out", out, "x", x);
  check_same_dtype(op, "out", out, "x", x);
  check_same_shape(op, "out", out, x);
  check_contiguous(op, "out", out);
  check_writable(op, "out", out);
}

static void split_dims(const View& x, int dim, int64_t* outer, int64_t* C, int64_t* inner) {
  *outer = 1;
  *inner = 1;
  for (int i = 0; i < dim; ++i) *outer *= x.shape[i];
  for (int i = dim + 1; i < x.ndim; ++i) *inner *= x.shape[i];
  *C = x.shape[dim];
}

void softmax_forward_cpu(const View& x, int dim, bool log, const View& y) {
  int64_t outer, C, inner;
  split_dims(x, dim, &outer, &C, &inner);
  if (outer * C * inner == 0) return;
  OX_ISA_DISPATCH(softmax_fwd, x.data, outer, C, inner, log, y.data, x.dtype == DType::f64);
}

void softmax_backward_cpu(const View& g, const View& y, int dim, bool log, const View& dx) {
  int64_t outer, C, inner;
  split_dims(g, dim, &outer, &C, &inner);
  if (outer * C * inner == 0) return;
  OX_ISA_DISPATCH(softmax_bwd, g.data, y.data, outer, C, inner, log, dx.data, g.dtype == DType::f64);
}

}  // namespace ox
#endif
