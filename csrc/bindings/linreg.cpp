#include "linreg.h"

#include "bindings/python.h"

namespace ox {

OX_BINDINGS(bind_linreg) {
  m.def(
      "linreg_grad",
      [](View X, View y, View theta, std::optional<View> rows, View out, uintptr_t stream) {
        const View* r = rows ? &*rows : nullptr;
        linreg_check("linreg_grad", X, y, theta, r, out, true);
        if (X.device == Device::cuda)
          OX_CUDA_CALL("linreg_grad", linreg_grad_cuda(X, y, theta, r, out, stream));
        else
          linreg_grad_cpu(X, y, theta, r, out);
      },
      py::arg("X"), py::arg("y"), py::arg("theta"), py::arg("rows"), py::arg("out"), py::arg("stream") = 0,
      py::call_guard<py::gil_scoped_release>());
}

}  // namespace ox
