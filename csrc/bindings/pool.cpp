#include "pool.h"

#include "bindings/python.h"

namespace ox {

OX_BINDINGS(bind_pool) {
  m.def(
      "max_pool2d",
      [](View x, View out, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh,
         int64_t dw, bool ceil_mode, uintptr_t stream, std::optional<View> indices) {
        const char* op = "max_pool2d";
        const Pool2d p{kh, kw, sh, sw, ph, pw, dh, dw, ceil_mode};
        int64_t ho, wo;
        max_pool2d_check(op, x, p, &ho, &wo);
        max_pool2d_check_out(op, "out", out, x, ho, wo);
        if (indices) max_pool2d_check_indices(op, *indices, out);
        check_apart(op, {{"out", &out}, {"indices", opt(indices)}}, {{"x", &x}});
        if (x.device == Device::cuda) OX_CUDA_CALL(op, x, max_pool2d_forward_cuda(x, p, out, opt(indices), stream));
        else max_pool2d_forward_cpu(x, p, out, opt(indices));
      },
      py::arg("x"), py::arg("out"), py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"),
      py::arg("ph"), py::arg("pw"), py::arg("dh"), py::arg("dw"), py::arg("ceil_mode"), py::arg("stream") = 0,
      py::arg("indices") = py::none(), py::call_guard<py::gil_scoped_release>());
  m.def(
      "max_pool2d_backward",
      [](View grad, View x, View out, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
         int64_t dh, int64_t dw, bool ceil_mode, uintptr_t stream) {
        const char* op = "max_pool2d_backward";
        const Pool2d p{kh, kw, sh, sw, ph, pw, dh, dw, ceil_mode};
        int64_t ho, wo;
        max_pool2d_check(op, x, p, &ho, &wo);
        check_like(op, "grad", grad, "x", x);
        if (x.ndim == 4) check_shape(op, "grad", grad, {x.shape[0], x.shape[1], ho, wo});
        else check_shape(op, "grad", grad, {x.shape[0], ho, wo});
        if (x.ndim == 4) check_output(op, "out", out, x, {x.shape[0], x.shape[1], x.shape[2], x.shape[3]});
        else check_output(op, "out", out, x, {x.shape[0], x.shape[1], x.shape[2]});
        check_apart(op, {{"out", &out}}, {{"x", &x}, {"grad", &grad}});
        if (x.device == Device::cuda) OX_CUDA_CALL(op, x, max_pool2d_backward_cuda(grad, x, p, out, stream));
        else max_pool2d_backward_cpu(grad, x, p, out);
      },
      py::arg("grad"), py::arg("x"), py::arg("out"), py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"),
      py::arg("ph"), py::arg("pw"), py::arg("dh"), py::arg("dw"), py::arg("ceil_mode"), py::arg("stream") = 0,
      py::call_guard<py::gil_scoped_release>());
}

}  // namespace ox
