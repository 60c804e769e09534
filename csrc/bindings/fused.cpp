// Binding of the fused MLP trainer: _C.FusedMlp caches the Views of the
// parameters, grads, Adam state and workspace (torch tensors Python owns and
// keeps alive; this object also holds references) once, and each step or epoch
// is then a single call that releases the GIL.
#include "fused.h"

#include <string>
#include <vector>

#include "bindings/python.h"
#include "core/private_copy.h"
#include "conv.h"
#include "loss.h"

namespace ox {
namespace {

const char* kOp = "FusedTrainer";

View tensor_view(const py::handle& obj, const std::string& what) {
  View v;
  py::object keep;
  if (!load_view(obj, v, keep))
    type_error(kOp, ": ", what, " must be a tensor, got ", py::str(py::type::of(obj)).cast<std::string>());
  if (keep) type_error(kOp, ": ", what, " must be a torch tensor");  // DLPack views would need keep-alive
  return v;
}

// A contiguous (R, ...) batch seen as (R, features).
View as_rows(const View& v, int64_t features, const char* arg) {
  check_contiguous(kOp, arg, v);
  if (v.ndim < 1) value_error(kOp, ": argument '", arg, "' must have a batch dimension, got shape ", shape_str(v));
  if (v.numel() != v.shape[0] * features)
    value_error(kOp, ": argument '", arg, "' must hold ", features, " values per sample, got shape ", shape_str(v));
  View r = v;
  r.ndim = 2;
  r.shape[1] = features;
  r.strides[0] = features;
  r.strides[1] = 1;
  return r;
}

int64_t per_sample(const View& v) {
  int64_t n = 1;
  for (int i = 1; i < v.ndim; ++i) n *= v.shape[i];
  return n;
}

// (p, grad, exp_avg, exp_avg_sq, max_exp_avg_sq or None, step) starting at t[first].
FusedParam param_of(const py::tuple& t, size_t first, const std::string& name, bool amsgrad) {
  FusedParam q;
  q.p = tensor_view(t[first], name);
  q.g = tensor_view(t[first + 1], name + " grad");
  q.m = tensor_view(t[first + 2], name + " exp_avg");
  q.v = tensor_view(t[first + 3], name + " exp_avg_sq");
  if (amsgrad) q.vmax = tensor_view(t[first + 4], name + " max_exp_avg_sq");
  q.step = tensor_view(t[first + 5], name + " step");
  return q;
}

class FusedMlpNative {
 public:
  // layers: one tuple per Linear, (w, b, grad_w, grad_b, exp_avg_w, exp_avg_sq_w, exp_avg_b, exp_avg_sq_b,
  // max_exp_avg_sq_w or None, max_exp_avg_sq_b or None, step_w, step_b, activation 0/1/2).
  // convs: one tuple per conv block, (w, grad_w, exp_avg_w, exp_avg_sq_w, max_w or None, step_w, the same 6
  // for b, sh, sw, ph, pw, pool, out, idx, dout), x then being (B, C, H, W).
  FusedMlpNative(py::list convs, py::list layers, py::list h, py::list dh, py::object x, py::object target,
                 py::object one, bool amsgrad)
      : keep_(py::make_tuple(convs, layers, h, dh, x, target, one)) {
    const int nc = static_cast<int>(convs.size());
    if (nc > kFusedMaxConvs) value_error(kOp, ": at most ", kFusedMaxConvs, " conv blocks, got ", nc);
    net_.convs = nc;
    View in = tensor_view(x, "x buffer");
    for (int c = 0; c < nc; ++c) {
      py::tuple t = convs[c].cast<py::tuple>();
      if (t.size() != 20) value_error(kOp, ": conv tuples have 20 entries");
      FusedConv& cv = net_.conv[c];
      const std::string p = cat("conv ", c, " ");
      cv.w = param_of(t, 0, p + "weight", amsgrad);
      cv.b = param_of(t, 6, p + "bias", amsgrad);
      cv.pool = t[16].cast<int64_t>();
      cv.out = tensor_view(t[17], p + "out");
      cv.idx = tensor_view(t[18], p + "indices");
      cv.dout = tensor_view(t[19], p + "dout");
      cv.shape = conv2d_check(kOp, in, cv.w.p, &cv.b.p, t[12].cast<int64_t>(), t[13].cast<int64_t>(),
                              t[14].cast<int64_t>(), t[15].cast<int64_t>());
      in = cv.out;
    }
    const int n = static_cast<int>(layers.size());
    if (n < 1 || n > kFusedMaxLayers)
      value_error(kOp, ": the network must have 1 to ", kFusedMaxLayers, " linear layers, got ", n);
    if (static_cast<int>(h.size()) != n || static_cast<int>(dh.size()) != n)
      value_error(kOp, ": one h and one dh buffer per layer expected");
    net_.layers = n;
    net_.amsgrad = amsgrad;
    for (int l = 0; l < n; ++l) {
      py::tuple t = layers[l].cast<py::tuple>();
      if (t.size() != 13) value_error(kOp, ": layer tuples have 13 entries");
      FusedLayer& L = net_.layer[l];
      const std::string p = cat("layer ", l, " ");
      L.w = tensor_view(t[0], p + "weight");
      L.b = tensor_view(t[1], p + "bias");
      L.gw = tensor_view(t[2], p + "weight grad");
      L.gb = tensor_view(t[3], p + "bias grad");
      L.m_w = tensor_view(t[4], p + "weight exp_avg");
      L.v_w = tensor_view(t[5], p + "weight exp_avg_sq");
      L.m_b = tensor_view(t[6], p + "bias exp_avg");
      L.v_b = tensor_view(t[7], p + "bias exp_avg_sq");
      if (amsgrad) {
        L.vmax_w = tensor_view(t[8], p + "weight max_exp_avg_sq");
        L.vmax_b = tensor_view(t[9], p + "bias max_exp_avg_sq");
      }
      L.step_w = tensor_view(t[10], p + "weight step");
      L.step_b = tensor_view(t[11], p + "bias step");
      const int act = t[12].cast<int>();
      if (act < 0 || act > 2) value_error(kOp, ": activation code must be 0, 1 or 2, got ", act);
      L.act = static_cast<Activation>(act);
      net_.h[l] = tensor_view(h[l], cat("h[", l, "]"));
      net_.dh[l] = tensor_view(dh[l], cat("dh[", l, "]"));
    }
    net_.x = tensor_view(x, "x buffer");
    net_.target = tensor_view(target, "target buffer");
    net_.one = tensor_view(one, "one");
    fused_mlp_check(kOp, net_);
  }

  // The update the next step / epoch applies.
  void set_adam(double lr, double beta1, double beta2, double eps, double weight_decay, bool decoupled,
                bool maximize) {
    const AdamHyper h = make_adam_hyper(lr, beta1, beta2, eps, weight_decay, decoupled, net_.amsgrad, maximize);
    adam_check_hyper(kOp, h);
    adam_ = h;
    update_ = FusedUpdate{&adam_, nullptr};
  }
  void set_sgd(double lr, double momentum, double dampening, double weight_decay, bool nesterov, bool maximize,
               bool first) {
    if (!(lr >= 0)) value_error(kOp, ": SGD lr must be >= 0, got ", lr);
    if (!(momentum >= 0)) value_error(kOp, ": SGD momentum must be >= 0, got ", momentum);
    if (!(weight_decay >= 0)) value_error(kOp, ": SGD weight_decay must be >= 0, got ", weight_decay);
    if (nesterov && (momentum <= 0 || dampening != 0))
      value_error(kOp, ": Nesterov momentum requires a momentum and zero dampening");
    sgd_.lr = lr;
    sgd_.momentum = momentum;
    sgd_.dampening = dampening;
    sgd_.weight_decay = weight_decay;
    sgd_.nesterov = nesterov;
    sgd_.maximize = maximize;
    sgd_.first = first;
    update_ = FusedUpdate{nullptr, &sgd_};
  }

  // One step on a batch; the loss goes to loss_out (a float32 element).
  void step(View x, View caller_target, View loss_out) {
    const PrivateCopy target_copy(caller_target);
    const View& target = target_copy.view();
    const View xr = check_step(x, target);
    const View& ref = net_.layer[0].w;
    check_like(kOp, "loss_out", loss_out, "the weights", ref);
    check_writable(kOp, "loss_out", loss_out);
    if (loss_out.numel() != 1) value_error(kOp, ": loss_out must hold one element");
    py::gil_scoped_release release;
    run_step(xr, target, loss_out.ptr<float>());
  }

  // Checks a batch (x (R, ...), target (R,)) and returns x seen as (R, features).
  View check_step(const View& x, const View& target) const {
    check_update();
    const View& ref = net_.layer[0].w;
    check_like(kOp, "x", x, "the weights", ref);
    const View xr = as_rows(x, per_sample(net_.x), "x");
    const int64_t R = xr.shape[0];
    check_shape(kOp, "target", target, {R});
    if (R > net_.x.shape[0])
      value_error(kOp, ": batch of ", R, " rows exceeds the workspace (", net_.x.shape[0], " rows)");
    View logits = net_.h[net_.layers - 1];
    logits.shape[0] = R;
    const CrossEntropy ce{Reduction::mean, 0.0, -100};
    cross_entropy_check(kOp, logits, target, ce);  // dtype, shape and class range of the targets
    return xr;
  }

  void run_step(const View& xr, const View& target, float* loss) const {
    fused_mlp_step_cpu(net_, xr, target, update_, loss);
  }

  // One epoch over images[order] in batches of `batch` rows (≤ the workspace's); losses (steps,) float32.
  void epoch(View images, View caller_labels, View caller_order, View scale, View shift, View losses,
             int64_t batch) {
    const PrivateCopy labels_copy(caller_labels), order_copy(caller_order);
    const View &labels = labels_copy.view(), &order = order_copy.view();
    const View img = check_epoch(images, labels, order, scale, shift, losses, batch);
    py::gil_scoped_release release;
    run_epoch(img, labels, order, scale, shift, losses, batch);
  }

  // Checks an epoch's arguments (labels in range for every entry of order) and returns the images as
  // (N, features).
  View check_epoch(const View& images, const View& labels, const View& order, const View& scale,
                   const View& shift, const View& losses, int64_t batch) const {
    check_update();
    const int64_t K = per_sample(net_.x);
    check_dtype(kOp, "images", images, {DType::u8});
    if (images.device != Device::cpu) type_error(kOp, ": images must be on the CPU");
    const View img = as_rows(images, K, "images");
    const int64_t N = img.shape[0];
    // Everything the host code reads must be CPU memory (a CUDA array here would be read by the CPU).
    check_same_device(kOp, "labels", labels, "images", images);
    check_same_device(kOp, "order", order, "images", images);
    check_same_device(kOp, "scale", scale, "images", images);
    check_dtype(kOp, "labels", labels, {DType::i64});
    check_shape(kOp, "labels", labels, {N});
    check_contiguous(kOp, "labels", labels);
    check_dtype(kOp, "order", order, {DType::i64});
    check_rank(kOp, "order", order, 1);
    check_contiguous(kOp, "order", order);
    check_dtype(kOp, "scale", scale, {DType::f32});
    check_rank(kOp, "scale", scale, 1);
    check_contiguous(kOp, "scale", scale);
    const int64_t C = scale.numel();
    if (C < 1 || K % C != 0) value_error(kOp, ": scale has ", C, " channels, which do not divide ", K, " features");
    check_like(kOp, "shift", shift, "scale", scale);
    check_shape(kOp, "shift", shift, {C});
    if (batch < 1 || batch > net_.x.shape[0])
      value_error(kOp, ": batch size must be in [1, ", net_.x.shape[0], "] (the workspace rows), got ", batch);
    const int64_t n = order.numel();
    const int64_t steps = (n + batch - 1) / batch;
    check_output(kOp, "losses", losses, net_.layer[0].w, {steps});
    const int64_t classes = net_.h[net_.layers - 1].shape[1];
    const int64_t* perm = order.ptr<int64_t>();
    const int64_t* lab = labels.ptr<int64_t>();
    for (int64_t i = 0; i < n; ++i) {
      if (perm[i] < 0 || perm[i] >= N) value_error(kOp, ": order[", i, "] = ", perm[i], " is outside [0, ", N, ")");
      const int64_t y = lab[perm[i]];
      if (y < 0 || y >= classes)
        value_error(kOp, ": labels[", perm[i], "] = ", y, " is outside [0, ", classes, ")");
    }
    return img;
  }

  void run_epoch(const View& img, const View& labels, const View& order, const View& scale, const View& shift,
                 const View& losses, int64_t batch) const {
    fused_mlp_epoch_cpu(net_, img, labels, order, scale, shift, batch, update_, losses);
  }

  int64_t rows() const { return net_.x.shape[0]; }

 private:
  void check_update() const {
    if (!update_.adam && !update_.sgd) value_error(kOp, ": set_adam or set_sgd must be called before a step");
  }

  py::object keep_;
  FusedMlp net_;
  AdamHyper adam_;
  SgdHyper sgd_;
  FusedUpdate update_;
};

const char* kParallelOp = "ParallelTrainer";

// Runs check(i) for every copy, rethrowing an argument error as "ParallelTrainer: model i: ...".
template <class F> void check_each(size_t count, F&& check) {
  for (size_t i = 0; i < count; ++i) {
    try {
      check(i);
    } catch (const ArgTypeError& e) {
      type_error(kParallelOp, ": model ", i, ": ", e.what());
    } catch (const ArgValueError& e) {
      value_error(kParallelOp, ": model ", i, ": ", e.what());
    }
  }
}

std::vector<FusedMlpNative*> natives_of(const py::list& nets) {
  std::vector<FusedMlpNative*> out;
  for (const py::handle& n : nets) out.push_back(n.cast<FusedMlpNative*>());
  if (out.empty()) value_error(kParallelOp, ": no models");
  return out;
}

// One step of every copy: copy i trains on xs[i], ys[i] and writes its loss to losses[i] ((M,) float32).
// Everything is checked before anything runs, so a bad argument leaves every copy untouched.
void parallel_step(py::list nets, py::list xs, py::list ys, View losses) {
  const std::vector<FusedMlpNative*> net = natives_of(nets);
  const size_t M = net.size();
  if (xs.size() != M || ys.size() != M) value_error(kParallelOp, ": one x and one y per model expected");
  std::vector<View> x(M), y(M);
  std::vector<PrivateCopy> y_copies;  // the targets' values are checked, then address rows
  y_copies.reserve(M);
  check_each(M, [&](size_t i) {
    x[i] = tensor_view(xs[i], "x");
    y[i] = y_copies.emplace_back(tensor_view(ys[i], "y")).view();
    x[i] = net[i]->check_step(x[i], y[i]);
  });
  check_dtype(kParallelOp, "losses", losses, {DType::f32});
  check_shape(kParallelOp, "losses", losses, {static_cast<int64_t>(M)});
  check_contiguous(kParallelOp, "losses", losses);
  check_writable(kParallelOp, "losses", losses);
  if (losses.device != Device::cpu) type_error(kParallelOp, ": losses must be on the CPU");
  float* out = losses.ptr<float>();
  py::gil_scoped_release release;
  fused_run_jobs(static_cast<int64_t>(M), [&](int64_t i) { net[i]->run_step(x[i], y[i], out + i); });
}

// One epoch of every copy on the same images and labels: copy i visits them in orders[i] (the same
// tensor for copies that share a shuffle) and writes its per-step losses to losses[i].
void parallel_epoch(py::list nets, View images, View caller_labels, py::list orders, View scale, View shift,
                    View losses, int64_t batch) {
  const PrivateCopy labels_copy(caller_labels);  // values checked, then used as indices
  const View& labels = labels_copy.view();
  const std::vector<FusedMlpNative*> net = natives_of(nets);
  const size_t M = net.size();
  if (orders.size() != M) value_error(kParallelOp, ": one order per model expected");
  check_rank(kParallelOp, "losses", losses, 2);
  check_contiguous(kParallelOp, "losses", losses);
  if (losses.shape[0] != static_cast<int64_t>(M))
    value_error(kParallelOp, ": losses must have one row per model, got shape ", shape_str(losses));
  std::vector<View> order(M), rows(M), img(M);
  std::vector<PrivateCopy> order_copies;
  order_copies.reserve(M);
  check_each(M, [&](size_t i) {
    order[i] = order_copies.emplace_back(tensor_view(orders[i], "order")).view();
    rows[i] = losses;
    rows[i].ndim = 1;
    rows[i].shape[0] = losses.shape[1];
    rows[i].strides[0] = losses.strides[1];
    rows[i].data = static_cast<char*>(losses.data) + i * losses.strides[0] * dtype_size(losses.dtype);
    img[i] = net[i]->check_epoch(images, labels, order[i], scale, shift, rows[i], batch);
  });
  py::gil_scoped_release release;
  fused_run_jobs(static_cast<int64_t>(M), [&](int64_t i) {
    net[i]->run_epoch(img[i], labels, order[i], scale, shift, rows[i], batch);
  });
}

}  // namespace

OX_BINDINGS(bind_fused) {
  py::class_<FusedMlpNative>(m, "FusedMlp")
      .def(py::init<py::list, py::list, py::list, py::list, py::object, py::object, py::object, bool>(),
           py::arg("convs"), py::arg("layers"),
           py::arg("h"), py::arg("dh"), py::arg("x"), py::arg("target"), py::arg("one"), py::arg("amsgrad"))
      .def("set_adam", &FusedMlpNative::set_adam, py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"),
           py::arg("weight_decay"), py::arg("decoupled"), py::arg("maximize"))
      .def("set_sgd", &FusedMlpNative::set_sgd, py::arg("lr"), py::arg("momentum"), py::arg("dampening"),
           py::arg("weight_decay"), py::arg("nesterov"), py::arg("maximize"), py::arg("first"))
      .def("step", &FusedMlpNative::step, py::arg("x"), py::arg("target"), py::arg("loss_out"))
      .def("epoch", &FusedMlpNative::epoch, py::arg("images"), py::arg("labels"), py::arg("order"),
           py::arg("scale"), py::arg("shift"), py::arg("losses"), py::arg("batch"))
      .def_property_readonly("rows", &FusedMlpNative::rows);
  m.def("fused_parallel_step", &parallel_step, py::arg("nets"), py::arg("xs"), py::arg("ys"), py::arg("losses"));
  m.def("fused_parallel_epoch", &parallel_epoch, py::arg("nets"), py::arg("images"), py::arg("labels"),
        py::arg("orders"), py::arg("scale"), py::arg("shift"), py::arg("losses"), py::arg("batch"));
}

}  // namespace ox
