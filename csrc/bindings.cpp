// The extension module oxkernels._C. Each csrc/bindings/<family>.cpp adds its
// ops through OX_BINDINGS; this file adds what belongs to the whole library.
#include <vector>

#include "bindings/python.h"
#include "core/isa.h"
#include "core/threading.h"

#if defined(OX_WITH_CUDA)
#include <cuda_runtime.h>
#endif

#ifndef OX_VERSION
#define OX_VERSION "0.0.0+dev"
#endif

namespace ox {

static std::vector<Binder>& binders() {
  static std::vector<Binder> list;
  return list;
}

int register_binder(Binder binder) {
  binders().push_back(binder);
  return static_cast<int>(binders().size());
}

// What was compiled in; makes no CUDA call, so importing never touches a GPU.
static py::dict build_info() {
  py::dict info;
  info["version"] = OX_VERSION;
#if defined(OX_WITH_CUDA)
  info["cuda_built"] = true;
  info["cuda_archs"] = OX_CUDA_ARCHS;
  int runtime = 0;
  cudaRuntimeGetVersion(&runtime);
  info["cuda_runtime"] = runtime;
#else
  info["cuda_built"] = false;
  info["cuda_archs"] = "";
  info["cuda_runtime"] = 0;
#endif
  info["isa"] = isa_name(active_isa());
  info["isa_best"] = isa_name(best_supported_isa());
  info["threads"] = num_threads();
  info["thread_pool"] = sharing_openmp_threads() ? "OpenMP (shared with torch)" : "oxkernels";
  return info;
}

// The GPUs the CUDA runtime sees, as (compute capability, multiprocessors), and
// a status string ("ok", the runtime's error, or "not built"). Reads device
// attributes one by one rather than the cudaDeviceProp struct.
static py::tuple cuda_devices() {
  py::list gpus;
#if defined(OX_WITH_CUDA)
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return py::make_tuple(gpus, std::string(cudaGetErrorString(err)));
  }
  for (int i = 0; i < count; ++i) {
    int major = 0, minor = 0, sms = 0;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, i);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, i);
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, i);
    gpus.append(py::make_tuple(major * 10 + minor, sms));
  }
  return py::make_tuple(gpus, std::string("ok"));
#else
  return py::make_tuple(gpus, std::string("not built"));
#endif
}

}  // namespace ox

PYBIND11_MODULE(_C, m) {
  m.doc() = "oxkernels native kernels (C++/CUDA); use the oxkernels package, not this module";
  py::register_local_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const ox::ArgTypeError& e) {
      PyErr_SetString(PyExc_TypeError, e.what());
    } catch (const ox::ArgValueError& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    }
  });
  m.def("build_info", &ox::build_info);
  m.def("cuda_devices", &ox::cuda_devices);
  m.def("num_threads", &ox::num_threads);
  m.def("set_num_threads", [](int n) {
    if (n < 1) throw py::value_error("set_num_threads: argument 'n' must be >= 1, got " + std::to_string(n));
    ox::set_num_threads(n);
  });
  m.def("set_isa", [](const std::string& name) { ox::set_isa(name.c_str()); });
  m.def("isa", [] { return std::string(ox::isa_name(ox::active_isa())); });
  m.def("set_torch_types", &ox::set_torch_types);
  m.def("share_openmp_threads", &ox::share_openmp_threads, py::arg("enable"));
  for (ox::Binder binder : ox::binders()) binder(m);
}
