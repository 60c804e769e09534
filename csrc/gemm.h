// Our matrix product, with the epilogue and prologue that linear layers need:
//
//   C[m, n] = act( alpha · Σ_k A'[m, k] · B[k, n] + beta · C[m, n] + bias[n] )
//   A'[m, k] = A[m, k] · g(aux[m, k])     (prologue; aux has A's strides)
//
// act ∈ {identity, relu, sigmoid}; g ∈ {1, relu'(y) = [y > 0], sigmoid'(y) = y(1 − y)}
// where aux holds the forward output y. A and B are read through element
// strides, so Aᵀ / Bᵀ cost nothing (x Wᵀ, dy W and dyᵀ x need no copies); C is
// row-major with row stride c_rs. beta = 0 never reads C.
//
// CPU: Goto/BLIS-style blocking (packed A and B panels, MC/KC/NC blocks; a
// row-major operand that would be read only once or twice, or whose panel fits
// L1, is read in place instead of packed), register-tiled AVX-512 / AVX2 /
// scalar micro-kernels, threads split C into disjoint column (or row) ranges;
// each element is summed in the same k order whatever the thread count or
// packing, so results are deterministic.
// CUDA: tiled shared-memory kernel, full fp32 (no TF32). A product with too few
// output tiles to fill the GPU splits K over gemm_cuda_splits blocks per tile: each
// writes its partial sums to a workspace, which a second kernel adds in split order
// before the epilogue, so results stay deterministic.
#pragma once
#include <cstdint>

#include "core/activation_kind.h"
#include "core/view.h"

namespace ox {

// Below this many multiply-adds (M·N·K) one thread is faster than waking a second one.
constexpr double kGemmThreadingWork = double(1 << 19);

struct GemmArgs {
  int64_t M = 0, N = 0, K = 0;
  const void* A = nullptr;
  int64_t a_rs = 0, a_cs = 0;  // A[m, k] = A[m * a_rs + k * a_cs]
  const void* B = nullptr;
  int64_t b_rs = 0, b_cs = 0;  // B[k, n] = B[k * b_rs + n * b_cs]
  void* C = nullptr;
  int64_t c_rs = 0;            // C[m, n] = C[m * c_rs + n]
  double alpha = 1, beta = 0;
  const void* bias = nullptr;  // (N,) or null
  Activation act = Activation::none;
  const void* aux = nullptr;   // prologue source (forward output y), A's strides, or null
  Activation aux_grad = Activation::none;  // which derivative g applies
  bool one_thread = false;     // CPU: run in the calling thread only (the caller runs products side by side)
};

// dtype f32 or f64; all pointers host (CPU) or device (CUDA) memory.
void gemm_cpu(const GemmArgs& g, DType dtype);
// workspace: device memory of the dtype, at least gemm_cuda_workspace(M, N, K) elements
// (null when that is 0).
void gemm_cuda(const GemmArgs& g, DType dtype, uintptr_t stream, void* workspace);

// CUDA tiling of an M×N×K product: 64×64 tiles when there are enough of them to keep
// the GPU busy, else 32×32 tiles, and then K split into up to 16 slices of ≥ 64.
constexpr int64_t kGemmCudaBusyBlocks = 264;  // ~2 blocks per SM on an H100/H200
inline bool gemm_cuda_big_tiles(int64_t M, int64_t N) {
  return ((M + 63) / 64) * ((N + 63) / 64) >= kGemmCudaBusyBlocks;
}
inline int64_t gemm_cuda_splits(int64_t M, int64_t N, int64_t K) {
  if (M <= 0 || N <= 0 || gemm_cuda_big_tiles(M, N)) return 1;
  const int64_t tiles = ((M + 31) / 32) * ((N + 31) / 32);
  int64_t splits = (kGemmCudaBusyBlocks + tiles - 1) / tiles;
  if (splits > K / 64) splits = K / 64;
  if (splits > 16) splits = 16;
  return splits > 1 ? splits : 1;
}
inline int64_t gemm_cuda_workspace(int64_t M, int64_t N, int64_t K) {
  const int64_t splits = gemm_cuda_splits(M, N, K);
  return splits > 1 ? splits * M * N : 0;
}

// Operand tile sizes of the CPU kernel in use (for tests that want edge cases).
void gemm_cpu_tile(int* mr, int* nr);

}  // namespace ox
