// xattn/core/tensor.hpp — what the front doors accept (Eigen tensors and maps, row-major) and the
// small strided views the engines work on after validation.
#pragma once

#include <array>
#include <concepts>
#include <type_traits>
#include <unsupported/Eigen/CXX11/Tensor>

#include "error.hpp"

namespace xattn {

/// Memory order of the four axes of q, k, v and out. FlashAttention and flash-linear-attention
/// use [batch, seq, heads, head_dim]; PyTorch's SDPA uses [batch, heads, seq, head_dim].
enum class layout { bshd, bhsd };

/// An Eigen::Tensor<T, R, Eigen::RowMajor> or an Eigen::TensorMap of one (zero copy).
template <class X, int R>
concept row_major_tensor = requires(X& x) {
  { x.data() };
  { x.dimension(0) } -> std::convertible_to<index>;
} && (std::remove_cvref_t<X>::NumDimensions == R) &&
    (static_cast<int>(Eigen::internal::traits<std::remove_cvref_t<X>>::Layout) ==
     static_cast<int>(Eigen::RowMajor));

template <class X>
using scalar_of = std::remove_const_t<typename std::remove_cvref_t<X>::Scalar>;

/// A read-only reference to a 4-D row-major tensor of T, built implicitly from an Eigen::Tensor
/// or an Eigen::TensorMap; used for the optional inputs of an options struct (bias, mask).
template <class T>
struct tensor_cref {
  const T* data = nullptr;
  std::array<index, 4> dims{};

  tensor_cref() = default;
  template <row_major_tensor<4> X>
    requires std::same_as<scalar_of<X>, T>
  tensor_cref(const X& x)  // NOLINT: implicit on purpose, so `.bias = my_tensor` reads well
      : data(x.data()), dims{x.dimension(0), x.dimension(1), x.dimension(2), x.dimension(3)} {}
  explicit operator bool() const { return data != nullptr; }
};

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
