// xattn/linear.hpp — linear attention: out = scale·φ(Q)·(φ(K)ᵀ·V), optionally normalised row by
// row by scale·φ(q_t)·Σ_j φ(k_j) + eps, causal (chunked on the lightning engine, with no decay) or
// not (one state per head).
//
//   q  [batch, Nq, Hq, d]    k [batch, Nk, Hkv, d]    v [batch, Nk, Hkv, e]    out [batch, Nq, Hq, e]
//   (or [batch, heads, seq, dim] with .layout = xattn::layout::bhsd)
//   states [batch, Hq, D', e + normalize]: Σ φ(k)ᵀv and, with the normaliser, Σ φ(k) as the last column
//
// Feature maps (xattn::feature): identity, elu+1, relu, Based's Taylor map, the per-side softmax of
// Efficient Attention (non-causal only), or a user callable (feature_map::custom); D' =
// opt.feature_map.dim(d). Causal attention needs Nq = Nk; non-causal accepts Nq != Nk. Hkv divides Hq.
// q, k and v each hold float, Eigen::bfloat16 or Eigen::half, out float or q's 16-bit type (computed
// in float; states float), or all four double (states double).
// Options: xattn::linear_options (options.hpp). Bad input throws xattn::error before anything
// is written. The device overloads run on an Eigen::ThreadPoolDevice; results are bitwise identical
// for any thread count.
//
// With the identity map and no normaliser, bfloat16 q, k and v (or .compute = xattn::compute::bf16
// on float ones), d and e multiples of 32 and a block_size multiple of 32, the products run on
// AMX-BF16 tiles where xattn::bf16_product_path() allows it: bf16 operands (q, k, v, the causal
// scores, the state rounded chunk by chunk for its product with q), every sum and the state in float.
//
// Arch (first template parameter, defaulted) is the xsimd architecture of the kernels, as in
// softmax.hpp: linear_attention<xattn::simd::scalar>(...) forces the scalar path.
//
// The backward pass, for the identity map without normaliser, is in linear_backward.hpp.
#pragma once

#include "core/chunk_engine.hpp"
#include "core/linear_args.hpp"
#include "options.hpp"
#include "core/parallel.hpp"

namespace xattn {

/// out = linear attention of q, k, v on the calling thread.
template <class Arch = simd::default_arch, row_major_tensor<4> Q, row_major_tensor<4> K, row_major_tensor<4> V,
          row_major_tensor<4> O>
void linear_attention(const Q& q, const K& k, const V& v, O&& out, const linear_options& opt = {}) {
  detail::chunk_forward<Arch>(detail::make_linear_problem("xattn::linear_attention", q, k, v, out, opt),
                              detail::serial_device{});
}

/// The same on the threads of `device`.
template <class Arch = simd::default_arch, thread_pool_device D, row_major_tensor<4> Q, row_major_tensor<4> K,
          row_major_tensor<4> V, row_major_tensor<4> O>
void linear_attention(const D& device, const Q& q, const K& k, const V& v, O&& out, const linear_options& opt = {}) {
  detail::chunk_forward<Arch>(detail::make_linear_problem("xattn::linear_attention", q, k, v, out, opt), device);
}

/// One decoding step of causal linear attention (the recurrence is causal whatever opt.causal
/// says): q, k, v, out of seq 1; `state` [batch, Hq, D', e + normalize] is updated in place
/// (S ← S + φ(k)ᵀv, z ← z + φ(k)), in O(D'·e) per head. opt.initial_state and opt.final_state must
/// stay empty; the per-side softmax has no recurrent form and is rejected.
template <class Arch = simd::default_arch, row_major_tensor<4> Q, row_major_tensor<4> K, row_major_tensor<4> V,
          row_major_tensor<4> O, row_major_tensor<4> S>
void linear_step(const Q& q, const K& k, const V& v, O&& out, S&& state, linear_options opt = {}) {
  opt.causal = true;
  detail::chunk_step<Arch>(detail::make_step_problem("xattn::linear_step", q, k, v, out, state, opt),
                           detail::serial_device{});
}

/// The step on the threads of `device` (one item per batch and head).
template <class Arch = simd::default_arch, thread_pool_device D, row_major_tensor<4> Q, row_major_tensor<4> K,
          row_major_tensor<4> V, row_major_tensor<4> O, row_major_tensor<4> S>
void linear_step(const D& device, const Q& q, const K& k, const V& v, O&& out, S&& state, linear_options opt = {}) {
  opt.causal = true;
  detail::chunk_step<Arch>(detail::make_step_problem("xattn::linear_step", q, k, v, out, state, opt), device);
}

}  // namespace xattn
