// xattn/core/online_softmax.hpp — the running max and sum of FlashAttention's online softmax, over
// a transposed score tile: Sᵀ[key][query], queries in vector lanes. Because each lane is one query,
// the row max and row sum over keys are plain vertical max/add across the tile's rows, with no
// horizontal reduction. Scores are in log2 units (log2(e) is folded into Q), so p = 2^(s − m).
#pragma once

#include <algorithm>
#include <limits>

#include "simd.hpp"
#include "error.hpp"

namespace xattn::detail {

/// State of up to MaxLanes queries: running max m, running sum l, and the factor
/// alpha = 2^(m_old − m_new) by which the caller rescales its output accumulator after update().
template <class Arch, class T, int MaxLanes>
struct online_softmax {
  using V = simd::vec_t<T, Arch>;
  static constexpr int L = simd::lanes_v<T, Arch>;
  static constexpr T kNegInf = -std::numeric_limits<T>::infinity();
  alignas(simd::kAlign) T m[MaxLanes];
  alignas(simd::kAlign) T l[MaxLanes];
  alignas(simd::kAlign) T alpha[MaxLanes];

  /// Empty rows: m = −inf, l = 0; or, with a sink logit per lane (log2 units), m = sink, l = 1 —
  /// the sink joins the denominator as one more score with no value row.
  void init(const T* sink_log2, index width) {
    for (index r = 0; r < width; ++r) {
      m[r] = sink_log2 ? sink_log2[r] : kNegInf;
      l[r] = sink_log2 ? T(1) : T(0);
    }
  }

  /// Folds rows [0, nk) × lanes [first, width) of the tile s (row stride ld; first and width
  /// multiples of the vector width) into the state and overwrites them with
  /// p = 2^(s − m_new). A lane whose max is still −inf uses 0 as its reference, so masked
  /// scores give p = 0 and never NaN (FlashAttention's Check_inf).
  void update(T* s, index ld, index nk, index width, index first = 0) {
    index r = first;
    if constexpr (MaxLanes >= kChunk * L)
      for (; r + kChunk * L <= width; r += kChunk * L) update_lanes<kChunk>(s + r, ld, nk, r);
    for (; r < width; r += L) update_lanes<1>(s + r, ld, nk, r);
  }

 private:
  static constexpr int kChunk = 4;  // vectors of lanes per pass: 4 independent max/exp chains, no spills

  template <int C>
  void update_lanes(T* s, index ld, index nk, index r0) {
    V mx[C], mu[C], sum[C];
    XATTN_UNROLL for (int w = 0; w < C; ++w) mx[w] = simd::load<V>(m + r0 + w * L);
    for (index c = 0; c < nk; ++c)
      XATTN_UNROLL for (int w = 0; w < C; ++w) mx[w] = simd::max(mx[w], simd::load<V>(s + c * ld + w * L));
    XATTN_UNROLL for (int w = 0; w < C; ++w) {
      mu[w] = simd::replace_neg_inf(mx[w], simd::bcast<V>(T(0)));
      const V a = simd::exp2(simd::load<V>(m + r0 + w * L) - mu[w]);  // alpha = 2^(m_old − m_new)
      simd::store(alpha + r0 + w * L, a);
      simd::store(m + r0 + w * L, mx[w]);
      sum[w] = simd::load<V>(l + r0 + w * L) * a;                       // l ← l·alpha + Σ p
    }
    for (index c = 0; c < nk; ++c)
      XATTN_UNROLL for (int w = 0; w < C; ++w) {
        const V p = simd::exp2(simd::load<V>(s + c * ld + w * L) - mu[w]);
        simd::store(s + c * ld + w * L, p);
        sum[w] = sum[w] + p;
      }
    XATTN_UNROLL for (int w = 0; w < C; ++w) simd::store(l + r0 + w * L, sum[w]);
  }
};

}  // namespace xattn::detail
