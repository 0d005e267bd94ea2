// xattn/reference/sparse.hpp — the fp64 oracle of sparse attention: expands the block layout into a
// dense boolean mask [1 | batch, heads, Nq, Nk] (ANDed with the caller's mask) and runs the softmax
// reference with it.
#pragma once

#include <memory>

#include "../block_layout.hpp"
#include "softmax.hpp"

namespace xattn::reference {
namespace detail {

using xattn::detail::index;

template <class T>
void sparse_attention(xattn::detail::softmax_problem<T> p, const block_layout& layout) {
  const index bm = p.mask && p.mask_sb ? p.batch : 1;
  std::unique_ptr<bool[]> m(new bool[static_cast<std::size_t>(bm * p.hq * p.nq * p.nk)]);
  const index B = layout.block_size();
  for (index b = 0; b < bm; ++b)
    for (index h = 0; h < p.hq; ++h)
      for (index i = 0; i < p.nq; ++i) {
        bool* row = m.get() + ((b * p.hq + h) * p.nq + i) * p.nk;
        for (index j = 0; j < p.nk; ++j) row[j] = false;
        for (int kb : layout.row(h, i / B))
          for (index j = kb * B; j < std::min(p.nk, (kb + 1) * B); ++j) row[j] = true;
        if (p.mask)
          for (index j = 0; j < p.nk; ++j) row[j] = row[j] && p.mask[b * p.mask_sb + h * p.mask_sh + i * p.nk + j];
      }
  p.mask = m.get();
  p.mask_sh = p.nq * p.nk, p.mask_sb = bm == 1 ? 0 : p.hq * p.nq * p.nk;
  detail::softmax_attention(p);
}

}  // namespace detail

/// Sparse attention in double; same contract and errors as xattn::sparse_attention.
template <row_major_tensor<4> Q, row_major_tensor<4> K, row_major_tensor<4> V, row_major_tensor<4> O>
void sparse_attention(const Q& q, const K& k, const V& v, O&& out, const block_layout& layout,
                      const softmax_options& opt = {}) {
  static_assert(xattn::detail::native_storage_v<Q, K, V, O>,
                "xattn::reference: the references read float or double tensors (cast 16-bit ones with .cast<double>())");
  const char* fn = "xattn::reference::sparse_attention";
  auto p = xattn::detail::make_softmax_problem(fn, q, k, v, out, static_cast<std::nullptr_t*>(nullptr), opt);
  layout.check_for(fn, p.nq, p.nk, p.hq, 1);
  detail::sparse_attention(p, layout);
}

/// The same, also writing the log-sum-exp to `lse` [batch, q heads, Nq].
template <row_major_tensor<4> Q, row_major_tensor<4> K, row_major_tensor<4> V, row_major_tensor<4> O,
          row_major_tensor<3> L>
void sparse_attention(const Q& q, const K& k, const V& v, O&& out, L&& lse, const block_layout& layout,
                      const softmax_options& opt = {}) {
  static_assert(xattn::detail::native_storage_v<Q, K, V, O>,
                "xattn::reference: the references read float or double tensors (cast 16-bit ones with .cast<double>())");
  const char* fn = "xattn::reference::sparse_attention";
  auto p = xattn::detail::make_softmax_problem(fn, q, k, v, out, &lse, opt);
  layout.check_for(fn, p.nq, p.nk, p.hq, 1);
  detail::sparse_attention(p, layout);
}

}  // namespace xattn::reference
