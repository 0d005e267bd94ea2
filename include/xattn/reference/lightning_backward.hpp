// xattn/reference/lightning_backward.hpp — the fp64 oracle of the backward passes of lightning
// attention and of linear attention with the identity map and no normaliser (both here: they are
// one computation). Plain loops, no SIMD,
// no chunks, no threads, written from the forward's math per (batch, query head), λ = e^−s, σ the
// scale, visible pairs j <= t (all pairs when non-causal, where s = 0):
//
//   o_t  = σ·Σ_j λ^(t−j)·(q_t·k_j)·v_j + σ·λ^(t+1)·q_t·S0        (causal; non-causal: λ = 1)
//   S_N  = λ^N·S0 + Σ_j λ^(N−1−j)·k_jᵀ·v_j
//   L    = Σ dO ∘ O + Σ dS_N ∘ S_N
//
//   dq_t = σ·Σ_j λ^(t−j)·(dO_t·v_j)·k_j + σ·λ^(t+1)·dO_t·S0ᵀ
//   dk_j = σ·Σ_t λ^(t−j)·(dO_t·v_j)·q_t + λ^(N−1−j)·v_j·dS_Nᵀ
//   dv_j = σ·Σ_t λ^(t−j)·(q_t·k_j)·dO_t + λ^(N−1−j)·k_j·dS_N
//   dS0  = σ·Σ_t λ^(t+1)·q_tᵀ·dO_t + λ^N·dS_N
//
// dk and dv are summed over the query heads of each K/V head (GQA). The sums run in Acc (double for
// the oracle; the tests also run them in float, as the naive implementation of the accuracy rule).
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

#include "../core/chunk_backward_args.hpp"

namespace xattn::reference {
namespace detail {

using xattn::detail::index;

template <class Acc, class T>
void chunk_attention_backward(const xattn::detail::chunk_backward_problem<T>& bp) {
  const auto& p = bp.fwd;
  const index nq = p.nq, nk = p.nk, d = p.d, e = p.e;
  const auto sz = [](index x) { return static_cast<std::size_t>(x); };
  const Acc sc = Acc(p.scale);
  std::vector<Acc> dk(sz(nk * d)), dv(sz(nk * e)), dq(sz(d)), ds0(sz(d * e)), pw(sz(std::max(nq, nk) + 2));
  for (index b = 0; b < p.batch; ++b)
    for (index hk = 0; hk < p.hkv; ++hk) {
      std::fill(dk.begin(), dk.end(), Acc(0));
      std::fill(dv.begin(), dv.end(), Acc(0));
      for (index h = hk * p.group; h < (hk + 1) * p.group; ++h) {
        for (index m = 0; m < index(pw.size()); ++m) pw[sz(m)] = std::exp(-Acc(p.decay_of(h)) * Acc(m));  // λ^m
        const index u = b * p.hq + h;
        const T* s0 = p.state_in ? p.state_in + u * d * e : nullptr;
        const T* dsn = bp.dstate_out ? bp.dstate_out + u * d * e : nullptr;
        for (index t = 0; t < nq; ++t) {
          const T* qt = p.q.row(b, t, h);
          const T* dot = bp.dout.row(b, t, h);
          std::fill(dq.begin(), dq.end(), Acc(0));
          for (index j = 0; j < (p.causal ? t + 1 : nk); ++j) {
            const T* kj = p.k.row(b, j, hk);
            const T* vj = p.v.row(b, j, hk);
            Acc a = 0, dp = 0;  // q_t·k_j, dO_t·v_j
            for (index c = 0; c < d; ++c) a += Acc(qt[c]) * Acc(kj[c]);
            for (index x = 0; x < e; ++x) dp += Acc(dot[x]) * Acc(vj[x]);
            const Acc f = sc * (p.causal ? pw[sz(t - j)] : Acc(1));
            for (index c = 0; c < d; ++c) {
              dq[sz(c)] += f * dp * Acc(kj[c]);
              dk[sz(j * d + c)] += f * dp * Acc(qt[c]);
            }
            for (index x = 0; x < e; ++x) dv[sz(j * e + x)] += f * a * Acc(dot[x]);
          }
          if (s0) {  // + σ·λ^(t+1)·dO_t·S0ᵀ
            const Acc f = sc * (p.causal ? pw[sz(t + 1)] : Acc(1));
            for (index c = 0; c < d; ++c) {
              Acc acc = 0;
              for (index x = 0; x < e; ++x) acc += Acc(dot[x]) * Acc(s0[c * e + x]);
              dq[sz(c)] += f * acc;
            }
          }
          for (index c = 0; c < d; ++c) bp.dq.row(b, t, h)[c] = T(dq[sz(c)]);
        }
        if (dsn)  // the final state's terms: λ^(N−1−j)·v_j·dS_Nᵀ and λ^(N−1−j)·k_j·dS_N
          for (index j = 0; j < nk; ++j) {
            const T* kj = p.k.row(b, j, hk);
            const T* vj = p.v.row(b, j, hk);
            const Acc f = p.causal ? pw[sz(nk - 1 - j)] : Acc(1);
            for (index c = 0; c < d; ++c) {
              Acc acc = 0;
              for (index x = 0; x < e; ++x) acc += Acc(vj[x]) * Acc(dsn[c * e + x]);
              dk[sz(j * d + c)] += f * acc;
            }
            for (index x = 0; x < e; ++x) {
              Acc acc = 0;
              for (index c = 0; c < d; ++c) acc += Acc(kj[c]) * Acc(dsn[c * e + x]);
              dv[sz(j * e + x)] += f * acc;
            }
          }
        if (bp.dstate_in) {  // dS0 = σ·Σ_t λ^(t+1)·q_tᵀ·dO_t + λ^N·dS_N
          for (index c = 0; c < d * e; ++c) ds0[sz(c)] = dsn ? (p.causal ? pw[sz(nk)] : Acc(1)) * Acc(dsn[c]) : Acc(0);
          for (index t = 0; t < nq; ++t) {
            const Acc f = sc * (p.causal ? pw[sz(t + 1)] : Acc(1));
            for (index c = 0; c < d; ++c) {
              const Acc qc = f * Acc(p.q.row(b, t, h)[c]);
              for (index x = 0; x < e; ++x) ds0[sz(c * e + x)] += qc * Acc(bp.dout.row(b, t, h)[x]);
            }
          }
          for (index c = 0; c < d * e; ++c) bp.dstate_in[u * d * e + c] = T(ds0[sz(c)]);
        }
      }
      for (index j = 0; j < nk; ++j) {
        for (index c = 0; c < d; ++c) bp.dk.row(b, j, hk)[c] = T(dk[sz(j * d + c)]);
        for (index x = 0; x < e; ++x) bp.dv.row(b, j, hk)[x] = T(dv[sz(j * e + x)]);
      }
    }
}

}  // namespace detail

/// The gradients dq, dk, dv (and dinitial_state when asked) of L = Σ dout ∘ out + Σ dfinal_state ∘
/// final_state, out = lightning_attention(q, k, v, opt.forward), in double. Same shapes, options and
/// errors as xattn::lightning_attention_backward (named "xattn::reference::lightning_attention_backward").
template <row_major_tensor<4> Q, row_major_tensor<4> K, row_major_tensor<4> V, row_major_tensor<4> DO,
          row_major_tensor<4> DQ, row_major_tensor<4> DK, row_major_tensor<4> DV>
void lightning_attention_backward(const Q& q, const K& k, const V& v, const DO& dout, DQ&& dq, DK&& dk, DV&& dv,
                                  const lightning_backward_options& opt = {}) {
  static_assert(std::is_same_v<scalar_of<Q>, double>,
                "xattn::reference::lightning_attention_backward reads double tensors (cast with .cast<double>())");
  detail::chunk_attention_backward<double>(xattn::detail::make_lightning_backward_problem(
      "xattn::reference::lightning_attention_backward", q, k, v, dout, dq, dk, dv, opt));
}

/// The same for linear attention with the identity map and no normaliser, causal or not (other maps
/// and the normaliser are rejected, as by xattn::linear_attention_backward).
template <row_major_tensor<4> Q, row_major_tensor<4> K, row_major_tensor<4> V, row_major_tensor<4> DO,
          row_major_tensor<4> DQ, row_major_tensor<4> DK, row_major_tensor<4> DV>
void linear_attention_backward(const Q& q, const K& k, const V& v, const DO& dout, DQ&& dq, DK&& dk, DV&& dv,
                               const linear_backward_options& opt = {}) {
  static_assert(std::is_same_v<scalar_of<Q>, double>,
                "xattn::reference::linear_attention_backward reads double tensors (cast with .cast<double>())");
  detail::chunk_attention_backward<double>(xattn::detail::make_linear_backward_problem(
      "xattn::reference::linear_attention_backward", q, k, v, dout, dq, dk, dv, opt));
}

}  // namespace xattn::reference
