// xattn/core/error.hpp — the one exception type of the library and the helpers that build it.
#pragma once

#include <array>
#include <cstddef>
#include <ostream>
#include <sstream>
#include <stdexcept>
#include <string>

namespace xattn {

using index = std::ptrdiff_t;

/// Thrown for bad input, before anything is written. The message names the function, the
/// argument and the shapes involved: "xattn::softmax_attention: k: head_dim 64 != q head_dim 128".
class error : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

namespace detail {

/// A shape as it prints in messages, "[2, 128, 8, 64]". Formatted only when a message is built, so
/// a call that passes validation builds no strings.
template <std::size_t R>
struct shape_of {
  std::array<index, R> d;
  friend std::ostream& operator<<(std::ostream& s, const shape_of& x) {
    s << '[';
    for (std::size_t i = 0; i < R; ++i) s << (i ? ", " : "") << x.d[i];
    return s << ']';
  }
};

template <std::size_t R>
shape_of<R> shape_str(const std::array<index, R>& d) {
  return {d};
}

/// Throws xattn::error("<fn>: <arg>: <what>") when `ok` is false.
template <class... Parts>
void require(bool ok, const char* fn, const char* arg, const Parts&... what) {
  if (ok) return;
  std::ostringstream s;
  s << fn << ": " << arg << ": ";
  (s << ... << what);
  throw error(s.str());
}

}  // namespace detail
}  // namespace xattn
