// CUDA kernels of the linreg family (see linreg.h for the math).
//
// linreg_grad / linreg_loss: one pass over X. Block k of a fixed grid (its size
// depends only on m) takes a contiguous range of rows, walks it in tiles of TR
// rows staged in shared memory (coalesced loads, the bias column 1 added
// there), computes the tile's residuals R = X̃Θᵀ − y and adds Rᵀ X̃ and Σ R²
// into its own slice of the float64 workspace (each entry owned by one
// thread: no atomics). One trajectory with d+1 ≤ 256 takes row_partials_kernel
// instead (a warp per row, the row's columns across the lanes), which writes the same
// slices. A second kernel adds the block slices in block order.
// Results are therefore deterministic run to run.
//
// fit is in linreg_fit.cu.
#include <cstdint>
#include <stdint.h>
#include <type_traits>

// core/cuda_check.h names uintptr_t unqualified; the device's toolchain declares only std::uintptr_t.
namespace ox { using std::uintptr_t; }

#include "core/checks.h"
#include "core/cuda_check.h"
#include "core/errors.h"
#include "cuda/linreg_cuda.cuh"
#include "linreg.h"

namespace ox {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kRowsPerBlock = 512;
constexpr int64_t kMaxBlocks = 1024;
constexpr int64_t kSmemBudget = 40 * 1024;
constexpr int kMaxTileRows = 64;

int64_t grid_blocks(int64_t m) {
  int64_t nb = (m + kRowsPerBlock - 1) / kRowsPerBlock;
  return nb < 1 ? 1 : nb > kMaxBlocks ? kMaxBlocks : nb;
}

template <class T> int64_t tile_rows(int64_t d, int64_t B) {
  int64_t tr = kSmemBudget / (static_cast<int64_t>(sizeof(T)) * (d + 1 + B + 1));
  return tr > kMaxTileRows ? kMaxTileRows : tr;
}

__device__ __forceinline__ double quiet_nan() { return __longlong_as_double(0x7ff8000000000000LL); }

// Block k: rows [k*chunk, min(m, (k+1)*chunk)); its slice of work: E = B(d+1) grad sums, then B loss sums.
template <class T>
__global__ void partials_kernel(const T* __restrict__ X, const T* __restrict__ y, const T* __restrict__ theta,
                                const int64_t* __restrict__ rows, int64_t n, int64_t m, int64_t d, int64_t B,
                                int64_t chunk, int TR, bool want_grad, double* __restrict__ work) {
  extern __shared__ unsigned char smem_raw[];
  const int64_t stride = d + 1, E = B * stride;
  T* Xs = reinterpret_cast<T*>(smem_raw);  // TR × (d+1), row r = x̃ of the tile's row r
  T* Rs = Xs + TR * stride;                 // TR × B residuals
  T* ys = Rs + TR * B;                      // TR targets
  const int64_t begin = blockIdx.x * chunk;
  const int64_t end = begin + chunk < m ? begin + chunk : m;
  double* part = work + blockIdx.x * (E + B);
  for (int64_t e = threadIdx.x; e < E + B; e += kThreads) part[e] = 0.0;

  for (int64_t t0 = begin; t0 < end; t0 += TR) {
    const int64_t nr = end - t0 < TR ? end - t0 : TR;
    // Stage x̃ (and y) of nr rows; an out-of-range row index stages NaN (see linreg.h).
    for (int64_t e = threadIdx.x; e < nr * stride; e += kThreads) {
      const int64_t r = e / stride, c = e - r * stride;
      const int64_t i = rows ? rows[t0 + r] : t0 + r;
      const bool ok = i >= 0 && i < n;
      Xs[e] = !ok ? static_cast<T>(quiet_nan()) : c < d ? X[i * d + c] : T(1);
      if (c == 0) ys[r] = ok ? y[i] : static_cast<T>(quiet_nan());
    }
    __syncthreads();
    // R[r][b] = x̃_r · θ_b − y_r
    for (int64_t p = threadIdx.x; p < nr * B; p += kThreads) {
      const int64_t r = p / B, b = p - r * B;
      const T* x = Xs + r * stride;
      const T* th = theta + b * stride;
      T acc = -ys[r];
      for (int64_t c = 0; c < stride; ++c) acc += x[c] * th[c];
      Rs[p] = acc;
    }
    __syncthreads();
    // G[b][c] += Σ_r R[r][b] x̃_r[c];  L[b] += Σ_r R[r][b]²
    if (want_grad)
      for (int64_t e = threadIdx.x; e < E; e += kThreads) {
        const int64_t b = e / stride, c = e - b * stride;
        T acc = 0;
        for (int64_t r = 0; r < nr; ++r) acc += Rs[r * B + b] * Xs[r * stride + c];
        part[e] += static_cast<double>(acc);
      }
    for (int64_t b = threadIdx.x; b < B; b += kThreads) {
      T acc = 0;
      for (int64_t r = 0; r < nr; ++r) acc += Rs[r * B + b] * Rs[r * B + b];
      part[E + b] += static_cast<double>(acc);
    }
    __syncthreads();
  }
}

// One trajectory (B = 1), d+1 ≤ 32·CPL: warp w of block k takes a contiguous share of the
// block's rows and reads each row x̃ once, lane ℓ holding its columns ℓ, ℓ+32, ... (CPL of
// them, θ's entries alongside in registers). Per row: r = x̃·θ − y (a shuffle tree that
// leaves r in every lane), then G[c] += r·x̃[c] and L += r², kRowsInFlight rows at a
// time. Sums run in T over at most kMaxTileRows rows, then in float64; the warps' sums are
// added in warp order into the block's slice of work (the layout of partials_kernel).
constexpr int kRowsInFlight = 4;

template <class T, int CPL>
__global__ void __launch_bounds__(kThreads)
    row_partials_kernel(const T* __restrict__ X, const T* __restrict__ y, const T* __restrict__ theta,
                        const int64_t* __restrict__ rows, int64_t n, int64_t m, int64_t d, int64_t chunk,
                        bool want_grad, double* __restrict__ work) {
  __shared__ double warp_sums[kWarps][32 * CPL + 1];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t D = d + 1, begin = blockIdx.x * chunk;
  const int64_t end = begin + chunk < m ? begin + chunk : m;
  const int64_t share = (end - begin + kWarps - 1) / kWarps;
  const int64_t wbegin = begin + warp * share, wend = wbegin + share < end ? wbegin + share : end;
  T th[CPL];
#pragma unroll
  for (int k = 0; k < CPL; ++k) {
    const int64_t c = lane + 32 * k;
    th[k] = c < D ? theta[c] : T(0);
  }
  double gsum[CPL], lsum = 0;
#pragma unroll
  for (int k = 0; k < CPL; ++k) gsum[k] = 0;
  for (int64_t t0 = wbegin; t0 < wend; t0 += kMaxTileRows) {
    const int64_t tend = t0 + kMaxTileRows < wend ? t0 + kMaxTileRows : wend;
    T g[CPL], l = 0;
#pragma unroll
    for (int k = 0; k < CPL; ++k) g[k] = 0;
    for (int64_t r0 = t0; r0 < tend; r0 += kRowsInFlight) {
      T xv[kRowsInFlight][CPL], dot[kRowsInFlight], yv[kRowsInFlight];
#pragma unroll
      for (int u = 0; u < kRowsInFlight; ++u) {
        const bool real = r0 + u < tend;  // a row of this warp's share
        const int64_t i = !real ? 0 : rows ? rows[r0 + u] : r0 + u;
        const bool ok = i >= 0 && i < n;  // else the row stages NaN (see linreg.h)
        yv[u] = !real ? T(0) : ok ? y[i] : static_cast<T>(quiet_nan());
        dot[u] = 0;
#pragma unroll
        for (int k = 0; k < CPL; ++k) {
          const int64_t c = lane + 32 * k;
          xv[u][k] = !real || c > d ? T(0) : !ok ? static_cast<T>(quiet_nan()) : c < d ? X[i * d + c] : T(1);
          dot[u] += th[k] * xv[u][k];
        }
      }
#pragma unroll
      for (int off = 16; off > 0; off >>= 1)
#pragma unroll
        for (int u = 0; u < kRowsInFlight; ++u) dot[u] += __shfl_xor_sync(0xffffffffu, dot[u], off);
#pragma unroll
      for (int u = 0; u < kRowsInFlight; ++u) {
        const T r = r0 + u < tend ? dot[u] - yv[u] : T(0);  // r = x̃·θ − y
        l += r * r;
#pragma unroll
        for (int k = 0; k < CPL; ++k) g[k] += r * xv[u][k];
      }
    }
#pragma unroll
    for (int k = 0; k < CPL; ++k) gsum[k] += static_cast<double>(g[k]);
    lsum += static_cast<double>(l);  // the same in every lane
  }
#pragma unroll
  for (int k = 0; k < CPL; ++k) warp_sums[warp][lane + 32 * k] = gsum[k];
  if (lane == 0) warp_sums[warp][32 * CPL] = lsum;
  __syncthreads();
  double* part = work + blockIdx.x * (D + 1);  // [D grad sums | loss sum]
  for (int64_t e = threadIdx.x; e <= D; e += kThreads) {
    if (e < D && !want_grad) continue;
    const int64_t col = e < D ? e : 32 * CPL;
    double s = 0;
    for (int w = 0; w < kWarps; ++w) s += warp_sums[w][col];
    part[e] = s;
  }
}

// Several trajectories: R = X̃Θᵀ − y and G += RᵀX̃ as two small register-tiled products
// per tile of rows in shared memory. Threads form a TB × (kThreads/TB) grid (TileGrid):
//  - R: thread (tb, tr) computes rows tr + k·(kThreads/TB) (k < kRowsPerThread) × the
//    trajectories tb + i·TB (i < kTrajPerThread): per column, kRowsPerThread + kTrajPerThread
//    loads feed their product of FMAs;
//  - G: thread (tb, tc) owns G[tb + i·TB][tc + j·TC] (j < kColsPerThread) and the loss sums of
//    its trajectories (tc = 0) in registers, added into its float64 entries of the block's
//    slice every kFlushTiles tiles (each entry has one owner: no atomics).
// Row pitches in shared memory are odd, so a warp's loads of different rows hit different banks.
constexpr int kTrajPerThread = 4, kColsPerThread = 8, kRowsPerThread = 2, kFlushTiles = 8;

struct TileGrid {
  int64_t TB, TR, pitch;  // trajectory lanes, rows per tile, shared row pitch (odd, ≥ d+1)
  size_t smem;            // bytes of shared memory
};

template <class T> TileGrid tile_grid(int64_t d, int64_t B) {
  TileGrid g{1, 0, (d + 1) | 1, 0};
  while (g.TB * kTrajPerThread < B && g.TB < kThreads) g.TB *= 2;
  const int64_t row_lanes = kThreads / g.TB;
  g.TR = row_lanes * kRowsPerThread < kMaxTileRows ? row_lanes * kRowsPerThread : kMaxTileRows;
  g.smem = sizeof(T) * static_cast<size_t>((B + g.TR) * g.pitch + g.TR * B + g.TR);
  return g;
}

// The tiled kernel takes (d, B), laid out as g, when its registers and 48 KB of shared memory
// hold them and B·(d+1) fills at least a quarter of the kThreads·4·8 register slots of G (each
// thread runs all its slots). On the H200 it took 2.47 ms against the old kernel's 8.61 ms at
// n = 700 000, d = 100, B = 64 float32 (79 % of the slots), but 350 µs against 190 µs at
// n = 100 000, d = 10, B = 64 float64 (9 %); shapes in between were not timed.
bool tiled_fits(const TileGrid& g, int64_t d, int64_t B) {
  const int64_t slots = int64_t{kThreads} * kTrajPerThread * kColsPerThread;
  return B <= g.TB * kTrajPerThread && d + 1 <= (kThreads / g.TB) * kColsPerThread && g.smem <= 48 * 1024 &&
         4 * B * (d + 1) >= slots;
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    tiled_partials_kernel(const T* __restrict__ X, const T* __restrict__ y, const T* __restrict__ theta,
                          const int64_t* __restrict__ rows, int64_t n, int64_t m, int64_t d, int64_t B,
                          int64_t chunk, TileGrid grid, bool want_grad, double* __restrict__ work) {
  extern __shared__ double smem_d[];  // double-aligned
  const int64_t D = d + 1, P = grid.pitch, TB = grid.TB, TR = grid.TR, TC = kThreads / TB, E = B * D;
  T* Ths = reinterpret_cast<T*>(smem_d);  // B × P: θ_b
  T* Xs = Ths + B * P;                    // TR × P: the tile's x̃ rows
  T* Rs = Xs + TR * P;                    // TR × B: residuals
  T* ys = Rs + TR * B;                    // TR targets
  const int tid = threadIdx.x;
  const int64_t tb = tid % TB, tr = tid / TB, tc = tid % TC, tb2 = tid / TC;
  const int64_t begin = blockIdx.x * chunk;
  const int64_t end = begin + chunk < m ? begin + chunk : m;
  double* part = work + blockIdx.x * (E + B);
  for (int64_t e = tid; e < E + B; e += kThreads) part[e] = 0.0;
  for (int64_t e = tid; e < E; e += kThreads) Ths[e / D * P + e % D] = theta[e];

  T g[kTrajPerThread][kColsPerThread], l[kTrajPerThread];
  auto clear = [&] {
#pragma unroll
    for (int i = 0; i < kTrajPerThread; ++i) {
      l[i] = 0;
#pragma unroll
      for (int j = 0; j < kColsPerThread; ++j) g[i][j] = 0;
    }
  };
  clear();
  int tiles = 0;
  for (int64_t t0 = begin; t0 < end; t0 += TR) {
    const int64_t nr = end - t0 < TR ? end - t0 : TR;
    __syncthreads();  // the previous tile is consumed (and part, Ths are initialised)
    // Stage x̃ (and y) of nr rows; an out-of-range row index stages NaN (see linreg.h).
    for (int64_t e = tid; e < nr * D; e += kThreads) {
      const int64_t r = e / D, c = e - r * D;
      const int64_t i = rows ? rows[t0 + r] : t0 + r;
      const bool ok = i >= 0 && i < n;
      Xs[r * P + c] = !ok ? static_cast<T>(quiet_nan()) : c < d ? X[i * d + c] : T(1);
      if (c == 0) ys[r] = ok ? y[i] : static_cast<T>(quiet_nan());
    }
    __syncthreads();
    {  // R[r][b] = x̃_r · θ_b − y_r
      T acc[kRowsPerThread][kTrajPerThread] = {};
      for (int64_t c = 0; c < D; ++c) {
        T xv[kRowsPerThread], tv[kTrajPerThread];
#pragma unroll
        for (int k = 0; k < kRowsPerThread; ++k) {
          const int64_t r = tr + k * (kThreads / TB);
          xv[k] = r < nr ? Xs[r * P + c] : T(0);
        }
#pragma unroll
        for (int i = 0; i < kTrajPerThread; ++i) tv[i] = tb + i * TB < B ? Ths[(tb + i * TB) * P + c] : T(0);
#pragma unroll
        for (int k = 0; k < kRowsPerThread; ++k)
#pragma unroll
          for (int i = 0; i < kTrajPerThread; ++i) acc[k][i] += xv[k] * tv[i];
      }
#pragma unroll
      for (int k = 0; k < kRowsPerThread; ++k) {
        const int64_t r = tr + k * (kThreads / TB);
#pragma unroll
        for (int i = 0; i < kTrajPerThread; ++i)
          if (r < nr && tb + i * TB < B) Rs[r * B + tb + i * TB] = acc[k][i] - ys[r];
      }
    }
    __syncthreads();
    // G[b][c] += Σ_r R[r][b] x̃_r[c];  L[b] += Σ_r R[r][b]²
    for (int64_t r = 0; r < nr; ++r) {
      T rv[kTrajPerThread], xv[kColsPerThread];
#pragma unroll
      for (int i = 0; i < kTrajPerThread; ++i) rv[i] = tb2 + i * TB < B ? Rs[r * B + tb2 + i * TB] : T(0);
#pragma unroll
      for (int j = 0; j < kColsPerThread; ++j) xv[j] = tc + j * TC < D ? Xs[r * P + tc + j * TC] : T(0);
#pragma unroll
      for (int i = 0; i < kTrajPerThread; ++i) {
        l[i] += rv[i] * rv[i];
#pragma unroll
        for (int j = 0; j < kColsPerThread; ++j) g[i][j] += rv[i] * xv[j];
      }
    }
    if (++tiles == kFlushTiles || t0 + TR >= end) {
#pragma unroll
      for (int i = 0; i < kTrajPerThread; ++i) {
        const int64_t b = tb2 + i * TB;
        if (b >= B) continue;
        if (want_grad)
#pragma unroll
          for (int j = 0; j < kColsPerThread; ++j)
            if (tc + j * TC < D) part[b * D + tc + j * TC] += static_cast<double>(g[i][j]);
        if (tc == 0) part[E + b] += static_cast<double>(l[i]);
      }
      clear();
      tiles = 0;
    }
  }
}

// out_grad[e] = Σ_k work_k[e] / m;  out_loss[b] = Σ_k work_k[E+b] / (2m), k in block order.
template <class T>
__global__ void combine_kernel(const double* __restrict__ work, int64_t nblocks, int64_t E, int64_t B, int64_t m,
                               T* grad, T* loss) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e >= E + B) return;
  if (e < E && !grad) return;
  if (e >= E && !loss) return;
  double s = 0;
  for (int64_t k = 0; k < nblocks; ++k) s += work[k * (E + B) + e];
  if (e < E) grad[e] = static_cast<T>(s / static_cast<double>(m));
  else loss[e - E] = static_cast<T>(s / (2.0 * static_cast<double>(m)));
}

}  // namespace

template <class T>
void linreg_evaluate_cuda(const View& X, const View& y, const View& theta, const View* rows, T* grad, T* loss,
              const View& workspace, cudaStream_t stream, const char* op) {
  const int64_t n = X.shape[0], d = X.shape[1], B = theta.ndim == 2 ? theta.shape[0] : 1;
  const int64_t m = rows ? rows->shape[0] : n;
  if (B == 0) return;
  const int64_t TR = tile_rows<T>(d, B);
  if (TR < 1)
    value_error(op, ": on CUDA, d + B must stay below ", kSmemBudget / static_cast<int64_t>(sizeof(T)) - 2,
                " (shared-memory tile), got d = ", d, ", B = ", B);
  const int64_t nb = grid_blocks(m), chunk = (m + nb - 1) / nb;
  const int64_t E = B * (d + 1);
  check_scratch(op, "workspace", workspace, "X", X, nb * (E + B), DType::f64);  // float64 partial sums
  const int64_t* row_ids = rows ? rows->ptr<int64_t>() : nullptr;
  const auto row_kernel = [&](auto cols_per_lane) {
    row_partials_kernel<T, decltype(cols_per_lane)::value><<<static_cast<unsigned>(nb), kThreads, 0, stream>>>(
        X.ptr<T>(), y.ptr<T>(), theta.ptr<T>(), row_ids, n, m, d, chunk, grad != nullptr, workspace.ptr<double>());
  };
  if (B == 1 && d + 1 <= 32) row_kernel(std::integral_constant<int, 1>());
  else if (B == 1 && d + 1 <= 64) row_kernel(std::integral_constant<int, 2>());
  else if (B == 1 && d + 1 <= 128) row_kernel(std::integral_constant<int, 4>());
  else if (B == 1 && d + 1 <= 256) row_kernel(std::integral_constant<int, 8>());
  else if (const TileGrid tiles = tile_grid<T>(d, B); tiled_fits(tiles, d, B)) {
    tiled_partials_kernel<T><<<static_cast<unsigned>(nb), kThreads, tiles.smem, stream>>>(
        X.ptr<T>(), y.ptr<T>(), theta.ptr<T>(), row_ids, n, m, d, B, chunk, tiles, grad != nullptr,
        workspace.ptr<double>());
  } else {
    const size_t smem = sizeof(T) * static_cast<size_t>(TR * (d + 1 + B + 1));
    partials_kernel<T><<<static_cast<unsigned>(nb), kThreads, smem, stream>>>(
        X.ptr<T>(), y.ptr<T>(), theta.ptr<T>(), row_ids, n, m, d, B, chunk, static_cast<int>(TR), grad != nullptr,
        workspace.ptr<double>());
  }
  cuda_check_launch(op);
  const int64_t total = E + B;
  combine_kernel<T><<<static_cast<unsigned>((total + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
      workspace.ptr<double>(), nb, E, B, m, grad, loss);
  cuda_check_launch(op);
}

template void linreg_evaluate_cuda<float>(const View&, const View&, const View&, const View*, float*, float*,
                                          const View&, cudaStream_t, const char*);
template void linreg_evaluate_cuda<double>(const View&, const View&, const View&, const View*, double*, double*,
                                           const View&, cudaStream_t, const char*);

int64_t linreg_cuda_workspace_numel(int64_t m, int64_t d, int64_t B) {
  return grid_blocks(m) * (B * (d + 1) + B);
}

void linreg_grad_cuda(const View& X, const View& y, const View& theta, const View* rows, const View& grad,
                      const View& workspace, uintptr_t stream) {
  if (X.dtype == DType::f64)
    linreg_evaluate_cuda<double>(X, y, theta, rows, grad.ptr<double>(), nullptr, workspace, as_stream(stream), "linreg_grad");
  else
    linreg_evaluate_cuda<float>(X, y, theta, rows, grad.ptr<float>(), nullptr, workspace, as_stream(stream), "linreg_grad");
}

void linreg_loss_cuda(const View& X, const View& y, const View& theta, const View& loss, const View& workspace,
                      uintptr_t stream) {
  if (X.dtype == DType::f64)
    linreg_evaluate_cuda<double>(X, y, theta, nullptr, nullptr, loss.ptr<double>(), workspace, as_stream(stream), "linreg_loss");
  else
    linreg_evaluate_cuda<float>(X, y, theta, nullptr, nullptr, loss.ptr<float>(), workspace, as_stream(stream), "linreg_loss");
}

}  // namespace ox
