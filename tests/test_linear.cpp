// tests/test_linear.cpp — xattn::linear_attention and xattn::linear_step against the fp64 reference
// (flash-attention's accuracy rule, see test_util.hpp) for every feature map, causal and not, with
// and without the normaliser; their properties (segments with state passing, keys accumulated over
// calls, decoding step by step equals prefill, thread count does not matter), and bad input.
#include "chunk_test_util.hpp"

namespace xattn_test {
namespace {

using namespace chunk;
using F = xattn::feature;

// ---------------------------------------------------------------------------------------------
// Accuracy against the reference, case by case

class LinearAccuracy : public ::testing::TestWithParam<Case> {};

TEST_P(LinearAccuracy, MatchesReference) {
  const Case c = for_this_run(GetParam());
  if (c.f64_) check_accuracy<double>(c);
  else check_accuracy<float>(c);
}

const std::vector<Case> kAccuracyCases = {
    // causal, each feature map, with and without the normaliser
    Case("causal_identity").linear().len(113),
    Case("causal_elu1_normalize").linear().len(300).dim(64).map(F::elu_plus_one).normalize().big(),
    Case("causal_elu1").linear().len(130).map(F::elu_plus_one),
    Case("causal_relu_normalize").linear().len(130).map(F::relu).normalize(),
    Case("causal_taylor_d8_normalize").linear().len(130).dim(8, 24).map(F::taylor).normalize(),
    Case("causal_taylor_d16").linear().len(100).dim(16).map(F::taylor).magnitude(0.5),
    Case("causal_custom_normalize").linear().len(130).map(F::custom).normalize(),
    Case("causal_len1").linear().len(1).map(F::elu_plus_one).normalize(),
    Case("causal_len1000_windowed").linear().batch(1).heads(1, 1).len(1000).dim(32).map(F::elu_plus_one).normalize().big(),
    Case("causal_d1_e5").linear().len(77).dim(1, 5).map(F::elu_plus_one).normalize(),
    Case("causal_gqa_block16").linear().heads(8, 2).len(130).block(16).map(F::elu_plus_one).normalize(),
    Case("causal_init_normalize").linear().len(130).init().map(F::elu_plus_one).normalize(),
    Case("causal_init").linear().len(130).init(),
    Case("causal_eps0_scale").linear().len(70).map(F::elu_plus_one).normalize(0.0).scale(0.25),
    Case("causal_bhsd_tmap").linear().len(100).dim(24, 40).bhsd().tmap().map(F::relu),
    Case("causal_f64_taylor").f64().linear().len(90).dim(6).map(F::taylor).normalize().init(),
    // non-causal: one state; Nq may differ from Nk
    Case("noncausal_identity").linear(false).len(113),
    Case("noncausal_elu1_normalize").linear(false).len(200).dim(64).map(F::elu_plus_one).normalize().big(),
    Case("noncausal_relu").linear(false).len(90).map(F::relu),
    Case("noncausal_taylor_normalize").linear(false).len(90).dim(8).map(F::taylor).normalize(),
    Case("noncausal_softmax").linear(false).len(130).dim(32).map(F::softmax),
    Case("noncausal_softmax_normalize").linear(false).len(130, 77).map(F::softmax).normalize(),
    Case("noncausal_custom").linear(false).len(90).map(F::custom),
    Case("noncausal_nq50_nk130").linear(false).len(50, 130).map(F::elu_plus_one).normalize(),
    Case("noncausal_nq130_nk50").linear(false).len(130, 50).dim(16, 40).map(F::elu_plus_one),
    Case("noncausal_nq1_nk200").linear(false).len(1, 200).map(F::elu_plus_one).normalize(),
    Case("noncausal_gqa_init").linear(false).heads(6, 2).len(100).init().map(F::elu_plus_one).normalize(),
    Case("noncausal_windowed_block8").linear(false).batch(1).heads(1, 1).len(700, 900).block(8).map(F::relu).big(),
    Case("noncausal_f64_softmax_bhsd").f64().linear(false).len(90, 60).bhsd().map(F::softmax),
};

INSTANTIATE_TEST_SUITE_P(Cases, LinearAccuracy, ::testing::ValuesIn(kAccuracyCases), case_name);

// ---------------------------------------------------------------------------------------------
// The scalar path, linear_attention<xattn::simd::scalar> and linear_step<...>: the same rule

class LinearScalarPath : public ::testing::TestWithParam<Case> {};

TEST_P(LinearScalarPath, MatchesReference) {
  const Case c = for_this_run(GetParam());
  if (c.f64_) check_scalar_path<double>(c);
  else check_scalar_path<float>(c);
}

const std::vector<Case> kScalarCases = {
    Case("elu1_normalize_len37_d40_e24_gqa_init").linear().heads(3, 1).len(37).dim(40, 24).block(16).init()
        .map(F::elu_plus_one).normalize(),
    Case("taylor_windowed_len101_d5_e7").linear().batch(1).heads(1, 1).len(101).dim(5, 7).block(16).map(F::taylor),
    Case("f64_relu_normalize_len37_d24_e40").f64().linear().heads(2, 1).len(37).dim(24, 40).block(8).init()
        .map(F::relu).normalize(),
    Case("noncausal_softmax_nq37_nk101_d40").linear(false).heads(3, 1).len(37, 101).dim(40, 24).block(16)
        .map(F::softmax).normalize(),  // forward only: a step is causal
};

INSTANTIATE_TEST_SUITE_P(Cases, LinearScalarPath, ::testing::ValuesIn(kScalarCases), case_name);

// ---------------------------------------------------------------------------------------------
// Thread-count invariance: serial, 1, 2 and 3 threads give the same bits

class LinearThreads : public ::testing::TestWithParam<Case> {};

TEST_P(LinearThreads, BitwiseIdenticalForAnyThreadCount) {
  const Case c = for_this_run(GetParam());
  if (c.f64_) check_threads<double>(c);
  else check_threads<float>(c);
}

const std::vector<Case> kThreadCases = {
    Case("causal_per_unit").linear().heads(8, 4).len(300).map(F::elu_plus_one).normalize(),
    Case("causal_windowed").linear().batch(1).heads(1, 1).len(900).block(8).map(F::elu_plus_one).normalize(),
    Case("noncausal_per_unit_softmax").linear(false).heads(8, 2).len(200, 300).map(F::softmax),
    Case("noncausal_windowed").linear(false).batch(1).heads(1, 1).len(300, 1000).block(8).map(F::taylor).dim(4),
    Case("noncausal_per_head_gqa").linear(false).batch(1).heads(2, 1).len(300, 1000).block(8).map(F::taylor).dim(4),
};

INSTANTIATE_TEST_SUITE_P(Cases, LinearThreads, ::testing::ValuesIn(kThreadCases), case_name);

// ---------------------------------------------------------------------------------------------
// Properties

tensor<float> rows(const tensor<float>& x, index t0, index t1) {
  const Eigen::array<index, 4> off{0, t0, 0, 0}, ext{x.dimension(0), t1 - t0, x.dimension(2), x.dimension(3)};
  return x.slice(off, ext);
}

class LinearProperty : public ::testing::Test {
 protected:
  Case c = for_this_run(Case("property").linear().heads(4, 2).len(300).dim(32, 24).map(F::elu_plus_one).normalize().big());
  std::mt19937_64 rng{case_seed("linear property")};
  inputs<float> in = make_inputs<float>(c, rng);
  xattn::linear_options opt{.causal = true, .feature_map = F::elu_plus_one, .normalize = true};
};

TEST_F(LinearProperty, SegmentsWithStatePassingEqualOneCall) {
  const outputs<double> ref = oracle(c, in);
  const outputs<float> nv = naive(c, in);
  const magnitudes m = magnitudes_of(c, in);
  tensor<float> out(c.b_, c.nq_, c.hq_, c.e()), state(c.b_, c.hq_, c.d_, c.e() + 1);
  const index n = c.nq_;
  const index cuts[] = {0, 64, 65, n - 50, n};
  for (int s = 0; s + 1 < int(std::size(cuts)); ++s) {
    tensor<float> o(c.b_, cuts[s + 1] - cuts[s], c.hq_, c.e());
    xattn::linear_options so = opt;
    so.final_state = state;
    if (s > 0) so.initial_state = state;
    xattn::linear_attention(device(2), rows(in.q, cuts[s], cuts[s + 1]), rows(in.k, cuts[s], cuts[s + 1]),
                            rows(in.v, cuts[s], cuts[s + 1]), o, so);
    out.slice(Eigen::array<index, 4>{0, cuts[s], 0, 0}, o.dimensions()) = o;
  }
  EXPECT_TRUE(within_rule("segmented out", out, nv.out, ref.out, sum_eps<float>(m.out)));
  EXPECT_TRUE(within_rule("segmented final state", state, nv.state, ref.state, sum_eps<float>(m.state)));
}

TEST_F(LinearProperty, NonCausalKeysAccumulateOverCalls) {
  // Keys and values given in two calls — the first one's final state the second one's initial
  // state — attend like all keys in one call.
  Case nc = c;
  nc.causal_ = false;
  const outputs<double> ref = oracle(nc, in);
  const outputs<float> nv = naive(nc, in);
  const magnitudes m = magnitudes_of(nc, in);
  xattn::linear_options o1 = opt;
  o1.causal = false;
  tensor<float> state(c.b_, c.hq_, c.d_, c.e() + 1), scratch_out(c.b_, c.nq_, c.hq_, c.e()), out(scratch_out.dimensions());
  o1.final_state = state;
  const index split = c.nk_ * 2 / 5;
  xattn::linear_attention(in.q, rows(in.k, 0, split), rows(in.v, 0, split), scratch_out, o1);
  xattn::linear_options o2 = opt;
  o2.causal = false;
  o2.initial_state = state;
  o2.final_state = state;
  xattn::linear_attention(in.q, rows(in.k, split, c.nk_), rows(in.v, split, c.nk_), out, o2);
  EXPECT_TRUE(within_rule("accumulated out", out, nv.out, ref.out, sum_eps<float>(m.out)));
  EXPECT_TRUE(within_rule("accumulated state", state, nv.state, ref.state, sum_eps<float>(m.state)));
}

TEST_F(LinearProperty, DecodingStepByStepEqualsPrefill) {
  for (F map : {F::elu_plus_one, F::taylor}) {
    SCOPED_TRACE(map == F::taylor ? "taylor" : "elu+1");
    Case cm = c;
    cm.map(map).dim(map == F::taylor ? 6 : 32, 24);
    std::mt19937_64 r(case_seed("linear decode"));
    const inputs<float> x = make_inputs<float>(cm, r);
    const outputs<double> ref = oracle(cm, x);
    const outputs<float> nv = naive(cm, x);
    const magnitudes m = magnitudes_of(cm, x);
    xattn::linear_options o = opt;
    o.feature_map = map;
    const index prompt = 65;
    tensor<float> out(cm.b_, cm.nq_, cm.hq_, cm.e()), state(cm.b_, cm.hq_, cm.df(), cm.e() + 1);
    tensor<float> head = rows(out, 0, prompt);
    xattn::linear_options po = o;
    po.final_state = state;
    xattn::linear_attention(rows(x.q, 0, prompt), rows(x.k, 0, prompt), rows(x.v, 0, prompt), head, po);
    out.slice(Eigen::array<index, 4>{0, 0, 0, 0}, head.dimensions()) = head;
    tensor<float> state2 = state;
    for (index t = prompt; t < cm.nq_; ++t) {
      const tensor<float> q = rows(x.q, t, t + 1), k = rows(x.k, t, t + 1), v = rows(x.v, t, t + 1);
      tensor<float> step(cm.b_, 1, cm.hq_, cm.e()), step2(step.dimensions());
      xattn::linear_step(q, k, v, step, state, o);
      xattn::linear_step(device(2), q, k, v, step2, state2, o);
      ASSERT_TRUE(bitwise_equal("step on 2 threads", step, step2));
      out.slice(Eigen::array<index, 4>{0, t, 0, 0}, step.dimensions()) = step;
    }
    EXPECT_TRUE(within_rule("decoded out", out, nv.out, ref.out, sum_eps<float>(m.out)));
    EXPECT_TRUE(within_rule("decoded state", state, nv.state, ref.state, sum_eps<float>(m.state)));
  }
}

TEST(LinearFeatures, TaylorInnerProductIsTheSecondOrderExpansion) {
  // φ(q)·φ(k) = 1 + q·k + (q·k)²/2 with D' = 1 + d + d(d+1)/2
  const index d = 5;
  tensor<double> q(1, 1, 1, d), k(1, 1, 1, d), v(1, 1, 1, 1), o(1, 1, 1, 1);
  std::mt19937_64 rng(case_seed("taylor"));
  fill_random(q, rng), fill_random(k, rng);
  v.setConstant(1.0);
  EXPECT_EQ(xattn::feature_map(F::taylor).dim(d), 1 + d + d * (d + 1) / 2);
  xattn::linear_attention(q, k, v, o, {.feature_map = F::taylor});
  double qk = 0;
  for (index c = 0; c < d; ++c) qk += q(0, 0, 0, c) * k(0, 0, 0, c);
  EXPECT_NEAR(o(0, 0, 0, 0), 1 + qk + qk * qk / 2, 1e-12);
}

// ---------------------------------------------------------------------------------------------
// Bad input

struct BadCase {
  std::string name;
  std::string fn, arg;
  std::function<void()> call;
};

void PrintTo(const BadCase& c, std::ostream* os) { *os << c.name; }

class LinearBadInput : public ::testing::TestWithParam<BadCase> {};

TEST_P(LinearBadInput, ThrowsNamingTheArgument) { EXPECT_TRUE(throws_naming(GetParam().call, GetParam().fn, GetParam().arg)); }

/// q [2, 5, 4, 8], k/v [2, 5, 2, 8 | 6], out [2, 5, 4, 6]; `out` keeps kSentinel when a call throws.
struct call_data {
  tensor<float> q{2, 5, 4, 8}, k{2, 5, 2, 8}, v{2, 5, 2, 6}, out{2, 5, 4, 6};
  tensor<float> q1{2, 1, 4, 8}, k1{2, 1, 2, 8}, v1{2, 1, 2, 6}, out1{2, 1, 4, 6};
  tensor<float> state{2, 4, 8, 7}, state_e{2, 4, 8, 6};
  tensor<double> qd{2, 5, 4, 8}, kd{2, 5, 2, 8}, vd{2, 5, 2, 6}, outd{2, 5, 4, 6};
  call_data() {
    for (auto* t : {&q, &k, &v, &q1, &k1, &v1, &state, &state_e}) t->setConstant(0.5f);
    for (auto* t : {&qd, &kd, &vd}) t->setConstant(0.5);
    out.setConstant(12345.f), out1.setConstant(12345.f), outd.setConstant(12345.0);
  }
};

call_data& data() {
  static call_data d;
  return d;
}

const auto float_only_map = xattn::feature_map::custom(8, [](std::span<const float> x, std::span<float> y) {
  std::copy(x.begin(), x.end(), y.begin());
});

const std::vector<BadCase> kBadCases = {
    {"softmax_causal", "xattn::linear_attention", "feature_map",
     [] { xattn::linear_attention(data().q, data().k, data().v, data().out, {.causal = true, .feature_map = F::softmax}); }},
    {"softmax_step", "xattn::linear_step", "feature_map",
     [] { xattn::linear_step(data().q1, data().k1, data().v1, data().out1, data().state_e, {.feature_map = F::softmax}); }},
    {"causal_nq_ne_nk", "xattn::linear_attention", "k",
     [] { xattn::linear_attention(data().q1, data().k, data().v, data().out1, {.causal = true}); }},
    {"eps_negative", "xattn::linear_attention", "eps",
     [] { xattn::linear_attention(data().q, data().k, data().v, data().out, {.normalize = true, .eps = -1}); }},
    {"scale_negative", "xattn::linear_attention", "scale",
     [] { xattn::linear_attention(data().q, data().k, data().v, data().out, {.scale = -1}); }},
    {"state_without_normaliser_column", "xattn::linear_attention", "initial_state",
     [] { xattn::linear_attention(data().q, data().k, data().v, data().out, {.normalize = true, .initial_state = data().state_e}); }},
    {"state_with_extra_column", "xattn::linear_attention", "final_state",
     [] { xattn::linear_attention(data().q, data().k, data().v, data().out, {.final_state = data().state}); }},
    {"taylor_state_of_d_rows", "xattn::linear_attention", "final_state",
     [] { xattn::linear_attention(data().q, data().k, data().v, data().out, {.feature_map = F::taylor, .final_state = data().state_e}); }},
    {"step_state_shape", "xattn::linear_step", "state",
     [] { xattn::linear_step(data().q1, data().k1, data().v1, data().out1, data().state, {}); }},
    {"custom_dim_zero", "xattn::linear_attention", "feature_map",
     [] {
       xattn::linear_attention(data().q, data().k, data().v, data().out,
                               {.feature_map = xattn::feature_map::custom(0, [](auto, auto) {})});
     }},
    {"custom_float_only_called_with_double", "xattn::linear_attention", "feature_map",
     [] { xattn::linear_attention(data().qd, data().kd, data().vd, data().outd, {.feature_map = float_only_map}); }},
    {"block_too_large", "xattn::linear_attention", "block_size",
     [] { xattn::linear_attention(data().q, data().k, data().v, data().out, {.block_size = 2048}); }},
    {"reference_softmax_causal", "xattn::reference::linear_attention", "feature_map",
     [] { xattn::reference::linear_attention(data().q, data().k, data().v, data().out, {.causal = true, .feature_map = F::softmax}); }},
};

INSTANTIATE_TEST_SUITE_P(Cases, LinearBadInput, ::testing::ValuesIn(kBadCases), [](const auto& info) { return info.param.name; });

TEST(LinearBadInput, NothingWasWritten) {
  // Runs after the table in this binary or not: re-run every case here and check the outputs.
  for (const auto& bc : kBadCases) {
    SCOPED_TRACE(bc.name);
    EXPECT_TRUE(throws_naming(bc.call, bc.fn, bc.arg));
  }
  for (auto* t : {&data().out, &data().out1})
    EXPECT_TRUE(std::all_of(t->data(), t->data() + t->size(), [](float x) { return x == 12345.f; }));
  EXPECT_TRUE(std::all_of(data().outd.data(), data().outd.data() + data().outd.size(), [](double x) { return x == 12345.0; }));
  for (auto* t : {&data().state, &data().state_e})
    EXPECT_TRUE(std::all_of(t->data(), t->data() + t->size(), [](float x) { return x == 0.5f; }));
}

}  // namespace
}  // namespace xattn_test
