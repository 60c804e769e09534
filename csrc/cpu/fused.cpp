// Whole-step fused MLP training on the CPU (see fused.h). This file only
// orchestrates existing entry points: it has no per-ISA kernels, so all of it
// lives in the scalar build (the matrix work dispatches inside gemm/linear).
// The normalisation below is scalar code on purpose: compiled without FMA, each
// pixel gets the two float32 roundings DeviceBatches' mul_ then sub_ gives.
#include "fused.h"

#include "core/isa.h"

#if OX_ISA_IS_scalar
#include <algorithm>
#include <atomic>

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

// Contiguous memory at v.data seen with like's shape, `rows` rows.
View shaped_like(const View& v, const View& like, int64_t rows) {
  View r = like;
  r.data = v.data;
  r.shape[0] = rows;
  int64_t stride = 1;
  for (int i = r.ndim - 1; i >= 0; --i) {
    r.strides[i] = stride;
    stride *= r.shape[i];
  }
  return r;
}

// Contiguous (rows, features) memory at v.data.
View as_matrix(const View& v, int64_t rows, int64_t features) {
  View r = v;
  r.ndim = 2;
  r.shape[0] = rows;
  r.shape[1] = features;
  r.strides[0] = features;
  r.strides[1] = 1;
  return r;
}

// Rows [r0, r1) of the contiguous memory at v.data seen as a (·, cols) matrix (a parameter's
// grad and state tensors are only checked to be contiguous with its element count).
View matrix_rows(const View& v, int64_t cols, int64_t r0, int64_t r1) {
  View r = as_matrix(v, r1 - r0, cols);
  r.data = static_cast<char*>(v.data) + r0 * cols * dtype_size(v.dtype);
  return r;
}

int64_t per_sample(const View& v) {
  int64_t n = 1;
  for (int i = 1; i < v.ndim; ++i) n *= v.shape[i];
  return n;
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

AdamTensor adam_tensor(const FusedParam& q, bool amsgrad) {
  return adam_tensor(q.p, q.g, q.m, q.v, q.vmax, amsgrad, bump_step(q.step));
}

void check_param(const char* op, const std::string& name, const FusedParam& q, const View& ref, bool amsgrad) {
  check_like(op, name.c_str(), q.p, "layer 0 weight", ref);
  check_writable(op, name.c_str(), q.p);
  check_state(op, cat(name, " grad"), q.g, q.p);
  check_state(op, cat(name, " exp_avg"), q.m, q.p);
  check_state(op, cat(name, " exp_avg_sq"), q.v, q.p);
  if (amsgrad) check_state(op, cat(name, " max_exp_avg_sq"), q.vmax, q.p);
  check_step(op, cat(name, " step"), q.step);
}

// θ ← θ − lr·g after torch.optim.SGD's momentum / nesterov / weight decay rules (fused.h), in float32
// with torch's roundings (alphas rounded to float, each tensor op rounded).
void sgd_update(const View& param, const View& grad, const View& buffer, const SgdHyper& h) {
  float* p = param.ptr<float>();
  const float* g = grad.ptr<float>();
  float* b = buffer.ptr<float>();
  const float lr = static_cast<float>(-h.lr), wd = static_cast<float>(h.weight_decay);
  const float beta = static_cast<float>(h.momentum), keep = static_cast<float>(1 - h.dampening);
  const bool momentum = h.momentum != 0, decay = h.weight_decay != 0;
  parallel_for(param.numel(), 4096, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      float d = h.maximize ? -g[i] : g[i];
      if (decay) d = d + wd * p[i];
      if (momentum) {
        float m = d;
        if (!h.first) {
          m = b[i] * beta;
          m = m + keep * d;
        }
        b[i] = m;
        d = h.nesterov ? d + beta * m : m;
      }
      p[i] = p[i] + lr * d;
    }
  });
}

// Every tensor's update but those of the weights in `skip` (layers whose weight update runs
// inside owner_split_backward).
void apply_update(const FusedMlp& net, const FusedUpdate& update, const bool* skip) {
  if (update.sgd) {
    for (int c = 0; c < net.convs; ++c) {
      sgd_update(net.conv[c].w.p, net.conv[c].w.g, net.conv[c].w.m, *update.sgd);
      sgd_update(net.conv[c].b.p, net.conv[c].b.g, net.conv[c].b.m, *update.sgd);
    }
    for (int l = 0; l < net.layers; ++l) {
      if (!skip[l]) sgd_update(net.layer[l].w, net.layer[l].gw, net.layer[l].m_w, *update.sgd);
      sgd_update(net.layer[l].b, net.layer[l].gb, net.layer[l].m_b, *update.sgd);
    }
    return;
  }
  AdamTensor tensors[2 * (kFusedMaxLayers + kFusedMaxConvs)];
  int count = 0;
  for (int c = 0; c < net.convs; ++c) {
    tensors[count++] = adam_tensor(net.conv[c].w, net.amsgrad);
    tensors[count++] = adam_tensor(net.conv[c].b, net.amsgrad);
  }
  for (int l = 0; l < net.layers; ++l) {
    const FusedLayer& L = net.layer[l];
    if (!skip[l]) tensors[count++] = adam_tensor(L.w, L.gw, L.m_w, L.v_w, L.vmax_w, net.amsgrad, bump_step(L.step_w));
    tensors[count++] = adam_tensor(L.b, L.gb, L.m_b, L.v_b, L.vmax_b, net.amsgrad, bump_step(L.step_b));
  }
  adam_step_cpu(tensors, count, DType::f32, *update.adam, nullptr);
}

constexpr CrossEntropy kMeanCrossEntropy{Reduction::mean, 0.0, -100};

// ---- the big layer, split by owner ---------------------------------------------------------
// The MLP's first layer holds almost all its weights (784·64 of 52,650). The forward product,
// the weight gradient and the update each stream all of W, dW and the Adam state (≈ 1 MB per
// step); run as three separately threaded passes, each splits the work its own way, so a thread
// mostly reads rows another core wrote last. Here each thread owns a fixed range of W's rows
// (output features) for the whole step and from step to step: it computes those columns of
// h, those rows of dW, and updates those rows, so they stay in its own L2. Each element is
// computed exactly as in the unsplit products (gemm.h: the summation order depends on K
// alone) and the update is element-wise, so the bits are the same.
constexpr int kMaxOwners = 64;
struct OwnerSplit {
  int parts = 0;
  int64_t bound[kMaxOwners + 1] = {};
};

// Row ranges of W (N rows) for the pool's threads, multiples of the product's column tile;
// parts = 0 when one thread, or the layer too small to be worth a split, would do.
OwnerSplit owner_split(int64_t N, int64_t K, int64_t R) {
  OwnerSplit split;
  int mr = 0, nr = 0;
  gemm_cpu_tile(&mr, &nr);
  const int64_t tiles = (N + nr - 1) / nr;
  int64_t parts = num_threads();
  if (parts > tiles) parts = tiles;
  if (parts > kMaxOwners) parts = kMaxOwners;
  if (parts < 2 || double(N) * double(K) * double(R) < kGemmThreadingWork) return split;
  const int64_t per = (tiles + parts - 1) / parts;
  split.parts = static_cast<int>((tiles + per - 1) / per);
  for (int p = 0; p <= split.parts; ++p) split.bound[p] = p * per * nr < N ? p * per * nr : N;
  return split;
}

// h = act(x Wᵀ + b), thread p computing columns bound[p] … bound[p+1] of h.
void owner_split_forward(const OwnerSplit& split, const View& x, const FusedLayer& L, const View& h) {
  const int64_t N = L.w.shape[0], K = L.w.shape[1];
  parallel_for(split.parts, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t f0 = split.bound[p], f1 = split.bound[p + 1];
      const View bias = matrix_rows(L.b, 1, f0, f1);
      GemmArgs g = linear_forward_gemm(x, matrix_rows(L.w, K, f0, f1), &bias, L.act, h);
      g.C = h.ptr<float>() + f0;
      g.c_rs = N;
      g.one_thread = true;
      gemm_cpu(g, DType::f32);
    }
  });
}

// dW = dzᵀ x (dz = dh ⊙ act'(h)) and the update of W, thread p taking rows bound[p] … bound[p+1].
void owner_split_backward(const OwnerSplit& split, const View& dh, const View& x, const FusedLayer& L,
                          const View& h, const FusedUpdate& update, bool amsgrad) {
  const int64_t N = L.w.shape[0], K = L.w.shape[1];
  const double step = update.adam ? bump_step(L.step_w) : 0;
  parallel_for(split.parts, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t f0 = split.bound[p], f1 = split.bound[p + 1];
      const View w = matrix_rows(L.w, K, f0, f1), gw = matrix_rows(L.gw, K, f0, f1),
                 m = matrix_rows(L.m_w, K, f0, f1);
      GemmArgs g = linear_grad_w_gemm(dh, x, &h, L.act, gw);
      g.A = dh.ptr<float>() + f0;
      g.a_cs = N;
      if (g.aux) g.aux = h.ptr<float>() + f0;
      g.one_thread = true;
      gemm_cpu(g, DType::f32);
      if (update.sgd) {
        sgd_update(w, gw, m, *update.sgd);  // nested: runs in this thread
        continue;
      }
      const View vmax = amsgrad ? matrix_rows(L.vmax_w, K, f0, f1) : View{};
      const AdamTensor t = adam_tensor(w, gw, m, matrix_rows(L.v_w, K, f0, f1), vmax, amsgrad, step);
      adam_step_cpu(&t, 1, DType::f32, *update.adam, nullptr);
    }
  });
}

}  // namespace

void fused_mlp_check(const char* op, const FusedMlp& net) {
  if (net.layers < 1 || net.layers > kFusedMaxLayers)
    value_error(op, ": the network must have 1 to ", kFusedMaxLayers, " linear layers, got ", net.layers);
  const View& ref = net.layer[0].w;
  if (ref.device != Device::cpu) type_error(op, ": the fused trainer runs on the CPU only; the weights are on ",
                                            device_name(ref.device));
  check_dtype(op, "layer 0 weight", ref, {DType::f32});
  if (net.convs < 0 || net.convs > kFusedMaxConvs)
    value_error(op, ": the network must have 0 to ", kFusedMaxConvs, " conv blocks, got ", net.convs);
  check_rank(op, "x", net.x, net.convs > 0 ? 4 : 2);
  const int64_t B = net.x.shape[0];
  for (int c = 0; c < net.convs; ++c) {
    const FusedConv& cv = net.conv[c];
    const std::string w = cat("conv ", c, " weight"), b = cat("conv ", c, " bias");
    check_param(op, w, cv.w, ref, net.amsgrad);
    check_param(op, b, cv.b, ref, net.amsgrad);
    const View& in = c == 0 ? net.x : net.conv[c - 1].out;
    const ConvShape s = conv2d_check(op, in, cv.w.p, &cv.b.p, cv.shape.sh, cv.shape.sw, cv.shape.ph, cv.shape.pw);
    if (cv.pool < 1 || s.OH / cv.pool < 1 || s.OW / cv.pool < 1)
      value_error(op, ": conv ", c, " pool ", cv.pool, " does not fit its ", s.OH, "x", s.OW, " output");
    if (s.N != cv.shape.N || s.OH != cv.shape.OH || s.OW != cv.shape.OW || s.C != cv.shape.C)
      value_error(op, ": conv ", c, " shape does not match its input");
    const std::initializer_list<int64_t> dims = {B, s.O, s.OH / cv.pool, s.OW / cv.pool};
    check_output(op, cat("conv ", c, " out").c_str(), cv.out, ref, dims);
    check_output(op, cat("conv ", c, " dout").c_str(), cv.dout, ref, dims);
    check_same_device(op, "conv indices", cv.idx, "layer 0 weight", ref);
    check_dtype(op, "conv indices", cv.idx, {DType::u8});
    check_shape(op, "conv indices", cv.idx, dims);
    check_contiguous(op, "conv indices", cv.idx);
    check_writable(op, "conv indices", cv.idx);
  }
  int64_t features = net.convs > 0 ? per_sample(net.conv[net.convs - 1].out) : net.x.shape[1];
  check_like(op, "x", net.x, "layer 0 weight", ref);
  check_writable(op, "x", net.x);
  check_same_device(op, "target", net.target, "layer 0 weight", ref);
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

void fused_mlp_step_cpu(const FusedMlp& net, const View& x_batch, const View& target, const FusedUpdate& update,
                        float* loss) {
  const int n = net.layers;
  const int64_t R = x_batch.shape[0];
  View h[kFusedMaxLayers];
  // Conv blocks: out_c = maxpool(relu(conv(out_{c−1}) + b_c)), keeping the pool indices for the backward.
  View x_img, conv_in[kFusedMaxConvs], conv_out[kFusedMaxConvs], conv_idx[kFusedMaxConvs];
  ConvShape conv_shape[kFusedMaxConvs];
  View mlp_in = x_batch;
  if (net.convs > 0) {
    x_img = shaped_like(x_batch, net.x, R);
    for (int c = 0; c < net.convs; ++c) {
      const FusedConv& cv = net.conv[c];
      conv_shape[c] = cv.shape;
      conv_shape[c].N = R;
      conv_in[c] = c == 0 ? x_img : conv_out[c - 1];
      conv_out[c] = first_rows(cv.out, R);
      conv_idx[c] = first_rows(cv.idx, R);
      conv2d_relu_maxpool2d_forward_cpu(conv_shape[c], cv.pool, conv_in[c], cv.w.p, &cv.b.p, conv_out[c],
                                        conv_idx[c]);
    }
    const View& last = conv_out[net.convs - 1];
    mlp_in = as_matrix(last, R, per_sample(last));
  }
  // Forward: h_l = act_l(h_{l−1} W_lᵀ + b_l).
  const View* input = &mlp_in;
  const OwnerSplit split = net.convs == 0 ? owner_split(net.layer[0].w.shape[0], mlp_in.shape[1], R) : OwnerSplit{};
  for (int l = 0; l < n; ++l) {
    const FusedLayer& L = net.layer[l];
    h[l] = first_rows(net.h[l], R);
    if (l == 0 && split.parts) owner_split_forward(split, *input, L, h[l]);
    else linear_cpu(*input, L.w, &L.b, L.act, h[l]);
    input = &h[l];
  }
  // Loss and, in the same pass, its gradient w.r.t. the logits for d loss / d loss = 1 (as
  // loss.backward() seeds it).
  View loss_view = net.one;
  loss_view.data = loss;
  View dh = first_rows(net.dh[n - 1], R);
  cross_entropy_forward_cpu(h[n - 1], target, kMeanCrossEntropy, loss_view, &dh);
  bool updated[kFusedMaxLayers] = {};  // weights already updated by owner_split_backward
  // Backward: dz_l = dh_l ⊙ act'_l(h_l); dh_{l−1} = dz_l W_l, dW_l = dz_lᵀ h_{l−1}, db_l = Σ_rows dz_l.
  for (int l = n - 1; l >= 0; --l) {
    const FusedLayer& L = net.layer[l];
    const View& in = l > 0 ? h[l - 1] : mlp_in;
    View dprev;
    if (l > 0) dprev = first_rows(net.dh[l - 1], R);
    else if (net.convs > 0) dprev = as_matrix(net.conv[net.convs - 1].dout, R, mlp_in.shape[1]);
    const bool want_dx = l > 0 || net.convs > 0;
    if (l == 0 && split.parts) {  // dx is not needed: conv-free
      linear_backward_cpu(dh, in, L.w, &h[l], L.act, nullptr, nullptr, &L.gb);
      owner_split_backward(split, dh, in, L, h[l], update, net.amsgrad);
      updated[0] = true;
    } else {
      linear_backward_cpu(dh, in, L.w, &h[l], L.act, want_dx ? &dprev : nullptr, &L.gw, &L.gb);
    }
    dh = dprev;
  }
  // Conv blocks backward: the gradient of block c's output is dout_c; the input gradient only for c > 0.
  for (int c = net.convs - 1; c >= 0; --c) {
    const FusedConv& cv = net.conv[c];
    const View gout = first_rows(cv.dout, R);
    View gin;
    if (c > 0) gin = first_rows(net.conv[c - 1].dout, R);
    conv2d_relu_maxpool2d_backward_cpu(conv_shape[c], cv.pool, gout, conv_idx[c], conv_in[c], cv.w.p,
                                       c > 0 ? &gin : nullptr, &cv.w.g, &cv.b.g);
  }
  // Adam over every weight and bias (each step count incremented first), or SGD.
  apply_update(net, update, updated);
}

void fused_mlp_epoch_cpu(const FusedMlp& net, const View& images, const View& labels, const View& order,
                         const View& scale, const View& shift, int64_t batch, const FusedUpdate& update,
                         const View& losses) {
  SgdHyper sgd = update.sgd ? *update.sgd : SgdHyper();
  const FusedUpdate each{update.adam, update.sgd ? &sgd : nullptr};
  const int64_t K = per_sample(net.x);
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
    fused_mlp_step_cpu(net, as_matrix(net.x, R, K), first_rows(net.target, R), each, out + s);
    sgd.first = false;
  }
}

void fused_run_jobs(int64_t count, void (*job)(void* ctx, int64_t i), void* ctx) {
  // One chunk per thread; each takes the next unstarted network until none is left, so a
  // thread the OS schedules late simply trains fewer of them (the caller's chunk may run
  // them all). parallel_for rethrows the first exception of any chunk in the caller.
  std::atomic<int64_t> next{0};
  parallel_for(std::min<int64_t>(num_threads(), count), 1, [&](int64_t, int64_t) {
    for (int64_t i = next.fetch_add(1); i < count; i = next.fetch_add(1)) job(ctx, i);
  });
}

}  // namespace ox
#endif  // OX_ISA_IS_scalar
