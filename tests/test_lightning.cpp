// tests/test_lightning.cpp — xattn::lightning_attention and xattn::lightning_step against the fp64
// reference (the official repository's math in double; flash-attention's accuracy rule, see
// test_util.hpp), their properties (segments with state passing equal one call, decoding step by
// step equals prefill, zero decay is causal linear attention, block size and thread count do not
// matter), the decay-rate helpers, and bad input.
#include "chunk_test_util.hpp"

namespace xattn_test {
namespace {

using namespace chunk;
using D = chunk::decay;

// ---------------------------------------------------------------------------------------------
// Accuracy against the reference, case by case

class LightningAccuracy : public ::testing::TestWithParam<Case> {};

TEST_P(LightningAccuracy, MatchesReference) {
  const Case c = for_this_run(GetParam());
  if (c.f64_) check_accuracy<double>(c);
  else check_accuracy<float>(c);
}

const std::vector<Case> kAccuracyCases = {
    // lengths: one token, less than a chunk, exactly one, one past, many with a partial last chunk
    Case("len1").len(1),
    Case("len7_d40_e24").len(7).dim(40, 24),
    Case("len64_one_chunk").len(64).dim(32),
    Case("len65_one_past").len(65).dim(32),
    Case("len113_d64").len(113).dim(64),
    Case("len300_d128").batch(1).len(300).dim(128).big(),
    Case("len1000_d64_h1_windowed").batch(1).heads(1, 1).len(1000).dim(64).big(),
    Case("len1000_d64_h2_per_head").batch(1).heads(2, 2).len(1000).dim(64).big(),
    Case("len1000_d16_h1_block8_windows").batch(1).heads(1, 1).len(1000).block(8).big(),
    // head dims: 1, odd, d != e both ways, not powers of two
    Case("d1").len(113).dim(1),
    Case("d1_e7").len(50).dim(1, 7),
    Case("d7_e1").len(50).dim(7, 1),
    Case("d72_e80").len(100).dim(72, 80),
    Case("d128_e16").len(100).dim(128, 16).heads(2, 1),
    Case("d16_e128").len(100).dim(16, 128).heads(2, 1),
    // grouped-query attention: each query head keeps its own state
    Case("gqa_h8_kv2").heads(8, 2).len(90).dim(32),
    Case("gqa_h6_kv3_slopes_not_pow2").heads(6, 3).len(90).dim(32),
    Case("mqa_h4_kv1").heads(4, 1).len(90).dim(32),
    // decays: none (empty span), zeros, slopes, large (λ^B underflows), huge (λ^2 underflows), mixed
    Case("decay_none").len(130).decays(D::none),
    Case("decay_zero").len(130).decays(D::zero),
    Case("decay_large").len(130).decays(D::large),
    Case("decay_huge").len(130).decays(D::huge),
    Case("decay_mixed").heads(6, 2).len(130).decays(D::mixed),
    Case("decay_large_f64").f64().len(130).decays(D::large),
    // block sizes, including 1 and larger than the sequence
    Case("block1").len(40).block(1),
    Case("block16").len(130).block(16),
    Case("block33").len(130).block(33),
    Case("block100_d1").len(130).dim(1).block(100),
    Case("block1024").len(130).block(1024),
    // options and call forms
    Case("scale_0_125").len(130).scale(0.125),
    Case("initial_state").len(130).init(),
    Case("initial_state_windowed").batch(1).heads(1, 1).len(500).init().big(),
    Case("initial_state_decay_large").len(70).init().decays(D::large),
    Case("bhsd").len(130).dim(24, 40).bhsd(),
    Case("tensor_map").len(100).tmap(),
    Case("tensor_map_bhsd_init").len(100).bhsd().tmap().init(),
    Case("magnitude_10").len(200).magnitude(10),
    // double
    Case("f64_len113").f64().len(113).dim(40, 24),
    Case("f64_gqa_init_bhsd").f64().heads(6, 2).len(90).init().bhsd(),
    Case("f64_windowed").f64().batch(1).heads(1, 1).len(300).block(16),
};

INSTANTIATE_TEST_SUITE_P(Cases, LightningAccuracy, ::testing::ValuesIn(kAccuracyCases), case_name);

// ---------------------------------------------------------------------------------------------
// The scalar path, lightning_attention<xattn::simd::scalar> and lightning_step<...>: the same rule

class LightningScalarPath : public ::testing::TestWithParam<Case> {};

TEST_P(LightningScalarPath, MatchesReference) {
  const Case c = for_this_run(GetParam());
  if (c.f64_) check_scalar_path<double>(c);
  else check_scalar_path<float>(c);
}

const std::vector<Case> kScalarCases = {
    Case("per_unit_len37_d40_e24_gqa_init").heads(3, 1).len(37).dim(40, 24).block(16).init(),  // one unit per item
    Case("windowed_len101_d72_e7").batch(1).heads(1, 1).len(101).dim(72, 7).block(16),         // chunks in parallel
    Case("f64_len37_d24_e40").f64().heads(2, 1).len(37).dim(24, 40).block(8).init(),
};

INSTANTIATE_TEST_SUITE_P(Cases, LightningScalarPath, ::testing::ValuesIn(kScalarCases), case_name);

// ---------------------------------------------------------------------------------------------
// Thread-count invariance: serial, 1, 2 and 3 threads give the same bits

class LightningThreads : public ::testing::TestWithParam<Case> {};

TEST_P(LightningThreads, BitwiseIdenticalForAnyThreadCount) {
  const Case c = for_this_run(GetParam());
  if (c.f64_) check_threads<double>(c);
  else check_threads<float>(c);
}

const std::vector<Case> kThreadCases = {
    Case("per_unit_b2_h8").heads(8, 4).len(400).dim(32),               // many units: one item per unit
    Case("windowed_b1_h1").batch(1).heads(1, 1).len(700).block(16),    // one unit: chunks in parallel
    Case("windowed_b1_h1_windows").batch(1).heads(1, 1).len(2000).block(8).dim(8).big(),  // several windows
    Case("windowed_init_f64").f64().batch(1).heads(1, 1).len(300).block(32).init(),
    Case("per_head_b1_h3_gqa").batch(1).heads(3, 1).len(300).block(32).init(),
};

INSTANTIATE_TEST_SUITE_P(Cases, LightningThreads, ::testing::ValuesIn(kThreadCases), case_name);

// ---------------------------------------------------------------------------------------------
// Properties

class LightningProperty : public ::testing::Test {
 protected:
  Case c = for_this_run(Case("property").batch(2).heads(4, 2).len(300).dim(32, 24).big());
  std::mt19937_64 rng{case_seed("lightning property")};
  inputs<float> in = make_inputs<float>(c, rng);
  std::vector<double> decay = decays_of(c);
};

/// Rows [t0, t1) of a [b, n, h, d] tensor.
tensor<float> rows(const tensor<float>& x, index t0, index t1) {
  const Eigen::array<index, 4> off{0, t0, 0, 0}, ext{x.dimension(0), t1 - t0, x.dimension(2), x.dimension(3)};
  return x.slice(off, ext);
}

TEST_F(LightningProperty, SegmentsWithStatePassingEqualOneCall) {
  const outputs<double> ref = oracle(c, in);
  const outputs<float> nv = naive(c, in);
  const magnitudes m = magnitudes_of(c, in);
  tensor<float> out(c.b_, c.nq_, c.hq_, c.e()), state(c.b_, c.hq_, c.d_, c.e());
  const index n = c.nq_;  // a one-token segment and ones not multiples of the block
  const index cuts[] = {0, n / 3, n / 3 + 1, 2 * n / 3 + 17, n};
  for (int s = 0; s + 1 < int(std::size(cuts)); ++s) {
    const tensor<float> q = rows(in.q, cuts[s], cuts[s + 1]), k = rows(in.k, cuts[s], cuts[s + 1]),
                        v = rows(in.v, cuts[s], cuts[s + 1]);
    tensor<float> o(c.b_, cuts[s + 1] - cuts[s], c.hq_, c.e());
    xattn::lightning_options opt{.decay = decay, .final_state = state};
    if (s > 0) opt.initial_state = state;  // the same tensor in and out
    xattn::lightning_attention(device(2), q, k, v, o, opt);
    const Eigen::array<index, 4> off{0, cuts[s], 0, 0};
    out.slice(off, o.dimensions()) = o;
  }
  EXPECT_TRUE(within_rule("segmented out", out, nv.out, ref.out, sum_eps<float>(m.out)));
  EXPECT_TRUE(within_rule("segmented final state", state, nv.state, ref.state, sum_eps<float>(m.state)));
  outputs<float> one = make_outputs<float>(c);
  run_kernel(c, in, one);
  EXPECT_LE(max_abs_diff(out, one.out).max, 4 * sum_eps<float>(m.out));
}

TEST_F(LightningProperty, DecodingStepByStepEqualsPrefill) {
  const outputs<double> ref = oracle(c, in);
  const outputs<float> nv = naive(c, in);
  const magnitudes m = magnitudes_of(c, in);
  const index prompt = 37;
  tensor<float> out(c.b_, c.nq_, c.hq_, c.e()), state(c.b_, c.hq_, c.d_, c.e());
  tensor<float> o = rows(out, 0, prompt);
  xattn::lightning_attention(rows(in.q, 0, prompt), rows(in.k, 0, prompt), rows(in.v, 0, prompt), o,
                             {.decay = decay, .final_state = state});
  out.slice(Eigen::array<index, 4>{0, 0, 0, 0}, o.dimensions()) = o;
  tensor<float> state2 = state;
  for (index t = prompt; t < c.nq_; ++t) {
    const tensor<float> q = rows(in.q, t, t + 1), k = rows(in.k, t, t + 1), v = rows(in.v, t, t + 1);
    tensor<float> step(c.b_, 1, c.hq_, c.e()), step2(c.b_, 1, c.hq_, c.e());
    xattn::lightning_step(q, k, v, step, state, {.decay = decay});
    xattn::lightning_step(device(2), q, k, v, step2, state2, {.decay = decay});
    ASSERT_TRUE(bitwise_equal("step on 2 threads", step, step2));
    out.slice(Eigen::array<index, 4>{0, t, 0, 0}, step.dimensions()) = step;
  }
  EXPECT_TRUE(bitwise_equal("state on 2 threads", state, state2));
  EXPECT_TRUE(within_rule("decoded out", out, nv.out, ref.out, sum_eps<float>(m.out)));
  EXPECT_TRUE(within_rule("decoded state", state, nv.state, ref.state, sum_eps<float>(m.state)));
}

TEST_F(LightningProperty, ZeroDecayIsCausalLinearAttentionWithoutNormaliser) {
  // Same engine, same expressions: the same bits, with decay 0 given as zeros or left empty.
  const std::vector<double> zeros(std::size_t(c.hq_), 0.0);
  tensor<float> a(c.b_, c.nq_, c.hq_, c.e()), b(a.dimensions()), l(a.dimensions());
  tensor<float> sa(c.b_, c.hq_, c.d_, c.e()), sb(sa.dimensions()), sl(sa.dimensions());
  xattn::lightning_attention(in.q, in.k, in.v, a, {.decay = zeros, .scale = 1, .final_state = sa});
  xattn::lightning_attention(in.q, in.k, in.v, b, {.final_state = sb});
  xattn::linear_attention(in.q, in.k, in.v, l,
                          {.causal = true, .feature_map = xattn::feature::identity, .normalize = false, .final_state = sl});
  EXPECT_TRUE(bitwise_equal("zero decay vs linear", a, l));
  EXPECT_TRUE(bitwise_equal("empty decay vs linear", b, l));
  EXPECT_TRUE(bitwise_equal("zero decay state vs linear", sa, sl));
  EXPECT_TRUE(bitwise_equal("empty decay state vs linear", sb, sl));
}

TEST_F(LightningProperty, BlockSizeDoesNotMatter) {
  const outputs<double> ref = oracle(c, in);
  const outputs<float> nv = naive(c, in);
  const magnitudes m = magnitudes_of(c, in);
  outputs<float> base = make_outputs<float>(c);
  run_kernel(c, in, base);
  for (index bs : {index(1), index(5), index(16), index(64), c.nq_ - 1, c.nq_, index(1024)}) {
    SCOPED_TRACE("block_size " + std::to_string(bs));
    Case cb = c;
    cb.block(bs);
    outputs<float> o = make_outputs<float>(cb);
    run_kernel(cb, in, o);
    EXPECT_TRUE(within_rule("out", o.out, nv.out, ref.out, sum_eps<float>(m.out)));
    EXPECT_TRUE(within_rule("final_state", o.state, nv.state, ref.state, sum_eps<float>(m.state)));
    EXPECT_LE(max_abs_diff(o.out, base.out).max, 4 * sum_eps<float>(m.out));
  }
}

TEST_F(LightningProperty, ChunksInParallelGiveTheBitsOfOneUnitAtATime) {
  // With one batch × one head the chunks of the sequence run in parallel (windowed order); with the
  // same data duplicated into a second batch there are two units, each run start to end. Both
  // evaluate the same expressions.
  Case c1 = for_this_run(Case("windowed").batch(1).heads(1, 1).len(1000).dim(32).block(16).big());
  Case c2 = c1;
  c2.batch(2);
  std::mt19937_64 r(case_seed("windowed vs per unit"));
  const inputs<float> one = make_inputs<float>(c1, r);
  inputs<float> two{tensor<float>(2, c1.nq_, 1, 32), tensor<float>(2, c1.nq_, 1, 32), tensor<float>(2, c1.nq_, 1, 32), {}};
  for (index b = 0; b < 2; ++b) {
    const Eigen::array<index, 4> off{b, 0, 0, 0};
    two.q.slice(off, one.q.dimensions()) = one.q;
    two.k.slice(off, one.k.dimensions()) = one.k;
    two.v.slice(off, one.v.dimensions()) = one.v;
  }
  outputs<float> o1 = make_outputs<float>(c1), o2 = make_outputs<float>(c2);
  run_kernel(c1, one, o1, 2);
  run_kernel(c2, two, o2, 2);
  const Eigen::array<index, 4> zero{0, 0, 0, 0};
  const tensor<float> first = o2.out.slice(zero, o1.out.dimensions()), first_state = o2.state.slice(zero, o1.state.dimensions());
  EXPECT_TRUE(bitwise_equal("out", o1.out, first));
  EXPECT_TRUE(bitwise_equal("final_state", o1.state, first_state));
}

TEST(Lightning, LargeDecayForgetsThePast) {
  // s = 1e3: every λ^m with m >= 1 underflows to 0, so o_t = scale·(q_t·k_t)·v_t exactly.
  const index n = 70, h = 2, d = 8;
  tensor<float> q(1, n, h, d), k(1, n, h, d), v(1, n, h, d), o(1, n, h, d);
  std::mt19937_64 rng(case_seed("large decay"));
  fill_random(q, rng), fill_random(k, rng), fill_random(v, rng);
  const std::vector<double> decay{1e3, 1e3};
  xattn::lightning_attention(q, k, v, o, {.decay = decay});
  for (index t = 0; t < n; ++t)
    for (index hh = 0; hh < h; ++hh) {
      double qk = 0;
      for (index c = 0; c < d; ++c) qk += double(q(0, t, hh, c)) * double(k(0, t, hh, c));
      for (index c = 0; c < d; ++c) EXPECT_NEAR(o(0, t, hh, c), qk * v(0, t, hh, c), 1e-5) << t << " " << hh;
    }
}

// ---------------------------------------------------------------------------------------------
// Decay rates of the published conventions

TEST(LightningDecay, OfficialSlopesPowerOfTwo) {
  // _build_slope_tensor(8): start = 2^(−2^−(log2 8 − 3)) = 1/2, slopes 2^−1 .. 2^−8
  const std::vector<double> s = xattn::lightning_slopes(8);
  ASSERT_EQ(s.size(), 8u);
  for (int h = 0; h < 8; ++h) EXPECT_DOUBLE_EQ(s[std::size_t(h)], std::exp2(-(h + 1)));
  EXPECT_DOUBLE_EQ(xattn::lightning_slopes(1)[0], std::exp2(-8.0));
  const std::vector<double> s4 = xattn::lightning_slopes(4);  // 2^−2, 2^−4, 2^−6, 2^−8
  for (int h = 0; h < 4; ++h) EXPECT_DOUBLE_EQ(s4[std::size_t(h)], std::exp2(-2.0 * (h + 1)));
}

TEST(LightningDecay, OfficialSlopesOtherHeadCounts) {
  // 12 heads: the 8 slopes of 8 heads, then slopes 1, 3, 5, 7 (1-based) of 16 heads: 2^(−k/2).
  const std::vector<double> s = xattn::lightning_slopes(12);
  ASSERT_EQ(s.size(), 12u);
  for (int h = 0; h < 8; ++h) EXPECT_DOUBLE_EQ(s[std::size_t(h)], std::exp2(-(h + 1)));
  const double expect_tail[] = {std::exp2(-0.5), std::exp2(-1.5), std::exp2(-2.5), std::exp2(-3.5)};
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(s[std::size_t(8 + i)], expect_tail[i], 1e-15);
  // 6 heads: 4 slopes of 4 heads (2^−2k), then slopes 1 and 3 of 8 heads: 2^−1, 2^−3
  const std::vector<double> s6 = xattn::lightning_slopes(6);
  ASSERT_EQ(s6.size(), 6u);
  EXPECT_DOUBLE_EQ(s6[4], 0.5);
  EXPECT_DOUBLE_EQ(s6[5], 0.125);
  const std::vector<double> s3 = xattn::lightning_slopes(3);  // 2 heads' 2^−4, 2^−8, then 4 heads' first, 2^−2
  EXPECT_DOUBLE_EQ(s3[0], std::exp2(-4.0));
  EXPECT_DOUBLE_EQ(s3[1], std::exp2(-8.0));
  EXPECT_DOUBLE_EQ(s3[2], std::exp2(-2.0));
}

TEST(LightningDecay, PerLayerFactor) {
  // TransNormerLLM / MiniMax-01: slopes · (1 − l/(L−1) + 1e-5)
  const std::vector<double> base = xattn::lightning_slopes(8);
  const std::vector<double> first = xattn::lightning_slopes(8, 0, 24), last = xattn::lightning_slopes(8, 23, 24),
                            mid = xattn::lightning_slopes(8, 6, 24);
  for (int h = 0; h < 8; ++h) {
    EXPECT_DOUBLE_EQ(first[std::size_t(h)], base[std::size_t(h)] * (1 + 1e-5));
    EXPECT_DOUBLE_EQ(last[std::size_t(h)], base[std::size_t(h)] * 1e-5);
    EXPECT_DOUBLE_EQ(mid[std::size_t(h)], base[std::size_t(h)] * (1 - 6.0 / 23.0 + 1e-5));
  }
  EXPECT_TRUE(throws_naming([] { xattn::lightning_slopes(8, 0, 1); }, "xattn::lightning_slopes", "num_layers"));
  EXPECT_TRUE(throws_naming([] { xattn::lightning_slopes(8, 24, 24); }, "xattn::lightning_slopes", "layer"));
  EXPECT_TRUE(throws_naming([] { xattn::lightning_slopes(0); }, "xattn::lightning_slopes", "heads"));
}

TEST(LightningDecay, FlashLinearAttentionConvention) {
  // fla's chunk_lightning_attn: g_gamma = −(8/H)·(1 − l/L)·h; rates are −g_gamma
  const std::vector<double> s = xattn::fla_lightning_decay(8, 3, 12);
  for (int h = 0; h < 8; ++h) EXPECT_DOUBLE_EQ(s[std::size_t(h)], 1.0 * (1 - 3.0 / 12.0) * h);
  EXPECT_EQ(s[0], 0.0);  // head 0 is undecayed in this convention
  const std::vector<double> g{-0.5, -0.0, -2.25};
  EXPECT_EQ(xattn::decay_from_g_gamma(g), (std::vector<double>{0.5, 0.0, 2.25}));
  const std::vector<double> bad{-0.5, 0.1};
  EXPECT_TRUE(throws_naming([&] { xattn::decay_from_g_gamma(bad); }, "xattn::decay_from_g_gamma", "g_gamma"));
}

// ---------------------------------------------------------------------------------------------
// Bad input: xattn::error naming the function and the argument, nothing written

/// A lightning call from TensorMaps over std::vectors: q [2, 5, 4, 8], k/v [2, 5, 2, 8 | 6],
/// out [2, 5, 4, 6], states [2, 4, 8, 6]; each case changes one thing.
struct bad_call {
  std::array<index, 4> qd{2, 5, 4, 8}, kd{2, 5, 2, 8}, vd{2, 5, 2, 6}, od{2, 5, 4, 6}, sd{2, 4, 8, 6}, fd{2, 4, 8, 6};
  std::vector<double> decay;
  bool init = false, fin = false, double_state = false, state_aliases_q = false, out_aliases_v = false;
  bool step = false;
  xattn::lightning_options opt;
};

struct BadCase {
  std::string name;
  std::string arg;
  std::function<void(bad_call&)> change;
};

void PrintTo(const BadCase& c, std::ostream* os) { *os << c.name; }

constexpr float kSentinel = 12345.f;

template <std::size_t R>
std::size_t elements(const std::array<index, R>& d) {
  std::size_t n = 1;
  for (index x : d) n *= std::size_t(std::max<index>(x, 0));
  return n;
}

void expect_rejected(const BadCase& bc) {
  bad_call c;
  bc.change(c);
  std::vector<float> qs(elements(c.qd) + 64, 0.25f), ks(elements(c.kd), -0.5f), vs(elements(c.vd) + 64, 0.75f),
      os(elements(c.od), kSentinel), ss(elements(c.sd), 1.5f), fs(elements(c.fd), kSentinel);
  std::vector<double> sdbl(elements(c.sd), 1.5);
  const auto q0 = qs, k0 = ks, v0 = vs, o0 = os, s0 = ss, f0 = fs;
  Eigen::TensorMap<const tensor<float>> q(qs.data(), c.qd), k(ks.data(), c.kd), v(vs.data(), c.vd);
  Eigen::TensorMap<tensor<float>> out(c.out_aliases_v ? vs.data() + 8 : os.data(), c.od);
  Eigen::TensorMap<const tensor<float>> s_in(ss.data(), c.sd);
  Eigen::TensorMap<const tensor<double>> s_in_d(sdbl.data(), c.sd);
  Eigen::TensorMap<tensor<float>> s_out(c.state_aliases_q ? qs.data() + 8 : fs.data(), c.fd);
  Eigen::TensorMap<tensor<float>> s_step(c.state_aliases_q ? qs.data() + 8 : ss.data(), c.sd);
  xattn::lightning_options opt = c.opt;
  opt.decay = c.decay;
  if (c.init) opt.initial_state = c.double_state ? xattn::state_cref(s_in_d) : xattn::state_cref(s_in);
  if (c.fin) opt.final_state = s_out;

  std::vector<std::pair<std::string, std::function<void()>>> entries;
  if (c.step) {
    entries = {{"xattn::lightning_step", [&] { xattn::lightning_step(q, k, v, out, s_step, opt); }},
               {"xattn::lightning_step", [&] { xattn::lightning_step(device(2), q, k, v, out, s_step, opt); }}};
  } else {
    entries = {{"xattn::lightning_attention", [&] { xattn::lightning_attention(q, k, v, out, opt); }},
               {"xattn::lightning_attention", [&] { xattn::lightning_attention(device(2), q, k, v, out, opt); }},
               {"xattn::reference::lightning_attention", [&] { xattn::reference::lightning_attention(q, k, v, out, opt); }}};
  }
  for (const auto& [fn, call] : entries) {
    SCOPED_TRACE(fn);
    EXPECT_TRUE(throws_naming(call, fn, bc.arg));
    EXPECT_TRUE(qs == q0 && ks == k0 && vs == v0) << "an input was written";
    EXPECT_TRUE(os == o0) << "out was written";
    EXPECT_TRUE(ss == s0 && fs == f0) << "a state was written";
  }
}

class LightningBadInput : public ::testing::TestWithParam<BadCase> {};

TEST_P(LightningBadInput, ThrowsNamingTheArgumentAndWritesNothing) { expect_rejected(GetParam()); }

TEST(LightningBadInput, TheUnchangedCallsAreAccepted) {
  const bad_call c;
  tensor<float> q(c.qd), k(c.kd), v(c.vd), out(c.od), s(c.sd), f(c.fd);
  q.setConstant(0.25f), k.setConstant(-0.5f), v.setConstant(0.75f), s.setConstant(0.f);
  const std::vector<double> decay(4, 0.5);
  EXPECT_NO_THROW(xattn::lightning_attention(q, k, v, out, {.decay = decay, .initial_state = s, .final_state = f}));
  EXPECT_NO_THROW(xattn::reference::lightning_attention(q, k, v, out, {.decay = decay}));
  tensor<float> q1(2, 1, 4, 8), k1(2, 1, 2, 8), v1(2, 1, 2, 6), o1(2, 1, 4, 6);
  q1.setConstant(0.25f), k1.setConstant(-0.5f), v1.setConstant(0.75f);
  EXPECT_NO_THROW(xattn::lightning_step(q1, k1, v1, o1, s, {.decay = decay}));
  EXPECT_FLOAT_EQ(o1(1, 0, 3, 5), 0.25f * -0.5f * 8 * 0.75f);  // from a zero state: q·k·v
}

const std::vector<BadCase> kBadCases = {
    {"decay_count", "decay", [](bad_call& c) { c.decay = {0.1, 0.2, 0.3}; }},
    {"decay_negative", "decay", [](bad_call& c) { c.decay = {0.1, -0.2, 0.3, 0.4}; }},
    {"decay_nan", "decay", [](bad_call& c) { c.decay = {0.1, kNaN, 0.3, 0.4}; }},
    {"decay_inf", "decay", [](bad_call& c) { c.decay = {0.1, 0.2, std::numeric_limits<double>::infinity(), 0.4}; }},
    {"scale_zero", "scale", [](bad_call& c) { c.opt.scale = 0; }},
    {"scale_nan", "scale", [](bad_call& c) { c.opt.scale = kNaN; }},
    {"block_negative", "block_size", [](bad_call& c) { c.opt.block_size = -1; }},
    {"block_too_large", "block_size", [](bad_call& c) { c.opt.block_size = 4096; }},
    {"k_batch", "k", [](bad_call& c) { c.kd[0] = 1; }},
    {"k_head_dim", "k", [](bad_call& c) { c.kd[3] = 4; }},
    {"k_seq_differs", "k", [](bad_call& c) { c.kd[1] = c.vd[1] = 6; }},
    {"v_seq", "v", [](bad_call& c) { c.vd[1] = 4; }},
    {"v_heads", "v", [](bad_call& c) { c.vd[2] = 1; }},
    {"heads_not_divisible", "k", [](bad_call& c) { c.kd[2] = c.vd[2] = 3; }},
    {"out_wrong_e", "out", [](bad_call& c) { c.od[3] = 8; }},
    {"out_wrong_heads", "out", [](bad_call& c) { c.od[2] = 2; }},
    {"out_overlaps_v", "out", [](bad_call& c) { c.out_aliases_v = true; }},
    {"q_empty_axis", "q", [](bad_call& c) { c.qd[3] = 0; }},
    {"initial_state_shape", "initial_state", [](bad_call& c) { c.init = true, c.sd = {2, 4, 6, 8}; }},
    {"initial_state_heads", "initial_state", [](bad_call& c) { c.init = true, c.sd = {2, 2, 8, 6}; }},
    {"initial_state_double", "initial_state", [](bad_call& c) { c.init = true, c.double_state = true; }},
    {"final_state_shape", "final_state", [](bad_call& c) { c.fin = true, c.fd = {2, 4, 8, 7}; }},
    {"final_state_overlaps_q", "final_state", [](bad_call& c) { c.fin = true, c.state_aliases_q = true; }},
    {"step_two_tokens", "q", [](bad_call& c) { c.step = true, c.qd[1] = c.kd[1] = c.vd[1] = c.od[1] = 2; }},
    {"step_state_shape", "state", [](bad_call& c) { c.step = true, c.qd[1] = c.kd[1] = c.vd[1] = c.od[1] = 1, c.sd = {2, 4, 6, 8}; }},
    {"step_state_overlaps_q", "state",
     [](bad_call& c) { c.step = true, c.qd[1] = c.kd[1] = c.vd[1] = c.od[1] = 1, c.state_aliases_q = true; }},
    {"step_with_initial_state", "initial_state",
     [](bad_call& c) { c.step = true, c.init = true, c.qd[1] = c.kd[1] = c.vd[1] = c.od[1] = 1; }},
    {"step_with_final_state", "final_state",
     [](bad_call& c) { c.step = true, c.fin = true, c.qd[1] = c.kd[1] = c.vd[1] = c.od[1] = 1; }},
    {"step_decay_count", "decay",
     [](bad_call& c) { c.step = true, c.decay = {1.0}, c.qd[1] = c.kd[1] = c.vd[1] = c.od[1] = 1; }},
};

INSTANTIATE_TEST_SUITE_P(Cases, LightningBadInput, ::testing::ValuesIn(kBadCases),
                         [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace xattn_test
