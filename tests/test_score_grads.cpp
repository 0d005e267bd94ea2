// tests/test_score_grads.cpp — the gradients of the additive bias and of the ALiBi slopes
// (softmax_grads::bias, softmax_grads::alibi_slopes): the reference's against central differences of
// the forward reference, the kernel's (float and double) against the reference on shapes of several
// tiles with every broadcast of the bias, through the sliding-window and block-sparse rules too;
// bitwise identical for any thread count in both schedules; exact zeros where no query sees a key;
// bad requests rejected before anything is written.

#include "backward_test_util.hpp"

#include <xattn/reference/sliding_window.hpp>
#include <xattn/reference/sparse.hpp>
#include <xattn/sliding_window.hpp>
#include <xattn/sparse.hpp>

namespace {

using namespace xattn_test;
using xattn_test::index;

/// A case: the shapes and options of BCase, and the broadcast of the bias ([1|B, 1|Hq, Nq, Nk]).
struct SCase {
  BCase c;
  bool bias_batch = true, bias_heads = true;  // false: the bias broadcasts over that dimension
  bool per_batch_slopes = false;              // ALiBi slopes [B·Hq] rather than [Hq]
  enum { softmax, window, sparse } form = softmax;
};

/// The case's options with its own bias and slopes, which the fixture's data owns.
struct case_options {
  std::unique_ptr<option_data> od;
  xattn::softmax_options opt;
  xattn::sliding_window_options wopt;
  std::optional<xattn::block_layout> layout;
};

case_options make_case_options(const SCase& s, std::mt19937_64& rng) {
  case_options co{make_options(s.c, rng), {}, {}, {}};
  const BCase& c = s.c;
  if (c.bias_) {
    co.od->bias = tensor<float>(s.bias_batch ? c.b_ : 1, s.bias_heads ? c.hq_ : 1, c.nq_, c.nk_);
    fill_random(co.od->bias, rng);
    co.od->opt.bias = co.od->bias;
  }
  if (c.alibi_ && s.per_batch_slopes) {
    co.od->alibi.clear();
    std::uniform_real_distribution<float> u(0.01f, 0.3f);
    for (index e = 0; e < c.b_ * c.hq_; ++e) co.od->alibi.push_back(u(rng));
    co.od->opt.alibi_slopes = co.od->alibi;
  }
  co.opt = co.od->opt;
  if (s.form == SCase::window) {
    co.wopt = {.window_left = 23, .causal = true, .sinks = 2, .softmax = co.opt};
    co.wopt.softmax.causal = false;
  }
  if (s.form == SCase::sparse) {  // blocks of 64: the diagonal, the first column, and a few others
    const index qb = (c.nq_ + 63) / 64, kb = (c.nk_ + 63) / 64;
    std::vector<char> keep(std::size_t(c.hq_ * qb * kb));
    for (index h = 0; h < c.hq_; ++h)
      for (index i = 0; i < qb; ++i)
        for (index j = 0; j < kb; ++j) keep[std::size_t((h * qb + i) * kb + j)] = j == 0 || j == i || (i + j + h) % 3 == 0;
    std::unique_ptr<bool[]> m(new bool[keep.size()]);
    for (std::size_t x = 0; x < keep.size(); ++x) m[x] = keep[x];
    co.layout = xattn::block_layout::from_mask(64, c.hq_, qb, kb, std::span<const bool>(m.get(), keep.size()));
  }
  return co;
}

/// The outputs of one backward call beyond dq, dk and dv.
struct score_grads {
  tensor<float> dbias;
  std::vector<float> dslopes;
};

score_grads nan_score_grads(const case_options& co) {
  score_grads g;
  if (co.opt.bias) {
    const auto& d = co.opt.bias.dims;
    g.dbias = tensor<float>(d[0], d[1], d[2], d[3]);
    g.dbias.setConstant(float(kNaN));
  }
  g.dslopes.assign(co.opt.alibi_slopes.size(), float(kNaN));
  return g;
}

xattn::softmax_grads request(score_grads& g) {
  xattn::softmax_grads r;
  if (g.dbias.size()) r.bias = g.dbias;
  r.alibi_slopes = g.dslopes;
  return r;
}

/// The forward of the case's form, fast (Ref = false) or reference.
template <bool Ref, class T>
void forward_of(const SCase& s, const case_options& co, const problem<T>& p, tensor<T>& out, tensor<T, 3>& lse) {
  if (s.form == SCase::window) {
    if constexpr (Ref) xattn::reference::sliding_window_attention(p.q, p.k, p.v, out, lse, co.wopt);
    else xattn::sliding_window_attention(p.q, p.k, p.v, out, lse, co.wopt);
  } else if (s.form == SCase::sparse) {
    if constexpr (Ref) xattn::reference::sparse_attention(p.q, p.k, p.v, out, lse, *co.layout, co.opt);
    else xattn::sparse_attention(p.q, p.k, p.v, out, lse, *co.layout, co.opt);
  } else {
    if constexpr (Ref) xattn::reference::softmax_attention(p.q, p.k, p.v, out, lse, co.opt);
    else xattn::softmax_attention(p.q, p.k, p.v, out, lse, co.opt);
  }
}

/// The backward of the case's form, fast or reference, on `dev...` (nothing: the calling thread).
template <bool Ref, class T, class... Dev>
void backward_of(const SCase& s, const case_options& co, const problem<T>& p, const tensor<T>& out,
                 const tensor<T, 3>& lse, grads<T>& g, score_grads& sg, Dev&... dev) {
  const xattn::softmax_grads r = request(sg);
  if (s.form == SCase::window) {
    if constexpr (Ref)
      xattn::reference::sliding_window_attention_backward(p.q, p.k, p.v, out, lse, p.dout, g.dq, g.dk, g.dv, co.wopt, r);
    else xattn::sliding_window_attention_backward(dev..., p.q, p.k, p.v, out, lse, p.dout, g.dq, g.dk, g.dv, co.wopt, r);
  } else if (s.form == SCase::sparse) {
    if constexpr (Ref)
      xattn::reference::sparse_attention_backward(p.q, p.k, p.v, out, lse, p.dout, g.dq, g.dk, g.dv, *co.layout, co.opt,
                                                  r);
    else
      xattn::sparse_attention_backward(dev..., p.q, p.k, p.v, out, lse, p.dout, g.dq, g.dk, g.dv, *co.layout, co.opt, r);
  } else {
    if constexpr (Ref) xattn::reference::softmax_attention_backward(p.q, p.k, p.v, out, lse, p.dout, g.dq, g.dk, g.dv, co.opt, r);
    else xattn::softmax_attention_backward(dev..., p.q, p.k, p.v, out, lse, p.dout, g.dq, g.dk, g.dv, co.opt, r);
  }
}

/// The score gradients of the case from its forward and backward, fast (Ref = false) or reference.
template <bool Ref, class T>
score_grads run_score_grads(const SCase& s, const case_options& co, const problem<T>& p) {
  tensor<T> out(make_tensor<T>(co.opt.layout, s.c.b_, s.c.nq_, s.c.hq_, s.c.dv()));
  tensor<T, 3> lse(s.c.b_, s.c.hq_, s.c.nq_);
  forward_of<Ref>(s, co, p, out, lse);
  grads<T> g = make_grads<T>(p);
  score_grads sg = nan_score_grads(co);
  backward_of<Ref>(s, co, p, out, lse, g, sg);
  return sg;
}

/// The reference's gradients of the case, in double.
score_grads reference_score_grads(const SCase& s, const case_options& co, const problem<double>& pd) {
  return run_score_grads<true>(s, co, pd);
}

std::string form_name(const SCase& s) {
  return s.form == SCase::window ? "window" : s.form == SCase::sparse ? "sparse" : "softmax";
}

// ---------------------------------------------------------------------------------------------
// The reference against central differences of L = Σ dout ∘ out in every bias element and slope.

const SCase kFdCases[] = {
    {BCase("fd_full").heads(2, 1).len(5, 7).dim(6).bias()},
    {BCase("fd_causal_softcap_alibi").heads(2, 1).len(6, 9).dim(5).causal().softcap(2).alibi().bias(), false, true},
    {BCase("fd_varlen_one_bias").heads(2, 2).len(6, 8).dim(4).seqlens({6, 3}, {8, 5}).bias().alibi(), false, false,
     true},
    {BCase("fd_window_mask").heads(2, 1).len(7).dim(4).window(2, 1).mask().bias().sinks(), true, false},
    {BCase("fd_sliding").heads(2, 1).len(9).dim(4).bias().alibi(), true, true, false, SCase::window},
};

class ScoreGradReference : public ::testing::TestWithParam<SCase> {};

TEST_P(ScoreGradReference, MatchesFiniteDifferences) {
  const SCase& s = GetParam();
  SCOPED_TRACE(seed_note(s.c.name));
  std::mt19937_64 rng(case_seed(s.c.name));
  const problem<double> pd = make_problem<double>(s.c, rng);
  case_options co = make_case_options(s, rng);
  const score_grads ref = reference_score_grads(s, co, pd);
  const auto loss = [&] {  // co's options point into co.od's bias and slopes, which check() perturbs
    tensor<double> out(make_tensor<double>(co.opt.layout, s.c.b_, s.c.nq_, s.c.hq_, s.c.dv()));
    tensor<double, 3> lse(s.c.b_, s.c.hq_, s.c.nq_);
    forward_of<true>(s, co, pd, out, lse);
    double sum = 0;
    for (index x = 0; x < out.size(); ++x) sum += out.data()[x] * pd.dout.data()[x];
    return sum;
  };
  // steps of 2^-10, exact in float at these magnitudes; truncation ~h²·L‴/6 ≈ 1e-7·|L‴|
  const float h = 1.f / 1024;
  const auto check = [&](float* x, float g, const std::string& what) {
    const float saved = *x;
    *x = saved + h;
    const double up = loss();
    *x = saved - h;
    const double down = loss();
    *x = saved;
    const double fd = (up - down) / (2.0 * h);
    EXPECT_NEAR(g, fd, 1e-5 * (1 + std::abs(fd))) << what;
  };
  double dmax = 0;
  for (index x = 0; x < co.od->bias.size(); ++x) {
    check(co.od->bias.data() + x, ref.dbias.data()[x], "bias at " + index_str(co.od->bias, x));
    dmax = std::max(dmax, double(std::abs(ref.dbias.data()[x])));
  }
  EXPECT_GT(dmax, 1e-3) << "the bias gradient is all but zero: the case tests nothing";
  for (std::size_t e = 0; e < co.od->alibi.size(); ++e)
    check(&co.od->alibi[e], ref.dslopes[e], "slope " + std::to_string(e));
}

INSTANTIATE_TEST_SUITE_P(Cases, ScoreGradReference, ::testing::ValuesIn(kFdCases),
                         [](const auto& info) { return info.param.c.name; });

// ---------------------------------------------------------------------------------------------
// The kernel against the reference, over several tiles of 64 and partial ones, and every broadcast.

const SCase kCases[] = {
    {BCase("full").heads(4, 2).len(70, 130).dim(24).bias().alibi()},
    {BCase("one_batch").heads(4, 2).len(70, 130).dim(24).causal().bias().alibi(), false, true},
    {BCase("one_head_gqa").heads(4, 1).len(65, 64).dim(16, 20).bias().softcap(3).alibi(), true, false, true},
    {BCase("one_of_both").heads(3, 3).len(100).dim(8).causal().bias().mask(true).seqlens({100, 41}, {100, 77}),
     false, false},
    {BCase("slopes_only").heads(4, 2).len(70, 130).dim(24).causal().alibi().sinks(), true, true, true},
    {BCase("fused_schedule").batch(4).heads(4, 2).len(67, 90).dim(16).window(30, 5).bias().alibi(), false, true},
    {BCase("bhsd").heads(2, 1).len(80, 70).dim(12).bhsd().bias().alibi(), true, false},
    {BCase("sliding").heads(4, 2).len(150).dim(16).bias().alibi(), false, true, false, SCase::window},
    {BCase("sparse").heads(2, 2).len(150, 200).dim(16).bias().alibi(), true, true, false, SCase::sparse},
};

/// Whether any (batch, head) that bias element x broadcasts over lets its query see its key: the
/// band (causal, window), the lengths and the mask of softmax attention.
bool seen_by_any(const SCase& s, const case_options& co, index x) {
  const xattn::softmax_options& o = co.opt;
  const auto& bd = o.bias.dims;
  const index nq_all = bd[2], nk_all = bd[3], j = x % nk_all, i = x / nk_all % nq_all, hb = x / (nk_all * nq_all) % bd[1];
  const index bb = x / (nk_all * nq_all * bd[1]);
  for (index b = 0; b < s.c.b_; ++b)
    for (index h = 0; h < s.c.hq_; ++h) {
      if ((bd[0] > 1 && b != bb) || (bd[1] > 1 && h != hb)) continue;
      const index nq = o.seqlens_q.empty() ? nq_all : o.seqlens_q[b], nk = o.seqlens_k.empty() ? nk_all : o.seqlens_k[b];
      if (i >= nq || j >= nk) continue;
      const index diag = i + nk - nq, wr = o.causal ? 0 : o.window_right, wl = o.window_left;
      if ((wr >= 0 && j > diag + wr) || (wl >= 0 && j < diag - wl)) continue;
      if (o.mask) {
        const auto& md = o.mask.dims;
        if (!o.mask.data[(((md[0] == 1 ? 0 : b) * md[1] + (md[1] == 1 ? 0 : h)) * nq_all + i) * nk_all + j]) continue;
      }
      return true;
    }
  return false;
}

class ScoreGradKernel : public ::testing::TestWithParam<SCase> {};

template <class T>
void check_against_reference(const SCase& s) {
  std::mt19937_64 rng(case_seed(s.c.name));
  const problem<double> pd = make_problem<double>(s.c, rng);
  const case_options co = make_case_options(s, rng);
  const score_grads ref = reference_score_grads(s, co, pd);
  const problem<T> p{cast_to<T>(pd.q), cast_to<T>(pd.k), cast_to<T>(pd.v), cast_to<T>(pd.dout)};
  const score_grads got = run_score_grads<false>(s, co, p);
  // Each dbias element is P·(dP − D) with dP and D sums of dv products of unit-sized values, each
  // rounded in T, and P within a few ulp(LSE) of exact: its error is ~dv·ε·|dO|·|v| ≲ 2e-5 in float;
  // a slope's gradient sums Nq·Nk such terms times distances. A wrong index, a missing or extra
  // term, or a stray scale gives errors of the order of the values themselves.
  const double eps = std::is_same_v<T, float> ? 1e-4 : 1e-10;
  double dmax = 0;
  for (index x = 0; x < got.dbias.size(); ++x) {
    const double r = ref.dbias.data()[x], v = got.dbias.data()[x];
    ASSERT_FALSE(std::isnan(v)) << "dbias at " << index_str(got.dbias, x) << " not written";
    if (s.form == SCase::softmax && !seen_by_any(s, co, x)) {
      ASSERT_EQ(v, 0) << "dbias at " << index_str(got.dbias, x) << ": no query sees this key";
    }
    EXPECT_NEAR(v, r, eps * (1 + std::abs(r))) << "dbias at " << index_str(got.dbias, x);
    dmax = std::max(dmax, std::abs(r));
  }
  if (got.dbias.size()) {
    EXPECT_GT(dmax, 1e-3) << "the bias gradient is all but zero: the case tests nothing";
  }
  double smax = 0;
  for (const float r : ref.dslopes) smax = std::max(smax, double(std::abs(r)));
  for (std::size_t e = 0; e < got.dslopes.size(); ++e)
    // float: a sum of ~Nq·Nk terms, each of relative error ~1e-5, in double partials
    EXPECT_NEAR(got.dslopes[e], ref.dslopes[e], (std::is_same_v<T, float> ? 1e-4 : 1e-6) * (1 + smax)) << "slope " << e;
}

TEST_P(ScoreGradKernel, FloatMatchesReference) {
  SCOPED_TRACE(seed_note(GetParam().c.name) + " " + form_name(GetParam()));
  check_against_reference<float>(GetParam());
}

TEST_P(ScoreGradKernel, DoubleMatchesReference) {
  SCOPED_TRACE(seed_note(GetParam().c.name) + " " + form_name(GetParam()));
  check_against_reference<double>(GetParam());
}

TEST_P(ScoreGradKernel, BitwiseIdenticalForAnyThreadCount) {
  const SCase& s = GetParam();
  SCOPED_TRACE(seed_note(s.c.name));
  std::mt19937_64 rng(case_seed(s.c.name));
  const problem<float> p = make_problem<float>(s.c, rng);
  const case_options co = make_case_options(s, rng);
  tensor<float> out(make_tensor<float>(co.opt.layout, s.c.b_, s.c.nq_, s.c.hq_, s.c.dv()));
  tensor<float, 3> lse(s.c.b_, s.c.hq_, s.c.nq_);
  forward_of<false>(s, co, p, out, lse);
  grads<float> g1 = make_grads<float>(p), g3 = make_grads<float>(p);
  score_grads one = nan_score_grads(co), three = nan_score_grads(co);
  backward_of<false>(s, co, p, out, lse, g1, one);
  backward_of<false>(s, co, p, out, lse, g3, three, device(3));
  const auto same_bits = [](const float* a, const float* b, std::size_t n) {
    return n == 0 || std::memcmp(a, b, sizeof(float) * n) == 0;
  };
  EXPECT_TRUE(same_bits(one.dbias.data(), three.dbias.data(), std::size_t(one.dbias.size())));
  EXPECT_TRUE(same_bits(one.dslopes.data(), three.dslopes.data(), one.dslopes.size()));
  // asking for them changes nothing else
  grads<float> plain = make_grads<float>(p);
  score_grads none;
  backward_of<false>(s, co, p, out, lse, plain, none);
  EXPECT_TRUE(same_bits(plain.dq.data(), g1.dq.data(), std::size_t(g1.dq.size())));
  EXPECT_TRUE(same_bits(plain.dk.data(), g1.dk.data(), std::size_t(g1.dk.size())));
}

INSTANTIATE_TEST_SUITE_P(Cases, ScoreGradKernel, ::testing::ValuesIn(kCases),
                         [](const auto& info) { return info.param.c.name; });

// ---------------------------------------------------------------------------------------------
// Bad requests: named, and thrown before anything is written.

TEST(ScoreGradErrors, BadRequestsThrowBeforeWriting) {
  const SCase s{BCase("score_grad_errors").len(9, 11).dim(16).bias().alibi()};
  std::mt19937_64 rng(case_seed(s.c.name));
  const problem<float> p = make_problem<float>(s.c, rng);
  const case_options co = make_case_options(s, rng);
  const saved<float> fwd = forward(p, co.opt);
  grads<float> g = make_grads<float>(p);
  tensor<float> db(2, 4, 9, 11), wrong(1, 4, 9, 11);
  db.setConstant(7.f);
  std::vector<float> dsl(4, 7.f), short_dsl(3, 7.f);
  const auto throws = [&](const xattn::softmax_options& opt, const xattn::softmax_grads& r, const std::string& needle) {
    try {
      xattn::softmax_attention_backward(p.q, p.k, p.v, fwd.out, fwd.lse, p.dout, g.dq, g.dk, g.dv, opt, r);
      ADD_FAILURE() << "no error; expected one mentioning '" << needle << "'";
    } catch (const xattn::error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  xattn::softmax_options no_bias = co.opt;
  no_bias.bias = {};
  xattn::softmax_options no_alibi = co.opt;
  no_alibi.alibi_slopes = {};
  throws(no_bias, {.bias = db}, "grads.bias");
  throws(co.opt, {.bias = wrong}, "grads.bias");
  throws(no_alibi, {.alibi_slopes = dsl}, "grads.alibi_slopes");
  throws(co.opt, {.alibi_slopes = short_dsl}, "grads.alibi_slopes");
  throws(co.opt, {.bias = co.od->bias}, "overlaps bias");
  throws(co.opt, {.alibi_slopes = co.od->alibi}, "overlaps alibi_slopes");
  xattn::softmax_grads both{.bias = db};
  both.alibi_slopes = std::span<float>(db.data() + 3, 4);
  throws(co.opt, both, "overlaps");
  for (index x = 0; x < db.size(); ++x) ASSERT_EQ(db.data()[x], 7.f) << "written before the error";
  for (index x = 0; x < g.dq.size(); ++x) ASSERT_TRUE(std::isnan(g.dq.data()[x])) << "dq written before the error";
}

}  // namespace
