// xattn/core/schedule.hpp — which key tiles a work item visits, which of those are partial (need
// the element mask), and that mask. Key tiles are aligned to multiples of the tile size from key 0.
//
// A schedule is made once per work item (a block of query lanes) by a policy, and tells the tile
// engine, for the n-th visit of the item (n in [0, count())):
//     tile(n)     the key tile to visit (increasing in n),
//     partial(n)  whether some (lane, key) of that tile is invisible,
//     mask_lanes<V>(st, lv, n, c_lo, c_hi, l0, l1)
//                 for the partial n-th tile, sets the invisible scores of rows [c_lo, c_hi) × lanes
//                 [l0, l1) of Sᵀ [keys][lanes] to −inf, vectorised over the lanes: one compare of
//                 the lanes' query positions (or of their per-lane data in `aux`) against bounds
//                 broadcast from each key row,
//     lane_keys(n, l0, l1, c_lo, c_hi)
//                 the keys [c_lo, c_hi) of the n-th tile that some lane of [l0, l1) can see: wide
//                 blocks compute each group of lanes of a partial tile on its range only (the
//                 diagonal of causal attention, the edges of a window), so a 256-lane block wastes
//                 little more than a narrow one while sharing its K/V tile copies four times as far.
// A 2-D neighborhood schedule gathers its tiles instead (keys(n) rows, key(n, c) each), and its
// policy lays out the query blocks as image patches (see tile_engine.hpp's two concepts).
// The policies: band_policy (softmax), window_policy (sliding window: band, dilation, sinks,
// chunks), sparse_policy (a block layout's rows), neighborhood_policy (2-D). Each also picks the
// engine's block width (block_rows; 0 = the engine's default).
// Dense, causal, windowed, dilated, sink, chunked, block-sparse and 2-D neighborhood attention differ
// only here.
//
// The band schedule covers softmax attention: query i of a batch with nq valid queries and nk valid
// keys sees keys j with
//     i + off − left <= j <= i + off + right,   off = nk − nq   (bottom-right alignment, FA ≥ 2.1)
// and j < nk, where left/right = −1 means unbounded and causal is right = 0. A tile is full when every
// (i, j) in it is visible; only the tiles that cut the band's edges, or the last key, are partial.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "error.hpp"
#include "simd.hpp"
#include "softmax_args.hpp"
#include "window_args.hpp"
#include "../block_layout.hpp"

namespace xattn::detail {

/// Per-lane rows a schedule may fill when it is made (e.g. each lane's residue modulo the dilation).
inline constexpr int kLaneAux = 4;

/// The lanes of a work item as a schedule sees them.
template <class T>
struct lane_view {
  const T* qpos;             // query index of each lane, as T (vector compares)
  const index* qi;           // query index of each lane
  const index* qh;           // query head of each lane
  index valid, width;        // lanes [0, valid) are rows of the problem; width lanes in all (padding repeats the last)
  T* aux;                    // kLaneAux rows of `stride` lanes, 64-byte aligned
  index stride;
  T* aux_row(int k) const { return aux + k * stride; }
};

/// keep lanes lo <= x <= hi of st[l0, l1), −inf elsewhere (l0, l1 multiples of the vector width).
template <class V, class T>
inline void keep_lanes(T* st, index l0, index l1, const T* x, T lo, T hi) {
  constexpr index L = sizeof(V) / sizeof(T);
  const V vlo = simd::bcast<V>(lo), vhi = simd::bcast<V>(hi), ninf = simd::bcast<V>(-std::numeric_limits<T>::infinity());
  for (index r = l0; r < l1; r += L)
    simd::store(st + r, simd::keep_between(simd::load<V>(x + r), vlo, vhi, simd::load<V>(st + r), ninf));
}

/// The valid queries [a, b] of lanes [l0, l1) (a > b when none): lanes hold nondecreasing queries
/// qi (rows are query-major), lanes from `valid` on are padding, queries past i_hi are padding.
inline void lane_queries(const index* qi, index valid, index i_hi, index l0, index l1, index& a, index& b) {
  a = l0 < valid ? qi[l0] : i_hi + 1;
  b = std::min(qi[std::min(l1, valid) - 1], i_hi);
}

struct band_schedule {
  index first = 0, last = -1;  // key blocks [first, last]; empty when last < first
  index block = 64;            // keys per block
  index nk = 0;                // valid keys
  index i_lo = 0, i_hi = -1;   // valid queries of the query block
  index off = 0, left = -1, right = -1;
  const index* qi = nullptr;   // query of each lane (nondecreasing), for lane_keys
  index valid = 0;             // lanes [0, valid) are rows of the problem

  /// The schedule of queries [i_lo, i_hi] of a batch with nq valid queries and nk valid keys.
  static band_schedule make(index i_lo, index i_hi, index nq, index nk, index left, index right,
                            index block) {
    band_schedule s;
    s.block = block, s.nk = nk, s.off = nk - nq, s.left = left, s.right = right;
    s.i_lo = i_lo, s.i_hi = std::min(i_hi, nq - 1);
    if (s.i_lo > s.i_hi || nk <= 0) return s;
    const index j_lo = left >= 0 ? std::max<index>(0, s.i_lo + s.off - left) : 0;
    const index j_hi = right >= 0 ? std::min<index>(nk - 1, s.i_hi + s.off + right) : nk - 1;
    if (j_lo > j_hi) return s;
    s.first = j_lo / block;
    s.last = j_hi / block;
    return s;
  }
  index count() const { return last - first + 1; }
  index tile(index n) const { return first + n; }
  index key_begin(index t) const { return t * block; }
  index key_end(index t) const { return std::min((t + 1) * block, nk); }
  /// Does the n-th tile need the band mask for some (i, j)?
  bool partial(index n) const { return partial_tile(tile(n)); }
  bool partial_tile(index t) const {
    const bool right_ok = right < 0 || key_end(t) - 1 <= i_lo + off + right;
    const bool left_ok = left < 0 || key_begin(t) >= i_hi + off - left;
    return !(right_ok && left_ok);
  }
  /// Keys [c_lo, c_hi) of key tile t that some lane of [l0, l1) sees (empty when c_lo >= c_hi).
  void tile_lane_keys(index t, index l0, index l1, index& c_lo, index& c_hi) const {
    index a, b;
    lane_queries(qi, valid, i_hi, l0, l1, a, b);
    c_lo = c_hi = 0;
    if (a > b) return;
    const index lo = left >= 0 ? a + off - left : 0, hi = right >= 0 ? b + off + right : nk - 1;
    c_lo = std::max<index>(lo - key_begin(t), 0), c_hi = std::min(hi + 1, key_end(t)) - key_begin(t);
  }
  void lane_keys(index n, index l0, index l1, index& c_lo, index& c_hi) const {
    tile_lane_keys(tile(n), l0, l1, c_lo, c_hi);
  }
  /// Keeps lanes with j − off − right <= i <= j − off + left, on key tile t.
  template <class V, class T>
  void mask_tile(T* st, const lane_view<T>& lv, index t, index c_lo, index c_hi, index l0, index l1) const {
    const T big = std::numeric_limits<T>::max();
    for (index c = c_lo; c < c_hi; ++c) {
      const index j = key_begin(t) + c;
      keep_lanes<V>(st + c * lv.width, l0, l1, lv.qpos, right >= 0 ? T(j - off - right) : -big,
                    left >= 0 ? T(j - off + left) : big);
    }
  }
  template <class V, class T>
  void mask_lanes(T* st, const lane_view<T>& lv, index n, index c_lo, index c_hi, index l0, index l1) const {
    mask_tile<V>(st, lv, tile(n), c_lo, c_hi, l0, l1);
  }
};

/// Softmax attention: the band of the problem's causal/window options.
struct band_policy {
  template <class T>
  band_schedule make(const softmax_problem<T>& p, index b, index /*hk*/, const lane_view<T>& lv, index block) const {
    auto s = band_schedule::make(lv.qi[0], lv.qi[lv.valid - 1], p.nq_of(b), p.nk_of(b), p.window_left,
                                 p.window_right, block);
    s.qi = lv.qi, s.valid = lv.valid;
    return s;
  }
  /// Engine block width (lanes) for `rows` rows per K/V head; 0 = the engine's default.
  index block_rows(index /*rows*/, index /*group*/, index /*max*/, index /*step*/) const { return 0; }
  /// Whether every K/V head gets the same schedule (the engine may then visit heads side by side).
  bool head_uniform() const { return true; }
};

/// Sliding-window attention (window_spec): the sink tiles [0, sink_tiles), then the band's tiles
/// restricted to the chunks of the block's queries. With dilation every band tile is partial.
struct window_schedule {
  window_spec w;
  index block = 64, nk = 0, off = 0;
  index i_lo = 0, i_hi = -1;
  index sink_tiles = 0;        // tiles [0, sink_tiles) hold visible sink keys
  index first = 0, last = -1;  // band tiles [first, last], first >= sink_tiles
  const index* qi = nullptr;   // query of each lane (nondecreasing), for lane_keys
  index valid = 0;

  index count() const { return sink_tiles + std::max<index>(0, last - first + 1); }
  index tile(index n) const { return n < sink_tiles ? n : first + (n - sink_tiles); }
  index chunk_of(index x) const { return window_spec::floor_div(x, w.chunk) * w.chunk; }

  bool partial(index n) const {
    const index t = tile(n), kb = t * block, ke = std::min((t + 1) * block, nk) - 1;
    const bool right_ok = w.right < 0 || ke <= i_lo + off + w.right;
    if (ke < w.sinks) return !right_ok;  // all sink keys
    const bool left_ok = w.left < 0 || kb >= i_hi + off - w.left;
    const bool chunk_ok = w.chunk == 0 || (chunk_of(i_lo + off) == chunk_of(i_hi + off) &&
                                           kb >= chunk_of(i_lo + off) && ke < chunk_of(i_lo + off) + w.chunk);
    return !(w.dilation == 1 && right_ok && left_ok && chunk_ok);
  }

  /// Keys of tile n that lanes [l0, l1) can see: their band within their chunks; a tile holding
  /// sink keys is taken whole.
  void lane_keys(index n, index l0, index l1, index& c_lo, index& c_hi) const {
    const index j0 = tile(n) * block, je = std::min(j0 + block, nk);
    c_lo = 0, c_hi = je - j0;
    index a, b;
    lane_queries(qi, valid, i_hi, l0, l1, a, b);
    if (a > b) return void(c_hi = 0);
    if (j0 < w.sinks) return;
    index lo = w.left >= 0 ? a + off - w.left : 0, hi = w.right >= 0 ? b + off + w.right : nk - 1;
    if (w.chunk > 0) lo = std::max(lo, chunk_of(a + off)), hi = std::min(hi, chunk_of(b + off) + w.chunk - 1);
    c_lo = std::max<index>(lo - j0, 0), c_hi = std::min(hi + 1, je) - j0;
  }

  /// Per key row: sink keys keep lanes i >= j − off − right; the others lanes inside the band and
  /// the key's chunk, and with dilation only lanes whose residue (aux row 0) matches the key's.
  template <class V, class T>
  void mask_lanes(T* st, const lane_view<T>& lv, index n, index c_lo, index c_hi, index l0, index l1) const {
    const T big = std::numeric_limits<T>::max();
    for (index c = c_lo; c < c_hi; ++c) {
      const index j = tile(n) * block + c;
      T* row = st + c * lv.width;
      T lo = w.right >= 0 ? T(j - off - w.right) : -big, hi = big;
      if (j >= w.sinks) {
        if (w.left >= 0) hi = T(j - off + w.left);
        if (w.chunk > 0) {
          lo = std::max(lo, T(chunk_of(j) - off));
          hi = std::min(hi, T(chunk_of(j) + w.chunk - 1 - off));
        }
        if (w.dilation > 1) {
          const T res = T(j % w.dilation);  // (i + off − j) % dilation == 0
          keep_lanes<V>(row, l0, l1, lv.aux_row(0), res, res);
        }
      }
      keep_lanes<V>(row, l0, l1, lv.qpos, lo, hi);
    }
  }
};

struct window_policy {
  static constexpr bool two_ended = true;  // the engine's two workers take items from both ends
  window_spec w;
  template <class T>
  window_schedule make(const softmax_problem<T>& p, index b, index /*hk*/, const lane_view<T>& lv, index block) const {
    window_schedule s;
    s.w = w, s.block = block;
    const index nq = p.nq_of(b);
    s.nk = p.nk_of(b), s.off = s.nk - nq;
    s.i_lo = lv.qi[0], s.i_hi = std::min(lv.qi[lv.valid - 1], nq - 1);
    s.qi = lv.qi, s.valid = lv.valid;
    if (w.dilation > 1)
      for (index r = 0; r < lv.width; ++r)
        lv.aux_row(0)[r] = T(window_spec::floor_mod(lv.qi[r] + s.off, w.dilation));
    if (s.i_lo > s.i_hi || s.nk <= 0) return s;
    const index j_right = w.right >= 0 ? std::min(s.nk - 1, s.i_hi + s.off + w.right) : s.nk - 1;
    if (j_right < 0) return s;
    const index sink_keys = std::min(w.sinks, j_right + 1);
    s.sink_tiles = sink_keys > 0 ? (sink_keys - 1) / block + 1 : 0;
    index j_lo = w.left >= 0 ? std::max<index>(0, s.i_lo + s.off - w.left) : 0, j_hi = j_right;
    if (w.chunk > 0) {
      j_lo = std::max(j_lo, s.chunk_of(s.i_lo + s.off));
      j_hi = std::min(j_hi, s.chunk_of(s.i_hi + s.off) + w.chunk - 1);
    }
    if (j_lo <= j_hi) s.first = std::max(j_lo / block, s.sink_tiles), s.last = j_hi / block;
    return s;
  }
  bool head_uniform() const { return true; }
  /// The engine's default width (256 float lanes) for every band: partial tiles are computed per
  /// group of lanes on the keys that group sees (lane_keys), so a wide block wastes little at a
  /// window's edges (3 % at w = 1024) and copies each K/V tile once for 256 queries. Measured, one
  /// thread, N = 8192, CPU time: w = 1024 in 201–218 ms against 218–236 ms with the 64-lane blocks
  /// that were faster before lane ranges; w = 256 in 72–75 against 74–93 ms.
  index block_rows(index, index, index, index) const { return 0; }
};

/// Sparse attention: a block layout resolved for the engine. Rows are per (K/V head, layout query
/// block) when the layout is per head — the union of the group's G heads' key blocks, each entry
/// with a bitmask of the heads that visit it — or per layout query block when shared.
struct sparse_plan {
  index block = 64;          // layout block size (a multiple of the engine tile)
  index tiles_per_block = 1;
  index group = 1, q_blocks = 0;
  bool per_head = false;
  std::vector<index> ptr;
  std::vector<int> cols;
  std::vector<std::uint64_t> heads;  // per entry, bit g = head hk·G + g visits it (per_head only)

  sparse_plan(const block_layout& l, index hkv, index group, index tile) {
    block = l.block_size(), tiles_per_block = block / tile, this->group = group, q_blocks = l.q_blocks();
    per_head = l.heads() > 1;
    ptr.push_back(0);
    std::vector<std::uint64_t> bits(static_cast<std::size_t>(l.k_blocks()));
    for (index hk = 0; hk < (per_head ? hkv : 1); ++hk)
      for (index qb = 0; qb < q_blocks; ++qb) {
        if (!per_head) {
          const auto r = l.row(0, qb);
          cols.insert(cols.end(), r.begin(), r.end());
        } else {
          std::fill(bits.begin(), bits.end(), 0);
          for (index g = 0; g < group; ++g)
            for (int kb : l.row(hk * group + g, qb)) bits[kb] |= std::uint64_t{1} << g;
          for (index kb = 0; kb < l.k_blocks(); ++kb)
            if (bits[kb]) cols.push_back(int(kb)), heads.push_back(bits[kb]);
        }
        ptr.push_back(index(cols.size()));
      }
  }
};

/// The visits of one work item: the layout row's key blocks, each expanded to its tiles, clipped to
/// the band of the problem's causal/window options. Partial tiles: those the band cuts, and (per
/// head) those not every head of the group visits.
struct layout_schedule {
  band_schedule band;
  const int* cols = nullptr;
  const std::uint64_t* heads = nullptr;  // null when shared
  std::uint64_t all = 0;                 // every head of the group
  index tpb = 1, x_lo = 0, x_hi = 0, g0 = 0;

  index count() const { return x_hi - x_lo; }
  index tile(index n) const {
    const index x = x_lo + n;
    return index(cols[x / tpb]) * tpb + x % tpb;
  }
  bool heads_partial(index n) const { return heads && heads[(x_lo + n) / tpb] != all; }
  bool partial(index n) const { return band.partial_tile(tile(n)) || heads_partial(n); }

  void lane_keys(index n, index l0, index l1, index& c_lo, index& c_hi) const {
    band.tile_lane_keys(tile(n), l0, l1, c_lo, c_hi);
  }
  /// The band mask where the band cuts the tile; then lanes whose head does not visit the block.
  template <class V, class T>
  void mask_lanes(T* st, const lane_view<T>& lv, index n, index c_lo, index c_hi, index l0, index l1) const {
    if (band.partial_tile(tile(n))) band.mask_tile<V>(st, lv, tile(n), c_lo, c_hi, l0, l1);
    if (!heads_partial(n)) return;
    const std::uint64_t bits = heads[(x_lo + n) / tpb];
    T* flag = lv.aux_row(0);
    for (index r = l0; r < l1; ++r) flag[r] = T((bits >> (lv.qh[r] - g0)) & 1);
    for (index c = c_lo; c < c_hi; ++c) keep_lanes<V>(st + c * lv.width, l0, l1, flag, T(1), T(1));
  }
};

struct sparse_policy {
  const sparse_plan* plan;

  template <class T>
  layout_schedule make(const softmax_problem<T>& p, index b, index hk, const lane_view<T>& lv, index tile) const {
    layout_schedule s;
    s.band = band_schedule::make(lv.qi[0], lv.qi[lv.valid - 1], p.nq_of(b), p.nk_of(b), p.window_left,
                                 p.window_right, tile);
    s.band.qi = lv.qi, s.band.valid = lv.valid;
    const sparse_plan& pl = *plan;
    const index row = (pl.per_head ? hk * pl.q_blocks : 0) + lv.qi[0] / pl.block;
    s.cols = pl.cols.data() + pl.ptr[row];
    const index len = pl.ptr[row + 1] - pl.ptr[row];
    if (pl.per_head) {
      s.heads = pl.heads.data() + pl.ptr[row];
      s.all = pl.group == 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << pl.group) - 1;
      s.g0 = hk * pl.group;
    }
    s.tpb = pl.tiles_per_block;
    if (s.band.count() <= 0 || len == 0) return s;
    // [x_lo, x_hi): the expanded entries whose tiles lie in the band's [first, last].
    const index kb_first = s.band.first / s.tpb, kb_last = s.band.last / s.tpb;
    const int* e_lo = std::lower_bound(s.cols, s.cols + len, int(kb_first));
    const int* e_hi = std::upper_bound(s.cols, s.cols + len, int(kb_last));
    if (e_lo >= e_hi) return s;
    s.x_lo = (e_lo - s.cols) * s.tpb + (*e_lo == kb_first ? s.band.first % s.tpb : 0);
    s.x_hi = (e_hi - 1 - s.cols) * s.tpb + (*(e_hi - 1) == kb_last ? s.band.last % s.tpb + 1 : s.tpb);
    s.x_hi = std::max(s.x_hi, s.x_lo);
    return s;
  }
  bool head_uniform() const { return !plan->per_head; }
  /// One engine block per layout row (or a part of one): the widest multiple of `step` lanes that
  /// divides the layout block's block·G rows.
  index block_rows(index /*rows*/, index group, index max, index step) const {
    const index rows = plan->block * group;
    for (index w = max / step * step; w > step; w -= step)
      if (rows % w == 0) return w;
    return step;
  }
};

/// 2-D neighborhood attention. Queries are split by dilation residue (NATTEN: a dilated
/// neighborhood is a plain one on each of the dh × dw sub-grids) and, on each sub-grid, into patches
/// of ph × pw; a work item is one patch. Its keys are the rectangle of sub-grid positions that the
/// patch's windows cover, gathered row-major into tiles of whole rectangle rows (at most 64 keys).
/// Lane aux rows 0–3 hold each lane's window [ylo, yhi] × [xlo, xhi] in sub-grid coordinates.
///
/// Lane groups (one vector of lanes each, lane_keys): the keys a group of lanes can see are the
/// rectangle rows its windows cover, all columns: one contiguous range of a tile. The engine
/// computes a group's scores on that range only and masks it against the lanes' windows; a
/// compact group (4 × 4 queries at kernel 13: 16 × 16 keys, 66 % visible) wastes far less than the
/// whole patch's rectangle (8 × 8 queries: 20 × 20 keys, 42 %).
struct neighborhood_schedule {
  static constexpr index kMaxLanes = 256;  // the widest engine block (tile_shape::BrMax)
  const neighborhood_spec* s = nullptr;
  index ry = 0, rx = 0;          // the sub-grid: rows ≡ ry (mod dh), columns ≡ rx (mod dw)
  index r0 = 0, c0 = 0, cols = 1, total = 0;  // the key rectangle: rows r0.., columns c0..c0+cols−1 (grid coordinates)
  index tile = 64;                             // keys per gathered tile: whole rectangle rows when they fit
  index ylo[kMaxLanes], yhi[kMaxLanes];        // each lane's window rows, relative to r0

  index count() const { return (total + tile - 1) / tile; }
  index keys(index n) const { return std::min<index>(tile, total - tile * n); }
  index key(index n, index c) const {
    const index m = tile * n + c;
    return ((r0 + m / cols) * s->dh + ry) * s->width + (c0 + m % cols) * s->dw + rx;
  }
  /// Keys [c_lo, c_hi) of tile n: the rows that some lane of [l0, l1) sees (empty when c_lo >= c_hi).
  void lane_keys(index n, index l0, index l1, index& c_lo, index& c_hi) const {
    index lo = ylo[l0], hi = yhi[l0];
    for (index r = l0 + 1; r < l1; ++r) lo = std::min(lo, ylo[r]), hi = std::max(hi, yhi[r]);
    c_lo = std::max(lo * cols - tile * n, index{0});
    c_hi = std::min((hi + 1) * cols - tile * n, keys(n));
  }
  bool partial(index) const { return true; }
  /// Rows [c_lo, c_hi) × lanes [l0, l1) of Sᵀ: −inf outside each lane's window.
  template <class V, class T>
  void mask_lanes(T* st, const lane_view<T>& lv, index n, index c_lo, index c_hi, index l0, index l1) const {
    constexpr index L = sizeof(V) / sizeof(T);
    const V ninf = simd::bcast<V>(-std::numeric_limits<T>::infinity());
    for (index c = c_lo; c < c_hi; ++c) {
      const index m = tile * n + c;
      const V ky = simd::bcast<V>(T(r0 + m / cols)), kx = simd::bcast<V>(T(c0 + m % cols));
      T* row = st + c * lv.width;
      for (index r = l0; r < l1; r += L) {
        V x = simd::keep_between(ky, simd::load<V>(lv.aux_row(0) + r), simd::load<V>(lv.aux_row(1) + r),
                                 simd::load<V>(row + r), ninf);
        x = simd::keep_between(kx, simd::load<V>(lv.aux_row(2) + r), simd::load<V>(lv.aux_row(3) + r), x, ninf);
        simd::store(row + r, x);
      }
    }
  }
};

struct neighborhood_policy {
  neighborhood_spec s;
  index ph = 8, pw = 8;  // query patch (grid positions)

  /// Patches per sub-grid (ry, rx).
  index patches(index ry, index rx) const {
    return (neighborhood_spec::group_len(s.height, s.dh, ry) + ph - 1) / ph *
           ((neighborhood_spec::group_len(s.width, s.dw, rx) + pw - 1) / pw);
  }
  index query_blocks(index, index) const {
    index n = 0;
    for (index ry = 0; ry < s.dh; ++ry)
      for (index rx = 0; rx < s.dw; ++rx) n += patches(ry, rx);
    return n;
  }
  /// Block qb → (sub-grid, patch): its rows a0..a1 and columns b0..b1 in grid coordinates.
  void locate(index qb, index& ry, index& rx, index& a0, index& a1, index& b0, index& b1) const {
    for (ry = 0; ry < s.dh; ++ry)
      for (rx = 0; rx < s.dw; ++rx) {
        if (qb < patches(ry, rx)) {
          const index hg = neighborhood_spec::group_len(s.height, s.dh, ry), wg = neighborhood_spec::group_len(s.width, s.dw, rx);
          const index per_row = (wg + pw - 1) / pw;
          a0 = qb / per_row * ph, b0 = qb % per_row * pw;
          a1 = std::min(a0 + ph, hg) - 1, b1 = std::min(b0 + pw, wg) - 1;
          return;
        }
        qb -= patches(ry, rx);
      }
  }
  index block_queries(index qb, index* qi, index) const {
    index ry, rx, a0, a1, b0, b1, n = 0;
    locate(qb, ry, rx, a0, a1, b0, b1);
    for (index a = a0; a <= a1; ++a)
      for (index c = b0; c <= b1; ++c) qi[n++] = (a * s.dh + ry) * s.width + c * s.dw + rx;
    return n;
  }
  bool head_uniform() const { return false; }  // never asked: its query blocks are its own
  index block_rows(index, index group, index max, index step) const {
    return std::min(max, (ph * pw * group + step - 1) / step * step);
  }

  template <class T>
  neighborhood_schedule make(const softmax_problem<T>&, index, index, const lane_view<T>& lv, index tile) const {
    neighborhood_schedule sc;
    sc.s = &s;
    sc.ry = (lv.qi[0] / s.width) % s.dh, sc.rx = (lv.qi[0] % s.width) % s.dw;
    const index hg = neighborhood_spec::group_len(s.height, s.dh, sc.ry), wg = neighborhood_spec::group_len(s.width, s.dw, sc.rx);
    index rmin = hg, rmax = -1, cmin = wg, cmax = -1;
    for (index r = 0; r < lv.width; ++r) {
      const index a = lv.qi[r] / s.width / s.dh, c = lv.qi[r] % s.width / s.dw;
      index ylo, yhi, xlo, xhi;
      neighborhood_spec::axis_window(a, hg, s.kh, s.ch, ylo, yhi);
      neighborhood_spec::axis_window(c, wg, s.kw, s.cw, xlo, xhi);
      lv.aux_row(0)[r] = T(ylo), lv.aux_row(1)[r] = T(yhi), lv.aux_row(2)[r] = T(xlo), lv.aux_row(3)[r] = T(xhi);
      rmin = std::min(rmin, ylo), rmax = std::max(rmax, yhi), cmin = std::min(cmin, xlo), cmax = std::max(cmax, xhi);
    }
    sc.r0 = rmin, sc.c0 = cmin, sc.cols = cmax - cmin + 1;
    sc.total = (rmax - rmin + 1) * sc.cols;
    sc.tile = sc.cols <= tile ? tile / sc.cols * sc.cols : tile;
    for (index r = 0; r < lv.width; ++r)
      sc.ylo[r] = index(lv.aux_row(0)[r]) - rmin, sc.yhi[r] = index(lv.aux_row(1)[r]) - rmin;
    return sc;
  }
};

}  // namespace xattn::detail
