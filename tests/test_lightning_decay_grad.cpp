// tests/test_lightning_decay_grad.cpp — the gradient of lightning attention's decays
// (lightning_backward_options::ddecay): the fp64 reference against differences of the fp64 forward
// reference in s, the fast kernel (float and double) against the reference by flash-attention's
// accuracy rule on its SIMD and scalar paths, the same bits on any thread count, dq, dk, dv and
// dinitial_state unchanged by asking for it, 16-bit tensors, empty sequences, and bad input.
#include <xattn/lightning_backward.hpp>
#include <xattn/reference/lightning.hpp>
#include <xattn/reference/lightning_backward.hpp>

#include "chunk_backward_test_util.hpp"

namespace xattn_test {
namespace {

using namespace chunk;
using D = chunk::decay;

/// The case with ddecay asked for.
BwCase dd(BwCase c) {
  c.ddecay = true;
  return c;
}

/// The largest |element| of a tensor of any rank.
template <class X>
double largest(const X& t) {
  double m = 0;
  for (index i = 0; i < t.size(); ++i) m = std::max(m, std::abs(double(t.data()[i])));
  return m;
}

/// The reference's loops with every sum in T: the naive implementation of the accuracy rule.
template <class T>
bw_grads<T> naive_grads(const BwCase& c, const bw_inputs<T>& x) {
  bw_grads<T> g = make_grads<T>(c);
  option_data od;
  od.decay = decays_of(c.fwd);
  call_backward(c, x, g, xattn::lightning_backward_options{.forward = lightning_opts(c.fwd, od)},
                [](const auto& opt, auto&&... a) {
                  xattn::reference::detail::chunk_attention_backward<T>(
                      xattn::detail::make_lightning_backward_problem("naive", a..., opt));
                });
  return g;
}

/// The scale of ddecay's rounding per head: the sum of |terms|, which is the reference on the
/// absolute values of every input (every coefficient, σ·m·λ^m, is >= 0, so all its terms share
/// one sign).
template <class T>
bw_grads<double> magnitudes_of(const BwCase& c, const bw_inputs<T>& x) {
  bw_inputs<double> a = to_double(x);
  for (tensor<double>* t : {&a.in.q, &a.in.k, &a.in.v, &a.in.s0, &a.dout, &a.dsf}) *t = t->abs();
  return reference_grads(c, a);
}

// ---------------------------------------------------------------------------------------------
// The reference against differences of the forward reference in s

/// L = Σ dout ∘ out + Σ dfinal_state ∘ final_state of the fp64 forward reference at decays s.
double loss_at(const BwCase& c, const bw_inputs<double>& x, const std::vector<double>& s) {
  const Case& f = c.fwd;
  tensor<double> out = make_tensor<double>(f.lay_, f.b_, f.nq_, f.hq_, f.e()), st(f.b_, f.hq_, f.d_, f.e());
  option_data od;
  od.decay = s;
  auto opt = lightning_opts(f, od);
  if (f.init_) opt.initial_state = x.in.s0;
  opt.final_state = st;
  xattn::reference::lightning_attention(x.in.q, x.in.k, x.in.v, out, opt);
  double l = 0;
  for (index i = 0; i < out.size(); ++i) l += x.dout.data()[i] * out.data()[i];
  for (index i = 0; i < x.dsf.size(); ++i) l += x.dsf.data()[i] * st.data()[i];
  return l;
}

/// The step in s. L is not linear in s: the central difference's truncation error is
/// h²·L'''/6, whose terms carry m³·λ^m against the gradient's m·λ^m, a relative (h·N)²/6 ≈ 1e-9
/// at N = 70; the rounding error is about ε·|L|/h (≈ 2e-10·|L|, allowed separately below: with a
/// large decay |L| is mostly the terms m = 0, which do not depend on s, and dwarfs the gradient).
constexpr double kStep = 1e-6;
/// Allowed |difference − gradient| beyond the rounding, relative to 1 + the gradient's sum of
/// |terms|: 100 × the truncation error above.
constexpr double kFdTolerance = 1e-7;
/// The rounding error of one difference allowed, in units of ε·|L|/h.
constexpr double kFdRoundingUlps = 64;

class DecayGradReference : public ::testing::TestWithParam<BwCase> {};

TEST_P(DecayGradReference, MatchesDifferencesOfTheForward) {
  const BwCase& c = GetParam();
  SCOPED_TRACE(seed_note(c.fwd.name));
  std::mt19937_64 rng(case_seed(c.fwd.name));
  const bw_inputs<double> x = make_bw_inputs<double>(c, rng);
  const tensor<double, 1> ref = reference_grads(c, x).dd, mag = magnitudes_of(c, x).dd;
  std::vector<double> s = decays_of(c.fwd);
  s.resize(std::size_t(c.fwd.hq_), 0.0);  // no decays: s = 0 for every head
  for (index h = 0; h < c.fwd.hq_; ++h) {
    const auto at = [&](double ds) {
      std::vector<double> sp = s;
      sp[std::size_t(h)] += ds;
      return loss_at(c, x, sp);
    };
    const double s0 = s[std::size_t(h)];
    // central where s − h >= 0; at s = 0 (s >= 0 is required) the one-sided rule of the same order,
    // (−3·L(s) + 4·L(s + h) − L(s + 2h)) / 2h
    const double fd = s0 >= kStep ? (at(kStep) - at(-kStep)) / (2 * kStep)
                                  : (-3 * at(0) + 4 * at(kStep) - at(2 * kStep)) / (2 * kStep);
    const double rounding = kFdRoundingUlps * std::numeric_limits<double>::epsilon() * std::abs(at(0)) / kStep;
    EXPECT_LE(abs_diff(fd, ref(h)), kFdTolerance * (1 + std::abs(mag(h))) + rounding)
        << "head " << h << " (s = " << s0 << "): reference " << ref(h) << ", differences " << fd;
  }
}

// Awkward dims (d 5, e 3), GQA 4 over 2, chunks of 16 so that several chunks and a partial one occur
// (the reference has no chunks; the forward it is checked against neither).
Case small(const char* name, index n) { return Case(name).len(n).heads(4, 2).dim(5, 3).block(16); }

const std::vector<BwCase> kReferenceCases = {
    dd({small("fd_len1", 1), false}),
    dd({small("fd_len1_init_dfinal", 1).init(), true}),
    dd({small("fd_len7_init_dfinal", 7).init(), true}),
    dd({small("fd_len7_zero", 7).decays(D::zero), true}),
    dd({small("fd_len70", 70), false}),
    dd({small("fd_len70_init_dfinal", 70).init(), true}),
    dd({small("fd_len70_no_decay_init_dfinal", 70).decays(D::none).init(), true}),
    dd({small("fd_len70_large_dfinal", 70).decays(D::large), true}),
    dd({small("fd_len70_mixed_init", 70).decays(D::mixed).init(), false}),
    dd({small("fd_len33_bhsd_scale", 33).bhsd().scale(0.7).init(), true}),
};

INSTANTIATE_TEST_SUITE_P(Cases, DecayGradReference, ::testing::ValuesIn(kReferenceCases), bw_name);

// ---------------------------------------------------------------------------------------------
// The kernel against the reference, by the accuracy rule

/// The rule's eps for ddecay is a relative tolerance: sum_eps<T> of the sum of |terms| (2 ulps of
/// it in float, 16 in double, plus a floor), on top of twice the error of the naive implementation
/// (the reference's loops with every sum in T). The kernel sums each chunk's terms in T (vector
/// tiles, dot products of length d or e) and the chunks in double, where the naive sums all N²
/// terms in T one after the other: its error bounds the kernel's unless the kernel's own roundings
/// (R's recurrence over the chunks, the products of one chunk) add up, which the eps covers.
template <class T>
void check_ddecay(const BwCase& c) {
  SCOPED_TRACE(seed_note(c.fwd.name));
  std::mt19937_64 rng(case_seed(c.fwd.name));
  const bw_inputs<T> x = make_bw_inputs<T>(c, rng);
  const tensor<double, 1> ref = reference_grads(c, x).dd;
  const tensor<double, 1> naive = naive_grads(c, x).dd;
  const double eps = sum_eps<T>(largest(magnitudes_of(c, x).dd));
  // the naive implementation must itself be close, or the rule proves nothing
  EXPECT_LE(max_abs_diff(naive, ref).max, 1e3 * eps) << "naive ddecay disagrees with the reference";
  const bw_grads<T> g = kernel_grads(c, x);
  EXPECT_TRUE(within_rule("ddecay", g.dd, naive, ref, eps));
  EXPECT_TRUE(within_rule("ddecay (scalar path)", kernel_grads<xattn::simd::scalar>(c, x).dd, naive, ref, eps));
  // asking for ddecay leaves the other gradients as they were
  BwCase without = c;
  without.ddecay = false;
  expect_bitwise_equal(c, g, kernel_grads(without, x), " with ddecay asked for");
}

class DecayGradAccuracy : public ::testing::TestWithParam<BwCase> {};

TEST_P(DecayGradAccuracy, MatchesReference) {
  const BwCase& c = GetParam();
  if (c.fwd.f64_) check_ddecay<double>(c);
  else check_ddecay<float>(c);
}

const std::vector<BwCase> kAccuracyCases = {
    dd({small("len1", 1), false}),
    dd({small("len7_init_dfinal", 7).init(), true}),
    dd({small("len70", 70), false}),
    dd({small("len70_init_dfinal", 70).init(), true}),
    dd({small("len70_no_decay_init_dfinal", 70).decays(D::none).init(), true}),
    dd({small("len70_zero_dfinal", 70).decays(D::zero), true}),
    dd({small("len70_large_init_dfinal", 70).decays(D::large).init(), true}),
    dd({small("len70_mixed_init", 70).decays(D::mixed).init(), false}),
    dd({small("len70_huge_init_dfinal", 70).decays(D::huge).init(), true}),
    dd({small("len40_block1_init_dfinal", 40).block(1).init(), true}),
    dd({small("len70_bhsd_scale", 70).bhsd().scale(0.125).init(), true}),
    dd({Case("len150_d40_e24_block64_init_dfinal").len(150).heads(4, 2).dim(40, 24).init(), true}),
    dd({Case("len130_d1_e7_mqa").len(130).heads(4, 1).dim(1, 7).block(32), true}),
    dd({Case("len130_heads9_kv3_groups").batch(1).len(130).heads(9, 3).dim(24, 16).decays(D::mixed).init(), true}),
    dd({small("f64_len70_init_dfinal", 70).f64().init(), true}),
    dd({small("f64_len70_no_decay_dfinal", 70).f64().decays(D::none), true}),
    dd({Case("f64_len150_d40_e24_mixed").f64().len(150).heads(4, 2).dim(40, 24).decays(D::mixed).init(), true}),
};

INSTANTIATE_TEST_SUITE_P(Cases, DecayGradAccuracy, ::testing::ValuesIn(kAccuracyCases), bw_name);

// ---------------------------------------------------------------------------------------------
// Thread invariance: serial, 1 and 3 threads give the same bits

TEST(DecayGradThreads, BitwiseIdenticalForAnyThreadCount) {
  const BwCase cases[] = {
      dd({Case("threads_gqa_init").batch(3).len(150).heads(4, 2).dim(24, 40).block(32).init(), true}),
      dd({Case("threads_one_head").batch(2).len(100).heads(1, 1).dim(16).block(16), false})};
  for (const BwCase& c : cases) {
    SCOPED_TRACE(seed_note(c.fwd.name));
    std::mt19937_64 rng(case_seed(c.fwd.name));
    const bw_inputs<float> x = make_bw_inputs<float>(c, rng);
    const bw_grads<float> serial = kernel_grads(c, x);
    for (int threads : {1, 3}) {
      SCOPED_TRACE("threads " + std::to_string(threads));
      EXPECT_TRUE(bitwise_equal("ddecay", serial.dd, kernel_grads(c, x, threads).dd));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Empty sequences and batches: ddecay is an empty sum, 0

TEST(DecayGradEmpty, ZeroLengthAndZeroBatchGiveZeros) {
  const BwCase c = dd({small("empty", 0).init(), true});
  std::mt19937_64 rng(case_seed(c.fwd.name));
  const bw_inputs<float> x = make_bw_inputs<float>(c, rng);
  const bw_grads<float> g = kernel_grads(c, x, 2);
  for (index h = 0; h < g.dd.size(); ++h) EXPECT_EQ(g.dd(h), 0.0) << "head " << h;
  tensor<float> none(0, 3, 2, 8), none_grad(0, 3, 2, 8);
  std::vector<double> ddecay(2, kNaN);
  xattn::lightning_attention_backward(none, none, none, none, none_grad, none_grad, none_grad,
                                      {.ddecay = ddecay});  // batch 0
  EXPECT_EQ(ddecay, std::vector<double>(2, 0.0));
}

// ---------------------------------------------------------------------------------------------
// 16-bit tensors: the float call on the rounded values; ddecay stays double

TEST(DecayGrad16, EqualsFloatCallOnRoundedValues) {
  std::mt19937_64 rng(case_seed("ddecay16"));
  const index b = 2, n = 45, hq = 4, hkv = 2, d = 24, e = 8;
  tensor<float> q(b, n, hq, d), k(b, n, hkv, d), v(b, n, hkv, e), dout(b, n, hq, e);
  for (tensor<float>* t : {&q, &k, &v, &dout}) {
    fill_random(*t, rng);
    *t = t->cast<Eigen::bfloat16>().cast<float>();  // the values 16-bit storage holds
  }
  const std::vector<double> decay = xattn::lightning_slopes(hq);
  std::vector<double> want(hq), got(hq);
  tensor<float> dq(q.dimensions()), dk(k.dimensions()), dv(v.dimensions());
  xattn::lightning_attention_backward(device(2), q, k, v, dout, dq, dk, dv,
                                      {.forward = {.decay = decay, .block_size = 16}, .ddecay = want});
  const tensor<Eigen::bfloat16> q16 = q.cast<Eigen::bfloat16>(), k16 = k.cast<Eigen::bfloat16>(),
                                v16 = v.cast<Eigen::bfloat16>(), dout16 = dout.cast<Eigen::bfloat16>();
  tensor<Eigen::bfloat16> dq16(q.dimensions()), dk16(k.dimensions()), dv16(v.dimensions());
  xattn::lightning_attention_backward(device(2), q16, k16, v16, dout16, dq16, dk16, dv16,
                                      {.forward = {.decay = decay, .block_size = 16}, .ddecay = got});
  EXPECT_EQ(std::memcmp(want.data(), got.data(), sizeof(double) * want.size()), 0);
}

// ---------------------------------------------------------------------------------------------
// Bad input: an xattn::error naming ddecay, nothing written

TEST(DecayGradErrors, BadInputThrowsNamingDdecay) {
  const BwCase c{Case("errors").len(9).heads(4, 2).dim(16, 8).init(), true};
  std::mt19937_64 rng(case_seed(c.fwd.name));
  const bw_inputs<float> x = make_bw_inputs<float>(c, rng);
  bw_grads<float> g = make_grads<float>(c);
  option_data od;
  od.decay = decays_of(c.fwd);
  std::vector<double> ddecay(4), short_dd(3), long_dd(5);
  const auto& [q, k, v, s0] = x.in;
  xattn::lightning_backward_options good{.forward = lightning_opts(c.fwd, od), .dinitial_state = g.ds0,
                                         .dfinal_state = x.dsf, .ddecay = ddecay};
  good.forward.initial_state = s0;
  const std::string fn = "xattn::lightning_attention_backward";
  const auto expect_error = [&](const char* what, const xattn::lightning_backward_options& opt, const auto& qq,
                                const auto& dout, auto& dq) {
    SCOPED_TRACE(what);
    for (tensor<float>* t : {&g.dq, &g.dk, &g.dv, &g.ds0}) t->setConstant(7.f);
    for (std::vector<double>* w : {&ddecay, &short_dd, &long_dd}) std::fill(w->begin(), w->end(), 7.0);
    EXPECT_TRUE(throws_naming([&] { xattn::lightning_attention_backward(qq, k, v, dout, dq, g.dk, g.dv, opt); }, fn,
                              "ddecay"));
    for (const tensor<float>* t : {&g.dq, &g.dk, &g.dv, &g.ds0})
      EXPECT_TRUE(std::all_of(t->data(), t->data() + t->size(), [](float u) { return u == 7.f; }))
          << "written before the error";
    for (const std::vector<double>* w : {&ddecay, &short_dd, &long_dd})
      EXPECT_TRUE(std::all_of(w->begin(), w->end(), [](double u) { return u == 7.0; })) << "ddecay written";
  };
  auto opt = good;
  opt.ddecay = short_dd;
  expect_error("too short", opt, q, x.dout, g.dq);
  opt.ddecay = long_dd;
  expect_error("too long", opt, q, x.dout, g.dq);
  // over an input: the decays themselves, q, the initial state; over an output: dq, dinitial_state
  opt.ddecay = od.decay;
  expect_error("over decay", opt, q, x.dout, g.dq);
  tensor<float> q2 = q;
  opt.ddecay = std::span<double>(reinterpret_cast<double*>(q2.data()), 4);
  expect_error("over q", opt, q2, x.dout, g.dq);
  opt.ddecay = std::span<double>(reinterpret_cast<double*>(const_cast<float*>(s0.data())) + 1, 4);
  expect_error("over initial_state", opt, q, x.dout, g.dq);
  opt.ddecay = std::span<double>(reinterpret_cast<double*>(g.dq.data()) + 3, 4);
  expect_error("over dq", opt, q, x.dout, g.dq);
  opt.ddecay = std::span<double>(reinterpret_cast<double*>(g.ds0.data()), 4);
  expect_error("over dinitial_state", opt, q, x.dout, g.dq);
  // with 16-bit tensors (computed on float copies), over the caller's 16-bit dout
  tensor<Eigen::bfloat16> dout16 = x.dout.cast<Eigen::bfloat16>();
  opt.ddecay = std::span<double>(reinterpret_cast<double*>(dout16.data()), 4);
  expect_error("over 16-bit dout", opt, q, dout16, g.dq);
  // and the good call passes, writing every head
  std::fill(ddecay.begin(), ddecay.end(), kNaN);
  xattn::lightning_attention_backward(q, k, v, x.dout, g.dq, g.dk, g.dv, good);
  EXPECT_TRUE(std::none_of(ddecay.begin(), ddecay.end(), [](double u) { return std::isnan(u); }));
  // the reference validates the same way, under its own name
  const tensor<double> qd = cast_to<double>(q), kd = cast_to<double>(k), vd = cast_to<double>(v),
                       doutd = cast_to<double>(x.dout);
  tensor<double> dqd(q.dimensions()), dkd(k.dimensions()), dvd(v.dimensions());
  EXPECT_TRUE(throws_naming(
      [&] { xattn::reference::lightning_attention_backward(qd, kd, vd, doutd, dqd, dkd, dvd, {.ddecay = short_dd}); },
      "xattn::reference::lightning_attention_backward", "ddecay"));
}

}  // namespace
}  // namespace xattn_test
