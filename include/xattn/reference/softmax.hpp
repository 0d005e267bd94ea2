// xattn/reference/softmax.hpp — the fp64 oracle of softmax attention. Plain loops, no SIMD, no
// tiling, no threads: materialises the full score matrix of each (batch, head) and applies every
// option of softmax_options literally, in the order the options header documents.
#pragma once

#include <cmath>
#include <limits>
#include <vector>

#include "../core/softmax_args.hpp"

namespace xattn::reference {
namespace detail {

using xattn::detail::index;

template <class T>
void softmax_attention(const xattn::detail::softmax_problem<T>& p) {
  const double neg_inf = -std::numeric_limits<double>::infinity();
  std::vector<double> s(static_cast<std::size_t>(p.nq * p.nk));  // scores of one (batch, head)
  for (index b = 0; b < p.batch; ++b) {
    const index nq = p.nq_of(b), nk = p.nk_of(b), off = nk - nq;
    for (index h = 0; h < p.hq; ++h) {
      const index hk = h / p.group;  // K/V head of this query head (GQA)
      for (index i = 0; i < p.nq; ++i) {
        for (index j = 0; j < p.nk; ++j) {
          double x = 0;
          for (index c = 0; c < p.d; ++c)
            x += double(p.q.row(b, i, h)[c]) * double(p.k.row(b, j, hk)[c]);
          x *= p.scale;
          if (p.softcap > 0) x = p.softcap * std::tanh(x / p.softcap);
          if (p.alibi) x -= p.alibi_of(b, h) * double(std::abs(i + off - j));
          if (p.bias) x += double(p.bias[b * p.bias_sb + h * p.bias_sh + i * p.nk + j]);
          bool visible = i < nq && p.band_visible(b, i, j);
          if (p.mask) visible = visible && p.mask[b * p.mask_sb + h * p.mask_sh + i * p.nk + j];
          s[i * p.nk + j] = visible ? x : neg_inf;
        }
      }
      for (index i = 0; i < p.nq; ++i) {
        double* row = s.data() + i * p.nk;
        double m = p.sinks ? double(p.sinks[h]) : neg_inf;
        bool nan = false;  // a NaN score (or +inf, whose weight is inf/inf) makes the row NaN
        for (index j = 0; j < p.nk; ++j) m = std::max(m, row[j]), nan = nan || std::isnan(row[j]);
        T* out = p.o.row(b, i, h);
        if (i < nq && (nan || m == std::numeric_limits<double>::infinity())) {
          for (index e = 0; e < p.dv; ++e) out[e] = std::numeric_limits<T>::quiet_NaN();
          if (p.lse) p.lse[(b * p.hq + h) * p.nq + i] = std::numeric_limits<T>::quiet_NaN();
          continue;
        }
        if (i >= nq || m == neg_inf) {  // padded or fully masked row: zeros, LSE −inf
          for (index e = 0; e < p.dv; ++e) out[e] = T(0);
          if (p.lse) p.lse[(b * p.hq + h) * p.nq + i] = T(neg_inf);
          continue;
        }
        double l = p.sinks ? std::exp(double(p.sinks[h]) - m) : 0.0;
        for (index j = 0; j < p.nk; ++j) l += row[j] = std::exp(row[j] - m);
        for (index e = 0; e < p.dv; ++e) {
          double acc = 0;
          for (index j = 0; j < nk; ++j)  // keys past the batch's valid length are never read
            if (row[j] != 0) acc += row[j] * double(p.v.row(b, j, hk)[e]);
          out[e] = T(acc / l);
        }
        if (p.lse) p.lse[(b * p.hq + h) * p.nq + i] = T(m + std::log(l));
      }
    }
  }
}

}  // namespace detail

/// softmax(scale·QKᵀ + bias + mask)·V in double; same contract and errors as
/// xattn::softmax_attention (named "xattn::reference::softmax_attention" in messages).
template <row_major_tensor<4> Q, row_major_tensor<4> K, row_major_tensor<4> V, row_major_tensor<4> O>
void softmax_attention(const Q& q, const K& k, const V& v, O&& out, const softmax_options& opt = {}) {
  static_assert(xattn::detail::native_storage_v<Q, K, V, O>,
                "xattn::reference: the references read float or double tensors (cast 16-bit ones with .cast<double>())");
  detail::softmax_attention(xattn::detail::make_softmax_problem(
      "xattn::reference::softmax_attention", q, k, v, out, static_cast<std::nullptr_t*>(nullptr), opt));
}

/// The same, also writing the natural-log log-sum-exp of each row to `lse` [batch, q heads, Nq].
template <row_major_tensor<4> Q, row_major_tensor<4> K, row_major_tensor<4> V, row_major_tensor<4> O,
          row_major_tensor<3> L>
void softmax_attention(const Q& q, const K& k, const V& v, O&& out, L&& lse, const softmax_options& opt = {}) {
  static_assert(xattn::detail::native_storage_v<Q, K, V, O>,
                "xattn::reference: the references read float or double tensors (cast 16-bit ones with .cast<double>())");
  detail::softmax_attention(
      xattn::detail::make_softmax_problem("xattn::reference::softmax_attention", q, k, v, out, &lse, opt));
}

}  // namespace xattn::reference
