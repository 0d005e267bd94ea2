// xattn/sparse.hpp — block-sparse attention: softmax attention over the key blocks a block_layout
// lists for each query block (per head or shared), with every softmax option on top (causal and
// window masks, lengths, GQA, softcap, ALiBi, sink logits, bias, mask, LSE). Builders of the usual
// layouts (dense mask, BigBird, Longformer, strided, streaming, per-head mixes, content-based top-k)
// are in block_layout.hpp.
//
// It is the softmax tile engine with another schedule: each engine block of query rows maps to one
// layout row, visits only that row's key blocks, and masks only the tiles that the band cuts (or,
// per head, that not every head of a K/V group visits). Cost O(N·nnz·d).
//
// The layout's block size must be a multiple of 64 (the engine's key tile); its block counts must
// be ⌈Nq/B⌉ × ⌈Nk/B⌉ and its heads 1 or Hq (at most 64 query heads per K/V head when per head).
#pragma once

#include "block_layout.hpp"
#include "core/parallel.hpp"
#include "core/schedule.hpp"
#include "core/softmax_args.hpp"
#include "core/tile_engine.hpp"

namespace xattn {

namespace detail {

/// A layout's block size must be a multiple of this (and so of every engine key tile).
inline constexpr index kSparseTile = 64;

template <class Q, class K, class V, class O, class L>
auto make_sparse_problem(const char* fn, const Q& q, const K& k, const V& v, O& out, L* lse,
                         const block_layout& layout, const softmax_options& opt) {
  auto p = make_softmax_problem(fn, q, k, v, out, lse, opt);
  require(p.nq > 0 && p.nk > 0, fn, p.nq > 0 ? "k" : "q", "seq is an empty axis (Nq = ", p.nq, ", Nk = ", p.nk,
          "): a block layout has at least one query and one key block");
  layout.check_for(fn, p.nq, p.nk, p.hq, kSparseTile);
  require(layout.heads() == 1 || p.group <= 64, fn, "layout", "per-head layouts need at most 64 q heads per k/v head, got ",
          p.group);
  return p;
}

template <class Arch, class Q, class K, class V, class O, class L, class Device>
void sparse_forward(const Device& dev, const Q& q, const K& k, const V& v, O& out, L* lse, const block_layout& layout,
                    const softmax_options& opt) {
  const auto p = make_sparse_problem("xattn::sparse_attention", q, k, v, out, lse, layout, opt);
  const sparse_plan plan(layout, p.hkv, p.group, key_tile<Arch>(p));
  softmax_forward<Arch>(p, dev, sparse_policy{&plan});
}

}  // namespace detail

/// out = softmax(scale·QKᵀ + bias + mask)·V over the layout's blocks, on the calling thread.
template <class Arch = simd::default_arch, row_major_tensor<4> Q, row_major_tensor<4> K, row_major_tensor<4> V,
          row_major_tensor<4> O>
void sparse_attention(const Q& q, const K& k, const V& v, O&& out, const block_layout& layout,
                      const softmax_options& opt = {}) {
  detail::sparse_forward<Arch>(detail::serial_device{}, q, k, v, out, static_cast<std::nullptr_t*>(nullptr), layout, opt);
}

/// The same, also writing each row's log-sum-exp to `lse` [batch, Hq, Nq].
template <class Arch = simd::default_arch, row_major_tensor<4> Q, row_major_tensor<4> K, row_major_tensor<4> V,
          row_major_tensor<4> O, row_major_tensor<3> L>
void sparse_attention(const Q& q, const K& k, const V& v, O&& out, L&& lse, const block_layout& layout,
                      const softmax_options& opt = {}) {
  detail::sparse_forward<Arch>(detail::serial_device{}, q, k, v, out, &lse, layout, opt);
}

/// The same on the threads of `device`.
template <class Arch = simd::default_arch, thread_pool_device D, row_major_tensor<4> Q, row_major_tensor<4> K,
          row_major_tensor<4> V, row_major_tensor<4> O>
void sparse_attention(const D& device, const Q& q, const K& k, const V& v, O&& out, const block_layout& layout,
                      const softmax_options& opt = {}) {
  detail::sparse_forward<Arch>(device, q, k, v, out, static_cast<std::nullptr_t*>(nullptr), layout, opt);
}

/// The same on the threads of `device`, also writing the log-sum-exp.
template <class Arch = simd::default_arch, thread_pool_device D, row_major_tensor<4> Q, row_major_tensor<4> K,
          row_major_tensor<4> V, row_major_tensor<4> O, row_major_tensor<3> L>
void sparse_attention(const D& device, const Q& q, const K& k, const V& v, O&& out, L&& lse,
                      const block_layout& layout, const softmax_options& opt = {}) {
  detail::sparse_forward<Arch>(device, q, k, v, out, &lse, layout, opt);
}

}  // namespace xattn
