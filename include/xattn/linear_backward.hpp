// xattn/linear_backward.hpp — the backward pass of linear attention: the gradients of a loss L
// with respect to q, k, v and the initial state, given ∂L/∂out and, when the loss also depends on
// it, ∂L/∂final_state.
//
//   identity map, no normaliser (Φ = q, k below):
//   causal:     o_t = scale·Σ_{j<=t} (q_t·k_j)·v_j + scale·q_t·S0    (lightning attention with no decay,
//               and the same engine: a forward sweep of S for dq, a reverse sweep of dS for dk, dv)
//   non-causal: O = scale·Q·S, S = S0 + KᵀV:  dq = scale·dO·Sᵀ, dS = ∂L/∂final_state + scale·QᵀdO,
//               dk = V·dSᵀ, dv = K·dS, ∂L/∂S0 = dS
//   other built-in maps and the normaliser: the same on φ(q), φ(k) and, under the normaliser,
//   [v, 1], then through the map's derivative (core/feature_backward.hpp); the normaliser costs
//   one forward pass more.
//
//   q  [batch, Nq, Hq, d]   k [batch, Nk, Hkv, d]   v [batch, Nk, Hkv, e]   dout [batch, Nq, Hq, e]
//   dq, dk, dv written, shaped as q, k, v; dk and dv summed over the query heads of each K/V head
//   (or [batch, heads, seq, dim] with .forward.layout = xattn::layout::bhsd)
//   states [batch, Hq, D', e (+1 with the normaliser: Σφ(k) as the last column, as the forward's)]:
//   opt.dinitial_state (written), opt.dfinal_state (read)
//
// Pass the forward's options as opt.forward. A custom feature map (no derivative known here) is
// rejected with xattn::error, as are a final_state in opt.forward and compute = bf16. All tensors
// hold double, or float, Eigen::bfloat16 and Eigen::half in any mix (16-bit ones through float
// copies, as lightning_backward.hpp says). Bad input throws xattn::error before anything is
// written. The device overloads run on an Eigen::ThreadPoolDevice; results are bitwise identical
// for any thread count. The maps and the normaliser use the calling thread's reusable workspace
// for φ(q), φ(k) and their gradients (about 4·N·H·D' values).
#pragma once

#include "options.hpp"
#include "core/chunk_backward.hpp"
#include "core/feature_backward.hpp"
#include "core/chunk_backward_args.hpp"
#include "core/parallel.hpp"

namespace xattn {

namespace detail {
/// The front doors' body: 16-bit tensors through float copies, then the validated problem.
template <class Arch, class Device, class Q, class K, class V, class DO, class DQ, class DK, class DV>
void linear_backward_call(const Device& dev, const Q& q, const K& k, const V& v, const DO& dout, DQ& dq, DK& dk,
                         DV& dv, const linear_backward_options& opt) {
  constexpr const char* fn = "xattn::linear_attention_backward";
  chunk_in_float_if_16bit(fn, q, k, v, dout, dq, dk, dv, [&](const auto& q2, const auto& k2, const auto& v2,
                                                             const auto& do2, auto& dq2, auto& dk2, auto& dv2) {
    linear_backward_run<Arch>(make_linear_backward_problem(fn, q2, k2, v2, do2, dq2, dk2, dv2, opt), dev);
  });
}
}  // namespace detail

/// dq, dk, dv (and opt.dinitial_state) of L given dout = ∂L/∂out, on the calling thread.
template <class Arch = simd::default_arch, row_major_tensor<4> Q, row_major_tensor<4> K, row_major_tensor<4> V,
          row_major_tensor<4> DO, row_major_tensor<4> DQ, row_major_tensor<4> DK, row_major_tensor<4> DV>
void linear_attention_backward(const Q& q, const K& k, const V& v, const DO& dout, DQ&& dq, DK&& dk, DV&& dv,
                               const linear_backward_options& opt = {}) {
  detail::linear_backward_call<Arch>(detail::serial_device{}, q, k, v, dout, dq, dk, dv, opt);
}

/// The same on the threads of `device`.
template <class Arch = simd::default_arch, thread_pool_device D, row_major_tensor<4> Q, row_major_tensor<4> K,
          row_major_tensor<4> V, row_major_tensor<4> DO, row_major_tensor<4> DQ, row_major_tensor<4> DK,
          row_major_tensor<4> DV>
void linear_attention_backward(const D& device, const Q& q, const K& k, const V& v, const DO& dout, DQ&& dq, DK&& dk,
                               DV&& dv, const linear_backward_options& opt = {}) {
  detail::linear_backward_call<Arch>(device, q, k, v, dout, dq, dk, dv, opt);
}

}  // namespace xattn
