// xattn/reference/softmax_backward.hpp — the fp64 oracle of the softmax-attention backward pass.
// Plain loops, no SIMD, no tiling, no threads. For each (batch, query head) it recomputes the
// scores exactly as reference::softmax_attention does (every option, the same order), then
//
//   P  = softmax(S) (sink logits in the denominator)      O = P·V
//   D  = rowsum(dO ∘ O)                                    dP = dO·Vᵀ
//   dS = P ∘ (dP − D)                                      (∂L/∂S)
//   dX = dS ∘ ∂S/∂X,  X = scale·QKᵀ:  1, or 1 − tanh² of the softcap (s = cap·tanh(X/cap))
//   dQ = scale·dX·K     dK = scale·dXᵀ·Q     dV = Pᵀ·dO
//
// with dK and dV summed over the query heads of each K/V head (GQA). `out` and `lse` are
// validated as the fast kernel's inputs but not read: the reference recomputes O and the softmax
// in double, so its gradients are those of the exact forward at the given q, k, v. Fully masked
// and padded rows contribute nothing; keys past seqlens_k get zero gradients.
#pragma once

#include <cmath>
#include <limits>
#include <vector>

#include "../core/softmax_backward_args.hpp"

namespace xattn::reference {
namespace detail {

using xattn::detail::index;

template <class T>
void softmax_attention_backward(const xattn::detail::softmax_backward_problem<T>& bp) {
  const auto& p = bp.fwd;
  const double neg_inf = -std::numeric_limits<double>::infinity();
  for (index b = 0; b < p.batch; ++b) {
    for (index s = 0; s < p.nq; ++s)
      for (index h = 0; h < p.hq; ++h)
        for (index c = 0; c < p.d; ++c) bp.dq.row(b, s, h)[c] = T(0);
    for (index s = 0; s < p.nk; ++s)
      for (index h = 0; h < p.hkv; ++h) {
        for (index c = 0; c < p.d; ++c) bp.dk.row(b, s, h)[c] = T(0);
        for (index c = 0; c < p.dv; ++c) bp.dv.row(b, s, h)[c] = T(0);
      }
  }
  // Per (batch, K/V head): dK and dV summed over its query heads in double, written once.
  std::vector<double> dk(static_cast<std::size_t>(p.nk * p.d)), dv(static_cast<std::size_t>(p.nk * p.dv));
  std::vector<double> srow(static_cast<std::size_t>(p.nk)), dtanh(static_cast<std::size_t>(p.nk));
  std::vector<double> o(static_cast<std::size_t>(p.dv)), dq(static_cast<std::size_t>(p.d));
  for (index b = 0; b < p.batch; ++b) {
    const index nq = p.nq_of(b), nk = p.nk_of(b), off = nk - nq;
    for (index hk = 0; hk < p.hkv; ++hk) {
      std::fill(dk.begin(), dk.end(), 0.0);
      std::fill(dv.begin(), dv.end(), 0.0);
      for (index h = hk * p.group; h < (hk + 1) * p.group; ++h) {
        for (index i = 0; i < nq; ++i) {  // padded rows (i >= nq) contribute nothing
          const T* qi = p.q.row(b, i, h);
          double m = p.sinks ? double(p.sinks[h]) : neg_inf;
          for (index j = 0; j < nk; ++j) {  // keys past nk are never read
            double x = 0;
            for (index c = 0; c < p.d; ++c) x += double(qi[c]) * double(p.k.row(b, j, hk)[c]);
            x *= p.scale;
            dtanh[j] = 1;
            if (p.softcap > 0) {
              const double t = std::tanh(x / p.softcap);
              x = p.softcap * t;
              dtanh[j] = 1 - t * t;  // d(cap·tanh(x/cap))/dx
            }
            if (p.alibi) x -= p.alibi_of(b, h) * double(std::abs(i + off - j));
            if (p.bias) x += double(p.bias[b * p.bias_sb + h * p.bias_sh + i * p.nk + j]);
            bool visible = p.band_visible(b, i, j);
            if (p.mask) visible = visible && p.mask[b * p.mask_sb + h * p.mask_sh + i * p.nk + j];
            srow[j] = visible ? x : neg_inf;
            m = std::max(m, srow[j]);
          }
          if (m == neg_inf) continue;  // fully masked row: zero gradients
          double l = p.sinks ? std::exp(double(p.sinks[h]) - m) : 0.0;
          for (index j = 0; j < nk; ++j) l += srow[j] = std::exp(srow[j] - m);
          for (index j = 0; j < nk; ++j) srow[j] /= l;  // srow = P_i
          // O_i = Σ_j P_ij v_j, D_i = dO_i · O_i
          const T* doi = bp.dout.row(b, i, h);
          std::fill(o.begin(), o.end(), 0.0);
          for (index j = 0; j < nk; ++j)
            for (index e = 0; e < p.dv; ++e) o[e] += srow[j] * double(p.v.row(b, j, hk)[e]);
          double dsum = 0;
          for (index e = 0; e < p.dv; ++e) dsum += double(doi[e]) * o[e];
          std::fill(dq.begin(), dq.end(), 0.0);
          for (index j = 0; j < nk; ++j) {
            if (srow[j] == 0) continue;
            double dp = 0;  // dP_ij = dO_i · v_j
            for (index e = 0; e < p.dv; ++e) dp += double(doi[e]) * double(p.v.row(b, j, hk)[e]);
            const double dx = srow[j] * (dp - dsum) * dtanh[j] * p.scale;  // ∂L/∂(q_i·k_j)
            for (index c = 0; c < p.d; ++c) {
              dq[c] += dx * double(p.k.row(b, j, hk)[c]);
              dk[j * p.d + c] += dx * double(qi[c]);
            }
            for (index e = 0; e < p.dv; ++e) dv[j * p.dv + e] += srow[j] * double(doi[e]);
          }
          for (index c = 0; c < p.d; ++c) bp.dq.row(b, i, h)[c] = T(dq[c]);
        }
      }
      for (index j = 0; j < nk; ++j) {
        for (index c = 0; c < p.d; ++c) bp.dk.row(b, j, hk)[c] = T(dk[j * p.d + c]);
        for (index e = 0; e < p.dv; ++e) bp.dv.row(b, j, hk)[e] = T(dv[j * p.dv + e]);
      }
    }
  }
}

}  // namespace detail

/// The gradients dq, dk, dv of L = Σ dout ∘ out, out = softmax_attention(q, k, v, opt), in double;
/// dk and dv are summed over the query heads sharing each K/V head. Same shapes, options and
/// errors as xattn::softmax_attention_backward (named "xattn::reference::softmax_attention_backward").
template <row_major_tensor<4> Q, row_major_tensor<4> K, row_major_tensor<4> V, row_major_tensor<4> O,
          row_major_tensor<3> L, row_major_tensor<4> DO, row_major_tensor<4> DQ, row_major_tensor<4> DK,
          row_major_tensor<4> DV>
void softmax_attention_backward(const Q& q, const K& k, const V& v, const O& out, const L& lse, const DO& dout,
                                DQ&& dq, DK&& dk, DV&& dv, const softmax_options& opt = {}) {
  detail::softmax_attention_backward(xattn::detail::make_softmax_backward_problem(
      "xattn::reference::softmax_attention_backward", q, k, v, out, lse, dout, dq, dk, dv, opt));
}

}  // namespace xattn::reference
