// xattn/softmax.hpp — exact softmax attention, softmax(scale·QKᵀ + bias + mask)·V, tiled with an
// online softmax (FlashAttention-2) so that no Nq×Nk matrix is ever materialised.
//
//   q   [batch, Nq, Hq,  d ]     k, v  [batch, Nk, Hkv, d | dv]     out [batch, Nq, Hq, dv]
//   (or [batch, heads, seq, dim] with .layout = xattn::layout::bhsd)
//   lse [batch, Hq, Nq]          natural-log log-sum-exp of each row (optional)
//
// Hkv divides Hq (multi-query / grouped-query attention); Nq != Nk is cross-attention or chunked
// prefill against a cache; dv may differ from d. Options: xattn::softmax_options (options.hpp).
// Fully masked and padded rows give zeros and LSE −inf. Bad input throws xattn::error before
// anything is written. The device overloads run on an Eigen::ThreadPoolDevice; results are
// bitwise identical for any thread count.
//
// Arch (first template parameter, defaulted) is the xsimd architecture of the kernels: the best
// one the compiler flags allow. It is part of every instantiation's name, so translation units
// built with different -march flags do not collide; softmax_attention<xattn::simd::scalar>(...)
// forces the scalar path.
#pragma once

#include "options.hpp"
#include "core/parallel.hpp"
#include "core/softmax_args.hpp"
#include "core/tile_engine.hpp"

namespace xattn {

namespace detail {
/// A decode call's cache_lengths become the options' seqlens_k: one per batch, mandatory.
inline void use_cache_lengths(softmax_options& opt, std::span<const int> cache_lengths, index batch) {
  require(opt.seqlens_k.empty(), "xattn::softmax_decode", "seqlens_k", "must be empty: cache_lengths gives the valid keys");
  require(static_cast<index>(cache_lengths.size()) == batch, "xattn::softmax_decode", "cache_lengths", "has ",
          cache_lengths.size(), " entries, expected one per batch (", batch, ")");
  opt.seqlens_k = cache_lengths;
}
}  // namespace detail

/// out = softmax(scale·QKᵀ + bias + mask)·V on the calling thread.
template <class Arch = simd::default_arch, row_major_tensor<4> Q, row_major_tensor<4> K, row_major_tensor<4> V, row_major_tensor<4> O>
void softmax_attention(const Q& q, const K& k, const V& v, O&& out, const softmax_options& opt = {}) {
  detail::softmax_forward<Arch>(detail::make_softmax_problem("xattn::softmax_attention", q, k, v, out,
                                                       static_cast<std::nullptr_t*>(nullptr), opt),
                          detail::serial_device{});
}

/// The same, also writing each row's log-sum-exp to `lse` [batch, Hq, Nq].
template <class Arch = simd::default_arch, row_major_tensor<4> Q, row_major_tensor<4> K, row_major_tensor<4> V, row_major_tensor<4> O,
          row_major_tensor<3> L>
void softmax_attention(const Q& q, const K& k, const V& v, O&& out, L&& lse, const softmax_options& opt = {}) {
  detail::softmax_forward<Arch>(detail::make_softmax_problem("xattn::softmax_attention", q, k, v, out, &lse, opt),
                          detail::serial_device{});
}

/// out = softmax(scale·QKᵀ + bias + mask)·V on the threads of `device`.
template <class Arch = simd::default_arch, thread_pool_device D, row_major_tensor<4> Q, row_major_tensor<4> K, row_major_tensor<4> V,
          row_major_tensor<4> O>
void softmax_attention(const D& device, const Q& q, const K& k, const V& v, O&& out,
                       const softmax_options& opt = {}) {
  detail::softmax_forward<Arch>(detail::make_softmax_problem("xattn::softmax_attention", q, k, v, out,
                                                       static_cast<std::nullptr_t*>(nullptr), opt),
                          device);
}

/// The same on the threads of `device`, also writing the log-sum-exp.
template <class Arch = simd::default_arch, thread_pool_device D, row_major_tensor<4> Q, row_major_tensor<4> K, row_major_tensor<4> V,
          row_major_tensor<4> O, row_major_tensor<3> L>
void softmax_attention(const D& device, const Q& q, const K& k, const V& v, O&& out, L&& lse,
                       const softmax_options& opt = {}) {
  detail::softmax_forward<Arch>(detail::make_softmax_problem("xattn::softmax_attention", q, k, v, out, &lse, opt),
                          device);
}

/// Decode: the few new query rows `q` [batch, Nq, Hq, d] against a KV cache [batch, capacity, Hkv, d]
/// whose first cache_lengths[b] rows are valid (the new tokens' own keys already appended). Equal to
/// softmax_attention with seqlens_k = cache_lengths; set .causal = true when Nq > 1 (speculative or
/// chunked decode). When batch × K/V heads is too small to fill the threads, the keys are split into
/// chunks computed in parallel and merged by their log-sum-exp (flash-decoding); the split depends
/// on the shapes only, so results stay bitwise identical for any thread count.
template <class Arch = simd::default_arch, row_major_tensor<4> Q, row_major_tensor<4> K, row_major_tensor<4> V, row_major_tensor<4> O>
void softmax_decode(const Q& q, const K& k_cache, const V& v_cache, O&& out, std::span<const int> cache_lengths,
                    softmax_options opt = {}) {
  detail::use_cache_lengths(opt, cache_lengths, q.dimension(0));
  detail::softmax_forward<Arch>(detail::make_softmax_problem("xattn::softmax_decode", q, k_cache, v_cache, out,
                                                       static_cast<std::nullptr_t*>(nullptr), opt, "cache_lengths"),
                          detail::serial_device{});
}

/// Decode on the threads of `device`.
template <class Arch = simd::default_arch, thread_pool_device D, row_major_tensor<4> Q, row_major_tensor<4> K, row_major_tensor<4> V,
          row_major_tensor<4> O>
void softmax_decode(const D& device, const Q& q, const K& k_cache, const V& v_cache, O&& out,
                    std::span<const int> cache_lengths, softmax_options opt = {}) {
  detail::use_cache_lengths(opt, cache_lengths, q.dimension(0));
  detail::softmax_forward<Arch>(detail::make_softmax_problem("xattn::softmax_decode", q, k_cache, v_cache, out,
                                                       static_cast<std::nullptr_t*>(nullptr), opt, "cache_lengths"),
                          device);
}

}  // namespace xattn
