// Argument errors raised by the C++ core; the binding layer turns them into
// Python TypeError / ValueError with the message unchanged.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace ox {

struct ArgTypeError : std::runtime_error { using std::runtime_error::runtime_error; };
struct ArgValueError : std::runtime_error { using std::runtime_error::runtime_error; };

template <class... Parts> std::string cat(Parts&&... parts) {
  std::ostringstream s;
  (s << ... << std::forward<Parts>(parts));
  return s.str();
}

template <class... Parts> [[noreturn]] void type_error(Parts&&... parts) {
  throw ArgTypeError(cat(std::forward<Parts>(parts)...));
}
template <class... Parts> [[noreturn]] void value_error(Parts&&... parts) {
  throw ArgValueError(cat(std::forward<Parts>(parts)...));
}

}  // namespace ox
