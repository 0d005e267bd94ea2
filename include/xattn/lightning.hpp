// xattn/lightning.hpp — Lightning Attention-2: causal linear attention with a per-head exponential
// decay, computed by chunks (intra-chunk masked products, inter-chunk state passing), at a cost
// linear in the sequence length and a speed constant in it.
//
//   o_t = Σ_{j<=t} exp(−s_h·(t−j)) · scale·(q_t·k_j) · v_j          (the official kernel's math)
//
//   q  [batch, N, Hq, d]    k [batch, N, Hkv, d]    v [batch, N, Hkv, e]    out [batch, N, Hq, e]
//   (or [batch, heads, seq, dim] with .layout = xattn::layout::bhsd); states [batch, Hq, d, e]
//
// Hkv divides Hq (grouped-query attention; each query head keeps its own state, as its decay is its
// own); e may differ from d. q, k and v each hold float, Eigen::bfloat16 or Eigen::half, out float
// or q's 16-bit type (computed in float, states float), or all four double (states double).
// Options: xattn::lightning_options (options.hpp). A sequence processed in segments, each call
// passing its final_state to the next one's initial_state, equals one call; lightning_step is the same recurrence one token at a time, for decoding. Bad input
// throws xattn::error before anything is written. The device overloads run on an
// Eigen::ThreadPoolDevice; results are bitwise identical for any thread count.
//
// With bfloat16 q, k and v (or .compute = xattn::compute::bf16 on float ones), d and e multiples of
// 32 and a block_size multiple of 32, the products run on AMX-BF16 tiles where
// xattn::bf16_product_path() allows it: bf16 operands (q, k, v; the masked scores P; the state,
// rounded chunk by chunk for the inter-chunk product; the decayed values of the state update), every
// sum and the state itself in float.
//
// Arch (first template parameter, defaulted) is the xsimd architecture of the kernels, as in
// softmax.hpp: lightning_attention<xattn::simd::scalar>(...) forces the scalar path.
//
// The backward pass (dq, dk, dv and ∂L/∂initial_state) is in lightning_backward.hpp.
#pragma once

#include <cmath>
#include <vector>

#include "core/chunk_engine.hpp"
#include "core/linear_args.hpp"
#include "options.hpp"
#include "core/parallel.hpp"

namespace xattn {

/// out = lightning attention of q, k, v on the calling thread.
template <class Arch = simd::default_arch, row_major_tensor<4> Q, row_major_tensor<4> K, row_major_tensor<4> V,
          row_major_tensor<4> O>
void lightning_attention(const Q& q, const K& k, const V& v, O&& out, const lightning_options& opt = {}) {
  detail::chunk_forward<Arch>(detail::make_lightning_problem("xattn::lightning_attention", q, k, v, out, opt),
                              detail::serial_device{});
}

/// The same on the threads of `device`. With few (batch, head) pairs the chunks of one sequence are
/// spread over the threads too (per-chunk states in parallel, a prefix pass, outputs in parallel).
template <class Arch = simd::default_arch, thread_pool_device D, row_major_tensor<4> Q, row_major_tensor<4> K,
          row_major_tensor<4> V, row_major_tensor<4> O>
void lightning_attention(const D& device, const Q& q, const K& k, const V& v, O&& out,
                         const lightning_options& opt = {}) {
  detail::chunk_forward<Arch>(detail::make_lightning_problem("xattn::lightning_attention", q, k, v, out, opt),
                              device);
}

/// One decoding step: q, k, v, out of seq 1 (one token per batch); `state` [batch, Hq, d, e] holds
/// the state before the token and is updated in place (S ← λ·S + kᵀv, o = scale·q·S), in O(d·e) per
/// head. opt.initial_state and opt.final_state must stay empty; block_size is not used.
template <class Arch = simd::default_arch, row_major_tensor<4> Q, row_major_tensor<4> K, row_major_tensor<4> V,
          row_major_tensor<4> O, row_major_tensor<4> S>
void lightning_step(const Q& q, const K& k, const V& v, O&& out, S&& state, const lightning_options& opt = {}) {
  detail::chunk_step<Arch>(detail::make_step_problem("xattn::lightning_step", q, k, v, out, state, opt),
                           detail::serial_device{});
}

/// The step on the threads of `device` (one item per batch and head).
template <class Arch = simd::default_arch, thread_pool_device D, row_major_tensor<4> Q, row_major_tensor<4> K,
          row_major_tensor<4> V, row_major_tensor<4> O, row_major_tensor<4> S>
void lightning_step(const D& device, const Q& q, const K& k, const V& v, O&& out, S&& state,
                    const lightning_options& opt = {}) {
  detail::chunk_step<Arch>(detail::make_step_problem("xattn::lightning_step", q, k, v, out, state, opt), device);
}

// ---------------------------------------------------------------------------------------------
// Decay rates of the published conventions, as the rates s_h >= 0 of lightning_options::decay.

/// The official kernel's slopes (lightning_attn.utils._build_slope_tensor; TransNormerLLM and
/// MiniMax-01 build theirs the same way): ALiBi's geometric sequence. For a power of two H,
/// s_h = r^(h+1) with r = 2^(−8/H); for other H, those of the largest power of two P < H followed by
/// every other slope of 2P (the first H − P of slopes 1, 3, 5, ... of 2P, 1-based).
inline std::vector<double> lightning_slopes(std::ptrdiff_t heads) {
  detail::require(heads >= 1, "xattn::lightning_slopes", "heads", "must be >= 1, got ", heads);
  auto power_of_two = [](std::ptrdiff_t n) {
    const double r = std::exp2(-8.0 / double(n));  // 2^(−2^−(log2 n − 3)) of the original code
    std::vector<double> s(static_cast<std::size_t>(n));
    for (std::ptrdiff_t i = 0; i < n; ++i) s[std::size_t(i)] = std::pow(r, double(i + 1));
    return s;
  };
  if ((heads & (heads - 1)) == 0) return power_of_two(heads);
  std::ptrdiff_t p = 1;
  while (2 * p < heads) p *= 2;
  std::vector<double> s = power_of_two(p);
  const std::vector<double> twice = power_of_two(2 * p);
  for (std::ptrdiff_t i = 0; i < heads - p; ++i) s.push_back(twice[std::size_t(2 * i)]);
  return s;
}

/// The official slopes of layer `layer` (0-based) of `num_layers`, scaled by the per-layer factor
/// 1 − layer/(num_layers − 1) + 1e-5 (TransNormerLLM's and MiniMax-01's modeling code, the
/// official repository's TnlAttention): deep layers decay least.
inline std::vector<double> lightning_slopes(std::ptrdiff_t heads, std::ptrdiff_t layer, std::ptrdiff_t num_layers) {
  constexpr const char* fn = "xattn::lightning_slopes";
  detail::require(num_layers >= 2, fn, "num_layers", "must be >= 2 (the factor divides by num_layers − 1), got ",
                  num_layers);
  detail::require(layer >= 0 && layer < num_layers, fn, "layer", layer, " outside [0, ", num_layers, ")");
  constexpr double kLayerFloor = 1e-5;  // keeps the last layer's decay above 0
  const double factor = 1.0 - double(layer) / double(num_layers - 1) + kLayerFloor;
  std::vector<double> s = lightning_slopes(heads);
  for (double& x : s) x *= factor;
  return s;
}

/// flash-linear-attention's chunk_lightning_attn convention, which differs from the official one:
/// g_gamma_h = −(8/H)·(1 − layer/num_layers)·h for h = 0..H−1 — linear in the head index, head 0
/// undecayed — returned as rates s_h = −g_gamma_h.
inline std::vector<double> fla_lightning_decay(std::ptrdiff_t heads, std::ptrdiff_t layer, std::ptrdiff_t num_layers) {
  constexpr const char* fn = "xattn::fla_lightning_decay";
  detail::require(heads >= 1, fn, "heads", "must be >= 1, got ", heads);
  detail::require(num_layers >= 1, fn, "num_layers", "must be >= 1, got ", num_layers);
  detail::require(layer >= 0 && layer < num_layers, fn, "layer", layer, " outside [0, ", num_layers, ")");
  std::vector<double> s(static_cast<std::size_t>(heads));
  for (std::ptrdiff_t h = 0; h < heads; ++h)
    s[std::size_t(h)] = 8.0 / double(heads) * (1.0 - double(layer) / double(num_layers)) * double(h);
  return s;
}

/// Rates from flash-linear-attention's g_gamma (chunk_simple_gla, its RetNet and lightning layers):
/// the natural log of the per-token decay factor, so s = −g_gamma (g_gamma <= 0).
inline std::vector<double> decay_from_g_gamma(std::span<const double> g_gamma) {
  std::vector<double> s(g_gamma.size());
  for (std::size_t h = 0; h < g_gamma.size(); ++h) {
    detail::require(std::isfinite(g_gamma[h]) && g_gamma[h] <= 0, "xattn::decay_from_g_gamma", "g_gamma", "[", h,
                    "] = ", g_gamma[h], " must be finite and <= 0");
    s[h] = -g_gamma[h];
  }
  return s;
}

}  // namespace xattn
