#include "core/checks.h"

#include <limits>

namespace ox {

const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "float32";
    case DType::f64: return "float64";
    case DType::f16: return "float16";
    case DType::bf16: return "bfloat16";
    case DType::i64: return "int64";
    case DType::i32: return "int32";
    case DType::u8: return "uint8";
    case DType::i8: return "int8";
    case DType::boolean: return "bool";
    default: return "unsupported";
  }
}

const char* device_name(Device d) {
  switch (d) {
    case Device::cpu: return "cpu";
    case Device::cuda: return "cuda";
    default: return "unsupported";
  }
}

int dtype_size(DType t) {
  switch (t) {
    case DType::f64: case DType::i64: return 8;
    case DType::f32: case DType::i32: return 4;
    case DType::f16: case DType::bf16: return 2;
    case DType::u8: case DType::i8: case DType::boolean: return 1;
    default: return 0;
  }
}

static std::string tuple_str(const int64_t* values, int n) {
  std::string s = "(";
  for (int i = 0; i < n; ++i) {
    if (i) s += ", ";
    s += std::to_string(values[i]);
  }
  if (n == 1) s += ",";
  return s + ")";
}

std::string shape_str(const View& v) { return tuple_str(v.shape, v.ndim); }
static std::string strides_str(const View& v) { return tuple_str(v.strides, v.ndim); }

void check_device(const char* op, const char* arg, const View& v) {
  if (v.device == Device::unsupported)
    type_error(op, ": argument '", arg, "' is on device ", v.source_device[0] ? v.source_device : "unknown",
               "; oxkernels runs on cpu and cuda arrays");
}

std::string dtype_of(const View& v) {
  return v.dtype == DType::unsupported && v.source_dtype[0] ? v.source_dtype : dtype_name(v.dtype);
}

void check_dtype(const char* op, const char* arg, const View& v, std::initializer_list<DType> allowed) {
  check_device(op, arg, v);
  for (DType t : allowed)
    if (v.dtype == t) return;
  std::string want;
  for (DType t : allowed) want += (want.empty() ? "" : " or ") + std::string(dtype_name(t));
  type_error(op, ": argument '", arg, "' must be ", want, ", got ", dtype_of(v));
}

void check_rank(const char* op, const char* arg, const View& v, int rank) {
  if (v.ndim != rank)
    value_error(op, ": argument '", arg, "' must have ", rank, " dimension", rank == 1 ? "" : "s",
                ", got shape ", shape_str(v));
}

void check_rank_between(const char* op, const char* arg, const View& v, int lo, int hi) {
  if (v.ndim < lo || v.ndim > hi)
    value_error(op, ": argument '", arg, "' must have ", lo, " to ", hi, " dimensions, got shape ",
                shape_str(v));
}

void check_shape(const char* op, const char* arg, const View& v, std::initializer_list<int64_t> dims) {
  for (int64_t d : dims)  // a size computed from other arguments that went negative (an overflow)
    if (d < 0 && d != kAnySize)
      value_error(op, ": the shape expected for argument '", arg, "' is out of range (a size of ", d,
                  "): check the arguments it is computed from");
  bool ok = v.ndim == static_cast<int>(dims.size());
  int i = 0;
  for (int64_t d : dims) {
    if (ok && d != kAnySize && v.shape[i] != d) ok = false;
    ++i;
  }
  if (ok) return;
  std::string want = "(";
  i = 0;
  for (int64_t d : dims) {
    want += (i++ ? ", " : "") + (d != kAnySize ? std::to_string(d) : std::string("*"));
  }
  want += dims.size() == 1 ? ",)" : ")";
  value_error(op, ": argument '", arg, "' must have shape ", want, ", got ", shape_str(v));
}

void check_same_shape(const char* op, const char* arg, const View& v, const View& ref) {
  bool same = v.ndim == ref.ndim;
  for (int i = 0; same && i < ref.ndim; ++i) same = v.shape[i] == ref.shape[i];
  if (!same) value_error(op, ": argument '", arg, "' must have shape ", shape_str(ref), ", got ", shape_str(v));
}

void check_contiguous(const char* op, const char* arg, const View& v) {
  if (!v.is_contiguous())
    value_error(op, ": argument '", arg, "' must be contiguous (row-major); call .contiguous() or "
                "np.ascontiguousarray first");
}

void check_dense(const char* op, const char* arg, const View& v) {
  if (!v.is_dense())
    value_error(op, ": argument '", arg, "' must be dense (contiguous in some order of its dimensions, e.g. "
                "row-major or channels_last, without gaps), got shape ", shape_str(v), " with strides ",
                strides_str(v), "; call .contiguous() first");
}

void check_same_layout(const char* op, const char* arg, const View& v, const char* ref_arg, const View& ref) {
  if (!v.same_layout(ref))
    value_error(op, ": argument '", arg, "' must have the memory layout of '", ref_arg, "' (strides ",
                strides_str(ref), "), got strides ", strides_str(v));
}

void check_writable(const char* op, const char* arg, const View& v) {
  if (!v.writable) value_error(op, ": argument '", arg, "' must be writable, got a read-only array");
}

void check_same_dtype(const char* op, const char* arg, const View& v, const char* ref_arg, const View& ref) {
  if (v.dtype != ref.dtype)
    type_error(op, ": argument '", arg, "' must have the dtype of '", ref_arg, "' (", dtype_of(ref),
               "), got ", dtype_of(v));
}

void check_same_device(const char* op, const char* arg, const View& v, const char* ref_arg, const View& ref) {
  check_device(op, arg, v);
  if (v.device != ref.device || v.device_index != ref.device_index)
    type_error(op, ": argument '", arg, "' is on ", device_name(v.device), ":", v.device_index,
               " but '", ref_arg, "' is on ", device_name(ref.device), ":", ref.device_index,
               "; all arrays must be on one device");
}

void check_like(const char* op, const char* arg, const View& v, const char* ref_arg, const View& ref) {
  check_same_device(op, arg, v, ref_arg, ref);
  check_same_dtype(op, arg, v, ref_arg, ref);
  check_contiguous(op, arg, v);
}

void check_output(const char* op, const char* arg, const View& v, const View& ref,
                  std::initializer_list<int64_t> dims) {
  check_same_device(op, arg, v, "input", ref);
  check_same_dtype(op, arg, v, "input", ref);
  check_shape(op, arg, v, dims);
  check_contiguous(op, arg, v);
  check_writable(op, arg, v);
}

void check_scratch(const char* op, const char* arg, const View& v, const char* ref_arg, const View& ref, int64_t need,
                   DType dtype) {
  check_same_device(op, arg, v, ref_arg, ref);
  check_dtype(op, arg, v, {dtype});
  check_contiguous(op, arg, v);
  check_writable(op, arg, v);
  if (v.numel() < need) value_error(op, ": argument '", arg, "' must hold at least ", need, " elements, got ", v.numel());
}

const View* check_workspace(const char* op, const View* ws, const char* ref_arg, const View& ref, int64_t need) {
  if (need <= 0) return nullptr;
  if (!ws) value_error(op, ": argument 'workspace' is required for CUDA arrays of this shape (", need, " elements)");
  check_scratch(op, "workspace", *ws, ref_arg, ref, need, ref.dtype);
  return ws;
}

void check_numel_fits(const char* op, const char* arg, const View& v) {
  __int128 n = 1;
  for (int i = 0; i < v.ndim; ++i) {
    n *= v.shape[i];
    if (n > static_cast<__int128>(std::numeric_limits<int64_t>::max() / 16))
      value_error(op, ": argument '", arg, "' has too many elements (shape ", shape_str(v), ")");
  }
}

// [lo, hi]: the bytes v's elements occupy (false when it has none).
static bool byte_span(const View& v, uintptr_t* lo, uintptr_t* hi) {
  if (v.numel() == 0 || !v.data) return false;
  int64_t first = 0, last = 0;
  for (int i = 0; i < v.ndim; ++i) (v.strides[i] < 0 ? first : last) += v.strides[i] * (v.shape[i] - 1);
  const int64_t size = dtype_size(v.dtype) > 0 ? dtype_size(v.dtype) : 1;
  *lo = reinterpret_cast<uintptr_t>(v.data) + first * size;
  *hi = reinterpret_cast<uintptr_t>(v.data) + (last + 1) * size - 1;
  return true;
}

static void check_no_overlap(const char* op, const char* out_arg, const View& out, const char* in_arg,
                             const View& in) {
  uintptr_t out_lo, out_hi, in_lo, in_hi;
  if (!byte_span(out, &out_lo, &out_hi) || !byte_span(in, &in_lo, &in_hi)) return;
  if (out.device != in.device || out.device_index != in.device_index) return;
  if (out_lo <= in_hi && in_lo <= out_hi)
    value_error(op, ": argument '", out_arg, "' shares memory with argument '", in_arg, "', which the kernel ",
                "still reads while it writes '", out_arg, "'; pass a separate output");
}

void check_apart(const char* op, std::initializer_list<NamedArray> outputs, std::initializer_list<NamedArray> inputs) {
  for (const auto& [out_arg, out] : outputs)
    for (const auto& [in_arg, in] : inputs)
      if (out && in) check_no_overlap(op, out_arg, *out, in_arg, *in);
}

}  // namespace ox
