// Whole-step fused training of a multi-layer perceptron (optionally behind up to
// two fused conv → ReLU → max-pool blocks, the course's LeNet) on the CPU: forward,
// softmax cross-entropy (mean), backward and the Adam / AdamW update in one
// native call, composed from the existing entry points (linear_cpu,
// linear_backward_cpu, cross_entropy_*_cpu, adam_step_cpu) — no new matrix code.
//
// Layer l (0 ≤ l < L): h_l = act_l(h_{l−1} W_lᵀ + b_l), h_{−1} = x (rows R, K_0 features),
// act_{L−1} = none (logits). loss = mean_i CE(h_{L−1}[i], t_i).
// Backward: dlogits = ∂loss/∂h_{L−1}; for l = L−1 … 0:
//   linear_backward(dh_l, h_{l−1}, W_l, y = h_l, act_l) → dh_{l−1} (not for l = 0), dW_l, db_l
// (act'_l is taken from the saved output h_l, so the pre-activations are never stored).
// Conv blocks in front (block c: out_c = maxpool_P(relu(conv(out_{c−1}, Wc) + bc)), out_{−1} = x
// as (R, C, H, W), the MLP's input is the last block's output flattened) run forward before
// layer 0 and backward after it, through conv2d_relu_maxpool2d_{forward,backward}_cpu.
// Then one Adam step over every W_l, b_l with each tensor's step count incremented first.
// (Without conv blocks, layer 0's forward, weight gradient and update run split by rows of
// W_0, each thread owning one range throughout: see owner_split in cpu/fused.cpp.)
//
// Every buffer is memory Python owns (torch tensors), handed over once as Views.
#pragma once
#include <cstdint>

#include "adam.h"
#include "conv.h"
#include "core/view.h"
#include "gemm.h"

namespace ox {

constexpr int kFusedMaxLayers = 8;
constexpr int kFusedMaxConvs = 4;

// The Adam-updated tensors of one parameter and its state.
struct FusedParam {
  View p, g;        // the parameter and its .grad (written, not accumulated)
  View m, v, vmax;  // exp_avg, exp_avg_sq, max_exp_avg_sq (amsgrad only)
  View step;        // step count: CPU scalar, float32 or float64
};

struct FusedConv {
  FusedParam w, b;         // (O, C, KH, KW), (O,)
  ConvShape shape;         // N = the workspace rows
  int64_t pool = 2;
  View out, idx, dout;     // (B, O, OH/P, OW/P): block output (float32), pool indices (uint8), its gradient
};

struct FusedLayer {
  View w, b;      // (N, K), (N,) float32, contiguous: the model's parameters
  View gw, gb;    // their .grad tensors (written, not accumulated)
  View m_w, v_w, m_b, v_b;          // Adam exp_avg / exp_avg_sq of w and b
  View vmax_w, vmax_b;              // max_exp_avg_sq (amsgrad only)
  View step_w, step_b;              // step counts: CPU scalars, float32 or float64
  Activation act = Activation::none;
};

struct FusedMlp {
  int convs = 0;
  FusedConv conv[kFusedMaxConvs];
  int layers = 0;
  FusedLayer layer[kFusedMaxLayers];
  View h[kFusedMaxLayers];   // (B, N_l) outputs of each layer (the last one holds the logits)
  View dh[kFusedMaxLayers];  // (B, N_l) gradients of each output
  View x, target;            // (B, K_0) float32 ((B, C, H, W) with convs) and (B,) int64: the epoch's batch buffers
  View one;                  // () float32: the template of the loss view (shape, dtype, device)
  bool amsgrad = false;
};

// SGD with momentum as torch.optim.SGD (single-tensor path), per element:
//   g ← −g (maximize);  g ← g + λθ (weight decay);
//   b ← g on the first step, else b ← β b + (1 − τ) g  (momentum β ≠ 0, dampening τ);
//   g ← g + β b (nesterov) or b;   θ ← θ − lr · g.
// The momentum buffer b is the layer's `m` (exp_avg slot); v and step are not used.
struct SgdHyper {
  double lr = 1e-3, momentum = 0, dampening = 0, weight_decay = 0;
  bool nesterov = false, maximize = false;
  bool first = false;  // the buffers are fresh: b ← g
};

// The update of a step: Adam/AdamW (adam non-null) or SGD (sgd non-null).
struct FusedUpdate {
  const AdamHyper* adam = nullptr;
  const SgdHyper* sgd = nullptr;
};

// Validates shapes, dtypes, devices (CPU), contiguity and chaining of the
// layers and the workspace (B = x.shape[0] rows at most). `op` names the caller.
void fused_mlp_check(const char* op, const FusedMlp& net);

// One training step on rows [0, R) of x_batch (R, K_0) (or (R, C, H, W) with convs) and target (R,): writes
// the loss to `loss` (a float32 element), the grads, and updates the params and
// Adam state. R ≤ the workspace's B.
void fused_mlp_step_cpu(const FusedMlp& net, const View& x_batch, const View& target, const FusedUpdate& update,
                        float* loss);

// One epoch: for each batch of `batch` consecutive entries of `order` (the last
// may be smaller), gathers its images from `images` (N, K_0) uint8, normalises
// them, x = pixel · scale[c] − shift[c] with channel c = k / (K_0 / C) (in two
// float32 roundings, as oxkernels.data.DeviceBatches does), gathers the labels
// and runs fused_mlp_step_cpu; losses[s] gets step s's loss (SGD's `first` holds for step 0 only).
void fused_mlp_epoch_cpu(const FusedMlp& net, const View& images, const View& labels, const View& order,
                         const View& scale, const View& shift, int64_t batch, const FusedUpdate& update,
                         const View& losses);

// Many networks at once (ParallelTrainer): job(i) trains network i, 0 ≤ i < count, with
// networks taken one at a time from a shared counter by the pool's threads, so each runs
// on one thread and its kernels' own parallel_for calls run serially inside it (the pool
// is busy). That is exact — the same bits as training each network alone — because every
// kernel's summation order is fixed by the shapes, never by the thread count (gemm splits
// M or N only and blocks K by K alone; cross-entropy and conv weight-gradient partials
// are per fixed block, combined in block order). With count < 2 or one thread the jobs
// run one after another, each free to use the pool. The first exception a job throws is
// rethrown once every thread has stopped (parallel_for's rule; the thread whose job threw
// takes no further job). Jobs must not share any buffer they write.
void fused_run_jobs(int64_t count, void (*job)(void* ctx, int64_t i), void* ctx);

template <class F> void fused_run_jobs(int64_t count, F&& f) {
  auto thunk = [](void* ctx, int64_t i) { (*static_cast<F*>(ctx))(i); };
  fused_run_jobs(count, thunk, &f);
}

}  // namespace ox
