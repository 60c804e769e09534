#include "loss.h"

#include "bindings/python.h"
#include "core/private_copy.h"

namespace ox {

static CrossEntropy ce_args(int reduction, double label_smoothing, int64_t ignore_index,
                            const std::optional<View>& weight) {
  return CrossEntropy{static_cast<Reduction>(reduction), label_smoothing, ignore_index, opt(weight)};
}

// Class targets are read as indices after their range check: the kernels read a private copy
// (core/private_copy.h). Probabilities index nothing and are read in place.
class TargetView {
 public:
  explicit TargetView(const View& caller) : view_(caller) {
    if (!is_probability_target(caller)) view_ = copy_.emplace(caller).view();
  }
  const View& view() const { return view_; }

 private:
  std::optional<PrivateCopy> copy_;
  View view_;
};

[[maybe_unused]] static const View& cuda_workspace(const char* op, const std::optional<View>& ws, const View& logits) {
  const int64_t need = logits.ndim == 2 && logits.shape[0] > 1 ? logits.shape[0] : 1;
  return *check_workspace(op, opt(ws), "logits", logits, need);
}

OX_BINDINGS(bind_loss) {
  m.def(
      "cross_entropy",
      [](View logits, View caller_target, View out, int reduction, double label_smoothing, int64_t ignore_index,
         std::optional<View> workspace, uintptr_t stream, std::optional<View> grad_logits, std::optional<View> weight) {
        const char* op = "cross_entropy";
        const CrossEntropy ce = ce_args(reduction, label_smoothing, ignore_index, weight);
        const TargetView targets(caller_target);
        const View& target = targets.view();
        cross_entropy_check(op, logits, target, ce);
        cross_entropy_check_out(op, out, logits, ce);
        if (grad_logits) {
          if (logits.device == Device::cuda)
            value_error(op, ": argument 'grad_logits' is supported for CPU arrays only");
          if (logits.ndim == 2)
            check_output(op, "grad_logits", *grad_logits, logits, {logits.shape[0], logits.shape[1]});
          else
            check_output(op, "grad_logits", *grad_logits, logits, {logits.shape[0]});
        }
        if (logits.device == Device::cuda)
          OX_CUDA_CALL(op, logits, cross_entropy_forward_cuda(logits, target, ce, out, cuda_workspace(op, workspace, logits),
                                                      stream));
        else
          cross_entropy_forward_cpu(logits, target, ce, out, opt(grad_logits));
      },
      "loss of the logits; with grad_logits (CPU), also its gradient for an incoming grad of 1",
      py::arg("logits"), py::arg("target"), py::arg("out"), py::arg("reduction"), py::arg("label_smoothing"),
      py::arg("ignore_index"), py::arg("workspace") = py::none(), py::arg("stream") = 0,
      py::arg("grad_logits") = py::none(), py::arg("weight") = py::none(), py::call_guard<py::gil_scoped_release>());
  m.def(
      "cross_entropy_backward",
      [](View grad, View logits, View caller_target, View out, int reduction, double label_smoothing,
         int64_t ignore_index, std::optional<View> workspace, uintptr_t stream, std::optional<View> weight) {
        const char* op = "cross_entropy_backward";
        const CrossEntropy ce = ce_args(reduction, label_smoothing, ignore_index, weight);
        const TargetView targets(caller_target);
        const View& target = targets.view();
        cross_entropy_check(op, logits, target, ce);
        check_like(op, "grad", grad, "logits", logits);
        if (ce.reduction == Reduction::none && logits.ndim == 2) check_shape(op, "grad", grad, {logits.shape[0]});
        else check_shape(op, "grad", grad, {});
        if (logits.ndim == 2) check_output(op, "out", out, logits, {logits.shape[0], logits.shape[1]});
        else check_output(op, "out", out, logits, {logits.shape[0]});
        if (logits.device == Device::cuda)
          OX_CUDA_CALL(op, logits, cross_entropy_backward_cuda(grad, logits, target, ce, out,
                                                       cuda_workspace(op, workspace, logits), stream));
        else
          cross_entropy_backward_cpu(grad, logits, target, ce, out);
      },
      py::arg("grad"), py::arg("logits"), py::arg("target"), py::arg("out"), py::arg("reduction"),
      py::arg("label_smoothing"), py::arg("ignore_index"), py::arg("workspace") = py::none(), py::arg("stream") = 0,
      py::arg("weight") = py::none(), py::call_guard<py::gil_scoped_release>());

  for (bool log : {false, true}) {
    const char* fwd = log ? "log_softmax" : "softmax";
    const char* bwd = log ? "log_softmax_backward" : "softmax_backward";
    m.def(
        fwd,
        [fwd, log](View x, int dim, View out, uintptr_t stream) {
          if (dim < 0) dim += x.ndim;
          softmax_check(fwd, x, dim, out);
          if (x.device == Device::cuda) OX_CUDA_CALL(fwd, x, softmax_forward_cuda(x, dim, log, out, stream));
          else softmax_forward_cpu(x, dim, log, out);
        },
        py::arg("x"), py::arg("dim"), py::arg("out"), py::arg("stream") = 0, py::call_guard<py::gil_scoped_release>());
    m.def(
        bwd,
        [bwd, log](View grad, View y, int dim, View out, uintptr_t stream) {
          if (dim < 0) dim += grad.ndim;
          softmax_check(bwd, grad, dim, out);
          check_like(bwd, "y", y, "grad", grad);
          bool same = y.ndim == grad.ndim;
          for (int i = 0; same && i < grad.ndim; ++i) same = y.shape[i] == grad.shape[i];
          if (!same) value_error(bwd, ": argument 'y' must have the shape of 'grad' ", shape_str(grad), ", got ",
                                 shape_str(y));
          if (grad.device == Device::cuda) OX_CUDA_CALL(bwd, grad, softmax_backward_cuda(grad, y, dim, log, out, stream));
          else softmax_backward_cpu(grad, y, dim, log, out);
        },
        py::arg("grad"), py::arg("y"), py::arg("dim"), py::arg("out"), py::arg("stream") = 0,
        py::call_guard<py::gil_scoped_release>());
  }
}

}  // namespace ox
