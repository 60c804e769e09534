#include "activation.h"

#include "bindings/python.h"

namespace ox {

static void bind_activation_pair(py::module_& m, const char* fwd_name, const char* bwd_name, Activation act) {
  m.def(
      fwd_name,
      [fwd_name, act](View x, View out, uintptr_t stream) {
        activation_check(fwd_name, x, out);
        if (x.device == Device::cuda) OX_CUDA_CALL(fwd_name, x, activation_forward_cuda(act, x, out, stream));
        else activation_forward_cpu(act, x, out);
      },
      py::arg("x"), py::arg("out"), py::arg("stream") = 0, py::call_guard<py::gil_scoped_release>());
  m.def(
      bwd_name,
      [bwd_name, act](View grad, View y, View out, uintptr_t stream) {
        activation_backward_check(bwd_name, grad, y, out);
        if (grad.device == Device::cuda) OX_CUDA_CALL(bwd_name, grad, activation_backward_cuda(act, grad, y, out, stream));
        else activation_backward_cpu(act, grad, y, out);
      },
      py::arg("grad"), py::arg("y"), py::arg("out"), py::arg("stream") = 0,
      py::call_guard<py::gil_scoped_release>());
}

OX_BINDINGS(bind_activation) {
  bind_activation_pair(m, "relu", "relu_backward", Activation::relu);
  bind_activation_pair(m, "sigmoid", "sigmoid_backward", Activation::sigmoid);
}

}  // namespace ox
