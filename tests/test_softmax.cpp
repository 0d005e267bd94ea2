// tests/test_softmax.cpp — xattn::softmax_attention and xattn::softmax_decode against the fp64
// reference (flash-attention's accuracy rule, see test_util.hpp), their properties (bitwise
// independence of the thread count, option identities, LSE merging), and bad input.
#include "test_util.hpp"

#include <functional>
#include <optional>

namespace xattn_test {
namespace {

using xattn::layout;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

/// Where a bias or mask tensor broadcasts: [B, Hq, Nq, Nk], [1, 1, ..], [B, 1, ..], [1, Hq, ..].
enum class bcast { none, full, one_one, batch_one, one_head };

// ---------------------------------------------------------------------------------------------
// One softmax-attention case: shapes and options, set by name so that a table entry reads as
// `Case("causal_nq113_nk37").len(113, 37).causal()`.

struct Case {
  std::string name;
  bool f64_ = false;
  index b_ = 2, nq_ = 7, nk_ = 7, hq_ = 4, hkv_ = 2, d_ = 32, dv_ = 0;  // dv 0: = d
  layout lay_ = layout::bshd;
  bool causal_ = false;
  index wl_ = -1, wr_ = -1;
  std::optional<double> scale_;
  double softcap_ = 0;
  bool alibi_ = false, sinks_ = false;
  std::vector<int> sq_, sk_;
  bcast bias_ = bcast::none;
  bool bias_neg_inf_ = false;  // some bias rows all −inf, some entries −inf
  bcast mask_ = bcast::none;
  double mask_p_ = 0.7;        // probability that a mask entry is true
  bool mask_dead_rows_ = false;  // every fifth mask row all false
  double logits_ = 1;          // q and k scaled by sqrt(logits_): scores ~ N(0, logits_²)
  double offset_ = 0;          // keys share a large component: scores ≈ ±offset_ per row, O(1) apart
  dist dist_ = dist::normal;
  bool map_ = false;           // pass Eigen::TensorMap over std::vector instead of Eigen::Tensor
  bool big_ = false;           // under XATTN_TEST_QUICK, lengths shrink to kQuickLen

  explicit Case(std::string n) : name(std::move(n)) {}
  Case& f64() { f64_ = true; return *this; }
  Case& batch(index b) { b_ = b; return *this; }
  Case& len(index nq, index nk) { nq_ = nq, nk_ = nk; return *this; }
  Case& len(index n) { return len(n, n); }
  Case& heads(index hq, index hkv) { hq_ = hq, hkv_ = hkv; return *this; }
  Case& dim(index d, index dv = 0) { d_ = d, dv_ = dv; return *this; }
  Case& bhsd() { lay_ = layout::bhsd; return *this; }
  Case& causal() { causal_ = true; return *this; }
  Case& window(index l, index r) { wl_ = l, wr_ = r; return *this; }
  Case& scale(double s) { scale_ = s; return *this; }
  Case& softcap(double c) { softcap_ = c; return *this; }
  Case& alibi() { alibi_ = true; return *this; }
  Case& sinks() { sinks_ = true; return *this; }
  Case& seqlens(std::vector<int> q, std::vector<int> k) { sq_ = std::move(q), sk_ = std::move(k); return *this; }
  Case& bias(bcast b, bool neg_inf = false) { bias_ = b, bias_neg_inf_ = neg_inf; return *this; }
  Case& mask(bcast m, double p = 0.7, bool dead_rows = false) { mask_ = m, mask_p_ = p, mask_dead_rows_ = dead_rows; return *this; }
  Case& logits(double l) { logits_ = l; return *this; }
  Case& offset(double o) { offset_ = o; return *this; }
  Case& uniform() { dist_ = dist::uniform; return *this; }
  Case& map() { map_ = true; return *this; }
  Case& big() { big_ = true; return *this; }
  index dv() const { return dv_ ? dv_ : d_; }
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

/// Longest length of a `big` case under XATTN_TEST_QUICK.
constexpr index kQuickLen = 257;

Case for_this_run(Case c) {
  if (quick() && c.big_) c.nq_ = std::min(c.nq_, kQuickLen), c.nk_ = std::min(c.nk_, kQuickLen);
  return c;
}

/// The options of a case and the data they point into (spans and tensor references: not movable).
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

std::array<index, 4> bcast_dims(bcast m, const Case& c) {
  const index b = m == bcast::full || m == bcast::batch_one ? c.b_ : 1;
  const index h = m == bcast::full || m == bcast::one_head ? c.hq_ : 1;
  return {b, h, c.nq_, c.nk_};
}

std::unique_ptr<option_data> make_options(const Case& c, std::mt19937_64& rng) {
  auto od = std::make_unique<option_data>();
  auto& o = od->opt;
  o.scale = c.scale_;
  o.causal = c.causal_;
  o.window_left = c.wl_, o.window_right = c.wr_;
  o.softcap = c.softcap_;
  o.layout = c.lay_;
  if (c.alibi_) {  // FlashAttention's / the ALiBi paper's geometric slopes 2^(−8(h+1)/H)
    for (index h = 0; h < c.hq_; ++h) od->alibi.push_back(std::exp2(-8.0f * float(h + 1) / float(c.hq_)));
    o.alibi_slopes = od->alibi;
  }
  if (c.sinks_) {  // around a row's typical maximum, so that the sink matters
    std::uniform_real_distribution<float> u(-1.f, 3.f);
    for (index h = 0; h < c.hq_; ++h) od->sinks.push_back(u(rng));
    o.sink_logits = od->sinks;
  }
  od->sq = c.sq_, od->sk = c.sk_;
  o.seqlens_q = od->sq, o.seqlens_k = od->sk;
  if (c.bias_ != bcast::none) {
    od->bias = tensor<float>(bcast_dims(c.bias_, c));
    fill_random(od->bias, rng);
    if (c.bias_neg_inf_) {
      std::bernoulli_distribution hole(0.3);
      const index nk = c.nk_;
      for (index x = 0; x < od->bias.size(); ++x)
        if ((x / nk) % 4 == 1 || hole(rng)) od->bias.data()[x] = -std::numeric_limits<float>::infinity();
    }
    o.bias = od->bias;
  }
  if (c.mask_ != bcast::none) {
    od->mask = tensor<bool>(bcast_dims(c.mask_, c));
    std::bernoulli_distribution keep(c.mask_p_);
    for (index x = 0; x < od->mask.size(); ++x)
      od->mask.data()[x] = keep(rng) && !(c.mask_dead_rows_ && (x / c.nk_) % 5 == 2);
    o.mask = od->mask;
  }
  return od;
}

template <class T>
struct inputs {
  tensor<T> q, k, v;
};

template <class T>
inputs<T> make_inputs(const Case& c, std::mt19937_64& rng) {
  inputs<T> in{make_tensor<T>(c.lay_, c.b_, c.nq_, c.hq_, c.d_), make_tensor<T>(c.lay_, c.b_, c.nk_, c.hkv_, c.d_),
               make_tensor<T>(c.lay_, c.b_, c.nk_, c.hkv_, c.dv())};
  const double qk = std::sqrt(c.logits_);
  fill_random(in.q, rng, c.dist_, qk);
  fill_random(in.k, rng, c.dist_, qk);
  fill_random(in.v, rng, c.dist_);
  if (c.offset_ > 0) {
    // k_j += big·w with w a random unit vector per (batch, K/V head): row i's scores are
    // scale·big·(q_i·w) ≈ ±offset plus O(1) differences between keys, so every row is sensitive
    // to the rounding of scores of size 1e4 (large-magnitude q·k without a one-hot softmax).
    const double big = c.offset_ / (c.scale_ ? *c.scale_ : 1 / std::sqrt(double(c.d_)));
    std::normal_distribution<double> normal;
    std::vector<double> w(static_cast<std::size_t>(c.d_));
    for (index b = 0; b < c.b_; ++b)
      for (index h = 0; h < c.hkv_; ++h) {
        double norm = 0;
        for (double& x : w) {
          x = normal(rng);
          norm += x * x;
        }
        for (index j = 0; j < c.nk_; ++j)
          for (index e = 0; e < c.d_; ++e) at(in.k, c.lay_, b, j, h, e) += T(big * w[e] / std::sqrt(norm));
      }
  }
  return in;
}

template <class T>
struct outputs {
  tensor<T> out;
  tensor<T, 3> lse;
};

/// Output tensors of a case, filled with NaN so that anything left unwritten fails the checks.
template <class T>
outputs<T> make_outputs(const Case& c) {
  outputs<T> o{make_tensor<T>(c.lay_, c.b_, c.nq_, c.hq_, c.dv()), tensor<T, 3>(c.b_, c.hq_, c.nq_)};
  o.out.setConstant(static_cast<T>(kNaN));
  o.lse.setConstant(static_cast<T>(kNaN));
  return o;
}

/// xattn::softmax_attention with lse through Eigen::TensorMap views over std::vector copies.
template <class T>
void call_through_maps(const inputs<T>& in, outputs<T>& o, const xattn::softmax_options& opt) {
  std::vector<T> qs(in.q.data(), in.q.data() + in.q.size()), ks(in.k.data(), in.k.data() + in.k.size()),
      vs(in.v.data(), in.v.data() + in.v.size()), os(o.out.data(), o.out.data() + o.out.size()),
      ls(o.lse.data(), o.lse.data() + o.lse.size());
  Eigen::TensorMap<const tensor<T>> q(qs.data(), in.q.dimensions()), k(ks.data(), in.k.dimensions()),
      v(vs.data(), in.v.dimensions());
  Eigen::TensorMap<tensor<T>> out(os.data(), o.out.dimensions());
  Eigen::TensorMap<tensor<T, 3>> lse(ls.data(), o.lse.dimensions());
  xattn::softmax_attention(q, k, v, out, lse, opt);
  std::copy(os.begin(), os.end(), o.out.data());
  std::copy(ls.begin(), ls.end(), o.lse.data());
}

/// The naive implementation must itself be close to the oracle, or the rule proves nothing: a
/// large naive error means the test's reading of an option and the reference's differ.
template <class T>
void expect_naive_sane(const attention_result<T>& naive, const attention_result<double>& ref) {
  const double limit = 100 * rule_eps<T>(naive.max_abs_score);
  EXPECT_LE(max_abs_diff(naive.out, ref.out).max, limit) << "naive out disagrees with the reference";
  EXPECT_LE(max_abs_diff(naive.lse, ref.lse).max, limit) << "naive lse disagrees with the reference";
}

// ---------------------------------------------------------------------------------------------
// Accuracy against the reference, case by case

template <class T>
void check_accuracy(const Case& c) {
  SCOPED_TRACE(seed_note(c.name));
  std::mt19937_64 rng(case_seed(c.name));
  const inputs<T> in = make_inputs<T>(c, rng);
  const auto od = make_options(c, rng);
  const xattn::softmax_options& opt = od->opt;

  const attention_result<double> ref = oracle(in.q, in.k, in.v, opt);
  const attention_result<T> naive = naive_softmax<T>(in.q, in.k, in.v, opt);
  expect_naive_sane(naive, ref);
  const double eps = rule_eps<T>(naive.max_abs_score);

  outputs<T> o = make_outputs<T>(c);
  if (c.map_) call_through_maps(in, o, opt);
  else xattn::softmax_attention(in.q, in.k, in.v, o.out, o.lse, opt);
  EXPECT_TRUE(within_rule("out", o.out, naive.out, ref.out, eps));
  EXPECT_TRUE(within_rule("lse", o.lse, naive.lse, ref.lse, eps));
  EXPECT_TRUE(masked_rows_are_zero(o.out, o.lse, ref.lse, c.lay_));

  // The other overloads compute the same bits: without lse, on two threads, from tensors.
  outputs<T> plain = make_outputs<T>(c), threaded = make_outputs<T>(c);
  xattn::softmax_attention(in.q, in.k, in.v, plain.out, opt);
  EXPECT_TRUE(bitwise_equal("out without lse", o.out, plain.out));
  xattn::softmax_attention(device(2), in.q, in.k, in.v, threaded.out, threaded.lse, opt);
  EXPECT_TRUE(bitwise_equal("out on 2 threads", o.out, threaded.out));
  EXPECT_TRUE(bitwise_equal("lse on 2 threads", o.lse, threaded.lse));

  // The scalar path (what a machine without SIMD runs) obeys the same rule.
  outputs<T> scalar = make_outputs<T>(c);
  xattn::softmax_attention<xattn::simd::scalar>(in.q, in.k, in.v, scalar.out, scalar.lse, opt);
  EXPECT_TRUE(within_rule("out (scalar path)", scalar.out, naive.out, ref.out, eps));
  EXPECT_TRUE(within_rule("lse (scalar path)", scalar.lse, naive.lse, ref.lse, eps));
  EXPECT_TRUE(masked_rows_are_zero(scalar.out, scalar.lse, ref.lse, c.lay_));
}

class SoftmaxAccuracy : public ::testing::TestWithParam<Case> {};

TEST_P(SoftmaxAccuracy, MatchesReference) {
  const Case c = for_this_run(GetParam());
  if (c.f64_) check_accuracy<double>(c);
  else check_accuracy<float>(c);
}

using B = bcast;
const std::vector<Case> kAccuracyCases = {
    // lengths and head dims
    Case("len1_d64").len(1).dim(64),
    Case("len7_d40").len(7).dim(40),
    Case("len113_d64").len(113).dim(64),
    Case("len113_d72").len(113).dim(72),
    Case("len113_d80_bhsd").len(113).dim(80).bhsd(),
    Case("len113_d96").len(113).dim(96),
    Case("len113_d128").len(113).dim(128),
    Case("len113_d256").len(113).dim(256).heads(2, 1),
    Case("len113_d1").len(113).dim(1),
    Case("len7_d1_causal").len(7).dim(1).causal(),
    Case("len1000_d64").batch(1).heads(2, 1).len(1000).dim(64).big(),
    Case("len1000_d128_causal_gqa4").batch(1).heads(4, 1).len(1000).dim(128).causal().big(),
    Case("len1000_d80_f64").f64().batch(1).heads(1, 1).len(1000).dim(80).big(),
    Case("len1000_window_sinks_bhsd").batch(1).heads(2, 2).len(1000).dim(64).window(100, 30).sinks().bhsd().big(),
    // cross-attention, Nq != Nk both ways
    Case("cross_nq7_nk113").len(7, 113).dim(64),
    Case("cross_nq113_nk7").len(113, 7).dim(64),
    Case("cross_nq1_nk1000").heads(4, 1).len(1, 1000).dim(64),
    Case("cross_nq1000_nk7").batch(1).len(1000, 7).dim(40),
    // grouped-query attention
    Case("gqa1_h4_kv4").heads(4, 4).len(50, 61).dim(64),
    Case("gqa2_h8_kv4").heads(8, 4).len(50, 61).dim(64),
    Case("gqa4_h8_kv2").heads(8, 2).len(50, 61).dim(64),
    Case("gqa8_h8_kv1_mqa").heads(8, 1).len(50, 61).dim(64),
    Case("mqa_h3_kv1").heads(3, 1).len(50, 61).dim(40),
    // d_v != d_qk
    Case("dv72_d40").len(50).dim(40, 72),
    Case("dv16_d128").len(50).dim(128, 16),
    Case("dv1_d64").len(50).dim(64, 1),
    Case("dv256_d32").len(50).dim(32, 256).heads(2, 1),
    // causal, bottom-right aligned
    Case("causal_len113").len(113).dim(64).causal(),
    Case("causal_nq37_nk113").len(37, 113).dim(64).causal(),
    Case("causal_nq113_nk37").len(113, 37).dim(64).causal(),
    Case("causal_nq1_nk50").len(1, 50).dim(64).causal(),
    Case("causal_len7_bhsd").len(7).dim(40).causal().bhsd(),
    Case("causal_nq60_nk45_f64").f64().len(60, 45).dim(72).causal(),
    // windows
    Case("window_left16").len(113).dim(64).window(16, -1),
    Case("window_right5").len(113).dim(64).window(-1, 5),
    Case("window_l8_r3").len(113).dim(64).window(8, 3),
    Case("window_0_0").len(113).dim(64).window(0, 0),
    Case("window_0_0_nq40_nk100").len(40, 100).dim(64).window(0, 0),
    Case("window_l10_r10_nq100_nk40").len(100, 40).dim(64).window(10, 10),
    Case("window_left20_causal").len(113).dim(64).window(20, -1).causal(),
    Case("window_right0").len(113, 90).dim(64).window(-1, 0),
    Case("window_wider_than_seq").len(50, 70).dim(64).window(500, 500),
    // per-batch lengths (varlen); padded rows are zeros
    Case("varlen_q_and_k").batch(3).len(50).dim(64).seqlens({50, 17, 0}, {50, 33, 10}),
    Case("varlen_k_only").len(9, 64).dim(64).seqlens({}, {64, 20}),
    Case("varlen_q_only").len(64, 30).dim(40).seqlens({3, 64}, {}),
    Case("varlen_causal").batch(3).len(40, 60).dim(64).causal().seqlens({40, 25, 10}, {60, 20, 0}),
    Case("varlen_window_bhsd").len(64).dim(64).window(5, 7).seqlens({30, 64}, {64, 45}).bhsd(),
    Case("varlen_alibi_causal").len(48, 64).dim(32).causal().alibi().seqlens({48, 20}, {30, 64}),
    // additive bias, broadcast over batch and heads
    Case("bias_full").len(50, 61).dim(64).bias(B::full),
    Case("bias_batch_one").len(50, 61).dim(64).bias(B::batch_one),
    Case("bias_one_head").len(50, 61).dim(64).bias(B::one_head),
    Case("bias_one_one").len(50, 61).dim(64).bias(B::one_one),
    Case("bias_neg_inf").len(50, 61).dim(64).bias(B::full, true),
    Case("bias_neg_inf_one_one_sinks").len(50, 61).dim(64).bias(B::one_one, true).sinks(),
    // boolean mask, broadcast over batch and heads; fully masked rows
    Case("mask_full").len(50, 61).dim(64).mask(B::full),
    Case("mask_batch_one").len(50, 61).dim(64).mask(B::batch_one),
    Case("mask_one_head").len(50, 61).dim(64).mask(B::one_head),
    Case("mask_one_one").len(50, 61).dim(64).mask(B::one_one),
    Case("mask_dead_rows").len(50, 61).dim(64).mask(B::full, 0.7, true),
    Case("mask_all_false").len(20, 30).dim(64).mask(B::one_one, 0.0),
    Case("mask_sparse").len(113).dim(64).mask(B::full, 0.05),
    Case("mask_causal_nq40_nk113").len(40, 113).dim(64).mask(B::batch_one, 0.7, true).causal(),
    // softcap, ALiBi, sinks, scale
    Case("softcap30").len(113).dim(64).softcap(30).scale(1.0),
    Case("softcap50_logits1e4").len(50, 61).dim(64).softcap(50).logits(1e4),
    Case("softcap_f64").f64().len(50, 61).dim(64).softcap(5),
    Case("alibi").len(113).dim(64).alibi(),
    Case("alibi_causal_nq40_nk113").len(40, 113).dim(64).alibi().causal(),
    Case("alibi_nq113_nk40").len(113, 40).dim(64).alibi(),
    Case("alibi_f64").f64().len(50, 61).dim(40).alibi(),
    Case("sinks").len(113).dim(64).sinks(),
    Case("sinks_dead_mask_rows").len(50, 61).dim(64).sinks().mask(B::one_head, 0.5, true),
    Case("sinks_causal_nq113_nk37").len(113, 37).dim(64).sinks().causal(),
    Case("sinks_varlen").len(40).dim(32).sinks().seqlens({40, 11}, {17, 40}),
    Case("scale_0_05").len(50, 61).dim(64).scale(0.05),
    Case("scale_2").len(50, 61).dim(64).scale(2.0),
    // logits near ±1e4
    Case("logits1e4").len(50, 61).dim(64).logits(1e4),
    Case("logits1e4_causal_gqa4").heads(8, 2).len(61, 50).dim(64).logits(1e4).causal(),
    Case("logits1e4_f64").f64().len(50, 61).dim(64).logits(1e4),
    Case("logits1e4_uniform").len(50, 61).dim(64).logits(1e4).uniform(),
    Case("logits1e4_d128_bhsd").len(113).dim(128).logits(1e4).bhsd(),
    Case("offset1e4").len(113).dim(64).offset(1e4),
    Case("offset1e4_causal_gqa4_bhsd").heads(8, 2).len(90, 113).dim(80).offset(1e4).causal().bhsd(),
    Case("offset1e4_d128_sinks").len(113).dim(128).offset(1e4).sinks(),
    Case("offset1e4_f64").f64().len(113).dim(64).offset(1e4),
    Case("uniform_d64").len(113).dim(64).uniform(),
    // double
    Case("f64_len113_d64").f64().len(113).dim(64),
    Case("f64_cross_gqa4").f64().heads(8, 2).len(30, 113).dim(96),
    Case("f64_varlen_mask_bias").f64().len(50, 61).dim(64).seqlens({50, 20}, {40, 61}).mask(B::full).bias(B::one_head),
    // options combined
    Case("combo_causal_gqa_alibi_softcap").heads(8, 2).len(90, 113).dim(80).causal().alibi().softcap(20),
    Case("combo_varlen_mask_bias_sinks").batch(3).len(50, 61).dim(64).seqlens({50, 12, 0}, {61, 40, 5})
        .mask(B::full, 0.8, true).bias(B::batch_one).sinks(),
    Case("combo_window_alibi_sinks_bhsd").len(113, 100).dim(72).window(12, 4).alibi().sinks().bhsd(),
    Case("combo_everything").batch(3).heads(8, 2).len(70, 90).dim(40, 24).causal().window(30, -1).scale(0.2)
        .softcap(15).alibi().sinks().seqlens({70, 33, 1}, {90, 50, 2}).bias(B::one_head, true)
        .mask(B::batch_one, 0.8, true),
    Case("combo_everything_f64_bhsd").f64().batch(3).heads(8, 2).len(70, 90).dim(40, 24).causal().window(30, -1)
        .scale(0.2).softcap(15).alibi().sinks().seqlens({70, 33, 1}, {90, 50, 2}).bias(B::one_head, true)
        .mask(B::batch_one, 0.8, true).bhsd(),
    // several 256-lane blocks whose partial tiles (diagonal, window edge) run 32 lanes at a time,
    // every modifier on those ranges
    Case("combo_everything_long_gqa4").heads(8, 2).len(300, 330).dim(64).causal().window(100, -1).softcap(15)
        .alibi().sinks().bias(B::one_head).mask(B::batch_one, 0.9).big(),
    // Eigen::TensorMap over caller memory
    Case("map_dense").len(50, 61).dim(64).map(),
    Case("map_causal_bhsd").len(61, 50).dim(64).causal().bhsd().map(),
    Case("map_varlen_f64").f64().len(40).dim(32).seqlens({40, 7}, {21, 40}).map(),
};

std::string case_name(const ::testing::TestParamInfo<Case>& info) { return info.param.name; }

INSTANTIATE_TEST_SUITE_P(Cases, SoftmaxAccuracy, ::testing::ValuesIn(kAccuracyCases), case_name);

// ---------------------------------------------------------------------------------------------
// Thread-count invariance: serial, 1, 2 and 3 threads give the same bits

template <class T>
void check_thread_invariance(const Case& c) {
  SCOPED_TRACE(seed_note(c.name));
  std::mt19937_64 rng(case_seed(c.name));
  const inputs<T> in = make_inputs<T>(c, rng);
  const auto od = make_options(c, rng);
  outputs<T> serial = make_outputs<T>(c);
  xattn::softmax_attention(in.q, in.k, in.v, serial.out, serial.lse, od->opt);
  for (int threads : {1, 2, 3}) {
    SCOPED_TRACE("threads " + std::to_string(threads));
    outputs<T> par = make_outputs<T>(c);
    xattn::softmax_attention(device(threads), in.q, in.k, in.v, par.out, par.lse, od->opt);
    EXPECT_TRUE(bitwise_equal("out", serial.out, par.out));
    EXPECT_TRUE(bitwise_equal("lse", serial.lse, par.lse));
  }
}

class SoftmaxThreads : public ::testing::TestWithParam<Case> {};

TEST_P(SoftmaxThreads, BitwiseIdenticalForAnyThreadCount) {
  const Case c = for_this_run(GetParam());
  if (c.f64_) check_thread_invariance<double>(c);
  else check_thread_invariance<float>(c);
}

const std::vector<Case> kThreadCases = {
    Case("threads_dense_gqa").batch(2).heads(8, 2).len(300).dim(64),
    Case("threads_causal_nq200_nk333").heads(4, 2).len(200, 333).dim(64).causal(),
    Case("threads_causal_nq333_nk200").heads(4, 2).len(333, 200).dim(64).causal(),
    Case("threads_window").len(300).dim(64).window(40, 10),
    Case("threads_varlen_mask_sinks").batch(3).len(150, 170).dim(64).seqlens({150, 60, 0}, {170, 100, 9})
        .mask(B::full, 0.8, true).sinks(),
    Case("threads_f64_causal_bhsd").f64().len(150).dim(80).causal().bhsd(),
    Case("threads_one_item").batch(1).heads(1, 1).len(1, 500).dim(128),
    Case("threads_many_items").batch(3).heads(8, 8).len(130).dim(32).causal(),
};

INSTANTIATE_TEST_SUITE_P(Cases, SoftmaxThreads, ::testing::ValuesIn(kThreadCases), case_name);

// ---------------------------------------------------------------------------------------------
// Decode against a KV cache with capacity > cache_lengths

struct DecodeCase {
  std::string name;
  bool f64 = false;
  index batch = 2, nq = 1, hq = 32, hkv = 8, d = 128, capacity = 5120;
  std::vector<int> lengths = {4999, 1234};
  bool causal = false;
  index window_left = -1;
  bool sinks = false, alibi = false;
  layout lay = layout::bshd;
};

void PrintTo(const DecodeCase& c, std::ostream* os) { *os << c.name; }

/// Under XATTN_TEST_QUICK the cache keeps about 2k keys: still above the split threshold.
constexpr int kQuickCache = 2100;

template <class T>
void check_decode(DecodeCase c) {
  if (quick()) {
    c.capacity = std::min<index>(c.capacity, kQuickCache);
    for (int& n : c.lengths) n = std::min<int>(n, kQuickCache);
  }
  SCOPED_TRACE(seed_note(c.name));
  std::mt19937_64 rng(case_seed(c.name));
  tensor<T> q = make_tensor<T>(c.lay, c.batch, c.nq, c.hq, c.d);
  tensor<T> kc = make_tensor<T>(c.lay, c.batch, c.capacity, c.hkv, c.d), vc = make_tensor<T>(c.lay, c.batch, c.capacity, c.hkv, c.d);
  fill_random(q, rng);
  fill_random(kc, rng);
  fill_random(vc, rng);
  // Stale cache rows past each length hold large values: a kernel reading them would show.
  for (index b = 0; b < c.batch; ++b)
    for (index s = c.lengths[b]; s < c.capacity; ++s)
      for (index h = 0; h < c.hkv; ++h)
        for (index e = 0; e < c.d; ++e) at(kc, c.lay, b, s, h, e) = at(vc, c.lay, b, s, h, e) = T(1e4);
  std::vector<float> sinks, slopes;
  std::uniform_real_distribution<float> u(-1.f, 3.f);
  for (index h = 0; h < c.hq; ++h) {
    sinks.push_back(u(rng));
    slopes.push_back(std::exp2(-8.0f * float(h + 1) / float(c.hq)));
  }
  xattn::softmax_options opt{.causal = c.causal, .window_left = c.window_left, .layout = c.lay};
  if (c.sinks) opt.sink_logits = sinks;
  if (c.alibi) opt.alibi_slopes = slopes;

  xattn::softmax_options ref_opt = opt;
  ref_opt.seqlens_k = c.lengths;
  const attention_result<double> ref = oracle(q, kc, vc, ref_opt);
  const attention_result<T> naive = naive_softmax<T>(q, kc, vc, ref_opt);
  expect_naive_sane(naive, ref);

  auto fresh_out = [&] {
    tensor<T> o = make_tensor<T>(c.lay, c.batch, c.nq, c.hq, c.d);
    o.setConstant(static_cast<T>(kNaN));
    return o;
  };
  tensor<T> out = fresh_out();
  xattn::softmax_decode(q, kc, vc, out, c.lengths, opt);
  EXPECT_TRUE(within_rule("out", out, naive.out, ref.out, rule_eps<T>(naive.max_abs_score)));
  for (int threads : {1, 2, 3}) {
    SCOPED_TRACE("threads " + std::to_string(threads));
    tensor<T> par = fresh_out();
    xattn::softmax_decode(device(threads), q, kc, vc, par, c.lengths, opt);
    EXPECT_TRUE(bitwise_equal("out", out, par));
  }  tensor<T> scalar = fresh_out();  // the portable path: one lane, a block per K/V head
  xattn::softmax_decode<xattn::simd::scalar>(q, kc, vc, scalar, c.lengths, opt);
  EXPECT_TRUE(within_rule("out (scalar path)", scalar, naive.out, ref.out, rule_eps<T>(naive.max_abs_score)));
}

class SoftmaxDecode : public ::testing::TestWithParam<DecodeCase> {};

TEST_P(SoftmaxDecode, MatchesReferenceWithSeqlensK) {
  if (GetParam().f64) check_decode<double>(GetParam());
  else check_decode<float>(GetParam());
}

const std::vector<DecodeCase> kDecodeCases = {
    {.name = "b2_h32_kv8_nq1_d128"},
    {.name = "b2_h32_kv8_nq4_causal_d128", .nq = 4, .capacity = 3100, .lengths = {3000, 1100}, .causal = true},
    {.name = "b1_h8_kv1_nq1_len5000", .batch = 1, .hq = 8, .hkv = 1, .d = 64, .capacity = 5003, .lengths = {5000}},
    {.name = "b1_h4_kv4_nq3_causal_len4100", .batch = 1, .nq = 3, .hq = 4, .hkv = 4, .d = 80, .capacity = 4100,
     .lengths = {4100}, .causal = true},
    {.name = "lengths_0_and_1", .hq = 8, .hkv = 2, .d = 64, .capacity = 64, .lengths = {0, 1}},
    {.name = "nq4_causal_lengths_1_and_3", .nq = 4, .hq = 8, .hkv = 2, .d = 64, .capacity = 16, .lengths = {1, 3},
     .causal = true},
    {.name = "split_with_empty_cache", .hq = 4, .hkv = 1, .d = 64, .capacity = 4096, .lengths = {0, 700}},
    {.name = "split_with_empty_cache_sinks", .hq = 4, .hkv = 1, .d = 64, .capacity = 4096, .lengths = {700, 0},
     .sinks = true},
    {.name = "window_sinks", .hq = 8, .hkv = 2, .d = 64, .capacity = 4096, .lengths = {3000, 4096},
     .window_left = 256, .sinks = true},
    {.name = "alibi_f64", .f64 = true, .hq = 8, .hkv = 2, .d = 64, .capacity = 2500, .lengths = {2000, 1500},
     .alibi = true},
    {.name = "nq2_causal_bhsd", .nq = 2, .hq = 8, .hkv = 2, .d = 96, .capacity = 3000, .lengths = {2999, 1800},
     .causal = true, .lay = layout::bhsd},
    // Several K/V heads share one block of lanes (narrow blocks pack heads whose rows are few), the
    // last block partly filled; d that needs zero padding (copied tiles); key-major and bhsd order.
    {.name = "mha_h7_packed_heads_d40", .hq = 7, .hkv = 7, .d = 40, .capacity = 3000, .lengths = {2900, 17}},
    {.name = "nq3_h10_kv5_packed_causal_sinks_alibi", .nq = 3, .hq = 10, .hkv = 5, .d = 64, .capacity = 2200,
     .lengths = {2200, 999}, .causal = true, .sinks = true, .alibi = true},
    {.name = "mha_h6_packed_bhsd_window", .hq = 6, .hkv = 6, .d = 72, .capacity = 2600, .lengths = {2600, 1300},
     .window_left = 700, .lay = layout::bhsd},
    {.name = "mha_h5_packed_f64", .f64 = true, .hq = 5, .hkv = 5, .d = 32, .capacity = 2100, .lengths = {2048, 5}},
};

INSTANTIATE_TEST_SUITE_P(Cases, SoftmaxDecode, ::testing::ValuesIn(kDecodeCases),
                         [](const auto& info) { return info.param.name; });

// ---------------------------------------------------------------------------------------------
// Properties: identities between options, layouts and calls

/// Runs the fast kernel on the inputs of `c` with options `opt`.
outputs<float> run_fast(const Case& c, const inputs<float>& in, const xattn::softmax_options& opt) {
  outputs<float> o = make_outputs<float>(c);
  xattn::softmax_attention(in.q, in.k, in.v, o.out, o.lse, opt);
  return o;
}

/// Two results of the same attention computed two ways agree within float rounding.
void expect_same_attention(const outputs<float>& a, const outputs<float>& b) {
  EXPECT_LE(max_abs_diff(a.out, b.out).max, 1e-5);
  EXPECT_LE(max_abs_diff(a.lse, b.lse).max, 1e-5);
}

class SoftmaxProperty : public ::testing::Test {
 protected:
  const Case c = Case("property").batch(2).heads(4, 2).len(70, 90).dim(64);
  std::mt19937_64 rng{case_seed(::testing::UnitTest::GetInstance()->current_test_info()->name())};
  const inputs<float> in = make_inputs<float>(c, rng);
  void SetUp() override { trace_.emplace(__FILE__, __LINE__, seed_note(::testing::UnitTest::GetInstance()->current_test_info()->name())); }

 private:
  std::optional<::testing::ScopedTrace> trace_;
};

TEST_F(SoftmaxProperty, WindowAsWideAsTheSequenceEqualsDense) {
  expect_same_attention(run_fast(c, in, {.window_left = 90, .window_right = 90}), run_fast(c, in, {}));
  expect_same_attention(run_fast(c, in, {.causal = true, .window_left = 1000}), run_fast(c, in, {.causal = true}));
  // the largest windows: unbounded, with no position + window overflowing (independent checker)
  constexpr index kMax = std::numeric_limits<index>::max();
  expect_same_attention(run_fast(c, in, {.window_left = kMax, .window_right = kMax}), run_fast(c, in, {}));
}

TEST_F(SoftmaxProperty, CausalEqualsWindowRightZero) {
  expect_same_attention(run_fast(c, in, {.causal = true}), run_fast(c, in, {.window_right = 0}));
  expect_same_attention(run_fast(c, in, {.causal = true, .window_left = 9}),
                        run_fast(c, in, {.window_left = 9, .window_right = 0}));
}

TEST_F(SoftmaxProperty, NeutralOptionsEqualNoOptions) {
  const outputs<float> plain = run_fast(c, in, {});
  tensor<bool> all_true(1, 1, c.nq_, c.nk_);
  all_true.setConstant(true);
  tensor<float> zero_bias(c.b_, c.hq_, c.nq_, c.nk_);
  zero_bias.setZero();
  const std::vector<float> zero_slopes(c.hq_, 0.f), no_sink(c.hq_, -1e30f);
  const std::vector<int> full_q(c.b_, int(c.nq_)), full_k(c.b_, int(c.nk_));
  expect_same_attention(run_fast(c, in, {.mask = all_true}), plain);
  expect_same_attention(run_fast(c, in, {.bias = zero_bias}), plain);
  expect_same_attention(run_fast(c, in, {.alibi_slopes = zero_slopes}), plain);
  expect_same_attention(run_fast(c, in, {.sink_logits = no_sink}), plain);
  expect_same_attention(run_fast(c, in, {.seqlens_q = full_q, .seqlens_k = full_k}), plain);
  expect_same_attention(run_fast(c, in, {.softcap = 1e6}), plain);
  expect_same_attention(run_fast(c, in, {.scale = 1 / std::sqrt(double(c.d_))}), plain);
}

TEST_F(SoftmaxProperty, LayoutsAgree) {
  // The same data in [b, h, s, d] order: bhsd results are the bshd results transposed.
  const std::array<int, 4> swap{0, 2, 1, 3};
  const inputs<float> t{in.q.shuffle(swap), in.k.shuffle(swap), in.v.shuffle(swap)};
  Case ct = c;
  ct.bhsd();
  for (bool causal : {false, true}) {
    const outputs<float> a = run_fast(c, in, {.causal = causal});
    const outputs<float> b = run_fast(ct, t, {.causal = causal, .layout = layout::bhsd});
    const tensor<float> b_out = b.out.shuffle(swap);
    EXPECT_LE(max_abs_diff(a.out, b_out).max, 1e-5);
    EXPECT_LE(max_abs_diff(a.lse, b.lse).max, 1e-5);
  }
}

TEST_F(SoftmaxProperty, LseMergesAttentionOverSplitKeys) {
  // Attention over keys [0, s) and [s, Nk) separately, merged by their LSE, equals attention
  // over all keys: out = Σ exp(lse_i − lse)·out_i with lse = log Σ exp(lse_i) (flash-decoding).
  const index split = 37;
  const Eigen::array<index, 4> off1{0, 0, 0, 0}, off2{0, split, 0, 0};
  const Eigen::array<index, 4> ext1{c.b_, split, c.hkv_, c.d_}, ext2{c.b_, c.nk_ - split, c.hkv_, c.d_};
  Case c1 = c, c2 = c;
  c1.len(c.nq_, split), c2.len(c.nq_, c.nk_ - split);
  const inputs<float> in1{in.q, in.k.slice(off1, ext1), in.v.slice(off1, ext1)};
  const inputs<float> in2{in.q, in.k.slice(off2, ext2), in.v.slice(off2, ext2)};
  const outputs<float> all = run_fast(c, in, {}), o1 = run_fast(c1, in1, {}), o2 = run_fast(c2, in2, {});
  for (index b = 0; b < c.b_; ++b)
    for (index h = 0; h < c.hq_; ++h)
      for (index i = 0; i < c.nq_; ++i) {
        const double l1 = o1.lse(b, h, i), l2 = o2.lse(b, h, i), m = std::max(l1, l2);
        const double lse = m + std::log(std::exp(l1 - m) + std::exp(l2 - m));
        EXPECT_NEAR(all.lse(b, h, i), lse, 1e-5);
        for (index e = 0; e < c.d_; ++e) {
          const double merged = std::exp(l1 - lse) * o1.out(b, i, h, e) + std::exp(l2 - lse) * o2.out(b, i, h, e);
          EXPECT_NEAR(all.out(b, i, h, e), merged, 1e-5);
        }
      }
}

TEST_F(SoftmaxProperty, DecodeEqualsAttentionWithSeqlensK) {
  const std::vector<int> lengths{90, 41};
  const Eigen::array<index, 4> off{0, c.nq_ - 3, 0, 0}, ext{c.b_, 3, c.hq_, c.d_};
  Case cq = c;
  cq.len(3, c.nk_);
  const inputs<float> last{in.q.slice(off, ext), in.k, in.v};
  const outputs<float> a = run_fast(cq, last, {.causal = true, .seqlens_k = lengths});
  tensor<float> decoded(c.b_, 3, c.hq_, c.d_);
  xattn::softmax_decode(last.q, in.k, in.v, decoded, lengths, {.causal = true});
  EXPECT_LE(max_abs_diff(a.out, decoded).max, 1e-5);
}

TEST_F(SoftmaxProperty, PaddingIsNeverRead) {
  // Query rows past seqlens_q and key/value rows past seqlens_k hold NaN: the result equals the
  // one with zeros there (a stale KV cache or a padded batch may hold anything).
  const std::vector<int> sq{70, 30}, sk{55, 90};
  inputs<float> clean = in, dirty = in;
  for (index b = 0; b < c.b_; ++b)
    for (index h = 0; h < c.hq_; ++h)
      for (index e = 0; e < c.d_; ++e) {
        for (index i = sq[b]; i < c.nq_; ++i) clean.q(b, i, h, e) = 0, dirty.q(b, i, h, e) = float(kNaN);
        if (h >= c.hkv_) continue;
        for (index j = sk[b]; j < c.nk_; ++j) {
          clean.k(b, j, h, e) = clean.v(b, j, h, e) = 0;
          dirty.k(b, j, h, e) = dirty.v(b, j, h, e) = float(kNaN);
        }
      }
  for (bool causal : {false, true}) {
    const xattn::softmax_options opt{.causal = causal, .seqlens_q = sq, .seqlens_k = sk};
    const outputs<float> a = run_fast(c, clean, opt), b = run_fast(c, dirty, opt);
    EXPECT_TRUE(bitwise_equal("out", a.out, b.out));
    EXPECT_TRUE(bitwise_equal("lse", a.lse, b.lse));
  }
}

// ---------------------------------------------------------------------------------------------
// Bad input: xattn::error naming the function and the argument, nothing written

/// A call assembled from TensorMaps over std::vectors, valid until a case changes it:
/// q [2, 5, 4, 8], k/v [2, 6, 2, 8], out [2, 5, 4, 8], lse [2, 4, 5] (decode: Nq = 1, cache of 6).
struct bad_call {
  std::array<index, 4> qd{2, 5, 4, 8}, kd{2, 6, 2, 8}, vd{2, 6, 2, 8}, od{2, 5, 4, 8};
  std::array<index, 3> ld{2, 4, 5};
  bool with_lse = false;
  bool decode = false;
  std::string null_arg;  // "q", "k", "v", "out" or "lse": a TensorMap over nullptr
  std::string out_alias;  // "q", "k" or "v": out starts inside that tensor's memory
  std::vector<float> alibi, sinks;
  std::vector<int> seqlens_q, seqlens_k, cache_lengths{6, 3};
  tensor<float> bias;
  tensor<bool> mask;
  xattn::softmax_options opt;
};

struct BadCase {
  std::string name;
  std::vector<std::string> args;  // the argument the message must name (any of these)
  std::function<void(bad_call&)> change;
  bool decode = false;
};

void PrintTo(const BadCase& c, std::ostream* os) { *os << c.name; }

constexpr float kSentinel = 12345.f;

template <std::size_t R>
std::size_t elements(const std::array<index, R>& d) {
  std::size_t n = 1;
  for (index x : d) n *= static_cast<std::size_t>(std::max<index>(x, 0));
  return n;
}

/// Does `msg` name function `fn` and one of `args` as "<fn>: ... <arg>: "?
::testing::AssertionResult names(const std::string& msg, const std::string& fn, const std::vector<std::string>& args) {
  if (msg.find(fn + ":") == std::string::npos)
    return ::testing::AssertionFailure() << "message does not name " << fn << ": \"" << msg << "\"";
  for (const auto& a : args)
    if (msg.find(" " + a + ":") != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "message does not name argument " << args.front() << ": \"" << msg << "\"";
}

/// Runs every entry point on `bc`'s call and expects each to throw xattn::error naming the entry
/// point and the argument, with every tensor unchanged.
void expect_rejected(const BadCase& bc) {
  bad_call c;
  if (bc.decode) c.decode = true, c.qd = {2, 1, 4, 8}, c.od = {2, 1, 4, 8}, c.ld = {2, 4, 1};
  bc.change(c);

  const std::size_t no = elements(c.od);
  auto storage = [&](const std::string& name, const std::array<index, 4>& d, float fill) {
    return std::vector<float>(elements(d) + (c.out_alias == name ? no + 16 : 0), fill);
  };
  std::vector<float> qs = storage("q", c.qd, 0.25f), ks = storage("k", c.kd, -0.5f), vs = storage("v", c.vd, 0.75f);
  std::vector<float> os(no, kSentinel), ls(elements(c.ld), kSentinel);
  const auto q0 = qs, k0 = ks, v0 = vs, o0 = os, l0 = ls;

  auto ptr = [&](const std::string& name, std::vector<float>& s) { return c.null_arg == name ? nullptr : s.data(); };
  float* out_ptr = c.out_alias == "q" ? qs.data() + 16
                   : c.out_alias == "k" ? ks.data() + 16
                   : c.out_alias == "v" ? vs.data() + 16
                                        : ptr("out", os);
  Eigen::TensorMap<const tensor<float>> q(ptr("q", qs), c.qd), k(ptr("k", ks), c.kd), v(ptr("v", vs), c.vd);
  Eigen::TensorMap<tensor<float>> out(out_ptr, c.od);
  Eigen::TensorMap<tensor<float, 3>> lse(ptr("lse", ls), c.ld);

  struct entry {
    std::string fn;
    std::function<void()> call;
  };
  std::vector<entry> entries;
  if (c.decode) {
    entries.push_back({"xattn::softmax_decode", [&] { xattn::softmax_decode(q, k, v, out, c.cache_lengths, c.opt); }});
    entries.push_back(
        {"xattn::softmax_decode", [&] { xattn::softmax_decode(device(2), q, k, v, out, c.cache_lengths, c.opt); }});
    if (c.opt.seqlens_k.empty()) {
      entries.push_back({"xattn::reference::softmax_attention", [&] {
                           xattn::softmax_options o = c.opt;
                           o.seqlens_k = c.cache_lengths;
                           xattn::reference::softmax_attention(q, k, v, out, o);
                         }});
    }
  } else if (c.with_lse) {
    entries.push_back({"xattn::softmax_attention", [&] { xattn::softmax_attention(q, k, v, out, lse, c.opt); }});
    entries.push_back(
        {"xattn::softmax_attention", [&] { xattn::softmax_attention(device(2), q, k, v, out, lse, c.opt); }});
    entries.push_back({"xattn::reference::softmax_attention",
                       [&] { xattn::reference::softmax_attention(q, k, v, out, lse, c.opt); }});
  } else {
    entries.push_back({"xattn::softmax_attention", [&] { xattn::softmax_attention(q, k, v, out, c.opt); }});
    entries.push_back({"xattn::softmax_attention", [&] { xattn::softmax_attention(device(2), q, k, v, out, c.opt); }});
    entries.push_back(
        {"xattn::reference::softmax_attention", [&] { xattn::reference::softmax_attention(q, k, v, out, c.opt); }});
  }

  for (std::size_t e = 0; e < entries.size(); ++e) {
    SCOPED_TRACE(entries[e].fn + " (entry point " + std::to_string(e) + ")");
    try {
      entries[e].call();
      ADD_FAILURE() << "no xattn::error thrown";
    } catch (const xattn::error& err) {
      EXPECT_TRUE(names(err.what(), entries[e].fn, bc.args));
    } catch (const std::exception& err) {
      ADD_FAILURE() << "threw something other than xattn::error: " << err.what();
    }
    EXPECT_TRUE(qs == q0 && ks == k0 && vs == v0) << "an input was written";
    EXPECT_TRUE(os == o0) << "out was written";
    EXPECT_TRUE(ls == l0) << "lse was written";
  }
}

class SoftmaxBadInput : public ::testing::TestWithParam<BadCase> {};

TEST_P(SoftmaxBadInput, ThrowsNamingTheArgumentAndWritesNothing) { expect_rejected(GetParam()); }

TEST(SoftmaxBadInput, TheUnchangedCallIsAccepted) {
  // The baseline of the bad-input cases is valid, so each case fails for its one change only.
  const bad_call c;
  tensor<float> q(c.qd), k(c.kd), v(c.vd), out(c.od), ref(c.od);
  tensor<float, 3> lse(c.ld);
  q.setConstant(0.25f), k.setConstant(-0.5f), v.setConstant(0.75f);
  EXPECT_NO_THROW(xattn::softmax_attention(q, k, v, out, lse));
  EXPECT_NO_THROW(xattn::softmax_attention(device(2), q, k, v, out));
  EXPECT_NO_THROW(xattn::reference::softmax_attention(q, k, v, ref));
  const std::vector<int> lengths = c.cache_lengths;
  tensor<float> q1(2, 1, 4, 8), out1(2, 1, 4, 8);
  q1.setConstant(0.25f);
  EXPECT_NO_THROW(xattn::softmax_decode(q1, k, v, out1, lengths));
  EXPECT_FLOAT_EQ(out(0, 0, 0, 0), 0.75f);
  EXPECT_FLOAT_EQ(out1(1, 0, 3, 7), 0.75f);
}

const std::vector<BadCase> kBadCases = {
    {"k_batch", {"k"}, [](bad_call& c) { c.kd[0] = 3; }},
    {"v_batch", {"v"}, [](bad_call& c) { c.vd[0] = 1; }},
    {"k_head_dim", {"k"}, [](bad_call& c) { c.kd[3] = 16; }},
    {"v_seq", {"v"}, [](bad_call& c) { c.vd[1] = 7; }},
    {"v_heads", {"v"}, [](bad_call& c) { c.vd[2] = 1; }},
    {"q_heads_not_divisible", {"k"}, [](bad_call& c) { c.qd[2] = c.od[2] = 6, c.kd[2] = c.vd[2] = 4, c.ld[1] = 6; }},
    {"kv_heads_above_q_heads", {"k"}, [](bad_call& c) { c.kd[2] = c.vd[2] = 8; }},
    {"scale_zero", {"scale"}, [](bad_call& c) { c.opt.scale = 0.0; }},
    {"scale_negative", {"scale"}, [](bad_call& c) { c.opt.scale = -0.5; }},
    {"scale_nan", {"scale"}, [](bad_call& c) { c.opt.scale = kNaN; }},
    {"scale_inf", {"scale"}, [](bad_call& c) { c.opt.scale = std::numeric_limits<double>::infinity(); }},
    {"window_left_minus2", {"window_left"}, [](bad_call& c) { c.opt.window_left = -2; }},
    {"window_right_minus3", {"window_right"}, [](bad_call& c) { c.opt.window_right = -3; }},
    {"softcap_negative", {"softcap"}, [](bad_call& c) { c.opt.softcap = -1; }},
    {"out_wrong_dv", {"out"}, [](bad_call& c) { c.od[3] = 4; }},
    {"out_wrong_nq", {"out"}, [](bad_call& c) { c.od[1] = 4; }},
    {"out_wrong_heads", {"out"}, [](bad_call& c) { c.od[2] = 2; }},
    {"out_in_bhsd_order", {"out"}, [](bad_call& c) { c.od = {2, 4, 5, 8}; }},
    {"q_null", {"q"}, [](bad_call& c) { c.null_arg = "q"; }},
    {"k_null", {"k"}, [](bad_call& c) { c.null_arg = "k"; }},
    {"v_null", {"v"}, [](bad_call& c) { c.null_arg = "v"; }},
    {"out_null", {"out"}, [](bad_call& c) { c.null_arg = "out"; }},
    {"q_empty_axis", {"q"}, [](bad_call& c) { c.qd[3] = 0; }},
    {"mask_wrong_nk", {"mask"}, [](bad_call& c) { c.mask = tensor<bool>(2, 4, 5, 7), c.opt.mask = c.mask; }},
    {"mask_wrong_nq", {"mask"}, [](bad_call& c) { c.mask = tensor<bool>(1, 1, 6, 6), c.opt.mask = c.mask; }},
    {"mask_wrong_batch", {"mask"}, [](bad_call& c) { c.mask = tensor<bool>(3, 4, 5, 6), c.opt.mask = c.mask; }},
    {"mask_wrong_heads", {"mask"}, [](bad_call& c) { c.mask = tensor<bool>(1, 2, 5, 6), c.opt.mask = c.mask; }},
    {"mask_rank_swapped", {"mask"}, [](bad_call& c) { c.mask = tensor<bool>(2, 4, 6, 5), c.opt.mask = c.mask; }},
    {"mask_null", {"mask"},
     [](bad_call& c) { c.opt.mask = Eigen::TensorMap<tensor<bool>>(static_cast<bool*>(nullptr), 2, 4, 5, 6); }},
    {"bias_null", {"bias"},
     [](bad_call& c) { c.opt.bias = Eigen::TensorMap<tensor<float>>(static_cast<float*>(nullptr), 1, 1, 5, 6); }},
    {"bias_wrong_nk", {"bias"}, [](bad_call& c) { c.bias = tensor<float>(2, 4, 5, 5), c.opt.bias = c.bias; }},
    {"bias_wrong_heads", {"bias"}, [](bad_call& c) { c.bias = tensor<float>(2, 3, 5, 6), c.opt.bias = c.bias; }},
    {"lse_wrong_order", {"lse"}, [](bad_call& c) { c.with_lse = true, c.ld = {2, 5, 4}; }},
    {"lse_wrong_batch", {"lse"}, [](bad_call& c) { c.with_lse = true, c.ld = {1, 4, 5}; }},
    {"lse_null", {"lse"}, [](bad_call& c) { c.with_lse = true, c.null_arg = "lse"; }},
    {"seqlens_q_above_nq", {"seqlens_q"}, [](bad_call& c) { c.seqlens_q = {5, 6}, c.opt.seqlens_q = c.seqlens_q; }},
    {"seqlens_q_negative", {"seqlens_q"}, [](bad_call& c) { c.seqlens_q = {-1, 2}, c.opt.seqlens_q = c.seqlens_q; }},
    {"seqlens_q_count", {"seqlens_q"}, [](bad_call& c) { c.seqlens_q = {5, 5, 5}, c.opt.seqlens_q = c.seqlens_q; }},
    {"seqlens_k_above_nk", {"seqlens_k"}, [](bad_call& c) { c.seqlens_k = {7, 6}, c.opt.seqlens_k = c.seqlens_k; }},
    {"seqlens_k_count", {"seqlens_k"}, [](bad_call& c) { c.seqlens_k = {6}, c.opt.seqlens_k = c.seqlens_k; }},
    {"alibi_count", {"alibi_slopes"}, [](bad_call& c) { c.alibi = {0.5f, 0.25f, 0.125f}, c.opt.alibi_slopes = c.alibi; }},
    {"alibi_nan", {"alibi_slopes"},
     [](bad_call& c) { c.alibi = {0.5f, float(kNaN), 0.1f, 0.1f}, c.opt.alibi_slopes = c.alibi; }},
    {"sinks_count", {"sink_logits"}, [](bad_call& c) { c.sinks = std::vector<float>(5, 0.f), c.opt.sink_logits = c.sinks; }},
    {"sinks_inf", {"sink_logits"},
     [](bad_call& c) {
       c.sinks = {0.f, 0.f, std::numeric_limits<float>::infinity(), 0.f}, c.opt.sink_logits = c.sinks;
     }},
    {"out_overlaps_q", {"out"}, [](bad_call& c) { c.out_alias = "q"; }},
    {"out_overlaps_k", {"out"}, [](bad_call& c) { c.out_alias = "k"; }},
    {"out_overlaps_v", {"out"}, [](bad_call& c) { c.out_alias = "v"; }},
    // decode: the fast entry points name cache_lengths; the reference is called with seqlens_k
    {"decode_seqlens_k_given", {"seqlens_k"}, [](bad_call& c) { c.seqlens_k = {6, 6}, c.opt.seqlens_k = c.seqlens_k; },
     true},
    {"decode_length_above_capacity", {"cache_lengths", "seqlens_k"}, [](bad_call& c) { c.cache_lengths = {7, 3}; }, true},
    {"decode_length_negative", {"cache_lengths", "seqlens_k"}, [](bad_call& c) { c.cache_lengths = {6, -1}; }, true},
    {"decode_lengths_count", {"cache_lengths", "seqlens_k"}, [](bad_call& c) { c.cache_lengths = {6}; }, true},
    {"decode_cache_batch", {"k"}, [](bad_call& c) { c.kd[0] = 3; }, true},
    {"decode_scale_zero", {"scale"}, [](bad_call& c) { c.opt.scale = 0.0; }, true},
    {"decode_out_shape", {"out"}, [](bad_call& c) { c.od[1] = 2; }, true},
};

INSTANTIATE_TEST_SUITE_P(Cases, SoftmaxBadInput, ::testing::ValuesIn(kBadCases),
                         [](const auto& info) { return info.param.name; });

TEST(SoftmaxAlibi, SlopesPerBatchAndHeadEqualEachBatchWithItsOwnSlopes) {
  std::mt19937_64 rng(case_seed("alibi_per_batch"));
  tensor<float> q(3, 130, 4, 32), k(3, 150, 2, 32), v(3, 150, 2, 32), out(3, 130, 4, 32), ref(3, 130, 4, 32);
  fill_random(q, rng), fill_random(k, rng), fill_random(v, rng);
  const std::vector<float> slopes{0.5f, 0.25f, 0.125f, 0.0625f, 0.3f, 0.2f, 0.1f, 0.05f, 1.f, 0.f, 2.f, 0.7f};
  const xattn::softmax_options opt{.causal = true, .alibi_slopes = slopes};
  xattn::softmax_attention(device(2), q, k, v, out, opt);
  xattn::reference::softmax_attention(q, k, v, ref, opt);
  EXPECT_LT(max_abs_diff(out, ref).max, 2e-5);
  // Batch 1 alone, with its own four slopes, gives batch 1's rows.
  const Eigen::array<Eigen::Index, 4> at{1, 0, 0, 0}, qe{1, 130, 4, 32}, ke{1, 150, 2, 32};
  const tensor<float> q1 = q.slice(at, qe), k1 = k.slice(at, ke), v1 = v.slice(at, ke);
  tensor<float> o1(1, 130, 4, 32);
  xattn::softmax_attention(q1, k1, v1, o1, {.causal = true, .alibi_slopes = std::span<const float>(slopes).subspan(4, 4)});
  const tensor<float> out1 = out.slice(at, qe);
  EXPECT_TRUE(bitwise_equal("batch 1", o1, out1));
}

}  // namespace
}  // namespace xattn_test
