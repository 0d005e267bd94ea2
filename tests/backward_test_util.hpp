// tests/backward_test_util.hpp — what the backward tests (test_backward.cpp for softmax attention,
// test_backward_rules.cpp for its restricted forms) share: a case of shapes and options set by name,
// its random problem and gradients, the exact gradients of the softmax reference, a naive backward
// in the element type (the accuracy rule's), and the check that masked rows and unseen keys get
// exact zeros.
#pragma once

#include "test_util.hpp"

#include <optional>
#include <xattn/reference/softmax_backward.hpp>
#include <xattn/softmax_backward.hpp>

namespace xattn_test {

using xattn::layout;
inline constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// ---------------------------------------------------------------------------------------------
// One backward case, set by name: `BCase("causal_gqa").len(17, 9).causal()`.

struct BCase {
  std::string name;
  bool f64_ = false;
  index b_ = 2, nq_ = 5, nk_ = 7, hq_ = 4, hkv_ = 2, d_ = 8, dv_ = 0;  // dv 0: = d
  layout lay_ = layout::bshd;
  bool causal_ = false;
  index wl_ = -1, wr_ = -1;
  std::optional<double> scale_;
  double softcap_ = 0;
  bool alibi_ = false, sinks_ = false;
  std::vector<int> sq_, sk_;
  bool bias_ = false, bias_one_head_ = false, bias_neg_inf_ = false;
  bool mask_ = false, mask_dead_rows_ = false;
  double logits_ = 1;

  explicit BCase(std::string n) : name(std::move(n)) {}
  BCase& f64() { f64_ = true; return *this; }
  BCase& batch(index b) { b_ = b; return *this; }
  BCase& len(index nq, index nk) { nq_ = nq, nk_ = nk; return *this; }
  BCase& len(index n) { return len(n, n); }
  BCase& heads(index hq, index hkv) { hq_ = hq, hkv_ = hkv; return *this; }
  BCase& dim(index d, index dv = 0) { d_ = d, dv_ = dv; return *this; }
  BCase& bhsd() { lay_ = layout::bhsd; return *this; }
  BCase& causal() { causal_ = true; return *this; }
  BCase& window(index l, index r) { wl_ = l, wr_ = r; return *this; }
  BCase& scale(double s) { scale_ = s; return *this; }
  BCase& softcap(double c) { softcap_ = c; return *this; }
  BCase& alibi() { alibi_ = true; return *this; }
  BCase& sinks() { sinks_ = true; return *this; }
  BCase& seqlens(std::vector<int> q, std::vector<int> k) { sq_ = std::move(q), sk_ = std::move(k); return *this; }
  BCase& bias(bool one_head = false, bool neg_inf = false) { bias_ = true, bias_one_head_ = one_head, bias_neg_inf_ = neg_inf; return *this; }
  BCase& mask(bool dead_rows = false) { mask_ = true, mask_dead_rows_ = dead_rows; return *this; }
  BCase& logits(double l) { logits_ = l; return *this; }
  index dv() const { return dv_ ? dv_ : d_; }
};

inline void PrintTo(const BCase& c, std::ostream* os) { *os << c.name; }
inline std::string bcase_name(const ::testing::TestParamInfo<BCase>& info) { return info.param.name; }

/// The options of a case and the data they point into (not movable: spans point into it).
struct option_data {
  std::vector<float> alibi, sinks;
  std::vector<int> sq, sk;
  tensor<float> bias;
  tensor<bool> mask;
  xattn::softmax_options opt;
  option_data() = default;
  option_data(const option_data&) = delete;
  option_data& operator=(const option_data&) = delete;
};

inline std::unique_ptr<option_data> make_options(const BCase& c, std::mt19937_64& rng) {
  auto od = std::make_unique<option_data>();
  auto& o = od->opt;
  o.scale = c.scale_;
  o.causal = c.causal_;
  o.window_left = c.wl_, o.window_right = c.wr_;
  o.softcap = c.softcap_;
  o.layout = c.lay_;
  if (c.alibi_) {
    for (index h = 0; h < c.hq_; ++h) od->alibi.push_back(std::exp2(-8.0f * float(h + 1) / float(c.hq_)));
    o.alibi_slopes = od->alibi;
  }
  if (c.sinks_) {
    std::uniform_real_distribution<float> u(-1.f, 3.f);
    for (index h = 0; h < c.hq_; ++h) od->sinks.push_back(u(rng));
    o.sink_logits = od->sinks;
  }
  od->sq = c.sq_, od->sk = c.sk_;
  o.seqlens_q = od->sq, o.seqlens_k = od->sk;
  if (c.bias_) {
    od->bias = c.bias_one_head_ ? tensor<float>(1, c.hq_, c.nq_, c.nk_) : tensor<float>(c.b_, c.hq_, c.nq_, c.nk_);
    fill_random(od->bias, rng);
    if (c.bias_neg_inf_) {
      std::bernoulli_distribution hole(0.3);
      for (index x = 0; x < od->bias.size(); ++x)
        if ((x / c.nk_) % 4 == 1 || hole(rng)) od->bias.data()[x] = -std::numeric_limits<float>::infinity();
    }
    o.bias = od->bias;
  }
  if (c.mask_) {
    od->mask = tensor<bool>(c.b_, 1, c.nq_, c.nk_);
    std::bernoulli_distribution keep(0.7);
    for (index x = 0; x < od->mask.size(); ++x)
      od->mask.data()[x] = keep(rng) && !(c.mask_dead_rows_ && (x / c.nk_) % 5 == 2);
    o.mask = od->mask;
  }
  return od;
}

template <class T>
struct problem {
  tensor<T> q, k, v, dout;
};

template <class T>
problem<T> make_problem(const BCase& c, std::mt19937_64& rng) {
  problem<T> p{make_tensor<T>(c.lay_, c.b_, c.nq_, c.hq_, c.d_), make_tensor<T>(c.lay_, c.b_, c.nk_, c.hkv_, c.d_),
               make_tensor<T>(c.lay_, c.b_, c.nk_, c.hkv_, c.dv()), make_tensor<T>(c.lay_, c.b_, c.nq_, c.hq_, c.dv())};
  const double qk = std::sqrt(c.logits_);
  fill_random(p.q, rng, dist::normal, qk);
  fill_random(p.k, rng, dist::normal, qk);
  fill_random(p.v, rng);
  fill_random(p.dout, rng);
  return p;
}

template <class T>
struct grads {
  tensor<T> dq, dk, dv;
};

/// Gradient tensors shaped as q, k, v, filled with NaN so that anything left unwritten fails.
template <class T, class P>
grads<T> make_grads(const P& p) {
  grads<T> g{tensor<T>(p.q.dimensions()), tensor<T>(p.k.dimensions()), tensor<T>(p.v.dimensions())};
  g.dq.setConstant(T(kNaN)), g.dk.setConstant(T(kNaN)), g.dv.setConstant(T(kNaN));
  return g;
}

/// The exact gradients: the reference backward on double copies.
template <class T>
grads<double> reference_grads(const problem<T>& p, const xattn::softmax_options& opt) {
  const problem<double> d{cast_to<double>(p.q), cast_to<double>(p.k), cast_to<double>(p.v), cast_to<double>(p.dout)};
  const attention_result<double> fwd = oracle(d.q, d.k, d.v, opt);
  grads<double> g = make_grads<double>(d);
  xattn::reference::softmax_attention_backward(d.q, d.k, d.v, fwd.out, fwd.lse, d.dout, g.dq, g.dk, g.dv, opt);
  return g;
}

/// The largest |∂L/∂x (central difference, step h) − g| over the elements x of t, for
/// L = Σ dout ∘ out and out computed by run(q, k, v, out) (a family's fp64 forward reference).
template <class Run>
double fd_error(problem<double>& p, tensor<double>& t, const tensor<double>& g, layout l, double& gmax, const Run& run) {
  const auto loss = [&] {
    tensor<double> out(make_tensor<double>(l, p.q.dimension(0), seq_of(p.q, l), heads_of(p.q, l), p.v.dimension(3)));
    run(p.q, p.k, p.v, out);
    double sum = 0;
    for (index x = 0; x < out.size(); ++x) sum += out.data()[x] * p.dout.data()[x];
    return sum;
  };
  // h = 1e-6: truncation ~h²·L‴ ≈ 1e-12, cancellation ~1e-16·|L|/h ≈ 1e-9 for |L| ~ 10
  constexpr double h = 1e-6;
  double worst = 0;
  for (index x = 0; x < t.size(); ++x) {
    const double saved = t.data()[x];
    t.data()[x] = saved + h;
    const double up = loss();
    t.data()[x] = saved - h;
    const double down = loss();
    t.data()[x] = saved;
    worst = std::max(worst, abs_diff((up - down) / (2 * h), g.data()[x]));
    gmax = std::max(gmax, std::abs(g.data()[x]));
  }
  return worst;
}

// ---------------------------------------------------------------------------------------------
// The naive backward in the element type, for the accuracy rule: written from the options header,
// as test_util's naive_softmax is, one query row at a time, every sum in T.

/// Every pair visible (softmax attention: the options' band and mask only).
struct all_pairs {
  bool operator()(index, index, index, index) const { return true; }
};

/// rule(b, h, i, j): the restricted forms' visibility on top of the options (window, layout, image).
template <class T, class Rule = all_pairs>
grads<T> naive_backward(const problem<T>& p, const xattn::softmax_options& opt, const Rule& rule = {}) {
  const layout l = opt.layout;
  const index batch = p.q.dimension(0), nq_all = seq_of(p.q, l), nk_all = seq_of(p.k, l);
  const index hq = heads_of(p.q, l), hkv = heads_of(p.k, l), d = p.q.dimension(3), dv = p.v.dimension(3);
  const index group = hq / hkv;
  const T scale = T(opt.scale ? *opt.scale : 1.0 / std::sqrt(double(d)));
  const T cap = T(opt.softcap), ninf = -std::numeric_limits<T>::infinity();
  const index wl = opt.window_left, wr = opt.causal ? 0 : opt.window_right;
  grads<T> g{tensor<T>(p.q.dimensions()), tensor<T>(p.k.dimensions()), tensor<T>(p.v.dimensions())};
  g.dq.setZero(), g.dk.setZero(), g.dv.setZero();
  std::vector<T> s(static_cast<std::size_t>(nk_all)), dcap(s.size()), o(static_cast<std::size_t>(dv));
  const auto opt_at = [&](const auto& t, index b, index h, index i, index j) {
    const auto& td = t.dims;
    return t.data[(((td[0] == 1 ? 0 : b) * td[1] + (td[1] == 1 ? 0 : h)) * nq_all + i) * nk_all + j];
  };
  for (index b = 0; b < batch; ++b) {
    const index nq = opt.seqlens_q.empty() ? nq_all : opt.seqlens_q[b];
    const index nk = opt.seqlens_k.empty() ? nk_all : opt.seqlens_k[b];
    for (index h = 0; h < hq; ++h) {
      const index hk = h / group;
      for (index i = 0; i < nq; ++i) {
        const index diag = i + nk - nq;
        T m = opt.sink_logits.empty() ? ninf : T(opt.sink_logits[h]);
        for (index j = 0; j < nk; ++j) {
          T x = 0;
          for (index c = 0; c < d; ++c) x += at(p.q, l, b, i, h, c) * at(p.k, l, b, j, hk, c);
          x *= scale;
          dcap[j] = 1;
          if (cap > 0) {
            const T t = std::tanh(x / cap);
            x = cap * t, dcap[j] = 1 - t * t;
          }
          if (!opt.alibi_slopes.empty()) x -= T(opt.alibi_slopes[h]) * T(std::abs(diag - j));
          if (opt.bias) x += T(opt_at(opt.bias, b, h, i, j));
          bool visible = (wr < 0 || j <= diag + wr) && (wl < 0 || j >= diag - wl);
          if (opt.mask) visible = visible && opt_at(opt.mask, b, h, i, j);
          visible = visible && rule(b, h, i, j);
          s[j] = visible ? x : ninf;
          m = std::max(m, s[j]);
        }
        if (m == ninf) continue;
        T sum = opt.sink_logits.empty() ? T(0) : std::exp(T(opt.sink_logits[h]) - m);
        for (index j = 0; j < nk; ++j) sum += s[j] = std::exp(s[j] - m);
        std::fill(o.begin(), o.end(), T(0));
        for (index j = 0; j < nk; ++j) {
          s[j] /= sum;
          for (index e = 0; e < dv; ++e) o[e] += s[j] * at(p.v, l, b, j, hk, e);
        }
        T dsum = 0;
        for (index e = 0; e < dv; ++e) dsum += at(p.dout, l, b, i, h, e) * o[e];
        for (index j = 0; j < nk; ++j) {
          T dp = 0;
          for (index e = 0; e < dv; ++e) dp += at(p.dout, l, b, i, h, e) * at(p.v, l, b, j, hk, e);
          const T ds = s[j] * (dp - dsum) * dcap[j] * scale;
          for (index c = 0; c < d; ++c) {
            at(g.dq, l, b, i, h, c) += ds * at(p.k, l, b, j, hk, c);
            at(g.dk, l, b, j, hk, c) += ds * at(p.q, l, b, i, h, c);
          }
          for (index e = 0; e < dv; ++e) at(g.dv, l, b, j, hk, e) += s[j] * at(p.dout, l, b, i, h, e);
        }
      }
    }
  }
  return g;
}

// ---------------------------------------------------------------------------------------------
// The fast kernel against the reference by the accuracy rule

/// The forward's out and lse in T, as a training step would have saved them.
template <class T>
struct saved {
  tensor<T> out;
  tensor<T, 3> lse;
};
template <class T>
saved<T> forward(const problem<T>& p, const xattn::softmax_options& opt) {
  const layout l = opt.layout;
  saved<T> s{make_tensor<T>(l, p.q.dimension(0), seq_of(p.q, l), heads_of(p.q, l), p.v.dimension(3)),
             tensor<T, 3>(p.q.dimension(0), heads_of(p.q, l), seq_of(p.q, l))};
  xattn::softmax_attention(p.q, p.k, p.v, s.out, s.lse, opt);
  return s;
}

/// The largest |score| of the case (for rule_eps), as naive_softmax measures it.
template <class T>
double max_abs_score(const problem<T>& p, const xattn::softmax_options& opt) {
  return naive_softmax<T>(p.q, p.k, p.v, opt).max_abs_score;
}

/// No NaN anywhere; exact zeros in the dq rows that see no key (reference LSE −inf) and in the
/// dk, dv rows of keys that no query sees (reference dv row all zero).
template <class T>
::testing::AssertionResult masked_grads_are_zero(const grads<T>& g, const grads<double>& ref,
                                                 const tensor<double, 3>& ref_lse, layout l) {
  for (const tensor<T>* t : {&g.dq, &g.dk, &g.dv})
    for (index x = 0; x < t->size(); ++x)
      if (std::isnan(t->data()[x])) return ::testing::AssertionFailure() << "NaN at " << index_str(*t, x);
  const index batch = g.dq.dimension(0), hq = heads_of(g.dq, l), nq = seq_of(g.dq, l);
  for (index b = 0; b < batch; ++b)
    for (index h = 0; h < hq; ++h)
      for (index i = 0; i < nq; ++i) {
        if (ref_lse(b, h, i) != -std::numeric_limits<double>::infinity()) continue;
        for (index c = 0; c < g.dq.dimension(3); ++c)
          if (at(g.dq, l, b, i, h, c) != 0)
            return ::testing::AssertionFailure() << "dq (b " << b << ", row " << i << ", head " << h
                                                 << ") = " << at(g.dq, l, b, i, h, c) << " in a fully masked row";
      }
  const index hkv = heads_of(g.dk, l), nk = seq_of(g.dk, l);
  for (index b = 0; b < batch; ++b)
    for (index h = 0; h < hkv; ++h)
      for (index j = 0; j < nk; ++j) {
        bool seen = false;
        for (index e = 0; e < g.dv.dimension(3); ++e) seen = seen || at(ref.dv, l, b, j, h, e) != 0;
        if (seen) continue;
        for (index e = 0; e < g.dv.dimension(3); ++e)
          if (at(g.dv, l, b, j, h, e) != 0)
            return ::testing::AssertionFailure() << "dv (b " << b << ", key " << j << ", head " << h << ") = "
                                                 << at(g.dv, l, b, j, h, e) << " for a key no query sees";
        for (index c = 0; c < g.dk.dimension(3); ++c)
          if (at(g.dk, l, b, j, h, c) != 0)
            return ::testing::AssertionFailure() << "dk (b " << b << ", key " << j << ", head " << h << ") = "
                                                 << at(g.dk, l, b, j, h, c) << " for a key no query sees";
      }
  return ::testing::AssertionSuccess();
}

}  // namespace xattn_test
