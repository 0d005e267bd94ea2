// tests/chunk_test_util.hpp — what the tests of the chunk families (lightning, linear) share: one
// case description, a naive implementation in the element type itself (the full masked score matrix,
// sums in T) for flash-attention's accuracy rule, the fp64 oracle on double copies, and the rule's
// epsilon for sums of many terms.
#pragma once

#include <functional>
#include <optional>

#include <xattn/lightning.hpp>
#include <xattn/linear.hpp>

#include "test_util.hpp"

namespace xattn_test::chunk {

using xattn::layout;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

/// Decay rates of a lightning case.
enum class decay { none, zero, slopes, large, huge, mixed };

/// One case of either family: shapes and options, set by name,
/// `Case("gqa_d40_e24").heads(8, 2).dim(40, 24).decay(decay::slopes)`.
struct Case {
  std::string name;
  bool f64_ = false;
  bool linear_ = false;  // linear_attention instead of lightning_attention
  index b_ = 2, nq_ = 7, nk_ = 7, hq_ = 4, hkv_ = 2, d_ = 16, e_ = 0;  // e 0: = d
  layout lay_ = layout::bshd;
  chunk::decay decay_ = decay::slopes;
  bool causal_ = true;
  xattn::feature map_ = xattn::feature::identity;
  bool normalize_ = false;
  double scale_ = 1, eps_ = 1e-6;
  index block_ = 0;
  bool init_ = false;      // pass an initial state
  bool tmap_ = false;      // call through Eigen::TensorMap over std::vector
  bool big_ = false;       // under XATTN_TEST_QUICK, lengths shrink to kQuickLen
  double magnitude_ = 1;   // q and k scaled by it

  explicit Case(std::string n) : name(std::move(n)) {}
  Case& f64() { f64_ = true; return *this; }
  Case& linear(bool causal = true) { linear_ = true, causal_ = causal, decay_ = decay::none; return *this; }
  Case& batch(index b) { b_ = b; return *this; }
  Case& len(index n) { nq_ = nk_ = n; return *this; }
  Case& len(index nq, index nk) { nq_ = nq, nk_ = nk; return *this; }
  Case& heads(index hq, index hkv) { hq_ = hq, hkv_ = hkv; return *this; }
  Case& dim(index d, index e = 0) { d_ = d, e_ = e; return *this; }
  Case& bhsd() { lay_ = layout::bhsd; return *this; }
  Case& decays(chunk::decay d) { decay_ = d; return *this; }
  Case& map(xattn::feature m) { map_ = m; return *this; }
  Case& normalize(double eps = 1e-6) { normalize_ = true, eps_ = eps; return *this; }
  Case& scale(double s) { scale_ = s; return *this; }
  Case& block(index b) { block_ = b; return *this; }
  Case& init() { init_ = true; return *this; }
  Case& tmap() { tmap_ = true; return *this; }
  Case& big() { big_ = true; return *this; }
  Case& magnitude(double m) { magnitude_ = m; return *this; }
  index e() const { return e_ ? e_ : d_; }
  /// D', the feature dimension of the case's map.
  index df() const { return feature_map().dim(d_); }
  index cols() const { return e() + (normalize_ ? 1 : 0); }
  xattn::feature_map feature_map() const;
};

inline void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }
inline std::string case_name(const ::testing::TestParamInfo<Case>& info) { return info.param.name; }

/// Longest length of a `big` case under XATTN_TEST_QUICK.
constexpr index kQuickLen = 130;

inline Case for_this_run(Case c) {
  if (quick() && c.big_) c.nq_ = std::min(c.nq_, kQuickLen), c.nk_ = std::min(c.nk_, kQuickLen);
  return c;
}

/// The user map of the `custom` cases: Hedgehog-like [exp(x − max), exp(−x − max)] (positive,
/// 2d features), as a generic lambda so that it serves float and double.
inline xattn::feature_map hedgehog_like(index d) {
  return xattn::feature_map::custom(2 * d, [](auto x, auto y) {
    using T = std::remove_const_t<typename decltype(x)::element_type>;
    T mx = 0;
    for (T v : x) mx = std::max(mx, std::abs(v));
    for (std::size_t c = 0; c < x.size(); ++c) {
      y[c] = std::exp(x[c] - mx);
      y[c + x.size()] = std::exp(-x[c] - mx);
    }
  });
}

inline xattn::feature_map Case::feature_map() const {
  return map_ == xattn::feature::custom ? hedgehog_like(d_) : xattn::feature_map(map_);
}

/// The decay rates of a case: official slopes, rates large enough that λ^B underflows, mixtures.
inline std::vector<double> decays_of(const Case& c) {
  std::vector<double> s;
  switch (c.decay_) {
    case decay::none: break;
    case decay::zero: s.assign(std::size_t(c.hq_), 0.0); break;
    case decay::slopes: s = xattn::lightning_slopes(c.hq_); break;
    case decay::large:
      for (index h = 0; h < c.hq_; ++h) s.push_back(2.0 + 3.0 * double(h));  // λ = e^-2 .. : λ^64 underflows
      break;
    case decay::huge:
      for (index h = 0; h < c.hq_; ++h) s.push_back(h % 2 ? 1e3 : 80.0);  // every λ^m, m >= 2 underflows
      break;
    case decay::mixed:
      for (index h = 0; h < c.hq_; ++h) s.push_back(h % 3 == 0 ? 0.0 : h % 3 == 1 ? 0.01 : 4.0);
      break;
  }
  return s;
}

template <class T>
struct inputs {
  tensor<T> q, k, v;
  tensor<T> s0;  // initial state [b, hq, D', cols] (empty unless init)
};

template <class T>
struct outputs {
  tensor<T> out, state;  // state: [b, hq, D', cols]
};

template <class T>
outputs<T> make_outputs(const Case& c) {
  outputs<T> o{make_tensor<T>(c.lay_, c.b_, c.nq_, c.hq_, c.e()), tensor<T>(c.b_, c.hq_, c.df(), c.cols())};
  o.out.setConstant(static_cast<T>(kNaN));
  o.state.setConstant(static_cast<T>(kNaN));
  return o;
}

template <class T>
outputs<double> oracle(const Case& c, const inputs<T>& in);

/// Random q, k, v; with init, the initial state is the final state of a random 50-token prefix (so
/// that Σ φ(k)ᵀv and Σ φ(k) agree, as a real state's do).
template <class T>
inputs<T> make_inputs(const Case& c, std::mt19937_64& rng) {
  inputs<T> in{make_tensor<T>(c.lay_, c.b_, c.nq_, c.hq_, c.d_), make_tensor<T>(c.lay_, c.b_, c.nk_, c.hkv_, c.d_),
               make_tensor<T>(c.lay_, c.b_, c.nk_, c.hkv_, c.e()), tensor<T>()};
  fill_random(in.q, rng, dist::normal, c.magnitude_);
  fill_random(in.k, rng, dist::normal, c.magnitude_);
  fill_random(in.v, rng);
  if (c.init_) {
    Case cp = c;
    cp.init_ = false;
    cp.len(50);
    in.s0 = cast_to<T>(oracle(cp, make_inputs<T>(cp, rng)).state);
  }
  return in;
}

/// Per-call data the options point into (spans and maps: not movable).
struct option_data {
  std::vector<double> decay;
  xattn::feature_map map;
  option_data() = default;
  option_data(const option_data&) = delete;
};

inline xattn::lightning_options lightning_opts(const Case& c, const option_data& od) {
  return {.decay = od.decay, .scale = c.scale_, .block_size = c.block_, .layout = c.lay_};
}
inline xattn::linear_options linear_opts(const Case& c, const option_data& od) {
  return {.causal = c.causal_, .feature_map = od.map, .normalize = c.normalize_, .eps = c.eps_, .scale = c.scale_,
          .block_size = c.block_, .layout = c.lay_};
}

/// The kernel of the case's family on `in` (on `dev` when given), writing out and the final state.
template <class T>
void run_kernel(const Case& c, const inputs<T>& in, outputs<T>& o, int threads = 0, bool with_state = true) {
  option_data od;
  od.decay = decays_of(c);
  od.map = c.feature_map();
  auto call = [&](const auto& q, const auto& k, const auto& v, auto& out, auto& st) {
    if (c.linear_) {
      auto opt = linear_opts(c, od);
      if (c.init_) opt.initial_state = in.s0;
      if (with_state) opt.final_state = st;
      if (threads) xattn::linear_attention(device(threads), q, k, v, out, opt);
      else xattn::linear_attention(q, k, v, out, opt);
    } else {
      auto opt = lightning_opts(c, od);
      if (c.init_) opt.initial_state = in.s0;
      if (with_state) opt.final_state = st;
      if (threads) xattn::lightning_attention(device(threads), q, k, v, out, opt);
      else xattn::lightning_attention(q, k, v, out, opt);
    }
  };
  if (!c.tmap_) {
    call(in.q, in.k, in.v, o.out, o.state);
    return;
  }
  std::vector<T> qs(in.q.data(), in.q.data() + in.q.size()), ks(in.k.data(), in.k.data() + in.k.size()),
      vs(in.v.data(), in.v.data() + in.v.size()), os(o.out.data(), o.out.data() + o.out.size()),
      ss(o.state.data(), o.state.data() + o.state.size());
  Eigen::TensorMap<const tensor<T>> q(qs.data(), in.q.dimensions()), k(ks.data(), in.k.dimensions()),
      v(vs.data(), in.v.dimensions());
  Eigen::TensorMap<tensor<T>> out(os.data(), o.out.dimensions()), st(ss.data(), o.state.dimensions());
  call(q, k, v, out, st);
  std::copy(os.begin(), os.end(), o.out.data());
  std::copy(ss.begin(), ss.end(), o.state.data());
}

/// The fp64 oracle (xattn::reference) on double copies of the inputs.
template <class T>
outputs<double> oracle(const Case& c, const inputs<T>& in) {
  Case cd = c;
  cd.tmap_ = false;
  const tensor<double> q = cast_to<double>(in.q), k = cast_to<double>(in.k), v = cast_to<double>(in.v);
  const tensor<double> s0 = c.init_ ? cast_to<double>(in.s0) : tensor<double>();
  outputs<double> o = make_outputs<double>(c);
  option_data od;
  od.decay = decays_of(c);
  od.map = c.feature_map();
  if (c.linear_) {
    auto opt = linear_opts(c, od);
    if (c.init_) opt.initial_state = s0;
    opt.final_state = o.state;
    xattn::reference::linear_attention(q, k, v, o.out, opt);
  } else {
    auto opt = lightning_opts(c, od);
    if (c.init_) opt.initial_state = s0;
    opt.final_state = o.state;
    xattn::reference::lightning_attention(q, k, v, o.out, opt);
  }
  return o;
}

// ---------------------------------------------------------------------------------------------
// The naive implementation in T, written from the definitions in options.hpp

/// φ(x) computed in T (the key side of the softmax is done by the caller).
template <class T>
std::vector<T> features_in(const Case& c, const T* x) {
  const index d = c.d_;
  std::vector<T> y;
  switch (c.map_) {
    case xattn::feature::identity: y.assign(x, x + d); break;
    case xattn::feature::elu_plus_one:
      for (index i = 0; i < d; ++i) y.push_back(x[i] > 0 ? x[i] + 1 : std::exp(x[i]));
      break;
    case xattn::feature::relu:
      for (index i = 0; i < d; ++i) y.push_back(std::max(x[i], T(0)));
      break;
    case xattn::feature::taylor:
      y.push_back(1);
      y.insert(y.end(), x, x + d);
      for (index i = 0; i < d; ++i) y.push_back(x[i] * x[i] / std::sqrt(T(2)));
      for (index i = 0; i < d; ++i)
        for (index j = i + 1; j < d; ++j) y.push_back(x[i] * x[j]);
      break;
    case xattn::feature::softmax: {
      T mx = *std::max_element(x, x + d), sum = 0;
      for (index i = 0; i < d; ++i) sum += std::exp(x[i] - mx);
      for (index i = 0; i < d; ++i) y.push_back(std::exp(x[i] - mx) / sum);
      break;
    }
    case xattn::feature::custom: {
      y.resize(std::size_t(2 * d));
      c.feature_map().callable<T>()(std::span<const T>(x, std::size_t(d)), std::span<T>(y));
      break;
    }
  }
  return y;
}

/// The scales of the accuracy rule's eps: per output, the sum of |terms| the kernel adds — down to
/// the products of features inside φ(q)·φ(k), and divided by the normaliser for normalised rows
/// ((Σ|terms of o| + |o/den|·Σ|terms of den|)/|den|) — maximised over out and over the state.
struct magnitudes {
  double out = 0, state = 0;
};

template <class T>
struct naive_result {
  outputs<T> o;
  magnitudes m;
};

/// The attention of the case computed straightforwardly in T: the masked score matrix of each
/// head in T, its product with V in T, the normaliser and the initial state's terms in T. Also
/// returns the magnitudes of the terms, in double.
template <class T>
naive_result<T> naive_with_magnitudes(const Case& c, const inputs<T>& in) {
  naive_result<T> res{make_outputs<T>(c), {}};
  outputs<T>& r = res.o;
  const layout l = c.lay_;
  const index nq = c.nq_, nk = c.nk_, e = c.e(), df = c.df(), cols = c.cols(), g = c.hq_ / c.hkv_;
  const std::vector<double> s = decays_of(c);
  for (index b = 0; b < c.b_; ++b)
    for (index h = 0; h < c.hq_; ++h) {
      const index hk = h / g;
      const T lam = s.empty() ? T(1) : std::exp(-T(s[std::size_t(h)]));
      std::vector<std::vector<T>> fq(static_cast<std::size_t>(nq)), fk(static_cast<std::size_t>(nk));
      for (index t = 0; t < nq; ++t) fq[std::size_t(t)] = features_in<T>(c, &at(in.q, l, b, t, h, 0));
      for (index j = 0; j < nk; ++j) fk[std::size_t(j)] = features_in<T>(c, &at(in.k, l, b, j, hk, 0));
      if (c.map_ == xattn::feature::softmax)  // keys: each feature's softmax over the sequence
        for (index i = 0; i < c.d_; ++i) {
          T mx = -std::numeric_limits<T>::infinity(), sum = 0;
          for (index j = 0; j < nk; ++j) mx = std::max(mx, at(in.k, l, b, j, hk, i));
          for (index j = 0; j < nk; ++j) sum += std::exp(at(in.k, l, b, j, hk, i) - mx);
          for (index j = 0; j < nk; ++j) fk[std::size_t(j)][std::size_t(i)] = std::exp(at(in.k, l, b, j, hk, i) - mx) / sum;
        }
      const T* s0 = c.init_ ? &in.s0(b, h, 0, 0) : nullptr;
      for (index t = 0; t < nq; ++t) {
        std::vector<T> o(std::size_t(e), T(0));
        std::vector<double> mag(std::size_t(e), 0.0);
        T den = 0;
        double mag_den = 0;
        for (index j = 0; j < nk && (!c.causal_ || j <= t); ++j) {
          T a = 0;
          double a_abs = 0;
          for (index i = 0; i < df; ++i) {
            a += fq[std::size_t(t)][std::size_t(i)] * fk[std::size_t(j)][std::size_t(i)];
            a_abs += std::abs(double(fq[std::size_t(t)][std::size_t(i)]) * double(fk[std::size_t(j)][std::size_t(i)]));
          }
          const T f = T(c.scale_) * (c.causal_ ? std::pow(lam, T(t - j)) : T(1));
          a *= f;
          a_abs *= double(f);
          den += a;
          mag_den += a_abs;
          for (index x = 0; x < e; ++x) {
            o[std::size_t(x)] += a * at(in.v, l, b, j, hk, x);
            mag[std::size_t(x)] += a_abs * std::abs(double(at(in.v, l, b, j, hk, x)));
          }
        }
        if (s0) {
          const T f = T(c.scale_) * (c.causal_ ? std::pow(lam, T(t + 1)) : T(1));
          for (index i = 0; i < df; ++i) {
            const T qi = f * fq[std::size_t(t)][std::size_t(i)];
            for (index x = 0; x < e; ++x) {
              o[std::size_t(x)] += qi * s0[i * cols + x];
              mag[std::size_t(x)] += std::abs(double(qi) * double(s0[i * cols + x]));
            }
            if (c.normalize_) {
              den += qi * s0[i * cols + e];
              mag_den += std::abs(double(qi) * double(s0[i * cols + e]));
            }
          }
        }
        for (index x = 0; x < e; ++x) {
          const T out = c.normalize_ ? o[std::size_t(x)] / (den + T(c.eps_)) : o[std::size_t(x)];
          at(r.out, l, b, t, h, x) = out;
          const double scale = c.normalize_ ? (mag[std::size_t(x)] + std::abs(double(out)) * mag_den) /
                                                  std::max(std::abs(double(den) + c.eps_), 1e-300)
                                            : mag[std::size_t(x)];
          res.m.out = std::max(res.m.out, scale);
        }
      }
      for (index i = 0; i < df; ++i)
        for (index x = 0; x < cols; ++x) {
          const index n = nk;
          T acc = s0 ? std::pow(lam, T(c.causal_ ? n : 0)) * s0[i * cols + x] : T(0);
          double mag = std::abs(double(acc));
          for (index j = 0; j < n; ++j) {
            const T term = (c.causal_ ? std::pow(lam, T(n - 1 - j)) : T(1)) * fk[std::size_t(j)][std::size_t(i)] *
                           (x < e ? at(in.v, l, b, j, hk, x) : T(1));
            acc += term;
            mag += std::abs(double(term));
          }
          r.state(b, h, i, x) = acc;
          res.m.state = std::max(res.m.state, mag);
        }
    }
  return res;
}

template <class T>
outputs<T> naive(const Case& c, const inputs<T>& in) {
  return naive_with_magnitudes(c, in).o;
}

/// eps of the accuracy rule for outputs that are sums of many terms: an ulp or two of the largest
/// sum of |terms| (`scale_of`, see magnitudes) — the rounding any order of summation may leave — plus
/// a floor. Double: 16 ulps, as the double naive is the reference up to summation order, so 2 × its
/// error is about 0 and eps holds the kernel's whole error (as in test_util.hpp's rule_eps).
template <class T>
double sum_eps(double scale_of) {
  const double floor = std::is_same_v<T, float> ? 1e-7 : 1e-14;
  const double ulps = std::is_same_v<T, float> ? 2 : 16;
  return floor + ulps * std::numeric_limits<T>::epsilon() * scale_of;
}

/// The naive result and its magnitudes (the scales of the rule's eps).
template <class T>
magnitudes magnitudes_of(const Case& c, const inputs<T>& in) {
  return naive_with_magnitudes(c, in).m;
}

// ---------------------------------------------------------------------------------------------
// The checks every case table runs

/// The kernel against the oracle with the accuracy rule (out and final state), and the other ways of
/// calling it: on two threads and without a final state, bit for bit.
template <class T>
void check_accuracy(const Case& c) {
  SCOPED_TRACE(seed_note(c.name));
  std::mt19937_64 rng(case_seed(c.name));
  const inputs<T> in = make_inputs<T>(c, rng);
  const outputs<double> ref = oracle(c, in);
  const naive_result<T> nr = naive_with_magnitudes(c, in);
  const outputs<T>& nv = nr.o;
  const magnitudes& m = nr.m;
  const double eps_out = sum_eps<T>(m.out), eps_state = sum_eps<T>(m.state);
  // The naive implementation must itself be close, or the rule proves nothing.
  EXPECT_LE(max_abs_diff(nv.out, ref.out).max, 1e3 * eps_out) << "naive out disagrees with the reference";
  EXPECT_LE(max_abs_diff(nv.state, ref.state).max, 1e3 * eps_state) << "naive state disagrees with the reference";

  outputs<T> o = make_outputs<T>(c);
  run_kernel(c, in, o);
  EXPECT_TRUE(within_rule("out", o.out, nv.out, ref.out, eps_out));
  EXPECT_TRUE(within_rule("final_state", o.state, nv.state, ref.state, eps_state));

  outputs<T> threaded = make_outputs<T>(c), stateless = make_outputs<T>(c);
  run_kernel(c, in, threaded, 2);
  EXPECT_TRUE(bitwise_equal("out on 2 threads", o.out, threaded.out));
  EXPECT_TRUE(bitwise_equal("final_state on 2 threads", o.state, threaded.state));
  run_kernel(c, in, stateless, 0, false);
  EXPECT_TRUE(bitwise_equal("out without final_state", o.out, stateless.out));
  EXPECT_TRUE(std::all_of(stateless.state.data(), stateless.state.data() + stateless.state.size(),
                          [](T x) { return std::isnan(x); }))
      << "a state tensor was written though no final_state was asked for";
}

/// Serial, 1, 2 and 3 threads give the same bits.
template <class T>
void check_threads(const Case& c) {
  SCOPED_TRACE(seed_note(c.name));
  std::mt19937_64 rng(case_seed(c.name));
  const inputs<T> in = make_inputs<T>(c, rng);
  outputs<T> serial = make_outputs<T>(c);
  run_kernel(c, in, serial);
  for (int threads : {1, 2, 3}) {
    SCOPED_TRACE("threads " + std::to_string(threads));
    outputs<T> par = make_outputs<T>(c);
    run_kernel(c, in, par, threads);
    EXPECT_TRUE(bitwise_equal("out", serial.out, par.out));
    EXPECT_TRUE(bitwise_equal("final_state", serial.state, par.state));
  }
}

/// Token t of a [b, n, h, d] tensor, as a tensor of seq 1.
template <class T>
tensor<T> token(const tensor<T>& x, index t) {
  const Eigen::array<index, 4> off{0, t, 0, 0}, ext{x.dimension(0), 1, x.dimension(2), x.dimension(3)};
  return x.slice(off, ext);
}

/// The scalar path (what a machine without SIMD runs) against the oracle with the accuracy rule:
/// the forward call, then in causal cases the step call token by token from the same initial
/// state. The case must be bshd (the steps take token slices).
template <class T>
void check_scalar_path(const Case& c) {
  SCOPED_TRACE(seed_note(c.name));
  ASSERT_EQ(c.lay_, layout::bshd) << "the steps take token slices of bshd tensors";
  std::mt19937_64 rng(case_seed(c.name));
  const inputs<T> in = make_inputs<T>(c, rng);
  const outputs<double> ref = oracle(c, in);
  const naive_result<T> nr = naive_with_magnitudes(c, in);
  const double eps_out = sum_eps<T>(nr.m.out), eps_state = sum_eps<T>(nr.m.state);
  option_data od;
  od.decay = decays_of(c);
  od.map = c.feature_map();

  outputs<T> fwd = make_outputs<T>(c);
  if (c.linear_) {
    auto opt = linear_opts(c, od);
    if (c.init_) opt.initial_state = in.s0;
    opt.final_state = fwd.state;
    xattn::linear_attention<xattn::simd::scalar>(in.q, in.k, in.v, fwd.out, opt);
  } else {
    auto opt = lightning_opts(c, od);
    if (c.init_) opt.initial_state = in.s0;
    opt.final_state = fwd.state;
    xattn::lightning_attention<xattn::simd::scalar>(in.q, in.k, in.v, fwd.out, opt);
  }
  EXPECT_TRUE(within_rule("out (scalar path)", fwd.out, nr.o.out, ref.out, eps_out));
  EXPECT_TRUE(within_rule("final_state (scalar path)", fwd.state, nr.o.state, ref.state, eps_state));

  if (!c.causal_) return;  // a step is causal linear attention
  outputs<T> steps = make_outputs<T>(c);
  if (c.init_) steps.state = in.s0;
  else steps.state.setZero();
  for (index t = 0; t < c.nq_; ++t) {
    const tensor<T> q = token(in.q, t), k = token(in.k, t), v = token(in.v, t);
    tensor<T> o(c.b_, 1, c.hq_, c.e());
    if (c.linear_) xattn::linear_step<xattn::simd::scalar>(q, k, v, o, steps.state, linear_opts(c, od));
    else xattn::lightning_step<xattn::simd::scalar>(q, k, v, o, steps.state, lightning_opts(c, od));
    steps.out.slice(Eigen::array<index, 4>{0, t, 0, 0}, o.dimensions()) = o;
  }
  EXPECT_TRUE(within_rule("stepped out (scalar path)", steps.out, nr.o.out, ref.out, eps_out));
  EXPECT_TRUE(within_rule("stepped state (scalar path)", steps.state, nr.o.state, ref.state, eps_state));
}

// ---------------------------------------------------------------------------------------------
// Bad input: xattn::error naming the function and the argument, nothing written

/// Runs `call` and expects an xattn::error whose message names "<fn>:" and " <arg>:".
inline ::testing::AssertionResult throws_naming(const std::function<void()>& call, const std::string& fn,
                                                const std::string& arg) {
  try {
    call();
  } catch (const xattn::error& e) {
    const std::string msg = e.what();
    if (msg.find(fn + ":") == std::string::npos || msg.find(" " + arg + ":") == std::string::npos)
      return ::testing::AssertionFailure() << "message does not name " << fn << " and " << arg << ": \"" << msg << "\"";
    return ::testing::AssertionSuccess();
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << "threw something other than xattn::error: " << e.what();
  }
  return ::testing::AssertionFailure() << "no xattn::error thrown";
}

/// The case's family (linear or lightning) on q, k, v of any storage (states float) from s0 (when
/// the case has an initial state), the final state into `state`; on `threads` threads of a pool
/// (0: the calling thread), with `compute` in the options.
template <class Q, class K, class V, class O>
void run_forward(const Case& c, const Q& q, const K& k, const V& v, const tensor<float>& s0, O& out,
                 tensor<float>& state, int threads, xattn::compute compute = xattn::compute::exact) {
  option_data od;
  od.decay = decays_of(c);
  od.map = c.feature_map();
  auto go = [&](auto opt, auto&& serial, auto&& on) {
    opt.compute = compute;
    if (c.init_) opt.initial_state = s0;
    opt.final_state = state;
    if (threads) on(device(threads), opt);
    else serial(opt);
  };
  if (c.linear_)
    go(linear_opts(c, od), [&](const auto& o) { xattn::linear_attention(q, k, v, out, o); },
       [&](const auto& d, const auto& o) { xattn::linear_attention(d, q, k, v, out, o); });
  else
    go(lightning_opts(c, od), [&](const auto& o) { xattn::lightning_attention(q, k, v, out, o); },
       [&](const auto& d, const auto& o) { xattn::lightning_attention(d, q, k, v, out, o); });
}

}  // namespace xattn_test::chunk
