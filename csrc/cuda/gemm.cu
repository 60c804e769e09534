// CUDA matrix product with the fused prologue/epilogue of csrc/gemm.h.
//
// Each 256-thread block computes a BM×BN tile of C (64×64, each thread a 4×4 register
// tile; or 32×32 with 2×2 when 64×64 tiles would leave most SMs idle, as for the
// skinny products of small layers); k advances in BK = 16 slices staged in shared memory. Loads go
// through the element strides (so Aᵀ / Bᵀ are free), with consecutive threads on
// the unit-stride dimension to keep them coalesced. Plain fp32 FMAs (no TF32).
// With too few tiles to fill the GPU, blockIdx.z takes one of gemm_cuda_splits K
// slices and writes its raw sums to the workspace; split_k_epilogue then adds the
// slices in order. Either way every element sums in a fixed order: deterministic.
#include "core/cuda_check.h"
#include "cuda/device_math.cuh"
#include "gemm.h"

namespace ox {
namespace {

constexpr int BK = 16, THREADS = 256;

template <class T> __device__ __forceinline__ T act_of(Activation act, T x) {
  if (act == Activation::relu) return relu1(x);
  if (act == Activation::sigmoid) return sigmoid1(x);  // the sigmoid op's formula, bit for bit
  return x;
}

// dy·g'(y): the activation's derivative from its output y; for relu a select, so that an inf or
// NaN dy where y ≤ 0 gives 0 (as torch's threshold_backward and the CPU prologue).
template <class T> __device__ __forceinline__ T times_grad_of(Activation g, T dy, T y) {
  if (g == Activation::relu) return y > T(0) ? dy : T(0);
  if (g == Activation::sigmoid) return dy * (y * (T(1) - y));
  return dy;
}

// C[m, n] = act(alpha·acc + beta·C[m, n] + bias[n]).
template <class T> __device__ __forceinline__ void store_c(const GemmArgs& g, T alpha, T beta, int64_t m, int64_t n,
                                                           T acc) {
  T* c = static_cast<T*>(g.C) + m * g.c_rs + n;
  T x = alpha * acc;
  if (beta != T(0)) x += beta * *c;
  if (g.bias) x += static_cast<const T*>(g.bias)[n];
  *c = act_of(g.act, x);
}

template <class T, int BM, int BN, int TM, int TN>
__global__ void __launch_bounds__(THREADS) gemm_kernel(GemmArgs g, T alpha, T beta, int64_t k_slice,
                                                       T* __restrict__ partial) {
  static_assert((BM / TM) * (BN / TN) == THREADS, "one thread per TM×TN sub-tile");
  __shared__ T As[BK][BM + 1];
  __shared__ T Bs[BK][BN + 1];
  const T* A = static_cast<const T*>(g.A);
  const T* B = static_cast<const T*>(g.B);
  const T* aux = static_cast<const T*>(g.aux);
  const int64_t k_begin = blockIdx.z * k_slice, k_end = k_begin + k_slice < g.K ? k_begin + k_slice : g.K;
  const int tid = threadIdx.x, tx = tid % (BN / TN), ty = tid / (BN / TN);
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * BN;
  const int64_t m_tiles = (g.M + BM - 1) / BM;
  const bool a_k_fast = g.a_cs == 1, b_n_fast = g.b_cs == 1 || g.b_rs != 1;

  for (int64_t mt = blockIdx.y; mt < m_tiles; mt += gridDim.y) {
    const int64_t m0 = mt * BM;
    T acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) acc[i][j] = T(0);

    for (int64_t k0 = k_begin; k0 < k_end; k0 += BK) {
      // Stage A'[m0:+BM, k0:+BK] and B[k0:+BK, n0:+BN] (zeros outside the matrices).
#pragma unroll
      for (int e = tid; e < BM * BK; e += THREADS) {
        const int mm = a_k_fast ? e / BK : e % BM, kk = a_k_fast ? e % BK : e / BM;
        const int64_t m = m0 + mm, k = k0 + kk;
        T v = T(0);
        if (m < g.M && k < k_end) {
          const int64_t off = m * g.a_rs + k * g.a_cs;
          v = A[off];
          if (aux) v = times_grad_of(g.aux_grad, v, aux[off]);
        }
        As[kk][mm] = v;
      }
#pragma unroll
      for (int e = tid; e < BK * BN; e += THREADS) {
        const int nn = b_n_fast ? e % BN : e / BK, kk = b_n_fast ? e / BN : e % BK;
        const int64_t n = n0 + nn, k = k0 + kk;
        Bs[kk][nn] = (n < g.N && k < k_end) ? B[k * g.b_rs + n * g.b_cs] : T(0);
      }
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < BK; ++kk) {
        T a[TM], b[TN];
#pragma unroll
        for (int i = 0; i < TM; ++i) a[i] = As[kk][ty * TM + i];
#pragma unroll
        for (int j = 0; j < TN; ++j) b[j] = Bs[kk][tx * TN + j];
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
          for (int j = 0; j < TN; ++j) acc[i][j] = fma(a[i], b[j], acc[i][j]);
      }
      __syncthreads();
    }

    // Epilogue, or this K slice's raw sums into the workspace.
#pragma unroll
    for (int i = 0; i < TM; ++i) {
      const int64_t m = m0 + ty * TM + i;
      if (m >= g.M) continue;
#pragma unroll
      for (int j = 0; j < TN; ++j) {
        const int64_t n = n0 + tx * TN + j;
        if (n >= g.N) continue;
        if (partial) partial[(blockIdx.z * g.M + m) * g.N + n] = acc[i][j];
        else store_c(g, alpha, beta, m, n, acc[i][j]);
      }
    }
  }
}

// C = epilogue(Σ_z partial[z]), the K slices added in order.
template <class T>
__global__ void split_k_epilogue(GemmArgs g, T alpha, T beta, int64_t splits, const T* __restrict__ partial) {
  const int64_t total = g.M * g.N;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    T acc = T(0);
    for (int64_t z = 0; z < splits; ++z) acc += partial[z * total + e];
    store_c(g, alpha, beta, e / g.N, e % g.N, acc);
  }
}

}  // namespace

template <class T, int BM, int BN, int TM, int TN>
static void launch(const GemmArgs& g, int64_t splits, T* partial, cudaStream_t stream) {
  const int64_t n_tiles = (g.N + BN - 1) / BN, m_tiles = (g.M + BM - 1) / BM;
  if (n_tiles > 2147483647LL) throw std::runtime_error("gemm: N too large for the CUDA grid");
  // k_slice: a multiple of BK, so that only the last slice has a partial BK step.
  const int64_t k_slice = splits > 1 ? ((g.K + splits - 1) / splits + BK - 1) / BK * BK : (g.K > 0 ? g.K : 1);
  // gridDim.y is capped at 65535; the kernel loops over the remaining row tiles.
  dim3 grid(static_cast<unsigned>(n_tiles), static_cast<unsigned>(m_tiles < 65535 ? m_tiles : 65535),
            static_cast<unsigned>(splits));
  gemm_kernel<T, BM, BN, TM, TN><<<grid, THREADS, 0, stream>>>(g, static_cast<T>(g.alpha), static_cast<T>(g.beta),
                                                                 k_slice, splits > 1 ? partial : nullptr);
  cuda_check_launch("gemm");
  if (splits > 1) {
    const int64_t blocks = (g.M * g.N + THREADS - 1) / THREADS;
    split_k_epilogue<T><<<static_cast<unsigned>(blocks < 65535 ? blocks : 65535), THREADS, 0, stream>>>(
        g, static_cast<T>(g.alpha), static_cast<T>(g.beta), splits, partial);
    cuda_check_launch("gemm (split-K sums)");
  }
}

template <class T> static void launch_for_shape(const GemmArgs& g, cudaStream_t stream, void* workspace) {
  if (gemm_cuda_big_tiles(g.M, g.N)) return launch<T, 64, 64, 4, 4>(g, 1, nullptr, stream);
  const int64_t splits = gemm_cuda_splits(g.M, g.N, g.K);
  if (splits > 1 && !workspace) throw std::runtime_error("gemm: a split-K product needs its workspace");
  launch<T, 32, 32, 2, 2>(g, splits, static_cast<T*>(workspace), stream);
}

void gemm_cuda(const GemmArgs& g, DType dtype, uintptr_t stream, void* workspace) {
  if (g.M <= 0 || g.N <= 0) return;
  if (dtype == DType::f64) launch_for_shape<double>(g, as_stream(stream), workspace);
  else launch_for_shape<float>(g, as_stream(stream), workspace);
}

}  // namespace ox
