// tests/test_backward.cpp — the softmax-attention backward pass. The fp64 reference
// (xattn::reference::softmax_attention_backward) against central finite differences of the fp64
// forward reference, for every option; then xattn::softmax_attention_backward against that
// reference by the accuracy rule (test_util.hpp) with a naive backward in the element type, its
// thread invariance, fully masked rows, empty axes and bad input.
#include "backward_test_util.hpp"

#include <xattn/reference/sliding_window.hpp>
#include <xattn/sliding_window.hpp>

namespace xattn_test {
namespace {

// ---------------------------------------------------------------------------------------------
// The reference against central finite differences of the fp64 forward reference

/// The largest |∂L/∂x (central difference) − g| over the elements x of t, L = Σ dout ∘ softmax_attention.
double fd_error(problem<double>& p, tensor<double>& t, const tensor<double>& g, const xattn::softmax_options& opt,
                double& gmax) {
  return fd_error(p, t, g, opt.layout, gmax, [&](const auto& q, const auto& k, const auto& v, auto& out) {
    xattn::reference::softmax_attention(q, k, v, out, opt);
  });
}

class BackwardReference : public ::testing::TestWithParam<BCase> {};

TEST_P(BackwardReference, MatchesFiniteDifferences) {
  const BCase& c = GetParam();
  SCOPED_TRACE(seed_note(c.name));
  std::mt19937_64 rng(case_seed(c.name));
  problem<double> p = make_problem<double>(c, rng);
  const auto od = make_options(c, rng);
  const grads<double> g = reference_grads(p, od->opt);
  // h = 1e-6: truncation ~h²·L‴ ≈ 1e-12, cancellation ~1e-16·|L|/h ≈ 1e-9 for |L| ~ 10
  double gmax = 0;
  const double eq = fd_error(p, p.q, g.dq, od->opt, gmax), ek = fd_error(p, p.k, g.dk, od->opt, gmax),
               ev = fd_error(p, p.v, g.dv, od->opt, gmax);
  const double tol = 1e-7 * (1 + gmax);
  EXPECT_LE(eq, tol) << "dq";
  EXPECT_LE(ek, tol) << "dk";
  EXPECT_LE(ev, tol) << "dv";
  EXPECT_GT(gmax, 0.01) << "the case should have gradients";
}

const std::vector<BCase> kReferenceCases = {
    BCase("dense"),
    BCase("dense_mha").heads(3, 3),
    BCase("mqa").heads(4, 1),
    BCase("nq_lt_nk").len(3, 9),
    BCase("nq_gt_nk").len(9, 4),
    BCase("dv_ne_d").dim(6, 3),
    BCase("bhsd").bhsd().dim(5, 7),
    BCase("causal").causal(),
    BCase("causal_nq_gt_nk").len(9, 4).causal(),
    BCase("window_left").len(8).window(2, -1),
    BCase("window_right").len(8).window(-1, 1),
    BCase("window_both_cross").len(6, 9).window(1, 2),
    BCase("seqlens").batch(3).seqlens({5, 2, 0}, {7, 3, 4}),
    BCase("seqlens_causal").batch(3).causal().seqlens({5, 3, 1}, {7, 2, 0}),
    BCase("softcap").softcap(2).logits(4),
    BCase("softcap_scale").softcap(1.5).scale(0.7),
    BCase("alibi").alibi(),
    BCase("alibi_causal_cross").len(4, 8).alibi().causal(),
    BCase("bias").bias(),
    BCase("bias_one_head_neg_inf").bias(true, true),
    BCase("mask").mask(),
    BCase("mask_dead_rows").len(10, 7).mask(true),
    BCase("sinks").sinks(),
    BCase("sinks_mask_dead_rows").len(10, 7).sinks().mask(true),
    BCase("combo_everything").batch(3).heads(4, 2).len(6, 9).dim(5, 4).causal().window(4, -1).scale(0.6)
        .softcap(3).alibi().sinks().seqlens({6, 4, 1}, {9, 5, 3}).bias(true).mask(true),
    BCase("combo_everything_bhsd").batch(2).heads(4, 1).len(7, 5).dim(3, 6).window(2, 1).softcap(2).alibi()
        .sinks().bias().mask().bhsd(),
};

INSTANTIATE_TEST_SUITE_P(Cases, BackwardReference, ::testing::ValuesIn(kReferenceCases), bcase_name);


template <class T>
void check_backward(const BCase& c) {
  SCOPED_TRACE(seed_note(c.name));
  std::mt19937_64 rng(case_seed(c.name));
  const problem<T> p = make_problem<T>(c, rng);
  const auto od = make_options(c, rng);
  const xattn::softmax_options& opt = od->opt;
  const saved<T> fwd = forward(p, opt);
  const grads<double> ref = reference_grads(p, opt);
  const grads<T> naive = naive_backward(p, opt);
  double eps = rule_eps<T>(max_abs_score(p, opt));
  if (c.logits_ > 1) {
    // Large logits: the kernel's P = exp(X − LSE) carries the saved float LSE's rounding, a relative
    // error of ~ulp(LSE) that the naive backward (its own max and sum) does not have, and that the
    // gradients scale by their size. The allowance: 4 ulps of the largest |LSE| times the largest
    // exact gradient.
    double lse_max = 0, g_max = 0;
    for (index x = 0; x < fwd.lse.size(); ++x)
      if (std::isfinite(fwd.lse.data()[x])) lse_max = std::max(lse_max, std::abs(double(fwd.lse.data()[x])));
    for (const tensor<double>* t : {&ref.dq, &ref.dk, &ref.dv})
      for (index x = 0; x < t->size(); ++x) g_max = std::max(g_max, std::abs(t->data()[x]));
    eps += 4 * std::numeric_limits<T>::epsilon() * lse_max * g_max;
  }

  grads<T> g = make_grads<T>(p);
  xattn::softmax_attention_backward(p.q, p.k, p.v, fwd.out, fwd.lse, p.dout, g.dq, g.dk, g.dv, opt);
  EXPECT_TRUE(within_rule("dq", g.dq, naive.dq, ref.dq, eps));
  EXPECT_TRUE(within_rule("dk", g.dk, naive.dk, ref.dk, eps));
  EXPECT_TRUE(within_rule("dv", g.dv, naive.dv, ref.dv, eps));
  // rows that see no key, and keys no row sees, get exact zeros, and nothing is NaN
  EXPECT_TRUE(masked_grads_are_zero(g, ref, oracle(p.q, p.k, p.v, opt).lse, c.lay_));

  // two threads: the same bits
  grads<T> t = make_grads<T>(p);
  xattn::softmax_attention_backward(device(2), p.q, p.k, p.v, fwd.out, fwd.lse, p.dout, t.dq, t.dk, t.dv, opt);
  EXPECT_TRUE(bitwise_equal("dq on 2 threads", g.dq, t.dq));
  EXPECT_TRUE(bitwise_equal("dk on 2 threads", g.dk, t.dk));
  EXPECT_TRUE(bitwise_equal("dv on 2 threads", g.dv, t.dv));

  // the scalar path obeys the same rule
  grads<T> sc = make_grads<T>(p);
  xattn::softmax_attention_backward<xattn::simd::scalar>(p.q, p.k, p.v, fwd.out, fwd.lse, p.dout, sc.dq, sc.dk,
                                                         sc.dv, opt);
  EXPECT_TRUE(within_rule("dq (scalar path)", sc.dq, naive.dq, ref.dq, eps));
  EXPECT_TRUE(within_rule("dk (scalar path)", sc.dk, naive.dk, ref.dk, eps));
  EXPECT_TRUE(within_rule("dv (scalar path)", sc.dv, naive.dv, ref.dv, eps));
}

class BackwardAccuracy : public ::testing::TestWithParam<BCase> {};

TEST_P(BackwardAccuracy, MatchesReference) {
  const BCase& c = GetParam();
  if (c.f64_) check_backward<double>(c);
  else check_backward<float>(c);
}

const std::vector<BCase> kAccuracyCases = {
    // lengths 1, 17, 100, 257 and head dims 40, 64, 128
    BCase("len1_d64").len(1).dim(64),
    BCase("len17_d40").len(17).dim(40),
    BCase("len100_d64").len(100).dim(64),
    BCase("len257_d128").batch(1).len(257).dim(128),
    BCase("len100_d128_bhsd").len(100).dim(128).bhsd(),
    BCase("len257_d40_causal").batch(1).len(257).dim(40).causal(),
    // Nq != Nk, GQA, dv != d
    BCase("cross_nq17_nk257").len(17, 257).dim(64),
    BCase("cross_nq257_nk17").batch(1).len(257, 17).dim(64),
    BCase("cross_nq1_nk100").len(1, 100).dim(40),
    BCase("gqa4_h8_kv2").heads(8, 2).len(100, 70).dim(64),
    BCase("mqa_h3_kv1").heads(3, 1).len(100).dim(40),
    BCase("dv24_d40").len(100).dim(40, 24),
    BCase("dv128_d64_bhsd").len(100, 130).dim(64, 128).bhsd(),
    // causal, bottom-right aligned; windows
    BCase("causal_len100").len(100).dim(64).causal(),
    BCase("causal_nq17_nk257").len(17, 257).dim(64).causal(),
    BCase("causal_nq257_nk100").batch(1).len(257, 100).dim(64).causal(),
    BCase("window_l16_r5").len(257, 200).dim(64).window(16, 5).batch(1),
    BCase("window_0_0").len(100).dim(40).window(0, 0),
    BCase("window_left20_causal_bhsd").len(257).dim(64).window(20, -1).causal().bhsd().batch(1),
    // varlen, with empty rows and keys
    BCase("varlen").batch(3).len(100, 130).dim(64).seqlens({100, 17, 0}, {130, 65, 0}),
    BCase("varlen_causal").batch(3).len(100, 70).dim(64).causal().seqlens({100, 40, 1}, {70, 64, 5}),
    // softcap, ALiBi, sinks, bias, mask
    // logits ~100 and ~1e4 (the float LSE's rounding allowed for, see check_backward)
    BCase("logits100").len(100).dim(64).logits(100),
    BCase("logits1e4").len(100, 70).dim(64).logits(1e4),
    BCase("logits1e4_causal_gqa").heads(8, 2).len(100).dim(128).logits(1e4).causal(),
    BCase("softcap20").len(100).dim(64).softcap(20).logits(100),
    BCase("softcap5_causal_gqa").heads(8, 2).len(100).dim(64).softcap(5).causal(),
    BCase("alibi_causal").len(100, 130).dim(64).alibi().causal(),
    BCase("sinks").len(100).dim(64).sinks(),
    BCase("bias_neg_inf").len(100, 70).dim(40).bias(true, true),
    BCase("mask_dead_rows").len(100, 70).dim(64).mask(true),
    BCase("sinks_mask_dead_rows").len(100, 70).dim(64).sinks().mask(true),
    // fully masked rows by the band: Nq > Nk causal leaves the first rows without keys
    BCase("causal_nq100_nk30_empty_rows").len(100, 30).dim(64).causal(),
    BCase("window_beyond_keys_empty_rows").len(100, 100).dim(64).window(-1, 0).seqlens({100, 100}, {100, 20}),
    // at least 8 (batch, K/V head) pairs: the one-pass schedule (dQ added per key block)
    BCase("onepass_dense_d128").batch(2).heads(8, 4).len(100, 130).dim(128),
    BCase("onepass_causal_d40_bhsd").batch(2).heads(8, 4).len(257, 100).dim(40).causal().bhsd(),
    BCase("onepass_window_varlen_dv").batch(4).heads(4, 2).len(100, 70).dim(64, 24).window(20, 5)
        .seqlens({100, 17, 0, 64}, {70, 70, 5, 0}),
    BCase("onepass_softcap_sinks_mask").batch(1).heads(8, 8).len(70, 90).dim(64).softcap(10).sinks().mask(true),
    BCase("onepass_f64_everything").f64().batch(4).heads(4, 2).len(70, 90).dim(40, 24).causal().window(30, -1)
        .scale(0.2).softcap(15).alibi().sinks().seqlens({70, 33, 1, 0}, {90, 50, 2, 7}).bias(true).mask(true),
    // double
    BCase("f64_causal_gqa").f64().heads(8, 2).len(100, 70).dim(40).causal(),
    BCase("f64_everything_bhsd").f64().batch(3).heads(4, 2).len(70, 90).dim(40, 24).causal().window(30, -1)
        .scale(0.2).softcap(15).alibi().sinks().seqlens({70, 33, 1}, {90, 50, 2}).bias(true).mask(true).bhsd(),
    BCase("combo_everything").batch(3).heads(8, 2).len(70, 90).dim(40, 24).causal().window(30, -1).scale(0.2)
        .softcap(15).alibi().sinks().seqlens({70, 33, 1}, {90, 50, 2}).bias(true, true).mask(true),
};

INSTANTIATE_TEST_SUITE_P(Cases, BackwardAccuracy, ::testing::ValuesIn(kAccuracyCases), bcase_name);

// ---------------------------------------------------------------------------------------------
// Thread invariance: serial, 1, 2 and 3 threads give the same bits

class BackwardThreads : public ::testing::TestWithParam<BCase> {};

TEST_P(BackwardThreads, BitwiseIdenticalForAnyThreadCount) {
  const BCase& c = GetParam();
  SCOPED_TRACE(seed_note(c.name));
  std::mt19937_64 rng(case_seed(c.name));
  const problem<float> p = make_problem<float>(c, rng);
  const auto od = make_options(c, rng);
  const saved<float> fwd = forward(p, od->opt);
  grads<float> serial = make_grads<float>(p);
  xattn::softmax_attention_backward(p.q, p.k, p.v, fwd.out, fwd.lse, p.dout, serial.dq, serial.dk, serial.dv, od->opt);
  for (int threads : {1, 2, 3}) {
    SCOPED_TRACE("threads " + std::to_string(threads));
    grads<float> g = make_grads<float>(p);
    xattn::softmax_attention_backward(device(threads), p.q, p.k, p.v, fwd.out, fwd.lse, p.dout, g.dq, g.dk, g.dv,
                                      od->opt);
    EXPECT_TRUE(bitwise_equal("dq", serial.dq, g.dq));
    EXPECT_TRUE(bitwise_equal("dk", serial.dk, g.dk));
    EXPECT_TRUE(bitwise_equal("dv", serial.dv, g.dv));
  }
}

const std::vector<BCase> kThreadCases = {
    BCase("threads_dense_gqa").heads(8, 2).len(300).dim(64),
    BCase("threads_causal_nq200_nk333").heads(4, 2).len(200, 333).dim(64).causal(),
    BCase("threads_onepass_causal").batch(2).heads(8, 4).len(200, 333).dim(64).causal(),
    BCase("threads_window_varlen_bhsd").batch(3).len(257, 200).dim(40).window(40, 10).seqlens({257, 60, 0}, {200, 100, 9}).bhsd(),
};

INSTANTIATE_TEST_SUITE_P(Cases, BackwardThreads, ::testing::ValuesIn(kThreadCases), bcase_name);

// ---------------------------------------------------------------------------------------------
// The sink logits' gradient (softmax_grads::sink_logits): the reference's against central
// differences of the forward reference in the sink logits, the kernel's against the reference, on
// one and two threads, for softmax and sliding-window attention.

TEST(BackwardSinkGradient, MatchesFiniteDifferencesAndReference) {
  for (const bool window : {false, true}) {
    SCOPED_TRACE(window ? "sliding window" : "softmax");
    const BCase c = BCase(window ? "sink_grad_window" : "sink_grad").heads(4, 2).len(100, 130).dim(40).sinks()
                        .seqlens({100, 37}, {130, 60});
    std::mt19937_64 rng(case_seed(c.name));
    const problem<double> pd = make_problem<double>(c, rng);
    const auto od = make_options(c, rng);
    const xattn::softmax_options& opt = od->opt;
    const xattn::sliding_window_options wopt{.window_left = 20, .causal = true, .sinks = 3, .softmax = opt};
    auto forward_ref = [&](tensor<double>& out, tensor<double, 3>& lse) {
      if (window) xattn::reference::sliding_window_attention(pd.q, pd.k, pd.v, out, lse, wopt);
      else xattn::reference::softmax_attention(pd.q, pd.k, pd.v, out, lse, opt);
    };
    tensor<double> out(pd.dout.dimensions());
    tensor<double, 3> lse(c.b_, c.hq_, c.nq_);
    forward_ref(out, lse);
    grads<double> g = make_grads<double>(pd);
    std::vector<float> ref(std::size_t(c.hq_), float(kNaN));
    if (window)
      xattn::reference::sliding_window_attention_backward(pd.q, pd.k, pd.v, out, lse, pd.dout, g.dq, g.dk, g.dv, wopt,
                                                          {.sink_logits = ref});
    else
      xattn::reference::softmax_attention_backward(pd.q, pd.k, pd.v, out, lse, pd.dout, g.dq, g.dk, g.dv, opt,
                                                   {.sink_logits = ref});
    // central differences with a step of 2^-10 (exact in float for these logits); truncation ~h²·L‴/6
    const float h = 1.f / 1024;
    for (index hd = 0; hd < c.hq_; ++hd) {
      const float saved = od->sinks[std::size_t(hd)];
      auto loss = [&](float s) {
        od->sinks[std::size_t(hd)] = s;
        tensor<double> o(pd.dout.dimensions());
        tensor<double, 3> l(c.b_, c.hq_, c.nq_);
        forward_ref(o, l);
        double sum = 0;
        for (index x = 0; x < o.size(); ++x) sum += o.data()[x] * pd.dout.data()[x];
        return sum;
      };
      const double fd = (loss(saved + h) - loss(saved - h)) / (2.0 * h);
      od->sinks[std::size_t(hd)] = saved;
      EXPECT_NEAR(ref[std::size_t(hd)], fd, 1e-5 * (1 + std::abs(fd))) << "head " << hd;
    }
    // the kernel in float, on 1 and 2 threads: −Σ P_sink·D over 137 rows, each term in float
    const problem<float> p{cast_to<float>(pd.q), cast_to<float>(pd.k), cast_to<float>(pd.v), cast_to<float>(pd.dout)};
    tensor<float> outf(p.dout.dimensions());
    tensor<float, 3> lsef(c.b_, c.hq_, c.nq_);
    if (window) xattn::sliding_window_attention(p.q, p.k, p.v, outf, lsef, wopt);
    else xattn::softmax_attention(p.q, p.k, p.v, outf, lsef, opt);
    for (int threads : {0, 2}) {
      grads<float> gf = make_grads<float>(p);
      std::vector<float> got(std::size_t(c.hq_), float(kNaN));
      auto call = [&](auto&&... dev) {
        if (window)
          xattn::sliding_window_attention_backward(dev..., p.q, p.k, p.v, outf, lsef, p.dout, gf.dq, gf.dk, gf.dv, wopt,
                                                   {.sink_logits = got});
        else
          xattn::softmax_attention_backward(dev..., p.q, p.k, p.v, outf, lsef, p.dout, gf.dq, gf.dk, gf.dv, opt,
                                            {.sink_logits = got});
      };
      if (threads) call(device(threads));
      else call();
      for (index hd = 0; hd < c.hq_; ++hd)
        EXPECT_NEAR(got[std::size_t(hd)], ref[std::size_t(hd)], 1e-4 * (1 + std::abs(ref[std::size_t(hd)])))
            << "head " << hd << ", threads " << threads;
    }
  }
}

TEST(BackwardSinkGradient, BadRequestsThrow) {
  std::mt19937_64 rng(case_seed("sink_grad_errors"));
  const BCase c = BCase("sink_grad_errors").len(9, 11).dim(16).sinks();
  const problem<float> p = make_problem<float>(c, rng);
  const auto od = make_options(c, rng);
  const saved<float> fwd = forward(p, od->opt);
  grads<float> g = make_grads<float>(p);
  std::vector<float> ds(4), short_ds(3);
  const auto throws = [&](auto&& call, const std::string& needle) {
    try {
      call();
      ADD_FAILURE() << "no error; expected one mentioning '" << needle << "'";
    } catch (const xattn::error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  throws([&] { xattn::softmax_attention_backward(p.q, p.k, p.v, fwd.out, fwd.lse, p.dout, g.dq, g.dk, g.dv, {},
                                                 {.sink_logits = ds}); }, "grads.sink_logits");
  throws([&] { xattn::softmax_attention_backward(p.q, p.k, p.v, fwd.out, fwd.lse, p.dout, g.dq, g.dk, g.dv, od->opt,
                                                 {.sink_logits = short_ds}); }, "grads.sink_logits");
  throws([&] { xattn::softmax_attention_backward(p.q, p.k, p.v, fwd.out, fwd.lse, p.dout, g.dq, g.dk, g.dv, od->opt,
                                                 {.sink_logits = od->sinks}); }, "overlaps");
}

// ---------------------------------------------------------------------------------------------
// 16-bit tensors: the backward computes in float on the 16-bit values, so it equals the float call
// on the rounded values bit for bit, and a 16-bit gradient is that float gradient rounded.

template <class S>
void check_backward16(bool window) {
  SCOPED_TRACE(std::string(window ? "sliding window, " : "softmax, ") + (std::is_same_v<S, Eigen::half> ? "half" : "bf16"));
  const BCase c = BCase("backward16").heads(4, 2).len(130, 100).dim(64, 40);
  std::mt19937_64 rng(case_seed(c.name));
  const problem<float> pf = make_problem<float>(c, rng);
  const tensor<S> q = pf.q.cast<S>(), k = pf.k.cast<S>(), v = pf.v.cast<S>(), dout = pf.dout.cast<S>();
  // the float problem on the rounded values
  const problem<float> r{q.template cast<float>(), k.template cast<float>(), v.template cast<float>(),
                         dout.template cast<float>()};
  const xattn::sliding_window_options wopt{.window_left = 30, .causal = true};
  tensor<S> out(r.dout.dimensions());
  tensor<float, 3> lse(c.b_, c.hq_, c.nq_);
  if (window) xattn::sliding_window_attention(q, k, v, out, lse, wopt);
  else xattn::softmax_attention(q, k, v, out, lse, {.causal = true});
  const tensor<float> outf = out.template cast<float>();
  auto run = [&](const auto& q, const auto& k, const auto& v, const auto& out, const auto& dout, auto& g, int threads) {
    auto call = [&](auto&&... dev) {
      if (window) xattn::sliding_window_attention_backward(dev..., q, k, v, out, lse, dout, g.dq, g.dk, g.dv, wopt);
      else xattn::softmax_attention_backward(dev..., q, k, v, out, lse, dout, g.dq, g.dk, g.dv, {.causal = true});
    };
    if (threads) call(device(threads));
    else call();
  };
  grads<float> want = make_grads<float>(r), got = make_grads<float>(r);
  run(r.q, r.k, r.v, outf, r.dout, want, 0);
  run(q, k, v, out, dout, got, 2);  // 16-bit inputs, float gradients
  EXPECT_TRUE(bitwise_equal("dq", want.dq, got.dq));
  EXPECT_TRUE(bitwise_equal("dk", want.dk, got.dk));
  EXPECT_TRUE(bitwise_equal("dv", want.dv, got.dv));
  struct grads16 {
    tensor<S> dq, dk, dv;
  } g16{tensor<S>(q.dimensions()), tensor<S>(k.dimensions()), tensor<S>(v.dimensions())};
  run(q, k, v, out, dout, g16, 0);  // 16-bit gradients: the float ones rounded
  EXPECT_TRUE(bitwise_equal("dq (16-bit)", g16.dq, tensor<S>(want.dq.cast<S>())));
  EXPECT_TRUE(bitwise_equal("dk (16-bit)", g16.dk, tensor<S>(want.dk.cast<S>())));
  EXPECT_TRUE(bitwise_equal("dv (16-bit)", g16.dv, tensor<S>(want.dv.cast<S>())));
  // and an overlap of a 16-bit gradient with a 16-bit input is caught before anything is written
  tensor<S> q2 = q;
  Eigen::TensorMap<tensor<S>> dq_over_q(q2.data(), q2.dimensions());
  grads<float> g = make_grads<float>(r);
  try {
    xattn::softmax_attention_backward(q2, k, v, out, lse, dout, dq_over_q, g.dk, g.dv);
    ADD_FAILURE() << "no error for dq over q";
  } catch (const xattn::error& e) {
    EXPECT_NE(std::string(e.what()).find("dq: overlaps q"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(bitwise_equal("q untouched", q2, q));
}

TEST(Backward16, EqualsFloatCallOnRoundedValues) {
  for (bool window : {false, true}) {
    check_backward16<Eigen::bfloat16>(window);
    check_backward16<Eigen::half>(window);
  }
}

// ---------------------------------------------------------------------------------------------
// Empty axes: batch 0 writes nothing; Nq 0 gives zero dk, dv; Nk 0 gives zero dq.

TEST(BackwardEmpty, ZeroLengthsGiveZeroGradients) {
  for (const auto& [nq, nk, hkv] : {std::tuple<index, index, index>{0, 5, 2}, {5, 0, 2}, {0, 0, 2}, {0, 5, 4},
                                    {5, 0, 4}}) {  // 2 × 4 K/V heads: the one-pass schedule
    SCOPED_TRACE("nq " + std::to_string(nq) + ", nk " + std::to_string(nk) + ", hkv " + std::to_string(hkv));
    std::mt19937_64 rng(case_seed("empty"));
    BCase c("empty");
    c.len(nq, nk).heads(4, hkv);
    const problem<float> p = make_problem<float>(c, rng);
    const saved<float> fwd = forward(p, {});
    grads<float> g = make_grads<float>(p);
    xattn::softmax_attention_backward(device(2), p.q, p.k, p.v, fwd.out, fwd.lse, p.dout, g.dq, g.dk, g.dv);
    for (const tensor<float>* t : {&g.dq, &g.dk, &g.dv})
      for (index x = 0; x < t->size(); ++x) ASSERT_EQ(t->data()[x], 0.f);
  }
  tensor<float> q(0, 4, 2, 8), o(0, 4, 2, 8), dq(0, 4, 2, 8);
  tensor<float, 3> lse(0, 2, 4);
  xattn::softmax_attention_backward(q, q, q, o, lse, o, dq, dq, dq);  // nothing to write, nothing overlaps
}

// ---------------------------------------------------------------------------------------------
// Bad input: an xattn::error naming the argument, nothing written.

TEST(BackwardErrors, BadInputThrowsNamingTheArgument) {
  std::mt19937_64 rng(case_seed("errors"));
  const BCase c = BCase("errors").len(9, 11).dim(16);
  const problem<float> p = make_problem<float>(c, rng);
  const saved<float> fwd = forward(p, {});
  grads<float> g = make_grads<float>(p);
  const auto expect_error = [&](auto&& call, const std::string& needle) {
    g.dq.setConstant(7.f), g.dk.setConstant(7.f), g.dv.setConstant(7.f);
    try {
      call();
      ADD_FAILURE() << "no error; expected one mentioning '" << needle << "'";
    } catch (const xattn::error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("xattn::softmax_attention_backward"), std::string::npos) << e.what();
    }
    for (const tensor<float>* t : {&g.dq, &g.dk, &g.dv})
      for (index x = 0; x < t->size(); ++x) ASSERT_EQ(t->data()[x], 7.f) << "written before the error";
  };
  tensor<float> bad_dout(2, 9, 4, 15), bad_dq(2, 9, 4, 15), bad_dk(2, 10, 2, 16), bad_out(2, 9, 2, 16);
  tensor<float, 3> bad_lse(2, 4, 8);
  expect_error([&] { xattn::softmax_attention_backward(p.q, p.k, p.v, fwd.out, fwd.lse, bad_dout, g.dq, g.dk, g.dv); },
               "dout: shape");
  expect_error([&] { xattn::softmax_attention_backward(p.q, p.k, p.v, fwd.out, fwd.lse, p.dout, bad_dq, g.dk, g.dv); },
               "dq: shape");
  expect_error([&] { xattn::softmax_attention_backward(p.q, p.k, p.v, fwd.out, fwd.lse, p.dout, g.dq, bad_dk, g.dv); },
               "dk: shape");
  expect_error([&] { xattn::softmax_attention_backward(p.q, p.k, p.v, bad_out, fwd.lse, p.dout, g.dq, g.dk, g.dv); },
               "out: shape");
  expect_error([&] { xattn::softmax_attention_backward(p.q, p.k, p.v, fwd.out, bad_lse, p.dout, g.dq, g.dk, g.dv); },
               "lse: shape");
  expect_error([&] { xattn::softmax_attention_backward(p.q, p.k, p.v, fwd.out, fwd.lse, p.dout, g.dq, g.dk, g.dv,
                                                       {.compute = xattn::compute::bf16}); },
               "compute");
  expect_error([&] { xattn::softmax_attention_backward(p.q, p.k, p.v, fwd.out, fwd.lse, p.dout, g.dq, g.dk, g.dv,
                                                       {.softcap = -1}); },
               "softcap");
  // a gradient over an input, or over another gradient
  tensor<float> q2 = p.q;
  Eigen::TensorMap<tensor<float>> dq_over_q(q2.data(), q2.dimensions());
  expect_error([&] { xattn::softmax_attention_backward(q2, p.k, p.v, fwd.out, fwd.lse, p.dout, dq_over_q, g.dk, g.dv); },
               "dq: overlaps q");
  Eigen::TensorMap<tensor<float>> dv_over_dk(g.dk.data(), p.k.dimensions());
  tensor<float> k_only = p.k, v_same_shape = p.k;
  expect_error([&] { xattn::softmax_attention_backward(p.q, k_only, v_same_shape, make_tensor<float>(layout::bshd, 2, 9, 4, 16),
                                                       fwd.lse, make_tensor<float>(layout::bshd, 2, 9, 4, 16), g.dq, g.dk,
                                                       dv_over_dk); },
               "dk: overlaps dv");
  // the reference validates the same way, under its own name
  try {
    xattn::reference::softmax_attention_backward(p.q, p.k, p.v, fwd.out, fwd.lse, bad_dout, g.dq, g.dk, g.dv);
    ADD_FAILURE() << "no error from the reference";
  } catch (const xattn::error& e) {
    EXPECT_NE(std::string(e.what()).find("xattn::reference::softmax_attention_backward: dout"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace xattn_test
