// xattn/reference/lightning.hpp — the fp64 oracle of lightning attention: the official repository's
// reference (lightning_attn/ops/torch/linear_attention.py) in double. Per (batch, head) it builds the
// full N×N matrix A = (q·kᵀ)·scale ⊙ M with M[t][j] = exp(−s_h·(t−j)) for j <= t and 0 above, and
// multiplies it by V. The initial state enters as λ^(t+1)·scale·q_t·S0; the final state is
// λ^N·S0 + Σ_j λ^(N−1−j)·k_jᵀv_j. Plain loops, no SIMD, no chunks, no threads; every sum runs in
// index order (the loops are ordered so that the compiler can vectorise across independent sums).
#pragma once

#include <cmath>
#include <vector>

#include "../core/linear_args.hpp"
#include "linear.hpp"

namespace xattn::reference {
namespace detail {

using xattn::detail::index;

template <class T>
void lightning_attention(const xattn::detail::chunk_problem<T>& p) {
  const index n = p.nq, d = p.d, e = p.e;
  const auto sz = [](index x) { return static_cast<std::size_t>(x); };
  std::vector<double> a(sz(n * n));                          // the masked score matrix of one head
  std::vector<double> kt(sz(d * n)), v(sz(n * e)), q(sz(d));  // K transposed, V, one query row
  for (index b = 0; b < p.batch; ++b)
    for (index h = 0; h < p.hq; ++h) {
      const index hk = h / p.group;
      const double s = p.decay_of(h);
      for (index j = 0; j < n; ++j) {
        for (index c = 0; c < d; ++c) kt[sz(c * n + j)] = double(p.k.row(b, j, hk)[c]);
        for (index x = 0; x < e; ++x) v[sz(j * e + x)] = double(p.v.row(b, j, hk)[x]);
      }
      for (index t = 0; t < n; ++t) {
        double* row = &a[sz(t * n)];
        for (index j = 0; j < n; ++j) row[j] = 0;
        for (index c = 0; c < d; ++c) {  // row[j] = Σ_c q_t[c]·k_j[c]
          const double qc = double(p.q.row(b, t, h)[c]);
          for (index j = 0; j <= t; ++j) row[j] += qc * kt[sz(c * n + j)];
        }
        for (index j = 0; j <= t; ++j) row[j] *= p.scale * std::exp(-s * double(t - j));
      }
      const T* s0 = p.state_in ? p.state_in + (b * p.hq + h) * d * e : nullptr;
      std::vector<double> o(sz(e));
      for (index t = 0; t < n; ++t) {
        for (index x = 0; x < e; ++x) o[sz(x)] = 0;
        for (index j = 0; j <= t; ++j)  // o = Σ_j A[t][j]·v_j
          for (index x = 0; x < e; ++x) o[sz(x)] += a[sz(t * n + j)] * v[sz(j * e + x)];
        if (s0) {  // + λ^(t+1)·scale·q_t·S0
          const double f = std::exp(-s * double(t + 1)) * p.scale;
          for (index c = 0; c < d; ++c) q[sz(c)] = double(p.q.row(b, t, h)[c]);
          for (index x = 0; x < e; ++x) {
            double inter = 0;
            for (index c = 0; c < d; ++c) inter += q[sz(c)] * double(s0[c * e + x]);
            o[sz(x)] += f * inter;
          }
        }
        for (index x = 0; x < e; ++x) p.o.row(b, t, h)[x] = T(o[sz(x)]);
      }
      if (p.state_out) final_state(p.state_out + (b * p.hq + h) * d * e, s0, s, n, d, e, e, kt, v);
    }
}

}  // namespace detail

/// Lightning attention in double; same contract and errors as xattn::lightning_attention (named
/// "xattn::reference::lightning_attention" in messages).
template <row_major_tensor<4> Q, row_major_tensor<4> K, row_major_tensor<4> V, row_major_tensor<4> O>
void lightning_attention(const Q& q, const K& k, const V& v, O&& out, const lightning_options& opt = {}) {
  static_assert(xattn::detail::native_storage_v<Q, K, V, O>,
                "xattn::reference: the references read float or double tensors (cast 16-bit ones with .cast<double>())");
  detail::lightning_attention(
      xattn::detail::make_lightning_problem("xattn::reference::lightning_attention", q, k, v, out, opt));
}

}  // namespace xattn::reference
