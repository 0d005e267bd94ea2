// xattn/reference/linear.hpp — the fp64 oracle of linear attention. Per (batch, head) it maps every
// row of q and k to its features in double, builds the full Nq×Nk matrix A[t][j] = scale·φ(q_t)·φ(k_j)
// (zero above the diagonal when causal), and computes out_t = Σ_j A[t][j]·v_j + scale·φ(q_t)·S0,
// divided by Σ_j A[t][j] + scale·φ(q_t)·z0 + eps with the normaliser. The final state is
// S0 + Σ_j φ(k_j)ᵀ v_j and z0 + Σ_j φ(k_j). Plain loops, no SIMD, no chunks, no threads; every sum
// runs in index order (the loops are ordered so that the compiler can vectorise across independent sums).
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../core/linear_args.hpp"

namespace xattn::reference {
namespace detail {

using xattn::detail::index;

/// φ(x) in double, written from the definitions in options.hpp.
inline std::vector<double> features(const xattn::feature_map& m, const std::vector<double>& x) {
  const std::size_t d = x.size();
  std::vector<double> y;
  switch (m.kind()) {
    case feature::identity:
      y = x;
      break;
    case feature::elu_plus_one:
      for (double v : x) y.push_back(v > 0 ? v + 1 : std::exp(v));
      break;
    case feature::relu:
      for (double v : x) y.push_back(std::max(v, 0.0));
      break;
    case feature::taylor:
      y.push_back(1.0);
      for (double v : x) y.push_back(v);
      for (double v : x) y.push_back(v * v / std::sqrt(2.0));
      for (std::size_t i = 0; i < d; ++i)
        for (std::size_t j = i + 1; j < d; ++j) y.push_back(x[i] * x[j]);
      break;
    case feature::softmax: {  // the query side; keys are normalised over the sequence by the caller
      const double mx = *std::max_element(x.begin(), x.end());
      double sum = 0;
      for (double v : x) sum += std::exp(v - mx);
      for (double v : x) y.push_back(std::exp(v - mx) / sum);
      break;
    }
    case feature::custom: {
      y.resize(static_cast<std::size_t>(m.dim(index(d))));
      const auto& f = m.callable<double>();
      if (f) {
        f(std::span<const double>(x), std::span<double>(y));
      } else {  // a map made for float only: evaluate it in float
        std::vector<float> xf(x.begin(), x.end()), yf(y.size());
        m.callable<float>()(std::span<const float>(xf), std::span<float>(yf));
        std::copy(yf.begin(), yf.end(), y.begin());
      }
      break;
    }
  }
  return y;
}

/// One head's final state [rows][cols] into `out`: λ^n·S0[c][x] + Σ_j λ^(n−1−j)·kt[c][j]·w_j[x],
/// with λ = e^−s (s = 0: no decay), kt [rows][n] the keys (or their features) transposed, and
/// w_j = v_j [e] for x < e, 1 past it (the normaliser's column). s0 may be null, or alias out:
/// out is written after every read of s0.
template <class T>
void final_state(T* out, const T* s0, double s, index n, index rows, index e, index cols, const std::vector<double>& kt,
                 const std::vector<double>& v) {
  const auto sz = [](index x) { return static_cast<std::size_t>(x); };
  std::vector<double> dec(sz(n + 1));  // dec[m] = λ^m
  for (index m = 0; m <= n; ++m) dec[sz(m)] = std::exp(-s * double(m));
  std::vector<double> fin(sz(rows * cols));
  for (index c = 0; c < rows; ++c)
    for (index x = 0; x < cols; ++x) {
      double acc = s0 ? dec[sz(n)] * double(s0[c * cols + x]) : 0.0;
      for (index j = 0; j < n; ++j) acc += dec[sz(n - 1 - j)] * kt[sz(c * n + j)] * (x < e ? v[sz(j * e + x)] : 1.0);
      fin[sz(c * cols + x)] = acc;
    }
  for (index i = 0; i < rows * cols; ++i) out[i] = T(fin[sz(i)]);
}

template <class T>
void linear_attention(const xattn::detail::chunk_problem<T>& p) {
  const index nq = p.nq, nk = p.nk, d = p.d, e = p.e, df = p.df, cols = p.cols();
  const auto sz = [](index x) { return static_cast<std::size_t>(x); };
  std::vector<double> a(sz(nq * nk));                         // the score matrix of one head
  std::vector<double> fq(sz(nq * df)), fkt(sz(df * nk)), v(sz(nk * e));  // φ(Q), φ(K) transposed, V
  for (index b = 0; b < p.batch; ++b)
    for (index h = 0; h < p.hq; ++h) {
      const index hk = h / p.group;
      auto row = [&](const auto& view, index i, index head) {
        return std::vector<double>(view.row(b, i, head), view.row(b, i, head) + d);
      };
      for (index t = 0; t < nq; ++t) {
        const std::vector<double> f = features(*p.map, row(p.q, t, h));
        std::copy(f.begin(), f.end(), fq.begin() + t * df);
      }
      for (index j = 0; j < nk; ++j) {
        for (index x = 0; x < e; ++x) v[sz(j * e + x)] = double(p.v.row(b, j, hk)[x]);
        if (p.map->kind() != feature::softmax) {
          const std::vector<double> f = features(*p.map, row(p.k, j, hk));
          for (index c = 0; c < df; ++c) fkt[sz(c * nk + j)] = f[sz(c)];
        }
      }
      if (p.map->kind() == feature::softmax)  // each feature of k: a softmax over the sequence
        for (index c = 0; c < d; ++c) {
          double mx = -std::numeric_limits<double>::infinity(), sum = 0;
          for (index j = 0; j < nk; ++j) mx = std::max(mx, double(p.k.row(b, j, hk)[c]));
          for (index j = 0; j < nk; ++j) sum += std::exp(double(p.k.row(b, j, hk)[c]) - mx);
          for (index j = 0; j < nk; ++j) fkt[sz(c * nk + j)] = std::exp(double(p.k.row(b, j, hk)[c]) - mx) / sum;
        }
      for (index t = 0; t < nq; ++t) {
        double* r = a.data() + t * nk;
        const index last = p.causal ? t : nk - 1;  // keys j <= last are visible
        for (index j = 0; j < nk; ++j) r[j] = 0;
        for (index c = 0; c < df; ++c) {  // r[j] = Σ_c φ(q_t)[c]·φ(k_j)[c]
          const double qc = fq[sz(t * df + c)];
          for (index j = 0; j <= last; ++j) r[j] += qc * fkt[sz(c * nk + j)];
        }
        for (index j = 0; j <= last; ++j) r[j] *= p.scale;
      }
      const T* s0 = p.state_in ? p.state_in + (b * p.hq + h) * df * cols : nullptr;
      std::vector<double> o(sz(e));
      for (index t = 0; t < nq; ++t) {
        double den = 0;
        for (index x = 0; x < e; ++x) o[sz(x)] = 0;
        for (index j = 0; j < nk; ++j) {  // o = Σ_j A[t][j]·v_j, den = Σ_j A[t][j]
          den += a[sz(t * nk + j)];
          for (index x = 0; x < e; ++x) o[sz(x)] += a[sz(t * nk + j)] * v[sz(j * e + x)];
        }
        if (s0)  // + scale·φ(q_t)·S0, + scale·φ(q_t)·z0
          for (index c = 0; c < df; ++c) {
            const double qc = p.scale * fq[sz(t * df + c)];
            for (index x = 0; x < e; ++x) o[sz(x)] += qc * double(s0[c * cols + x]);
            if (p.normalize) den += qc * double(s0[c * cols + e]);
          }
        for (index x = 0; x < e; ++x) p.o.row(b, t, h)[x] = T(p.normalize ? o[sz(x)] / (den + p.eps) : o[sz(x)]);
      }
      if (p.state_out) final_state(p.state_out + (b * p.hq + h) * df * cols, s0, 0.0, nk, df, e, cols, fkt, v);
    }
}

}  // namespace detail

/// Linear attention in double; same contract and errors as xattn::linear_attention (named
/// "xattn::reference::linear_attention" in messages).
template <row_major_tensor<4> Q, row_major_tensor<4> K, row_major_tensor<4> V, row_major_tensor<4> O>
void linear_attention(const Q& q, const K& k, const V& v, O&& out, const linear_options& opt = {}) {
  static_assert(xattn::detail::native_storage_v<Q, K, V, O>,
                "xattn::reference: the references read float or double tensors (cast 16-bit ones with .cast<double>())");
  detail::linear_attention(xattn::detail::make_linear_problem("xattn::reference::linear_attention", q, k, v, out, opt));
}

}  // namespace xattn::reference
