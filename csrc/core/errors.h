// Argument errors raised by the C++ core; the binding layer turns them into
// Python TypeError / ValueError with the message unchanged.
#pragma once
#include <cstdio>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

namespace ox {

struct ArgTypeError : std::runtime_error { using std::runtime_error::runtime_error; };
struct ArgValueError : std::runtime_error { using std::runtime_error::runtime_error; };

// Message pieces. No iostreams: a std::ostringstream inside this module
// crashed on one machine (H200 image, 2026-11-26) while plain strings did not.
inline void append_piece(std::string& s, const std::string& v) { s += v; }
inline void append_piece(std::string& s, const char* v) { s += v ? v : "(null)"; }
inline void append_piece(std::string& s, char v) { s += v; }
inline void append_piece(std::string& s, bool v) { s += v ? "true" : "false"; }
template <class T, std::enable_if_t<std::is_integral_v<T>, int> = 0>
inline void append_piece(std::string& s, T v) { s += std::to_string(v); }
template <class T, std::enable_if_t<std::is_floating_point_v<T>, int> = 0>
inline void append_piece(std::string& s, T v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", static_cast<double>(v));
  s += buf;
}

template <class... Parts> std::string cat(Parts&&... parts) {
  std::string s;
  (append_piece(s, std::forward<Parts>(parts)), ...);
  return s;
}

template <class... Parts> [[noreturn]] void type_error(Parts&&... parts) {
  throw ArgTypeError(cat(std::forward<Parts>(parts)...));
}
template <class... Parts> [[noreturn]] void value_error(Parts&&... parts) {
  throw ArgValueError(cat(std::forward<Parts>(parts)...));
}

}  // namespace ox
