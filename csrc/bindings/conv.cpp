#include "conv.h"

#include "bindings/python.h"
#include "core/private_copy.h"

namespace ox {

static void check_pool(const char* op, int64_t pool) {
  if (pool < 1 || pool > 15) value_error(op, ": argument 'pool' must be in [1, 15], got ", pool);
}

static void check_grads(const char* op, const ConvShape& s, const View& x, const View* gx, const View* gw,
                        const View* gb) {
  if (gx) check_output(op, "grad_x", *gx, x, {s.N, s.C, s.H, s.W});
  if (gw) check_output(op, "grad_weight", *gw, x, {s.O, s.C, s.KH, s.KW});
  if (gb) check_output(op, "grad_bias", *gb, x, {s.O});
}

// The workspace a CUDA backward needs for ∂L/∂w, ∂L/∂b (conv2d_grad_workspace_cuda).
[[maybe_unused]] static const View* grad_workspace(const char* op, const ConvShape& s, const View& x,
                                                   const std::optional<View>& gw, const std::optional<View>& gb,
                                                   const std::optional<View>& ws) {
  if (!gw && !gb) return nullptr;
  return check_workspace(op, opt(ws), "x", x, conv2d_grad_workspace_cuda(s));
}
[[maybe_unused]] static const View* fused_grad_workspace(const char* op, const ConvShape& s, const View& x,
                                                         bool any_grad, const std::optional<View>& ws) {
  if (!any_grad) return nullptr;
  return check_workspace(op, opt(ws), "x", x, conv2d_relu_maxpool2d_grad_workspace_cuda(s));
}

// The fields of ConvShape the workspace sizes depend on.
static ConvShape workspace_shape(int64_t N, int64_t C, int64_t O, int64_t KH, int64_t KW, int64_t OH, int64_t OW) {
  ConvShape s{};
  s.N = N, s.C = C, s.O = O, s.KH = KH, s.KW = KW, s.OH = OH, s.OW = OW;
  return s;
}

OX_BINDINGS(bind_conv) {
  m.def(
      "conv2d",
      [](View x, View w, std::optional<View> b, int64_t sh, int64_t sw, int64_t ph, int64_t pw, View y,
         uintptr_t stream) {
        const char* op = "conv2d";
        const ConvShape s = conv2d_check(op, x, w, opt(b), sh, sw, ph, pw);
        check_output(op, "out", y, x, {s.N, s.O, s.OH, s.OW});
        if (x.device == Device::cuda)
          OX_CUDA_CALL(op, x, conv2d_forward_cuda(s, x, w, opt(b), y, stream));
        else
          conv2d_forward_cpu(s, x, w, opt(b), y);
      },
      py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("sh"), py::arg("sw"), py::arg("ph"),
      py::arg("pw"), py::arg("out"), py::arg("stream") = 0, py::call_guard<py::gil_scoped_release>());

  m.def(
      "conv2d_backward",
      [](View gy, View x, View w, int64_t sh, int64_t sw, int64_t ph, int64_t pw, std::optional<View> gx,
         std::optional<View> gw, std::optional<View> gb, uintptr_t stream, std::optional<View> workspace) {
        const char* op = "conv2d_backward";
        const ConvShape s = conv2d_check(op, x, w, nullptr, sh, sw, ph, pw);
        check_like(op, "grad_out", gy, "x", x);
        check_shape(op, "grad_out", gy, {s.N, s.O, s.OH, s.OW});
        check_grads(op, s, x, opt(gx), opt(gw), opt(gb));
        if (x.device == Device::cuda)
          OX_CUDA_CALL(op, x, conv2d_backward_cuda(s, gy, x, w, opt(gx), opt(gw), opt(gb),
                                                grad_workspace(op, s, x, gw, gb, workspace), stream));
        else
          conv2d_backward_cpu(s, gy, x, w, opt(gx), opt(gw), opt(gb));
      },
      py::arg("grad_out"), py::arg("x"), py::arg("weight"), py::arg("sh"), py::arg("sw"), py::arg("ph"),
      py::arg("pw"), py::arg("grad_x"), py::arg("grad_weight"), py::arg("grad_bias"), py::arg("stream") = 0,
      py::arg("workspace") = py::none(), py::call_guard<py::gil_scoped_release>());

  m.def(
      "conv2d_relu_maxpool2d",
      [](View x, View w, std::optional<View> b, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t pool,
         View out, View idx, uintptr_t stream) {
        const char* op = "conv2d_relu_maxpool2d";
        check_pool(op, pool);
        const ConvShape s = conv2d_check(op, x, w, opt(b), sh, sw, ph, pw);
        check_output(op, "out", out, x, {s.N, s.O, s.OH / pool, s.OW / pool});
        check_same_device(op, "indices", idx, "x", x);
        check_dtype(op, "indices", idx, {DType::u8});
        check_shape(op, "indices", idx, {s.N, s.O, s.OH / pool, s.OW / pool});
        check_contiguous(op, "indices", idx);
        check_writable(op, "indices", idx);
        if (x.device == Device::cuda)
          OX_CUDA_CALL(op, x, conv2d_relu_maxpool2d_forward_cuda(s, pool, x, w, opt(b), out, idx, stream));
        else
          conv2d_relu_maxpool2d_forward_cpu(s, pool, x, w, opt(b), out, idx);
      },
      py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("sh"), py::arg("sw"), py::arg("ph"),
      py::arg("pw"), py::arg("pool"), py::arg("out"), py::arg("indices"), py::arg("stream") = 0,
      py::call_guard<py::gil_scoped_release>());

  m.def(
      "conv2d_relu_maxpool2d_backward",
      [](View gout, View caller_idx, View x, View w, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t pool,
         std::optional<View> gx, std::optional<View> gw, std::optional<View> gb, uintptr_t stream,
         std::optional<View> workspace) {
        const char* op = "conv2d_relu_maxpool2d_backward";
        const PrivateCopy idx_copy(caller_idx);  // its offsets address grad_x
        const View& idx = idx_copy.view();
        check_pool(op, pool);
        const ConvShape s = conv2d_check(op, x, w, nullptr, sh, sw, ph, pw);
        check_like(op, "grad_out", gout, "x", x);
        check_shape(op, "grad_out", gout, {s.N, s.O, s.OH / pool, s.OW / pool});
        check_same_device(op, "indices", idx, "x", x);
        check_dtype(op, "indices", idx, {DType::u8});
        check_shape(op, "indices", idx, {s.N, s.O, s.OH / pool, s.OW / pool});
        check_contiguous(op, "indices", idx);
        check_grads(op, s, x, opt(gx), opt(gw), opt(gb));
        check_apart(op, {{"grad_x", opt(gx)}, {"grad_weight", opt(gw)}, {"grad_bias", opt(gb)},
                         {"workspace", opt(workspace)}},
                    {{"x", &x}, {"weight", &w}, {"grad_out", &gout}});
        if (x.device == Device::cuda)
          OX_CUDA_CALL(op, x, conv2d_relu_maxpool2d_backward_cuda(
                                  s, pool, gout, idx, x, w, opt(gx), opt(gw), opt(gb),
                                  fused_grad_workspace(op, s, x, gx || gw || gb, workspace), stream));
        else
          conv2d_relu_maxpool2d_backward_cpu(s, pool, gout, idx, x, w, opt(gx), opt(gw), opt(gb));
      },
      py::arg("grad_out"), py::arg("indices"), py::arg("x"), py::arg("weight"), py::arg("sh"), py::arg("sw"),
      py::arg("ph"), py::arg("pw"), py::arg("pool"), py::arg("grad_x"), py::arg("grad_weight"),
      py::arg("grad_bias"), py::arg("stream") = 0, py::arg("workspace") = py::none(),
      py::call_guard<py::gil_scoped_release>());

  m.def(
      "conv2d_grad_workspace",
      [](int64_t N, int64_t C, int64_t O, int64_t KH, int64_t KW, int64_t OH, int64_t OW) {
        return conv2d_grad_workspace_cuda(workspace_shape(N, C, O, KH, KW, OH, OW));
      },
      "Elements of the CUDA workspace conv2d_backward needs for ∂L/∂w or ∂L/∂b at this shape (0: none).",
      py::arg("N"), py::arg("C"), py::arg("O"), py::arg("KH"), py::arg("KW"), py::arg("OH"), py::arg("OW"));
  m.def(
      "conv2d_relu_maxpool2d_grad_workspace",
      [](int64_t N, int64_t C, int64_t O, int64_t KH, int64_t KW, int64_t OH, int64_t OW) {
        return conv2d_relu_maxpool2d_grad_workspace_cuda(workspace_shape(N, C, O, KH, KW, OH, OW));
      },
      "Elements of the CUDA workspace conv2d_relu_maxpool2d_backward needs for any gradient at this shape "
      "(OH, OW: the convolution's output, before pooling).",
      py::arg("N"), py::arg("C"), py::arg("O"), py::arg("KH"), py::arg("KW"), py::arg("OH"), py::arg("OW"));
}

}  // namespace ox
