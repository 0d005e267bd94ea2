// tests/storage16_util.hpp — what the 16-bit storage tests (test_storage16.cpp) add to test_util.hpp:
// the product paths of this machine and a guard that restores the process-wide cap, rounding to
// bfloat16 and half, the ulp of a 16-bit output, and a naive fp32 softmax attention that rounds
// the same operands the kernels round on each path:
//   fp32 path:      the 16-bit inputs (already rounded by the caller), everything else in float;
//   bf16 paths:     also P = exp(s − max) rounded to bfloat16 before P·V (the caller passes q, k, v
//                   already rounded to bfloat16 when compute = bf16 turns float tensors into bf16).
// The accuracy rule of the suite is test_util.hpp's, against this naive:
//   error(kernel vs fp64 reference) <= 2 · error(naive vs fp64 reference) + eps
// plus, for a 16-bit out, half an ulp of the output type at the reference value.
#pragma once

#include <functional>

#include "paths_util.hpp"
#include "test_util.hpp"

namespace xattn_test {


// ---------------------------------------------------------------------------------------------
// 16-bit rounding

template <class S>
inline constexpr bool is_16bit = std::is_same_v<S, Eigen::bfloat16> || std::is_same_v<S, Eigen::half>;

template <class S>
const char* type_name() {
  if constexpr (std::is_same_v<S, Eigen::bfloat16>) return "bf16";
  else if constexpr (std::is_same_v<S, Eigen::half>) return "f16";
  else if constexpr (std::is_same_v<S, float>) return "f32";
  else return "f64";
}

/// x rounded to S (to nearest, ties to even: Eigen's conversion, which the kernels match) and back.
template <class S>
float round_to(float x) {
  if constexpr (std::is_same_v<S, float>) return x;
  else return static_cast<float>(static_cast<S>(x));
}

/// A float copy of t with every element rounded to S.
template <class S, class X>
tensor<float, X::NumDimensions> rounded(const X& t) {
  tensor<float, X::NumDimensions> r(t.dimensions());
  for (index i = 0; i < t.size(); ++i) r.data()[i] = round_to<S>(static_cast<float>(t.data()[i]));
  return r;
}

/// Half an ulp of S at magnitude |x| (at the smallest normal's ulp below it: subnormals).
template <class S>
double half_ulp(double x) {
  static_assert(is_16bit<S>);
  constexpr int mant = std::is_same_v<S, Eigen::bfloat16> ? 7 : 10;
  constexpr int emin = std::is_same_v<S, Eigen::bfloat16> ? -126 : -14;
  const int e = x > 0 ? std::max(int(std::floor(std::log2(x))), emin) : emin;
  return 0.5 * std::ldexp(1.0, e - mant);
}

// ---------------------------------------------------------------------------------------------
// The naive implementation

/// Extra visibility on top of the softmax options (the window of sliding-window attention, the
/// blocks of a sparse layout, the neighbourhood of a pixel): (batch, q head, query, key) → visible.
using visibility = std::function<bool(index, index, index, index)>;

struct naive16_result {
  tensor<float> out;
  tensor<float, 3> lse;
  double max_abs_score = 0;  // largest |scale·q·k|, for the eps
};

/// softmax(scale·QKᵀ + bias + mask)·V in float over float tensors that already hold the rounded
/// inputs; with round_p, P = exp(s − max) is rounded to bfloat16 before it multiplies V (the sum
/// of the row runs over the same rounded P, so that LSE carries the rounding too: the looser of
/// the two readings of "P rounded to bf16, sums in fp32"). Every option of softmax_options is
/// applied in the order options.hpp documents; `extra` ANDs a family's own pattern.
template <class Q, class K, class V>
naive16_result naive16(const Q& q, const K& k, const V& v, const xattn::softmax_options& opt, bool round_p,
                       const visibility& extra = {}) {
  const xattn::layout l = opt.layout;
  const index batch = q.dimension(0), nq_all = seq_of(q, l), nk_all = seq_of(k, l);
  const index hq = heads_of(q, l), hkv = heads_of(k, l), d = q.dimension(3), dv = v.dimension(3), group = hq / hkv;
  const float scale = float(opt.scale ? *opt.scale : 1.0 / std::sqrt(double(d)));
  const float cap = float(opt.softcap);
  const index wl = opt.window_left, wr = opt.causal ? 0 : opt.window_right;
  const float ninf = -std::numeric_limits<float>::infinity();
  naive16_result r{make_tensor<float>(l, batch, nq_all, hq, dv), tensor<float, 3>(batch, hq, nq_all), 0};
  std::vector<float> s(static_cast<std::size_t>(nk_all)), acc(static_cast<std::size_t>(dv));
  for (index b = 0; b < batch; ++b) {
    const index nq = opt.seqlens_q.empty() ? nq_all : opt.seqlens_q[b];
    const index nk = opt.seqlens_k.empty() ? nk_all : opt.seqlens_k[b];
    for (index h = 0; h < hq; ++h) {
      const index hk = h / group;
      const float alibi = opt.alibi_slopes.empty() ? 0.f
                          : opt.alibi_slopes.size() == std::size_t(hq) ? opt.alibi_slopes[h]
                                                                       : opt.alibi_slopes[b * hq + h];
      for (index i = 0; i < nq_all; ++i) {
        float m = i < nq && !opt.sink_logits.empty() ? opt.sink_logits[h] : ninf;
        const index diag = i + nk - nq;
        for (index j = 0; j < nk && i < nq; ++j) {
          float x = 0;
          for (index c = 0; c < d; ++c) x += at(q, l, b, i, h, c) * at(k, l, b, j, hk, c);
          x *= scale;
          r.max_abs_score = std::max(r.max_abs_score, double(std::abs(x)));
          if (cap > 0) x = cap * std::tanh(x / cap);
          if (alibi != 0) x -= alibi * float(std::abs(diag - j));
          if (opt.bias) {
            const auto& bd = opt.bias.dims;
            x += opt.bias.data[(((bd[0] == 1 ? 0 : b) * bd[1] + (bd[1] == 1 ? 0 : h)) * nq_all + i) * nk_all + j];
          }
          bool vis = (wr < 0 || j <= diag + wr) && (wl < 0 || j >= diag - wl);
          if (opt.mask) {
            const auto& md = opt.mask.dims;
            vis = vis && opt.mask.data[(((md[0] == 1 ? 0 : b) * md[1] + (md[1] == 1 ? 0 : h)) * nq_all + i) * nk_all + j];
          }
          if (extra) vis = vis && extra(b, h, i, j);
          s[j] = vis ? x : ninf;
          m = std::max(m, s[j]);
        }
        if (m == ninf) {  // padded or fully masked: zeros, LSE −inf
          for (index e = 0; e < dv; ++e) at(r.out, l, b, i, h, e) = 0;
          r.lse(b, h, i) = ninf;
          continue;
        }
        float sum = opt.sink_logits.empty() ? 0.f : std::exp(opt.sink_logits[h] - m);
        std::fill(acc.begin(), acc.end(), 0.f);
        for (index j = 0; j < nk; ++j) {
          float p = std::exp(s[j] - m);
          if (round_p) p = round_to<Eigen::bfloat16>(p);
          sum += p;
          for (index e = 0; e < dv; ++e) acc[e] += p * at(v, l, b, j, hk, e);
        }
        for (index e = 0; e < dv; ++e) at(r.out, l, b, i, h, e) = acc[e] / sum;
        r.lse(b, h, i) = m + std::log(sum);
      }
    }
  }
  return r;
}

// ---------------------------------------------------------------------------------------------
// The rule

/// The eps of the rule: 1e-6 of the output's magnitude plus one float ulp of the largest score
/// (test_util.hpp's reasoning for logits near ±1e4).
inline double eps16(double magnitude, double max_abs_score) {
  return 1e-6 * std::max(1.0, magnitude) + std::numeric_limits<float>::epsilon() * max_abs_score;
}

template <class X>
double max_abs_finite(const X& t) {
  double m = 0;
  for (index i = 0; i < t.size(); ++i)
    if (std::isfinite(double(t.data()[i]))) m = std::max(m, std::abs(double(t.data()[i])));
  return m;
}

/// The rule on one output of element type O: |kernel − ref| <= 2·naive error + eps, plus half an
/// ulp of O at |ref| + that bound when O is 16-bit (the kernel rounds its float result once).
template <class KT, class N, class R>
::testing::AssertionResult within_rule16(const char* what, const KT& kernel, const N& naive, const R& ref,
                                         double eps) {
  using O = std::remove_const_t<typename KT::Scalar>;
  const diff_result n = max_abs_diff(naive, ref);
  const double bound = 2 * n.max + eps;
  for (index i = 0; i < ref.size(); ++i) {
    const double r = double(ref.data()[i]), kv = double(kernel.data()[i]);
    double allowed = bound;
    if constexpr (is_16bit<O>) allowed += half_ulp<O>(std::abs(r) + bound);
    const double e = abs_diff(kv, r);
    if (!(e <= allowed))
      return ::testing::AssertionFailure() << what << ": kernel error " << e << " at " << index_str(ref, i)
                                           << " (kernel " << kv << ", reference " << r << ") > allowed " << allowed
                                           << " (2 × naive error " << n.max << " + eps " << eps
                                           << (is_16bit<O> ? " + half an ulp of out" : "") << ")";
  }
  return ::testing::AssertionSuccess();
}

/// No NaN anywhere in t.
template <class X>
::testing::AssertionResult no_nan(const char* what, const X& t) {
  for (index i = 0; i < t.size(); ++i)
    if (std::isnan(double(t.data()[i]))) return ::testing::AssertionFailure() << what << ": NaN at " << index_str(t, i);
  return ::testing::AssertionSuccess();
}

}  // namespace xattn_test
