// xattn/core/tensor.hpp — the small strided views the engines work on after validation (what the
// front doors accept is in options.hpp).
#pragma once

#include <array>
#include <concepts>
#include <type_traits>
#include <unsupported/Eigen/CXX11/Tensor>

#include "../options.hpp"
#include "error.hpp"

namespace xattn {




namespace detail {

template <class X>
std::array<index, std::remove_cvref_t<X>::NumDimensions> dims_of(const X& x) {
  std::array<index, std::remove_cvref_t<X>::NumDimensions> d{};
  for (std::size_t i = 0; i < d.size(); ++i) d[i] = x.dimension(static_cast<int>(i));
  return d;
}

/// A [batch, seq, heads, dim] view with explicit strides (dim is contiguous). Engines index it;
/// the front door builds it from a tensor and a layout.
template <class T>
struct bshd_view {
  T* data = nullptr;
  index batch = 0, seq = 0, heads = 0, dim = 0;
  index sb = 0, ss = 0, sh = 0;  // element strides of batch, seq and head

  T* row(index b, index s, index h) const { return data + b * sb + s * ss + h * sh; }
};

template <class T>
bshd_view<T> make_view(T* data, const std::array<index, 4>& d, layout l) {
  bshd_view<T> v;
  v.data = data;
  v.batch = d[0];
  v.dim = d[3];
  if (l == layout::bshd) {
    v.seq = d[1], v.heads = d[2];
    v.sh = d[3], v.ss = d[2] * d[3], v.sb = d[1] * d[2] * d[3];
  } else {
    v.heads = d[1], v.seq = d[2];
    v.ss = d[3], v.sh = d[2] * d[3], v.sb = d[1] * d[2] * d[3];
  }
  return v;
}

}  // namespace detail
}  // namespace xattn
