// xattn/core/tile.hpp — the operands of the engines' products.
//
// A product names its destination first, then its operands, each a tile: a pointer, its rows and
// columns, and the distance between rows (the leading dimension), ThunderKittens' and BLAS's
// {pointer, rows, cols, ld}. C[m × n] = A[m × k]·B[k × n] takes m and n from C and k from B; a
// broadcast operand (A of mma_ab, read one element at a time) is `strided`: any two strides, so
// that a row-major matrix and the transpose of one are the same type.
#pragma once

#include <type_traits>

#include "error.hpp"  // detail::index

namespace xattn::detail {

/// rows × cols elements, element (r, c) at p[r·ld + c].
template <class T>
struct tile {
  T* p;
  index rows, cols, ld;

  T* row(index r) const { return p + r * ld; }
  /// The rows × cols tile whose first element is (r0, c0) of this one.
  tile block(index r0, index c0, index nr, index nc) const { return {p + r0 * ld + c0, nr, nc, ld}; }
  operator tile<const T>() const
    requires(!std::is_const_v<T>)
  {
    return {p, rows, cols, ld};
  }
};

/// An operand read element by element: (r, k) at p[r·rs + k·cs].
template <class T>
struct strided {
  const T* p;
  index rs, cs;
};
/// The matrix whose rows are p's rows, ld apart.
template <class T>
strided<T> by_rows(const T* p, index ld) {
  return {p, ld, 1};
}
/// The transpose of the matrix whose rows are p's rows, ld apart: its rows are p's columns.
template <class T>
strided<T> by_cols(const T* p, index ld) {
  return {p, 1, ld};
}

}  // namespace xattn::detail
