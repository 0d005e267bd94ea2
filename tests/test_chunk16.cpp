// tests/test_chunk16.cpp — the chunk families (linear_attention, lightning_attention, linear_step,
// lightning_step) over 16-bit storage: q, k, v of Eigen::bfloat16 or Eigen::half (or a mix with
// float), out float or q's 16-bit type, states float.
//
// Every case draws float inputs, rounds them to the storage types, and compares the kernel with the
// fp64 reference on the rounded values converted to double, by the accuracy rule against a naive fp32
// implementation on the same rounded values (a 16-bit out may also differ by the rounding of the
// result: half an ulp of the 16-bit type). Conversion is exact and everything after it runs in float,
// so the 16-bit call must also equal the float kernel on the rounded values bit for bit (rounded as
// out is stored), and give the same bits on 1, 2 and 3 threads.
#include <gtest/gtest.h>

#include <cstring>
#include <tuple>

#include "chunk_test_util.hpp"

namespace xattn_test::chunk16 {
namespace {

using chunk::Case;
using chunk::decay;
using xattn::layout;
using xattn::feature;
using bf16 = Eigen::bfloat16;
using f16 = Eigen::half;

/// The storage of q, k and v: all bf16, all half, or q bf16, k half, v float.
enum class storage { bf16, half, mixed };
const char* name_of(storage s) { return s == storage::bf16 ? "bf16" : s == storage::half ? "half" : "mixed"; }
void PrintTo(storage s, std::ostream* os) { *os << name_of(s); }

/// Half an ulp of the 16-bit type S at |x| (subnormals: half the smallest step). The constants are
/// written out: Eigen 3.4's numeric_limits<Eigen::half>::epsilon() is 2^-13, not the 2^-10 of its
/// 10 stored mantissa bits.
template <class S>
double half_ulp(double x) {
  constexpr bool is_bf16 = std::is_same_v<S, bf16>;
  const double eps = std::exp2(is_bf16 ? -7 : -10);      // ulp of 1: 7 or 10 stored mantissa bits
  const double tiny = std::exp2(is_bf16 ? -133 : -24);  // the smallest subnormal
  x = std::abs(x);
  if (x == 0 || !std::isfinite(x)) return tiny / 2;
  return std::max(tiny, eps * std::exp2(std::floor(std::log2(x)))) / 2;
}

/// The accuracy rule for a 16-bit out: |kernel − ref| <= 2·(naive error) + eps + half an ulp of S at
/// the larger of |kernel| and |ref|, element by element.
template <class S, class N, class R>
::testing::AssertionResult within_rule_16(const char* what, const tensor<S>& kernel, const N& naive, const R& ref,
                                          double eps) {
  const double base = 2 * max_abs_diff(naive, ref).max + eps;
  for (index i = 0; i < ref.size(); ++i) {
    const double k = double(kernel.data()[i]), r = double(ref.data()[i]);
    const double allowed = base + half_ulp<S>(std::max(std::abs(k), std::abs(r)));
    if (!(abs_diff(k, r) <= allowed))
      return ::testing::AssertionFailure() << what << ": kernel " << k << " vs reference " << r << " at "
                                           << index_str(ref, i) << ": error " << abs_diff(k, r) << " > " << allowed
                                           << " (2 × naive error + eps " << base << " + half an ulp of the 16-bit out)";
  }
  return ::testing::AssertionSuccess();
}


/// Token t of a tensor of layout l, as a tensor of seq 1.
template <class T>
tensor<T> token(const tensor<T>& x, xattn::layout l, index t) {
  const bool s1 = l == xattn::layout::bshd;
  const Eigen::array<index, 4> off{0, s1 ? t : 0, s1 ? 0 : t, 0};
  const Eigen::array<index, 4> ext{x.dimension(0), s1 ? 1 : x.dimension(1), s1 ? x.dimension(2) : 1, x.dimension(3)};
  return x.slice(off, ext);
}

/// The whole sequence token by token through the case's step function from s0 (or zeros): the
/// outputs gathered into `out`, the state left in `state`.
template <class Q, class K, class V, class O>
void run_steps(const Case& c, const tensor<Q>& q, const tensor<K>& k, const tensor<V>& v, const tensor<float>& s0,
               tensor<O>& out, tensor<float>& state, int threads) {
  chunk::option_data od;
  od.decay = chunk::decays_of(c);
  od.map = c.feature_map();
  if (c.init_) state = s0;
  else state.setZero();
  const xattn::layout l = c.lay_;
  const bool s1 = l == xattn::layout::bshd;
  for (index t = 0; t < c.nq_; ++t) {
    const tensor<Q> qt = token(q, l, t);
    const tensor<K> kt = token(k, l, t);
    const tensor<V> vt = token(v, l, t);
    tensor<O> ot = s1 ? tensor<O>(c.b_, 1, c.hq_, c.e()) : tensor<O>(c.b_, c.hq_, 1, c.e());
    if (c.linear_) {
      const auto opt = chunk::linear_opts(c, od);
      if (threads) xattn::linear_step(device(threads), qt, kt, vt, ot, state, opt);
      else xattn::linear_step(qt, kt, vt, ot, state, opt);
    } else {
      const auto opt = chunk::lightning_opts(c, od);
      if (threads) xattn::lightning_step(device(threads), qt, kt, vt, ot, state, opt);
      else xattn::lightning_step(qt, kt, vt, ot, state, opt);
    }
    out.slice(Eigen::array<index, 4>{0, s1 ? t : 0, s1 ? 0 : t, 0}, ot.dimensions()) = ot;
  }
}

/// One case's inputs: float draws, their roundings to the storage types, and those back in float.
template <class SQ, class SK, class SV>
struct rounded {
  tensor<SQ> q;
  tensor<SK> k;
  tensor<SV> v;
  chunk::inputs<float> f;  // the rounded values in float, and the initial state
};

template <class SQ, class SK, class SV>
rounded<SQ, SK, SV> make_rounded(const Case& c) {
  std::mt19937_64 rng(case_seed(c.name));
  const chunk::inputs<float> in = chunk::make_inputs<float>(c, rng);
  rounded<SQ, SK, SV> r{in.q.template cast<SQ>(), in.k.template cast<SK>(), in.v.template cast<SV>(), {}};
  r.f = {r.q.template cast<float>(), r.k.template cast<float>(), r.v.template cast<float>(), in.s0};
  // the rounding must have happened, or the tests compare float with float
  if constexpr (!std::is_same_v<SQ, float>) {
    EXPECT_FALSE(c.nq_ > 0 && bitwise_equal("", r.f.q, in.q)) << "q was not rounded to 16 bits";
  }
  return r;
}

template <class S>
tensor<S> nan_out(const Case& c) {
  tensor<S> o = make_tensor<S>(c.lay_, c.b_, c.nq_, c.hq_, c.e());
  o.setConstant(S(chunk::kNaN));
  return o;
}
inline tensor<float> nan_state(const Case& c) {
  tensor<float> s(c.b_, c.hq_, c.df(), c.cols());
  s.setConstant(float(chunk::kNaN));
  return s;
}

template <class SO, class N, class R>
::testing::AssertionResult out_within_rule(const char* what, const tensor<SO>& kernel, const N& naive, const R& ref,
                                           double eps) {
  if constexpr (std::is_same_v<SO, float>) return within_rule(what, kernel, naive, ref, eps);
  else return within_rule_16<SO>(what, kernel, naive, ref, eps);
}

/// The forward call: accuracy, equality with the float kernel on the rounded values, threads.
template <class SQ, class SK, class SV, class SO>
void check_forward(const Case& c) {
  SCOPED_TRACE(seed_note(c.name));
  const auto in = make_rounded<SQ, SK, SV>(c);
  const chunk::outputs<double> ref = chunk::oracle(c, in.f);
  const chunk::naive_result<float> nr = chunk::naive_with_magnitudes<float>(c, in.f);
  const double eps_out = chunk::sum_eps<float>(nr.m.out), eps_state = chunk::sum_eps<float>(nr.m.state);

  tensor<SO> out = nan_out<SO>(c);
  tensor<float> state = nan_state(c);
  chunk::run_forward(c, in.q, in.k, in.v, in.f.s0, out, state, 0);
  EXPECT_TRUE(out_within_rule("out", out, nr.o.out, ref.out, eps_out));
  EXPECT_TRUE(within_rule("final_state", state, nr.o.state, ref.state, eps_state));

  chunk::outputs<float> f = chunk::make_outputs<float>(c);
  chunk::run_kernel(c, in.f, f);
  const tensor<SO> f_out = f.out.template cast<SO>();
  EXPECT_TRUE(bitwise_equal("out against the float kernel on the rounded inputs", out, f_out));
  EXPECT_TRUE(bitwise_equal("final_state against the float kernel on the rounded inputs", state, f.state));

  for (int threads : {1, 2, 3}) {
    SCOPED_TRACE("threads " + std::to_string(threads));
    tensor<SO> o = nan_out<SO>(c);
    tensor<float> s = nan_state(c);
    chunk::run_forward(c, in.q, in.k, in.v, in.f.s0, o, s, threads);
    EXPECT_TRUE(bitwise_equal("out", out, o));
    EXPECT_TRUE(bitwise_equal("final_state", state, s));
  }
}

/// The step call token by token: accuracy against the forward reference, equality with float
/// steps on the rounded values, threads.
template <class SQ, class SK, class SV, class SO>
void check_steps(const Case& c) {
  SCOPED_TRACE(seed_note(c.name));
  ASSERT_TRUE(c.causal_) << "a step is causal";
  const auto in = make_rounded<SQ, SK, SV>(c);
  const chunk::outputs<double> ref = chunk::oracle(c, in.f);
  const chunk::naive_result<float> nr = chunk::naive_with_magnitudes<float>(c, in.f);
  const double eps_out = chunk::sum_eps<float>(nr.m.out), eps_state = chunk::sum_eps<float>(nr.m.state);

  tensor<SO> out = nan_out<SO>(c);
  tensor<float> state = nan_state(c);
  run_steps(c, in.q, in.k, in.v, in.f.s0, out, state, 0);
  EXPECT_TRUE(out_within_rule("stepped out", out, nr.o.out, ref.out, eps_out));
  EXPECT_TRUE(within_rule("stepped state", state, nr.o.state, ref.state, eps_state));

  tensor<float> f_out = nan_out<float>(c), f_state = nan_state(c);
  run_steps(c, in.f.q, in.f.k, in.f.v, in.f.s0, f_out, f_state, 0);
  const tensor<SO> f_rounded = f_out.template cast<SO>();
  EXPECT_TRUE(bitwise_equal("stepped out against float steps on the rounded inputs", out, f_rounded));
  EXPECT_TRUE(bitwise_equal("stepped state against float steps on the rounded inputs", state, f_state));

  for (int threads : {1, 2, 3}) {
    SCOPED_TRACE("threads " + std::to_string(threads));
    tensor<SO> o = nan_out<SO>(c);
    tensor<float> s = nan_state(c);
    run_steps(c, in.q, in.k, in.v, in.f.s0, o, s, threads);
    EXPECT_TRUE(bitwise_equal("stepped out", out, o));
    EXPECT_TRUE(bitwise_equal("stepped state", state, s));
  }
}

/// Runs F<SQ, SK, SV, SO> for the storage and out of a parameter.
template <template <class, class, class, class> class F>
void dispatch(const Case& c, storage st, bool out16) {
  switch (st) {
    case storage::bf16:
      return out16 ? F<bf16, bf16, bf16, bf16>::run(c) : F<bf16, bf16, bf16, float>::run(c);
    case storage::half:
      return out16 ? F<f16, f16, f16, f16>::run(c) : F<f16, f16, f16, float>::run(c);
    case storage::mixed:
      return out16 ? F<bf16, f16, float, bf16>::run(c) : F<bf16, f16, float, float>::run(c);
  }
}
template <class SQ, class SK, class SV, class SO>
struct forward_check {
  static void run(const Case& c) { check_forward<SQ, SK, SV, SO>(c); }
};
template <class SQ, class SK, class SV, class SO>
struct step_check {
  static void run(const Case& c) { check_steps<SQ, SK, SV, SO>(c); }
};

using param = std::tuple<Case, storage, bool>;
std::string param_name(const ::testing::TestParamInfo<param>& info) {
  const auto& [c, st, out16] = info.param;
  return c.name + "_" + name_of(st) + (out16 ? "_out16" : "_outf32");
}

// ---------------------------------------------------------------------------------------------
// Forward cases: lengths not multiples of the block, d and e not multiples of 16, GQA, bhsd, the
// windowed order (one unit, many chunks), states in and out.

const Case kForward[] = {
    Case("lightning_gqa_d40_e24_n113").len(113).scale(0.125).heads(4, 2).dim(40, 24).block(32),
    Case("lightning_bhsd_init_d72_e80").len(70).heads(2, 1).dim(72, 80).block(64).bhsd().init(),
    Case("lightning_large_decay_n1").len(1).heads(3, 3).dim(20, 9).decays(decay::large),
    Case("lightning_mixed_decay_init_n129").len(129).heads(6, 3).dim(24, 40).decays(decay::mixed).init(),
    Case("lightning_windowed_n300").batch(1).heads(1, 1).len(300).dim(33, 17).block(32).init(),
    Case("linear_identity_causal").linear().len(77).heads(4, 2).dim(24, 20).block(32),
    Case("linear_identity_noncausal_nq_ne_nk").linear(false).scale(0.2).len(45, 101).heads(2, 1).dim(40, 24).block(32).init(),
    Case("linear_elu_causal_norm").linear().scale(0.3).map(feature::elu_plus_one).normalize().len(90).dim(20, 36).block(32),
    Case("linear_elu_noncausal_bhsd").linear(false).map(feature::elu_plus_one).len(37, 61).dim(24, 12).bhsd(),
    Case("linear_relu_causal_init").linear().map(feature::relu).len(71).heads(4, 4).dim(40, 8).block(16).init(),
    Case("linear_relu_noncausal_norm").linear(false).map(feature::relu).normalize().len(50).dim(12, 20),
    Case("linear_taylor_causal_norm").linear().map(feature::taylor).normalize().len(65).heads(2, 1).dim(6, 10).block(16),
    Case("linear_taylor_noncausal").linear(false).map(feature::taylor).len(33, 47).dim(7, 5),
    Case("linear_softmax_noncausal").linear(false).map(feature::softmax).len(40, 83).heads(4, 2).dim(24, 40),
    Case("linear_softmax_noncausal_norm_bhsd").linear(false).map(feature::softmax).normalize().len(29).dim(40, 9).bhsd(),
    Case("linear_custom_causal_windowed").linear().map(feature::custom).batch(1).heads(1, 1).len(150).dim(8, 12).block(32),
};

class Chunk16Forward : public ::testing::TestWithParam<param> {};
TEST_P(Chunk16Forward, MatchesReferenceFloatKernelAndThreads) {
  const auto& [c, st, out16] = GetParam();
  dispatch<forward_check>(c, st, out16);
}
INSTANTIATE_TEST_SUITE_P(Cases, Chunk16Forward,
                         ::testing::Combine(::testing::ValuesIn(kForward),
                                            ::testing::Values(storage::bf16, storage::half, storage::mixed),
                                            ::testing::Bool()),
                         param_name);

// ---------------------------------------------------------------------------------------------
// Step cases (causal only; the per-side softmax has no recurrent form)

const Case kSteps[] = {
    Case("lightning_step_gqa_d40_e24").len(23).scale(0.25).heads(4, 2).dim(40, 24),
    Case("lightning_step_init_bhsd").len(17).heads(2, 1).dim(20, 36).bhsd().init(),
    Case("linear_step_identity").linear().len(19).heads(2, 2).dim(24, 8),
    Case("linear_step_elu_norm_init").linear().map(feature::elu_plus_one).normalize().len(21).heads(4, 2).dim(12, 20).init(),
    Case("linear_step_relu_norm").linear().map(feature::relu).normalize().len(13).dim(33, 7),
    Case("linear_step_taylor_bhsd").linear().map(feature::taylor).len(11).dim(5, 9).bhsd(),
};

class Chunk16Step : public ::testing::TestWithParam<param> {};
TEST_P(Chunk16Step, MatchesReferenceFloatStepsAndThreads) {
  const auto& [c, st, out16] = GetParam();
  dispatch<step_check>(c, st, out16);
}
INSTANTIATE_TEST_SUITE_P(Cases, Chunk16Step,
                         ::testing::Combine(::testing::ValuesIn(kSteps),
                                            ::testing::Values(storage::bf16, storage::half, storage::mixed),
                                            ::testing::Bool()),
                         param_name);

// ---------------------------------------------------------------------------------------------
// Empty sequences and batches

TEST(Chunk16Empty, ZeroLengthPassesTheStateOn) {
  for (const bool linear : {false, true}) {
    SCOPED_TRACE(linear ? "linear" : "lightning");
    Case c = Case(linear ? "empty_linear" : "empty_lightning").len(0).heads(4, 2).dim(24, 20).init();
    if (linear) c.linear().map(feature::elu_plus_one).normalize();
    std::mt19937_64 rng(case_seed(c.name));
    const chunk::inputs<float> in = chunk::make_inputs<float>(c, rng);
    ASSERT_GT(in.s0.size(), 0);
    const tensor<bf16> q = in.q.cast<bf16>(), k = in.k.cast<bf16>(), v = in.v.cast<bf16>();
    tensor<bf16> out = nan_out<bf16>(c);
    tensor<float> state = nan_state(c);
    chunk::run_forward(c, q, k, v, in.s0, out, state, 0);
    EXPECT_EQ(out.size(), 0);
    EXPECT_TRUE(bitwise_equal("final_state of an empty sequence", state, in.s0));
    state.setConstant(float(chunk::kNaN));
    chunk::run_forward(c, q, k, v, in.s0, out, state, 2);
    EXPECT_TRUE(bitwise_equal("final_state of an empty sequence on 2 threads", state, in.s0));
  }
}

TEST(Chunk16Empty, ZeroBatch) {
  const Case c = Case("empty_batch").batch(0).len(9).heads(2, 1).dim(16, 8);
  const tensor<f16> q = make_tensor<f16>(c.lay_, 0, 9, 2, 16), k = make_tensor<f16>(c.lay_, 0, 9, 1, 16),
                    v = make_tensor<f16>(c.lay_, 0, 9, 1, 8);
  tensor<f16> out = make_tensor<f16>(c.lay_, 0, 9, 2, 8);
  tensor<float> state(0, 2, 16, 8);
  EXPECT_NO_THROW(chunk::run_forward(c, q, k, v, tensor<float>(), out, state, 0));
  tensor<f16> o1(0, 1, 2, 8);
  EXPECT_NO_THROW(xattn::lightning_step(token(q, c.lay_, 0), token(k, c.lay_, 0), token(v, c.lay_, 0), o1, state));
}

// ---------------------------------------------------------------------------------------------
// Bad input: xattn::error, nothing written

TEST(Chunk16Errors, ShapesTypesAndOverlapsThrow) {
  constexpr const char* fn_l = "xattn::lightning_attention";
  tensor<bf16> q(1, 8, 2, 24), k(1, 8, 1, 24), v(1, 8, 1, 16), kbad(1, 8, 1, 20);
  q.setConstant(bf16(0.5f)), k.setConstant(bf16(0.25f)), v.setConstant(bf16(1.0f)), kbad.setConstant(bf16(1.0f));
  tensor<float> out(1, 8, 2, 16);
  out.setConstant(float(chunk::kNaN));
  auto untouched = [&] { return std::all_of(out.data(), out.data() + out.size(), [](float x) { return std::isnan(x); }); };

  EXPECT_TRUE(chunk::throws_naming([&] { xattn::lightning_attention(q, kbad, v, out); }, fn_l, "k"));
  EXPECT_TRUE(untouched());

  // a double state for a float computation
  tensor<double> s64(1, 2, 24, 16);
  s64.setZero();
  EXPECT_TRUE(chunk::throws_naming([&] { xattn::lightning_attention(q, k, v, out, {.initial_state = s64}); }, fn_l,
                                   "initial_state"));
  EXPECT_TRUE(untouched());

  // out over q's memory (same 16-bit type)
  std::vector<bf16> qs(std::size_t(q.size()), bf16(0.5f));
  Eigen::TensorMap<const tensor<bf16>> qm(qs.data(), 1, 8, 2, 24);
  Eigen::TensorMap<tensor<bf16>> over_q(qs.data(), 1, 8, 2, 16);
  EXPECT_TRUE(chunk::throws_naming([&] { xattn::lightning_attention(qm, k, v, over_q); }, fn_l, "out"));

  // final_state over the bytes of 16-bit k
  std::vector<float> ks(std::size_t(2 * 24 * 16));
  Eigen::TensorMap<const tensor<bf16>> km(reinterpret_cast<const bf16*>(ks.data()), 1, 8, 1, 24);
  Eigen::TensorMap<tensor<float>> fin(ks.data(), 1, 2, 24, 16);
  EXPECT_TRUE(
      chunk::throws_naming([&] { xattn::lightning_attention(q, km, v, out, {.final_state = fin}); }, fn_l, "final_state"));
  EXPECT_TRUE(untouched());

  // a step's state over the bytes of 16-bit q (the views' data are null for 16-bit storage: the
  // check must look at their raw memory)
  std::vector<float> buf(std::size_t(2 * 24 * 16));
  Eigen::TensorMap<const tensor<bf16>> q1(reinterpret_cast<const bf16*>(buf.data()), 1, 1, 2, 24);
  Eigen::TensorMap<tensor<float>> st(buf.data(), 1, 2, 24, 16);
  tensor<float> o1(1, 1, 2, 16);
  o1.setConstant(float(chunk::kNaN));
  EXPECT_TRUE(chunk::throws_naming([&] { xattn::lightning_step(q1, token(k, layout::bshd, 0), token(v, layout::bshd, 0), o1, st); },
                                   "xattn::lightning_step", "state"));
  EXPECT_TRUE(std::isnan(o1(0, 0, 0, 0)));

  // the per-side softmax has no step, in 16 bits too
  tensor<float> s(1, 2, 24, 16);
  s.setZero();
  EXPECT_TRUE(chunk::throws_naming(
      [&] {
        xattn::linear_step(token(q, layout::bshd, 0), token(k, layout::bshd, 0), token(v, layout::bshd, 0), o1, s,
                           {.feature_map = feature::softmax});
      },
      "xattn::linear_step", "feature_map"));
}

}  // namespace
}  // namespace xattn_test::chunk16
