// tests/test_chunk_backward.cpp — the backward passes of lightning attention and of linear attention
// (identity map, no normaliser): the fp64 reference against central differences of the fp64
// forward reference (the loss is linear in each of q, k, v and the initial state, so the
// differences are exact up to rounding), the fast kernel against the reference by flash-attention's
// accuracy rule (test_util.hpp) on its SIMD and scalar paths, bit for bit across thread counts and
// call forms, zero decay against causal linear attention, and bad input.
#include <xattn/lightning_backward.hpp>
#include <xattn/linear_backward.hpp>
#include <xattn/reference/lightning_backward.hpp>

#include "chunk_backward_test_util.hpp"

namespace xattn_test {
namespace {

using namespace chunk;
using D = chunk::decay;

// Either family's problem for lightning's loops (the naive implementation of both).
template <class... A>
auto backward_problem(const xattn::lightning_backward_options& opt, A&&... a) {
  return xattn::detail::make_lightning_backward_problem("naive", a..., opt);
}
template <class... A>
auto backward_problem(const xattn::linear_backward_options& opt, A&&... a) {
  return xattn::detail::make_linear_backward_problem("naive", a..., opt);
}

/// The reference's loops with every sum in T: the naive implementation of the accuracy rule.
template <class T>
bw_grads<T> naive_grads(const BwCase& c, const bw_inputs<T>& x) {
  bw_grads<T> g = make_grads<T>(c);
  run_backward(c, x, g, [](const auto& opt, auto&&... a) {
    xattn::reference::detail::chunk_attention_backward<T>(backward_problem(opt, a...));
  });
  return g;
}

/// The scale of each gradient's rounding: its largest sum of |terms|, which is the reference run on
/// the absolute values of every input (all its coefficients, σ·λ^m, are positive).
template <class T>
bw_grads<double> magnitudes_of(const BwCase& c, const bw_inputs<T>& x) {
  bw_inputs<double> a = to_double(x);
  for (tensor<double>* t : {&a.in.q, &a.in.k, &a.in.v, &a.in.s0, &a.dout, &a.dsf}) *t = t->abs();
  bw_grads<double> g = make_grads<double>(c);
  run_backward(c, a, g, [](const auto& opt, auto&&... t) { reference_backward(opt, t...); });
  return g;
}

// ---------------------------------------------------------------------------------------------
// The reference against central differences of the forward reference

/// The step of the differences: L is linear in each input, so a large step costs no truncation
/// error and keeps the rounding error (ε·|L|/h) small.
constexpr double kStep = 1e-2;
/// Allowed |difference − gradient|, relative to 1 + the gradient's sum of |terms|.
constexpr double kFdTolerance = 1e-9;

class ChunkReferenceGradients : public ::testing::TestWithParam<BwCase> {};

TEST_P(ChunkReferenceGradients, MatchCentralDifferences) {
  const BwCase& c = GetParam();
  SCOPED_TRACE(seed_note(c.fwd.name));
  std::mt19937_64 rng(case_seed(c.fwd.name));
  const bw_inputs<double> x = make_bw_inputs<double>(c, rng);
  expect_central_differences(c, x, reference_grads(c, x), magnitudes_of(c, x), kStep, kFdTolerance);
}

const std::vector<BwCase> kReferenceCases = {
    {Case("fd_len1").len(1).dim(3, 5), false},
    {Case("fd_len5_gqa").len(5).heads(4, 2).dim(3, 5), false},
    {Case("fd_len9_mqa_init").len(9).heads(2, 1).dim(4, 2).init(), true},
    {Case("fd_len7_dfinal_bhsd").len(7).dim(3, 4).bhsd().scale(0.7), true},
    {Case("fd_len8_large_decay_init").len(8).heads(2, 2).dim(2, 3).decays(D::large).init(), true},
    {Case("fd_len6_no_decay").len(6).heads(2, 1).dim(3, 3).decays(D::none).init(), true},
    {Case("fd_linear_causal").linear().len(6).heads(2, 1).dim(3, 4).init().scale(0.5), true},
    {Case("fd_linear_noncausal_cross").linear(false).len(5, 8).heads(4, 2).dim(3, 4).init(), true},
};

INSTANTIATE_TEST_SUITE_P(Cases, ChunkReferenceGradients, ::testing::ValuesIn(kReferenceCases), bw_name);

// ---------------------------------------------------------------------------------------------
// The kernel against the reference, by the accuracy rule

template <class T>
void check_backward(const BwCase& c) {
  SCOPED_TRACE(seed_note(c.fwd.name));
  std::mt19937_64 rng(case_seed(c.fwd.name));
  const bw_inputs<T> x = make_bw_inputs<T>(c, rng);
  expect_backward_within_rule(c, x, naive_grads(c, x), magnitudes_of(c, x));
}

class ChunkBackwardAccuracy : public ::testing::TestWithParam<BwCase> {};

TEST_P(ChunkBackwardAccuracy, MatchesReference) {
  const BwCase c{for_this_run(GetParam().fwd), GetParam().dfinal, GetParam().dinit};
  if (c.fwd.f64_) check_backward<double>(c);
  else check_backward<float>(c);
}

const std::vector<BwCase> kAccuracyCases = {
    // lengths: one token, less than a chunk, partial last chunks
    {Case("len1").len(1), false},
    {Case("len7_d40_e72").len(7).dim(40, 72), false},
    {Case("len113_d64").len(113).dim(64), false},
    {Case("len300_d40_e72_gqa_init_dfinal").batch(1).len(300).heads(4, 2).dim(40, 72).init().big(), true},
    {Case("len300_d64_block16").batch(1).len(300).dim(64).block(16).big(), false},
    {Case("len300_d32_block64_mqa").batch(1).len(300).heads(4, 1).dim(32).block(64).big(), true},
    // head dims: 1, odd, d != e both ways
    {Case("d1_e7").len(50).dim(1, 7), false},
    {Case("d72_e40").len(100).dim(72, 40).heads(2, 1), true},
    // grouped-query attention
    {Case("gqa_h4_kv2").len(90).heads(4, 2).dim(32).init(), true},
    {Case("mqa_h4_kv1").len(90).heads(4, 1).dim(24, 40), true},
    // head groups of uneven size whose query heads straddle K/V heads (9 over 3 at B = 1: query
    // items of 4, 4 and 1 heads, key items of 2 and 1)
    {Case("heads9_kv3_groups").batch(1).len(130).heads(9, 3).dim(24, 40).decays(D::mixed).init(), true},
    {Case("linear_noncausal_heads9_kv3").linear(false).batch(1).len(90, 130).heads(9, 3).dim(24, 40).init(), true},
    // decays: none, zeros, slopes (the default), large (λ^B underflows), mixed
    {Case("decay_none").len(130).decays(D::none).init(), true},
    {Case("decay_zero").len(130).decays(D::zero), false},
    {Case("decay_large").len(130).decays(D::large).init(), true},
    {Case("decay_mixed").len(130).heads(6, 2).decays(D::mixed), true},
    {Case("decay_huge").len(130).decays(D::huge).init(), true},
    // block sizes
    {Case("block1").len(40).block(1).init(), true},
    {Case("block33").len(130).block(33), false},
    {Case("block1024").len(130).block(1024), true},
    // options and call forms
    {Case("scale_0_125").len(130).scale(0.125), true},
    {Case("initial_state_only").len(70).init(), false},
    {Case("dfinal_only").len(70), true},
    {Case("no_state_gradient").len(70).init(), true, false},
    {Case("bhsd").len(113).dim(24, 40).bhsd().init(), true},
    {Case("magnitude_10").len(200).magnitude(10), false},
    // double
    {Case("f64_len113_gqa").f64().len(113).heads(4, 2).dim(40, 24).init(), true},
    {Case("f64_block16_bhsd").f64().len(90).block(16).bhsd(), true},
    // linear attention, identity map, no normaliser: causal (lightning's path, no decay) and not
    {Case("linear_causal_len113_gqa").linear().len(113).heads(4, 2).dim(40, 72).init(), true},
    {Case("linear_causal_block16_bhsd").linear().len(90).block(16).bhsd(), false},
    {Case("linear_noncausal_nq113_nk300").linear(false).len(113, 300).heads(4, 2).dim(40, 24).init(), true},
    {Case("linear_noncausal_nq1_nk7").linear(false).len(1, 7).heads(4, 1), true},
    {Case("linear_noncausal_nq300_nk1_bhsd").linear(false).len(300, 1).dim(72, 40).bhsd().scale(0.125), false},
    {Case("linear_noncausal_f64").f64().linear(false).len(70, 90).heads(4, 2).init(), true},
    {Case("linear_noncausal_nk0_init").linear(false).len(5, 0).init(), true},
    {Case("linear_noncausal_nq0").linear(false).len(0, 70), true},
};

INSTANTIATE_TEST_SUITE_P(Cases, ChunkBackwardAccuracy, ::testing::ValuesIn(kAccuracyCases), bw_name);

// ---------------------------------------------------------------------------------------------
// Thread invariance: serial, 1, 2 and 3 threads give the same bits

class ChunkBackwardThreads : public ::testing::TestWithParam<BwCase> {};

TEST_P(ChunkBackwardThreads, BitwiseIdenticalForAnyThreadCount) {
  const BwCase& c = GetParam();
  SCOPED_TRACE(seed_note(c.fwd.name));
  std::mt19937_64 rng(case_seed(c.fwd.name));
  expect_same_bits_on_any_thread_count(c, make_bw_inputs<float>(c, rng));
}

const std::vector<BwCase> kThreadCases = {
    {Case("threads_gqa_init").batch(2).len(300).heads(4, 2).dim(64).init(), true},
    {Case("threads_one_kv_head").batch(1).len(333).heads(3, 1).dim(40, 72).block(32), true},
    {Case("threads_bhsd_h1").batch(1).len(257).heads(1, 1).dim(64).bhsd(), true},
    {Case("threads_heads9_kv3").batch(1).len(200).heads(9, 3).dim(32, 40).init(), true},
    {Case("threads_linear_noncausal").linear(false).batch(1).len(200, 333).heads(4, 2).dim(64).init(), true},
};

INSTANTIATE_TEST_SUITE_P(Cases, ChunkBackwardThreads, ::testing::ValuesIn(kThreadCases), bw_name);

// ---------------------------------------------------------------------------------------------
// Zero decay is causal linear attention (identity map, no normaliser): the same gradients, bit for bit

TEST(LightningBackwardProperties, ZeroDecayEqualsCausalLinear) {
  for (const D decay : {D::zero, D::none}) {
    const BwCase c{Case("zero_decay_is_linear").len(150).heads(4, 2).dim(40, 24).block(32).init().decays(decay), true};
    SCOPED_TRACE(seed_note(c.fwd.name));
    std::mt19937_64 rng(case_seed(c.fwd.name));
    const bw_inputs<float> x = make_bw_inputs<float>(c, rng);
    BwCase lin = c;
    lin.fwd.linear();
    expect_bitwise_equal(c, kernel_grads(c, x), kernel_grads(lin, x));
  }
}

// ---------------------------------------------------------------------------------------------
// Eigen::TensorMap over caller memory gives the same bits as Eigen::Tensor

TEST(LightningBackwardCallForms, TensorMapsEqualTensors) {
  const BwCase c{Case("tensor_map").len(100).heads(4, 2).dim(24, 40).init(), true};
  SCOPED_TRACE(seed_note(c.fwd.name));
  std::mt19937_64 rng(case_seed(c.fwd.name));
  const bw_inputs<float> x = make_bw_inputs<float>(c, rng);
  const bw_grads<float> want = kernel_grads(c, x);
  bw_grads<float> got = make_grads<float>(c);
  std::vector<float> dq(std::size_t(got.dq.size())), dk(std::size_t(got.dk.size())), dv(std::size_t(got.dv.size()));
  using cmap = Eigen::TensorMap<const tensor<float>>;
  using map = Eigen::TensorMap<tensor<float>>;
  run_backward(c, x, got, [&](const auto& opt, const auto& q, const auto& k, const auto& v, const auto& dout, auto& gq,
                              auto& gk, auto& gv) {
    map mq(dq.data(), gq.dimensions()), mk(dk.data(), gk.dimensions()), mv(dv.data(), gv.dimensions());
    fast_backward<xattn::simd::default_arch>(2, opt, cmap(q.data(), q.dimensions()), cmap(k.data(), k.dimensions()),
                                             cmap(v.data(), v.dimensions()), cmap(dout.data(), dout.dimensions()), mq,
                                             mk, mv);
    gq = mq, gk = mk, gv = mv;
  });
  expect_bitwise_equal(c, want, got);
}

// ---------------------------------------------------------------------------------------------
// 16-bit tensors: the float call on the rounded values, its gradients rounded (to nearest even)

template <class H, class G>
void check_chunk_backward16(bool linear) {
  SCOPED_TRACE(std::string(linear ? "linear elu+1 normalised" : "lightning") + ", " +
               (std::is_same_v<H, Eigen::bfloat16> ? "bfloat16" : "half") + " inputs, " +
               (std::is_same_v<G, float> ? "float" : "16-bit") + " gradients");
  std::mt19937_64 rng(case_seed("backward16"));
  const index b = 2, n = 77, hq = 4, hkv = 2, d = 24, e = 40;
  tensor<float> q(b, n, hq, d), k(b, n, hkv, d), v(b, n, hkv, e), dout(b, n, hq, e);
  for (tensor<float>* t : {&q, &k, &v, &dout}) {
    fill_random(*t, rng);
    *t = t->cast<H>().template cast<float>();  // the values 16-bit storage holds
  }
  const std::vector<double> decay = xattn::lightning_slopes(hq);
  const xattn::lightning_backward_options lopt{.forward = {.decay = decay, .block_size = 32}};
  const xattn::linear_backward_options copt{
      .forward = {.causal = true, .feature_map = xattn::feature::elu_plus_one, .normalize = true, .block_size = 32}};
  const auto run = [&](const auto& q2, const auto& k2, const auto& v2, const auto& do2, auto& dq2, auto& dk2,
                       auto& dv2) {
    if (linear) xattn::linear_attention_backward(device(2), q2, k2, v2, do2, dq2, dk2, dv2, copt);
    else xattn::lightning_attention_backward(device(2), q2, k2, v2, do2, dq2, dk2, dv2, lopt);
  };
  tensor<float> dq(q.dimensions()), dk(k.dimensions()), dv(v.dimensions());
  run(q, k, v, dout, dq, dk, dv);
  const tensor<H> q16 = q.cast<H>(), k16 = k.cast<H>(), v16 = v.cast<H>(), dout16 = dout.cast<H>();
  tensor<G> dq16(q.dimensions()), dk16(k.dimensions()), dv16(v.dimensions());
  run(q16, k16, v16, dout16, dq16, dk16, dv16);
  EXPECT_TRUE(bitwise_equal("dq", tensor<G>(dq.cast<G>()), dq16));
  EXPECT_TRUE(bitwise_equal("dk", tensor<G>(dk.cast<G>()), dk16));
  EXPECT_TRUE(bitwise_equal("dv", tensor<G>(dv.cast<G>()), dv16));
}

TEST(ChunkBackward16, EqualsFloatCallOnRoundedValues) {
  for (bool linear : {false, true}) {
    check_chunk_backward16<Eigen::bfloat16, Eigen::bfloat16>(linear);
    check_chunk_backward16<Eigen::half, Eigen::half>(linear);
    check_chunk_backward16<Eigen::bfloat16, float>(linear);
  }
}

// ---------------------------------------------------------------------------------------------
// Empty sequences: no token gives dinitial_state = dfinal_state and writes nothing else

TEST(LightningBackwardEmpty, ZeroLengthPassesTheStateGradientThrough) {
  const BwCase c{Case("empty").len(0).init(), true};
  std::mt19937_64 rng(case_seed(c.fwd.name));
  const bw_inputs<float> x = make_bw_inputs<float>(c, rng);
  const bw_grads<float> g = kernel_grads(c, x, 2);
  EXPECT_TRUE(bitwise_equal("dinitial_state", g.ds0, x.dsf));
  tensor<float> none(0, 3, 2, 8), none_grad(0, 3, 2, 8);
  xattn::lightning_attention_backward(none, none, none, none, none_grad, none_grad, none_grad);  // batch 0
}

// ---------------------------------------------------------------------------------------------
// Bad input: an xattn::error naming the function and the argument, nothing written

TEST(LightningBackwardErrors, BadInputThrowsNamingTheArgument) {
  const BwCase c{Case("errors").len(9).heads(4, 2).dim(16, 8).init(), true};
  std::mt19937_64 rng(case_seed(c.fwd.name));
  const bw_inputs<float> x = make_bw_inputs<float>(c, rng);
  bw_grads<float> g = make_grads<float>(c);
  option_data od;
  od.decay = decays_of(c.fwd);
  const xattn::lightning_backward_options good{.forward = lightning_opts(c.fwd, od), .dinitial_state = g.ds0,
                                               .dfinal_state = x.dsf};
  const std::string fn = "xattn::lightning_attention_backward";
  const auto expect_error = [&](const std::function<void()>& call, const std::string& arg) {
    for (tensor<float>* t : {&g.dq, &g.dk, &g.dv, &g.ds0}) t->setConstant(7.f);
    EXPECT_TRUE(throws_naming(call, fn, arg));
    for (const tensor<float>* t : {&g.dq, &g.dk, &g.dv, &g.ds0})
      ASSERT_TRUE(std::all_of(t->data(), t->data() + t->size(), [](float v) { return v == 7.f; }))
          << arg << ": written before the error";
  };
  const auto& [q, k, v, s0] = x.in;
  const auto call = [&](const auto& qq, const auto& kk, const auto& vv, const auto& dout, auto& dq, auto& dk, auto& dv,
                        const xattn::lightning_backward_options& opt) {
    return [&, opt] { xattn::lightning_attention_backward(qq, kk, vv, dout, dq, dk, dv, opt); };
  };
  tensor<float> bad_dout(2, 9, 4, 7), bad_dq(2, 9, 4, 15), bad_dk(2, 10, 2, 16), bad_dv(2, 9, 2, 9);
  tensor<float> bad_state(2, 4, 16, 9), k3(2, 9, 2, 15);  // k3: head_dim != q head_dim
  tensor<double> double_state(2, 4, 16, 8);
  k3.setZero();
  expect_error(call(q, k, v, bad_dout, g.dq, g.dk, g.dv, good), "dout");
  expect_error(call(q, k, v, x.dout, bad_dq, g.dk, g.dv, good), "dq");
  expect_error(call(q, k, v, x.dout, g.dq, bad_dk, g.dv, good), "dk");
  expect_error(call(q, k, v, x.dout, g.dq, g.dk, bad_dv, good), "dv");
  expect_error(call(q, k3, v, x.dout, g.dq, g.dk, g.dv, good), "k");
  auto opt = good;
  opt.dinitial_state = bad_state;
  expect_error(call(q, k, v, x.dout, g.dq, g.dk, g.dv, opt), "dinitial_state");
  opt = good;
  opt.dinitial_state = double_state;
  expect_error(call(q, k, v, x.dout, g.dq, g.dk, g.dv, opt), "dinitial_state");
  opt = good;
  opt.dfinal_state = bad_state;
  expect_error(call(q, k, v, x.dout, g.dq, g.dk, g.dv, opt), "dfinal_state");
  opt = good;
  tensor<float> fin(2, 4, 16, 8);
  opt.forward.final_state = fin;
  expect_error(call(q, k, v, x.dout, g.dq, g.dk, g.dv, opt), "final_state");
  opt = good;
  opt.forward.compute = xattn::compute::bf16;
  expect_error(call(q, k, v, x.dout, g.dq, g.dk, g.dv, opt), "compute");
  opt = good;
  opt.forward.decay = std::span<const double>(od.decay).first(3);
  expect_error(call(q, k, v, x.dout, g.dq, g.dk, g.dv, opt), "decay");
  opt = good;
  opt.forward.initial_state = bad_state;
  expect_error(call(q, k, v, x.dout, g.dq, g.dk, g.dv, opt), "initial_state");
  // a gradient over an input, or over another gradient
  tensor<float> q2 = q, k2 = k;
  Eigen::TensorMap<tensor<float>> dq_over_q(q2.data(), q2.dimensions()), dv_over_dk(g.dk.data(), g.dk.dimensions());
  expect_error(call(q2, k, v, x.dout, dq_over_q, g.dk, g.dv, good), "dq");
  tensor<float> v_as_k = k;  // d = e here for dk and dv to share a shape
  tensor<float> dout16 = make_tensor<float>(c.fwd.lay_, 2, 9, 4, 16);
  dout16.setZero();
  opt = good;
  opt.dinitial_state = {};
  opt.dfinal_state = {};
  opt.forward.initial_state = {};
  expect_error(call(q, k2, v_as_k, dout16, g.dq, g.dk, dv_over_dk, opt), "dk");
  Eigen::TensorMap<const tensor<float>> dout_over_q(q.data(), x.dout.dimensions());
  expect_error(call(q, k, v, dout_over_q, g.dq, g.dk, g.dv, good), "dout");
  // linear attention: a custom map has no derivative here; a normalised call's state gradient has e + 1 columns
  const std::string lfn = "xattn::linear_attention_backward";
  const xattn::linear_backward_options lgood{.forward = {.causal = true}};
  const auto custom = xattn::feature_map::custom(q.dimension(3), [](auto in, auto out) {
    for (std::size_t i = 0; i < in.size(); ++i) out[i] = in[i];
  });
  tensor<float> dstate_e(q.dimension(0), q.dimension(2), q.dimension(3), v.dimension(3));
  for (const auto& [opt, arg] : {std::pair{xattn::linear_backward_options{.forward = {.causal = true, .feature_map = custom}},
                                           "feature_map"},
                                 std::pair{xattn::linear_backward_options{.forward = {.normalize = true},
                                                                          .dinitial_state = dstate_e},
                                           "dinitial_state"},
                                 std::pair{xattn::linear_backward_options{.forward = {.block_size = 2000}},
                                           "block_size"}}) {
    for (tensor<float>* t : {&g.dq, &g.dk, &g.dv}) t->setConstant(7.f);
    EXPECT_TRUE(throws_naming([&] { xattn::linear_attention_backward(q, k, v, x.dout, g.dq, g.dk, g.dv, opt); }, lfn, arg));
    for (const tensor<float>* t : {&g.dq, &g.dk, &g.dv})
      ASSERT_TRUE(std::all_of(t->data(), t->data() + t->size(), [](float u) { return u == 7.f; })) << arg;
  }
  xattn::linear_attention_backward(q, k, v, x.dout, g.dq, g.dk, g.dv, lgood);  // and the good call passes
  // the reference validates the same way, under its own name
  const tensor<double> qd = cast_to<double>(q), kd = cast_to<double>(k), vd = cast_to<double>(v);
  tensor<double> dqd(q.dimensions()), dkd(k.dimensions()), dvd(v.dimensions()), bad_doutd(2, 9, 4, 7);
  EXPECT_TRUE(throws_naming([&] { xattn::reference::lightning_attention_backward(qd, kd, vd, bad_doutd, dqd, dkd, dvd); },
                            "xattn::reference::lightning_attention_backward", "dout"));
}

}  // namespace
}  // namespace xattn_test
