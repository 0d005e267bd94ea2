// xattn/reference/softmax_backward.hpp — the fp64 oracle of the softmax-attention backward pass.
// Plain loops, no SIMD, no tiling, no threads. For each (batch, query head) it recomputes the
// scores exactly as reference::softmax_attention does (every option, the same order), then
//
//   P  = softmax(S) (sink logits in the denominator)      O = P·V
//   D  = rowsum(dO ∘ O)                                    dP = dO·Vᵀ
//   dS = P ∘ (dP − D)                                      (∂L/∂S)
//   dX = dS ∘ ∂S/∂X,  X = scale·QKᵀ:  1, or 1 − tanh² of the softcap (s = cap·tanh(X/cap))
//   dQ = scale·dX·K     dK = scale·dXᵀ·Q     dV = Pᵀ·dO
//   dBias = dS (summed over the batches and heads it broadcasts over)
//   dSlope = −Σ_ij dS_ij·|i + Nk − Nq − j|   (each batch's own lengths)
//
// with dK and dV summed over the query heads of each K/V head (GQA). `out` and `lse` are
// validated as the fast kernel's inputs but not read: the reference recomputes O and the softmax
// in double, so its gradients are those of the exact forward at the given q, k, v. Fully masked
// and padded rows contribute nothing; keys past seqlens_k get zero gradients.
//
// The restricted forms (sliding window, block-sparse, 2-D neighborhood) materialise their rule as a
// boolean mask [batch, Hq, Nq, Nk] (ANDed with the caller's) and run the same loops.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "../block_layout.hpp"
#include "../core/softmax_backward_args.hpp"
#include "../core/window_args.hpp"

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
  std::vector<double> dsink(static_cast<std::size_t>(p.hq), 0.0);  // −Σ_i P_sink,i·D_i per head
  // ∂L/∂bias = ∂L/∂S where the bias enters (after the softcap), summed where it broadcasts;
  // ∂L/∂slope = −Σ_ij ∂L/∂S_ij·|i + off − j|
  const index bias_n = p.bias ? (p.bias_sb ? p.batch : 1) * (p.bias_sh ? p.hq : 1) * p.nq * p.nk : 0;
  std::vector<double> dbias(static_cast<std::size_t>(bp.dbias ? bias_n : 0), 0.0);
  std::vector<double> dalibi(static_cast<std::size_t>(bp.dalibi ? (p.alibi_sb ? p.batch : 1) * p.hq : 0), 0.0);
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
          if (p.sinks) dsink[h] -= std::exp(double(p.sinks[h]) - m) / l * dsum;
          std::fill(dq.begin(), dq.end(), 0.0);
          for (index j = 0; j < nk; ++j) {
            if (srow[j] == 0) continue;
            double dp = 0;  // dP_ij = dO_i · v_j
            for (index e = 0; e < p.dv; ++e) dp += double(doi[e]) * double(p.v.row(b, j, hk)[e]);
            const double ds = srow[j] * (dp - dsum);  // ∂L/∂S_ij
            if (bp.dbias) dbias[b * p.bias_sb + h * p.bias_sh + i * p.nk + j] += ds;
            if (bp.dalibi) dalibi[b * p.alibi_sb + h] -= ds * double(std::abs(i + off - j));
            const double dx = ds * dtanh[j] * p.scale;  // ∂L/∂(q_i·k_j)
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
  if (bp.dsinks)
    for (index h = 0; h < p.hq; ++h) bp.dsinks[h] = float(dsink[h]);
  for (std::size_t e = 0; e < dbias.size(); ++e) bp.dbias[e] = float(dbias[e]);
  for (std::size_t e = 0; e < dalibi.size(); ++e) bp.dalibi[e] = float(dalibi[e]);
}

/// The backward with visible(b, h, i, j) ANDed into the problem's mask, materialised.
template <class T, class Visible>
void softmax_attention_backward(xattn::detail::softmax_backward_problem<T> bp, const Visible& visible) {
  auto& p = bp.fwd;
  std::unique_ptr<bool[]> m(new bool[static_cast<std::size_t>(p.batch * p.hq * p.nq * p.nk)]);
  for (index b = 0; b < p.batch; ++b)
    for (index h = 0; h < p.hq; ++h)
      for (index i = 0; i < p.nq; ++i)
        for (index j = 0; j < p.nk; ++j) {
          bool vis = visible(b, h, i, j);
          if (p.mask) vis = vis && p.mask[b * p.mask_sb + h * p.mask_sh + i * p.nk + j];
          m[((b * p.hq + h) * p.nq + i) * p.nk + j] = vis;
        }
  p.mask = m.get();
  p.mask_sb = p.hq * p.nq * p.nk, p.mask_sh = p.nq * p.nk;
  softmax_attention_backward(bp);
}

}  // namespace detail

/// The gradients dq, dk, dv of L = Σ dout ∘ out, out = softmax_attention(q, k, v, opt), in double;
/// dk and dv are summed over the query heads sharing each K/V head. Same shapes, options and
/// errors as xattn::softmax_attention_backward (named "xattn::reference::softmax_attention_backward").
template <row_major_tensor<4> Q, row_major_tensor<4> K, row_major_tensor<4> V, row_major_tensor<4> O,
          row_major_tensor<3> L, row_major_tensor<4> DO, row_major_tensor<4> DQ, row_major_tensor<4> DK,
          row_major_tensor<4> DV>
void softmax_attention_backward(const Q& q, const K& k, const V& v, const O& out, const L& lse, const DO& dout,
                                DQ&& dq, DK&& dk, DV&& dv, const softmax_options& opt = {},
                                const softmax_grads& grads = {}) {
  detail::softmax_attention_backward(xattn::detail::make_softmax_backward_problem(
      "xattn::reference::softmax_attention_backward", q, k, v, out, lse, dout, dq, dk, dv, opt, grads));
}

/// The gradients of sliding-window attention, in double; same contract and errors as
/// xattn::sliding_window_attention_backward.
template <row_major_tensor<4> Q, row_major_tensor<4> K, row_major_tensor<4> V, row_major_tensor<4> O,
          row_major_tensor<3> L, row_major_tensor<4> DO, row_major_tensor<4> DQ, row_major_tensor<4> DK,
          row_major_tensor<4> DV>
void sliding_window_attention_backward(const Q& q, const K& k, const V& v, const O& out, const L& lse, const DO& dout,
                                       DQ&& dq, DK&& dk, DV&& dv, const sliding_window_options& opt = {},
                                       const softmax_grads& grads = {}) {
  constexpr const char* fn = "xattn::reference::sliding_window_attention_backward";
  xattn::detail::check_window_options(fn, opt);
  const auto bp =
      xattn::detail::make_softmax_backward_problem(fn, q, k, v, out, lse, dout, dq, dk, dv, opt.softmax, grads);
  const xattn::detail::window_spec w = xattn::detail::window_spec_of(opt, bp.fwd.nq, bp.fwd.nk);
  const auto& p = bp.fwd;
  detail::softmax_attention_backward(bp, [&](auto b, auto, auto i, auto j) {
    return w.visible(i + p.nk_of(b) - p.nq_of(b), j);
  });
}

/// The gradients of block-sparse attention, in double; same contract and errors as
/// xattn::sparse_attention_backward (any block size).
template <row_major_tensor<4> Q, row_major_tensor<4> K, row_major_tensor<4> V, row_major_tensor<4> O,
          row_major_tensor<3> L, row_major_tensor<4> DO, row_major_tensor<4> DQ, row_major_tensor<4> DK,
          row_major_tensor<4> DV>
void sparse_attention_backward(const Q& q, const K& k, const V& v, const O& out, const L& lse, const DO& dout, DQ&& dq,
                               DK&& dk, DV&& dv, const block_layout& layout, const softmax_options& opt = {},
                               const softmax_grads& grads = {}) {
  constexpr const char* fn = "xattn::reference::sparse_attention_backward";
  const auto bp = xattn::detail::make_softmax_backward_problem(fn, q, k, v, out, lse, dout, dq, dk, dv, opt, grads);
  layout.check_for(fn, bp.fwd.nq, bp.fwd.nk, bp.fwd.hq, 1);
  const xattn::detail::index bs = layout.block_size();
  detail::softmax_attention_backward(bp, [&](auto, auto h, auto i, auto j) {
    const auto row = layout.row(h, i / bs);
    return std::binary_search(row.begin(), row.end(), int(j / bs));
  });
}

/// The gradients of 2-D neighborhood attention, in double; same contract and errors as
/// xattn::neighborhood_attention_2d_backward.
template <row_major_tensor<5> Q, row_major_tensor<5> K, row_major_tensor<5> V, row_major_tensor<5> O,
          row_major_tensor<3> L, row_major_tensor<5> DO, row_major_tensor<5> DQ, row_major_tensor<5> DK,
          row_major_tensor<5> DV>
void neighborhood_attention_2d_backward(const Q& q, const K& k, const V& v, const O& out, const L& lse, const DO& dout,
                                        DQ&& dq, DK&& dk, DV&& dv, const neighborhood_2d_options& opt = {}) {
  constexpr const char* fn = "xattn::reference::neighborhood_attention_2d_backward";
  xattn::detail::check_image_axes(fn, q, k, v, out);
  xattn::detail::check_image_grads(fn, q, k, v, out, dout, dq, dk, dv);
  auto dq4 = xattn::detail::flat_image(dq), dk4 = xattn::detail::flat_image(dk), dv4 = xattn::detail::flat_image(dv);
  const auto bp = xattn::detail::make_softmax_backward_problem(
      fn, xattn::detail::flat_image(q), xattn::detail::flat_image(k), xattn::detail::flat_image(v), xattn::detail::flat_image(out), lse,
      xattn::detail::flat_image(dout), dq4, dk4, dv4, softmax_options{.scale = opt.scale});
  const auto spec = xattn::detail::make_neighborhood_spec(fn, q.dimension(1), q.dimension(2), opt);
  detail::softmax_attention_backward(bp, [&](auto, auto, auto i, auto j) { return spec.visible(i, j); });
}

}  // namespace xattn::reference
