// Whole-step fused MLP training on the CPU (see fused.h). This file only
// orchestrates existing entry points: it has no per-ISA kernels, so all of it
// lives in the scalar build (the matrix work dispatches inside gemm/linear).
// The normalisation below is scalar code on purpose: compiled without FMA, each
// pixel gets the two float32 roundings DeviceBatches' mul_ then sub_ gives.
#include "fused.h"

#include "core/isa.h"

#if OX_ISA_IS_scalar
#include "core/checks.h"
#include "core/threading.h"
#include "linear.h"
#include "loss.h"

namespace ox {
namespace {

// The first `rows` rows of a buffer whose dim 0 is the batch.
View first_rows(const View& v, int64_t rows) {
  View r = v;
  r.shape[0] = rows;
  return r;
}

void check_buffer(const char* op, const char* what, int l, const View& v, const View& ref, int64_t rows,
                  int64_t cols) {
  const std::string arg = cat(what, "[", l, "]");
  check_like(op, arg.c_str(), v, "layer 0 weight", ref);
  check_writable(op, arg.c_str(), v);
  check_shape(op, arg.c_str(), v, {rows, cols});
}

void check_state(const char* op, const std::string& arg, const View& v, const View& param) {
  check_like(op, arg.c_str(), v, "its param", param);
  check_writable(op, arg.c_str(), v);
  if (v.numel() != param.numel())
    value_error(op, ": ", arg, " has shape ", shape_str(v), ", its param ", shape_str(param));
}

void check_step(const char* op, const std::string& arg, const View& s) {
  if (s.device != Device::cpu) type_error(op, ": ", arg, " must be a CPU tensor");
  check_dtype(op, arg.c_str(), s, {DType::f32, DType::f64});
  check_writable(op, arg.c_str(), s);
  if (s.numel() != 1) value_error(op, ": ", arg, " must hold one element, got shape ", shape_str(s));
}

// step ← step + 1, in the tensor's own dtype (as torch's `state_steps += 1`); returns the new count.
double bump_step(const View& s) {
  if (s.dtype == DType::f64) return *s.ptr<double>() += 1.0;
  return *s.ptr<float>() += 1.0f;
}

AdamTensor adam_tensor(const View& p, const View& g, const View& m, const View& v, const View& vmax,
                       bool amsgrad, double step) {
  AdamTensor t;
  t.param = p.data;
  t.grad = g.data;
  t.exp_avg = m.data;
  t.exp_avg_sq = v.data;
  t.max_exp_avg_sq = amsgrad ? vmax.data : nullptr;
  t.numel = p.numel();
  t.step = step;
  return t;
}

constexpr CrossEntropy kMeanCrossEntropy{Reduction::mean, 0.0, -100};

}  // namespace

void fused_mlp_check(const char* op, const FusedMlp& net) {
  if (net.layers < 1 || net.layers > kFusedMaxLayers)
    value_error(op, ": the network must have 1 to ", kFusedMaxLayers, " linear layers, got ", net.layers);
  const View& ref = net.layer[0].w;
  if (ref.device != Device::cpu) type_error(op, ": the fused trainer runs on the CPU only; the weights are on ",
                                            device_name(ref.device));
  check_dtype(op, "layer 0 weight", ref, {DType::f32});
  check_rank(op, "x", net.x, 2);
  const int64_t B = net.x.shape[0];
  int64_t features = net.x.shape[1];
  check_like(op, "x", net.x, "layer 0 weight", ref);
  check_writable(op, "x", net.x);
  check_shape(op, "target", net.target, {B});
  check_dtype(op, "target", net.target, {DType::i64});
  check_contiguous(op, "target", net.target);
  check_writable(op, "target", net.target);
  check_shape(op, "one", net.one, {});
  check_like(op, "one", net.one, "layer 0 weight", ref);
  for (int l = 0; l < net.layers; ++l) {
    const FusedLayer& L = net.layer[l];
    const std::string w = cat("layer ", l, " weight"), b = cat("layer ", l, " bias");
    check_like(op, w.c_str(), L.w, "layer 0 weight", ref);
    check_writable(op, w.c_str(), L.w);
    check_rank(op, w.c_str(), L.w, 2);
    const int64_t N = L.w.shape[0];
    if (L.w.shape[1] != features)
      value_error(op, ": ", w, " has shape ", shape_str(L.w), " but its input has ", features, " features");
    check_like(op, b.c_str(), L.b, "layer 0 weight", ref);
    check_writable(op, b.c_str(), L.b);
    check_shape(op, b.c_str(), L.b, {N});
    check_state(op, cat(w, " grad"), L.gw, L.w);
    check_state(op, cat(b, " grad"), L.gb, L.b);
    check_state(op, cat(w, " exp_avg"), L.m_w, L.w);
    check_state(op, cat(w, " exp_avg_sq"), L.v_w, L.w);
    check_state(op, cat(b, " exp_avg"), L.m_b, L.b);
    check_state(op, cat(b, " exp_avg_sq"), L.v_b, L.b);
    if (net.amsgrad) {
      check_state(op, cat(w, " max_exp_avg_sq"), L.vmax_w, L.w);
      check_state(op, cat(b, " max_exp_avg_sq"), L.vmax_b, L.b);
    }
    check_step(op, cat(w, " step"), L.step_w);
    check_step(op, cat(b, " step"), L.step_b);
    if (l == net.layers - 1 && L.act != Activation::none)
      value_error(op, ": the last layer gives the logits and must have no activation");
    check_buffer(op, "h", l, net.h[l], ref, B, N);
    check_buffer(op, "dh", l, net.dh[l], ref, B, N);
    features = N;
  }
}

void fused_mlp_step_cpu(const FusedMlp& net, const View& x_batch, const View& target, const AdamHyper& hyper,
                        float* loss) {
  const int n = net.layers;
  const int64_t R = x_batch.shape[0];
  View h[kFusedMaxLayers];
  // Forward: h_l = act_l(h_{l−1} W_lᵀ + b_l).
  const View* input = &x_batch;
  for (int l = 0; l < n; ++l) {
    const FusedLayer& L = net.layer[l];
    h[l] = first_rows(net.h[l], R);
    linear_cpu(*input, L.w, &L.b, L.act, h[l]);
    input = &h[l];
  }
  // Loss and its gradient w.r.t. the logits (d loss / d loss = 1, as loss.backward() seeds it).
  View loss_view = net.one;
  loss_view.data = loss;
  cross_entropy_forward_cpu(h[n - 1], target, kMeanCrossEntropy, loss_view);
  View dh = first_rows(net.dh[n - 1], R);
  cross_entropy_backward_cpu(net.one, h[n - 1], target, kMeanCrossEntropy, dh);
  // Backward: dz_l = dh_l ⊙ act'_l(h_l); dh_{l−1} = dz_l W_l, dW_l = dz_lᵀ h_{l−1}, db_l = Σ_rows dz_l.
  for (int l = n - 1; l >= 0; --l) {
    const FusedLayer& L = net.layer[l];
    const View& in = l > 0 ? h[l - 1] : x_batch;
    View dprev;
    if (l > 0) dprev = first_rows(net.dh[l - 1], R);
    linear_backward_cpu(dh, in, L.w, &h[l], L.act, l > 0 ? &dprev : nullptr, &L.gw, &L.gb);
    dh = dprev;
  }
  // Adam over every weight and bias, each step count incremented first.
  AdamTensor tensors[2 * kFusedMaxLayers];
  for (int l = 0; l < n; ++l) {
    const FusedLayer& L = net.layer[l];
    tensors[2 * l] = adam_tensor(L.w, L.gw, L.m_w, L.v_w, L.vmax_w, net.amsgrad, bump_step(L.step_w));
    tensors[2 * l + 1] = adam_tensor(L.b, L.gb, L.m_b, L.v_b, L.vmax_b, net.amsgrad, bump_step(L.step_b));
  }
  adam_step_cpu(tensors, 2 * n, DType::f32, hyper, nullptr);
}

void fused_mlp_epoch_cpu(const FusedMlp& net, const View& images, const View& labels, const View& order,
                         const View& scale, const View& shift, int64_t batch, const AdamHyper& hyper,
                         const View& losses) {
  const int64_t K = net.x.shape[1];
  const int64_t channels = scale.numel();
  const int64_t per_channel = K / channels;
  const int64_t n = order.numel();
  const uint8_t* pixels = images.ptr<uint8_t>();
  const int64_t* label = labels.ptr<int64_t>();
  const int64_t* perm = order.ptr<int64_t>();
  const float* sc = scale.ptr<float>();
  const float* sh = shift.ptr<float>();
  float* x = net.x.ptr<float>();
  int64_t* t = net.target.ptr<int64_t>();
  float* out = losses.ptr<float>();
  for (int64_t s = 0, start = 0; start < n; ++s, start += batch) {
    const int64_t R = n - start < batch ? n - start : batch;
    // Gather and normalise: x[r, k] = float(pixel) · scale_c − shift_c (two float32 roundings).
    parallel_for(R, 8, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t i = perm[start + r];
        const uint8_t* src = pixels + i * K;
        float* dst = x + r * K;
        for (int64_t c = 0; c < channels; ++c) {
          const float a = sc[c], b = sh[c];
          for (int64_t k = c * per_channel; k < (c + 1) * per_channel; ++k) {
            const float scaled = static_cast<float>(src[k]) * a;
            dst[k] = scaled - b;
          }
        }
        t[r] = label[i];
      }
    });
    fused_mlp_step_cpu(net, first_rows(net.x, R), first_rows(net.target, R), hyper, out + s);
  }
}

}  // namespace ox
#endif  // OX_ISA_IS_scalar
