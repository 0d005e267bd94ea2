// xattn/sliding_window.hpp — sliding-window attention: softmax attention in which query i sees a
// band of keys [i − left·dilation, i + right·dilation] (bottom-right aligned when Nq != Nk, as
// FlashAttention's window_size), optionally dilated (NATTEN: neighbours at multiples of the
// dilation), plus always-visible sink tokens (StreamingLLM), optionally restricted to chunks
// (Llama 4's chunked attention, FA's attention_chunk). Options: xattn::sliding_window_options and
// xattn::streaming_options (options.hpp); every softmax option applies through their `.softmax`
// member. 2-D neighborhood attention has its own header, neighborhood.hpp.
//
// It is the softmax tile engine with another schedule: only key tiles that meet the band (or
// hold sinks) are visited, so the cost is O(N·w·d), and only the tiles that cut the band's edges
// are masked. Shapes, layouts, LSE, GQA, errors and thread-count invariance are softmax_attention's.
#pragma once

#include <span>
#include <vector>

#include "core/parallel.hpp"
#include "core/schedule.hpp"
#include "core/tile_engine.hpp"
#include "core/window_args.hpp"
#include "options.hpp"

namespace xattn {

namespace detail {
template <class Arch, class Q, class K, class V, class O, class L, class Device>
void sliding_window_forward(const Device& dev, const Q& q, const K& k, const V& v, O& out, L* lse,
                            const sliding_window_options& opt) {
  window_spec w;
  const auto p = make_window_problem("xattn::sliding_window_attention", q, k, v, out, lse, opt, w);
  softmax_forward<Arch>(p, dev, window_policy{w});
}



template <class Arch, class Q, class K, class V, class O, class Device>
void streaming_decode_forward(const Device& dev, const Q& q, const K& k, const V& v, O& out,
                              std::span<const int> tokens, const streaming_options& o) {
  constexpr const char* fn = "xattn::streaming_decode";
  const softmax_options& s = o.softmax;
  require(o.sinks >= 0, fn, "sinks", "must be >= 0, got ", o.sinks);
  require(o.window >= 1, fn, "window", "must be >= 1, got ", o.window);
  require(!s.causal && s.window_left == -1 && s.window_right == -1, fn, "softmax",
          "causal and window must be unset: the cache holds exactly the visible keys");
  require(s.alibi_slopes.empty(), fn, "softmax.alibi_slopes", "not supported: ring slots do not keep positions");
  require(s.seqlens_q.empty() && s.seqlens_k.empty(), fn, "softmax", "seqlens_q and seqlens_k must be empty: tokens gives them");
  require(!s.bias && !s.mask, fn, "softmax", "bias and mask are not supported");
  const index seq_axis = s.layout == layout::bshd ? 1 : 2;
  require(q.dimension(seq_axis) == 1, fn, "q", "one new token per call, got ", q.dimension(seq_axis));
  require(k.dimension(seq_axis) == o.sinks + o.window, fn, "k_cache", "holds ", k.dimension(seq_axis),
          " slots, expected sinks + window = ", o.sinks + o.window);
  require(static_cast<index>(tokens.size()) == q.dimension(0), fn, "tokens", "has ", tokens.size(),
          " entries, expected one per batch (", q.dimension(0), ")");
  std::vector<int> lengths(tokens.size());
  for (std::size_t b = 0; b < tokens.size(); ++b) {
    require(tokens[b] >= 1, fn, "tokens", "[", b, "] = ", tokens[b], ": the new token must be in the cache");
    lengths[b] = int(std::min<index>(tokens[b], o.sinks + o.window));  // softmax does not care about slot order
  }
  softmax_options so = s;
  so.seqlens_k = lengths;
  softmax_forward<Arch>(make_softmax_problem(fn, q, k, v, out, static_cast<std::nullptr_t*>(nullptr), so, "tokens"), dev);
}

}  // namespace detail

/// Streaming decode: one new query token q [batch, 1, Hq, d] against a streaming cache k_cache,
/// v_cache [batch, sinks + window, Hkv, d] that the caller fills, writing token t's key and value
/// at slot streaming_slot(t, opt) before the call; tokens[b] counts batch b's tokens so far, the new
/// one included. Equal (within rounding) to the last row of sliding_window_attention over the full
/// history with {.window_left = window − 1, .causal = true, .sinks = sinks}, in bounded memory.
template <class Arch = simd::default_arch, row_major_tensor<4> Q, row_major_tensor<4> K, row_major_tensor<4> V,
          row_major_tensor<4> O>
void streaming_decode(const Q& q, const K& k_cache, const V& v_cache, O&& out, std::span<const int> tokens,
                      const streaming_options& opt) {
  detail::streaming_decode_forward<Arch>(detail::serial_device{}, q, k_cache, v_cache, out, tokens, opt);
}

/// The same on the threads of `device` (long windows split their keys over the threads).
template <class Arch = simd::default_arch, thread_pool_device D, row_major_tensor<4> Q, row_major_tensor<4> K,
          row_major_tensor<4> V, row_major_tensor<4> O>
void streaming_decode(const D& device, const Q& q, const K& k_cache, const V& v_cache, O&& out,
                      std::span<const int> tokens, const streaming_options& opt) {
  detail::streaming_decode_forward<Arch>(device, q, k_cache, v_cache, out, tokens, opt);
}

/// out = softmax(scale·QKᵀ + bias + window mask)·V on the calling thread.
template <class Arch = simd::default_arch, row_major_tensor<4> Q, row_major_tensor<4> K, row_major_tensor<4> V,
          row_major_tensor<4> O>
void sliding_window_attention(const Q& q, const K& k, const V& v, O&& out, const sliding_window_options& opt = {}) {
  detail::sliding_window_forward<Arch>(detail::serial_device{}, q, k, v, out, static_cast<std::nullptr_t*>(nullptr), opt);
}

/// The same, also writing each row's log-sum-exp to `lse` [batch, Hq, Nq].
template <class Arch = simd::default_arch, row_major_tensor<4> Q, row_major_tensor<4> K, row_major_tensor<4> V,
          row_major_tensor<4> O, row_major_tensor<3> L>
void sliding_window_attention(const Q& q, const K& k, const V& v, O&& out, L&& lse,
                              const sliding_window_options& opt = {}) {
  detail::sliding_window_forward<Arch>(detail::serial_device{}, q, k, v, out, &lse, opt);
}

/// The same on the threads of `device`.
template <class Arch = simd::default_arch, thread_pool_device D, row_major_tensor<4> Q, row_major_tensor<4> K,
          row_major_tensor<4> V, row_major_tensor<4> O>
void sliding_window_attention(const D& device, const Q& q, const K& k, const V& v, O&& out,
                              const sliding_window_options& opt = {}) {
  detail::sliding_window_forward<Arch>(device, q, k, v, out, static_cast<std::nullptr_t*>(nullptr), opt);
}

/// The same on the threads of `device`, also writing the log-sum-exp.
template <class Arch = simd::default_arch, thread_pool_device D, row_major_tensor<4> Q, row_major_tensor<4> K,
          row_major_tensor<4> V, row_major_tensor<4> O, row_major_tensor<3> L>
void sliding_window_attention(const D& device, const Q& q, const K& k, const V& v, O&& out, L&& lse,
                              const sliding_window_options& opt = {}) {
  detail::sliding_window_forward<Arch>(device, q, k, v, out, &lse, opt);
}

}  // namespace xattn
