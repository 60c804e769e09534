// The quadratic form of f (linreg_quadratic.h) built on the device, for long fits (linreg_fit.cu).
//
// A = (1/n) Σᵢ x̃ᵢx̃ᵢᵀ in float64: the rows are cut into chunks, and block (tile pair, chunk) adds
// up one 32 × 32 tile of A on or above the diagonal (A is symmetric) over its chunk, staging 32
// rows of its two column ranges in shared memory at a time; a second kernel adds the chunks in
// chunk order (deterministic) and mirrors the tiles below the diagonal.
// θ̂, ĝ, f̂: the CPU's Newton steps from 0 (cpu/linreg_quadratic.cpp), with its passes by
// linreg_evaluate_cuda, the Cholesky factor by one block (a column at a time, its rows in
// parallel) and each solve by one thread. Nothing waits on the host.
#include <cmath>
#include <cstdint>
#include <stdint.h>

// core/cuda_check.h names uintptr_t unqualified; the device's toolchain declares only std::uintptr_t.
namespace ox { using std::uintptr_t; }

#include "core/cuda_check.h"
#include "cuda/linreg_cuda.cuh"
#include "linreg.h"
#include "linreg_quadratic.h"

namespace ox {
namespace {

constexpr int kTile = 32;          // A in kTile × kTile tiles
constexpr int kStagedRows = 32;    // rows of X̃ in shared memory per pass
constexpr int kGramThreads = 256;  // 16 × 16 threads, each 2 × 2 entries of the tile
constexpr int64_t kTargetBlocks = 1024;
constexpr int64_t kMinChunkRows = 256;
constexpr int kFactorThreads = 512;

struct GramGrid {
  int64_t tiles, pairs, chunks, chunk_rows;
};

GramGrid gram_grid(int64_t n, int64_t dim) {
  GramGrid g;
  g.tiles = (dim + kTile - 1) / kTile;
  g.pairs = g.tiles * (g.tiles + 1) / 2;
  const int64_t by_rows = (n + kMinChunkRows - 1) / kMinChunkRows;
  const int64_t by_blocks = kTargetBlocks / g.pairs > 1 ? kTargetBlocks / g.pairs : 1;
  const int64_t chunks = by_rows < by_blocks ? by_rows : by_blocks;
  g.chunk_rows = (n + chunks - 1) / chunks;
  g.chunks = (n + g.chunk_rows - 1) / g.chunk_rows;  // none empty
  return g;
}

// Workspace offsets, in float64 entries.
struct FormLayout {
  int64_t A, theta_ref, g_ref, f_ref, L, newton, scratch, total;
};

FormLayout form_layout(int64_t n, int64_t d) {
  const int64_t dim = d + 1;
  FormLayout l;
  l.A = 0;
  l.theta_ref = dim * dim;
  l.g_ref = l.theta_ref + dim;
  l.f_ref = l.g_ref + dim;
  l.L = l.f_ref + 1;
  l.newton = l.L + dim * dim;
  l.scratch = l.newton + 5 * dim + 4;  // after NewtonState: the Gram partials, later the passes' workspace
  const int64_t partials = gram_grid(n, dim).chunks * dim * dim, evaluate = linreg_cuda_workspace_numel(n, d, 1);
  l.total = l.scratch + (partials > evaluate ? partials : evaluate);
  return l;
}

// The Newton steps' state: the current point and the candidate (θ, ∇f, f of X's dtype T, each
// array in its own range of float64 slots), the solve's right-hand side, and two flags.
template <class T> struct NewtonState {
  double* slots;
  int64_t dim;
  __host__ __device__ T* cur_theta() const { return reinterpret_cast<T*>(slots); }
  __host__ __device__ T* cur_grad() const { return reinterpret_cast<T*>(slots + dim); }
  __host__ __device__ T* cand_theta() const { return reinterpret_cast<T*>(slots + 2 * dim); }
  __host__ __device__ T* cand_grad() const { return reinterpret_cast<T*>(slots + 3 * dim); }
  __host__ __device__ double* step() const { return slots + 4 * dim; }
  __host__ __device__ T* cur_loss() const { return reinterpret_cast<T*>(slots + 5 * dim); }
  __host__ __device__ T* cand_loss() const { return reinterpret_cast<T*>(slots + 5 * dim + 1); }
  __host__ __device__ double* factored() const { return slots + 5 * dim + 2; }  // 1: L holds A's factor
  __host__ __device__ double* stopped() const { return slots + 5 * dim + 3; }   // 1: no further step
};

// x̃ᵢ[c]: X's entry, the bias column's 1, or 0 past it.
template <class T> __device__ double x_tilde(const T* X, int64_t d, int64_t i, int64_t c) {
  return c < d ? static_cast<double>(X[i * d + c]) : c == d ? 1.0 : 0.0;
}

// partials[chunk][r][c] = Σ_{i in chunk} x̃ᵢ[r]·x̃ᵢ[c] for r in tile ti, c in tile tj (ti ≤ tj).
template <class T>
__global__ void __launch_bounds__(kGramThreads)
    gram_partials_kernel(const T* __restrict__ X, int64_t n, int64_t d, GramGrid g, double* __restrict__ partials) {
  __shared__ double rows_r[kStagedRows][kTile + 1], rows_c[kStagedRows][kTile + 1];
  int64_t ti = 0, rest = blockIdx.x;  // blockIdx.x enumerates the pairs row by row
  while (rest >= g.tiles - ti) {
    rest -= g.tiles - ti;
    ++ti;
  }
  const int64_t tj = ti + rest, dim = d + 1, r0 = ti * kTile, c0 = tj * kTile;
  const int64_t begin = blockIdx.y * g.chunk_rows, end = begin + g.chunk_rows < n ? begin + g.chunk_rows : n;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  double acc[2][2] = {{0, 0}, {0, 0}};
  for (int64_t i0 = begin; i0 < end; i0 += kStagedRows) {
    for (int e = threadIdx.x; e < kStagedRows * kTile; e += kGramThreads) {
      const int k = e / kTile, c = e % kTile;
      const int64_t i = i0 + k;
      rows_r[k][c] = i < end ? x_tilde(X, d, i, r0 + c) : 0.0;
      rows_c[k][c] = i < end ? x_tilde(X, d, i, c0 + c) : 0.0;
    }
    __syncthreads();
#pragma unroll 8
    for (int k = 0; k < kStagedRows; ++k) {
      const double a0 = rows_r[k][ty], a1 = rows_r[k][ty + 16], b0 = rows_c[k][tx], b1 = rows_c[k][tx + 16];
      acc[0][0] += a0 * b0;
      acc[0][1] += a0 * b1;
      acc[1][0] += a1 * b0;
      acc[1][1] += a1 * b1;
    }
    __syncthreads();
  }
  double* out = partials + blockIdx.y * dim * dim;
  for (int a = 0; a < 2; ++a)
    for (int b = 0; b < 2; ++b) {
      const int64_t r = r0 + ty + 16 * a, c = c0 + tx + 16 * b;
      if (r < dim && c < dim) out[r * dim + c] = acc[a][b];
    }
}

// A[r][c] = Σ_chunks partials[chunk][r][c] / n, chunks in order; entries below the diagonal tiles
// come from their mirror.
__global__ void gram_combine_kernel(const double* __restrict__ partials, int64_t chunks, int64_t dim, int64_t n,
                                    double* __restrict__ A) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e >= dim * dim) return;
  const int64_t r = e / dim, c = e % dim;
  const int64_t src = r / kTile <= c / kTile ? e : c * dim + r;
  double s = 0;
  for (int64_t k = 0; k < chunks; ++k) s += partials[k * dim * dim + src];
  A[e] = s / static_cast<double>(n);
}

// L of A + λI (linreg_quadratic.h), λ the first ridge that gives one; *factored = 1 if one did.
// Column j: the rows i ≥ j compute their partial sum s in parallel (into L, the diagonal's into
// `pivot`), then divide by √pivot.
__global__ void __launch_bounds__(kFactorThreads)
    factor_kernel(const double* __restrict__ A, int64_t dim, double* __restrict__ L, double* factored) {
  __shared__ double pivot, diag_max;
  if (threadIdx.x == 0) {
    double m = 0;
    for (int64_t i = 0; i < dim; ++i) m = A[i * dim + i] > m ? A[i * dim + i] : m;
    diag_max = m;
  }
  __syncthreads();
  for (int attempt = 0; attempt < kRidgeAttempts; ++attempt) {
    const double lambda = ridge_scale(attempt) * diag_max;
    bool ok = true;  // the same in every thread: it comes from the shared pivot
    for (int64_t j = 0; j < dim && ok; ++j) {
      for (int64_t i = j + threadIdx.x; i < dim; i += kFactorThreads) {
        const double s = cholesky_partial(A, L, dim, lambda, i, j);
        if (i == j) pivot = s;
        else L[i * dim + j] = s;
      }
      __syncthreads();
      const double p = pivot;
      ok = p > 0;
      if (ok) {
        const double root = sqrt(p);
        for (int64_t i = j + threadIdx.x; i < dim; i += kFactorThreads)
          L[i * dim + j] = i == j ? root : L[i * dim + j] / root;
      }
      __syncthreads();  // column j is final before column j+1 reads it, and pivot is free again
    }
    if (ok) {
      if (threadIdx.x == 0) *factored = 1;
      return;
    }
  }
  if (threadIdx.x == 0) *factored = 0;
}

// One thread. The CPU's reference_point: from (θ, ∇f, f) at 0, up to two Newton steps
// θ ← θ − A⁻¹∇f(θ), each kept only if it lowers f.
// Phase 0 proposes the first candidate; phases 1 and 2 keep the last candidate if its f (just
// evaluated) is lower, else stop; phase 1 then proposes the second, phase 2 writes θ̂, ĝ, f̂. A
// phase with nothing to propose copies the current point, so the launch sequence stays fixed.
template <class T>
__global__ void newton_kernel(NewtonState<T> s, const double* __restrict__ L, int phase, double* theta_ref,
                              double* g_ref, double* f_ref) {
  const int64_t dim = s.dim;
  if (phase == 0) {
    *s.stopped() = *s.factored() == 1 ? 0 : 1;
  } else if (*s.stopped() == 0) {
    if (*s.cand_loss() < *s.cur_loss()) {
      for (int64_t c = 0; c < dim; ++c) {
        s.cur_theta()[c] = s.cand_theta()[c];
        s.cur_grad()[c] = s.cand_grad()[c];
      }
      *s.cur_loss() = *s.cand_loss();
    } else {
      *s.stopped() = 1;
    }
  }
  if (phase < 2 && *s.stopped() == 0) {
    double* step = s.step();
    for (int64_t c = 0; c < dim; ++c) step[c] = static_cast<double>(s.cur_grad()[c]);
    cholesky_solve(L, dim, step);
    for (int64_t c = 0; c < dim; ++c) s.cand_theta()[c] = static_cast<T>(static_cast<double>(s.cur_theta()[c]) - step[c]);
  } else {
    for (int64_t c = 0; c < dim; ++c) s.cand_theta()[c] = s.cur_theta()[c];
  }
  if (phase == 2) {
    for (int64_t c = 0; c < dim; ++c) {
      theta_ref[c] = static_cast<double>(s.cur_theta()[c]);
      g_ref[c] = static_cast<double>(s.cur_grad()[c]);
    }
    *f_ref = static_cast<double>(*s.cur_loss());
  }
}

// A 1-D array on `like`'s device.
View device_array(void* data, DType dtype, int64_t numel, const View& like) {
  View v;
  v.data = data;
  v.dtype = dtype;
  v.device = like.device;
  v.device_index = like.device_index;
  v.ndim = 1;
  v.shape[0] = numel;
  v.strides[0] = 1;
  return v;
}

}  // namespace

int64_t quadratic_form_workspace_numel(int64_t n, int64_t d) { return form_layout(n, d).total; }

template <class T>
QuadraticFormDevice quadratic_form_build_cuda(const View& X, const View& y, const View& workspace, cudaStream_t stream) {
  const char* op = "linreg fit";
  const int64_t n = X.shape[0], d = X.shape[1], dim = d + 1;
  const FormLayout l = form_layout(n, d);  // workspace: checked by the caller (linreg_fit.cu's fit_launch)
  double* ws = workspace.ptr<double>();

  const GramGrid g = gram_grid(n, dim);
  gram_partials_kernel<T><<<dim3(static_cast<unsigned>(g.pairs), static_cast<unsigned>(g.chunks)), kGramThreads, 0,
                            stream>>>(X.ptr<T>(), n, d, g, ws + l.scratch);
  cuda_check_launch(op);
  gram_combine_kernel<<<static_cast<unsigned>((dim * dim + 255) / 256), 256, 0, stream>>>(ws + l.scratch, g.chunks,
                                                                                          dim, n, ws + l.A);
  cuda_check_launch(op);

  const NewtonState<T> s{ws + l.newton, dim};
  const View pass_workspace = device_array(ws + l.scratch, DType::f64, linreg_cuda_workspace_numel(n, d, 1), X);
  const auto pass = [&](T* theta, T* grad, T* loss) {
    linreg_evaluate_cuda<T>(X, y, device_array(theta, X.dtype, dim, X), nullptr, grad, loss, pass_workspace, stream, op);
  };
  cuda_check(cudaMemsetAsync(s.cur_theta(), 0, sizeof(T) * dim, stream), op);
  pass(s.cur_theta(), s.cur_grad(), s.cur_loss());
  factor_kernel<<<1, kFactorThreads, 0, stream>>>(ws + l.A, dim, ws + l.L, s.factored());
  cuda_check_launch(op);
  for (int phase = 0; phase <= 2; ++phase) {
    if (phase > 0) pass(s.cand_theta(), s.cand_grad(), s.cand_loss());
    newton_kernel<T><<<1, 1, 0, stream>>>(s, ws + l.L, phase, ws + l.theta_ref, ws + l.g_ref, ws + l.f_ref);
    cuda_check_launch(op);
  }
  return {ws + l.A, ws + l.theta_ref, ws + l.g_ref, ws + l.f_ref, dim};
}

template QuadraticFormDevice quadratic_form_build_cuda<float>(const View&, const View&, const View&, cudaStream_t);
template QuadraticFormDevice quadratic_form_build_cuda<double>(const View&, const View&, const View&, cudaStream_t);

}  // namespace ox
