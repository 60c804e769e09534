// The window arithmetic of max pooling, shared by the CPU and CUDA kernels (pool.h states the
// formulas): a call's geometry, the taps of one window that fall inside the plane, and the
// position torch's scan picks among them.
#pragma once
#include <cstdint>

#include "core/host_device.h"
#include "pool.h"

namespace ox {

struct PoolGeometry {
  int64_t planes, h, w, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw;
};

static inline PoolGeometry pool_geometry(const View& x, const Pool2d& p) {
  const int64_t h = x.size(-2), w = x.size(-1);
  return PoolGeometry{x.ndim == 4 ? x.shape[0] * x.shape[1] : x.shape[0],
                      h,
                      w,
                      pool_out_size(h, p.kh, p.sh, p.ph, p.dh, p.ceil_mode),
                      pool_out_size(w, p.kw, p.sw, p.pw, p.dw, p.ceil_mode),
                      p.kh, p.kw, p.sh, p.sw, p.ph, p.pw, p.dh, p.dw};
}

// The taps of window `out_index` inside the plane along one axis: offsets start + t·dil for
// t in [first, end) (first == end: none).
struct PoolTaps {
  int64_t start, first, end;
};

OX_HD PoolTaps pool_taps(int64_t out_index, int64_t stride, int64_t pad, int64_t k, int64_t dil, int64_t extent) {
  const int64_t start = out_index * stride - pad;
  const int64_t first = start < 0 ? (-start + dil - 1) / dil : 0;
  const int64_t past = extent - 1 - start;  // the last tap t must have start + t·dil <= extent − 1
  const int64_t end = past < 0 ? 0 : (past / dil + 1 < k ? past / dil + 1 : k);
  return PoolTaps{start, first, end > first ? end : first};
}

// torch's rule for the running maximum: take v when it is greater or NaN.
template <class T> OX_HD bool takes_over(T v, T m) { return v > m || v != v; }

// Offset in the plane of the window's winner under torch's scan from its first tap inside the
// plane, −1 when no tap is inside. Branch-free: the first strict maximum of the ordered values,
// unless a NaN is present, then the last NaN (what the single scan with takes_over picks).
template <class T>
OX_HD int64_t window_argmax(const T* x, const PoolGeometry& g, const PoolTaps& r, const PoolTaps& c) {
  if (r.first == r.end || c.first == c.end) return -1;
  int64_t pos = (r.start + r.first * g.dh) * g.w + c.start + c.first * g.dw, nan_pos = -1;
  T m = x[pos];
  for (int64_t a = r.first; a < r.end; ++a) {
    const int64_t row = (r.start + a * g.dh) * g.w + c.start;
    for (int64_t b = c.first; b < c.end; ++b) {
      const int64_t q = row + b * g.dw;
      const T v = x[q];
      const bool greater = v > m;
      m = greater ? v : m;
      pos = greater ? q : pos;
      nan_pos = v != v ? q : nan_pos;
    }
  }
  return nan_pos >= 0 ? nan_pos : pos;
}

}  // namespace ox
