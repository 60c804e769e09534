// Fused Adam / AdamW on CUDA (formula in adam.h): a multi-tensor kernel.
//
// The tensors of a group travel in the kernel's parameter block (pointers,
// sizes, steps: up to kMaxTensors per launch, so a usual group is one launch;
// nothing is copied to the device, which keeps the step capturable in a CUDA
// graph). Each tensor is cut into chunks of kChunk elements; block b finds its
// (tensor, chunk) by binary search over the chunk prefix sums. Threads handle
// 4 consecutive elements per iteration, with 16-byte (float32) / 8-byte
// (bf16, fp16) vector accesses when the tensor's pointers allow.
//
// Step counts on the device (capturable): a first tiny launch increments them
// (unless found_inf), then the main kernel reads them. Bias corrections are
// computed per block in double from the step count and lr (host values or
// device scalars), then rounded to float like the CPU path.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>

#include "adam.h"
#include "core/checks.h"
#include "core/cuda_check.h"

namespace ox {
namespace {

constexpr int kMaxTensors = 40;    // parameter block ~3.4 kB, under the classic 4 kB limit
constexpr int kThreads = 256;
constexpr int kVec = 4;            // elements per thread per iteration
constexpr int64_t kChunk = 4096;   // elements per block (4 iterations of 256 × 4)

struct AdamLaunch {
  int count;
  void* param[kMaxTensors];
  void* grad[kMaxTensors];
  float* exp_avg[kMaxTensors];
  float* exp_avg_sq[kMaxTensors];
  float* max_exp_avg_sq[kMaxTensors];
  int64_t numel[kMaxTensors];
  int64_t chunk_begin[kMaxTensors + 1];  // prefix sums of the chunk counts
  double step[kMaxTensors];               // host step count (after increment), when step_device is null
  float* step_device[kMaxTensors];
  unsigned char vector_ok[kMaxTensors];   // pointers aligned for vector access
};

struct AdamScalars {
  double lr_host, weight_decay_d;
  const float* lr_device;
  const float* grad_scale;
  const float* found_inf;
  double beta1, beta2;
  float lerp_coeff, beta2_f, one_minus_beta2, eps, weight_decay;
  bool lerp_from_grad, l2, decoupled, amsgrad, maximize;
};

__device__ inline float to_float(float x) { return x; }
__device__ inline float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ inline float to_float(__half x) { return __half2float(x); }
template <class P> __device__ inline P from_float(float x);
template <> __device__ inline float from_float<float>(float x) { return x; }
template <> __device__ inline __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <> __device__ inline __half from_float<__half>(float x) { return __float2half_rn(x); }

// 4 values of type P moved as one 16-byte (float) or 8-byte (16-bit types) access.
template <class P> struct alignas(sizeof(P) * kVec) Pack { P v[kVec]; };

struct BlockConstants {
  float step_size, bc2_sqrt, decay_factor;
};

// The element formula (adam.h), float math; updates theta/m/v/vmax and g (when scaled).
__device__ inline void adam_element(float& theta, float& g, float& m, float& v, float& vmax, const AdamScalars& s,
                                    const BlockConstants& c, float scale) {
  if (s.grad_scale) g = g / scale;
  float gm = s.maximize ? -g : g;
  if (s.l2) gm = gm + theta * s.weight_decay;
  if (s.decoupled) theta = theta * c.decay_factor;
  const float diff = gm - m;
  m = fmaf(s.lerp_coeff, diff, s.lerp_from_grad ? gm : m);
  v = v * s.beta2_f + (s.one_minus_beta2 * gm) * gm;
  float vhat = v;
  if (s.amsgrad) {
    vhat = fmaxf(vmax, v);
    vmax = vhat;
  }
  const float denom = sqrtf(vhat) / c.bc2_sqrt + s.eps;
  theta = theta - (c.step_size * m) / denom;
}

__global__ void increment_steps_kernel(AdamLaunch L, const float* found_inf) {
  if (found_inf && *found_inf != 0.0f) return;
  for (int k = threadIdx.x; k < L.count; k += blockDim.x)
    if (L.step_device[k]) *L.step_device[k] += 1.0f;
}

template <class P>
__global__ void __launch_bounds__(kThreads) adam_kernel(AdamLaunch L, AdamScalars s) {
  if (s.found_inf && *s.found_inf != 0.0f) return;
  // This block's tensor: chunk_begin[k] <= blockIdx.x < chunk_begin[k + 1].
  const int64_t chunk = blockIdx.x;
  int lo = 0, hi = L.count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (L.chunk_begin[mid] <= chunk) lo = mid;
    else hi = mid - 1;
  }
  const int k = lo;
  const int64_t n = L.numel[k];
  const int64_t base = (chunk - L.chunk_begin[k]) * kChunk;
  const int64_t end = min(n, base + kChunk);

  // Step-dependent scalars in double, as torch computes them on the host; once per block.
  __shared__ BlockConstants shared_c;
  if (threadIdx.x == 0) {
    const double t = L.step_device[k] ? static_cast<double>(*L.step_device[k]) : L.step[k];
    const double lr = s.lr_device ? static_cast<double>(*s.lr_device) : s.lr_host;
    shared_c.step_size = static_cast<float>(lr / (1.0 - pow(s.beta1, t)));
    shared_c.bc2_sqrt = static_cast<float>(sqrt(1.0 - pow(s.beta2, t)));
    shared_c.decay_factor = static_cast<float>(1.0 - lr * s.weight_decay_d);
  }
  __syncthreads();
  const BlockConstants c = shared_c;
  const float scale = s.grad_scale ? *s.grad_scale : 1.0f;

  P* param = static_cast<P*>(L.param[k]);
  P* grad = static_cast<P*>(L.grad[k]);
  float* m = L.exp_avg[k];
  float* v = L.exp_avg_sq[k];
  float* vmax = L.max_exp_avg_sq[k];
  const bool vector_ok = L.vector_ok[k];

  for (int64_t i = base + static_cast<int64_t>(threadIdx.x) * kVec; i < end; i += kThreads * kVec) {
    if (vector_ok && i + kVec <= end) {
      Pack<P> pp = *reinterpret_cast<const Pack<P>*>(param + i);
      Pack<P> gp = *reinterpret_cast<const Pack<P>*>(grad + i);
      float4 m4 = *reinterpret_cast<const float4*>(m + i);
      float4 v4 = *reinterpret_cast<const float4*>(v + i);
      float4 x4 = s.amsgrad ? *reinterpret_cast<const float4*>(vmax + i) : make_float4(0, 0, 0, 0);
      float mv[kVec] = {m4.x, m4.y, m4.z, m4.w}, vv[kVec] = {v4.x, v4.y, v4.z, v4.w};
      float xv[kVec] = {x4.x, x4.y, x4.z, x4.w};
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        float theta = to_float(pp.v[j]), g = to_float(gp.v[j]);
        adam_element(theta, g, mv[j], vv[j], xv[j], s, c, scale);
        pp.v[j] = from_float<P>(theta);
        gp.v[j] = from_float<P>(g);
      }
      *reinterpret_cast<Pack<P>*>(param + i) = pp;
      if (s.grad_scale) *reinterpret_cast<Pack<P>*>(grad + i) = gp;
      *reinterpret_cast<float4*>(m + i) = make_float4(mv[0], mv[1], mv[2], mv[3]);
      *reinterpret_cast<float4*>(v + i) = make_float4(vv[0], vv[1], vv[2], vv[3]);
      if (s.amsgrad) *reinterpret_cast<float4*>(vmax + i) = make_float4(xv[0], xv[1], xv[2], xv[3]);
    } else {
      for (int64_t e = i; e < i + kVec && e < end; ++e) {
        float theta = to_float(param[e]), g = to_float(grad[e]), mm = m[e], vv = v[e];
        float xx = s.amsgrad ? vmax[e] : 0.0f;
        adam_element(theta, g, mm, vv, xx, s, c, scale);
        param[e] = from_float<P>(theta);
        if (s.grad_scale) grad[e] = from_float<P>(g);
        m[e] = mm;
        v[e] = vv;
        if (s.amsgrad) vmax[e] = xx;
      }
    }
  }
}

bool aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

template <class P>
void launch_all(const AdamTensor* tensors, int64_t count, const AdamScalars& s, cudaStream_t stream) {
  for (int64_t first = 0; first < count; first += kMaxTensors) {
    AdamLaunch L{};
    L.count = static_cast<int>(std::min<int64_t>(kMaxTensors, count - first));
    L.chunk_begin[0] = 0;
    bool any_device_step = false;
    for (int j = 0; j < L.count; ++j) {
      const AdamTensor& t = tensors[first + j];
      L.param[j] = t.param;
      L.grad[j] = t.grad;
      L.exp_avg[j] = static_cast<float*>(t.exp_avg);
      L.exp_avg_sq[j] = static_cast<float*>(t.exp_avg_sq);
      L.max_exp_avg_sq[j] = static_cast<float*>(t.max_exp_avg_sq);
      L.numel[j] = t.numel;
      L.chunk_begin[j + 1] = L.chunk_begin[j] + (t.numel + kChunk - 1) / kChunk;
      L.step[j] = t.step;
      L.step_device[j] = t.step_device;
      any_device_step |= t.step_device != nullptr;
      const size_t pv = sizeof(P) * kVec, sv = sizeof(float) * kVec;
      L.vector_ok[j] = aligned(t.param, pv) && aligned(t.grad, pv) && aligned(t.exp_avg, sv) &&
                       aligned(t.exp_avg_sq, sv) && (!s.amsgrad || aligned(t.max_exp_avg_sq, sv));
    }
    if (any_device_step) {
      increment_steps_kernel<<<1, 64, 0, stream>>>(L, s.found_inf);
      cuda_check_launch("adam_step (step count)");
    }
    const int64_t blocks = L.chunk_begin[L.count];
    if (blocks == 0) continue;
    if (blocks > 0x7fffffffLL) value_error("adam_step: too many elements for one launch");
    adam_kernel<P><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(L, s);
    cuda_check_launch("adam_step");
  }
}

}  // namespace

void adam_step_cuda(const AdamTensor* tensors, int64_t count, DType param_dtype, const AdamHyper& h,
                    const float* lr_device, const float* grad_scale, const float* found_inf, uintptr_t stream) {
  if (count <= 0) return;
  AdamScalars s{};
  s.lr_host = h.lr;
  s.weight_decay_d = h.weight_decay;
  s.lr_device = lr_device;
  s.grad_scale = grad_scale;
  s.found_inf = found_inf;
  s.beta1 = h.beta1;
  s.beta2 = h.beta2;
  const double w = 1.0 - h.beta1;  // torch's lerp weight
  s.lerp_from_grad = !(w < 0.5);
  s.lerp_coeff = static_cast<float>(s.lerp_from_grad ? w - 1.0 : w);
  s.beta2_f = static_cast<float>(h.beta2);
  s.one_minus_beta2 = static_cast<float>(1.0 - h.beta2);
  s.eps = static_cast<float>(h.eps);
  s.weight_decay = static_cast<float>(h.weight_decay);
  s.l2 = h.weight_decay != 0 && !h.decoupled;
  s.decoupled = h.weight_decay != 0 && h.decoupled;
  s.amsgrad = h.amsgrad;
  s.maximize = h.maximize;
  const cudaStream_t st = as_stream(stream);
  switch (param_dtype) {
    case DType::f32: launch_all<float>(tensors, count, s, st); break;
    case DType::bf16: launch_all<__nv_bfloat16>(tensors, count, s, st); break;
    case DType::f16: launch_all<__half>(tensors, count, s, st); break;
    default: type_error("adam_step: CUDA params must be float32, bfloat16 or float16, got ", dtype_name(param_dtype));
  }
}

}  // namespace ox
