// xattn/softmax_backward.hpp — the backward pass of exact softmax attention (FlashAttention-2's
// algorithm): the gradients of a loss L with respect to q, k and v, given ∂L/∂out.
//
//   q, k, v, out, lse   as the forward call took and produced them (out and lse: its results)
//   dout  [batch, Nq, Hq, dv]   ∂L/∂out
//   dq, dk, dv                  written: shaped as q, k, v; dk and dv summed over the query heads
//                               of each K/V head (GQA)
//   (or [batch, heads, seq, dim] with .layout = xattn::layout::bhsd)
//
// Pass the forward's options unchanged. P is recomputed tile by tile from the saved LSE, so no
// Nq×Nk matrix is materialised; every option of the forward is honoured in recomputing it
// (causal, windows, seqlens, softcap with its derivative, ALiBi, bias, boolean mask, sink logits),
// but no gradient is produced for the bias, the ALiBi slopes or the sink logits themselves.
// compute = bf16 is rejected. Fully masked and padded rows give zero gradients; keys past
// seqlens_k get zero dk and dv. All tensors hold float or double (one type per call). Bad input
// throws xattn::error before anything is written. The device overloads run on an
// Eigen::ThreadPoolDevice; results are bitwise identical for any thread count.
#pragma once

#include "options.hpp"
#include "core/parallel.hpp"
#include "core/softmax_backward_args.hpp"
#include "core/tile_backward.hpp"

namespace xattn {

/// dq, dk, dv of L given dout = ∂L/∂out, on the calling thread.
template <class Arch = simd::default_arch, row_major_tensor<4> Q, row_major_tensor<4> K, row_major_tensor<4> V,
          row_major_tensor<4> O, row_major_tensor<3> L, row_major_tensor<4> DO, row_major_tensor<4> DQ,
          row_major_tensor<4> DK, row_major_tensor<4> DV>
void softmax_attention_backward(const Q& q, const K& k, const V& v, const O& out, const L& lse, const DO& dout,
                                DQ&& dq, DK&& dk, DV&& dv, const softmax_options& opt = {}) {
  detail::softmax_backward<Arch>(detail::make_softmax_backward_problem("xattn::softmax_attention_backward", q, k, v,
                                                                       out, lse, dout, dq, dk, dv, opt),
                                 detail::serial_device{});
}

/// The same on the threads of `device`.
template <class Arch = simd::default_arch, thread_pool_device D, row_major_tensor<4> Q, row_major_tensor<4> K,
          row_major_tensor<4> V, row_major_tensor<4> O, row_major_tensor<3> L, row_major_tensor<4> DO,
          row_major_tensor<4> DQ, row_major_tensor<4> DK, row_major_tensor<4> DV>
void softmax_attention_backward(const D& device, const Q& q, const K& k, const V& v, const O& out, const L& lse,
                                const DO& dout, DQ&& dq, DK&& dk, DV&& dv, const softmax_options& opt = {}) {
  detail::softmax_backward<Arch>(detail::make_softmax_backward_problem("xattn::softmax_attention_backward", q, k, v,
                                                                       out, lse, dout, dq, dk, dv, opt),
                                 device);
}

}  // namespace xattn
