// Argument checks for the entry points of every op. Each names the op and the
// argument, says what was expected and what came, and throws ArgTypeError
// (dtype, device, not an array) or ArgValueError (shape, rank, values).
#pragma once
#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>

#include "core/errors.h"
#include "core/view.h"

namespace ox {

std::string shape_str(const View& v);
// The dtype's name as the caller's library spells it (the source's, for an unsupported one).
std::string dtype_of(const View& v);

// A CPU or CUDA array (a meta tensor, say, has no memory a kernel could read).
void check_device(const char* op, const char* arg, const View& v);
// check_device, then one of the allowed dtypes (the first check of every op's main input).
void check_dtype(const char* op, const char* arg, const View& v, std::initializer_list<DType> allowed);
void check_rank(const char* op, const char* arg, const View& v, int rank);
void check_rank_between(const char* op, const char* arg, const View& v, int lo, int hi);
// Expected extents; kAnySize accepts any size in that dimension, and any other negative one
// (a size computed from arguments that overflowed) is an error.
constexpr int64_t kAnySize = INT64_MIN;
void check_shape(const char* op, const char* arg, const View& v, std::initializer_list<int64_t> dims);
// v has exactly ref's shape (the message shows both).
void check_same_shape(const char* op, const char* arg, const View& v, const View& ref);
void check_contiguous(const char* op, const char* arg, const View& v);
// Dense in some dimension order (View::is_dense): row-major, channels-last, ...
void check_dense(const char* op, const char* arg, const View& v);
// The memory layout of ref (View::same_layout; shapes already checked equal).
void check_same_layout(const char* op, const char* arg, const View& v, const char* ref_arg, const View& ref);
void check_writable(const char* op, const char* arg, const View& v);
void check_same_dtype(const char* op, const char* arg, const View& v, const char* ref_arg, const View& ref);
void check_same_device(const char* op, const char* arg, const View& v, const char* ref_arg, const View& ref);
// Same dtype, device and contiguity as ref (the usual rule for companions of the main input).
void check_like(const char* op, const char* arg, const View& v, const char* ref_arg, const View& ref);
// A freshly allocated output: contiguous, writable, given shape, same dtype/device as ref.
void check_output(const char* op, const char* arg, const View& v, const View& ref,
                  std::initializer_list<int64_t> dims);
// Scratch a kernel writes `need` elements of `dtype` into from its data pointer: on ref's
// device, of that dtype, contiguous, writable, at least `need` elements.
void check_scratch(const char* op, const char* arg, const View& v, const char* ref_arg, const View& ref, int64_t need,
                   DType dtype);
// CUDA scratch: required when need > 0; check_scratch of ref's dtype. Returns it (or null
// when none is needed).
const View* check_workspace(const char* op, const View* ws, const char* ref_arg, const View& ref, int64_t need);
// Outputs a kernel writes while still reading the inputs: no output may share memory with an
// input (their byte ranges, conservatively: interleaved views count as overlapping). A null
// View is an absent optional argument.
using NamedArray = std::pair<const char*, const View*>;
void check_apart(const char* op, std::initializer_list<NamedArray> outputs, std::initializer_list<NamedArray> inputs);
// Element counts of the ranges our kernels index with int64 must not overflow.
void check_numel_fits(const char* op, const char* arg, const View& v);

}  // namespace ox
