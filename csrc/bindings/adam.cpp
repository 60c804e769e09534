// Adam bindings: the standalone adam_step over lists of arrays, and AdamGroup,
// the cached form of one optimizer parameter group that oxkernels.optim uses
// so that a step crosses into C++ once and touches Python objects as little as
// possible.
#include "adam.h"

#include <string>
#include <vector>

#include "bindings/python.h"

namespace ox {
namespace {

void check_lengths(const char* op, size_t n, size_t grads, size_t exp_avgs, size_t exp_avg_sqs,
                   size_t max_exp_avg_sqs, bool amsgrad) {
  auto same = [&](const char* arg, size_t got) {
    if (got != n)
      value_error(op, ": argument '", arg, "' must hold one array per param (", n, "), got ", got);
  };
  same("grads", grads);
  same("exp_avgs", exp_avgs);
  same("exp_avg_sqs", exp_avg_sqs);
  if (amsgrad) same("max_exp_avg_sqs", max_exp_avg_sqs);
}

void run_step(const char* op, const std::vector<AdamTensor>& tensors, const View& first, const AdamHyper& h,
              const double* host_grad_scale, const View* lr_device, const View* grad_scale_device,
              const View* found_inf_device, uintptr_t stream) {
  if (first.device == Device::cuda) {
    OX_CUDA_CALL(op, first,
                 adam_step_cuda(tensors.data(), static_cast<int64_t>(tensors.size()), first.dtype, h,
                                lr_device ? lr_device->ptr<float>() : nullptr,
                                grad_scale_device ? grad_scale_device->ptr<float>() : nullptr,
                                found_inf_device ? found_inf_device->ptr<float>() : nullptr, stream));
  } else {
    adam_step_cpu(tensors.data(), static_cast<int64_t>(tensors.size()), first.dtype, h, host_grad_scale);
  }
}

void check_device_scalar(const char* op, const char* arg, const View& v, const View& ref) {
  check_same_device(op, arg, v, "params[0]", ref);
  check_dtype(op, arg, v, {DType::f32});
  if (v.numel() != 1) value_error(op, ": argument '", arg, "' must hold one element, got shape ", shape_str(v));
}

// The standalone op: every tensor at step t (already counted), nothing incremented.
void adam_step_lists(const std::vector<View>& params, const std::vector<View>& grads,
                     const std::vector<View>& exp_avgs, const std::vector<View>& exp_avg_sqs,
                     const std::vector<View>& max_exp_avg_sqs, double step, double lr, double beta1, double beta2,
                     double eps, double weight_decay, bool decoupled, bool amsgrad, bool maximize,
                     std::optional<double> grad_scale, uintptr_t stream) {
  const char* op = "adam_step";
  check_lengths(op, params.size(), grads.size(), exp_avgs.size(), exp_avg_sqs.size(), max_exp_avg_sqs.size(),
                amsgrad);
  const AdamHyper h = make_adam_hyper(lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad, maximize);
  adam_check_hyper(op, h);
  if (!(step >= 1)) value_error(op, ": argument 'step' must be >= 1 (the count including this step), got ", step);
  if (grad_scale && !(*grad_scale > 0)) value_error(op, ": argument 'grad_scale' must be > 0, got ", *grad_scale);
  if (params.empty()) return;
  const int64_t n = static_cast<int64_t>(params.size());
  adam_check(op, params.data(), grads.data(), exp_avgs.data(), exp_avg_sqs.data(),
             amsgrad ? max_exp_avg_sqs.data() : nullptr, n, amsgrad, grad_scale.has_value());
  std::vector<AdamTensor> tensors(n);
  for (int64_t i = 0; i < n; ++i) {
    AdamTensor& t = tensors[i];
    t.param = params[i].data;
    t.grad = grads[i].data;
    t.exp_avg = exp_avgs[i].data;
    t.exp_avg_sq = exp_avg_sqs[i].data;
    t.max_exp_avg_sq = amsgrad ? max_exp_avg_sqs[i].data : nullptr;
    t.numel = params[i].numel();
    t.step = step;
  }
  if (params[0].device == Device::cuda && grad_scale) {
    // The CUDA kernel takes the scale from device memory; the standalone op has it on the host.
    value_error(op, ": argument 'grad_scale' as a number is supported on the CPU only; "
                "on CUDA use oxkernels.optim.Adam with torch.amp.GradScaler");
  }
  const double* gs = opt(grad_scale);
  py::gil_scoped_release release;
  run_step(op, tensors, params[0], h, gs, nullptr, nullptr, nullptr, stream);
}

// ---------------------------------------------------------------------------
// AdamGroup: one param group of oxkernels.optim.Adam, validated once.
//
// Holds, per param, the param and its state dict, the state tensors (kept
// alive) and their Views. step() reads each param's .grad, checks that the
// param and state are still the ones cached (else returns kStale and touches
// nothing: Python rebuilds the group), increments the step counts and runs
// one native step over every param that has a grad.

constexpr int kDone = 0, kStale = 1;

struct Entry {
  py::object param, state;  // state: the param's dict in optimizer.state, or None before init
  py::object exp_avg, exp_avg_sq, max_exp_avg_sq, step;
  // The state tensors' storages: even if someone swaps a state tensor's .data,
  // the memory the cached Views point into stays alive (the step checks the
  // state dict entries by identity, not each tensor's data pointer).
  py::list storages;
  View param_view, exp_avg_view, exp_avg_sq_view, max_view, step_view;
  py::object param_dtype;           // the param's torch.dtype object (compared by identity)
  py::object last_grad;             // weak reference to the grad seen at the last step, and its data pointer
  void* last_grad_data = nullptr;
  bool has_state = false;
};

PyObject* str_exp_avg;
PyObject* str_exp_avg_sq;
PyObject* str_max_exp_avg_sq;
PyObject* str_step;
PyObject* str_grad;
PyObject* str_data_ptr;
PyObject* str_dtype;
PyObject* str_is_cuda;
PyObject* str_get_device;
PyObject* str_numel;
PyObject* str_is_contiguous;

void* data_ptr_of(PyObject* tensor) {
  PyObject* r = PyObject_CallMethodNoArgs(tensor, str_data_ptr);
  if (!r) throw py::error_already_set();
  void* p = PyLong_AsVoidPtr(r);
  Py_DECREF(r);
  return p;
}

View view_of(const py::handle& obj, const std::string& what) {
  View v;
  py::object keep;
  if (!load_view(obj, v, keep))
    type_error("Adam: ", what, " must be a tensor, got ", py::str(py::type::of(obj)).cast<std::string>());
  if (keep) type_error("Adam: ", what, " must be a torch tensor");  // DLPack views would need keep-alive
  return v;
}

class AdamGroup {
 public:
  // bump(list_of_params) marks in-place updates for autograd (torch._C._increment_version).
  // params is the group's own list and state_map the optimizer's state (param -> dict): a step
  // finds the group stale when either no longer holds what the group was built from.
  AdamGroup(py::list params, py::list states, bool amsgrad, py::object bump, py::object state_map)
      : amsgrad_(amsgrad), bump_(bump), params_(params), state_map_(state_map) {
    const char* op = "Adam";
    const size_t n = params.size();
    if (states.size() != n) value_error(op, ": one state per param expected");
    entries_.resize(n);
    for (size_t i = 0; i < n; ++i) {
      Entry& e = entries_[i];
      e.param = params[i];
      e.state = states[i];
      e.param_view = view_of(e.param, cat("params[", i, "]"));
      e.param_dtype = e.param.attr("dtype");
      if (e.state.is_none()) continue;
      e.has_state = true;
      py::dict st = e.state.cast<py::dict>();
      e.exp_avg = st["exp_avg"];
      e.exp_avg_sq = st["exp_avg_sq"];
      e.step = st["step"];
      e.exp_avg_view = view_of(e.exp_avg, cat("state exp_avg of params[", i, "]"));
      e.exp_avg_sq_view = view_of(e.exp_avg_sq, cat("state exp_avg_sq of params[", i, "]"));
      e.step_view = view_of(e.step, cat("state step of params[", i, "]"));
      if (amsgrad) {
        e.max_exp_avg_sq = st["max_exp_avg_sq"];
        e.max_view = view_of(e.max_exp_avg_sq, cat("state max_exp_avg_sq of params[", i, "]"));
      }
      for (const py::object* t : {&e.exp_avg, &e.exp_avg_sq, &e.step, &e.max_exp_avg_sq})
        if (*t && !t->is_none()) e.storages.append(t->attr("untyped_storage")());
      const View& p = e.param_view;
      const View* maxv = amsgrad ? &e.max_view : nullptr;
      // The grad is checked at each step; here it stands in as the param itself.
      adam_check(op, &p, &p, &e.exp_avg_view, &e.exp_avg_sq_view, maxv, 1, amsgrad, false);
      const View& s = e.step_view;
      const std::string arg = cat("state step of params[", i, "]");
      if (s.numel() != 1) value_error(op, ": ", arg, " must hold one element, got shape ", shape_str(s));
      if (s.device == Device::cuda) {
        check_same_device(op, arg.c_str(), s, "its param", p);
        check_dtype(op, arg.c_str(), s, {DType::f32});
      } else {
        check_dtype(op, arg.c_str(), s, {DType::f32, DType::f64});
      }
      if (!first_) first_ = &e;
      else check_same_device(op, cat("params[", i, "]").c_str(), p, "the first param", first_->param_view);
    }
  }

  // Returns kDone after a step (or a skipped one, found_inf), kStale when Python must rebuild the group.
  int step(double lr, double beta1, double beta2, double eps, double weight_decay, bool decoupled, bool amsgrad,
           bool maximize, std::optional<View> lr_device, std::optional<double> grad_scale,
           std::optional<View> grad_scale_device, std::optional<View> found_inf_device, uintptr_t stream) {
    const char* op = "Adam";
    if (amsgrad != amsgrad_) return kStale;
    // Per call, not members: two threads stepping one optimizer (a user's race on the params)
    // must not also share these while the GIL is released.
    std::vector<AdamTensor> tensors;
    std::vector<const View*> host_steps, param_views;
    tensors.reserve(entries_.size());
    host_steps.reserve(entries_.size());
    param_views.reserve(entries_.size());
    py::list updated;
    if (static_cast<size_t>(PyList_GET_SIZE(params_.ptr())) != entries_.size()) return kStale;
    for (size_t i = 0; i < entries_.size(); ++i) {
      Entry& e = entries_[i];
      PyObject* param = e.param.ptr();
      if (PyList_GET_ITEM(params_.ptr(), i) != param) return kStale;  // the group's list was edited
      if (!state_map_.is_none() &&  // the optimizer's state for param was cleared, removed or replaced
          PyDict_GetItem(state_map_.ptr(), param) != (e.has_state ? e.state.ptr() : nullptr))
        return kStale;
      py::object grad = py::reinterpret_steal<py::object>(PyObject_GetAttr(param, str_grad));
      if (!grad) throw py::error_already_set();
      if (data_ptr_of(param) != e.param_view.data) return kStale;  // p.data was replaced
      if (grad.is_none()) continue;
      if (!e.has_state) return kStale;  // first grad of this param: Python creates its state
      if (!same_state(e)) return kStale;
      void* grad_data = grad_pointer(e, grad, i);
      const View& p = e.param_view;
      AdamTensor t;
      t.param = p.data;
      t.grad = grad_data;
      t.exp_avg = e.exp_avg_view.data;
      t.exp_avg_sq = e.exp_avg_sq_view.data;
      t.max_exp_avg_sq = amsgrad ? e.max_view.data : nullptr;
      t.numel = p.numel();
      tensors.push_back(t);
      host_steps.push_back(&e.step_view);
      param_views.push_back(&e.param_view);
      updated.append(e.param);
    }
    if (tensors.empty()) return kDone;
    const AdamHyper h = make_adam_hyper(lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad, maximize);
    adam_check_hyper(op, h);
    const View& first = first_->param_view;
    if (lr_device) check_device_scalar(op, "lr", *lr_device, first);
    if (grad_scale_device) check_device_scalar(op, "grad_scale", *grad_scale_device, first);
    if (found_inf_device) check_device_scalar(op, "found_inf", *found_inf_device, first);
    // Step counts: host ones incremented here, device ones by the kernel.
    for (size_t k = 0; k < tensors.size(); ++k) {
      const View& s = *host_steps[k];
      if (s.device == Device::cuda) {
        tensors[k].step_device = s.ptr<float>();
      } else if (s.dtype == DType::f64) {
        tensors[k].step = (*s.ptr<double>() += 1.0);
      } else {
        tensors[k].step = (*s.ptr<float>() += 1.0f);
      }
    }
    const double* gs = opt(grad_scale);
    {
      py::gil_scoped_release release;
      // One native step per param dtype: a group may mix them (float32 and float64 params, as
      // torch's Adam allows); each tensor is updated in its own precision either way.
      std::vector<AdamTensor> same_dtype;
      std::vector<bool> done(tensors.size(), false);
      for (size_t k = 0; k < tensors.size(); ++k) {
        if (done[k]) continue;
        same_dtype.clear();
        for (size_t j = k; j < tensors.size(); ++j)
          if (!done[j] && param_views[j]->dtype == param_views[k]->dtype) {
            same_dtype.push_back(tensors[j]);
            done[j] = true;
          }
        run_step(op, same_dtype, *param_views[k], h, gs, opt(lr_device), opt(grad_scale_device),
                 opt(found_inf_device), stream);
      }
    }
    if (!bump_.is_none()) bump_(updated);
    return kDone;
  }

  size_t size() const { return entries_.size(); }

 private:
  // The grad's data pointer, validated against its param. A grad object seen at
  // the last step with the same data pointer needs nothing more (zero_grad(set_to_none=False));
  // a new one gets the cheap checks (dtype, device, size, contiguity: torch's
  // grad setter already enforces dtype, device and size), and anything odd
  // goes through the full View checks for a clear message.
  void* grad_pointer(Entry& e, const py::object& grad, size_t i) {
    PyObject* g = grad.ptr();
    void* data = data_ptr_or_null(g);
    if (data && e.last_grad && PyWeakref_GetObject(e.last_grad.ptr()) == g && data == e.last_grad_data) return data;
    if (data && fast_grad_ok(e, g)) {
      // A weak reference: holding the grad would keep it alive after zero_grad(set_to_none=True).
      e.last_grad = py::reinterpret_steal<py::object>(PyWeakref_NewRef(g, nullptr));
      if (!e.last_grad) PyErr_Clear();
      e.last_grad_data = data;
      return data;
    }
    PyErr_Clear();
    e.last_grad = py::object();
    full_grad_check(e, grad, i);  // throws with the reason
    return view_of(grad, cat("params[", i, "].grad")).data;
  }

  static void* data_ptr_or_null(PyObject* tensor) {
    PyObject* r = PyObject_CallMethodNoArgs(tensor, str_data_ptr);
    if (!r) {
      PyErr_Clear();
      return nullptr;
    }
    void* p = PyLong_AsVoidPtr(r);
    Py_DECREF(r);
    return p;
  }

  static bool fast_grad_ok(const Entry& e, PyObject* g) {
    // A row-major grad pairs element for element with a row-major param only; other dense
    // layouts (channels_last) take full_grad_check, which compares the strides.
    if (!e.param_view.is_contiguous()) return false;
    py::object dtype = py::reinterpret_steal<py::object>(PyObject_GetAttr(g, str_dtype));
    if (!dtype || dtype.ptr() != e.param_dtype.ptr()) return false;
    py::object is_cuda = py::reinterpret_steal<py::object>(PyObject_GetAttr(g, str_is_cuda));
    if (!is_cuda || (is_cuda.ptr() == Py_True) != (e.param_view.device == Device::cuda)) return false;
    if (e.param_view.device == Device::cuda) {
      py::object index = py::reinterpret_steal<py::object>(PyObject_CallMethodNoArgs(g, str_get_device));
      if (!index || PyLong_AsLong(index.ptr()) != e.param_view.device_index) return false;
    }
    py::object numel = py::reinterpret_steal<py::object>(PyObject_CallMethodNoArgs(g, str_numel));
    if (!numel || PyLong_AsLongLong(numel.ptr()) != e.param_view.numel()) return false;
    py::object contiguous = py::reinterpret_steal<py::object>(PyObject_CallMethodNoArgs(g, str_is_contiguous));
    return contiguous && contiguous.ptr() == Py_True;
  }

  void full_grad_check(const Entry& e, const py::object& grad, size_t i) const {
    const char* op = "Adam";
    const std::string arg = cat("params[", i, "].grad");
    if (PyObject_IsTrue(grad.attr("is_sparse").ptr()) == 1)
      type_error(op, ": ", arg, " is a sparse tensor; Adam does not support sparse gradients "
                 "(use torch.optim.SparseAdam)");
    View g = view_of(grad, arg);
    const View& p = e.param_view;
    check_same_device(op, arg.c_str(), g, "its param", p);
    check_same_dtype(op, arg.c_str(), g, "its param", p);
    if (g.numel() != p.numel()) value_error(op, ": ", arg, " has shape ", shape_str(g), ", its param ", shape_str(p));
    if (g.numel() > 0) check_same_layout(op, arg.c_str(), g, "its param", p);
  }

  bool same_state(const Entry& e) const {
    PyObject* st = e.state.ptr();
    if (PyDict_GetItem(st, str_exp_avg) != e.exp_avg.ptr()) return false;
    if (PyDict_GetItem(st, str_exp_avg_sq) != e.exp_avg_sq.ptr()) return false;
    if (PyDict_GetItem(st, str_step) != e.step.ptr()) return false;
    if (amsgrad_ && PyDict_GetItem(st, str_max_exp_avg_sq) != e.max_exp_avg_sq.ptr()) return false;
    return true;
  }

  bool amsgrad_;
  py::object bump_;
  py::list params_;
  py::object state_map_;
  std::vector<Entry> entries_;
  const Entry* first_ = nullptr;
};

}  // namespace

OX_BINDINGS(bind_adam) {
  str_exp_avg = PyUnicode_InternFromString("exp_avg");
  str_exp_avg_sq = PyUnicode_InternFromString("exp_avg_sq");
  str_max_exp_avg_sq = PyUnicode_InternFromString("max_exp_avg_sq");
  str_step = PyUnicode_InternFromString("step");
  str_grad = PyUnicode_InternFromString("grad");
  str_data_ptr = PyUnicode_InternFromString("data_ptr");
  str_dtype = PyUnicode_InternFromString("dtype");
  str_is_cuda = PyUnicode_InternFromString("is_cuda");
  str_get_device = PyUnicode_InternFromString("get_device");
  str_numel = PyUnicode_InternFromString("numel");
  str_is_contiguous = PyUnicode_InternFromString("is_contiguous");

  m.def("adam_step", &adam_step_lists, py::arg("params"), py::arg("grads"), py::arg("exp_avgs"),
        py::arg("exp_avg_sqs"), py::arg("max_exp_avg_sqs"), py::arg("step"), py::arg("lr"), py::arg("beta1"),
        py::arg("beta2"), py::arg("eps"), py::arg("weight_decay"), py::arg("decoupled"), py::arg("amsgrad"),
        py::arg("maximize"), py::arg("grad_scale") = py::none(), py::arg("stream") = 0);

  py::class_<AdamGroup>(m, "AdamGroup",
                        "One cached param group of oxkernels.optim.Adam (internal).")
      .def(py::init<py::list, py::list, bool, py::object, py::object>(), py::arg("params"), py::arg("states"),
           py::arg("amsgrad"), py::arg("bump") = py::none(), py::arg("state_map") = py::none())
      .def("step", &AdamGroup::step, py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"),
           py::arg("weight_decay"), py::arg("decoupled"), py::arg("amsgrad"), py::arg("maximize"),
           py::arg("lr_device") = py::none(), py::arg("grad_scale") = py::none(),
           py::arg("grad_scale_device") = py::none(), py::arg("found_inf_device") = py::none(),
           py::arg("stream") = 0)
      .def("__len__", &AdamGroup::size);
  m.attr("ADAM_DONE") = kDone;
  m.attr("ADAM_STALE") = kStale;
}

}  // namespace ox
