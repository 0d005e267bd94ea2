// xattn/core/window_args.hpp — options of sliding-window attention and their validation, once, at
// the front door: a softmax_problem (every softmax option but the band) plus a window_spec, the
// visibility rule that the window schedule (core/schedule.hpp) and the fp64 reference both apply.
#pragma once

#include <algorithm>
#include <optional>
#include <utility>

#include "softmax_args.hpp"

namespace xattn {
namespace detail {

/// The resolved 2-D neighborhood rule over an image of height × width tokens (flat index y·width + x).
struct neighborhood_spec {
  index height = 1, width = 1, kh = 1, kw = 1, dh = 1, dw = 1;
  bool ch = false, cw = false;

  /// Positions of residue r among n positions on a dilation-d grid.
  static index group_len(index n, index d, index r) { return (n - r + d - 1) / d; }
  /// The window [lo, hi] (in grid coordinates) of grid position a on an axis of len positions.
  static void axis_window(index a, index len, index k, bool causal, index& lo, index& hi) {
    if (causal) {
      lo = std::max<index>(0, a - k + 1), hi = a;
    } else {
      lo = std::clamp<index>(a - k / 2, 0, len - k), hi = lo + k - 1;
    }
  }
  /// Is flat key j visible to flat query i?
  bool visible(index i, index j) const {
    const index y = i / width, x = i % width, ky = j / width, kx = j % width;
    if (y % dh != ky % dh || x % dw != kx % dw) return false;
    index lo, hi;
    axis_window(y / dh, group_len(height, dh, y % dh), kh, ch, lo, hi);
    if (ky / dh < lo || ky / dh > hi) return false;
    axis_window(x / dw, group_len(width, dw, x % dw), kw, cw, lo, hi);
    return kx / dw >= lo && kx / dw <= hi;
  }
};

/// Validates the image axes and the options of a 2-D neighborhood call.
inline neighborhood_spec make_neighborhood_spec(const char* fn, index height, index width,
                                                const neighborhood_2d_options& o) {
  require(o.kernel_h >= 1 && o.kernel_h % 2 == 1, fn, "kernel_h", "must be odd and >= 1, got ", o.kernel_h);
  require(o.kernel_w >= 1 && o.kernel_w % 2 == 1, fn, "kernel_w", "must be odd and >= 1, got ", o.kernel_w);
  require(o.dilation_h >= 1, fn, "dilation_h", "must be >= 1, got ", o.dilation_h);
  require(o.dilation_w >= 1, fn, "dilation_w", "must be >= 1, got ", o.dilation_w);
  // kernel · dilation <= side, tested as kernel <= side / dilation (the product may overflow); an
  // empty image has nothing to attend (an empty result)
  if (height == 0 || width == 0) return {height, width, o.kernel_h, o.kernel_w, o.dilation_h, o.dilation_w, o.causal_h, o.causal_w};
  require(o.kernel_h <= height / o.dilation_h, fn, "kernel_h", "kernel_h · dilation_h = ", o.kernel_h, " · ",
          o.dilation_h, " exceeds the height ", height);
  require(o.kernel_w <= width / o.dilation_w, fn, "kernel_w", "kernel_w · dilation_w = ", o.kernel_w, " · ",
          o.dilation_w, " exceeds the width ", width);
  return {height, width, o.kernel_h, o.kernel_w, o.dilation_h, o.dilation_w, o.causal_h, o.causal_w};
}

/// Validates a 2-D neighborhood call: rank-5 tensors [batch, height, width, heads, dim] with equal
/// height and width, then everything else as softmax attention over the flattened image.
template <class Q, class K, class V, class O>
void check_image_axes(const char* fn, const Q& q, const K& k, const V& v, const O& o) {
  const auto qd = dims_of(q);
  for (auto [name, d] : {std::pair{"k", dims_of(k)}, std::pair{"v", dims_of(v)}, std::pair{"out", dims_of(o)}})
    require(d[1] == qd[1] && d[2] == qd[2], fn, name, "image ", d[1], "×", d[2], " != q image ", qd[1], "×", qd[2],
            " (q ", shape_str(qd), ", ", name, " ", shape_str(d), ")");
}

/// A rank-5 image tensor [batch, height, width, heads, dim] as the rank-4 [batch, height·width,
/// heads, dim] of its flattened pixels (row-major image order): the shape softmax validation takes.
template <class X>
std::array<index, 4> flat_image_dims(const X& x) {
  return {x.dimension(0), x.dimension(1) * x.dimension(2), x.dimension(3), x.dimension(4)};
}

/// The backward's image tensors: dout shaped as out, dq, dk, dv as q, k, v (rank 5).
template <class Q, class K, class V, class O, class DO, class DQ, class DK, class DV>
void check_image_grads(const char* fn, const Q& q, const K& k, const V& v, const O& o, const DO& dout, const DQ& dq,
                       const DK& dk, const DV& dv) {
  const auto same = [&](const char* name, const auto& x, const char* of, const auto& y) {
    require(dims_of(x) == dims_of(y), fn, name, "shape ", shape_str(dims_of(x)), " != ", of, " shape ",
            shape_str(dims_of(y)));
  };
  same("dout", dout, "out", o);
  same("dq", dq, "q", q);
  same("dk", dk, "k", k);
  same("dv", dv, "v", v);
}

/// A rank-5 image tensor as a rank-4 map [batch, height·width, heads, dim] of its pixels (writable:
/// the backward's gradients are such maps; const tensors are only read through it).
template <class X>
auto flat_image(X& x) {
  using S = std::remove_const_t<std::remove_reference_t<decltype(*x.data())>>;
  return Eigen::TensorMap<Eigen::Tensor<S, 4, Eigen::RowMajor>>(const_cast<S*>(x.data()), flat_image_dims(x));
}

/// A 2-D neighborhood call's tensors flattened to rank 4 and validated as softmax attention.
template <class Q, class K, class V, class O, class L>
auto make_image_problem(const char* fn, const Q& q, const K& k, const V& v, O& out, L* lse, const softmax_options& opt) {
  check_image_axes(fn, q, k, v, out);
  const Eigen::TensorMap<const Eigen::Tensor<scalar_of<Q>, 4, Eigen::RowMajor>> q4(q.data(), flat_image_dims(q));
  const Eigen::TensorMap<const Eigen::Tensor<scalar_of<K>, 4, Eigen::RowMajor>> k4(k.data(), flat_image_dims(k));
  const Eigen::TensorMap<const Eigen::Tensor<scalar_of<V>, 4, Eigen::RowMajor>> v4(v.data(), flat_image_dims(v));
  Eigen::TensorMap<Eigen::Tensor<scalar_of<O>, 4, Eigen::RowMajor>> o4(out.data(), flat_image_dims(out));
  return make_softmax_problem(fn, q4, k4, v4, o4, lse, opt);
}

/// The resolved window rule (left/right in keys: neighbours × dilation; −1 = unbounded).
struct window_spec {
  index left = -1, right = -1, dilation = 1, sinks = 0, chunk = 0;

  // b > 0; no intermediate overflows, whatever the size of b
  static index floor_div(index a, index b) { return a >= 0 ? a / b : -1 - (-(a + 1)) / b; }
  static index floor_mod(index a, index b) { return a % b < 0 ? a % b + b : a % b; }
  /// Is key j visible to the query at aligned position p = i + Nk − Nq (j < Nk checked by the caller)?
  bool visible(index p, index j) const {
    if (right >= 0 && j > p + right) return false;
    if (j < sinks) return true;
    if (left >= 0 && j < p - left) return false;
    if ((p - j) % dilation != 0) return false;
    if (chunk > 0 && floor_div(j, chunk) != floor_div(p, chunk)) return false;
    return true;
  }
};

/// Validates the window fields of sliding-window options (the tensors are validated apart).
inline void check_window_options(const char* fn, const sliding_window_options& opt) {
  require(!opt.softmax.causal, fn, "softmax.causal", "must be unset: use sliding_window_options::causal");
  require(opt.softmax.window_left == -1, fn, "softmax.window_left",
          "must be unset: use sliding_window_options::window_left");
  require(opt.softmax.window_right == -1, fn, "softmax.window_right",
          "must be unset: use sliding_window_options::window_right");
  require(opt.window_left >= -1, fn, "window_left", "must be >= -1 (-1 = unbounded), got ", opt.window_left);
  require(opt.window_right >= -1, fn, "window_right", "must be >= -1 (-1 = unbounded), got ", opt.window_right);
  require(opt.dilation >= 1, fn, "dilation", "must be >= 1, got ", opt.dilation);
  require(opt.sinks >= 0, fn, "sinks", "must be >= 0, got ", opt.sinks);
  require(opt.chunk >= 0, fn, "chunk", "must be >= 0 (0 = off), got ", opt.chunk);
}

/// The window rule of validated options over nq queries and nk keys.
inline window_spec window_spec_of(const sliding_window_options& opt, index nq, index nk) {
  window_spec spec;
  const index right = opt.causal ? 0 : opt.window_right;
  spec.dilation = opt.dilation;
  // In keys (neighbours × dilation). A window at least as long as both sequences together reaches
  // every key: unbounded (−1), so that neither the product nor a position plus it overflows.
  const index reach = (nq + nk - 1) / opt.dilation + 1;  // neighbours that cover Nq + Nk keys (⌈·⌉)
  const auto keys = [&](index w) { return w < 0 || w >= reach ? index(-1) : w * opt.dilation; };
  spec.left = keys(opt.window_left);
  spec.right = keys(right);
  spec.sinks = opt.sinks;
  spec.chunk = opt.chunk;
  return spec;
}

/// Validates a sliding-window call: the tensors as softmax_attention does, then the window fields.
template <class Q, class K, class V, class O, class L>
auto make_window_problem(const char* fn, const Q& q, const K& k, const V& v, O& o, L* lse,
                         const sliding_window_options& opt, window_spec& spec) {
  check_window_options(fn, opt);
  auto p = make_softmax_problem(fn, q, k, v, o, lse, opt.softmax);
  spec = window_spec_of(opt, p.nq, p.nk);
  return p;
}

}  // namespace detail
}  // namespace xattn
