// Shared by the binding files: pybind11, the View caster, and the registry
// through which each csrc/bindings/<family>.cpp adds its functions to _C.
#pragma once
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>

#include "core/checks.h"
#include "core/cuda_device.h"
#include "core/view.h"

namespace py = pybind11;

namespace ox {

using Binder = void (*)(py::module_&);
int register_binder(Binder binder);

// Defines a function that adds bindings to the module; runs at import.
#define OX_BINDINGS(fn)                                   \
  static void fn(py::module_& m);                         \
  static const int fn##_registered = ::ox::register_binder(fn); \
  static void fn(py::module_& m)

// CUDA entry points exist only in CUDA builds; elsewhere a CUDA array is an error.
// OX_CUDA_CALL(op, array, call) runs call with array's device current (core/cuda_device.h).
[[noreturn]] void no_cuda(const char* op);
#if defined(OX_WITH_CUDA)
#define OX_CUDA_CALL(op, array, call)                                 \
  do {                                                                \
    const ::ox::CudaDeviceScope ox_device_scope_((op), (array).device_index); \
    call;                                                             \
  } while (0)
inline void require_cuda_build(const char*) {}
#else
#define OX_CUDA_CALL(op, array, call) ::ox::no_cuda(op)
inline void require_cuda_build(const char* op) { no_cuda(op); }
#endif

// An optional argument as a pointer: null when it was not given.
template <class T> const T* opt(const std::optional<T>& v) { return v ? &*v : nullptr; }

// Tells the caster which Python type is torch.Tensor (set when torch is loaded).
void set_torch_types(py::handle tensor_type, py::dict dtype_map);
bool load_view(py::handle src, View& out, py::object& keep_alive);

}  // namespace ox

namespace pybind11 { namespace detail {

// Any NumPy array, torch tensor or DLPack producer -> ox::View (borrowed).
template <> struct type_caster<ox::View> {
  PYBIND11_TYPE_CASTER(ox::View, const_name("Array"));
  py::object keep_alive;
  bool load(handle src, bool) {
    if (!ox::load_view(src, value, keep_alive)) return false;
    // A DLPack export lives as long as its capsule: keep that until the call returns, not just as
    // long as this caster (std::optional's and std::vector's casters are gone once loaded).
    if (keep_alive) loader_life_support::add_patient(keep_alive);
    return true;
  }
  static handle cast(const ox::View&, return_value_policy, handle) {
    throw py::type_error("ox::View cannot be returned to Python");
  }
};

}}  // namespace pybind11::detail
