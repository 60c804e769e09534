#include "linear.h"

#include <algorithm>
#include <string>

#include "bindings/python.h"

namespace ox {

// The split-K scratch a CUDA call's products need (gemm_cuda_workspace), checked.
static const View* gemm_workspace(const char* op, const View& ref, std::initializer_list<const GemmArgs*> products,
                                  const std::optional<View>& ws) {
  int64_t need = 0;
  for (const GemmArgs* g : products)
    if (g) need = std::max(need, gemm_cuda_workspace(g->M, g->N, g->K));
  return check_workspace(op, opt(ws), "x", ref, need);
}

static Activation activation_arg(const char* op, const std::optional<std::string>& name) {
  return parse_activation(op, name ? name->c_str() : nullptr);
}

// gemm: the raw product for tests and benchmarks, on (strided) 2-D arrays.
static void gemm_entry(View a, View b, View out, bool trans_a, bool trans_b, double alpha, double beta,
                       std::optional<View> bias, std::optional<std::string> activation, uintptr_t stream,
                       std::optional<View> workspace) {
  const char* op = "gemm";
  check_dtype(op, "a", a, {DType::f32, DType::f64});
  check_rank(op, "a", a, 2);
  check_rank(op, "b", b, 2);
  check_same_dtype(op, "b", b, "a", a);
  check_same_device(op, "b", b, "a", a);
  check_numel_fits(op, "a", a);
  check_numel_fits(op, "b", b);
  GemmArgs g;
  g.M = trans_a ? a.shape[1] : a.shape[0];
  g.K = trans_a ? a.shape[0] : a.shape[1];
  const int64_t kb = trans_b ? b.shape[1] : b.shape[0];
  g.N = trans_b ? b.shape[0] : b.shape[1];
  if (kb != g.K)
    value_error(op, ": inner dimensions differ: op(a) is (", g.M, ", ", g.K, ") but op(b) is (", kb, ", ", g.N,
                ")");
  check_output(op, "out", out, a, {g.M, g.N});
  if (bias) {
    check_like(op, "bias", *bias, "a", a);
    check_shape(op, "bias", *bias, {g.N});
  }
  check_apart(op, {{"out", &out}}, {{"a", &a}, {"b", &b}, {"bias", opt(bias)}});
  g.A = a.data; g.a_rs = a.strides[trans_a ? 1 : 0]; g.a_cs = a.strides[trans_a ? 0 : 1];
  g.B = b.data; g.b_rs = b.strides[trans_b ? 1 : 0]; g.b_cs = b.strides[trans_b ? 0 : 1];
  g.C = out.data; g.c_rs = g.N;
  g.alpha = alpha; g.beta = beta;
  g.bias = bias ? bias->data : nullptr;
  g.act = activation_arg(op, activation);
  if (a.device == Device::cuda) {
    require_cuda_build(op);
    [[maybe_unused]] const View* ws = gemm_workspace(op, a, {&g}, workspace);
    py::gil_scoped_release release;
    OX_CUDA_CALL(op, a, gemm_cuda(g, a.dtype, stream, ws ? ws->data : nullptr));
  } else {
    py::gil_scoped_release release;
    gemm_cpu(g, a.dtype);
  }
}

OX_BINDINGS(bind_linear) {
  m.def("gemm", &gemm_entry,
        "out = act(alpha · op(a) op(b) + beta · out + bias), op = transpose when trans_* is set",
        py::arg("a"), py::arg("b"), py::arg("out"), py::arg("trans_a") = false, py::arg("trans_b") = false,
        py::arg("alpha") = 1.0, py::arg("beta") = 0.0, py::arg("bias") = py::none(),
        py::arg("activation") = py::none(), py::arg("stream") = 0, py::arg("workspace") = py::none());
  m.def("gemm_cuda_workspace", &gemm_cuda_workspace,
        "Elements of the CUDA split-K workspace an M×N×K product needs (0: none)", py::arg("M"), py::arg("N"),
        py::arg("K"));
  m.def(
      "gemm_tile",
      []() {
        int mr = 0, nr = 0;
        gemm_cpu_tile(&mr, &nr);
        return py::make_tuple(mr, nr);
      },
      "(MR, NR) register tile of the CPU kernel of the active ISA");
  m.def(
      "linear",
      [](View x, View weight, std::optional<View> bias, View out, std::optional<std::string> activation,
         uintptr_t stream, std::optional<View> workspace) {
        const char* op = "linear";
        const Activation act = activation_arg(op, activation);
        const View* b = opt(bias);
        linear_check(op, x, weight, b, out);
        check_apart(op, {{"out", &out}}, {{"x", &x}, {"weight", &weight}, {"bias", b}});
        if (x.device == Device::cuda) {
          require_cuda_build(op);
          const GemmArgs fwd = linear_forward_gemm(x, weight, b, act, out);
          [[maybe_unused]] const View* ws = gemm_workspace(op, x, {&fwd}, workspace);
          py::gil_scoped_release release;
          OX_CUDA_CALL(op, x, linear_cuda(x, weight, b, act, out, stream, ws));
        } else {
          py::gil_scoped_release release;
          linear_cpu(x, weight, b, act, out);
        }
      },
      "out = act(x weightᵀ + bias)", py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("out"),
      py::arg("activation") = py::none(), py::arg("stream") = 0, py::arg("workspace") = py::none());
  m.def(
      "linear_backward",
      [](View grad_out, View x, View weight, std::optional<View> out, std::optional<std::string> activation,
         std::optional<View> grad_x, std::optional<View> grad_weight, std::optional<View> grad_bias,
         uintptr_t stream, std::optional<View> workspace) {
        const char* op = "linear_backward";
        const Activation act = activation_arg(op, activation);
        const View* y = opt(out);
        const View* dx = opt(grad_x);
        const View* dw = opt(grad_weight);
        const View* db = opt(grad_bias);
        linear_backward_check(op, grad_out, x, weight, y, act, dx, dw, db);
        check_apart(op, {{"grad_x", dx}, {"grad_weight", dw}, {"grad_bias", db}},
                    {{"grad_out", &grad_out}, {"x", &x}, {"weight", &weight}, {"out", y}});
        if (x.device == Device::cuda) {
          require_cuda_build(op);
          const GemmArgs gx = dx ? linear_grad_x_gemm(grad_out, weight, y, act, *dx) : GemmArgs{};
          const GemmArgs gw = dw ? linear_grad_w_gemm(grad_out, x, y, act, *dw) : GemmArgs{};
          [[maybe_unused]] const View* ws = gemm_workspace(op, x, {&gx, &gw}, workspace);
          py::gil_scoped_release release;
          OX_CUDA_CALL(op, x, linear_backward_cuda(grad_out, x, weight, y, act, dx, dw, db, stream, ws));
        } else {
          py::gil_scoped_release release;
          linear_backward_cpu(grad_out, x, weight, y, act, dx, dw, db);
        }
      },
      "grads of out = act(x weightᵀ + bias): grad_x = dz weight, grad_weight = dzᵀ x, grad_bias = Σ dz, "
      "dz = grad_out ⊙ act'(out)",
      py::arg("grad_out"), py::arg("x"), py::arg("weight"), py::arg("out"), py::arg("activation"),
      py::arg("grad_x"), py::arg("grad_weight"), py::arg("grad_bias"), py::arg("stream") = 0,
      py::arg("workspace") = py::none());
}

}  // namespace ox
