// xattn/reference/sliding_window.hpp — the fp64 oracle of sliding-window attention: materialises
// the window mask [batch, 1, Nq, Nk] (ANDed with the caller's boolean mask) and runs the softmax
// reference with it.
#pragma once

#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "../core/window_args.hpp"
#include "softmax.hpp"

namespace xattn::reference {
namespace detail {

using xattn::detail::index;

template <class T>
void sliding_window_attention(xattn::detail::softmax_problem<T> p, const xattn::detail::window_spec& w) {
  const index hm = p.mask ? p.hq : 1;
  std::unique_ptr<bool[]> m(new bool[static_cast<std::size_t>(p.batch * hm * p.nq * p.nk)]);
  for (index b = 0; b < p.batch; ++b) {
    const index off = p.nk_of(b) - p.nq_of(b);
    for (index h = 0; h < hm; ++h)
      for (index i = 0; i < p.nq; ++i)
        for (index j = 0; j < p.nk; ++j) {
          bool vis = w.visible(i + off, j);
          if (p.mask) vis = vis && p.mask[b * p.mask_sb + h * p.mask_sh + i * p.nk + j];
          m[((b * hm + h) * p.nq + i) * p.nk + j] = vis;
        }
  }
  p.mask = m.get();
  p.mask_sb = hm * p.nq * p.nk, p.mask_sh = hm == 1 ? 0 : p.nq * p.nk;
  p.window_left = p.window_right = -1;
  detail::softmax_attention(p);
}

template <class T>
void neighborhood_attention_2d(const xattn::detail::softmax_problem<T>& p, const xattn::detail::neighborhood_spec& s) {
  // Per query, the mask row is materialised as the list of its visible keys (an N×N matrix would not
  // fit for large images): the window of each axis on the query's dilation grid, then plain loops.
  using spec = xattn::detail::neighborhood_spec;
  std::vector<index> keys;
  std::vector<double> w;
  for (index i = 0; i < p.nq; ++i) {
    const index y = i / s.width, x = i % s.width;
    index ylo, yhi, xlo, xhi;
    spec::axis_window(y / s.dh, spec::group_len(s.height, s.dh, y % s.dh), s.kh, s.ch, ylo, yhi);
    spec::axis_window(x / s.dw, spec::group_len(s.width, s.dw, x % s.dw), s.kw, s.cw, xlo, xhi);
    keys.clear();
    for (index a = ylo; a <= yhi; ++a)
      for (index c = xlo; c <= xhi; ++c) keys.push_back((a * s.dh + y % s.dh) * s.width + c * s.dw + x % s.dw);
    w.resize(keys.size());
    for (index b = 0; b < p.batch; ++b)
      for (index h = 0; h < p.hq; ++h) {
        double m = -std::numeric_limits<double>::infinity();
        for (std::size_t n = 0; n < keys.size(); ++n) {
          double dot = 0;
          for (index c = 0; c < p.d; ++c) dot += double(p.q.row(b, i, h)[c]) * double(p.k.row(b, keys[n], h / p.group)[c]);
          w[n] = dot * p.scale;
          m = std::max(m, w[n]);
        }
        double l = 0;
        for (double& e : w) l += e = std::exp(e - m);
        T* out = p.o.row(b, i, h);
        for (index e = 0; e < p.dv; ++e) {
          double acc = 0;
          for (std::size_t n = 0; n < keys.size(); ++n) acc += w[n] * double(p.v.row(b, keys[n], h / p.group)[e]);
          out[e] = T(acc / l);
        }
      }
  }
}

}  // namespace detail

/// 2-D neighborhood attention in double; same contract and errors as xattn::neighborhood_attention_2d.
template <row_major_tensor<5> Q, row_major_tensor<5> K, row_major_tensor<5> V, row_major_tensor<5> O>
void neighborhood_attention_2d(const Q& q, const K& k, const V& v, O&& out, const neighborhood_2d_options& opt = {}) {
  static_assert(xattn::detail::native_storage_v<Q, K, V, O>,
                "xattn::reference: the references read float or double tensors (cast 16-bit ones with .cast<double>())");
  constexpr const char* fn = "xattn::reference::neighborhood_attention_2d";
  const auto p = xattn::detail::make_image_problem(fn, q, k, v, out, static_cast<std::nullptr_t*>(nullptr),
                                                   softmax_options{.scale = opt.scale});
  detail::neighborhood_attention_2d(p, xattn::detail::make_neighborhood_spec(fn, q.dimension(1), q.dimension(2), opt));
}

/// Sliding-window attention in double; same contract and errors as xattn::sliding_window_attention.
template <row_major_tensor<4> Q, row_major_tensor<4> K, row_major_tensor<4> V, row_major_tensor<4> O>
void sliding_window_attention(const Q& q, const K& k, const V& v, O&& out, const sliding_window_options& opt = {}) {
  static_assert(xattn::detail::native_storage_v<Q, K, V, O>,
                "xattn::reference: the references read float or double tensors (cast 16-bit ones with .cast<double>())");
  xattn::detail::window_spec w;
  detail::sliding_window_attention(xattn::detail::make_window_problem("xattn::reference::sliding_window_attention",
                                                                      q, k, v, out, static_cast<std::nullptr_t*>(nullptr), opt, w), w);
}

/// The same, also writing the log-sum-exp to `lse` [batch, q heads, Nq].
template <row_major_tensor<4> Q, row_major_tensor<4> K, row_major_tensor<4> V, row_major_tensor<4> O,
          row_major_tensor<3> L>
void sliding_window_attention(const Q& q, const K& k, const V& v, O&& out, L&& lse,
                              const sliding_window_options& opt = {}) {
  static_assert(xattn::detail::native_storage_v<Q, K, V, O>,
                "xattn::reference: the references read float or double tensors (cast 16-bit ones with .cast<double>())");
  xattn::detail::window_spec w;
  detail::sliding_window_attention(
      xattn::detail::make_window_problem("xattn::reference::sliding_window_attention", q, k, v, out, &lse, opt, w), w);
}

}  // namespace xattn::reference
