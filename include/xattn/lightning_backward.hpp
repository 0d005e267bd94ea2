// xattn/lightning_backward.hpp — the backward pass of lightning attention (Lightning Attention-2's
// Algorithm 2): the gradients of a loss L with respect to q, k, v, the initial state and the decays,
// given ∂L/∂out and, when the loss also depends on it, ∂L/∂final_state.
//
//   q, k, v     as the forward call took them
//   dout        [batch, N, Hq, e]   ∂L/∂out
//   dq, dk, dv  written: shaped as q, k, v; dk and dv summed over the query heads of each K/V head
//   (or [batch, heads, seq, dim] with .forward.layout = xattn::layout::bhsd)
//   states      [batch, Hq, d, e]: opt.dinitial_state (written), opt.dfinal_state (read)
//   opt.ddecay  [Hq] double, written on request: ∂L/∂s_h (λ = e^−s_h) summed over the batch, with or
//               without opt.forward.decay (then at s = 0); carried by the forward sweep that
//               recomputes the states, with one more d × e state and a few more products per chunk
//
// Pass the forward's options as opt.forward (decay, scale, block_size, initial_state, layout; its
// final_state stays empty). Nothing of the forward's results is needed: the states are recomputed
// chunk by chunk, in O(N·(d·e + B·(d + e))) time and O(B·(d + e) + d·e) scratch per thread. All
// tensors hold double, or float, Eigen::bfloat16 and Eigen::half in any mix: 16-bit tensors are
// converted to float copies in the calling thread's reusable workspace and 16-bit gradients rounded
// from float ones (the float call on the same values; the states stay float). compute = bf16 is
// rejected. Bad input throws xattn::error before anything is written. The device overloads run on
// an Eigen::ThreadPoolDevice; results are bitwise identical for any thread count (dq and the decays'
// per-batch parts are spread over the (batch, query head) pairs, dk and dv over the (batch, K/V
// head) pairs; ddecay sums the parts over the batch in index order).
#pragma once

#include "options.hpp"
#include "core/chunk_backward.hpp"
#include "core/chunk_backward_args.hpp"
#include "core/parallel.hpp"

namespace xattn {

namespace detail {
/// The front doors' body: 16-bit tensors through float copies, then the validated problem.
template <class Arch, class Device, class Q, class K, class V, class DO, class DQ, class DK, class DV>
void lightning_backward_call(const Device& dev, const Q& q, const K& k, const V& v, const DO& dout, DQ& dq, DK& dk,
                            DV& dv, const lightning_backward_options& opt) {
  constexpr const char* fn = "xattn::lightning_attention_backward";
  chunk_in_float_if_16bit(fn, q, k, v, dout, dq, dk, dv, [&](const auto& q2, const auto& k2, const auto& v2,
                                                             const auto& do2, auto& dq2, auto& dk2, auto& dv2) {
    chunk_backward_run<Arch>(make_lightning_backward_problem(fn, q2, k2, v2, do2, dq2, dk2, dv2, opt), dev);
  }, opt.ddecay);
}
}  // namespace detail

/// dq, dk, dv (and opt.dinitial_state, opt.ddecay) of L given dout = ∂L/∂out, on the calling thread.
template <class Arch = simd::default_arch, row_major_tensor<4> Q, row_major_tensor<4> K, row_major_tensor<4> V,
          row_major_tensor<4> DO, row_major_tensor<4> DQ, row_major_tensor<4> DK, row_major_tensor<4> DV>
void lightning_attention_backward(const Q& q, const K& k, const V& v, const DO& dout, DQ&& dq, DK&& dk, DV&& dv,
                                  const lightning_backward_options& opt = {}) {
  detail::lightning_backward_call<Arch>(detail::serial_device{}, q, k, v, dout, dq, dk, dv, opt);
}

/// The same on the threads of `device`.
template <class Arch = simd::default_arch, thread_pool_device D, row_major_tensor<4> Q, row_major_tensor<4> K,
          row_major_tensor<4> V, row_major_tensor<4> DO, row_major_tensor<4> DQ, row_major_tensor<4> DK,
          row_major_tensor<4> DV>
void lightning_attention_backward(const D& device, const Q& q, const K& k, const V& v, const DO& dout, DQ&& dq,
                                  DK&& dk, DV&& dv, const lightning_backward_options& opt = {}) {
  detail::lightning_backward_call<Arch>(device, q, k, v, dout, dq, dk, dv, opt);
}

}  // namespace xattn
