// xattn/core/tensor.hpp — the small strided views the engines work on after validation (what the
// front doors accept is in options.hpp).
#pragma once

#include <array>
#include <concepts>
#include <type_traits>
#include <unsupported/Eigen/CXX11/Tensor>

#include "../options.hpp"
#include "convert.hpp"
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
/// the front door builds it from a tensor and a layout. T is the engines' compute type; the memory
/// holds `type`: T itself (then row() points into it), or a 16-bit type, which only the converting
/// accessors load() and store() read and write (row() is null then).
template <class T>
struct bshd_view {
  using byte_t = std::conditional_t<std::is_const_v<T>, const std::byte, std::byte>;
  T* data = nullptr;        // the storage when it is T, else null
  byte_t* raw = nullptr;    // the storage, whatever it holds
  elem type = elem_of<std::remove_const_t<T>>();
  index batch = 0, seq = 0, heads = 0, dim = 0;
  index sb = 0, ss = 0, sh = 0;  // element strides of batch, seq and head

  bool native() const { return type == elem_of<std::remove_const_t<T>>(); }
  index offset(index b, index s, index h) const { return b * sb + s * ss + h * sh; }
  T* row(index b, index s, index h) const { return data + offset(b, s, h); }
  byte_t* at(index b, index s, index h) const {
    return raw + offset(b, s, h) * static_cast<index>(elem_bytes(type));
  }
  /// dst[e] = scale · row[e] for e < n, in float or T.
  template <class U>
  void load(U* dst, index b, index s, index h, index n, U scale = U(1)) const {
    load_row<U>(dst, at(b, s, h), type, n, scale);
  }
  /// row[e] = scale · src[e] for e < n, rounded to the storage type.
  template <class U>
  void store(index b, index s, index h, const U* src, index n, U scale = U(1)) const {
    store_row<U>(at(b, s, h), type, src, n, scale);
  }
};

template <class T, class S>
bshd_view<T> make_view(S* data, const std::array<index, 4>& d, layout l) {
  static_assert(std::is_const_v<T> == std::is_const_v<S>, "make_view: constness of T and of the storage differ");
  using St = std::remove_const_t<S>;
  bshd_view<T> v;
  v.type = elem_of<St>();
  v.raw = reinterpret_cast<typename bshd_view<T>::byte_t*>(data);
  if constexpr (std::is_same_v<St, std::remove_const_t<T>>) v.data = data;
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
/// The view of a T tensor (compute type = storage type).
template <class T>
bshd_view<T> make_native_view(T* data, const std::array<index, 4>& d, layout l) {
  return make_view<T, T>(data, d, l);
}

}  // namespace detail
}  // namespace xattn
