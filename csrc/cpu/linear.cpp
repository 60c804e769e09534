// Linear layer on the CPU: the products run in gemm_cpu (csrc/cpu/gemm.cpp) with the
// bias/activation epilogue and the act'(y) prologue; only db = Σ_rows dy ⊙ act'(y) is here.
#include "linear.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <utility>

#include "core/isa.h"

namespace ox {
namespace OX_ISA {

// db[n] = Σ_r dy[r, n] · g(y[r, n]), rows summed in order (deterministic), vectorised over n.
template <class T, Activation G>
static void bias_grad_kernel(const T* dy, const T* y, int64_t R, int64_t N, T* db) {
  for (int64_t n = 0; n < N; ++n) db[n] = T(0);
  for (int64_t r = 0; r < R; ++r) {
    const T* d = dy + r * N;
    const T* o = y ? y + r * N : nullptr;
    for (int64_t n = 0; n < N; ++n) {
      T v = d[n];
      if constexpr (G == Activation::relu) v = o[n] > T(0) ? v : T(0);
      else if constexpr (G == Activation::sigmoid) v *= o[n] * (T(1) - o[n]);
      db[n] += v;
    }
  }
}

template <class T> static void bias_grad_typed(const T* dy, const T* y, int act, int64_t R, int64_t N, T* db) {
  if (act == int(Activation::relu)) bias_grad_kernel<T, Activation::relu>(dy, y, R, N, db);
  else if (act == int(Activation::sigmoid)) bias_grad_kernel<T, Activation::sigmoid>(dy, y, R, N, db);
  else bias_grad_kernel<T, Activation::none>(dy, y, R, N, db);
}

void linear_bias_grad(const void* dy, const void* y, int act, int64_t R, int64_t N, void* db, bool f64) {
  if (f64) bias_grad_typed(static_cast<const double*>(dy), static_cast<const double*>(y), act, R, N,
                           static_cast<double*>(db));
  else bias_grad_typed(static_cast<const float*>(dy), static_cast<const float*>(y), act, R, N,
                       static_cast<float*>(db));
}

}  // namespace OX_ISA
}  // namespace ox

#if OX_ISA_IS_scalar
#include "core/checks.h"
#include "core/threading.h"

OX_ISA_DECLARE(void, linear_bias_grad, (const void*, const void*, int, int64_t, int64_t, void*, bool))

namespace ox {

Activation parse_activation(const char* op, const char* name) {
  if (!name || !std::strcmp(name, "none")) return Activation::none;
  if (!std::strcmp(name, "relu")) return Activation::relu;
  if (!std::strcmp(name, "sigmoid")) return Activation::sigmoid;
  value_error(op, ": argument 'activation' must be None, 'relu' or 'sigmoid', got '", name, "'");
}

// `v` has the shape of `ref` with its last dimension replaced by `last`.
static void check_rows_like(const char* op, const char* arg, const View& v, const char* ref_arg, const View& ref,
                            int64_t last) {
  bool ok = v.ndim == ref.ndim;
  for (int i = 0; ok && i + 1 < ref.ndim; ++i) ok = v.shape[i] == ref.shape[i];
  if (ok) ok = v.shape[v.ndim - 1] == last;
  if (!ok)
    value_error(op, ": argument '", arg, "' must have shape ", ref_arg, ".shape[:-1] + (", last, ",) where ",
                ref_arg, " has shape ", shape_str(ref), ", got ", shape_str(v));
}

static void check_weight(const char* op, const View& x, const View& w) {
  check_dtype(op, "x", x, {DType::f32, DType::f64});
  check_rank_between(op, "x", x, 1, kMaxRank);
  check_contiguous(op, "x", x);
  check_numel_fits(op, "x", x);
  check_like(op, "weight", w, "x", x);
  check_rank(op, "weight", w, 2);
  if (w.shape[1] != x.size(-1))
    value_error(op, ": argument 'weight' must have shape (out_features, in_features) with in_features = ",
                x.size(-1), " (the last dimension of x, shape ", shape_str(x), "), got ", shape_str(w));
}

void linear_check(const char* op, const View& x, const View& w, const View* bias, const View& y) {
  check_weight(op, x, w);
  const int64_t N = w.shape[0];
  if (bias) {
    check_like(op, "bias", *bias, "x", x);
    check_shape(op, "bias", *bias, {N});
  }
  check_like(op, "out", y, "x", x);
  check_writable(op, "out", y);
  check_rows_like(op, "out", y, "x", x, N);
}

void linear_backward_check(const char* op, const View& dy, const View& x, const View& w, const View* y,
                           Activation act, const View* dx, const View* dw, const View* db) {
  check_weight(op, x, w);
  const int64_t N = w.shape[0], K = w.shape[1];
  check_like(op, "grad_out", dy, "x", x);
  check_rows_like(op, "grad_out", dy, "x", x, N);
  if (act != Activation::none) {
    if (!y) value_error(op, ": argument 'out' (the forward output) is needed for activation derivatives");
    check_like(op, "out", *y, "x", x);
    check_rows_like(op, "out", *y, "x", x, N);
  }
  if (dx) {
    check_like(op, "grad_x", *dx, "x", x);
    check_writable(op, "grad_x", *dx);
    check_rows_like(op, "grad_x", *dx, "x", x, K);
  }
  if (dw) check_output(op, "grad_weight", *dw, x, {N, K});
  if (db) check_output(op, "grad_bias", *db, x, {N});
}

// R: the product of every dimension but the last.
static int64_t rows_of(const View& x) {
  int64_t r = 1;
  for (int i = 0; i + 1 < x.ndim; ++i) r *= x.shape[i];
  return r;
}

GemmArgs linear_forward_gemm(const View& x, const View& w, const View* bias, Activation act, const View& y) {
  GemmArgs g;
  const int64_t K = w.shape[1];
  g.M = rows_of(x); g.N = w.shape[0]; g.K = K;
  g.A = x.data; g.a_rs = K; g.a_cs = 1;                  // A = x (R, K)
  g.B = w.data; g.b_rs = w.strides[1]; g.b_cs = w.strides[0];  // B = Wᵀ: B[k, n] = W[n, k]
  g.C = y.data; g.c_rs = g.N;
  g.bias = bias ? bias->data : nullptr;
  g.act = act;
  return g;
}

GemmArgs linear_grad_x_gemm(const View& dy, const View& w, const View* y, Activation act, const View& dx) {
  GemmArgs g;
  const int64_t N = w.shape[0], K = w.shape[1];
  g.M = rows_of(dy); g.N = K; g.K = N;
  g.A = dy.data; g.a_rs = N; g.a_cs = 1;                 // A = dz (R, N)
  g.B = w.data; g.b_rs = w.strides[0]; g.b_cs = w.strides[1];  // B = W (N, K)
  g.C = dx.data; g.c_rs = K;
  if (act != Activation::none) { g.aux = y->data; g.aux_grad = act; }
  return g;
}

GemmArgs linear_grad_w_gemm(const View& dy, const View& x, const View* y, Activation act, const View& dw) {
  GemmArgs g;
  const int64_t N = dw.shape[0], K = dw.shape[1];
  g.M = N; g.N = K; g.K = rows_of(dy);
  g.A = dy.data; g.a_rs = 1; g.a_cs = N;                 // A = dzᵀ (N, R)
  g.B = x.data; g.b_rs = K; g.b_cs = 1;                  // B = x (R, K)
  g.C = dw.data; g.c_rs = K;
  if (act != Activation::none) { g.aux = y->data; g.aux_grad = act; }
  return g;
}

void linear_cpu(const View& x, const View& w, const View* bias, Activation act, const View& y) {
  gemm_cpu(linear_forward_gemm(x, w, bias, act, y), x.dtype);
}

// Columns [k0, k1) of a product whose B and C are row-major in their columns (unit column
// stride in C; B's column stride b_cs): C[:, k0:k1] = A' · B[:, k0:k1] is a product of its own,
// with each element summed exactly as in the whole one (gemm.h).
static GemmArgs column_slice(GemmArgs g, int64_t k0, int64_t k1, size_t element) {
  g.B = static_cast<const char*>(g.B) + k0 * g.b_cs * static_cast<int64_t>(element);
  g.C = static_cast<char*>(g.C) + k0 * static_cast<int64_t>(element);
  g.N = k1 - k0;
  g.one_thread = true;
  return g;
}

void linear_backward_cpu(const View& dy, const View& x, const View& w, const View* y, Activation act,
                         const View* dx, const View* dw, const View* db) {
  const int64_t N = w.shape[0], K = w.shape[1], R = rows_of(dy);
  const bool f64 = x.dtype == DType::f64;
  auto grad_b = [&] {
    OX_ISA_DISPATCH(linear_bias_grad, dy.data, act != Activation::none ? y->data : nullptr, int(act), R, N,
                    db->data, f64);
  };
  // dx = dz W (R×K) and dW = dzᵀ x (N×K) cost the same (R·N·K multiply-adds each) and share no
  // output. With T ≥ 2 threads one parallel_for runs both: ⌈T/2⌉ jobs compute column slices
  // of dx and the other ⌊T/2⌋ column slices of dW (the first of them db as well), each slice in
  // one thread. One wake-up for the whole backward, no product cut into slices thinner than it
  // needs (with two threads: dx whole in one, dW and db in the other). Every element is summed
  // in the same order as by the whole product, so the results do not depend on the thread count.
  const int64_t threads = num_threads();
  const bool split = dx && (dw || db) && threads >= 2 && double(R) * double(N) * double(K) >= kGemmThreadingWork;
  if (!split) {
    if (dx) gemm_cpu(linear_grad_x_gemm(dy, w, y, act, *dx), x.dtype);
    if (dw) gemm_cpu(linear_grad_w_gemm(dy, x, y, act, *dw), x.dtype);
    if (db) grad_b();
    return;
  }
  const GemmArgs gx = linear_grad_x_gemm(dy, w, y, act, *dx);
  const GemmArgs gw = dw ? linear_grad_w_gemm(dy, x, y, act, *dw) : GemmArgs{};
  int mr = 0, nr = 0;
  gemm_cpu_tile(&mr, &nr);
  const int64_t k_tiles = (K + nr - 1) / nr;  // slices are whole column tiles
  const int64_t w_jobs = dw ? std::min<int64_t>(threads / 2, k_tiles) : 1;  // without dW: db alone
  const int64_t x_jobs = std::min<int64_t>(threads - w_jobs, k_tiles);
  const size_t element = f64 ? sizeof(double) : sizeof(float);
  auto slice = [&](int64_t job, int64_t jobs) {  // columns of job `job` of `jobs`
    const int64_t k0 = std::min(K, k_tiles * job / jobs * nr), k1 = std::min(K, k_tiles * (job + 1) / jobs * nr);
    return std::make_pair(k0, k1);
  };
  parallel_for(x_jobs + w_jobs, 1, [&](int64_t j0, int64_t j1) {
    for (int64_t job = j0; job < j1; ++job) {
      if (job < x_jobs) {
        const auto [k0, k1] = slice(job, x_jobs);
        if (k0 < k1) gemm_cpu(column_slice(gx, k0, k1, element), x.dtype);
        continue;
      }
      const int64_t wj = job - x_jobs;
      if (wj == 0 && db) grad_b();
      if (!dw) continue;
      const auto [k0, k1] = slice(wj, w_jobs);
      if (k0 < k1) gemm_cpu(column_slice(gw, k0, k1, element), x.dtype);
    }
  });
}

}  // namespace ox
#endif
