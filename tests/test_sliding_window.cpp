// tests/test_sliding_window.cpp — xattn::sliding_window_attention against the fp64 reference
// (flash-attention's accuracy rule), its identities with softmax attention, thread-count
// invariance, and bad options.
#include "test_util.hpp"

#include <xattn/sliding_window.hpp>

namespace xattn_test {
namespace {

using xattn::layout;

struct SwCase {
  std::string name;
  bool f64_ = false;
  index b_ = 1, nq_ = 200, nk_ = 200, hq_ = 4, hkv_ = 2, d_ = 32;
  layout lay_ = layout::bshd;
  xattn::sliding_window_options sw;
  bool alibi_ = false, sinks_logits_ = false;
  double softcap_ = 0;
  std::vector<int> sq_, sk_;
  bool big_ = false;

  explicit SwCase(std::string n) : name(std::move(n)) {}
  SwCase& f64() { f64_ = true; return *this; }
  SwCase& batch(index b) { b_ = b; return *this; }
  SwCase& len(index nq, index nk) { nq_ = nq, nk_ = nk; return *this; }
  SwCase& len(index n) { return len(n, n); }
  SwCase& heads(index hq, index hkv) { hq_ = hq, hkv_ = hkv; return *this; }
  SwCase& dim(index d) { d_ = d; return *this; }
  SwCase& bhsd() { lay_ = layout::bhsd; return *this; }
  SwCase& window(index l, index r) { sw.window_left = l, sw.window_right = r; return *this; }
  SwCase& causal() { sw.causal = true; return *this; }
  SwCase& dilation(index d) { sw.dilation = d; return *this; }
  SwCase& sinks(index s) { sw.sinks = s; return *this; }
  SwCase& chunk(index c) { sw.chunk = c; return *this; }
  SwCase& alibi() { alibi_ = true; return *this; }
  SwCase& softcap(double c) { softcap_ = c; return *this; }
  SwCase& sink_logits() { sinks_logits_ = true; return *this; }
  SwCase& seqlens(std::vector<int> q, std::vector<int> k) { sq_ = std::move(q), sk_ = std::move(k); return *this; }
  SwCase& big() { big_ = true; return *this; }
};

void PrintTo(const SwCase& c, std::ostream* os) { *os << c.name; }
std::string sw_name(const ::testing::TestParamInfo<SwCase>& i) { return i.param.name; }

/// Options of a case and the data they point into (not movable).
struct sw_data {
  std::vector<float> alibi, sink_logits;
  std::vector<int> sq, sk;
  tensor<bool> window_mask;  // the window written out from the options' documentation, for the naive
  xattn::sliding_window_options opt;
  xattn::softmax_options naive_opt;
};

/// Visibility as sliding_window_options documents it (written independently of window_spec).
bool doc_visible(const xattn::sliding_window_options& o, index p, index j) {
  const index right = o.causal ? 0 : o.window_right, dl = o.dilation;
  const bool right_ok = right < 0 || j <= p + right * dl;
  if (j < o.sinks) return right_ok;
  const bool left_ok = o.window_left < 0 || j >= p - o.window_left * dl;
  const bool dil_ok = ((p - j) % dl + dl) % dl == 0;
  const auto chunk_of = [&](index x) { return x >= 0 ? x / o.chunk : -1 - (-1 - x) / o.chunk; };
  const bool chunk_ok = o.chunk == 0 || chunk_of(j) == chunk_of(p);
  return right_ok && left_ok && dil_ok && chunk_ok;
}

std::unique_ptr<sw_data> make_sw(const SwCase& c, std::mt19937_64& rng) {
  auto d = std::make_unique<sw_data>();
  d->opt = c.sw;
  auto& s = d->opt.softmax;
  s.layout = c.lay_, s.softcap = c.softcap_;
  if (c.alibi_) {
    for (index h = 0; h < c.hq_; ++h) d->alibi.push_back(std::exp2(-8.0f * float(h + 1) / float(c.hq_)));
    s.alibi_slopes = d->alibi;
  }
  if (c.sinks_logits_) {
    std::uniform_real_distribution<float> u(-1.f, 3.f);
    for (index h = 0; h < c.hq_; ++h) d->sink_logits.push_back(u(rng));
    s.sink_logits = d->sink_logits;
  }
  d->sq = c.sq_, d->sk = c.sk_;
  s.seqlens_q = d->sq, s.seqlens_k = d->sk;
  d->window_mask = tensor<bool>(c.b_, 1, c.nq_, c.nk_);
  for (index b = 0; b < c.b_; ++b) {
    const index nq = c.sq_.empty() ? c.nq_ : c.sq_[b], nk = c.sk_.empty() ? c.nk_ : c.sk_[b];
    for (index i = 0; i < c.nq_; ++i)
      for (index j = 0; j < c.nk_; ++j) d->window_mask(b, 0, i, j) = doc_visible(c.sw, i + nk - nq, j);
  }
  d->naive_opt = s;
  d->naive_opt.mask = d->window_mask;
  return d;
}

template <class T>
struct sw_inputs {
  tensor<T> q, k, v;
};

template <class T>
sw_inputs<T> make_sw_inputs(const SwCase& c, std::mt19937_64& rng) {
  sw_inputs<T> in{make_tensor<T>(c.lay_, c.b_, c.nq_, c.hq_, c.d_), make_tensor<T>(c.lay_, c.b_, c.nk_, c.hkv_, c.d_),
                  make_tensor<T>(c.lay_, c.b_, c.nk_, c.hkv_, c.d_)};
  fill_random(in.q, rng);
  fill_random(in.k, rng);
  fill_random(in.v, rng);
  return in;
}

template <class T>
std::pair<tensor<T>, tensor<T, 3>> sw_outputs(const SwCase& c) {
  std::pair<tensor<T>, tensor<T, 3>> o{make_tensor<T>(c.lay_, c.b_, c.nq_, c.hq_, c.d_), tensor<T, 3>(c.b_, c.hq_, c.nq_)};
  o.first.setConstant(std::numeric_limits<T>::quiet_NaN());
  o.second.setConstant(std::numeric_limits<T>::quiet_NaN());
  return o;
}

SwCase sized(SwCase c) {
  if (quick() && c.big_) c.nq_ = std::min<index>(c.nq_, 300), c.nk_ = std::min<index>(c.nk_, 300);
  return c;
}

template <class T>
void check_sw(const SwCase& c) {
  SCOPED_TRACE(seed_note(c.name));
  std::mt19937_64 rng(case_seed(c.name));
  const auto in = make_sw_inputs<T>(c, rng);
  const auto d = make_sw(c, rng);

  attention_result<double> ref{make_tensor<double>(c.lay_, c.b_, c.nq_, c.hq_, c.d_), tensor<double, 3>(c.b_, c.hq_, c.nq_), 0};
  xattn::reference::sliding_window_attention(cast_to<double>(in.q), cast_to<double>(in.k), cast_to<double>(in.v),
                                             ref.out, ref.lse, d->opt);
  const attention_result<T> naive = naive_softmax<T>(in.q, in.k, in.v, d->naive_opt);
  EXPECT_LE(max_abs_diff(naive.out, ref.out).max, 100 * rule_eps<T>(naive.max_abs_score)) << "naive vs reference";
  const double eps = rule_eps<T>(naive.max_abs_score);

  auto o = sw_outputs<T>(c);
  xattn::sliding_window_attention(in.q, in.k, in.v, o.first, o.second, d->opt);
  EXPECT_TRUE(within_rule("out", o.first, naive.out, ref.out, eps));
  EXPECT_TRUE(within_rule("lse", o.second, naive.lse, ref.lse, eps));
  EXPECT_TRUE(masked_rows_are_zero(o.first, o.second, ref.lse, c.lay_));

  for (int threads : {2, 3}) {
    auto par = sw_outputs<T>(c);
    xattn::sliding_window_attention(device(threads), in.q, in.k, in.v, par.first, par.second, d->opt);
    EXPECT_TRUE(bitwise_equal(("out on " + std::to_string(threads) + " threads").c_str(), o.first, par.first));
    EXPECT_TRUE(bitwise_equal("lse on threads", o.second, par.second));
  }
  auto sc = sw_outputs<T>(c);
  xattn::sliding_window_attention<xattn::simd::scalar>(in.q, in.k, in.v, sc.first, sc.second, d->opt);
  EXPECT_TRUE(within_rule("out (scalar path)", sc.first, naive.out, ref.out, eps));
}

class SlidingWindowAccuracy : public ::testing::TestWithParam<SwCase> {};

TEST_P(SlidingWindowAccuracy, MatchesReference) {
  const SwCase c = sized(GetParam());
  if (c.f64_) check_sw<double>(c);
  else check_sw<float>(c);
}

const std::vector<SwCase> kSwCases = {
    SwCase("band_50_20").window(50, 20),
    SwCase("causal_w64").window(64, -1).causal(),
    SwCase("causal_w1").window(1, -1).causal().len(130),
    SwCase("left_only_unbounded_right").window(30, -1),
    SwCase("right_only").window(-1, 17),
    SwCase("wide_band_long").window(300, 300).len(700).big(),
    SwCase("dilation2_causal").window(40, -1).causal().dilation(2).len(300),
    SwCase("dilation3_band").window(20, 20).dilation(3).len(260),
    SwCase("dilation5_gqa4").window(12, 12).dilation(5).heads(8, 2).len(333),
    SwCase("sinks4_causal_w32").window(32, -1).causal().sinks(4).len(400).big(),
    SwCase("sinks70_causal_w100").window(100, -1).causal().sinks(70).len(400).big(),
    SwCase("sinks_band_noncausal").window(20, 20).sinks(5),
    SwCase("sinks_dilated").window(16, -1).causal().dilation(2).sinks(3).len(250),
    SwCase("chunk64_causal").causal().chunk(64).len(300),
    SwCase("chunk100_noncausal").chunk(100).len(333),
    SwCase("chunk50_window20_causal").causal().chunk(50).window(20, -1).len(260),
    SwCase("chunk_sinks").causal().chunk(90).sinks(2).len(300),
    SwCase("nq_lt_nk_causal").len(70, 333).window(80, -1).causal(),
    SwCase("nq_gt_nk_causal").len(333, 90).window(40, -1).causal(),
    SwCase("nq1_decode").len(1, 500).window(100, -1).causal().sinks(4),
    SwCase("nq3_decode_dilated").len(3, 400).window(50, -1).causal().dilation(3),
    // Decode over several blocks of packed K/V heads (4 per block on AVX-512), each block's lanes
    // carrying their own dilation residues.
    SwCase("decode_mha_heads_packed_dilated").len(1, 700).heads(9, 9).window(200, -1).causal().dilation(2),
    SwCase("nq2_decode_gqa2_dilated_sinks").len(2, 300).heads(12, 6).window(64, -1).causal().dilation(3).sinks(2),
    SwCase("len1").len(1).window(3, -1).causal(),
    SwCase("len7_d40").len(7).dim(40).window(2, 2),
    SwCase("len113_d72_bhsd").len(113).dim(72).window(30, 5).bhsd(),
    SwCase("d256").len(150).dim(256).window(40, -1).causal(),
    SwCase("mha").heads(3, 3).len(170).window(25, 25).dilation(2),
    SwCase("alibi_softcap_logits").window(60, -1).causal().alibi().softcap(20).sink_logits().len(250),
    SwCase("varlen").batch(3).len(180, 200).seqlens({180, 50, 0}, {200, 120, 10}).window(40, -1).causal().sinks(3),
    SwCase("f64_dilated_sinks").f64().window(30, -1).causal().dilation(2).sinks(4).len(260),
    SwCase("f64_chunk").f64().chunk(70).len(200).dim(64),
};

INSTANTIATE_TEST_SUITE_P(Cases, SlidingWindowAccuracy, ::testing::ValuesIn(kSwCases), sw_name);

// ---------------------------------------------------------------------------------------------
// Identities with softmax attention (bitwise: same tiles, same order, masks that keep everything)

class SlidingWindowProperty : public ::testing::Test {
 protected:
  std::mt19937_64 rng{case_seed(::testing::UnitTest::GetInstance()->current_test_info()->name())};
  tensor<float> q = make_tensor<float>(layout::bshd, 2, 300, 4, 64), k = make_tensor<float>(layout::bshd, 2, 300, 2, 64),
                v = make_tensor<float>(layout::bshd, 2, 300, 2, 64);
  void SetUp() override {
    fill_random(q, rng), fill_random(k, rng), fill_random(v, rng);
  }
  tensor<float> sw(const xattn::sliding_window_options& o) {
    tensor<float> out(q.dimensions());
    xattn::sliding_window_attention(q, k, v, out, o);
    return out;
  }
  tensor<float> dense(const xattn::softmax_options& o) {
    tensor<float> out(q.dimensions());
    xattn::softmax_attention(q, k, v, out, o);
    return out;
  }
};

TEST_F(SlidingWindowProperty, WindowAsWideAsTheSequenceEqualsDense) {
  EXPECT_TRUE(bitwise_equal("non-causal", sw({.window_left = 300, .window_right = 300}), dense({})));
  EXPECT_TRUE(bitwise_equal("causal", sw({.window_left = 1000, .causal = true}), dense({.causal = true})));
  EXPECT_TRUE(bitwise_equal("unbounded", sw({}), dense({})));
  EXPECT_TRUE(bitwise_equal("sinks inside the band", sw({.window_left = 1000, .causal = true, .sinks = 10}),
                            dense({.causal = true})));
  EXPECT_TRUE(bitwise_equal("one chunk", sw({.causal = true, .chunk = 300}), dense({.causal = true})));
  // the largest values: no window · dilation or position + window overflowing (independent checker)
  constexpr index kMax = std::numeric_limits<index>::max();
  EXPECT_TRUE(bitwise_equal("largest windows", sw({.window_left = kMax, .window_right = kMax}), dense({})));
  EXPECT_TRUE(bitwise_equal("largest windows, dilation 3", sw({.window_left = kMax, .window_right = kMax, .dilation = 3}),
                            sw({.dilation = 3})));
  EXPECT_TRUE(bitwise_equal("largest dilation", sw({.window_left = 5, .window_right = 5, .dilation = kMax}),
                            sw({.window_left = 0, .window_right = 0})));
  EXPECT_TRUE(bitwise_equal("largest chunk", sw({.causal = true, .chunk = kMax}), dense({.causal = true})));
}

TEST_F(SlidingWindowProperty, PlainWindowEqualsSoftmaxWindow) {
  EXPECT_TRUE(bitwise_equal("band", sw({.window_left = 37, .window_right = 5}),
                            dense({.window_left = 37, .window_right = 5})));
  EXPECT_TRUE(bitwise_equal("causal", sw({.window_left = 100, .causal = true}),
                            dense({.causal = true, .window_left = 100})));
}

TEST_F(SlidingWindowProperty, ChunkedCausalEqualsSoftmaxPerChunk) {
  // Each chunk of 100 is causal attention over its own keys.
  const tensor<float> all = sw({.causal = true, .chunk = 100});
  for (index c0 = 0; c0 < 300; c0 += 100) {
    const Eigen::array<index, 4> off{0, c0, 0, 0};
    const tensor<float> qc = q.slice(off, Eigen::array<index, 4>{2, 100, 4, 64});
    const tensor<float> kc = k.slice(off, Eigen::array<index, 4>{2, 100, 2, 64});
    const tensor<float> vc = v.slice(off, Eigen::array<index, 4>{2, 100, 2, 64});
    tensor<float> oc(qc.dimensions());
    xattn::softmax_attention(qc, kc, vc, oc, {.causal = true});
    const tensor<float> part = all.slice(off, Eigen::array<index, 4>{2, 100, 4, 64});
    EXPECT_LE(max_abs_diff(part, oc).max, 1e-5) << "chunk at " << c0;
  }
}

// ---------------------------------------------------------------------------------------------
// Bad options: xattn::error naming the argument, out untouched

struct SwBad {
  std::string name, arg;
  xattn::sliding_window_options opt;
};
void PrintTo(const SwBad& c, std::ostream* os) { *os << c.name; }

class SlidingWindowBadInput : public ::testing::TestWithParam<SwBad> {};

TEST_P(SlidingWindowBadInput, ThrowsNamingTheArgumentAndWritesNothing) {
  const SwBad& c = GetParam();
  tensor<float> q(1, 20, 2, 8), k(1, 20, 1, 8), v(1, 20, 1, 8), out(1, 20, 2, 8);
  q.setConstant(0.5f), k.setConstant(0.25f), v.setConstant(1.f), out.setConstant(7.f);
  for (int entry = 0; entry < 3; ++entry) {
    const std::string fn = entry == 2 ? "xattn::reference::sliding_window_attention" : "xattn::sliding_window_attention";
    try {
      if (entry == 0) xattn::sliding_window_attention(q, k, v, out, c.opt);
      if (entry == 1) xattn::sliding_window_attention(device(2), q, k, v, out, c.opt);
      if (entry == 2) xattn::reference::sliding_window_attention(q, k, v, out, c.opt);
      ADD_FAILURE() << "no xattn::error thrown by " << fn;
    } catch (const xattn::error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(fn + ":"), std::string::npos) << msg;
      EXPECT_NE(msg.find(" " + c.arg + ":"), std::string::npos) << msg;
    }
    for (index x = 0; x < out.size(); ++x) ASSERT_EQ(out.data()[x], 7.f) << "out was written";
  }
}

const std::vector<SwBad> kSwBad = {
    {"dilation_zero", "dilation", {.dilation = 0}},
    {"negative_sinks", "sinks", {.sinks = -1}},
    {"negative_chunk", "chunk", {.chunk = -3}},
    {"window_left_below_minus_one", "window_left", {.window_left = -2}},
    {"window_right_below_minus_one", "window_right", {.window_right = -5}},
    {"softmax_causal_set", "softmax.causal", {.softmax = {.causal = true}}},
    {"softmax_window_set", "softmax.window_left", {.softmax = {.window_left = 4}}},
    {"bad_scale", "scale", {.softmax = {.scale = -1.0}}},
};

INSTANTIATE_TEST_SUITE_P(Cases, SlidingWindowBadInput, ::testing::ValuesIn(kSwBad),
                         [](const auto& i) { return i.param.name; });

}  // namespace
}  // namespace xattn_test

namespace xattn_test {
namespace {

// ---------------------------------------------------------------------------------------------
// Streaming decode over a ring buffer equals windowed prefill over the whole history

TEST(StreamingDecode, EqualsWindowedPrefill) {
  constexpr index kTokens = 300, kHq = 4, kHkv = 2, kD = 32;
  for (const auto& [sinks, window] : {std::pair<index, index>{4, 64}, {0, 50}, {3, 1}, {10, 400}}) {
    SCOPED_TRACE("sinks " + std::to_string(sinks) + ", window " + std::to_string(window));
    std::mt19937_64 rng(case_seed("streaming_decode"));
    tensor<float> q(2, kTokens, kHq, kD), k(2, kTokens, kHkv, kD), v(2, kTokens, kHkv, kD);
    fill_random(q, rng), fill_random(k, rng), fill_random(v, rng);
    std::vector<float> logits{0.5f, -1.f, 2.f, 0.f};
    const xattn::softmax_options common{.softcap = 30, .sink_logits = logits};
    tensor<float> prefill(q.dimensions());
    xattn::sliding_window_attention(q, k, v, prefill, {.window_left = window - 1, .causal = true, .sinks = sinks, .softmax = common});

    const xattn::streaming_options so{.sinks = sinks, .window = window, .softmax = common};
    tensor<float> kc(2, sinks + window, kHkv, kD), vc(2, sinks + window, kHkv, kD), qt(2, 1, kHq, kD), ot(2, 1, kHq, kD);
    kc.setConstant(std::numeric_limits<float>::quiet_NaN()), vc.setConstant(std::numeric_limits<float>::quiet_NaN());
    double worst = 0;
    for (index t = 0; t < kTokens; ++t) {
      const index slot = xattn::streaming_slot(t, so);
      for (index b = 0; b < 2; ++b) {
        for (index h = 0; h < kHkv; ++h)
          for (index c = 0; c < kD; ++c) kc(b, slot, h, c) = k(b, t, h, c), vc(b, slot, h, c) = v(b, t, h, c);
        for (index h = 0; h < kHq; ++h)
          for (index c = 0; c < kD; ++c) qt(b, 0, h, c) = q(b, t, h, c);
      }
      const std::vector<int> tokens(2, int(t + 1));
      if (t % 2) xattn::streaming_decode(qt, kc, vc, ot, tokens, so);
      else xattn::streaming_decode(device(2), qt, kc, vc, ot, tokens, so);
      for (index b = 0; b < 2; ++b)
        for (index h = 0; h < kHq; ++h)
          for (index c = 0; c < kD; ++c) worst = std::max(worst, abs_diff(ot(b, 0, h, c), prefill(b, t, h, c)));
    }
    EXPECT_LE(worst, 2e-6);
  }
}

TEST(StreamingDecode, BadCallsThrowNamingTheArgument) {
  tensor<float> q(1, 1, 2, 8), kc(1, 12, 1, 8), vc(1, 12, 1, 8), out(1, 1, 2, 8);
  q.setConstant(1), kc.setConstant(1), vc.setConstant(1), out.setConstant(7);
  const std::vector<int> one{5}, zero{0};
  const std::vector<float> slopes{1, 1};
  const std::vector<std::tuple<std::string, xattn::streaming_options, std::vector<int>>> bad = {
      {"k_cache", {.sinks = 4, .window = 7}, one},
      {"window", {.sinks = 12, .window = 0}, one},
      {"tokens", {.sinks = 4, .window = 8}, zero},
      {"softmax.alibi_slopes", {.sinks = 4, .window = 8, .softmax = {.alibi_slopes = slopes}}, one},
      {"softmax", {.sinks = 4, .window = 8, .softmax = {.causal = true}}, one},
  };
  for (const auto& [arg, o, tokens] : bad) {
    try {
      xattn::streaming_decode(q, kc, vc, out, tokens, o);
      ADD_FAILURE() << "no error for " << arg;
    } catch (const xattn::error& e) {
      EXPECT_NE(std::string(e.what()).find("xattn::streaming_decode: " + arg + ":"), std::string::npos) << e.what();
    }
  }
  for (index x = 0; x < out.size(); ++x) ASSERT_EQ(out.data()[x], 7.f);
}

}  // namespace
}  // namespace xattn_test
