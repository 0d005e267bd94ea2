// xattn/lightning_backward.hpp — the backward pass of lightning attention (Lightning Attention-2's
// Algorithm 2): the gradients of a loss L with respect to q, k, v and the initial state, given
// ∂L/∂out and, when the loss also depends on it, ∂L/∂final_state.
//
//   q, k, v     as the forward call took them
//   dout        [batch, N, Hq, e]   ∂L/∂out
//   dq, dk, dv  written: shaped as q, k, v; dk and dv summed over the query heads of each K/V head
//   (or [batch, heads, seq, dim] with .forward.layout = xattn::layout::bhsd)
//   states      [batch, Hq, d, e]: opt.dinitial_state (written), opt.dfinal_state (read)
//
// Pass the forward's options as opt.forward (decay, scale, block_size, initial_state, layout; its
// final_state stays empty). Nothing of the forward's results is needed: the states are recomputed
// chunk by chunk, in O(N·(d·e + B·(d + e))) time and O(B·(d + e) + d·e) scratch per thread. All
// tensors hold float or double (one type per call); compute = bf16 and 16-bit storage are not
// supported. Bad input throws xattn::error before anything is written. The device overloads run on
// an Eigen::ThreadPoolDevice; results are bitwise identical for any thread count (dq is spread over
// the (batch, query head) pairs, dk and dv over the (batch, K/V head) pairs).
#pragma once

#include "options.hpp"
#include "core/chunk_backward.hpp"
#include "core/chunk_backward_args.hpp"
#include "core/parallel.hpp"

namespace xattn {

/// dq, dk, dv (and opt.dinitial_state) of L given dout = ∂L/∂out, on the calling thread.
template <class Arch = simd::default_arch, row_major_tensor<4> Q, row_major_tensor<4> K, row_major_tensor<4> V,
          row_major_tensor<4> DO, row_major_tensor<4> DQ, row_major_tensor<4> DK, row_major_tensor<4> DV>
void lightning_attention_backward(const Q& q, const K& k, const V& v, const DO& dout, DQ&& dq, DK&& dk, DV&& dv,
                                  const lightning_backward_options& opt = {}) {
  detail::chunk_backward_run<Arch>(detail::make_lightning_backward_problem("xattn::lightning_attention_backward", q, k,
                                                                           v, dout, dq, dk, dv, opt),
                                   detail::serial_device{});
}

/// The same on the threads of `device`.
template <class Arch = simd::default_arch, thread_pool_device D, row_major_tensor<4> Q, row_major_tensor<4> K,
          row_major_tensor<4> V, row_major_tensor<4> DO, row_major_tensor<4> DQ, row_major_tensor<4> DK,
          row_major_tensor<4> DV>
void lightning_attention_backward(const D& device, const Q& q, const K& k, const V& v, const DO& dout, DQ&& dq,
                                  DK&& dk, DV&& dv, const lightning_backward_options& opt = {}) {
  detail::chunk_backward_run<Arch>(detail::make_lightning_backward_problem("xattn::lightning_attention_backward", q, k,
                                                                           v, dout, dq, dk, dv, opt),
                                   device);
}

}  // namespace xattn
