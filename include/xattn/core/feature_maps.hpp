// xattn/core/feature_maps.hpp — the feature maps φ of linear attention applied to one row, as the
// chunk engine packs q and k. Every token maps two rows, so a scalar exp per element (~20 cycles)
// would cost more than the token's share of the chunk products (~1300 cycles at d = e = 128): the
// maps run on vectors, with exp(x) = 2^(x·log2 e) on simd::exp2 (arguments kept <= 0), and a
// scalar tail for the last d mod lanes elements (rows are the caller's: never read past d).
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <span>

#include "constants.hpp"
#include "error.hpp"
#include "../options.hpp"
#include "simd.hpp"

namespace xattn::detail {

inline constexpr double kSqrtHalf = 0.70710678118654752440;  // 1/√2 of the Taylor map's x⊗x/√2

template <class V>
inline void storeu(simd::elem_t<V>* p, const V& v) {
  if constexpr (simd::is_scalar_v<V>) *p = v; else v.store_unaligned(p);
}

/// e^x for x <= 0.
template <class V>
inline V exp_nonpositive(const V& x) {
  return simd::exp2(x * simd::bcast<V>(simd::elem_t<V>(kLog2e)));
}

/// y[0, D') = φ(x[0, d)). For the per-side softmax this is the query side (softmax over the
/// features); its key side needs statistics of the whole sequence: key_softmax_row.
template <class Arch, class T>
void feature_row(const xattn::feature_map& m, const T* x, index d, T* y) {
  using V = simd::vec_t<T, Arch>;
  constexpr index L = simd::lanes_v<T, Arch>;
  const index dv = d / L * L;  // elements in whole vectors
  switch (m.kind()) {
    case feature::identity:
      std::copy(x, x + d, y);
      break;
    case feature::elu_plus_one: {  // elu(x) + 1 = x + 1 for x >= 0, e^x below
      const V zero = simd::bcast<V>(T(0)), one = simd::bcast<V>(T(1));
      const V big = simd::bcast<V>(std::numeric_limits<T>::max());
      for (index c = 0; c < dv; c += L) {
        const V v = simd::loadu<V>(x + c);
        storeu(y + c, simd::keep_between(v, zero, big, v + one, exp_nonpositive(zero - simd::abs(v))));
      }
      for (index c = dv; c < d; ++c) y[c] = x[c] > T(0) ? x[c] + T(1) : std::exp(x[c]);
      break;
    }
    case feature::relu: {
      const V zero = simd::bcast<V>(T(0));
      for (index c = 0; c < dv; c += L) storeu(y + c, simd::max(simd::loadu<V>(x + c), zero));
      for (index c = dv; c < d; ++c) y[c] = std::max(x[c], T(0));
      break;
    }
    case feature::taylor: {  // [1, x, x_i²/√2, x_i·x_j (i < j)]: φ(q)·φ(k) = 1 + q·k + (q·k)²/2
      y[0] = T(1);
      std::copy(x, x + d, y + 1);
      T* sq = y + 1 + d;
      for (index i = 0; i < d; ++i) sq[i] = x[i] * x[i] * T(kSqrtHalf);
      T* cross = sq + d;
      for (index i = 0; i < d; ++i) {  // x_i·x[i+1, d)
        const index n = d - 1 - i, nv = n / L * L;
        const V xi = simd::bcast<V>(x[i]);
        for (index j = 0; j < nv; j += L) storeu(cross + j, xi * simd::loadu<V>(x + i + 1 + j));
        for (index j = nv; j < n; ++j) cross[j] = x[i] * x[i + 1 + j];
        cross += n;
      }
      break;
    }
    case feature::softmax: {  // query side: softmax over the d features
      const T mx = *std::max_element(x, x + d);
      const V vmx = simd::bcast<V>(mx);
      V vsum = simd::bcast<V>(T(0));
      for (index c = 0; c < dv; c += L) {
        const V p = exp_nonpositive(simd::loadu<V>(x + c) - vmx);
        storeu(y + c, p);
        vsum = vsum + p;
      }
      T sum = simd::hsum(vsum);
      for (index c = dv; c < d; ++c) sum += y[c] = std::exp(x[c] - mx);
      const T inv = T(1) / sum;
      for (index c = 0; c < d; ++c) y[c] *= inv;
      break;
    }
    case feature::custom:
      m.callable<T>()(std::span<const T>(x, static_cast<std::size_t>(d)),
                      std::span<T>(y, static_cast<std::size_t>(m.dim(d))));
      break;
  }
}

/// The statistics of the per-side softmax's key side over a sequence of n rows of d features:
/// mx[c] = max_j x_jc and sum[c] = Σ_j exp(x_jc − mx[c]); row(j) returns row j.
template <class Arch, class T, class Row>
void key_softmax_stats(const Row& row, index n, index d, T* mx, T* sum) {
  using V = simd::vec_t<T, Arch>;
  constexpr index L = simd::lanes_v<T, Arch>;
  const index dv = d / L * L;
  std::fill(mx, mx + d, -std::numeric_limits<T>::infinity());
  std::fill(sum, sum + d, T(0));
  for (index j = 0; j < n; ++j) {
    const T* x = row(j);
    for (index c = 0; c < d; ++c) mx[c] = std::max(mx[c], x[c]);
  }
  for (index j = 0; j < n; ++j) {
    const T* x = row(j);
    for (index c = 0; c < dv; c += L)
      storeu(sum + c, simd::loadu<V>(sum + c) + exp_nonpositive(simd::loadu<V>(x + c) - simd::loadu<V>(mx + c)));
    for (index c = dv; c < d; ++c) sum[c] += std::exp(x[c] - mx[c]);
  }
}

/// The key side of the per-side softmax: y[c] = exp(x[c] − max_c) / sum_c, with max_c and sum_c
/// (of exp(k_jc − max_c) over the sequence) from the engine's statistics pass.
template <class Arch, class T>
void key_softmax_row(const T* x, index d, const T* mx, const T* sum, T* y) {
  using V = simd::vec_t<T, Arch>;
  constexpr index L = simd::lanes_v<T, Arch>;
  const index dv = d / L * L;
  for (index c = 0; c < dv; c += L)
    storeu(y + c, exp_nonpositive(simd::loadu<V>(x + c) - simd::loadu<V>(mx + c)) / simd::loadu<V>(sum + c));
  for (index c = dv; c < d; ++c) y[c] = std::exp(x[c] - mx[c]) / sum[c];
}

}  // namespace xattn::detail
