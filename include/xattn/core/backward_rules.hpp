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

}  // namespace xattn::detail
