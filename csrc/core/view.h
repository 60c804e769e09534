// View: a borrowed, typed, strided window on memory that Python owns.
// Built by the binding layer from a NumPy array, a torch tensor or any
// DLPack producer; validated by the checks in core/checks.h.
#pragma once
#include <cstdint>

namespace ox {

enum class DType : uint8_t { f32, f64, f16, bf16, i64, i32, u8, i8, boolean, unsupported };
enum class Device : uint8_t { cpu, cuda, unsupported };

constexpr int kMaxRank = 8;

const char* dtype_name(DType t);
const char* device_name(Device d);
int dtype_size(DType t);

struct View {
  void* data = nullptr;
  DType dtype = DType::unsupported;
  Device device = Device::cpu;
  int device_index = 0;
  int ndim = 0;
  int64_t shape[kMaxRank] = {};
  int64_t strides[kMaxRank] = {};  // in elements, not bytes
  bool writable = true;
  char source_dtype[24] = {};      // the producer's dtype name, for messages
  char source_device[48] = {};     // the producer's device name when unsupported, for messages

  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= shape[i];
    return n;
  }
  int64_t size(int dim) const { return shape[dim < 0 ? dim + ndim : dim]; }
  bool is_contiguous() const {
    if (numel() == 0) return true;  // no element is read: any strides will do
    int64_t expected = 1;
    for (int i = ndim - 1; i >= 0; --i) {
      if (shape[i] != 1 && strides[i] != expected) return false;
      expected *= shape[i];
    }
    return true;
  }
  // Dense: the elements fill numel() consecutive slots from `data` with no gap or overlap,
  // in some order of the dimensions (row-major, channels-last, a transpose, ...). Element-wise
  // kernels may then run over the memory as a flat array.
  bool is_dense() const {
    if (numel() == 0) return true;
    bool used[kMaxRank] = {};
    int64_t expected = 1;  // the stride the next dimension must have
    for (;;) {
      int next = -1;
      for (int i = 0; i < ndim && next < 0; ++i)
        if (!used[i] && shape[i] != 1 && strides[i] == expected) next = i;
      if (next < 0) break;
      used[next] = true;
      expected *= shape[next];
    }
    return expected == numel();  // every dimension of extent > 1 was placed
  }
  // Same memory layout as `o` (of the same shape): both row-major, or equal strides wherever
  // the extent is not 1. Element i of a flat walk is then the same element of both.
  bool same_layout(const View& o) const {
    if (is_contiguous() && o.is_contiguous()) return true;
    if (ndim != o.ndim) return false;
    for (int i = 0; i < ndim; ++i)
      if (shape[i] != o.shape[i] || (shape[i] != 1 && strides[i] != o.strides[i])) return false;
    return true;
  }
  template <class T> T* ptr() const { return static_cast<T*>(data); }
};

}  // namespace ox
