// conv2d and fused-block backward on the CPU (formulas in conv.h; overview in conv.cpp).
//
// Backward runs over fixed blocks of kBatchBlock images (deterministic for any
// thread count): per block it pads the images, accumulates ∂L/∂w and ∂L/∂b into
// the block's partial (register tiles of OBW channels × KWB taps, reduced over
// the block's images and pixels), and computes ∂L/∂x as a stride-1 convolution
// of the dilated, padded ∂L/∂y with the flipped, transposed kernel, reusing the
// forward tile kernel; where the input has few channels (conv2: 6) ∂L/∂x is
// instead scattered from ∂L/∂y through the kernel into a channels-last buffer
// (conv_grad_scatter.h), which multiplies no zeros. Block partials are summed in
// block order at the end. The ∂L/∂w tiles are in conv_grad_dense.h.
//
// The fused block's backward starts from the pooled gradient and the saved
// window positions. Where it pays (conv2: pool 2, stride 1, 16 channels) it never
// builds the full-resolution ∂L/∂y, which is ≥ 3/4 zeros: sparse kernels visit
// only the one non-zero per window and channel (conv_grad_sparse.h; for few input
// channels ∂L/∂w reads its patches in place from a channels-last copy of x);
// elsewhere ∂L/∂y is expanded and the dense path runs.
#include "cpu/conv_grad_dense.h"
#include "cpu/conv_grad_scatter.h"
#include "cpu/conv_grad_sparse.h"
#include "cpu/conv_k5.h"
#include "cpu/conv_tiles.h"

namespace ox {
namespace OX_ISA {

// gy: ∂L/∂y (N, O, OH, OW), or with idx the pooled gradient (N, O, OH/P, OW/P).
template <class T>
static void backward(const ConvShape& s, const T* gy, const uint8_t* idx, int64_t P, const T* x, const T* w,
                     T* gx, T* gw, T* gb) {
  const int64_t nw = s.O * s.C * s.KH * s.KW;
  const int64_t nblocks = (s.N + kBatchBlock - 1) / kBatchBlock;
  const int64_t plane_y = s.O * s.OH * s.OW;
  const int64_t plane_gout = idx ? s.O * (s.OH / P) * (s.OW / P) : plane_y;
  const bool want_w = gw || gb;
  const bool gw_cv = use_channel_vectors_gw<T>(s.O, s.OW);
  T* partial = want_w ? new T[nblocks * (nw + s.O) + 1]() : nullptr;
  // Fused block: ∂L/∂w, ∂L/∂b and ∂L/∂x straight from the pooled gradient where the
  // sparse kernels apply (see above); the dense path expands it first.
  // conv1-like layers: ∂L/∂w and ∂L/∂b by the parity-split kernel (k5_gw_block)
  const bool k5w = idx && want_w && k5_applies<T>(s, P);
  // The sparse kernels skip the zeros of ∂L/∂y, which torch multiplies too (0·inf = NaN): an x
  // holding an inf or NaN takes the dense ∂L/∂w, a weight holding one the dense ∂L/∂x.
  int gws_nv = idx && want_w && !k5w ? gw_sparse_vectors<T>(s, P) : 0;
  if (gws_nv && !all_finite(x, s.N * s.C * s.H * s.W)) gws_nv = 0;
  GwClGeom gwq{};
  const GwClFn<T> gw_cl = gws_nv ? pick_gw_sparse_cl<T>(s, &gwq) : nullptr;
  const GwSparseFn<T> gw_sparse = gws_nv && !gw_cl ? pick_gw_sparse<T>(gws_nv) : nullptr;
  GxSparseGeom gxq{};
  const GxSparseFn<T> gx_sparse = idx && gx && all_finite(w, nw) ? pick_gx_sparse<T>(s, P, &gxq) : nullptr;
  Scratch<T> wfull_buf(gx_sparse ? 2 * s.O * s.KH * gxq.rowlen : 0);
  T* wfull = wfull_buf.get();
  if (gx_sparse) build_gx_sparse_weights(s, gxq, w, wfull);
  GxScatterGeom gxs{};
  const GxScatterFn<T> gx_scatter = gx && !gx_sparse ? pick_gx_scatter<T>(s, &gxs) : nullptr;
  Scratch<T> wscat_buf(gx_scatter ? s.O * s.KH * gxs.rowvec : 0);
  T* wscat = wscat_buf.get();
  if (gx_scatter) build_gx_scatter_weights(s, gxs, w, wscat);
  const bool need_gexp = idx && ((gx && !gx_sparse) || (want_w && !gw_sparse && !gw_cl && !k5w));
  // x for the ∂L/∂w paths: padded and phase-split, except that the channel-vector tiles take the
  // image itself where they can (image_geom)
  const bool x_in_place = gw && gw_cv && !gw_sparse && !k5w && !gw_cl && unpadded_unit_stride(s);
  const bool fill_x = want_w && !k5w && !gw_cl && !x_in_place;
  const BufGeom xg = x_in_place ? image_geom(s) : input_geom(s, Vec<T>::L);
  // ∂L/∂x: stride-1 conv of the dilated ∂L/∂y, padded by K−1−p, with the flipped kernel.
  const BufGeom gg{s.O, s.H + s.KH - 1, 1, s.W + s.KW - 1 + 2 * Vec<T>::L};
  const bool gx_dense = gx && !gx_sparse && !gx_scatter;
  Packed<T>* pk = gx_dense ? new Packed<T>(w, nullptr, s.C, s.O, s.KH, s.KW, true, s.W) : nullptr;
  const RowsFn<T> rows = gx_dense ? pick_rows<T>(*pk, s.C, s.W) : nullptr;

  parallel_for(nblocks, 1, [&](int64_t b0, int64_t b1) {
    T* xbufs = fill_x ? new T[kBatchBlock * xg.size()] : nullptr;
    const int64_t k5x = s.C * s.H * kK5Row, k5g = (s.OH / 2) * ((s.O + 5) / 6 * 6) * 64;
    T* k5buf = k5w ? static_cast<T*>(::operator new(sizeof(T) * kBatchBlock * (k5x + k5g), std::align_val_t(64)))
                   : nullptr;
    T* gexp = need_gexp ? new T[kBatchBlock * plane_y] : nullptr;
    T* gbuf = gx_dense ? new T[gg.size()] : nullptr;
    T* gtrans = gw && gw_cv && !gw_sparse && !gw_cl ? new T[kBatchBlock * plane_y] : nullptr;
    // patches of the sparse ∂L/∂w (zeroed once: lanes past C·KH·KW are read, never
    // stored), padded channels-last ∂L/∂x of the sparse path
    const int64_t npatch = (s.OH / P) * P * (s.OW / P) * P;
    Scratch<T> xcol_buf(gw_sparse ? npatch * patch_stride<T>(s.C * s.KH * s.KW) : 0, true);
    Scratch<T> gxp_buf(gx_sparse ? gxq.Hp * gxq.Wp * gxq.CP : 0);
    Scratch<T> gxscat_buf(gx_scatter ? gxs.size() : 0);
    // channels-last x and the block's channels-last ∂L/∂w sum of the gw_cl path
    Scratch<T> xcl_buf(gw_cl ? gwq.size() : 0), acc_cl_buf(gw_cl ? s.O * s.KH * gwq.rowvec : 0);
    T *xcol = xcol_buf.get(), *gxp = gxp_buf.get(), *gxscat = gxscat_buf.get();
    const T* xptr[kBatchBlock];
    const T* gptr[kBatchBlock];
    const T* gtptr[kBatchBlock];
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t n0 = blk * kBatchBlock, n1 = n0 + kBatchBlock < s.N ? n0 + kBatchBlock : s.N;
      for (int64_t n = n0; n < n1; ++n) {
        const int64_t i = n - n0;
        if (need_gexp) {
          expand_pool_grad(s, P, gy + n * plane_gout, idx + n * plane_gout, gexp + i * plane_y);
          gptr[i] = gexp + i * plane_y;
        } else {
          gptr[i] = idx ? nullptr : gy + n * plane_y;
        }
        if (fill_x) {
          fill_buffer(x + n * s.C * s.H * s.W, s.H, s.W, 1, 1, s.ph, s.pw, xg, xbufs + i * xg.size());
          xptr[i] = xbufs + i * xg.size();
        } else if (x_in_place) {
          xptr[i] = x + n * s.C * s.H * s.W;
        }
        if (gx_sparse) {
          gx_sparse(s, gxq, wfull, gy + n * plane_gout, idx + n * plane_gout, gxp, gx + n * s.C * s.H * s.W);
        } else if (gx_scatter) {
          gx_scatter(s, gxs, wscat, gptr[i], gxscat, gx + n * s.C * s.H * s.W);
        } else if (gx) {
          fill_buffer(gptr[i], s.OH, s.OW, s.sh, s.sw, s.KH - 1 - s.ph, s.KW - 1 - s.pw, gg, gbuf);
          // rows [KH−1−ph, KH−1−ph + (OH−1)·sh + 1) of the dilated, padded ∂L/∂y hold data
          RowsArgs<T> a{gbuf, gg, s.KH, s.KW, 1, pk->wp, pk->bp, s.C, pk->nob, s.W,
                        s.KH - 1 - s.ph, s.KH - 1 - s.ph + (s.OH - 1) * s.sh + 1};
          rows(a, 0, s.H, gx + n * s.C * s.H * s.W, s.H * s.W, s.W);
        }
      }
      if (!want_w) continue;
      T* part = partial + blk * (nw + s.O);
      if (k5w) {
        k5_gw<T>(s, x, gy, idx, n0, n1, k5buf, k5buf + kBatchBlock * k5x, part);
        continue;
      }
      if (gw_cl) {  // ∂L/∂w and ∂L/∂b together, as below
        gw_cl(s, P, gwq, x, gy, idx, n0, n1, xcl_buf.get(), acc_cl_buf.get(), part);
        continue;
      }
      if (gw_sparse) {  // ∂L/∂w and ∂L/∂b together (an unwanted one is computed and dropped)
        for (int64_t n = n0; n < n1; ++n)
          gw_sparse(s, P, xptr[n - n0], xg, gy + n * plane_gout, idx + n * plane_gout, xcol, part);
        continue;
      }
      if (gw && gw_cv) {
        for (int64_t i = 0; i < n1 - n0; ++i) {
          transpose_image(gptr[i], s.O, s.OH * s.OW, gtrans + i * plane_y);
          gtptr[i] = gtrans + i * plane_y;
        }
        GwArgs<T> a{xptr, gtptr, n1 - n0, xg, s.O, s.KH, s.KW, s.sh, s.OH, s.OW};
        for (int64_t ob = 0; ob < s.O / Vec<T>::L; ++ob)
          for (int64_t kw0 = 0; kw0 < s.KW; kw0 += 5) {
            const int64_t kb = s.KW - kw0 < 5 ? s.KW - kw0 : 5;
            for (int64_t c = 0; c < s.C; ++c)
              for (int64_t kh = 0; kh < s.KH; kh += 2) {
                const GwFn<T> tile = s.KH - kh >= 2 ? pick_gw_cv_k<T, 2>(kb) : pick_gw_cv_k<T, 1>(kb);
                tile(a, ob, c, kh, kw0, part);
              }
          }
      } else if (gw) {
        GwArgs<T> a{xptr, gptr, n1 - n0, xg, s.O, s.KH, s.KW, s.sh, s.OH, s.OW};
        for (int64_t o0 = 0; o0 < s.O; o0 += 4)
          for (int64_t kw0 = 0; kw0 < s.KW; kw0 += 5) {
            const int64_t ob = s.O - o0 < 4 ? s.O - o0 : 4, kb = s.KW - kw0 < 5 ? s.KW - kw0 : 5;
            const GwFn<T> tile = pick_gw<T>(ob, kb);
            for (int64_t c = 0; c < s.C; ++c)
              for (int64_t kh = 0; kh < s.KH; ++kh) tile(a, o0, c, kh, kw0, part);
          }
      }
      if (gb) {
        const int64_t plane = s.OH * s.OW;
        for (int64_t o = 0; o < s.O; ++o) {
          typename Vec<T>::R acc = Vec<T>::zero();
          for (int64_t i = 0; i < n1 - n0; ++i) {
            const T* g = gptr[i] + o * plane;
            for (int64_t e = 0; e < plane; e += Vec<T>::L)
              acc = Vec<T>::add(acc, Vec<T>::loadz(Vec<T>::mask(plane - e), g + e));
          }
          part[nw + o] = Vec<T>::sum(acc);
        }
      }
    }
    if (k5buf) ::operator delete(k5buf, std::align_val_t(64));
    delete[] gtrans;
    delete[] gbuf;
    delete[] gexp;
    delete[] xbufs;
  });

  if (want_w) {
    for (int64_t e = 0; e < nw + s.O; ++e) {
      T acc = 0;
      for (int64_t blk = 0; blk < nblocks; ++blk) acc += partial[blk * (nw + s.O) + e];
      if (e < nw) {
        if (gw) gw[e] = acc;
      } else if (gb) {
        gb[e - nw] = acc;
      }
    }
  }
  delete pk;
  delete[] partial;
}

// ---- per-ISA entry point (type dispatch) -------------------------------------
void conv_bwd(const ConvShape& s, const void* gy, const uint8_t* idx, int64_t P, const void* x, const void* w,
              void* gx, void* gw, void* gb, bool f64) {
  if (f64)
    backward(s, static_cast<const double*>(gy), idx, P, static_cast<const double*>(x),
             static_cast<const double*>(w), static_cast<double*>(gx), static_cast<double*>(gw),
             static_cast<double*>(gb));
  else
    backward(s, static_cast<const float*>(gy), idx, P, static_cast<const float*>(x), static_cast<const float*>(w),
             static_cast<float*>(gx), static_cast<float*>(gw), static_cast<float*>(gb));
}

}  // namespace OX_ISA
}  // namespace ox
