// fit on CUDA (see linreg.h): one persistent block per trajectory runs every step (no launch per
// step). A fit long enough to pay for it (linreg_quadratic_pays, as on the CPU) takes f, and for gd
// ∇f, over all rows from the quadratic form built on the device (linreg_form.cu): gd then runs
// fit_form_warp_kernel (d+1 ≤ 32) or fit_form_block_kernel, with no pass over X at all; the other
// methods, and fits too short for the form, run fit_small_kernel (d+1 ≤ 4) or fit_generic_kernel,
// which pass over the rows each step draws (and over all rows for f when there is no form).
#include <cstdint>
#include <stdint.h>

// core/cuda_check.h names uintptr_t unqualified; the device's toolchain declares only std::uintptr_t.
namespace ox { using std::uintptr_t; }

#include "core/checks.h"
#include "core/cuda_check.h"
#include "core/errors.h"
#include "cuda/device_math.cuh"
#include "cuda/linreg_cuda.cuh"
#include "linreg.h"
#include "linreg_quadratic.h"
#include "linreg_sample.h"

namespace ox {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int64_t kMaxFormDim = 512;  // linreg_quadratic_pays

// Sums v[0..K) over the block (fixed shuffle tree, then warps in order); every thread gets the result.
template <class T, int K> __device__ void block_sum(T (&v)[K], T* red /* shared, kWarps*K + K */) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int k = 0; k < K; ++k) v[k] = warp_sum(v[k]);
  if (lane == 0)
#pragma unroll
    for (int k = 0; k < K; ++k) red[warp * K + k] = v[k];
  __syncthreads();
  if (threadIdx.x < K) {
    T s = 0;
    for (int w = 0; w < kWarps; ++w) s += red[w * K + threadIdx.x];
    red[kWarps * K + threadIdx.x] = s;
  }
  __syncthreads();
#pragma unroll
  for (int k = 0; k < K; ++k) v[k] = red[kWarps * K + k];
  __syncthreads();  // red may be reused right away
}

// linreg_sample_rows (linreg_sample.h) by warp 0 of the block, the same rows: lane ℓ takes the
// draws k ≡ ℓ (mod 32), 32 at a time. Their candidates come at once; a lane checks its own against
// the final rows of the earlier rounds (in out), then the round's draws settle in order, draw i's
// "already drawn?" a ballot over the lanes below i. out is visible to the block after its next barrier.
__device__ void sample_rows_warp(uint64_t seed, uint64_t step, int64_t n, int64_t count, int64_t* out) {
  const int lane = threadIdx.x & 31;
  for (int64_t k0 = 0; k0 < count; k0 += 32) {
    const int64_t k = k0 + lane;
    const bool mine = k < count;
    const int64_t t = mine ? linreg_sample_candidate(seed, step, n, count, k) : -1;
    bool seen = false;
    for (int64_t q = 0; q < k0 && mine; ++q) seen |= out[q] == t;
    int64_t row = t;
    const int last = count - k0 < 32 ? static_cast<int>(count - k0) : 32;
    for (int i = 0; i < last; ++i) {
      const int64_t ti = __shfl_sync(kFullMask, t, i);
      const bool earlier_has = __ballot_sync(kFullMask, lane < i && row == ti) != 0;
      if (lane == i && (seen || earlier_has)) row = n - count + k;  // j, which no draw before k can be
    }
    if (mine) out[k] = row;
    __syncwarp();  // the next round reads these
  }
}

// ---- the quadratic form (cuda/linreg_cuda.cuh), as linreg_quadratic_eval on the CPU ----------------
//   e = θ − θ̂,   ∇f(θ) = ĝ + Ae,   f(θ) = f̂ + ĝᵀe + ½eᵀAe (clamped at 0)

struct FormShared {
  double e[kMaxFormDim];
  double red[kWarps][2];
};

// Block-wide: returns f(θ) to thread 0 (0 to the others) and, unless next is null, writes
// θ_next = θ − rate·∇f(θ), visible to the whole block on return. Warp w computes the rows
// r ≡ w (mod kWarps) of Ae with its lanes across the columns.
template <class T>
__device__ double form_step(const QuadraticFormDevice& q, const T* th, T* next, T rate, FormShared& sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t dim = q.dim;
  for (int64_t c = threadIdx.x; c < dim; c += kThreads) sh.e[c] = static_cast<double>(th[c]) - q.theta_ref[c];
  __syncthreads();
  double linear = 0, quadratic = 0;  // lane 0's share
  for (int64_t r = warp; r < dim; r += kWarps) {
    const double* Ar = q.A + r * dim;
    double ae = 0;
    for (int64_t c = lane; c < dim; c += 32) ae += Ar[c] * sh.e[c];
    ae = warp_sum(ae);
    if (lane == 0) {
      linear += q.g_ref[r] * sh.e[r];
      quadratic += sh.e[r] * ae;
      if (next) next[r] = th[r] - rate * static_cast<T>(q.g_ref[r] + ae);
    }
  }
  if (lane == 0) {
    sh.red[warp][0] = linear;
    sh.red[warp][1] = quadratic;
  }
  __syncthreads();
  if (threadIdx.x != 0) return 0;
  double l = 0, s = 0;
  for (int w = 0; w < kWarps; ++w) {
    l += sh.red[w][0];
    s += sh.red[w][1];
  }
  const double f = *q.f_ref + l + 0.5 * s;
  return f > 0 ? f : 0;
}

// gd, d+1 ≤ 32: one warp per trajectory; lane r owns θ[r] and row r of A (in shared memory), and
// e is broadcast by shuffles, so a step needs no barrier. Zeroes the Adam moments in state, as
// every CPU fit does.
template <class T>
__global__ void __launch_bounds__(32) fit_form_warp_kernel(QuadraticFormDevice q, int64_t steps, const double* lr,
                                                            T* thetas, T* losses, T* state) {
  constexpr int kPitch = 33;  // row r of A at A_s[r·33]: the lanes' reads of column c hit 32 banks
  __shared__ double A_s[32 * kPitch];
  const int lane = threadIdx.x;
  const int64_t b = blockIdx.x, dim = q.dim;
  for (int c = 0; c < 32; ++c) A_s[lane * kPitch + c] = lane < dim && c < dim ? q.A[lane * dim + c] : 0.0;
  __syncwarp();  // (each lane reads only its own row; rows of lanes ≥ dim are 0)
  const bool owner = lane < dim;
  const double ref = owner ? q.theta_ref[lane] : 0.0, g_ref = owner ? q.g_ref[lane] : 0.0, f_ref = *q.f_ref;
  const T rate = static_cast<T>(lr[b]);
  T* traj = thetas + b * (steps + 1) * dim;
  T* loss_out = losses + b * (steps + 1);
  if (owner) state[b * 2 * dim + lane] = state[b * 2 * dim + dim + lane] = T(0);
  T th = owner ? traj[lane] : T(0);
  for (int64_t t = 0;; ++t) {
    const double e = owner ? static_cast<double>(th) - ref : 0.0;
    double ae = 0;
    for (int c = 0; c < dim; ++c) ae += A_s[lane * kPitch + c] * __shfl_sync(kFullMask, e, c);
    const double linear = warp_sum(g_ref * e), quadratic = warp_sum(e * ae);
    if (lane == 0) {
      const double f = f_ref + linear + 0.5 * quadratic;
      loss_out[t] = static_cast<T>(f > 0 ? f : 0);
    }
    if (t == steps) break;
    th = th - rate * static_cast<T>(g_ref + ae);
    if (owner) traj[(t + 1) * dim + lane] = th;
  }
}

// gd, 32 < d+1 ≤ 512: one block per trajectory, form_step each step.
template <class T>
__global__ void __launch_bounds__(kThreads) fit_form_block_kernel(QuadraticFormDevice q, int64_t steps,
                                                                   const double* lr, T* thetas, T* losses, T* state) {
  __shared__ FormShared sh;
  const int64_t b = blockIdx.x, dim = q.dim;
  const T rate = static_cast<T>(lr[b]);
  T* traj = thetas + b * (steps + 1) * dim;
  T* loss_out = losses + b * (steps + 1);
  for (int64_t c = threadIdx.x; c < 2 * dim; c += kThreads) state[b * 2 * dim + c] = T(0);
  for (int64_t t = 0; t <= steps; ++t) {
    const double f = form_step(q, traj + t * dim, t < steps ? traj + (t + 1) * dim : nullptr, rate, sh);
    if (threadIdx.x == 0) loss_out[t] = static_cast<T>(f);
  }
}

// ---- fit by passes over the rows ---------------------------------------------------------------------

struct FitKernelArgs {
  int64_t n, d, steps, batch;
  int method;
  double beta1, beta2, eps;
  const double* lr;
  const int64_t* seed;
  int64_t* indices;  // (B, steps, batch)
  QuadraticFormDevice form;  // f over all rows from it; passes when form.A is null
  int64_t resid_stride;      // fit_generic_kernel's residuals per trajectory: batch with a form, else n
};

// θ_{t+1}[c] from θ_t[c] and the gradient entry g (Adam moments in state), see linreg.h / cpu/linreg.cpp.
template <class T>
__device__ void update_entry(const FitKernelArgs& a, int64_t t, T lr, const T* th, T* next, T* mom, T* vel, int64_t c,
                             T g) {
  if (a.method == static_cast<int>(FitMethod::adam)) {
    const T b1 = static_cast<T>(a.beta1), b2 = static_cast<T>(a.beta2), e = static_cast<T>(a.eps);
    const T bc1 = static_cast<T>(1.0 - pow(a.beta1, static_cast<double>(t + 1)));
    const T bc2 = static_cast<T>(1.0 - pow(a.beta2, static_cast<double>(t + 1)));
    mom[c] = b1 * mom[c] + (T(1) - b1) * g;
    vel[c] = b2 * vel[c] + (T(1) - b2) * g * g;
    const T mhat = mom[c] / bc1, vhat = vel[c] / bc2;
    next[c] = th[c] - lr * mhat / (sqrt(vhat) + e);
  } else {
    next[c] = th[c] - lr * g;
  }
}

// Small d (D = d+1 ≤ 4): each thread keeps its own D gradient sums and the loss in registers.
template <class T, int D>
__device__ void small_sums(const T* X, const T* y, const T* th, const int64_t* idx, int64_t count, T (&v)[D + 1],
                           T* red) {
#pragma unroll
  for (int k = 0; k <= D; ++k) v[k] = 0;
  for (int64_t j = threadIdx.x; j < count; j += kThreads) {
    const int64_t i = idx ? idx[j] : j;
    const T* x = X + i * (D - 1);
    T r = th[D - 1] - y[i];
#pragma unroll
    for (int c = 0; c < D - 1; ++c) r += th[c] * x[c];
#pragma unroll
    for (int c = 0; c < D - 1; ++c) v[c] += r * x[c];
    v[D - 1] += r;
    v[D] += r * r;
  }
  block_sum<T, D + 1>(v, red);
}

// gd's gradient comes from the pass over all rows: with a form, gd runs fit_form_*_kernel instead.
template <class T, int D>
__global__ void fit_small_kernel(const T* __restrict__ X, const T* __restrict__ y, FitKernelArgs a, T* thetas,
                                 T* losses, T* state) {
  __shared__ T red[kWarps * (D + 1) + D + 1];
  __shared__ FormShared sh;
  const int64_t b = blockIdx.x, n = a.n;
  T* traj = thetas + b * (a.steps + 1) * D;
  T* mom = state + b * 2 * D;
  T* vel = mom + D;
  T* loss_out = losses + b * (a.steps + 1);
  const T lr = static_cast<T>(a.lr[b]);
  const uint64_t seed = static_cast<uint64_t>(a.seed[b]);
  if (threadIdx.x < D) mom[threadIdx.x] = vel[threadIdx.x] = T(0);
  T v[D + 1];
  const auto all_rows_loss = [&](const T* th, int64_t t) {  // and v over all rows when passing
    if (a.form.A) {
      const double f = form_step<T>(a.form, th, nullptr, T(0), sh);
      if (threadIdx.x == 0) loss_out[t] = static_cast<T>(f);
    } else {
      small_sums<T, D>(X, y, th, nullptr, n, v, red);
      if (threadIdx.x == 0) loss_out[t] = v[D] / static_cast<T>(2 * n);
    }
  };
  for (int64_t t = 0; t < a.steps; ++t) {
    const T* th = traj + t * D;
    T* next = traj + (t + 1) * D;
    all_rows_loss(th, t);
    int64_t count = n;
    if (a.method != static_cast<int>(FitMethod::gd)) {
      int64_t* idx = a.indices + (b * a.steps + t) * a.batch;
      if (threadIdx.x < 32) sample_rows_warp(seed, static_cast<uint64_t>(t), n, a.batch, idx);
      __syncthreads();
      small_sums<T, D>(X, y, th, idx, a.batch, v, red);
      count = a.batch;
    }
    if (threadIdx.x < D) update_entry(a, t, lr, th, next, mom, vel, threadIdx.x, v[threadIdx.x] / static_cast<T>(count));
    __syncthreads();
  }
  all_rows_loss(traj + a.steps * D, a.steps);
}

// Any d: residuals of the step's rows go to scratch, then each warp sums columns
// (lanes over rows, fixed shuffle tree) and updates those entries of θ. As fit_small_kernel, gd
// comes here only without a form.
template <class T>
__global__ void fit_generic_kernel(const T* __restrict__ X, const T* __restrict__ y, FitKernelArgs a, T* thetas,
                                   T* losses, T* state, T* scratch /* (B, resid_stride) */) {
  __shared__ T red[kWarps + 1];
  __shared__ FormShared sh;
  const int64_t b = blockIdx.x, n = a.n, d = a.d, stride = d + 1;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  T* traj = thetas + b * (a.steps + 1) * stride;
  T* mom = state + b * 2 * stride;
  T* vel = mom + stride;
  T* resid = scratch + b * a.resid_stride;
  T* loss_out = losses + b * (a.steps + 1);
  const T lr = static_cast<T>(a.lr[b]);
  const uint64_t seed = static_cast<uint64_t>(a.seed[b]);
  for (int64_t c = threadIdx.x; c < stride; c += kThreads) mom[c] = vel[c] = T(0);
  __syncthreads();
  // Writes r_j for the rows j of idx (or all rows) into resid and returns Σ r² (every thread).
  auto residuals = [&](const T* th, const int64_t* idx, int64_t count) {
    T v[1] = {0};
    for (int64_t j = threadIdx.x; j < count; j += kThreads) {
      const int64_t i = idx ? idx[j] : j;
      const T* x = X + i * d;
      T r = th[d] - y[i];
      for (int64_t c = 0; c < d; ++c) r += th[c] * x[c];
      resid[j] = r;
      v[0] += r * r;
    }
    block_sum<T, 1>(v, red);  // its __syncthreads also publish resid
    return v[0];
  };
  for (int64_t t = 0; t <= a.steps; ++t) {
    const T* th = traj + t * stride;
    if (a.form.A) {
      const double f = form_step<T>(a.form, th, nullptr, T(0), sh);
      if (threadIdx.x == 0) loss_out[t] = static_cast<T>(f);
    } else {
      const T loss_sum = residuals(th, nullptr, n);
      if (threadIdx.x == 0) loss_out[t] = loss_sum / static_cast<T>(2 * n);
    }
    if (t == a.steps) break;
    const int64_t* idx = nullptr;
    int64_t count = n;
    if (a.method != static_cast<int>(FitMethod::gd)) {
      int64_t* sample = a.indices + (b * a.steps + t) * a.batch;
      if (threadIdx.x < 32) sample_rows_warp(seed, static_cast<uint64_t>(t), n, a.batch, sample);
      __syncthreads();
      residuals(th, sample, a.batch);
      idx = sample;
      count = a.batch;
    }
    T* next = traj + (t + 1) * stride;
    for (int64_t c = warp; c < stride; c += kWarps) {
      T acc = 0;
      for (int64_t j = lane; j < count; j += 32) {
        const int64_t i = idx ? idx[j] : j;
        acc += resid[j] * (c < d ? X[i * d + c] : T(1));
      }
      acc = warp_sum(acc);
      if (lane == 0) update_entry(a, t, lr, th, next, mom, vel, c, acc / static_cast<T>(count));
    }
    __syncthreads();
  }
}

// The workspace: the form (when it pays), then fit_generic_kernel's residuals, resid_stride per
// trajectory (0 when that kernel does not run).
struct FitWorkspace {
  bool form;
  int64_t form_numel, resid_stride;
  int64_t numel(int64_t B) const { return form_numel + B * resid_stride; }
};

FitWorkspace fit_workspace(int64_t n, int64_t d, int64_t B, int64_t steps, FitMethod method, int64_t batch) {
  FitWorkspace w;
  w.form = linreg_quadratic_pays(n, d, steps);
  w.form_numel = w.form ? quadratic_form_workspace_numel(n, d) : 0;
  const bool generic = d + 1 > 4 && !(w.form && method == FitMethod::gd);
  // One residual per float64 slot: the step's rows with a form, else all n for f (a batch above n
  // is refused by linreg_fit_check, with its own message).
  w.resid_stride = generic ? (w.form && batch < n ? batch : n) : 0;
  return w;
}

template <class T> void fit_launch(const FitArgs& f, const FitParams& p, cudaStream_t stream) {
  const int64_t B = f.theta0.shape[0], n = f.X.shape[0], d = f.X.shape[1], stride = d + 1;
  if (B == 0) return;
  const FitWorkspace w = fit_workspace(n, d, B, p.steps, p.method, p.batch);
  if (w.numel(B) > 0) {
    if (!f.workspace.data)
      value_error("linreg fit: argument 'workspace' is required on CUDA for this fit (", w.numel(B),
                  " float64 entries)");
    check_scratch("linreg fit", "workspace", f.workspace, "X", f.X, w.numel(B), DType::f64);
  }
  // θ_0 into the trajectory (row 0 of each (steps+1, d+1) slice).
  cuda_check(cudaMemcpy2DAsync(f.thetas.data, sizeof(T) * (p.steps + 1) * stride, f.theta0.data, sizeof(T) * stride,
                               sizeof(T) * stride, B, cudaMemcpyDeviceToDevice, stream),
             "linreg fit: copy theta0");
  const unsigned grid = static_cast<unsigned>(B);
  const T* X = f.X.ptr<T>();
  const T* y = f.y.ptr<T>();
  T* th = f.thetas.ptr<T>();
  T* ls = f.losses.ptr<T>();
  T* st = f.state.ptr<T>();
  const double* lr = f.lr.ptr<double>();
  QuadraticFormDevice form{};
  if (w.form) form = quadratic_form_build_cuda<T>(f.X, f.y, f.workspace, stream);
  if (w.form && p.method == FitMethod::gd) {
    if (stride <= 32) fit_form_warp_kernel<T><<<grid, 32, 0, stream>>>(form, p.steps, lr, th, ls, st);
    else fit_form_block_kernel<T><<<grid, kThreads, 0, stream>>>(form, p.steps, lr, th, ls, st);
    cuda_check_launch("linreg fit");
    return;
  }
  FitKernelArgs a{n, d, p.steps, p.batch, static_cast<int>(p.method), p.beta1, p.beta2, p.eps,
                  lr, f.seed.ptr<int64_t>(), f.indices.ptr<int64_t>(), form, w.resid_stride};
  switch (stride) {
    case 1: fit_small_kernel<T, 1><<<grid, kThreads, 0, stream>>>(X, y, a, th, ls, st); break;
    case 2: fit_small_kernel<T, 2><<<grid, kThreads, 0, stream>>>(X, y, a, th, ls, st); break;
    case 3: fit_small_kernel<T, 3><<<grid, kThreads, 0, stream>>>(X, y, a, th, ls, st); break;
    case 4: fit_small_kernel<T, 4><<<grid, kThreads, 0, stream>>>(X, y, a, th, ls, st); break;
    default:
      fit_generic_kernel<T><<<grid, kThreads, 0, stream>>>(
          X, y, a, th, ls, st, reinterpret_cast<T*>(f.workspace.ptr<double>() + w.form_numel));
  }
  cuda_check_launch("linreg fit");
}

}  // namespace

int64_t linreg_fit_cuda_workspace_numel(int64_t n, int64_t d, int64_t B, int64_t steps, FitMethod method,
                                        int64_t batch) {
  return fit_workspace(n, d, B, steps, method, batch).numel(B);
}

void linreg_fit_cuda(const FitArgs& a, const FitParams& p, uintptr_t stream) {
  if (a.X.dtype == DType::f64) fit_launch<double>(a, p, as_stream(stream));
  else fit_launch<float>(a, p, as_stream(stream));
}

}  // namespace ox
