// PrivateCopy: a caller's small CPU array copied into memory only this call can reach.
//
// For arrays whose values address memory after a range check: class targets, row indices,
// labels and shuffles, pooling offsets. Every native call releases the GIL, so another
// Python thread may write the caller's array between the check and the kernel's reads;
// checking and reading the copy makes an out-of-range index impossible in the kernel.
// Arrays the copy does not apply to pass through unchanged: CUDA memory (its kernels guard
// the indices themselves), and views that are not contiguous or not of a known dtype,
// which the checks that follow refuse.
#pragma once
#include <cstring>
#include <vector>

#include "core/view.h"

namespace ox {

int dtype_size(DType t);

class PrivateCopy {
 public:
  explicit PrivateCopy(const View& v) : view_(v) {
    const int64_t size = dtype_size(v.dtype);
    if (v.device != Device::cpu || size == 0 || !v.is_contiguous() || v.numel() == 0) return;
    bytes_.resize(static_cast<size_t>(v.numel() * size));
    std::memcpy(bytes_.data(), v.data, bytes_.size());
    view_.data = bytes_.data();
  }
  PrivateCopy(PrivateCopy&&) = default;  // the buffer moves, so view_ still points into it
  PrivateCopy(const PrivateCopy&) = delete;
  PrivateCopy& operator=(const PrivateCopy&) = delete;

  const View& view() const { return view_; }

 private:
  std::vector<unsigned char> bytes_;
  View view_;
};

}  // namespace ox
