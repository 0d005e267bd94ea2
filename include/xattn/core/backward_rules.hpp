// xattn/core/backward_rules.hpp — the visibility rules of the backward engine (core/tile_backward.hpp)
// beyond the softmax band: the sliding window's, a block layout's and a 2-D neighborhood's. Each
// tells, for a tile of queries [i0, i1] × keys [j0, j1] (inclusive) of head h in batch b, whether
// no pair, every pair or some pairs are visible (conservatively: "none" and "full" only when
// certain), and for one pair whether it is visible. The forward's schedules (core/schedule.hpp)
// apply the same rules (window_spec, the layout, neighborhood_spec), so the backward visits the
// tiles the forward visited.
#pragma once

#include <algorithm>

#include "../block_layout.hpp"
#include "softmax_args.hpp"
#include "tile_backward.hpp"
#include "window_args.hpp"

namespace xattn::detail {

/// Sliding window: key j is visible to query i of batch b at the aligned position p = i + Nk − Nq
/// by window_spec::visible (right bound, sink tokens, left bound, dilation, chunks).
template <class T>
struct window_rule {
  const softmax_problem<T>* p;
  window_spec w;

  index offset(index b) const { return p->nk_of(b) - p->nq_of(b); }
  tile_visit classify(index b, index, index i0, index i1, index j0, index j1) const {
    const index off = offset(b), p0 = i0 + off, p1 = i1 + off;
    if (w.right >= 0 && j0 > p1 + w.right) return tile_visit::none;  // also bounds the sinks
    const bool sinks = j0 < w.sinks;
    if (!sinks) {
      if (w.left >= 0 && j1 < p0 - w.left) return tile_visit::none;
      if (w.chunk > 0 && (window_spec::floor_div(j1, w.chunk) < window_spec::floor_div(p0, w.chunk) ||
                          window_spec::floor_div(j0, w.chunk) > window_spec::floor_div(p1, w.chunk)))
        return tile_visit::none;
    }
    const bool right = w.right < 0 || j1 <= p0 + w.right;
    const bool all_sinks = j1 < w.sinks;
    const bool left = w.left < 0 || j0 >= p1 - w.left;
    const bool one_chunk = w.chunk == 0 || (window_spec::floor_div(j0, w.chunk) == window_spec::floor_div(j1, w.chunk) &&
                                            window_spec::floor_div(p0, w.chunk) == window_spec::floor_div(p1, w.chunk) &&
                                            window_spec::floor_div(j0, w.chunk) == window_spec::floor_div(p0, w.chunk));
    return right && (all_sinks || (left && w.dilation == 1 && one_chunk)) ? tile_visit::full : tile_visit::partial;
  }
  bool visible(index b, index, index i, index j) const { return w.visible(i + offset(b), j); }
};

/// Block-sparse: key j is visible to query i of head h when the layout lists block j / B in row
/// (h, i / B). The layout's block size is a multiple of the engine's 64-row tiles, so a tile lies
/// in one layout block and is either wholly listed or not at all.
struct layout_rule {
  const block_layout* layout;

  bool listed(index h, index qb, index kb) const {
    const auto row = layout->row(h, qb);
    return std::binary_search(row.begin(), row.end(), int(kb));
  }
  tile_visit classify(index, index h, index i0, index, index j0, index) const {
    const index bs = layout->block_size();
    return listed(h, i0 / bs, j0 / bs) ? tile_visit::full : tile_visit::none;
  }
  bool visible(index, index h, index i, index j) const {
    const index bs = layout->block_size();
    return listed(h, i / bs, j / bs);
  }
};

/// 2-D neighborhood over the flattened image (token y·width + x): neighborhood_spec::visible. A
/// tile is "none" when its key rows lie outside the union of its query rows' row windows; the
/// rest is decided pair by pair (a tile spans whole stretches of image rows, which a kernel of a
/// few columns covers only partly).
struct neighborhood_rule {
  neighborhood_spec s;

  tile_visit classify(index, index, index i0, index i1, index j0, index j1) const {
    const index w = s.width;
    const index y0 = i0 / w, y1 = i1 / w, ky0 = j0 / w, ky1 = j1 / w;
    index lo_all = s.height, hi_all = -1;  // image rows any of the tile's queries can see
    for (index y = y0; y <= y1; ++y) {
      index lo, hi;
      const index r = y % s.dh;
      neighborhood_spec::axis_window(y / s.dh, neighborhood_spec::group_len(s.height, s.dh, r), s.kh, s.ch, lo, hi);
      lo_all = std::min(lo_all, lo * s.dh + r), hi_all = std::max(hi_all, hi * s.dh + r);
    }
    return ky1 < lo_all || ky0 > hi_all ? tile_visit::none : tile_visit::partial;
  }
  bool visible(index, index, index i, index j) const { return s.visible(i, j); }
  /// visible() for the keys j0 .. j0 + n − 1 of query i: the query's two windows once, then the
  /// keys' image coordinates stepped along (no division per key).
  void visible_keys(index, index, index i, index j0, index n, bool* seen) const {
    const index y = i / s.width, x = i % s.width, ry = y % s.dh, rx = x % s.dw;
    index ylo, yhi, xlo, xhi;
    neighborhood_spec::axis_window(y / s.dh, neighborhood_spec::group_len(s.height, s.dh, ry), s.kh, s.ch, ylo, yhi);
    neighborhood_spec::axis_window(x / s.dw, neighborhood_spec::group_len(s.width, s.dw, rx), s.kw, s.cw, xlo, xhi);
    // in image coordinates: rows ylo·dh + ry .. yhi·dh + ry of residue ry, likewise columns
    const index y0 = ylo * s.dh + ry, y1 = yhi * s.dh + ry, x0 = xlo * s.dw + rx, x1 = xhi * s.dw + rx;
    index ky = j0 / s.width, kx = j0 % s.width;
    for (index c = 0; c < n; ++c) {
      seen[c] = ky >= y0 && ky <= y1 && (ky - ry) % s.dh == 0 && kx >= x0 && kx <= x1 && (kx - rx) % s.dw == 0;
      if (++kx == s.width) kx = 0, ++ky;
    }
  }
};

/// 2-D neighborhood over an image reordered into patches of 8 × 8 pixels (patch-major, patches
/// row-major, pixels row-major inside a patch): token t is pixel (y, x) of patch t / 64, and the
/// tokens of patches that stick out of the image are padding, seen by no query. A 64-token tile is
/// then one patch, and a kernel of k pixels reaches (k + 6) / 8 + 1 patches each way instead of k
/// image rows of 64-token stretches: at kernel 13 on a 128-wide image, 9 key tiles per query tile
/// instead of 26.
struct patch_neighborhood_rule {
  static constexpr index kSide = 8, kTile = kSide * kSide;
  neighborhood_spec s;
  index across;  // patches per patch row: ⌈width / 8⌉

  /// The image coordinates of token t (y >= height or x >= width: padding).
  void pixel(index t, index& y, index& x) const {
    const index patch = t / kTile, r = t % kTile;
    y = patch / across * kSide + r / kSide, x = patch % across * kSide + r % kSide;
  }
  /// The pixel rows [lo, hi] any query among rows [y0, y1] sees, likewise columns.
  static void reach(index y0, index y1, index len, index k, index dil, bool causal, index& lo, index& hi) {
    lo = len, hi = -1;
    for (index y = y0; y <= std::min(y1, len - 1); ++y) {
      index a, b;
      const index r = y % dil;
      neighborhood_spec::axis_window(y / dil, neighborhood_spec::group_len(len, dil, r), k, causal, a, b);
      lo = std::min(lo, a * dil + r), hi = std::max(hi, b * dil + r);
    }
  }
  tile_visit classify(index, index, index i0, index, index j0, index) const {
    index qy, qx, ky, kx;
    pixel(i0, qy, qx);  // the patches' first pixels
    pixel(j0, ky, kx);
    index lo, hi;
    reach(qy, qy + kSide - 1, s.height, s.kh, s.dh, s.ch, lo, hi);
    if (ky + kSide - 1 < lo || ky > hi) return tile_visit::none;
    reach(qx, qx + kSide - 1, s.width, s.kw, s.dw, s.cw, lo, hi);
    if (kx + kSide - 1 < lo || kx > hi) return tile_visit::none;
    return tile_visit::partial;
  }
  bool visible(index, index, index i, index j) const {
    index y, x, ky, kx;
    pixel(i, y, x);
    pixel(j, ky, kx);
    if (y >= s.height || x >= s.width || ky >= s.height || kx >= s.width) return false;
    return s.visible(y * s.width + x, ky * s.width + kx);
  }
  /// visible() for keys j0 .. j0 + n − 1 of query i, the query's windows once (one patch of keys:
  /// the engine's tiles start at multiples of 64).
  void visible_keys(index, index, index i, index j0, index n, bool* seen) const {
    index y, x;
    pixel(i, y, x);
    if (y >= s.height || x >= s.width) {
      std::fill(seen, seen + n, false);
      return;
    }
    const index ry = y % s.dh, rx = x % s.dw;
    index ylo, yhi, xlo, xhi;
    neighborhood_spec::axis_window(y / s.dh, neighborhood_spec::group_len(s.height, s.dh, ry), s.kh, s.ch, ylo, yhi);
    neighborhood_spec::axis_window(x / s.dw, neighborhood_spec::group_len(s.width, s.dw, rx), s.kw, s.cw, xlo, xhi);
    const index y0 = ylo * s.dh + ry, y1 = yhi * s.dh + ry, x0 = xlo * s.dw + rx, x1 = xhi * s.dw + rx;
    index py, px;
    pixel(j0 - j0 % kTile, py, px);
    if (s.dh == 1 && s.dw == 1) {  // no dilation: the same test without two integer divisions per key
      for (index c = 0; c < n; ++c) {
        const index r = (j0 + c) % kTile, ky = py + r / kSide, kx = px + r % kSide;
        seen[c] = ky <= y1 && ky >= y0 && kx >= x0 && kx <= x1;
      }
      return;
    }
    for (index c = 0; c < n; ++c) {
      const index r = (j0 + c) % kTile, ky = py + r / kSide, kx = px + r % kSide;
      seen[c] = ky <= y1 && ky >= y0 && kx >= x0 && kx <= x1 && (ky - ry) % s.dh == 0 && (kx - rx) % s.dw == 0;
    }
  }
};

}  // namespace xattn::detail
