// xattn/error.hpp — the one exception type of the library.
#pragma once

#include <stdexcept>

namespace xattn {

/// Thrown for bad input, before anything is written. The message names the function, the
/// argument and the shapes involved: "xattn::softmax_attention: k: head_dim 64 != q head_dim 128".
class error : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

}  // namespace xattn
