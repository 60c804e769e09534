// Builds Views from NumPy arrays (buffer fields), torch tensors (their
// attributes: cheaper than a DLPack round trip) and any other DLPack producer.
#include <pybind11/numpy.h>

#include <cstring>
#include <vector>

#include "bindings/python.h"

namespace ox {
namespace {

// DLPack ABI (dlpack.h, v0.x legacy capsule "dltensor"), declared locally.
struct DLDevice { int32_t device_type, device_id; };
struct DLDataType { uint8_t code, bits; uint16_t lanes; };
struct DLTensor {
  void* data; DLDevice device; int32_t ndim; DLDataType dtype;
  int64_t* shape; int64_t* strides; uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor; void* manager_ctx; void (*deleter)(DLManagedTensor*);
};

PyObject* g_torch_tensor_type = nullptr;
py::dict* g_torch_dtypes = nullptr;  // torch.dtype -> DType code

void set_source_dtype(View& v, const std::string& name) {
  std::strncpy(v.source_dtype, name.c_str(), sizeof(v.source_dtype) - 1);
}

void set_source_device(View& v, const std::string& name) {
  std::strncpy(v.source_device, name.c_str(), sizeof(v.source_device) - 1);
}

bool load_numpy(py::handle src, View& v) {
  auto a = py::reinterpret_borrow<py::array>(src);
  if (a.ndim() > kMaxRank) throw py::value_error("arrays of more than 8 dimensions are not supported");
  py::dtype dt = a.dtype();
  char kind = dt.kind();
  auto size = dt.itemsize();
  v.dtype = DType::unsupported;
  if (kind == 'f' && size == 4) v.dtype = DType::f32;
  else if (kind == 'f' && size == 8) v.dtype = DType::f64;
  else if (kind == 'f' && size == 2) v.dtype = DType::f16;
  else if (kind == 'i' && size == 8) v.dtype = DType::i64;
  else if (kind == 'i' && size == 4) v.dtype = DType::i32;
  else if (kind == 'i' && size == 1) v.dtype = DType::i8;
  else if (kind == 'u' && size == 1) v.dtype = DType::u8;
  else if (kind == 'b') v.dtype = DType::boolean;
  if (dt.byteorder() == '>') v.dtype = DType::unsupported;  // non-native byte order
  if (v.dtype == DType::unsupported) set_source_dtype(v, py::str(dt).cast<std::string>());
  v.data = const_cast<void*>(a.data());
  v.device = Device::cpu;
  v.device_index = 0;
  v.ndim = static_cast<int>(a.ndim());
  v.writable = a.writeable();
  for (int i = 0; i < v.ndim; ++i) {
    v.shape[i] = a.shape(i);
    py::ssize_t stride = a.strides(i);
    if (size == 0 || stride % size != 0) {
      if (v.shape[i] > 1) throw py::value_error("arrays whose strides are not a multiple of the item size are not supported");
      stride = 0;
    }
    v.strides[i] = stride / (size ? size : 1);
  }
  return true;
}

// Attribute names of torch.Tensor, interned once (set_torch_types): a lookup by a
// ready-made str skips building one from a C string on every call.
struct TorchNames {
  PyObject *shape, *stride, *dtype, *is_cuda, *is_cpu, *get_device, *data_ptr;
};
TorchNames g_names;

// New reference to src.<name>, or a Python error as an exception.
py::object attr(PyObject* src, PyObject* name) {
  PyObject* r = PyObject_GetAttr(src, name);
  if (!r) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(r);
}
py::object call(PyObject* src, PyObject* name) {
  PyObject* r = PyObject_CallMethodNoArgs(src, name);
  if (!r) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(r);
}

bool load_torch(py::handle handle, View& v) {
  PyObject* src = handle.ptr();
  const py::object shape = attr(src, g_names.shape);  // torch.Size: a tuple
  const auto ndim = static_cast<int>(PyTuple_GET_SIZE(shape.ptr()));
  if (ndim > kMaxRank) throw py::value_error("tensors of more than 8 dimensions are not supported");
  const py::object strides = call(src, g_names.stride);
  const py::object dtype = attr(src, g_names.dtype);
  PyObject* code = PyDict_GetItem(g_torch_dtypes->ptr(), dtype.ptr());  // borrowed
  v.dtype = code ? static_cast<DType>(PyLong_AsLong(code)) : DType::unsupported;
  if (v.dtype == DType::unsupported) set_source_dtype(v, py::str(dtype).cast<std::string>());
  // x.device.type costs ~0.3 µs; is_cuda / is_cpu / get_device() are attribute reads.
  if (attr(src, g_names.is_cuda).ptr() == Py_True) {
    v.device = Device::cuda;
    v.device_index = static_cast<int>(PyLong_AsLong(call(src, g_names.get_device).ptr()));
  } else if (attr(src, g_names.is_cpu).ptr() == Py_True) {
    v.device = Device::cpu;
    v.device_index = 0;
  } else {  // meta, mps, xpu, ...: its data pointer is nothing a kernel may touch
    v.device = Device::unsupported;
    v.device_index = 0;
    set_source_device(v, py::str(handle.attr("device")).cast<std::string>());
  }
  v.data = PyLong_AsVoidPtr(call(src, g_names.data_ptr).ptr());
  v.ndim = ndim;
  v.writable = true;
  for (int i = 0; i < ndim; ++i) {
    v.shape[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(shape.ptr(), i));
    v.strides[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(strides.ptr(), i));
  }
  if (!v.data && v.numel() > 0 && v.device != Device::unsupported) {  // a FakeTensor, say: no storage
    v.device = Device::unsupported;
    set_source_device(v, py::str(handle.attr("device")).cast<std::string>() + " but has no storage (a fake tensor?)");
  }
  return true;
}

struct DLPackHolder {
  DLManagedTensor* t;
  ~DLPackHolder() { if (t && t->deleter) t->deleter(t); }
};

bool load_dlpack(py::handle src, View& v, py::object& keep_alive) {
  py::object capsule = src.attr("__dlpack__")();
  PyObject* cap = capsule.ptr();
  if (!PyCapsule_IsValid(cap, "dltensor")) return false;
  auto* managed = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap, "dltensor"));
  PyCapsule_SetName(cap, "used_dltensor");
  keep_alive = py::capsule(new DLPackHolder{managed}, [](void* p) { delete static_cast<DLPackHolder*>(p); });
  const DLTensor& t = managed->dl_tensor;
  if (t.ndim > kMaxRank) throw py::value_error("arrays of more than 8 dimensions are not supported");
  v.dtype = DType::unsupported;
  if (t.dtype.lanes == 1) {
    if (t.dtype.code == 2 && t.dtype.bits == 32) v.dtype = DType::f32;
    else if (t.dtype.code == 2 && t.dtype.bits == 64) v.dtype = DType::f64;
    else if (t.dtype.code == 2 && t.dtype.bits == 16) v.dtype = DType::f16;
    else if (t.dtype.code == 4 && t.dtype.bits == 16) v.dtype = DType::bf16;
    else if (t.dtype.code == 0 && t.dtype.bits == 64) v.dtype = DType::i64;
    else if (t.dtype.code == 0 && t.dtype.bits == 32) v.dtype = DType::i32;
    else if (t.dtype.code == 0 && t.dtype.bits == 8) v.dtype = DType::i8;
    else if (t.dtype.code == 1 && t.dtype.bits == 8) v.dtype = DType::u8;
    else if (t.dtype.code == 6 && t.dtype.bits == 8) v.dtype = DType::boolean;
  }
  set_source_dtype(v, "dlpack(code=" + std::to_string(t.dtype.code) + ",bits=" +
                          std::to_string(t.dtype.bits) + ")");
  v.device = t.device.device_type == 1 ? Device::cpu : t.device.device_type == 2 ? Device::cuda
                                                                                 : Device::unsupported;
  v.device_index = t.device.device_id;
  if (v.device == Device::unsupported)
    set_source_device(v, "dlpack(device_type=" + std::to_string(t.device.device_type) + ")");
  v.data = static_cast<char*>(t.data) + t.byte_offset;
  v.ndim = t.ndim;
  v.writable = true;
  int64_t expected = 1;
  for (int i = t.ndim - 1; i >= 0; --i) {
    v.shape[i] = t.shape[i];
    v.strides[i] = t.strides ? t.strides[i] : expected;
    expected *= t.shape[i];
  }
  return true;
}

}  // namespace

void set_torch_types(py::handle tensor_type, py::dict dtype_map) {
  Py_XINCREF(tensor_type.ptr());
  g_torch_tensor_type = tensor_type.ptr();
  g_torch_dtypes = new py::dict(dtype_map);  // lives for the process
  g_names = {PyUnicode_InternFromString("shape"),    PyUnicode_InternFromString("stride"),
             PyUnicode_InternFromString("dtype"),    PyUnicode_InternFromString("is_cuda"),
             PyUnicode_InternFromString("is_cpu"),   PyUnicode_InternFromString("get_device"),
             PyUnicode_InternFromString("data_ptr")};
}

bool load_view(py::handle src, View& out, py::object& keep_alive) {
  out = View{};
  if (py::isinstance<py::array>(src)) return load_numpy(src, out);
  if (g_torch_tensor_type && PyObject_TypeCheck(src.ptr(), reinterpret_cast<PyTypeObject*>(g_torch_tensor_type)))
    return load_torch(src, out);
  if (py::hasattr(src, "__dlpack__")) return load_dlpack(src, out, keep_alive);
  return false;
}

[[noreturn]] void no_cuda(const char* op) {
  throw ArgTypeError(cat(op, ": got a CUDA array, but this oxkernels build has no CUDA kernels "
                             "(rebuild with OXKERNELS_CUDA=ON and nvcc on PATH)"));
}

}  // namespace ox
