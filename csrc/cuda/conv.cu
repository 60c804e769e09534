// conv2d and the fused conv → ReLU → max-pool block on CUDA (formulas in conv.h).
//
// Direct convolution, kept simple and deterministic (no atomics):
//  - forward / ∂L/∂x: one thread per (pixel, group of OBK channels), the OBK
//    channels in registers, so one input load feeds OBK FMAs; the weights a warp
//    reads are uniform across it (one broadcast transaction, cached). The channel
//    groups are threads of their own so that small layers still fill the GPU;
//  - ∂L/∂w, ∂L/∂b: a block per (image group, kWbOut output channels, one (c, kh)
//    row of taps) sums over its images' output pixels with the products in
//    registers, in a fixed order; then the groups' partial sums are added in group
//    order (conv2d_grad_groups_cuda in conv.h); ∂L/∂b is summed by the c = kh = 0
//    blocks as they read g anyway;
//  - fused: a thread computes the P×P conv outputs of one pooled pixel and keeps
//    only the running maximum (torch's rule) and its window position, so the
//    forward never writes the full-resolution tensor. The backward first expands
//    the pooled gradient into a dense ∂L/∂y in its workspace (one cheap pass), then
//    runs the conv2d backward kernels on it (on the H200, reading ∂L/∂y through the
//    positions in every tap made those kernels 1.7–4× slower than the dense reads).
#include <cstdint>
#include <type_traits>

#include "conv.h"
#include "core/cuda_check.h"
#include "core/errors.h"

namespace ox {
namespace {

constexpr int OBK = 4;            // output (∂L/∂x: input) channels per thread
constexpr int kThreads = 64;      // small blocks: the course layers have few threads to spread over the SMs
constexpr int kReduceThreads = 256;
constexpr int kWbOut = kConvGradOutChannels;  // ∂L/∂w: output channels per block
constexpr int kWbTaps = 5;                    // ∂L/∂w: kernel columns per pass (the course's 5)

inline unsigned grid_for(int64_t total) {
  int64_t blocks = (total + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < (1 << 20) ? blocks : (1 << 20));  // grid-stride loops cover the rest
}

// The fused block's ∂L/∂y, dense: gy[n,o,i,j] = gout[n,o,p,q] where (i, j) is the saved
// position idx[n,o,p,q] in the window (p, q) = (i/P, j/P), else 0 (another position, no
// gradient through ReLU, or a row/column the floor-mode pooling drops).
template <class T>
__global__ void unpool_grad_kernel(ConvShape s, int P, const T* __restrict__ gout, const uint8_t* __restrict__ idx,
                                   T* __restrict__ gy) {
  const int64_t PH = s.OH / P, PW = s.OW / P, total = s.N * s.O * s.OH * s.OW;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t j = e % s.OW, rest = e / s.OW, i = rest % s.OH, no = rest / s.OH;
    const int64_t p = i / P, q = j / P;
    T v = 0;
    if (p < PH && q < PW) {
      const int64_t cell = (no * PH + p) * PW + q;
      if (idx[cell] == (i - p * P) * P + (j - q * P)) v = gout[cell];  // kPoolNoGrad matches no position
    }
    gy[e] = v;
  }
}

// acc[j] += Σ_{c,kh,kw} x[n, c, oh·sh − ph + kh, ow·sw − pw + kw] · w[o0 + j, c, kh, kw]
// KT > 0: the kernel is KT × KT, its taps unrolled (the course's 5 × 5 and 3 × 3); 0: any size.
// Channels o0 + j ≥ O read channel O − 1's weights; the caller does not store them.
template <int KT, class T>
__device__ void conv_point(const ConvShape& s, const T* __restrict__ xn, const T* __restrict__ w, int64_t o0,
                           int64_t oh, int64_t ow, T (&acc)[OBK]) {
  const int64_t KH = KT ? KT : s.KH, KW = KT ? KT : s.KW, taps = KH * KW, wstride = s.C * taps;
  const int64_t ih0 = oh * s.sh - s.ph, iw0 = ow * s.sw - s.pw;
  const bool inside = ih0 >= 0 && iw0 >= 0 && ih0 + KH <= s.H && iw0 + KW <= s.W;  // no tap in the padding
  const T* wj[OBK];
#pragma unroll
  for (int j = 0; j < OBK; ++j) wj[j] = w + (o0 + j < s.O ? o0 + j : s.O - 1) * wstride;
  for (int64_t c = 0; c < s.C; ++c) {
    const T* xc = xn + (c * s.H + ih0) * s.W + iw0;  // the window's corner (dereferenced only inside the image)
#pragma unroll
    for (int64_t kh = 0; kh < KH; ++kh)
#pragma unroll
      for (int64_t kw = 0; kw < KW; ++kw) {
        const bool ok = inside || (ih0 + kh >= 0 && ih0 + kh < s.H && iw0 + kw >= 0 && iw0 + kw < s.W);
        const T xv = ok ? xc[kh * s.W + kw] : T(0);
        const int64_t tap = c * taps + kh * KW + kw;
#pragma unroll
        for (int j = 0; j < OBK; ++j) acc[j] += xv * wj[j][tap];
      }
  }
}

// Thread t ↦ (image n, channel group o0 / OBK, pixel): pixels fastest, for coalesced loads and stores.
struct GroupedIndex {
  int64_t n, o0, pix;
  __device__ GroupedIndex(int64_t t, int64_t groups, int64_t plane) {
    const int64_t per_image = groups * plane, r = t % per_image;
    n = t / per_image;
    o0 = (r / plane) * OBK;
    pix = r % plane;
  }
};

__host__ __device__ inline int64_t channel_groups(int64_t channels) { return ceil_div(channels, OBK); }

template <int KT, class T>
__global__ void forward_kernel(ConvShape s, const T* __restrict__ x, const T* __restrict__ w,
                               const T* __restrict__ b, T* __restrict__ y) {
  const int64_t plane = s.OH * s.OW, groups = channel_groups(s.O), total = s.N * groups * plane;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const GroupedIndex at(t, groups, plane);
    const int64_t oh = at.pix / s.OW, ow = at.pix % s.OW, o0 = at.o0;
    T acc[OBK];
#pragma unroll
    for (int j = 0; j < OBK; ++j) acc[j] = (b && o0 + j < s.O) ? b[o0 + j] : T(0);
    conv_point<KT>(s, x + at.n * s.C * s.H * s.W, w, o0, oh, ow, acc);
#pragma unroll
    for (int j = 0; j < OBK; ++j)
      if (o0 + j < s.O) y[(at.n * s.O + o0 + j) * plane + at.pix] = acc[j];
  }
}

template <int KT, class T>
__global__ void fused_forward_kernel(ConvShape s, int64_t P, const T* __restrict__ x, const T* __restrict__ w,
                                     const T* __restrict__ b, T* __restrict__ out, uint8_t* __restrict__ idx) {
  const int64_t PH = s.OH / P, PW = s.OW / P, plane = PH * PW, groups = channel_groups(s.O);
  const int64_t total = s.N * groups * plane;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const GroupedIndex at(t, groups, plane);
    const int64_t p = at.pix / PW, q = at.pix % PW, o0 = at.o0;
    const T* xn = x + at.n * s.C * s.H * s.W;
    T mx[OBK];
    int kbest[OBK];
#pragma unroll
    for (int j = 0; j < OBK; ++j) {
      mx[j] = -INFINITY;
      kbest[j] = 0;
    }
    for (int64_t r = 0; r < P; ++r)
      for (int64_t c = 0; c < P; ++c) {
        T acc[OBK];
#pragma unroll
        for (int j = 0; j < OBK; ++j) acc[j] = (b && o0 + j < s.O) ? b[o0 + j] : T(0);
        conv_point<KT>(s, xn, w, o0, p * P + r, q * P + c, acc);
#pragma unroll
        for (int j = 0; j < OBK; ++j) {
          const T z = acc[j] <= T(0) ? T(0) : acc[j];  // relu; NaN stays NaN
          if (z > mx[j] || isnan(z)) {  // torch's max_pool2d rule: first max wins, NaN propagates
            mx[j] = z;
            kbest[j] = static_cast<int>(r * P + c);
          }
        }
      }
#pragma unroll
    for (int j = 0; j < OBK; ++j)
      if (o0 + j < s.O) {
        const int64_t e = (at.n * s.O + o0 + j) * plane + at.pix;
        out[e] = mx[j];
        idx[e] = mx[j] <= T(0) ? kPoolNoGrad : static_cast<uint8_t>(kbest[j]);
      }
  }
}

// ∂L/∂x[n,c,h,v] = Σ_{o,kh,kw} g[n,o,i,j]·w[o,c,kh,kw] with i·sh = h + ph − kh, j·sw = v + pw − kw.
// Only taps with kh ≡ h + ph (mod sh) contribute: they are visited directly, i
// stepping down by one per tap, so the loops hold no division. KT > 0: a KT × KT kernel
// with unit strides, its taps unrolled; 0: any size and stride.
template <int KT, class T>
__global__ void grad_x_kernel(ConvShape s, const T* __restrict__ gy, const T* __restrict__ w, T* __restrict__ gx) {
  const int64_t plane = s.H * s.W, groups = channel_groups(s.C), total = s.N * groups * plane;
  const int64_t KH = KT ? KT : s.KH, KW = KT ? KT : s.KW, sh = KT ? 1 : s.sh, sw = KT ? 1 : s.sw;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const GroupedIndex at(t, groups, plane);
    const int64_t n = at.n, c0 = at.o0, h = at.pix / s.W, v = at.pix % s.W;
    const int64_t kh0 = (h + s.ph) % sh, i0 = (h + s.ph - kh0) / sh;
    const int64_t kw0 = (v + s.pw) % sw, j0 = (v + s.pw - kw0) / sw;
    const T* wj[OBK];  // channels c0 + j ≥ C read channel C − 1's weights and are not stored
#pragma unroll
    for (int j = 0; j < OBK; ++j) wj[j] = w + (c0 + j < s.C ? c0 + j : s.C - 1) * KH * KW;
    T acc[OBK];
#pragma unroll
    for (int j = 0; j < OBK; ++j) acc[j] = T(0);
    for (int64_t o = 0; o < s.O; ++o) {
      const int64_t wo = o * s.C * KH * KW;
      int64_t i = i0;
#pragma unroll
      for (int64_t kh = kh0; kh < KH; kh += sh, --i) {
        if (i < 0 || i >= s.OH) continue;
        int64_t jj = j0;
#pragma unroll
        for (int64_t kw = kw0; kw < KW; kw += sw, --jj) {
          if (jj < 0 || jj >= s.OW) continue;
          const T g = gy[((n * s.O + o) * s.OH + i) * s.OW + jj];
#pragma unroll
          for (int j = 0; j < OBK; ++j) acc[j] += g * wj[j][wo + kh * KW + kw];
        }
      }
    }
#pragma unroll
    for (int j = 0; j < OBK; ++j)
      if (c0 + j < s.C) gx[(n * s.C + c0 + j) * plane + at.pix] = acc[j];
  }
}

// The ∂L/∂w, ∂L/∂b sums of conv2d_grad_groups_cuda's image groups: with one group the
// blocks write the gradients directly, else row g of the workspace, laid out as
// [O·C·KH·KW weight sums | O bias sums]. A null gw / gb is not wanted.
template <class T> struct GradSums {
  T *gw, *gb, *ws;
  int64_t groups;
};

// Block (group, c, kh, output-channel block o0) sums over the images [n0, n1) of its group
// and all their output pixels (i, j)
//   ∂L/∂w[o, c, kh, kw] += g[n,o,i,j] · x[n, c, i·sh − ph + kh, j·sw − pw + kw]
// for its kWbOut channels o and every kw (kWbTaps at a time, in registers), and the blocks
// with c = kh = 0 also ∂L/∂b[o] += g[n,o,i,j] (without ∂L/∂w only those blocks run).
// Thread t visits the flat (image, pixel) indices t, t + kReduceThreads, ...: neighbouring
// threads read neighbouring pixels of g and x, and each g value feeds kWbTaps FMAs, each
// x value kWbOut. 32-bit pixel arithmetic: the caller bounds the planes.
template <class T>
__global__ void __launch_bounds__(kReduceThreads)
    grad_wb_kernel(ConvShape s, const T* __restrict__ gy, const T* __restrict__ x, GradSums<T> out) {
  constexpr int kSums = kWbOut * kWbTaps + kWbOut;  // [o][kw] weight sums, then the bias sums
  __shared__ T warp_sums[kReduceThreads / 32][kSums];
  const bool want_w = out.gw != nullptr;
  const int64_t out_blocks = ceil_div(s.O, kWbOut), rows = want_w ? s.C * s.KH : 1;
  const int64_t unit = blockIdx.x, o0 = unit % out_blocks * kWbOut, row_unit = unit / out_blocks % rows;
  const int64_t group = unit / out_blocks / rows, c = row_unit / s.KH, kh = row_unit % s.KH;
  const bool sum_bias = out.gb != nullptr && row_unit == 0;
  const int64_t n0 = group * s.N / out.groups, n1 = (group + 1) * s.N / out.groups;
  const int plane = static_cast<int>(s.OH * s.OW), OW = static_cast<int>(s.OW);
  const int tid = static_cast<int>(threadIdx.x), dpix = kReduceThreads % plane;
  const int64_t dn = kReduceThreads / plane, taps = s.C * s.KH * s.KW;
  T* row = out.groups == 1 ? nullptr : out.ws + group * (s.O * taps + s.O);

  for (int64_t kw0 = 0; kw0 < (want_w ? s.KW : 1); kw0 += kWbTaps) {
    const bool bias_pass = sum_bias && kw0 == 0;
    T acc[kWbOut][kWbTaps], acc_b[kWbOut];
#pragma unroll
    for (int o = 0; o < kWbOut; ++o) {
      acc_b[o] = 0;
#pragma unroll
      for (int k = 0; k < kWbTaps; ++k) acc[o][k] = 0;
    }
    int64_t n = n0 + tid / plane;
    int pix = tid % plane;
    while (n < n1) {
      const int i = pix / OW, j = pix - i * OW;
      T gv[kWbOut];
#pragma unroll
      for (int o = 0; o < kWbOut; ++o) gv[o] = o0 + o < s.O ? gy[((n * s.O + o0 + o) * s.OH + i) * s.OW + j] : T(0);
      if (bias_pass)
#pragma unroll
        for (int o = 0; o < kWbOut; ++o) acc_b[o] += gv[o];
      const int64_t ih = i * s.sh - s.ph + kh;
      if (want_w && ih >= 0 && ih < s.H) {
        const T* xrow = x + ((n * s.C + c) * s.H + ih) * s.W;
        const int64_t iw0 = j * s.sw - s.pw + kw0;
        T xv[kWbTaps];
#pragma unroll
        for (int k = 0; k < kWbTaps; ++k) {
          const int64_t iw = iw0 + k;
          xv[k] = kw0 + k < s.KW && iw >= 0 && iw < s.W ? xrow[iw] : T(0);
        }
#pragma unroll
        for (int o = 0; o < kWbOut; ++o)
#pragma unroll
          for (int k = 0; k < kWbTaps; ++k) acc[o][k] += gv[o] * xv[k];
      }
      n += dn;
      pix += dpix;
      if (pix >= plane) {
        pix -= plane;
        ++n;
      }
    }
    // Σ over the block: a shuffle tree in each warp, then the warps in order (thread t sums entry t).
#pragma unroll
    for (int o = 0; o < kWbOut; ++o) {
#pragma unroll
      for (int k = 0; k < kWbTaps; ++k)
        for (int off = 16; off > 0; off /= 2) acc[o][k] += __shfl_down_sync(0xffffffffu, acc[o][k], off);
      for (int off = 16; off > 0; off /= 2) acc_b[o] += __shfl_down_sync(0xffffffffu, acc_b[o], off);
    }
    __syncthreads();  // the previous pass has read warp_sums
    if (tid % 32 == 0)
#pragma unroll
      for (int o = 0; o < kWbOut; ++o) {
#pragma unroll
        for (int k = 0; k < kWbTaps; ++k) warp_sums[tid / 32][o * kWbTaps + k] = acc[o][k];
        warp_sums[tid / 32][kWbOut * kWbTaps + o] = acc_b[o];
      }
    __syncthreads();
    if (tid < kSums) {
      T sum = 0;
      for (int w = 0; w < kReduceThreads / 32; ++w) sum += warp_sums[w][tid];
      if (tid < kWbOut * kWbTaps) {
        const int64_t o = o0 + tid / kWbTaps, kw = kw0 + tid % kWbTaps;
        if (want_w && o < s.O && kw < s.KW) (row ? row : out.gw)[((o * s.C + c) * s.KH + kh) * s.KW + kw] = sum;
      } else {
        const int64_t o = o0 + tid - kWbOut * kWbTaps;
        if (bias_pass && o < s.O) (row ? row + s.O * taps : out.gb)[o] = sum;
      }
    }
  }
}

// ∂L/∂w, ∂L/∂b = the groups' partial sums added in group order.
template <class T> __global__ void sum_groups_kernel(ConvShape s, GradSums<T> out) {
  const int64_t weights = s.O * s.C * s.KH * s.KW, row = weights + s.O;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < row;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    T* dst = e < weights ? out.gw : out.gb;
    if (!dst) continue;
    T sum = 0;
    for (int64_t g = 0; g < out.groups; ++g) sum += out.ws[g * row + e];
    dst[e < weights ? e : e - weights] = sum;
  }
}

// f(std::integral_constant<int, KT>) with KT = the kernel's size when it is one of the unrolled
// sizes (5 × 5 or 3 × 3; with unit strides when `unit_stride` asks for them), else KT = 0.
template <class F> void with_kernel_size(const ConvShape& s, bool unit_stride, F&& f) {
  const bool strides_ok = !unit_stride || (s.sh == 1 && s.sw == 1);
  if (strides_ok && s.KH == 5 && s.KW == 5) f(std::integral_constant<int, 5>());
  else if (strides_ok && s.KH == 3 && s.KW == 3) f(std::integral_constant<int, 3>());
  else f(std::integral_constant<int, 0>());
}

template <class T>
void backward(const ConvShape& s, const T* gy, const T* x, const T* w, T* gx, T* gw, T* gb, T* ws, cudaStream_t st) {
  if (s.OH * s.OW > INT32_MAX)
    value_error("conv2d_backward (CUDA): output planes of 2^31 pixels or more are not supported");
  if (gx && s.N * s.C * s.H * s.W > 0) {
    with_kernel_size(s, true, [&](auto kt) {
      grad_x_kernel<decltype(kt)::value, T><<<grid_for(s.N * channel_groups(s.C) * s.H * s.W), kThreads, 0, st>>>(
          s, gy, w, gx);
    });
    cuda_check_launch("conv2d_backward (grad_x)");
  }
  const int64_t weights = s.O * s.C * s.KH * s.KW;
  GradSums<T> out{weights > 0 ? gw : nullptr, s.O > 0 ? gb : nullptr, ws, conv2d_grad_groups_cuda(s)};
  if (!out.gw && !out.gb) return;
  if (s.N * s.OH * s.OW == 0) {  // nothing to sum: zero gradients
    if (out.gw) cuda_check(cudaMemsetAsync(out.gw, 0, weights * sizeof(T), st), "conv2d_backward (grad_weight)");
    if (out.gb) cuda_check(cudaMemsetAsync(out.gb, 0, s.O * sizeof(T), st), "conv2d_backward (grad_bias)");
    return;
  }
  const int64_t blocks = out.groups * (out.gw ? conv2d_grad_blocks_per_group_cuda(s) : ceil_div(s.O, kConvGradOutChannels));
  if (blocks > INT32_MAX) value_error("conv2d_backward (CUDA): ", blocks, " weight-gradient blocks, 2^31 or more are not supported");
  grad_wb_kernel<T><<<static_cast<unsigned>(blocks), kReduceThreads, 0, st>>>(s, gy, x, out);
  cuda_check_launch("conv2d_backward (grad_weight, grad_bias)");
  if (out.groups > 1) {
    sum_groups_kernel<T><<<grid_for(weights + s.O), kThreads, 0, st>>>(s, out);
    cuda_check_launch("conv2d_backward (group sums)");
  }
}

template <class T> T* opt_ptr(const View* v) { return v ? v->ptr<T>() : nullptr; }

}  // namespace

void conv2d_forward_cuda(const ConvShape& s, const View& x, const View& w, const View* b, const View& y,
                         uintptr_t stream) {
  const int64_t total = s.N * channel_groups(s.O) * s.OH * s.OW;
  if (total == 0) return;
  auto launch = [&](auto zero) {
    using T = decltype(zero);
    with_kernel_size(s, false, [&](auto kt) {
      forward_kernel<decltype(kt)::value, T><<<grid_for(total), kThreads, 0, as_stream(stream)>>>(
          s, x.ptr<T>(), w.ptr<T>(), opt_ptr<T>(b), y.ptr<T>());
    });
  };
  if (x.dtype == DType::f64) launch(0.0);
  else launch(0.0f);
  cuda_check_launch("conv2d");
}

void conv2d_backward_cuda(const ConvShape& s, const View& gy, const View& x, const View& w, const View* gx,
                          const View* gw, const View* gb, const View* workspace, uintptr_t stream) {
  if (x.dtype == DType::f64)
    backward(s, gy.ptr<double>(), x.ptr<double>(), w.ptr<double>(), opt_ptr<double>(gx),
             opt_ptr<double>(gw), opt_ptr<double>(gb), opt_ptr<double>(workspace), as_stream(stream));
  else
    backward(s, gy.ptr<float>(), x.ptr<float>(), w.ptr<float>(), opt_ptr<float>(gx),
             opt_ptr<float>(gw), opt_ptr<float>(gb), opt_ptr<float>(workspace), as_stream(stream));
}

void conv2d_relu_maxpool2d_forward_cuda(const ConvShape& s, int64_t pool, const View& x, const View& w,
                                        const View* b, const View& out, const View& idx, uintptr_t stream) {
  const int64_t total = s.N * channel_groups(s.O) * (s.OH / pool) * (s.OW / pool);
  if (total == 0) return;
  auto launch = [&](auto zero) {
    using T = decltype(zero);
    with_kernel_size(s, false, [&](auto kt) {
      fused_forward_kernel<decltype(kt)::value, T><<<grid_for(total), kThreads, 0, as_stream(stream)>>>(
          s, pool, x.ptr<T>(), w.ptr<T>(), opt_ptr<T>(b), out.ptr<T>(), idx.ptr<uint8_t>());
    });
  };
  if (x.dtype == DType::f64) launch(0.0);
  else launch(0.0f);
  cuda_check_launch("conv2d_relu_maxpool2d");
}

void conv2d_relu_maxpool2d_backward_cuda(const ConvShape& s, int64_t pool, const View& gout, const View& idx,
                                         const View& x, const View& w, const View* gx, const View* gw,
                                         const View* gb, const View* workspace, uintptr_t stream) {
  if (!gx && !gw && !gb) return;
  const int64_t dense = s.N * s.O * s.OH * s.OW;  // ∂L/∂y at the front of the workspace, group sums after it
  auto run = [&](auto zero) {
    using T = decltype(zero);
    T* gy = dense > 0 ? workspace->ptr<T>() : nullptr;
    if (dense > 0) {
      unpool_grad_kernel<T><<<grid_for(dense), kThreads, 0, as_stream(stream)>>>(
          s, static_cast<int>(pool), gout.ptr<T>(), idx.ptr<uint8_t>(), gy);
      cuda_check_launch("conv2d_relu_maxpool2d_backward (unpool)");
    }
    backward(s, static_cast<const T*>(gy), x.ptr<T>(), w.ptr<T>(), opt_ptr<T>(gx), opt_ptr<T>(gw), opt_ptr<T>(gb),
             dense > 0 ? gy + dense : nullptr, as_stream(stream));
  };
  if (x.dtype == DType::f64) run(0.0);
  else run(0.0f);
}

}  // namespace ox
