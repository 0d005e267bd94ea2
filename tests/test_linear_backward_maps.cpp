// tests/test_linear_backward_maps.cpp — the backward pass of linear attention with every built-in
// feature map (identity, elu + 1, relu, Taylor, per-side softmax) and the normaliser: the fp64
// reference against central differences of the fp64 forward reference, the fast kernel against the
// reference by flash-attention's accuracy rule (test_util.hpp) on its SIMD and scalar paths, bit for
// bit across thread counts, and bad input. The identity map without normaliser is
// test_chunk_backward.cpp's.
#include <xattn/linear_backward.hpp>
#include <xattn/reference/lightning_backward.hpp>

#include "chunk_backward_test_util.hpp"

namespace xattn_test {
namespace {

/// A double that carries the scale of its rounding error, m (in units of the working precision's
/// epsilon, to first order, as in Wilkinson's running error analysis): sums add their operands'
/// scales, so that a sum's is its sum of |terms| and cancellations are seen; products and quotients
/// weight each operand's scale by the other's value. The reference's loops run on it
/// (xattn::reference::detail::linear_attention_backward<magnitude>) and so write out, for every
/// gradient, the scale of the rounding any order of evaluation may leave in it: the accuracy rule's
/// eps is a few ulps of that (chunk_test_util's sum_eps).
struct magnitude {
  double v = 0;  // the value
  double m = 0;  // the scale of its rounding error; >= |v|
  magnitude() = default;
  magnitude(double x) : v(x), m(std::abs(x)) {}  // NOLINT: an input or a constant: one rounding of its own
  magnitude(double value, double scale) : v(value), m(scale) {}
  explicit operator double() const { return m; }  // what the reference writes out
  friend magnitude operator+(magnitude a, magnitude b) { return {a.v + b.v, a.m + b.m}; }
  friend magnitude operator-(magnitude a, magnitude b) { return {a.v - b.v, a.m + b.m}; }
  friend magnitude operator-(magnitude a) { return {-a.v, a.m}; }
  // δ(ab) = |b|·δa + |a|·δb: a product of inputs is its own single term, |ab|
  friend magnitude operator*(magnitude a, magnitude b) {
    const double p = a.v * b.v;
    return {p, std::abs(b.v) * a.m + std::abs(a.v) * b.m - std::abs(p)};
  }
  // δ(a/b) = (δa + |a/b|·δb) / |b|
  friend magnitude operator/(magnitude a, magnitude b) {
    const double q = a.v / b.v;
    return {q, (a.m + std::abs(q) * b.m) / std::abs(b.v) - std::abs(q)};
  }
  magnitude& operator+=(magnitude b) { return *this = *this + b; }
  magnitude& operator-=(magnitude b) { return *this = *this - b; }
  magnitude& operator*=(magnitude b) { return *this = *this * b; }
  magnitude& operator/=(magnitude b) { return *this = *this / b; }
  friend bool operator<(magnitude a, magnitude b) { return a.v < b.v; }
  friend bool operator>(magnitude a, magnitude b) { return a.v > b.v; }
  friend magnitude exp(magnitude a) {  // e^(x + δ) = e^x·(1 + δ): the argument's error becomes relative
    const double y = std::exp(a.v);
    return {y, y * (1 + a.m)};
  }
  friend magnitude sqrt(magnitude a) { return magnitude(std::sqrt(a.v)); }  // of constants only
};

}  // namespace
}  // namespace xattn_test

template <>
struct std::numeric_limits<xattn_test::magnitude> : std::numeric_limits<double> {
  static xattn_test::magnitude infinity() { return {std::numeric_limits<double>::infinity(), 0.0}; }
};

namespace xattn_test {
namespace {

using namespace chunk;
using F = xattn::feature;

/// q and k of a case moved off the maps' kinks: |x| >= 0.1 everywhere (relu's derivative jumps at 0,
/// elu + 1's second derivative does, and central differences across either mean nothing). With the
/// normaliser, identity and relu keep the denominators away from 0: identity takes |x| (then
/// φ(q)·z > 0), relu x + 0.5 (a row of negative q has φ(q) = 0 and gradients 0, harmless). The
/// other maps are positive: elu + 1 and softmax elementwise, Taylor as φ(q)·φ(k) = 1 + s + s²/2.
template <class T>
void move_off_kinks(const Case& c, tensor<T>& x) {
  for (index i = 0; i < x.size(); ++i) {
    T& v = x.data()[i];
    if (c.normalize_ && c.map_ == F::identity) v = std::abs(v);
    if (c.normalize_ && c.map_ == F::relu) v += T(0.5);
    if (std::abs(v) < T(0.1)) v = std::copysign(T(0.1), v) + v;
  }
}

/// Random inputs (chunk::make_inputs) off the kinks; with init, the initial state is the final state
/// of a random 50-token prefix drawn the same way (so that its z column is Σ φ(k) of real keys).
template <class T>
inputs<T> make_map_inputs(const Case& c, std::mt19937_64& rng) {
  Case plain = c;
  plain.init_ = false;
  inputs<T> in = make_inputs<T>(plain, rng);
  move_off_kinks(c, in.q), move_off_kinks(c, in.k);
  if (c.init_) {
    Case prefix = plain;
    prefix.len(50);
    inputs<T> p = make_inputs<T>(prefix, rng);
    move_off_kinks(c, p.q), move_off_kinks(c, p.k);
    in.s0 = cast_to<T>(oracle(prefix, p).state);
  }
  return in;
}

/// The reference's loops with every sum in T: the naive implementation of the accuracy rule.
template <class T>
bw_grads<T> naive_grads(const BwCase& c, const bw_inputs<T>& x) {
  bw_grads<T> g = make_grads<T>(c);
  run_linear_backward(c, x, g, [](const auto& opt, auto&&... a) {
    xattn::reference::detail::linear_attention_backward<T>(
        xattn::detail::make_linear_backward_problem("naive", a..., opt));
  });
  return g;
}

// ---------------------------------------------------------------------------------------------
// The reference against central differences of the forward reference

/// The step of the differences: L is smooth (inputs are kept 0.1 off the kinks, far beyond the
/// step), so the truncation error is h²/6·L‴ ≈ 1e-10 and the rounding error ε·|L|/h ≈ 1e-10.
constexpr double kStep = 1e-5;
/// Allowed |difference − gradient|, relative to 1 + the gradient's largest element.
constexpr double kFdTolerance = 1e-7;

class LinearMapsReferenceGradients : public ::testing::TestWithParam<BwCase> {};

TEST_P(LinearMapsReferenceGradients, MatchCentralDifferences) {
  const BwCase& c = GetParam();
  SCOPED_TRACE(seed_note(c.fwd.name));
  std::mt19937_64 rng(case_seed(c.fwd.name));
  const bw_inputs<double> x = make_bw_inputs<double>(c, rng, make_map_inputs<double>);
  const bw_grads<double> g = reference_grads(c, x);
  expect_central_differences(c, x, g, g, kStep, kFdTolerance);
}

// Every map × normaliser × causal (softmax: non-causal only), with an initial state, a final state in
// the loss and GQA; small shapes, so that each input's differences take two forward calls of
// microseconds. Taylor at d = 3 has D' = 10.
const std::vector<BwCase> kReferenceCases = {
    {Case("fd_identity_causal").linear().len(7).heads(2, 1).dim(4, 3).init()},
    {Case("fd_identity_noncausal").linear(false).len(6, 9).heads(2, 1).dim(4, 3).init()},
    {Case("fd_identity_norm_causal").linear().len(7).heads(2, 1).dim(4, 3).init().normalize()},
    {Case("fd_identity_norm_noncausal").linear(false).len(6, 9).heads(4, 2).dim(3, 4).init().normalize()},
    {Case("fd_elu_causal").linear().map(F::elu_plus_one).len(8).heads(2, 1).dim(4, 3).init().scale(0.5)},
    {Case("fd_elu_noncausal").linear(false).map(F::elu_plus_one).len(9, 6).heads(2, 1).dim(4, 3).init()},
    {Case("fd_elu_norm_causal").linear().map(F::elu_plus_one).len(10).heads(2, 1).dim(5, 3).init().normalize()},
    {Case("fd_elu_norm_noncausal").linear(false).map(F::elu_plus_one).len(6, 9).heads(2, 1).dim(4, 3).init()
         .normalize()},
    {Case("fd_relu_causal").linear().map(F::relu).len(7).heads(2, 1).dim(4, 3).init()},
    {Case("fd_relu_noncausal").linear(false).map(F::relu).len(6, 9).heads(4, 2).dim(4, 3).init()},
    {Case("fd_relu_norm_causal").linear().map(F::relu).len(12).heads(2, 1).dim(4, 3).init().normalize()},
    {Case("fd_relu_norm_noncausal").linear(false).map(F::relu).len(6, 9).heads(2, 1).dim(4, 3).init().normalize()},
    {Case("fd_taylor_causal").linear().map(F::taylor).len(7).heads(2, 1).dim(3, 3).init().scale(0.5)},
    {Case("fd_taylor_noncausal").linear(false).map(F::taylor).len(6, 9).heads(2, 1).dim(3, 2).init()},
    {Case("fd_taylor_norm_causal").linear().map(F::taylor).len(8).heads(2, 1).dim(3, 3).init().normalize()},
    {Case("fd_taylor_norm_noncausal").linear(false).map(F::taylor).len(9, 5).heads(2, 1).dim(3, 3).init()
         .normalize()},
    {Case("fd_softmax_noncausal").linear(false).map(F::softmax).len(6, 9).heads(2, 1).dim(4, 3).init()},
    {Case("fd_softmax_norm_noncausal").linear(false).map(F::softmax).len(9, 6).heads(2, 1).dim(5, 3).init()
         .normalize()},
    // bhsd; no initial state (its gradient at S0 = 0); a loss without the final state
    {Case("fd_taylor_norm_causal_bhsd").linear().map(F::taylor).len(6).heads(4, 2).dim(2, 3).bhsd().init()
         .normalize().scale(0.7)},
    {Case("fd_softmax_norm_noncausal_bhsd_no_init").linear(false).map(F::softmax).len(5, 8).heads(4, 2).dim(3, 2)
         .bhsd().normalize()},
    {Case("fd_elu_norm_causal_no_dfinal").linear().map(F::elu_plus_one).len(6).heads(2, 1).dim(3, 2).init()
         .normalize(), false},
};

INSTANTIATE_TEST_SUITE_P(Cases, LinearMapsReferenceGradients, ::testing::ValuesIn(kReferenceCases), bw_name);

// The identity map without normaliser is lightning attention without decay: the map's loops and
// lightning's (reference::detail::chunk_attention_backward) agree up to the order of their sums.
TEST(LinearMapsReferenceProperties, IdentityWithoutNormaliserEqualsLightningLoops) {
  for (const BwCase& c : {BwCase{Case("identity_is_lightning_causal").linear().len(40).heads(4, 2).dim(5, 7).init()},
                          BwCase{Case("identity_is_lightning_noncausal").linear(false).len(30, 50).heads(4, 2).dim(7, 5)
                                     .init().bhsd()}}) {
    SCOPED_TRACE(seed_note(c.fwd.name));
    std::mt19937_64 rng(case_seed(c.fwd.name));
    const bw_inputs<double> x = make_bw_inputs<double>(c, rng, make_map_inputs<double>);
    const bw_grads<double> want = reference_grads(c, x);
    bw_grads<double> got = make_grads<double>(c);
    run_linear_backward(c, x, got, [](const auto& opt, auto&&... a) {
      xattn::reference::detail::chunk_attention_backward<double>(
          xattn::detail::make_linear_backward_problem("lightning loops", a..., opt));
    });
    for (const auto& [name, m] : compared(c))
      EXPECT_LE(max_abs_diff(got.*m, want.*m).max, 1e-12 * (1 + max_abs(want.*m))) << name;
  }
}

// ---------------------------------------------------------------------------------------------
// The kernel against the reference, by the accuracy rule

/// The scale of every gradient element's rounding error (see magnitude).
template <class T>
bw_grads<double> magnitudes_of(const BwCase& c, const bw_inputs<T>& x) {
  bw_grads<double> g = make_grads<double>(c);
  run_linear_backward(c, to_double(x), g, [](const auto& opt, auto&&... a) {
    xattn::reference::detail::linear_attention_backward<magnitude>(
        xattn::detail::make_linear_backward_problem("magnitudes", a..., opt));
  });
  return g;
}

template <class T>
void check_backward(const BwCase& c) {
  SCOPED_TRACE(seed_note(c.fwd.name));
  std::mt19937_64 rng(case_seed(c.fwd.name));
  const bw_inputs<T> x = make_bw_inputs<T>(c, rng, make_map_inputs<T>);
  expect_backward_within_rule(c, x, naive_grads(c, x), magnitudes_of(c, x));
}

class LinearMapsBackwardAccuracy : public ::testing::TestWithParam<BwCase> {};

TEST_P(LinearMapsBackwardAccuracy, MatchesReference) {
  const BwCase& c = GetParam();
  if (c.fwd.f64_) check_backward<double>(c);
  else check_backward<float>(c);
}

// Normalised cases use eps = 1e-6 (Case's default); GQA heads(4, 2), an initial state and a final
// state in the loss unless the name says otherwise.
const std::vector<BwCase> kAccuracyCases = {
    // every map, normaliser on and off, causal and not; lengths not multiples of the block
    {Case("identity_norm_causal_len113_block16").linear().normalize().len(113).heads(4, 2).dim(16, 24).block(16).init()},
    {Case("identity_norm_noncausal_nq70_nk130_block64").linear(false).normalize().len(70, 130).heads(4, 2).dim(16, 24)
         .block(64).init()},
    {Case("elu_causal_len113_block16").linear().map(F::elu_plus_one).len(113).heads(4, 2).dim(16, 24).block(16).init()},
    {Case("elu_norm_causal_len130_block64").linear().map(F::elu_plus_one).normalize().len(130).heads(4, 2).dim(16, 24)
         .block(64).init()},
    {Case("elu_noncausal_nq130_nk70_block16").linear(false).map(F::elu_plus_one).len(130, 70).heads(4, 2).dim(16, 24)
         .block(16).init()},
    {Case("elu_norm_noncausal_e33").linear(false).map(F::elu_plus_one).normalize().len(90, 77).heads(4, 2).dim(16, 33)
         .block(64).init()},
    {Case("relu_causal_len113_block64").linear().map(F::relu).len(113).heads(4, 2).dim(16, 24).block(64).init()},
    {Case("relu_norm_causal_len100_block16").linear().map(F::relu).normalize().len(100).heads(4, 2).dim(16, 24)
         .block(16).init()},
    {Case("relu_noncausal_nq200_nk37_block16").linear(false).map(F::relu).len(200, 37).heads(4, 2).dim(16, 24)
         .block(16).init()},
    {Case("relu_norm_noncausal_len90_block64").linear(false).map(F::relu).normalize().len(90).heads(4, 2).dim(24, 16)
         .block(64).init()},
    {Case("taylor_d3_causal_len113_block16").linear().map(F::taylor).len(113).heads(4, 2).dim(3, 24).block(16).init()},
    {Case("taylor_d3_norm_causal_len130_block64").linear().map(F::taylor).normalize().len(130).heads(4, 2).dim(3, 24)
         .block(64).init()},
    {Case("taylor_d8_norm_causal_len100_block16").linear().map(F::taylor).normalize().len(100).heads(4, 2).dim(8, 16)
         .block(16).init()},
    {Case("taylor_d8_noncausal_nq60_nk130_block64").linear(false).map(F::taylor).len(60, 130).heads(4, 2).dim(8, 24)
         .block(64).init()},
    {Case("taylor_d8_norm_noncausal_e33_block16").linear(false).map(F::taylor).normalize().len(77, 50).heads(4, 2)
         .dim(8, 33).block(16).init()},
    {Case("softmax_noncausal_len113_block16").linear(false).map(F::softmax).len(113).heads(4, 2).dim(16, 24).block(16)
         .init()},
    {Case("softmax_norm_noncausal_nq50_nk200_block64").linear(false).map(F::softmax).normalize().len(50, 200)
         .heads(4, 2).dim(16, 24).block(64).init()},
    // length 1, head dim 1, value dim 1
    {Case("elu_norm_causal_len1").linear().map(F::elu_plus_one).normalize().len(1).heads(4, 2).dim(16, 24).init()},
    {Case("taylor_d3_norm_causal_len1").linear().map(F::taylor).normalize().len(1).heads(4, 2).dim(3, 8)},
    {Case("softmax_norm_noncausal_nq1_nk1").linear(false).map(F::softmax).normalize().len(1, 1).heads(4, 2).dim(16, 8)
         .init()},
    {Case("relu_causal_d1_e7").linear().map(F::relu).len(50).heads(4, 2).dim(1, 7).block(16).init()},
    {Case("elu_norm_causal_d1").linear().map(F::elu_plus_one).normalize().len(70).heads(4, 2).dim(1, 5).block(16)
         .init()},
    {Case("taylor_d1_norm_noncausal").linear(false).map(F::taylor).normalize().len(40, 60).heads(4, 2).dim(1, 5)
         .init()},
    {Case("softmax_d1_norm_noncausal").linear(false).map(F::softmax).normalize().len(40, 60).heads(4, 2).dim(1, 5)
         .init()},
    {Case("identity_norm_causal_e1").linear().normalize().len(90).heads(4, 2).dim(16, 1).block(16).init()},
    {Case("taylor_d3_causal_e1").linear().map(F::taylor).len(90).heads(4, 2).dim(3, 1).block(64).init()},
    // layouts, head groups, options, state gradients
    {Case("relu_norm_causal_bhsd_mqa").linear().map(F::relu).normalize().len(90).heads(4, 1).dim(16, 24).block(16)
         .bhsd().init()},
    {Case("softmax_norm_noncausal_bhsd").linear(false).map(F::softmax).normalize().len(70, 90).heads(2, 1)
         .dim(24, 16).bhsd().init()},
    {Case("elu_norm_causal_scale_0_125").linear().map(F::elu_plus_one).normalize().len(100).heads(4, 2).dim(16, 24)
         .scale(0.125).init()},
    {Case("taylor_d3_norm_causal_no_state_gradient").linear().map(F::taylor).normalize().len(70).heads(4, 2)
         .dim(3, 16).init(), true, false},
    {Case("elu_norm_noncausal_dinit_without_init").linear(false).map(F::elu_plus_one).normalize().len(60, 80)
         .heads(4, 2).dim(16, 24), false},
    {Case("elu_norm_noncausal_nk0_init").linear(false).map(F::elu_plus_one).normalize().len(5, 0).heads(4, 2)
         .dim(16, 24).init()},
    {Case("softmax_norm_noncausal_nq0").linear(false).map(F::softmax).normalize().len(0, 70).heads(4, 2)
         .dim(16, 24)},
    // double
    {Case("f64_taylor_d3_norm_causal_block16").f64().linear().map(F::taylor).normalize().len(113).heads(4, 2)
         .dim(3, 24).block(16).init()},
    {Case("f64_softmax_norm_noncausal_bhsd").f64().linear(false).map(F::softmax).normalize().len(70, 90).heads(4, 2)
         .dim(16, 24).bhsd().init()},
    {Case("f64_elu_norm_causal_block64").f64().linear().map(F::elu_plus_one).normalize().len(130).heads(4, 2)
         .dim(16, 24).block(64).init()},
    {Case("f64_relu_noncausal").f64().linear(false).map(F::relu).len(90, 70).heads(4, 2).dim(16, 24).init()},
};

INSTANTIATE_TEST_SUITE_P(Cases, LinearMapsBackwardAccuracy, ::testing::ValuesIn(kAccuracyCases), bw_name);

// ---------------------------------------------------------------------------------------------
// Thread invariance: serial, 1, 2 and 3 threads give the same bits

class LinearMapsBackwardThreads : public ::testing::TestWithParam<BwCase> {};

TEST_P(LinearMapsBackwardThreads, BitwiseIdenticalForAnyThreadCount) {
  const BwCase& c = GetParam();
  SCOPED_TRACE(seed_note(c.fwd.name));
  std::mt19937_64 rng(case_seed(c.fwd.name));
  expect_same_bits_on_any_thread_count(c, make_bw_inputs<float>(c, rng, make_map_inputs<float>));
}

const std::vector<BwCase> kThreadCases = {
    {Case("threads_taylor_d8_norm_causal").linear().map(F::taylor).normalize().batch(1).len(300).heads(4, 2)
         .dim(8, 40).block(32).init()},
    {Case("threads_softmax_norm_noncausal").linear(false).map(F::softmax).normalize().batch(1).len(200, 333)
         .heads(4, 2).dim(32, 24).init()},
    {Case("threads_elu_norm_causal_bhsd").linear().map(F::elu_plus_one).normalize().batch(1).len(257).heads(3, 1)
         .dim(40, 24).block(16).bhsd().init()},
    {Case("threads_relu_noncausal").linear(false).map(F::relu).batch(2).len(150, 222).heads(4, 2).dim(24, 40).init()},
};

INSTANTIATE_TEST_SUITE_P(Cases, LinearMapsBackwardThreads, ::testing::ValuesIn(kThreadCases), bw_name);

// ---------------------------------------------------------------------------------------------
// Bad input: an xattn::error naming the function and the argument, nothing written

TEST(LinearMapsBackwardErrors, BadInputThrowsNamingTheArgument) {
  const BwCase c{Case("errors").linear().map(F::elu_plus_one).normalize().len(9).heads(4, 2).dim(6, 5).init()};
  std::mt19937_64 rng(case_seed(c.fwd.name));
  const bw_inputs<float> x = make_bw_inputs<float>(c, rng, make_map_inputs<float>);
  bw_grads<float> g = make_grads<float>(c);
  option_data od;
  od.map = c.fwd.feature_map();
  const xattn::linear_backward_options good{.forward = [&] {
                                              auto f = linear_opts(c.fwd, od);
                                              f.initial_state = x.in.s0;
                                              return f;
                                            }(),
                                            .dinitial_state = g.ds0,
                                            .dfinal_state = x.dsf};
  const tensor<float>& q = x.in.q;
  const tensor<float>& k = x.in.k;
  const tensor<float>& v = x.in.v;
  const std::string fn = "xattn::linear_attention_backward";
  const auto expect_error = [&](const xattn::linear_backward_options& opt, const std::string& arg) {
    for (tensor<float>* t : {&g.dq, &g.dk, &g.dv, &g.ds0}) t->setConstant(7.f);
    EXPECT_TRUE(throws_naming([&] { xattn::linear_attention_backward(q, k, v, x.dout, g.dq, g.dk, g.dv, opt); }, fn,
                              arg));
    EXPECT_TRUE(throws_naming([&] { xattn::linear_attention_backward(device(2), q, k, v, x.dout, g.dq, g.dk, g.dv, opt); },
                              fn, arg))
        << "on a thread pool";
    for (const tensor<float>* t : {&g.dq, &g.dk, &g.dv, &g.ds0})
      ASSERT_TRUE(std::all_of(t->data(), t->data() + t->size(), [](float u) { return u == 7.f; }))
          << arg << ": written before the error";
  };
  // a custom map: no derivative to take
  const xattn::feature_map custom = hedgehog_like(c.fwd.d_);
  auto opt = good;
  opt.forward.feature_map = custom;
  opt.forward.initial_state = {}, opt.dinitial_state = {}, opt.dfinal_state = {};  // D' = 2d: the states would not fit
  expect_error(opt, "feature_map");
  // the per-side softmax is non-causal only
  opt = good;
  opt.forward.feature_map = F::softmax;
  expect_error(opt, "feature_map");
  // the state gradients and the initial state need the normaliser's column: [B, Hq, D', e + 1]
  tensor<float> no_z(c.fwd.b_, c.fwd.hq_, c.fwd.df(), c.fwd.e());
  no_z.setZero();
  opt = good;
  opt.dinitial_state = no_z;
  expect_error(opt, "dinitial_state");
  opt = good;
  opt.dfinal_state = no_z;
  expect_error(opt, "dfinal_state");
  opt = good;
  opt.forward.initial_state = no_z;
  expect_error(opt, "initial_state");
  // Taylor's states have D' = 1 + d + d(d + 1)/2 rows, not d
  tensor<float> d_rows(c.fwd.b_, c.fwd.hq_, c.fwd.d_, c.fwd.cols());
  d_rows.setZero();
  opt = good;
  opt.forward.feature_map = F::taylor;
  opt.forward.initial_state = {}, opt.dfinal_state = {};
  opt.dinitial_state = d_rows;
  expect_error(opt, "dinitial_state");

  // the reference validates the same way, under its own name
  const tensor<double> qd = cast_to<double>(q), kd = cast_to<double>(k), vd = cast_to<double>(v);
  const tensor<double> doutd = cast_to<double>(x.dout);
  tensor<double> dqd(q.dimensions()), dkd(k.dimensions()), dvd(v.dimensions());
  dqd.setConstant(7.0);
  const xattn::linear_backward_options custom_opt{.forward = {.feature_map = custom}};
  EXPECT_TRUE(throws_naming([&] { xattn::reference::linear_attention_backward(qd, kd, vd, doutd, dqd, dkd, dvd, custom_opt); },
                            "xattn::reference::linear_attention_backward", "feature_map"));
  tensor<double> no_zd(c.fwd.b_, c.fwd.hq_, c.fwd.df(), c.fwd.e());
  const xattn::linear_backward_options no_z_opt{.forward = {.feature_map = F::elu_plus_one, .normalize = true},
                                                .dinitial_state = no_zd};
  EXPECT_TRUE(throws_naming([&] { xattn::reference::linear_attention_backward(qd, kd, vd, doutd, dqd, dkd, dvd, no_z_opt); },
                            "xattn::reference::linear_attention_backward", "dinitial_state"));
  EXPECT_TRUE(std::all_of(dqd.data(), dqd.data() + dqd.size(), [](double u) { return u == 7.0; }))
      << "the reference wrote dq before the error";

  // and the good call passes
  xattn::linear_attention_backward(q, k, v, x.dout, g.dq, g.dk, g.dv, good);
}

}  // namespace
}  // namespace xattn_test
