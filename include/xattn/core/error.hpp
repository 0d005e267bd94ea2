// xattn/core/error.hpp — the helpers that build xattn::error messages, and the index type of the
// internals (signed, as Eigen's: differences of positions are common).
#pragma once

#include <array>
#include <cstddef>
#include <ostream>
#include <sstream>
#include <stdexcept>
#include <string>

#include "../error.hpp"

namespace xattn::detail {

using index = std::ptrdiff_t;

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

}  // namespace xattn::detail
