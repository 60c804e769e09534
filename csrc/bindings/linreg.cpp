#include "linreg.h"

#include <string>

#include "bindings/python.h"
#include "core/private_copy.h"

namespace ox {

OX_BINDINGS(bind_linreg) {
  m.def(
      "linreg_grad",
      [](View X, View y, View theta, std::optional<View> rows, View out, uintptr_t stream,
         std::optional<View> workspace) {
        std::optional<PrivateCopy> rows_copy;
        if (rows) rows_copy.emplace(*rows);
        const View* r = rows_copy ? &rows_copy->view() : nullptr;
        linreg_check("linreg_grad", X, y, theta, r, out, true);
        if (X.device == Device::cuda) {
          if (!workspace) value_error("linreg_grad: a CUDA call needs argument 'workspace'");
          OX_CUDA_CALL("linreg_grad", X, linreg_grad_cuda(X, y, theta, r, out, *workspace, stream));
        } else {
          linreg_grad_cpu(X, y, theta, r, out);
        }
      },
      py::arg("X"), py::arg("y"), py::arg("theta"), py::arg("rows"), py::arg("out"), py::arg("stream") = 0,
      py::arg("workspace") = py::none(), py::call_guard<py::gil_scoped_release>());

  m.def(
      "linreg_loss",
      [](View X, View y, View theta, View out, uintptr_t stream, std::optional<View> workspace) {
        linreg_check("linreg_loss", X, y, theta, nullptr, out, false);
        if (X.device == Device::cuda) {
          if (!workspace) value_error("linreg_loss: a CUDA call needs argument 'workspace'");
          OX_CUDA_CALL("linreg_loss", X, linreg_loss_cuda(X, y, theta, out, *workspace, stream));
        } else {
          linreg_loss_cpu(X, y, theta, out);
        }
      },
      py::arg("X"), py::arg("y"), py::arg("theta"), py::arg("out"), py::arg("stream") = 0,
      py::arg("workspace") = py::none(), py::call_guard<py::gil_scoped_release>());

  // float64 entries the CUDA linreg_grad / linreg_loss need as workspace.
  m.def("linreg_cuda_workspace_numel", [](int64_t m_rows, int64_t d, int64_t B) {
#if defined(OX_WITH_CUDA)
    return linreg_cuda_workspace_numel(m_rows, d, B);  // a size: no device involved
#else
    no_cuda("linreg_cuda_workspace_numel");
#endif
  });

  // float64 entries the CUDA linreg_fit needs as workspace (0: none).
  m.def("linreg_fit_cuda_workspace_numel",
        [](int64_t n, int64_t d, int64_t B, int64_t steps, const std::string& method, int64_t batch) {
#if defined(OX_WITH_CUDA)
          return linreg_fit_cuda_workspace_numel(n, d, B, steps, parse_fit_method(method.c_str()), batch);
#else
          no_cuda("linreg_fit_cuda_workspace_numel");
#endif
        });

  m.def(
      "linreg_fit",
      [](View X, View y, View theta0, View lr, View seed, const std::string& method, int64_t steps, int64_t batch,
         double beta1, double beta2, double eps, View thetas, View losses, View indices, View state,
         std::optional<View> workspace, uintptr_t stream) {
        FitParams p;
        p.method = parse_fit_method(method.c_str());
        p.steps = steps;
        p.batch = p.method == FitMethod::gd ? 0 : p.method == FitMethod::sgd ? 1 : batch;
        p.beta1 = beta1;
        p.beta2 = beta2;
        p.eps = eps;
        FitArgs a{X, y, theta0, lr, seed, thetas, losses, indices, state, View{}};
        if (workspace) a.workspace = *workspace;  // checked where a kernel needs it (linreg_fit_cuda)
        linreg_fit_check(a, p);
        if (X.device == Device::cuda)
          OX_CUDA_CALL("linreg fit", X, linreg_fit_cuda(a, p, stream));
        else
          linreg_fit_cpu(a, p);
      },
      py::arg("X"), py::arg("y"), py::arg("theta0"), py::arg("lr"), py::arg("seed"), py::arg("method"),
      py::arg("steps"), py::arg("batch"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"), py::arg("thetas"),
      py::arg("losses"), py::arg("indices"), py::arg("state"), py::arg("workspace") = py::none(), py::arg("stream") = 0,
      py::call_guard<py::gil_scoped_release>());
}

}  // namespace ox
