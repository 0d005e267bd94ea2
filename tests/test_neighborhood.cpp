// tests/test_neighborhood.cpp — xattn::neighborhood_attention_2d against the fp64 reference and a
// naive implementation over the NATTEN rule written out here (borders, dilation, causality per
// axis), its identity with dense attention, thread-count invariance, and bad input.
#include "test_util.hpp"

#include <xattn/neighborhood.hpp>

namespace xattn_test {
namespace {

template <class T>
using image = Eigen::Tensor<T, 5, Eigen::RowMajor>;

struct NaCase {
  std::string name;
  bool f64_ = false;
  index b_ = 1, h_ = 16, w_ = 16, hq_ = 2, hkv_ = 1, d_ = 32, dv_ = 0;  // dv_ = 0: d_
  xattn::neighborhood_2d_options opt;
  NaCase(std::string n, index h, index w, xattn::neighborhood_2d_options o) : name(std::move(n)), h_(h), w_(w), opt(o) {}
  NaCase& f64() { f64_ = true; return *this; }
  NaCase& heads(index hq, index hkv) { hq_ = hq, hkv_ = hkv; return *this; }
  NaCase& dim(index d) { d_ = d; return *this; }
  NaCase& vdim(index dv) { dv_ = dv; return *this; }
  index dv() const { return dv_ > 0 ? dv_ : d_; }
  NaCase& batch(index b) { b_ = b; return *this; }
};
void PrintTo(const NaCase& c, std::ostream* os) { *os << c.name; }

/// NATTEN's rule per axis, from its documentation: on the dilation grid of the query (positions
/// ≡ the query's mod the dilation), the kernel's window centred on the query, shifted to stay
/// inside the grid; causal: the kernel − 1 preceding grid positions and the query's own.
bool axis_visible(index q, index k, index n, index kernel, index dil, bool causal) {
  if ((q - k) % dil != 0) return false;
  const index r = q % dil, len = (n - r + dil - 1) / dil, a = q / dil, b = k / dil;
  if (causal) return b <= a && b > a - kernel;
  index start = a - kernel / 2;
  start = std::max<index>(0, std::min(start, len - kernel));
  return b >= start && b < start + kernel;
}

template <class T>
void check_na(const NaCase& c) {
  SCOPED_TRACE(seed_note(c.name));
  std::mt19937_64 rng(case_seed(c.name));
  image<T> q(c.b_, c.h_, c.w_, c.hq_, c.d_), k(c.b_, c.h_, c.w_, c.hkv_, c.d_), v(c.b_, c.h_, c.w_, c.hkv_, c.dv());
  fill_random(q, rng), fill_random(k, rng), fill_random(v, rng);
  const index n = c.h_ * c.w_;
  const auto& o = c.opt;
  tensor<bool> mask(1, 1, n, n);
  for (index i = 0; i < n; ++i) {
    index seen = 0;
    for (index j = 0; j < n; ++j) {
      mask(0, 0, i, j) = axis_visible(i / c.w_, j / c.w_, c.h_, o.kernel_h, o.dilation_h, o.causal_h) &&
                         axis_visible(i % c.w_, j % c.w_, c.w_, o.kernel_w, o.dilation_w, o.causal_w);
      seen += mask(0, 0, i, j);
    }
    if (!o.causal_h && !o.causal_w) {
      ASSERT_EQ(seen, o.kernel_h * o.kernel_w) << "query " << i;
    }
  }
  const Eigen::array<index, 4> flat_q{c.b_, n, c.hq_, c.d_}, flat_kv{c.b_, n, c.hkv_, c.d_},
      flat_v{c.b_, n, c.hkv_, c.dv()}, flat_o{c.b_, n, c.hq_, c.dv()};
  const tensor<T> q4 = q.reshape(flat_q), k4 = k.reshape(flat_kv), v4 = v.reshape(flat_v);
  const attention_result<T> naive = naive_softmax<T>(q4, k4, v4, {.mask = mask});
  image<double> ref(c.b_, c.h_, c.w_, c.hq_, c.dv());
  xattn::reference::neighborhood_attention_2d(cast_to<double>(q), cast_to<double>(k), cast_to<double>(v), ref, o);
  const tensor<double> ref4 = ref.reshape(flat_o);
  const double eps = rule_eps<T>(naive.max_abs_score);
  EXPECT_LE(max_abs_diff(naive.out, ref4).max, 100 * eps) << "naive vs reference";

  image<T> out(c.b_, c.h_, c.w_, c.hq_, c.dv());
  out.setConstant(std::numeric_limits<T>::quiet_NaN());
  tensor<T, 3> lse(c.b_, c.hq_, n);
  lse.setConstant(std::numeric_limits<T>::quiet_NaN());
  xattn::neighborhood_attention_2d(q, k, v, out, lse, o);
  const tensor<T> out4 = out.reshape(flat_o);
  EXPECT_TRUE(within_rule("out", out4, naive.out, ref4, eps));
  const attention_result<double> orc = oracle(q4, k4, v4, {.mask = mask});
  EXPECT_TRUE(within_rule("lse", lse, naive.lse, orc.lse, eps));
  image<T> no_lse(out.dimensions());
  xattn::neighborhood_attention_2d(q, k, v, no_lse, o);
  EXPECT_TRUE(bitwise_equal("out without lse", out, no_lse));
  for (int threads : {2, 3}) {
    image<T> par(out.dimensions());
    tensor<T, 3> par_lse(lse.dimensions());
    xattn::neighborhood_attention_2d(device(threads), q, k, v, par, par_lse, o);
    EXPECT_TRUE(bitwise_equal("out on more threads", out, par));
    EXPECT_TRUE(bitwise_equal("lse on more threads", lse, par_lse));
  }
  image<T> sc(out.dimensions());
  xattn::neighborhood_attention_2d<xattn::simd::scalar>(q, k, v, sc, o);
  const tensor<T> sc4 = sc.reshape(flat_o);
  EXPECT_TRUE(within_rule("out (scalar path)", sc4, naive.out, ref4, eps));
}

class NeighborhoodAccuracy : public ::testing::TestWithParam<NaCase> {};

TEST_P(NeighborhoodAccuracy, MatchesReference) {
  if (GetParam().f64_) check_na<double>(GetParam());
  else check_na<float>(GetParam());
}

const std::vector<NaCase> kNaCases = {
    NaCase("k3_16x16", 16, 16, {.kernel_h = 3, .kernel_w = 3}),
    NaCase("k7_20x13", 20, 13, {.kernel_h = 7, .kernel_w = 7}),
    NaCase("k5x3_borders_9x31", 9, 31, {.kernel_h = 5, .kernel_w = 3}),
    NaCase("k13_24x24", 24, 24, {.kernel_h = 13, .kernel_w = 13}).dim(64),
    NaCase("dil2_k3_17x18", 17, 18, {.kernel_h = 3, .kernel_w = 3, .dilation_h = 2, .dilation_w = 2}),
    NaCase("dil3x1_k5_21x11", 21, 11, {.kernel_h = 5, .kernel_w = 5, .dilation_h = 3, .dilation_w = 1}),
    NaCase("dil_max_k3_9x12", 9, 12, {.kernel_h = 3, .kernel_w = 3, .dilation_h = 3, .dilation_w = 4}),
    NaCase("causal_h_k5_14x14", 14, 14, {.kernel_h = 5, .kernel_w = 5, .causal_h = true}),
    NaCase("causal_both_dil2_16x15", 16, 15, {.kernel_h = 5, .kernel_w = 3, .dilation_h = 2, .dilation_w = 2, .causal_h = true, .causal_w = true}),
    NaCase("kernel_is_image_7x5", 7, 5, {.kernel_h = 7, .kernel_w = 5}),
    NaCase("k1", 6, 6, {.kernel_h = 1, .kernel_w = 1}),
    NaCase("gqa4_k5", 15, 17, {.kernel_h = 5, .kernel_w = 5}).heads(8, 2).dim(40),
    NaCase("mha3_batch2", 12, 10, {.kernel_h = 3, .kernel_w = 5}).heads(3, 3).batch(2),
    NaCase("tiny_2x3", 2, 3, {.kernel_h = 1, .kernel_w = 3}),
    // Few enough rows for the decode-shaped (narrow) engine, whose blocks must still be the
    // policy's patches, one dilation sub-grid each.
    NaCase("narrow_dil2_3x5", 3, 5, {.kernel_h = 1, .kernel_w = 3, .dilation_h = 2}).heads(1, 1),
    NaCase("narrow_dil2x2_4x4", 4, 4, {.kernel_h = 1, .kernel_w = 1, .dilation_h = 2, .dilation_w = 2}).heads(1, 1),
    NaCase("f64_dil2_k5", 19, 20, {.kernel_h = 5, .kernel_w = 5, .dilation_h = 2, .dilation_w = 2}).f64().dim(72),
    // Images with interior patches (4 × 4-query lane groups that see only some rows of their
    // patch's key rectangle), ragged patch edges, GQA, dv != d and not a multiple of the vector.
    NaCase("k13_interior_45x38", 45, 38, {.kernel_h = 13, .kernel_w = 13}).heads(1, 1).dim(48),
    NaCase("k9x5_gqa2_dv24_37x41", 37, 41, {.kernel_h = 9, .kernel_w = 5}).heads(4, 2).dim(40).vdim(24),
    NaCase("k7_gqa8_30x27", 30, 27, {.kernel_h = 7, .kernel_w = 7}).heads(8, 1).dim(16),
    NaCase("causal_w_dil2_k7_41x44", 41, 44, {.kernel_h = 7, .kernel_w = 7, .dilation_w = 2, .causal_w = true}),
    NaCase("causal_h_k11_36x33", 36, 33, {.kernel_h = 11, .kernel_w = 3, .causal_h = true}).heads(3, 1).dim(80),
    NaCase("f64_k11_gqa2_33x35", 33, 35, {.kernel_h = 11, .kernel_w = 11}).f64().heads(2, 1).dim(40).vdim(8),
    // The row-stencil kernel (no dilation, no causal axis, images at least a vector wide): strips of
    // one vector of columns, border strips whose lanes have different window starts, ragged right
    // edges, images just above the kernel, odd heights (a last query row without a partner), bands
    // of rows (few batch × head × strip items), GQA, dv != d, d not a multiple of the vector.
    NaCase("rows_k3_5x16", 5, 16, {.kernel_h = 3, .kernel_w = 3}).heads(1, 1).dim(16),
    NaCase("rows_k3_gqa2_9x33", 9, 33, {.kernel_h = 3, .kernel_w = 3}).heads(4, 2).dim(72),
    NaCase("rows_k7_gqa2_d40_dv56_19x50", 19, 50, {.kernel_h = 7, .kernel_w = 7}).heads(2, 1).dim(40).vdim(56),
    NaCase("rows_k13_just_above_14x17", 14, 17, {.kernel_h = 13, .kernel_w = 13}).heads(1, 1).dim(72),
    NaCase("rows_k13_gqa8_15x36", 15, 36, {.kernel_h = 13, .kernel_w = 13}).heads(8, 1).dim(40).vdim(24),
    NaCase("rows_k5x9_rect_23x29", 23, 29, {.kernel_h = 5, .kernel_w = 9}).heads(3, 3).dim(24).batch(2),
    NaCase("rows_bands_k7_45x20", 45, 20, {.kernel_h = 7, .kernel_w = 7}).heads(1, 1).dim(32),
    NaCase("rows_k15_big_34x48", 34, 48, {.kernel_h = 15, .kernel_w = 15}).heads(2, 2).dim(40),
    NaCase("rows_f64_k7_gqa2_17x21", 17, 21, {.kernel_h = 7, .kernel_w = 7}).f64().heads(4, 2).dim(40).vdim(72),
    NaCase("rows_f64_k13_13x40", 13, 40, {.kernel_h = 13, .kernel_w = 13}).f64().heads(1, 1).dim(16),
    // P·V by broadcast over untransposed V: a one-column kernel (no column seen by three adjacent
    // queries), and a dv of several value passes with a partial last vector.
    NaCase("rows_k3x1_20x21", 20, 21, {.kernel_h = 3, .kernel_w = 1}).heads(2, 1).dim(16),
    NaCase("rows_k5_dv200_11x19", 11, 19, {.kernel_h = 5, .kernel_w = 5}).heads(2, 1).dim(24).vdim(200),
    NaCase("rows_f64_k3x5_dv200_7x18", 7, 18, {.kernel_h = 3, .kernel_w = 5}).f64().heads(1, 1).dim(8).vdim(200),
};

INSTANTIATE_TEST_SUITE_P(Cases, NeighborhoodAccuracy, ::testing::ValuesIn(kNaCases), [](const auto& i) { return i.param.name; });

// The row-stencil kernel writes O around the caches only when O is larger than a last-level cache
// (detail::neighborhood_stream_bytes); with the threshold at zero the small cases take that path.
TEST(NeighborhoodStreamedOutput, MatchesTheReference) {
  struct restore {
    double saved = xattn::detail::neighborhood_stream_bytes;
    ~restore() { xattn::detail::neighborhood_stream_bytes = saved; }
  } guard;
  xattn::detail::neighborhood_stream_bytes = 0;
  check_na<float>(NaCase("streamed_k7_gqa2_19x40", 19, 40, {.kernel_h = 7, .kernel_w = 7}).heads(4, 2).dim(24).vdim(48));
  check_na<float>(NaCase("streamed_k13_dv20_17x33", 17, 33, {.kernel_h = 13, .kernel_w = 13}).heads(2, 2).dim(16).vdim(20));
  check_na<double>(NaCase("streamed_f64_k5_11x21", 11, 21, {.kernel_h = 5, .kernel_w = 5}).f64().heads(2, 1).dim(8).vdim(16));
}

TEST(NeighborhoodProperty, KernelAsLargeAsTheImageEqualsDense) {
  std::mt19937_64 rng(case_seed("na_dense"));
  image<float> q(2, 9, 11, 4, 32), k(2, 9, 11, 2, 32), v(2, 9, 11, 2, 32), out(2, 9, 11, 4, 32);
  fill_random(q, rng), fill_random(k, rng), fill_random(v, rng);
  xattn::neighborhood_attention_2d(q, k, v, out, {.kernel_h = 9, .kernel_w = 11});
  const Eigen::array<index, 4> fq{2, 99, 4, 32}, fkv{2, 99, 2, 32};
  const tensor<float> q4 = q.reshape(fq), k4 = k.reshape(fkv), v4 = v.reshape(fkv);
  tensor<float> dense(fq);
  xattn::softmax_attention(q4, k4, v4, dense);
  const tensor<float> out4 = out.reshape(fq);
  EXPECT_LE(max_abs_diff(out4, dense).max, 1e-5);
}

TEST(NeighborhoodBadInput, ThrowsNamingTheArgumentAndWritesNothing) {
  image<float> q(1, 8, 8, 2, 16), k(1, 8, 8, 1, 16), v(1, 8, 8, 1, 16), out(1, 8, 8, 2, 16), k_bad(1, 8, 7, 1, 16);
  q.setConstant(1), k.setConstant(1), v.setConstant(1), out.setConstant(7);
  const std::string fn = "xattn::neighborhood_attention_2d";
  const std::vector<std::pair<std::string, xattn::neighborhood_2d_options>> bad = {
      {"kernel_h", {.kernel_h = 4}},       {"kernel_w", {.kernel_w = 0}},
      {"kernel_h", {.kernel_h = 9}},       {"kernel_w", {.kernel_w = 5, .dilation_w = 2}},
      {"dilation_h", {.dilation_h = 0}},   {"scale", {.scale = -1.0}},
      // kernel · dilation wraps around to 4 in 64 bits: must still be rejected (independent checker)
      {"kernel_h", {.kernel_h = (index(1) << 62) + 1, .dilation_h = 4}},
  };
  for (const auto& [arg, o] : bad) {
    for (int entry = 0; entry < 2; ++entry) {
      try {
        if (entry == 0) xattn::neighborhood_attention_2d(q, k, v, out, o);
        else xattn::reference::neighborhood_attention_2d(q, k, v, out, o);
        ADD_FAILURE() << "no error for " << arg;
      } catch (const xattn::error& e) {
        EXPECT_NE(std::string(e.what()).find(" " + arg + ":"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("neighborhood_attention_2d:"), std::string::npos) << e.what();
      }
    }
  }
  try {
    xattn::neighborhood_attention_2d(q, k_bad, v, out, {.kernel_h = 3, .kernel_w = 3});
    ADD_FAILURE() << "no error for k's image";
  } catch (const xattn::error& e) {
    EXPECT_NE(std::string(e.what()).find(fn + ": k:"), std::string::npos) << e.what();
  }
  // the LSE overload: lse must be [batch, q heads, height·width]
  tensor<float, 3> lse_bad(1, 2, 63);
  lse_bad.setConstant(5);
  try {
    xattn::neighborhood_attention_2d(q, k, v, out, lse_bad, {.kernel_h = 3, .kernel_w = 3});
    ADD_FAILURE() << "no error for lse's shape";
  } catch (const xattn::error& e) {
    EXPECT_NE(std::string(e.what()).find(fn + ": lse:"), std::string::npos) << e.what();
  }
  for (index x = 0; x < lse_bad.size(); ++x) ASSERT_EQ(lse_bad.data()[x], 5.f);
  for (index x = 0; x < out.size(); ++x) ASSERT_EQ(out.data()[x], 7.f);
}

}  // namespace
}  // namespace xattn_test
