// CPU matrix product with fused prologue/epilogue; see csrc/gemm.h for the formula.
//
// Goto/BLIS blocking, per thread:
//   for jc (NC columns of C):  for pc (KC of k):  pack B[pc:+kc, jc:+nc] into NR-wide panels
//     for ic (MC rows of C):  pack A'[ic:+mc, pc:+kc] into MR-tall panels (prologue g applied here)
//       for each MR×NR tile: acc = Σ_k a_panel[k] ⊗ b_panel[k]  (registers), then
//         C = alpha·acc + (first k block ? beta·C : C), and on the last k block + bias, act.
// Threads take disjoint, NR/MR-aligned ranges of C's columns (or rows); the k
// blocking does not depend on the split, so every element sums in one fixed order.
#include "gemm.h"

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <numeric>
#include <type_traits>

#include "core/isa.h"
#include "core/threading.h"
#include "cpu/simd.h"
#include "cpu/vexp.h"

namespace ox {
namespace OX_ISA {

// Vectors: simd.h's Vec<float> / Vec<double> in the SIMD builds; Scalar<T> for the scalar build.
using VecF = Vec<float>;
using VecD = Vec<double>;

template <class V> static OX_INLINE typename V::R apply_act(Activation act, typename V::R x) {
  if (act == Activation::relu) return V::max(V::zero(), x);  // NaN stays NaN, as in torch
  if (act == Activation::sigmoid) {  // float32: vexp.h's formula, the sigmoid op's results bit for bit
    using S = typename V::S;
#if defined(__AVX512F__)
    if constexpr (V::L > 1 && std::is_same_v<S, float>) return vsigmoid16(x); else
#elif defined(__AVX2__)
    if constexpr (V::L > 1 && std::is_same_v<S, float>) return vsigmoid8(x); else
#endif
    if constexpr (std::is_same_v<S, float>) return vsigmoid(x);
    else if constexpr (V::L > 1) {  // float64 vectors: lane by lane, the scalar formula below
      alignas(64) double lanes[V::L];
      V::storeu(lanes, x);
      for (int i = 0; i < V::L; ++i) lanes[i] = apply_act<Scalar<double>>(act, lanes[i]);
      return V::loadu(lanes);
    } else {
      return 1.0 / (1.0 + std::exp(-x));
    }
  }
  return x;
}

// ---- blocking parameters per kernel ------------------------------------------------------

// MR rows × NV registers (NR = NV·W columns) per micro-tile; MC × KC blocks of A, KC × NC of B.
// Narrow: for C with at most W columns (out_features 10 of the course nets), one register
// wide and twice as tall, instead of padding to 2W columns.
template <class V, bool Narrow = false> struct Tiles;
#if defined(__AVX512F__)
template <> struct Tiles<VecF> { static constexpr int MR = 8, NV = 2, KC = 384, MC = 96, NC = 2048; };
template <> struct Tiles<VecF, true> { static constexpr int MR = 16, NV = 1, KC = 384, MC = 96, NC = 2048; };
template <> struct Tiles<VecD> { static constexpr int MR = 8, NV = 2, KC = 128, MC = 96, NC = 1024; };
#elif defined(__AVX2__)
template <> struct Tiles<VecF> { static constexpr int MR = 6, NV = 2, KC = 256, MC = 120, NC = 2048; };
template <> struct Tiles<VecF, true> { static constexpr int MR = 12, NV = 1, KC = 256, MC = 120, NC = 2048; };
template <> struct Tiles<VecD> { static constexpr int MR = 6, NV = 2, KC = 192, MC = 120, NC = 1024; };
#endif
template <class T> struct Tiles<Scalar<T>> { static constexpr int MR = 4, NV = 8, KC = 256, MC = 64, NC = 1024; };

// ---- packing --------------------------------------------------------------------------------


// The prologue: dy·g'(y), the activation's derivative written in terms of its output y. For relu
// a select, not dy·[y > 0]: an inf or NaN dy where y ≤ 0 gives 0, as torch's threshold_backward
// and our relu_backward do (a product would give NaN).
template <class T, Activation G> static OX_INLINE T times_grad_of(T dy, T y) {
  if constexpr (G == Activation::relu) return y > T(0) ? dy : T(0);
  else if constexpr (G == Activation::sigmoid) return dy * (y * (T(1) - y));
  else return dy;
}

// A'[i0.., k] (mc × kc) → MR-tall panels, panel p at out + p·MR·kc, element (i, k) at k·MR + i;
// rows past mc are zero.
template <class T, Activation G>
static void pack_a_impl(const T* A, int64_t rs, int64_t cs, const T* aux, int64_t mc, int64_t kc, int MR,
                        T* out) {
  for (int64_t i0 = 0; i0 < mc; i0 += MR) {
    const int rows = static_cast<int>(mc - i0 < MR ? mc - i0 : MR);
    T* p = out + i0 * kc;
    if (rows < MR)
      for (int64_t k = 0; k < kc; ++k)
        for (int i = rows; i < MR; ++i) p[k * MR + i] = T(0);
    const T* a = A + i0 * rs;
    const T* y = aux ? aux + i0 * rs : nullptr;
    for (int64_t k = 0; k < kc; ++k) {  // MR read streams, one sequential write stream
      T* q = p + k * MR;
      for (int i = 0; i < rows; ++i) {
        const int64_t off = i * rs + k * cs;
        T v = a[off];
        if constexpr (G != Activation::none) v = times_grad_of<T, G>(v, y[off]);
        q[i] = v;
      }
    }
  }
}

#if defined(__AVX512F__) || defined(__AVX2__)
// L × L in-register transpose (L = 16 on AVX-512, 8 on AVX2): afterwards r[c] holds column c.
static OX_INLINE void transpose_lanes(VecF::R r[VecF::L]) {
#if defined(__AVX512F__)
  transpose16(r);
#else
  transpose8(r);
#endif
}

// The first n lanes at p (mask = VecF::mask(n)), the others zero: a plain load where all are wanted.
static OX_INLINE VecF::R load_lanes(const float* p, VecF::M mask, int n) {
  return n == VecF::L ? VecF::loadu(p) : VecF::loadz(mask, p);
}

#endif

#if defined(__AVX512F__)
// dy where y > 0, else +0 (times_grad_of's relu select, 16 lanes at a time)
static OX_INLINE VecF::R keep_where_positive(VecF::R y, VecF::R dy) {
  return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(y, _mm512_setzero_ps(), _CMP_GT_OQ), dy);
}

// pack_a_impl for row-major A (cs = 1): L k-values of each row are loaded (the prologue applied
// in registers), transposed, and stored as columns of the panel, L rows of it at a time. AVX-512
// only: the AVX2 form (8 × 8 blocks into panels 6 rows tall) packed large products slower than
// pack_a_impl's gather on this session's AMD machine (1024³: 62-71 % of OpenBLAS against 77-83 %).
template <Activation G>
static void pack_a_transposed(const float* A, int64_t rs, const float* aux, int64_t mc, int64_t kc, int MR,
                              float* out) {
  constexpr int L = VecF::L;
  const VecF::R zero = VecF::zero(), one = VecF::set1(1.0f);
  for (int64_t i0 = 0; i0 < mc; i0 += MR) {
    const int rows = static_cast<int>(mc - i0 < MR ? mc - i0 : MR);
    float* p = out + i0 * kc;
    for (int h = 0; h * L < MR; ++h) {  // panel rows [h·L, h·L + L)
      const VecF::M lanes = VecF::mask(MR - h * L);
      for (int64_t k0 = 0; k0 < kc; k0 += L) {
        const int kn = static_cast<int>(kc - k0 < L ? kc - k0 : L);
        const VecF::M mask = VecF::mask(kn);
        VecF::R r[L];
        for (int i = 0; i < L; ++i) {
          if (h * L + i >= rows) { r[i] = zero; continue; }
          const int64_t off = (i0 + h * L + i) * rs + k0;
          VecF::R v = load_lanes(A + off, mask, kn);
          if constexpr (G == Activation::relu) {
            v = keep_where_positive(load_lanes(aux + off, mask, kn), v);  // dy · [y > 0]
          } else if constexpr (G == Activation::sigmoid) {
            const VecF::R y = load_lanes(aux + off, mask, kn);
            v = VecF::mul(v, VecF::mul(y, VecF::sub(one, y)));  // dy · y(1 − y)
          }
          r[i] = v;
        }
        transpose_lanes(r);
        for (int kk = 0; kk < kn; ++kk) VecF::store(p + (k0 + kk) * MR + h * L, lanes, r[kk]);
      }
    }
  }
}
#endif

template <class T>
static void pack_a(const T* A, int64_t rs, int64_t cs, const T* aux, Activation g, int64_t mc, int64_t kc,
                   int MR, T* out) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>)
    if (cs == 1) {
      if (aux && g == Activation::relu) return pack_a_transposed<Activation::relu>(A, rs, aux, mc, kc, MR, out);
      if (aux && g == Activation::sigmoid) return pack_a_transposed<Activation::sigmoid>(A, rs, aux, mc, kc, MR, out);
      return pack_a_transposed<Activation::none>(A, rs, nullptr, mc, kc, MR, out);
    }
#endif
  if (aux && g == Activation::relu) pack_a_impl<T, Activation::relu>(A, rs, cs, aux, mc, kc, MR, out);
  else if (aux && g == Activation::sigmoid) pack_a_impl<T, Activation::sigmoid>(A, rs, cs, aux, mc, kc, MR, out);
  else pack_a_impl<T, Activation::none>(A, rs, cs, nullptr, mc, kc, MR, out);
}

#if defined(__AVX512F__) || defined(__AVX2__)
// pack_b for B[k, n] = B[n·cs + k] (B = Wᵀ, W row-major) and NR a multiple of L: L × L blocks of
// W are loaded row by row and transposed in registers instead of gathered element-wise.
static void pack_b_transposed(const float* B, int64_t cs, int64_t kc, int64_t nc, int NR, float* out) {
  constexpr int L = VecF::L;
  for (int64_t j0 = 0; j0 < nc; j0 += NR) {
    const int cols = static_cast<int>(nc - j0 < NR ? nc - j0 : NR);
    float* p = out + j0 * kc;
    for (int64_t k0 = 0; k0 < kc; k0 += L) {
      const int kn = static_cast<int>(kc - k0 < L ? kc - k0 : L);
      const VecF::M mask = VecF::mask(kn);
      for (int h = 0; h < NR / L; ++h) {
        VecF::R r[L];
        for (int i = 0; i < L; ++i) {
          const int j = L * h + i;
          r[i] = j < cols ? load_lanes(B + (j0 + j) * cs + k0, mask, kn) : VecF::zero();
        }
        transpose_lanes(r);
        for (int kk = 0; kk < kn; ++kk) VecF::storeu(p + (k0 + kk) * NR + L * h, r[kk]);
      }
    }
  }
}
#endif

// B[k, j0..] (kc × nc) → NR-wide panels, panel p at out + p·NR·kc, element (k, j) at k·NR + j;
// columns past nc are zero.
template <class T>
static void pack_b(const T* B, int64_t rs, int64_t cs, int64_t kc, int64_t nc, int NR, T* out) {
#if defined(__AVX512F__) || defined(__AVX2__)
  if constexpr (std::is_same_v<T, float>)
    if (rs == 1 && cs != 1 && NR % VecF::L == 0) return pack_b_transposed(B, cs, kc, nc, NR, out);
#endif
  for (int64_t j0 = 0; j0 < nc; j0 += NR) {
    const int cols = static_cast<int>(nc - j0 < NR ? nc - j0 : NR);
    T* p = out + j0 * kc;
    if (cs == 1) {  // rows of B are contiguous
      for (int64_t k = 0; k < kc; ++k) {
        const T* b = B + k * rs + j0;
        T* q = p + k * NR;
        for (int j = 0; j < cols; ++j) q[j] = b[j];
        for (int j = cols; j < NR; ++j) q[j] = T(0);
      }
    } else {  // columns of B are (typically) contiguous, e.g. B = Wᵀ: NR read streams, one
              // sequential write stream (the panel may not fit L1; its source lines do)
      const T* b = B + j0 * cs;
      for (int64_t k = 0; k < kc; ++k) {
        T* q = p + k * NR;
        for (int j = 0; j < cols; ++j) q[j] = b[j * cs + k * rs];
        for (int j = cols; j < NR; ++j) q[j] = T(0);
      }
    }
  }
}

// ---- the micro-kernel and its epilogue --------------------------------------------------------

struct Epilogue {
  double alpha, beta;
  bool first, last;  // first / last k block of this C tile
  Activation act;
};

// Where the micro-kernel reads its operands: from the packed panels (pa[k·MR + i],
// pb[k·NR + j]), or straight from A and B when packing would cost more than it saves:
// DirectA reads A'[i, k] = A[i·a_rs + k] (row-major A, no prologue), DirectB reads
// B[k, j] = B[k·b_rs + j] (row-major B), with masked loads past `cols`.
struct Operands {
  int64_t a_rs = 0, b_rs = 0;
};

// C[0:rows, 0:cols] (row stride c_rs) ← epilogue(Σ_k A'[i, k] · B[k, j]), k in increasing order.
template <class V, int MR, int NV, bool DirectA = false, bool DirectB = false>
static void tile(int64_t kc, const typename V::S* __restrict pa, const typename V::S* __restrict pb,
                 typename V::S* C, int64_t c_rs, int rows, int cols, const typename V::S* bias,
                 const Epilogue& ep, const Operands& direct) {
  using S = typename V::S;
  using R = typename V::R;
  constexpr int W = V::L, NR = NV * W;
  R acc[MR][NV];
#pragma GCC unroll 32
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[i][v] = V::zero();
  const S* a_row[MR];  // DirectA: rows past `rows` re-read row 0; their sums are never stored
  if constexpr (DirectA)
    for (int i = 0; i < MR; ++i) a_row[i] = pa + (i < rows ? i : 0) * direct.a_rs;
  int b_lanes[NV];  // DirectB: valid lanes of each register (0 … W)
  if constexpr (DirectB)
    for (int v = 0; v < NV; ++v) b_lanes[v] = cols - v * W >= W ? W : cols - v * W > 0 ? cols - v * W : 0;
  const bool b_full = !DirectB || cols == NR;
  for (int64_t k = 0; k < kc; ++k) {
    R b[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v)
      b[v] = b_full ? V::loadu(pb + v * W) : V::loadz(V::mask(b_lanes[v]), pb + v * W);
#pragma GCC unroll 32
    for (int i = 0; i < MR; ++i) {
      R a;
      if constexpr (DirectA) a = V::set1(a_row[i][k]);
      else a = V::set1(pa[i]);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[i][v] = V::fma(a, b[v], acc[i][v]);
    }
    if constexpr (!DirectA) pa += MR;
    if constexpr (DirectB) pb += direct.b_rs; else pb += NR;
  }
  const R alpha = V::set1(static_cast<S>(ep.alpha)), beta = V::set1(static_cast<S>(ep.beta));
  const bool scale = ep.alpha != 1.0, read_c = !ep.first || ep.beta != 0.0;
#pragma GCC unroll 32
  for (int i = 0; i < MR; ++i) {
    if (i >= rows) break;
    S* c = C + i * c_rs;
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      const int j0 = v * W;
      if (j0 >= cols) break;
      const int n = cols - j0 < W ? cols - j0 : W;
      R x = acc[i][v];
      if (scale) x = V::mul(x, alpha);
      if (read_c) {
        const R old = n == W ? V::loadu(c + j0) : V::loadz(V::mask(n), c + j0);
        x = ep.first ? V::fma(beta, old, x) : V::add(x, old);
      }
      if (ep.last) {
        if (bias) x = V::add(x, n == W ? V::loadu(bias + j0) : V::loadz(V::mask(n), bias + j0));
        x = apply_act<V>(ep.act, x);
      }
      if (n == W) V::storeu(c + j0, x); else V::store(c + j0, V::mask(n), x);
    }
  }
}

// The micro-kernel variant for in-place (true) or packed (false) A and B.
template <class V, class P>
using TileFn = void (*)(int64_t, const typename V::S*, const typename V::S*, typename V::S*, int64_t, int, int,
                        const typename V::S*, const Epilogue&, const Operands&);
template <class V, class P> static TileFn<V, P> pick_tile(bool direct_a, bool direct_b) {
  constexpr int MR = P::MR, NV = P::NV;
  if (direct_a) return direct_b ? tile<V, MR, NV, true, true> : tile<V, MR, NV, true, false>;
  return direct_b ? tile<V, MR, NV, false, true> : tile<V, MR, NV, false, false>;
}

// A row-major A without a prologue can be read in place (gemm_block), vector kernels only.
template <class V> static bool a_row_major_plain(const GemmArgs& g) { return V::L > 1 && g.a_cs == 1 && !g.aux; }

// Whether a kc × NR panel of a row-major B, read in place (rows row_bytes apart), stays in L1
// between the row tiles that reuse it, as a packed panel does: it fills at most half of a 32 KB,
// 8-way L1 (64 sets of 64-byte lines, 4 KB per way), and its rows fall in enough sets not to
// evict each other: rows row_bytes apart cycle through 4096 / gcd(row_bytes, 4096) sets, so a
// stride of a multiple of 4 KB puts them all in one set of 8 lines. (Before this rule the AVX2
// 1024³ and 2048³ products read B in place at 4 and 8 KB strides: 55-67 % of OpenBLAS's speed.)
static bool b_panel_stays_in_l1(int64_t kc, int64_t panel_row_bytes, int64_t row_bytes) {
  const int64_t common = std::gcd(row_bytes, int64_t{4096}), line = 64;
  const int64_t sets = 4096 / (common > line ? common : line), lines_per_row = (panel_row_bytes + line - 1) / line;
  return kc * panel_row_bytes <= 16384 && kc * lines_per_row <= 8 * sets;
}

// Packing buffers: one pair per thread, grown on demand, 64-byte aligned, kept for reuse.
template <class T> static T* scratch(int which, int64_t count) {
  static thread_local void* buf[2] = {nullptr, nullptr};
  static thread_local int64_t cap[2] = {0, 0};
  const int64_t bytes = (count * static_cast<int64_t>(sizeof(T)) + 63) / 64 * 64;
  if (bytes > cap[which]) {
    std::free(buf[which]);
    buf[which] = std::aligned_alloc(64, static_cast<size_t>(bytes));
    cap[which] = buf[which] ? bytes : 0;
  }
  return static_cast<T*>(buf[which]);
}

// One thread's part: rows [m0, m1) × columns [n0, n1) of C.
template <class V, class P>
static void gemm_block(const GemmArgs& g, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  using S = typename V::S;
  constexpr int MR = P::MR, NR = P::NV * V::L;
  const S* A = static_cast<const S*>(g.A);
  const S* B = static_cast<const S*>(g.B);
  const S* aux = static_cast<const S*>(g.aux);
  const S* bias = static_cast<const S*>(g.bias);
  S* C = static_cast<S*>(g.C);
  const int64_t K = g.K;
  // k blocks of equal size (784 = 3 × 262, not 384 + 384 + 16); fixed by K alone, so the
  // summation order never depends on the thread split.
  const int64_t k_blocks = (K + P::KC - 1) / P::KC, kc_step = (K + k_blocks - 1) / k_blocks;
  S* pa = scratch<S>(0, static_cast<int64_t>(P::MC + MR) * P::KC);
  S* pb = scratch<S>(1, static_cast<int64_t>(P::NC + NR) * P::KC);
  if (!pa || !pb) throw std::bad_alloc();
  // Packing copies an operand so that the micro-kernel re-reads it from a compact panel. An
  // operand the kernel reads only once or twice, or whose panel stays in L1 anyway, costs
  // less read in place: A when row-major, without a prologue, and this thread's C at most two
  // column tiles wide (each A element is then read at most twice); B when row-major and its
  // kc × NR panel fits half of L1. Both read the same values in the same k order as the packed
  // path, so the results do not change.
  const bool direct_a = a_row_major_plain<V>(g) && n1 - n0 <= 2 * NR;
  const Operands direct{g.a_rs, g.b_rs};
  for (int64_t jc = n0; jc < n1; jc += P::NC) {
    const int64_t nc = n1 - jc < P::NC ? n1 - jc : P::NC;
    for (int64_t pc = 0; pc < K; pc += kc_step) {
      const int64_t kc = K - pc < kc_step ? K - pc : kc_step;
      const bool direct_b = V::L > 1 && g.b_cs == 1 && b_panel_stays_in_l1(kc, NR * sizeof(S), g.b_rs * sizeof(S));
      const TileFn<V, P> run_tile = pick_tile<V, P>(direct_a, direct_b);
      const S* b_block = B + pc * g.b_rs + jc * g.b_cs;
      if (!direct_b) pack_b(b_block, g.b_rs, g.b_cs, kc, nc, NR, pb);
      const Epilogue ep{g.alpha, g.beta, pc == 0, pc + kc == K, g.act};
      for (int64_t ic = m0; ic < m1; ic += P::MC) {
        const int64_t mc = m1 - ic < P::MC ? m1 - ic : P::MC;
        const int64_t a_off = ic * g.a_rs + pc * g.a_cs;
        if (!direct_a) pack_a(A + a_off, g.a_rs, g.a_cs, aux ? aux + a_off : nullptr, g.aux_grad, mc, kc, MR, pa);
        for (int64_t jr = 0; jr < nc; jr += NR) {
          const int cols = static_cast<int>(nc - jr < NR ? nc - jr : NR);
          const S* b_tile = direct_b ? b_block + jr : pb + jr * kc;
          for (int64_t ir = 0; ir < mc; ir += MR) {
            const int rows = static_cast<int>(mc - ir < MR ? mc - ir : MR);
            const S* a_tile = direct_a ? A + a_off + ir * g.a_rs : pa + ir * kc;
            run_tile(kc, a_tile, b_tile, C + (ic + ir) * g.c_rs + jc + jr, g.c_rs, rows, cols,
                     bias ? bias + jc + jr : nullptr, ep, direct);
          }
        }
      }
    }
  }
}

// K = 0: C = act(beta·C + bias).
template <class S> static void epilogue_only(const GemmArgs& g) {
  S* C = static_cast<S*>(g.C);
  const S* bias = static_cast<const S*>(g.bias);
  for (int64_t i = 0; i < g.M; ++i)
    for (int64_t j = 0; j < g.N; ++j) {
      S* c = C + i * g.c_rs + j;
      S x = g.beta != 0.0 ? static_cast<S>(g.beta) * *c : S(0);
      if (bias) x += bias[j];
      *c = apply_act<Scalar<S>>(g.act, x);
    }
}

template <class V, class P = Tiles<V>> static void gemm_run(const GemmArgs& g) {
  constexpr int MR = P::MR, NR = P::NV * V::L;
  if (g.M <= 0 || g.N <= 0) return;
  if (g.K <= 0) return epilogue_only<typename V::S>(g);
  int64_t threads = g.one_thread ? 1 : num_threads();
  if (static_cast<double>(g.M) * static_cast<double>(g.N) * static_cast<double>(g.K) < kGemmThreadingWork)
    threads = 1;
  const int64_t m_tiles = (g.M + MR - 1) / MR, n_tiles = (g.N + NR - 1) / NR;
  if (threads <= 1 || (m_tiles < 2 && n_tiles < 2)) return gemm_block<V, P>(g, 0, g.M, 0, g.N);
  // Split the dimension with more tiles into `threads` aligned ranges; but when A can be read in
  // place (gemm_block: row-major, no prologue), split columns whenever there are enough of them:
  // each thread then packs only its share of B, where a row split has every thread pack all of B.
  const bool a_in_place = a_row_major_plain<V>(g) && n_tiles <= 2 * threads;
  const bool by_cols = n_tiles >= m_tiles || (a_in_place && n_tiles >= threads);
  const int64_t tiles = by_cols ? n_tiles : m_tiles;
  const int64_t per = (tiles + threads - 1) / threads;
  const int64_t chunks = (tiles + per - 1) / per;
  parallel_for(chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t t0 = c * per, t1 = t0 + per < tiles ? t0 + per : tiles;
      if (by_cols) gemm_block<V, P>(g, 0, g.M, t0 * NR, t1 * NR < g.N ? t1 * NR : g.N);
      else gemm_block<V, P>(g, t0 * MR, t1 * MR < g.M ? t1 * MR : g.M, 0, g.N);
    }
  });
}

void gemm(const GemmArgs& g, bool f64) {
#if defined(__AVX512F__) || defined(__AVX2__)
  if (f64) gemm_run<VecD>(g);
  else if (g.N <= VecF::L) gemm_run<VecF, Tiles<VecF, true>>(g);
  else gemm_run<VecF>(g);
#else
  if (f64) gemm_run<Scalar<double>>(g);
  else gemm_run<Scalar<float>>(g);
#endif
}

void gemm_tile(int* mr, int* nr) {
#if defined(__AVX512F__) || defined(__AVX2__)
  *mr = Tiles<VecF>::MR;
  *nr = Tiles<VecF>::NV * VecF::L;
#else
  *mr = Tiles<Scalar<float>>::MR;
  *nr = Tiles<Scalar<float>>::NV;
#endif
}

}  // namespace OX_ISA
}  // namespace ox

#if OX_ISA_IS_scalar
OX_ISA_DECLARE(void, gemm, (const ox::GemmArgs&, bool))
OX_ISA_DECLARE(void, gemm_tile, (int*, int*))

namespace ox {

void gemm_cpu(const GemmArgs& g, DType dtype) { OX_ISA_DISPATCH(gemm, g, dtype == DType::f64); }
void gemm_cpu_tile(int* mr, int* nr) { OX_ISA_DISPATCH(gemm_tile, mr, nr); }

}  // namespace ox
#endif
