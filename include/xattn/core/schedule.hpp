// xattn/core/schedule.hpp — which key blocks a query block visits, and which of those tiles are
// partial (need the element mask). Key blocks are aligned to multiples of the block size from key 0.
//
// The band schedule covers dense, causal, windowed and varlen attention: query i of a batch with
// nq valid queries and nk valid keys sees keys j with
//     i + off − left <= j <= i + off + right,   off = nk − nq   (bottom-right alignment, FA ≥ 2.1)
// and j < nk, where left/right = −1 means unbounded and causal is right = 0. A tile is full when every
// (i, j) in it is visible; only the tiles that cut the band's edges, or the last key, are partial.
#pragma once

#include <algorithm>

#include "error.hpp"

namespace xattn::detail {

struct band_schedule {
  index first = 0, last = -1;  // key blocks [first, last]; empty when last < first
  index block = 64;            // keys per block
  index nk = 0;                // valid keys
  index i_lo = 0, i_hi = -1;   // valid queries of the query block
  index off = 0, left = -1, right = -1;

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
  index blocks() const { return last - first + 1; }
  index key_begin(index t) const { return t * block; }
  index key_end(index t) const { return std::min((t + 1) * block, nk); }
  /// Does tile t need the band mask for some (i, j)?
  bool partial(index t) const {
    const bool right_ok = right < 0 || key_end(t) - 1 <= i_lo + off + right;
    const bool left_ok = left < 0 || key_begin(t) >= i_hi + off - left;
    return !(right_ok && left_ok);
  }
};

}  // namespace xattn::detail
