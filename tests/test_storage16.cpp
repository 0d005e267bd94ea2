// tests/test_storage16.cpp — 16-bit storage (Eigen::bfloat16 and Eigen::half q, k, v; float or
// 16-bit out) in every tile-engine family (softmax, decode, streaming decode, sliding window, sparse
// with BigBird and top-k layouts, 2-D neighborhood), on every product path this machine has,
// against the fp64 reference on the rounded inputs, by the rule of storage16_util.hpp: twice the
// error of a naive fp32 loop that rounds the same operands (P too on the bf16 paths) plus eps,
// plus half an ulp of a 16-bit out. Also: the fp32 path equals the float kernel on the rounded
// values bitwise, the bf16 paths (AMX, AVX512-BF16) are taken where paths.hpp says they are and
// agree with each other, compute = bf16 on float
// tensors, logits near ±1e4, fully masked rows, thread-count invariance per path, and bad input.
#include "storage16_util.hpp"

#include <optional>

#include <xattn/neighborhood.hpp>
#include <xattn/sliding_window.hpp>
#include <xattn/sparse.hpp>

namespace xattn_test {
namespace {

using xattn::layout;
using xattn::product_path;
using bf16 = Eigen::bfloat16;
using f16 = Eigen::half;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

/// Rows of queries per K/V head above which a call is prefill (the bf16 paths' blocks) rather
/// than decode: one vector of 16.
constexpr index kDecodeRows = 16;

enum class family { softmax, decode, streaming, window, sparse_bigbird, sparse_top_k };
enum class qtype { same, f32, bf16 };  // q's element type: the storage's, float, or bfloat16

// ---------------------------------------------------------------------------------------------
// One case of a sequence family: shapes and options by name, `Case("x").len(300).causal()`.

struct Case {
  std::string name;
  family fam = family::softmax;
  index b_ = 2, nq_ = 37, nk_ = 37, hq_ = 8, hkv_ = 2, d_ = 64, dv_ = 0;
  layout lay_ = layout::bshd;
  bool causal_ = false;
  index wl_ = -1, wr_ = -1;           // softmax window, or the sliding window's left/right
  index dil_ = 1, wsinks_ = 0, chunk_ = 0;
  index stream_sinks_ = 4;            // streaming_decode: sink slots (the window is Nk − sinks)
  double softcap_ = 0;
  bool alibi_ = false, sinks_ = false, bias_ = false, mask_ = false, dead_rows_ = false;
  std::vector<int> sq_, sk_;          // seqlens (decode: sk_ = cache_lengths)
  double logits_ = 1;                 // q scaled by this: scores ~ N(0, logits²)
  double offset_ = 0;                 // keys share a component: scores ≈ ±offset per row, O(1) apart
  qtype qt_ = qtype::same;
  bool compute_bf16_ = false;         // float tensors with .compute = xattn::compute::bf16

  explicit Case(std::string n, family f = family::softmax) : name(std::move(n)), fam(f) {}
  Case& batch(index b) { b_ = b; return *this; }
  Case& len(index nq, index nk) { nq_ = nq, nk_ = nk; return *this; }
  Case& len(index n) { return len(n, n); }
  Case& heads(index hq, index hkv) { hq_ = hq, hkv_ = hkv; return *this; }
  Case& dim(index d, index dv = 0) { d_ = d, dv_ = dv; return *this; }
  Case& bhsd() { lay_ = layout::bhsd; return *this; }
  Case& causal() { causal_ = true; return *this; }
  Case& window(index l, index r) { wl_ = l, wr_ = r; return *this; }
  Case& dilation(index d) { dil_ = d; return *this; }
  Case& sink_tokens(index s) { wsinks_ = s; return *this; }
  Case& chunk(index c) { chunk_ = c; return *this; }
  Case& softcap(double c) { softcap_ = c; return *this; }
  Case& alibi() { alibi_ = true; return *this; }
  Case& sinks() { sinks_ = true; return *this; }
  Case& bias() { bias_ = true; return *this; }
  Case& mask(bool dead_rows = false) { mask_ = true, dead_rows_ = dead_rows; return *this; }
  Case& seqlens(std::vector<int> q, std::vector<int> k) { sq_ = std::move(q), sk_ = std::move(k); return *this; }
  Case& cache_lengths(std::vector<int> k) { sk_ = std::move(k); return *this; }
  Case& tokens(index sinks, std::vector<int> t) { stream_sinks_ = sinks, sk_ = std::move(t); return *this; }
  Case& logits(double l) { logits_ = l; return *this; }
  Case& offset(double o) { offset_ = o; return *this; }
  Case& q(qtype t) { qt_ = t; return *this; }
  Case& compute_bf16() { compute_bf16_ = true; return *this; }
  index dv() const { return dv_ ? dv_ : d_; }
  bool sparse() const { return fam == family::sparse_bigbird || fam == family::sparse_top_k; }
  /// A decode entry point: no LSE, and always the fp32 path.
  bool decode_like() const { return fam == family::decode || fam == family::streaming; }
};
void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

/// The options of a case and the data they point into (not movable: spans into the vectors).
struct case_options {
  std::vector<float> alibi, sinks;
  std::vector<int> sq, sk;
  tensor<float> bias;
  tensor<bool> mask;
  xattn::softmax_options opt;          // everything but the family's own pattern
  xattn::sliding_window_options window;
  xattn::streaming_options streaming;
  std::vector<int> kv_len;             // decode entry points: the valid keys of each batch
  std::optional<xattn::block_layout> blocks;
  case_options() = default;
  case_options(const case_options&) = delete;
  case_options& operator=(const case_options&) = delete;
};

std::unique_ptr<case_options> make_options(const Case& c, std::mt19937_64& rng) {
  auto co = std::make_unique<case_options>();
  auto& o = co->opt;
  o.layout = c.lay_;
  o.softcap = c.softcap_;
  if (c.fam != family::window) o.causal = c.causal_, o.window_left = c.wl_, o.window_right = c.wr_;
  if (c.alibi_) {
    for (index h = 0; h < c.hq_; ++h) co->alibi.push_back(std::exp2(-8.0f * float(h + 1) / float(c.hq_)));
    o.alibi_slopes = co->alibi;
  }
  if (c.sinks_) {
    std::uniform_real_distribution<float> u(-1.f, 3.f);
    for (index h = 0; h < c.hq_; ++h) co->sinks.push_back(u(rng));
    o.sink_logits = co->sinks;
  }
  co->sq = c.sq_, co->sk = c.sk_;
  o.seqlens_q = co->sq;
  if (!c.decode_like()) o.seqlens_k = co->sk;  // decode passes them as cache_lengths, streaming as tokens
  for (int t : co->sk)  // a streaming cache holds the last sinks + window tokens (slot order does not matter)
    co->kv_len.push_back(c.fam == family::streaming ? int(std::min<index>(t, c.nk_)) : t);
  if (c.bias_) {
    co->bias = tensor<float>(1, c.hq_, c.nq_, c.nk_);
    fill_random(co->bias, rng);
    o.bias = co->bias;
  }
  if (c.mask_) {
    co->mask = tensor<bool>(c.b_, 1, c.nq_, c.nk_);
    std::bernoulli_distribution keep(0.7);
    for (index x = 0; x < co->mask.size(); ++x)
      co->mask.data()[x] = keep(rng) && !(c.dead_rows_ && (x / c.nk_) % 5 == 2);
    o.mask = co->mask;
  }
  if (c.compute_bf16_) o.compute = xattn::compute::bf16;
  if (c.fam == family::streaming) co->streaming = {.sinks = c.stream_sinks_, .window = c.nk_ - c.stream_sinks_, .softmax = o};
  if (c.fam == family::window)
    co->window = {.window_left = c.wl_, .window_right = c.wr_, .causal = c.causal_, .dilation = c.dil_,
                  .sinks = c.wsinks_, .chunk = c.chunk_, .softmax = o};
  if (c.fam == family::sparse_bigbird)
    co->blocks = xattn::block_layout::bigbird(c.nq_, c.nk_, 64,
                                              {.window_blocks = 1, .global_blocks = 1, .random_blocks = 1,
                                               .seed = case_seed(c.name), .heads = c.hq_, .causal = c.causal_});
  return co;
}

/// The visibility a family adds to the softmax options, written from options.hpp's definitions.
visibility family_pattern(const Case& c, const case_options& co) {
  if (c.fam == family::window) {
    const auto& w = co.window;
    const index wr = w.causal ? 0 : w.window_right;
    const std::vector<int> sq = co.sq, sk = co.sk;
    const index nq_all = c.nq_, nk_all = c.nk_;
    return [=](index b, index, index i, index j) {
      const index nq = sq.empty() ? nq_all : sq[b], nk = sk.empty() ? nk_all : sk[b];
      const index p = i + nk - nq;
      const bool right = wr < 0 || j <= p + wr * w.dilation;
      const bool left = w.window_left < 0 || j >= p - w.window_left * w.dilation;
      const auto floor_div = [](index a, index n) { return a >= 0 ? a / n : -((-a + n - 1) / n); };
      const bool chunk = w.chunk <= 0 || floor_div(j, w.chunk) == floor_div(p, w.chunk);
      return (right && left && (p - j) % w.dilation == 0 && chunk) || (j < w.sinks && right);
    };
  }
  if (c.sparse()) {
    const xattn::block_layout l = *co.blocks;
    return [l](index, index h, index i, index j) {
      const auto row = l.row(h, i / l.block_size());
      return std::binary_search(row.begin(), row.end(), int(j / l.block_size()));
    };
  }
  return {};
}

/// Does a bf16 path (AMX or AVX512-BF16) compute this call (paths.hpp's rule)?
bool amx_active(const Case& c, bool kv_bf16, product_path path) {
  return path != product_path::fp32 && (kv_bf16 || c.compute_bf16_) && !c.decode_like() &&
         c.nq_ * (c.hq_ / c.hkv_) > kDecodeRows;
}

/// The inputs of a case: the kernel's tensors, their float copies (the rounded values), and the
/// bfloat16-rounded float copies that compute = bf16 computes with.
template <class SQ, class S>
struct case_inputs {
  tensor<SQ> q;
  tensor<S> k, v;
  tensor<float> qf, kf, vf;
};

template <class SQ, class S>
case_inputs<SQ, S> make_inputs(const Case& c, std::mt19937_64& rng) {
  tensor<float> q = make_tensor<float>(c.lay_, c.b_, c.nq_, c.hq_, c.d_), k = make_tensor<float>(c.lay_, c.b_, c.nk_, c.hkv_, c.d_),
                v = make_tensor<float>(c.lay_, c.b_, c.nk_, c.hkv_, c.dv());
  fill_random(q, rng, dist::normal, c.logits_);
  fill_random(k, rng);
  fill_random(v, rng);
  if (c.offset_ > 0) {  // k_j += big·w, w a unit vector per (batch, K/V head): scores ≈ ±offset + O(1)
    const double big = c.offset_ * std::sqrt(double(c.d_));
    std::normal_distribution<double> normal;
    std::vector<double> w(static_cast<std::size_t>(c.d_));
    for (index b = 0; b < c.b_; ++b)
      for (index h = 0; h < c.hkv_; ++h) {
        double norm = 0;
        for (double& x : w) x = normal(rng), norm += x * x;
        for (index j = 0; j < c.nk_; ++j)
          for (index e = 0; e < c.d_; ++e) at(k, c.lay_, b, j, h, e) += float(big * w[e] / std::sqrt(norm));
      }
  }
  case_inputs<SQ, S> in{q.template cast<SQ>(), k.template cast<S>(), v.template cast<S>(), {}, {}, {}};
  in.qf = in.q.template cast<float>(), in.kf = in.k.template cast<float>(), in.vf = in.v.template cast<float>();
  return in;
}

/// What needs the inputs: a top-k layout, selected from the kernel's (16-bit) tensors themselves.
template <class In>
void finish_options(const Case& c, case_options& co, const In& in) {
  if (c.fam == family::sparse_top_k)
    co.blocks = xattn::block_layout::top_k(in.q, in.k, {.block_size = 64, .keep = 2, .causal = c.causal_, .layout = c.lay_});
}

/// The fp64 reference of the case's family on the rounded values.
struct reference_result {
  tensor<double> out;
  tensor<double, 3> lse;
};

reference_result reference(const Case& c, const case_options& co, const tensor<float>& q, const tensor<float>& k,
                           const tensor<float>& v) {
  const tensor<double> qd = q.cast<double>(), kd = k.cast<double>(), vd = v.cast<double>();
  reference_result r{make_tensor<double>(c.lay_, c.b_, c.nq_, c.hq_, c.dv()), tensor<double, 3>(c.b_, c.hq_, c.nq_)};
  switch (c.fam) {
    case family::softmax: xattn::reference::softmax_attention(qd, kd, vd, r.out, r.lse, co.opt); break;
    case family::decode:
    case family::streaming: {
      xattn::softmax_options o = co.opt;
      o.seqlens_k = co.kv_len;
      xattn::reference::softmax_attention(qd, kd, vd, r.out, r.lse, o);
      break;
    }
    case family::window: xattn::reference::sliding_window_attention(qd, kd, vd, r.out, r.lse, co.window); break;
    case family::sparse_bigbird:
    case family::sparse_top_k: xattn::reference::sparse_attention(qd, kd, vd, r.out, r.lse, *co.blocks, co.opt); break;
  }
  return r;
}

/// The case's kernel on the calling thread (dev null) or on dev; lse is left alone by decode.
template <class Q, class K, class V, class O>
void run_kernel(const Case& c, const case_options& co, const Eigen::ThreadPoolDevice* dev, const Q& q, const K& k,
                const V& v, O& out, tensor<float, 3>& lse) {
  switch (c.fam) {
    case family::softmax:
      dev ? xattn::softmax_attention(*dev, q, k, v, out, lse, co.opt) : xattn::softmax_attention(q, k, v, out, lse, co.opt);
      break;
    case family::decode:
      dev ? xattn::softmax_decode(*dev, q, k, v, out, co.sk, co.opt) : xattn::softmax_decode(q, k, v, out, co.sk, co.opt);
      break;
    case family::streaming:
      dev ? xattn::streaming_decode(*dev, q, k, v, out, co.sk, co.streaming)
          : xattn::streaming_decode(q, k, v, out, co.sk, co.streaming);
      break;
    case family::window:
      dev ? xattn::sliding_window_attention(*dev, q, k, v, out, lse, co.window)
          : xattn::sliding_window_attention(q, k, v, out, lse, co.window);
      break;
    case family::sparse_bigbird:
    case family::sparse_top_k:
      dev ? xattn::sparse_attention(*dev, q, k, v, out, lse, *co.blocks, co.opt)
          : xattn::sparse_attention(q, k, v, out, lse, *co.blocks, co.opt);
      break;
  }
}

template <class O>
tensor<O> nan_tensor(const Case& c) {
  tensor<O> t = make_tensor<O>(c.lay_, c.b_, c.nq_, c.hq_, c.dv());
  t.setConstant(static_cast<O>(kNaN));
  return t;
}
tensor<float, 3> nan_lse(const Case& c) {
  tensor<float, 3> t(c.b_, c.hq_, c.nq_);
  t.setConstant(std::numeric_limits<float>::quiet_NaN());
  return t;
}

/// Rows the reference masks fully (LSE −inf) are exact zeros in out (and −inf in lse, unless decode).
template <class O>
::testing::AssertionResult masked_rows_zero(const Case& c, const tensor<O>& out, const tensor<float, 3>& lse,
                                            const tensor<double, 3>& ref_lse) {
  for (index b = 0; b < c.b_; ++b)
    for (index h = 0; h < c.hq_; ++h)
      for (index i = 0; i < c.nq_; ++i) {
        if (ref_lse(b, h, i) != -std::numeric_limits<double>::infinity()) continue;
        if (!c.decode_like() && !(std::isinf(lse(b, h, i)) && lse(b, h, i) < 0))
          return ::testing::AssertionFailure() << "lse[" << b << ", " << h << ", " << i << "] = " << lse(b, h, i)
                                               << " in a fully masked row, expected -inf";
        for (index e = 0; e < c.dv(); ++e)
          if (double(at(out, c.lay_, b, i, h, e)) != 0)
            return ::testing::AssertionFailure() << "out (b " << b << ", row " << i << ", head " << h << ", " << e
                                                 << ") = " << double(at(out, c.lay_, b, i, h, e))
                                                 << " in a fully masked row, expected 0";
      }
  return ::testing::AssertionSuccess();
}

/// The whole check of one case with q of SQ and k, v of S: every path of the machine × out float
/// and out SQ (when 16-bit), each against the reference by the rule with the path's naive.
template <class SQ, class S>
void check_case(const Case& c) {
  const std::string name = c.name + "_" + type_name<SQ>() + "_" + type_name<S>();
  SCOPED_TRACE(seed_note(name));
  std::mt19937_64 rng(case_seed(name));
  const auto co = make_options(c, rng);
  const case_inputs<SQ, S> in = make_inputs<SQ, S>(c, rng);
  finish_options(c, *co, in);
  const visibility extra = family_pattern(c, *co);
  const xattn::softmax_options& nopt = c.fam == family::window ? co->window.softmax : co->opt;
  xattn::softmax_options naive_opt = nopt;
  if (c.decode_like()) naive_opt.seqlens_k = co->kv_len;

  const reference_result ref = reference(c, *co, in.qf, in.kf, in.vf);
  const naive16_result fp32 = naive16(in.qf, in.kf, in.vf, naive_opt, false, extra);
  std::optional<naive16_result> amx;  // rounds q, k, v (compute = bf16) and P to bfloat16
  const double mag = max_abs_finite(ref.out), lmag = max_abs_finite(ref.lse);
  {
    // The naive must be near the reference, or the rule compares against noise.
    const double n = max_abs_diff(fp32.out, ref.out).max;
    ASSERT_LE(n, 1e-3 * std::max(1.0, mag) + 1e-5 * fp32.max_abs_score) << "naive fp32 vs reference";
  }
  const bool kv_bf16 = std::is_same_v<S, bf16>;
  for (product_path path : machine_paths()) {
    SCOPED_TRACE(std::string("path ") + xattn::path_name(path));
    const path_cap cap(path);
    const bool on_amx = amx_active(c, kv_bf16, path);
    if (on_amx && !amx)
      amx = naive16(rounded<bf16>(in.qf), rounded<bf16>(in.kf), rounded<bf16>(in.vf), naive_opt, true, extra);
    const naive16_result& naive = on_amx ? *amx : fp32;
    const double eps = eps16(mag, naive.max_abs_score), leps = eps16(lmag, naive.max_abs_score);
    const auto check = [&]<class O>(O*) {
      SCOPED_TRACE(std::string("out ") + type_name<O>());
      tensor<O> out = nan_tensor<O>(c);
      tensor<float, 3> lse = nan_lse(c);
      run_kernel(c, *co, nullptr, in.q, in.k, in.v, out, lse);
      EXPECT_TRUE(within_rule16("out", out, naive.out, ref.out, eps));
      if (!c.decode_like()) {
        EXPECT_TRUE(within_rule16("lse", lse, naive.lse, ref.lse, leps));
      }
      EXPECT_TRUE(no_nan("out", out));
      EXPECT_TRUE(masked_rows_zero(c, out, lse, ref.lse));
    };
    check(static_cast<float*>(nullptr));
    if constexpr (is_16bit<SQ>) check(static_cast<SQ*>(nullptr));
  }
}

/// Runs check_case with k, v of S and q of the type the case asks for.
template <class S>
void check_storage(const Case& c) {
  switch (c.qt_) {
    case qtype::same: check_case<S, S>(c); break;
    case qtype::f32: check_case<float, S>(c); break;
    case qtype::bf16: check_case<bf16, S>(c); break;
  }
}

enum class storage { bf16, f16 };
void PrintTo(storage s, std::ostream* os) { *os << (s == storage::bf16 ? "bf16" : "f16"); }
using Param = std::tuple<Case, storage>;

std::string param_name(const ::testing::TestParamInfo<Param>& info) {
  return std::get<0>(info.param).name + (std::get<1>(info.param) == storage::bf16 ? "_bf16" : "_f16");
}

// ---------------------------------------------------------------------------------------------
// The tables

const Case kSoftmaxCases[] = {
    Case("plain_n100_d64").len(100),
    Case("causal_n257_d128").len(257).dim(128).causal(),
    Case("mqa_nq17_nk300_d40").len(17, 300).heads(4, 1).dim(40),
    Case("gqa_causal_nq300_nk100_d72_dv40").len(300, 100).dim(72, 40).causal(),
    Case("len1").len(1),
    Case("nq1_nk257_causal").len(1, 257).causal(),
    Case("bhsd_n113_dv128").len(113).dim(64, 128).bhsd(),
    Case("seqlens_causal").batch(3).len(100, 120).seqlens({100, 17, 1}, {120, 40, 99}).causal(),
    Case("softcap_alibi_sinks").len(100).softcap(5).alibi().sinks(),
    Case("bias_mask_dead_rows").len(64, 100).bias().mask(true),
    Case("window_left_right").len(100).window(20, 5),
    Case("logits_1e4").len(64).logits(1e4),
    Case("offset_1e4_causal").len(100).offset(1e4).causal(),
};

const Case kDecodeCases[] = {
    Case("decode_nq1", family::decode).batch(4).len(1, 300).heads(32, 8).dim(128).cache_lengths({300, 1, 17, 257}),
    Case("decode_f32q_nq1", family::decode).batch(4).len(1, 257).heads(32, 8).dim(64).cache_lengths({257, 100, 1, 64})
        .q(qtype::f32),
    Case("decode_bf16q_nq1", family::decode).batch(2).len(1, 300).heads(32, 8).dim(72).cache_lengths({300, 33})
        .q(qtype::bf16),
    Case("decode_nq4_causal_sinks", family::decode).batch(2).len(4, 130).heads(32, 8).dim(64).causal().sinks()
        .cache_lengths({130, 9}),
    Case("streaming_sinks4_window60", family::streaming).batch(3).len(1, 64).heads(32, 8).tokens(4, {10, 64, 500}),
    Case("streaming_f32q_bhsd_sinks", family::streaming).batch(2).len(1, 130).heads(32, 8).dim(40).bhsd().sinks()
        .tokens(2, {129, 1000}).q(qtype::f32),
    Case("decode_f32q_bhsd_softcap", family::decode).batch(2).len(1, 100).heads(32, 8).dim(40).bhsd().softcap(10)
        .cache_lengths({100, 50}).q(qtype::f32),
};

const Case kWindowCases[] = {
    Case("sw_causal_left32_n300", family::window).len(300).causal().window(32, -1),
    Case("sw_left16_right8_d40", family::window).len(257).dim(40).window(16, 8),
    Case("sw_dilation3_sinks4", family::window).len(200).window(20, 4).dilation(3).sink_tokens(4),
    Case("sw_chunk64_causal", family::window).len(257).causal().chunk(64),
    Case("sw_nq100_nk300_mqa_bhsd", family::window).len(100, 300).heads(4, 1).causal().window(50, -1).bhsd(),
    Case("sw_seqlens_alibi", family::window).batch(2).len(120).seqlens({120, 1}, {120, 70}).causal().window(24, -1)
        .alibi(),
};

const Case kSparseCases[] = {
    Case("bigbird_n300", family::sparse_bigbird).len(300),
    Case("bigbird_causal_n257_d128", family::sparse_bigbird).len(257).dim(128).causal(),
    Case("bigbird_nq100_nk300_d72_dv40_sinks", family::sparse_bigbird).len(100, 300).dim(72, 40).sinks(),
    Case("topk_n300_bhsd", family::sparse_top_k).len(300).bhsd(),
    Case("topk_causal_mask", family::sparse_top_k).len(257).causal().mask(true),
};

class Storage16Softmax : public ::testing::TestWithParam<Param> {};
class Storage16Decode : public ::testing::TestWithParam<Param> {};
class Storage16Window : public ::testing::TestWithParam<Param> {};
class Storage16Sparse : public ::testing::TestWithParam<Param> {};

void run_param(const Param& p) {
  if (std::get<1>(p) == storage::bf16) check_storage<bf16>(std::get<0>(p));
  else check_storage<f16>(std::get<0>(p));
}

TEST_P(Storage16Softmax, MatchesReferenceOnEveryPath) { run_param(GetParam()); }
TEST_P(Storage16Decode, MatchesReferenceOnEveryPath) { run_param(GetParam()); }
TEST_P(Storage16Window, MatchesReferenceOnEveryPath) { run_param(GetParam()); }
TEST_P(Storage16Sparse, MatchesReferenceOnEveryPath) { run_param(GetParam()); }

const auto kStorages = ::testing::Values(storage::bf16, storage::f16);
INSTANTIATE_TEST_SUITE_P(Storage16, Storage16Softmax, ::testing::Combine(::testing::ValuesIn(kSoftmaxCases), kStorages),
                         param_name);
INSTANTIATE_TEST_SUITE_P(Storage16, Storage16Decode, ::testing::Combine(::testing::ValuesIn(kDecodeCases), kStorages),
                         param_name);
INSTANTIATE_TEST_SUITE_P(Storage16, Storage16Window, ::testing::Combine(::testing::ValuesIn(kWindowCases), kStorages),
                         param_name);
INSTANTIATE_TEST_SUITE_P(Storage16, Storage16Sparse, ::testing::Combine(::testing::ValuesIn(kSparseCases), kStorages),
                         param_name);

// compute = bf16 on float tensors: the bf16 paths round q, k, v and P; elsewhere it is exact.
const Case kComputeCases[] = {
    Case("softmax_causal_n257").len(257).causal().compute_bf16(),
    Case("softmax_gqa_d40_dv72_bhsd").len(100, 130).dim(40, 72).bhsd().compute_bf16(),
    Case("softmax_offset_1e4").len(100).offset(1e4).compute_bf16(),
    Case("window_dilation2", family::window).len(200).window(16, 16).dilation(2).compute_bf16(),
    Case("bigbird_causal", family::sparse_bigbird).len(300).causal().compute_bf16(),
    Case("decode_stays_fp32", family::decode).batch(2).len(1, 200).heads(32, 8).cache_lengths({200, 3}).compute_bf16(),
};

class Storage16Compute : public ::testing::TestWithParam<Case> {};
TEST_P(Storage16Compute, Bf16ComputeOnFloatTensorsMatchesReference) { check_case<float, float>(GetParam()); }
INSTANTIATE_TEST_SUITE_P(Storage16, Storage16Compute, ::testing::ValuesIn(kComputeCases),
                         [](const auto& info) { return info.param.name; });

// ---------------------------------------------------------------------------------------------
// 2-D neighborhood attention

template <class T>
using image = Eigen::Tensor<T, 5, Eigen::RowMajor>;

struct NaCase {
  std::string name;
  index b_ = 2, h_ = 9, w_ = 11, hq_ = 4, hkv_ = 2, d_ = 40, dv_ = 0;
  xattn::neighborhood_2d_options opt;
  NaCase(std::string n, index h, index w, xattn::neighborhood_2d_options o) : name(std::move(n)), h_(h), w_(w), opt(o) {}
  NaCase& heads(index hq, index hkv) { hq_ = hq, hkv_ = hkv; return *this; }
  NaCase& dim(index d, index dv = 0) { d_ = d, dv_ = dv; return *this; }
  index dv() const { return dv_ ? dv_ : d_; }
};
void PrintTo(const NaCase& c, std::ostream* os) { *os << c.name; }

/// NATTEN's rule along one axis, from options.hpp: on the query's dilation grid, the kernel's window
/// centred on it and shifted to stay inside; causal: the kernel − 1 preceding grid positions and its own.
bool axis_visible(index q, index k, index n, index kernel, index dil, bool causal) {
  if ((q - k) % dil != 0) return false;
  const index len = (n - q % dil + dil - 1) / dil, a = q / dil, b = k / dil;
  if (causal) return b <= a && b > a - kernel;
  const index start = std::max<index>(0, std::min(a - kernel / 2, len - kernel));
  return b >= start && b < start + kernel;
}

template <class S>
void check_na(const NaCase& c) {
  const std::string name = c.name + "_" + type_name<S>();
  SCOPED_TRACE(seed_note(name));
  std::mt19937_64 rng(case_seed(name));
  const index n = c.h_ * c.w_;
  image<float> q0(c.b_, c.h_, c.w_, c.hq_, c.d_), k0(c.b_, c.h_, c.w_, c.hkv_, c.d_), v0(c.b_, c.h_, c.w_, c.hkv_, c.dv());
  fill_random(q0, rng), fill_random(k0, rng), fill_random(v0, rng);
  const image<S> q = q0.template cast<S>(), k = k0.template cast<S>(), v = v0.template cast<S>();
  const auto& o = c.opt;
  tensor<bool> mask(1, 1, n, n);
  for (index i = 0; i < n; ++i)
    for (index j = 0; j < n; ++j)
      mask(0, 0, i, j) = axis_visible(i / c.w_, j / c.w_, c.h_, o.kernel_h, o.dilation_h, o.causal_h) &&
                         axis_visible(i % c.w_, j % c.w_, c.w_, o.kernel_w, o.dilation_w, o.causal_w);
  const Eigen::array<index, 4> fq{c.b_, n, c.hq_, c.d_}, fk{c.b_, n, c.hkv_, c.d_}, fv{c.b_, n, c.hkv_, c.dv()},
      fo{c.b_, n, c.hq_, c.dv()};
  const tensor<float> qf = q.template cast<float>().reshape(fq), kf = k.template cast<float>().reshape(fk),
                      vf = v.template cast<float>().reshape(fv);
  const xattn::softmax_options mopt{.scale = o.scale, .mask = mask};
  // The fp64 references: the neighborhood one for out, softmax with the neighbourhood mask for LSE.
  image<double> ref5(c.b_, c.h_, c.w_, c.hq_, c.dv());
  xattn::reference::neighborhood_attention_2d(image<double>(q.template cast<double>()),
                                              image<double>(k.template cast<double>()),
                                              image<double>(v.template cast<double>()), ref5, o);
  const tensor<double> ref_out = ref5.reshape(fo);
  tensor<double> ref_out2(c.b_, n, c.hq_, c.dv());
  tensor<double, 3> ref_lse(c.b_, c.hq_, n);
  xattn::reference::softmax_attention(tensor<double>(qf.cast<double>()), tensor<double>(kf.cast<double>()),
                                      tensor<double>(vf.cast<double>()), ref_out2, ref_lse, mopt);
  ASSERT_LE(max_abs_diff(ref_out, ref_out2).max, 1e-12) << "the two references disagree";

  const naive16_result fp32 = naive16(qf, kf, vf, mopt, false);
  std::optional<naive16_result> amx;
  const double mag = max_abs_finite(ref_out), lmag = max_abs_finite(ref_lse);
  for (product_path path : machine_paths()) {
    SCOPED_TRACE(std::string("path ") + xattn::path_name(path));
    const path_cap cap(path);
    const bool on_amx = path != product_path::fp32 && (std::is_same_v<S, bf16> || o.compute == xattn::compute::bf16) &&
                        n * (c.hq_ / c.hkv_) > kDecodeRows;
    if (on_amx && !amx) amx = naive16(rounded<bf16>(qf), rounded<bf16>(kf), rounded<bf16>(vf), mopt, true);
    const naive16_result& naive = on_amx ? *amx : fp32;
    const auto check = [&]<class O>(O*) {
      SCOPED_TRACE(std::string("out ") + type_name<O>());
      image<O> out(c.b_, c.h_, c.w_, c.hq_, c.dv());
      out.setConstant(static_cast<O>(kNaN));
      tensor<float, 3> lse(c.b_, c.hq_, n);
      lse.setConstant(std::numeric_limits<float>::quiet_NaN());
      xattn::neighborhood_attention_2d(q, k, v, out, lse, o);
      const tensor<O> out4 = out.reshape(fo);
      EXPECT_TRUE(within_rule16("out", out4, naive.out, ref_out, eps16(mag, naive.max_abs_score)));
      EXPECT_TRUE(within_rule16("lse", lse, naive.lse, ref_lse, eps16(lmag, naive.max_abs_score)));
      for (int threads : {1, 2, 3}) {
        SCOPED_TRACE("threads " + std::to_string(threads));
        image<O> par(c.b_, c.h_, c.w_, c.hq_, c.dv());
        par.setConstant(static_cast<O>(kNaN));
        xattn::neighborhood_attention_2d(device(threads), q, k, v, par, o);
        EXPECT_TRUE(bitwise_equal("out", out, par));
      }
    };
    check(static_cast<float*>(nullptr));
    if constexpr (is_16bit<S>) check(static_cast<S*>(nullptr));
  }
}

const NaCase kNaCases[] = {
    NaCase("k3_8x9", 8, 9, {.kernel_h = 3, .kernel_w = 3}),
    NaCase("k5_dilation2_12x11", 12, 11, {.kernel_h = 5, .kernel_w = 5, .dilation_h = 2, .dilation_w = 2}),
    NaCase("k7_causal_h_10x17_mha_d72", 10, 17, {.kernel_h = 7, .kernel_w = 7, .causal_h = true}).heads(2, 2).dim(72),
    NaCase("k5x3_causal_both_9x20_dv32", 9, 20, {.kernel_h = 5, .kernel_w = 3, .causal_h = true, .causal_w = true})
        .dim(64, 32),
    NaCase("k7_wide_7x40_d128", 7, 40, {.kernel_h = 7, .kernel_w = 7}).dim(128),
};

class Storage16Neighborhood : public ::testing::TestWithParam<std::tuple<NaCase, storage>> {};
TEST_P(Storage16Neighborhood, MatchesReferenceOnEveryPath) {
  const auto& [c, s] = GetParam();
  if (s == storage::bf16) check_na<bf16>(c);
  else check_na<f16>(c);
}
INSTANTIATE_TEST_SUITE_P(Storage16, Storage16Neighborhood, ::testing::Combine(::testing::ValuesIn(kNaCases), kStorages),
                         [](const auto& info) {
                           return std::get<0>(info.param).name + (std::get<1>(info.param) == storage::bf16 ? "_bf16" : "_f16");
                         });

TEST(Storage16Neighborhood, Bf16ComputeOnFloatImages) {
  check_na<float>(NaCase("compute_bf16_k5_10x12", 10, 12, {.kernel_h = 5, .kernel_w = 5, .compute = xattn::compute::bf16}));
}

// ---------------------------------------------------------------------------------------------
// Properties

/// Thread-count invariance per path: 1, 2 and 3 threads give bitwise the serial result.
template <class S>
void check_threads(const Case& c) {
  const std::string name = c.name + "_threads_" + type_name<S>();
  SCOPED_TRACE(seed_note(name));
  std::mt19937_64 rng(case_seed(name));
  const auto co = make_options(c, rng);
  const case_inputs<S, S> in = make_inputs<S, S>(c, rng);
  finish_options(c, *co, in);
  for (product_path path : machine_paths()) {
    SCOPED_TRACE(std::string("path ") + xattn::path_name(path));
    const path_cap cap(path);
    const auto check = [&]<class O>(O*) {
      SCOPED_TRACE(std::string("out ") + type_name<O>());
      tensor<O> serial = nan_tensor<O>(c);
      tensor<float, 3> serial_lse = nan_lse(c);
      run_kernel(c, *co, nullptr, in.q, in.k, in.v, serial, serial_lse);
      ASSERT_TRUE(no_nan("serial out", serial));
      for (int threads : {1, 2, 3}) {
        SCOPED_TRACE("threads " + std::to_string(threads));
        tensor<O> par = nan_tensor<O>(c);
        tensor<float, 3> par_lse = nan_lse(c);
        run_kernel(c, *co, &device(threads), in.q, in.k, in.v, par, par_lse);
        EXPECT_TRUE(bitwise_equal("out", serial, par));
        if (!c.decode_like()) {
        EXPECT_TRUE(bitwise_equal("lse", serial_lse, par_lse));
      }
      }
    };
    check(static_cast<float*>(nullptr));
    check(static_cast<S*>(nullptr));
  }
}

const Case kThreadCases[] = {
    Case("softmax_causal_n300").len(300).causal().sinks(),
    Case("softmax_nq17_nk257_mqa").len(17, 257).heads(4, 1),
    Case("decode_split_keys", family::decode).batch(1).len(1, 1000).heads(32, 8).cache_lengths({997}),
    Case("streaming", family::streaming).batch(1).len(1, 1004).heads(32, 8).tokens(4, {3000}),
    Case("window_sinks_chunk", family::window).len(300).causal().window(40, -1).sink_tokens(4),
    Case("bigbird", family::sparse_bigbird).len(300),
    Case("topk", family::sparse_top_k).len(257).causal(),
};

class Storage16Threads : public ::testing::TestWithParam<Param> {};
TEST_P(Storage16Threads, BitwiseIndependentOfThreadCount) {
  if (std::get<1>(GetParam()) == storage::bf16) check_threads<bf16>(std::get<0>(GetParam()));
  else check_threads<f16>(std::get<0>(GetParam()));
}
INSTANTIATE_TEST_SUITE_P(Storage16, Storage16Threads, ::testing::Combine(::testing::ValuesIn(kThreadCases), kStorages),
                         param_name);

/// The fp32 path converts 16-bit rows to float where tiles are copied: the result equals the float
/// kernel on float tensors holding the rounded values, bitwise, and a 16-bit out is that result
/// rounded once.
template <class S>
void check_fp32_path_is_float_kernel(const Case& c) {
  const std::string name = c.name + "_fp32_path_" + type_name<S>();
  SCOPED_TRACE(seed_note(name));
  std::mt19937_64 rng(case_seed(name));
  const auto co = make_options(c, rng);
  const case_inputs<S, S> in = make_inputs<S, S>(c, rng);
  finish_options(c, *co, in);
  const path_cap cap(product_path::fp32);
  tensor<float> want = nan_tensor<float>(c), got = nan_tensor<float>(c);
  tensor<float, 3> want_lse = nan_lse(c), got_lse = nan_lse(c);
  run_kernel(c, *co, nullptr, in.qf, in.kf, in.vf, want, want_lse);
  run_kernel(c, *co, nullptr, in.q, in.k, in.v, got, got_lse);
  EXPECT_TRUE(bitwise_equal("out (float)", want, got));
  if (!c.decode_like()) {
        EXPECT_TRUE(bitwise_equal("lse", want_lse, got_lse));
      }
  tensor<S> got16 = nan_tensor<S>(c);
  run_kernel(c, *co, nullptr, in.q, in.k, in.v, got16, got_lse);
  const tensor<S> want16 = want.template cast<S>();
  EXPECT_TRUE(bitwise_equal("out (16-bit)", want16, got16));
}

class Storage16Fp32Path : public ::testing::TestWithParam<Param> {};
TEST_P(Storage16Fp32Path, EqualsFloatKernelOnRoundedValues) {
  if (std::get<1>(GetParam()) == storage::bf16) check_fp32_path_is_float_kernel<bf16>(std::get<0>(GetParam()));
  else check_fp32_path_is_float_kernel<f16>(std::get<0>(GetParam()));
}
INSTANTIATE_TEST_SUITE_P(Storage16, Storage16Fp32Path, ::testing::Combine(::testing::ValuesIn(kThreadCases), kStorages),
                         param_name);

/// |result on path a − result on path b| of one call (float out).
template <class Q, class K, class V>
double path_difference(const Case& c, const Q& q, const K& k, const V& v, const case_options& co, product_path pa,
                       product_path pb) {
  using O = float;
  tensor<O> a = nan_tensor<O>(c), b = nan_tensor<O>(c);
  tensor<float, 3> la = nan_lse(c), lb = nan_lse(c);
  {
    const path_cap cap(pa);
    EXPECT_EQ(xattn::bf16_product_path(), pa);
    run_kernel(c, co, nullptr, q, k, v, a, la);
  }
  {
    const path_cap cap(pb);
    EXPECT_EQ(xattn::bf16_product_path(), pb);
    run_kernel(c, co, nullptr, q, k, v, b, lb);
  }
  return max_abs_diff(a, b).max;
}

/// Where paths.hpp says a bf16 path computes a call (bf16 K and V, or compute = bf16, prefill),
/// its result differs from the fp32 path's (P is rounded to bfloat16).
TEST(Storage16Amx, Bf16PrefillTakesBf16Path) {
  if (bf16_paths().empty())
    GTEST_SKIP() << "no AVX512-BF16 or AMX-BF16 on this machine (or not in this build): best path is "
                 << xattn::path_name(xattn::best_product_path());
  std::mt19937_64 rng(case_seed("amx_path_taken"));
  for (product_path path : bf16_paths()) {
    SCOPED_TRACE(std::string("path ") + xattn::path_name(path));
    {
      const Case c = Case("bf16_prefill").len(256).dim(64);
      const auto co = make_options(c, rng);
      const auto in = make_inputs<bf16, bf16>(c, rng);
      EXPECT_GT(path_difference(c, in.q, in.k, in.v, *co, product_path::fp32, path), 0)
          << "bf16 K/V prefill gave the fp32 path's result bitwise: the bf16 path was not taken";
    }
    {
      const Case c = Case("compute_bf16_prefill").len(256).dim(64).compute_bf16();
      const auto co = make_options(c, rng);
      const auto in = make_inputs<float, float>(c, rng);
      EXPECT_GT(path_difference(c, in.q, in.k, in.v, *co, product_path::fp32, path), 0)
          << "compute = bf16 prefill: the bf16 path was not taken";
    }
  }
}

/// The two bf16 paths compute the same products from the same roundings, in another order of the
/// float sums. The order moves a score by a float ulp, which now and then flips P's rounding to
/// bf16 (a 2^-8 step of that probability), so they do not agree to float rounding; they agree far
/// more closely with each other than either does with the fp32 path (measured on a Sapphire
/// Rapids-class Xeon: 0.05-0.12 of the fp32 difference).
TEST(Storage16Amx, AmxAndDotProductPathsAgree) {
  if (xattn::best_product_path() != product_path::amx_bf16)
    GTEST_SKIP() << "needs both AMX-BF16 and AVX512-BF16 to compare them: best path is "
                 << xattn::path_name(xattn::best_product_path());
  std::mt19937_64 rng(case_seed("bf16_paths_agree"));
  for (const Case& c : {Case("bf16_agree").len(300).dim(128).heads(8, 2), Case("bf16_agree_causal").len(200).causal()}) {
    SCOPED_TRACE(c.name);
    const auto co = make_options(c, rng);
    const auto in = make_inputs<bf16, bf16>(c, rng);
    const double diff = path_difference(c, in.q, in.k, in.v, *co, product_path::avx512_bf16, product_path::amx_bf16);
    const double fp32_diff = path_difference(c, in.q, in.k, in.v, *co, product_path::fp32, product_path::amx_bf16);
    EXPECT_GT(fp32_diff, 0);
    EXPECT_LE(diff, 0.25 * fp32_diff) << "the AMX and AVX512-BF16 paths must agree far more closely than fp32 and "
                                         "AMX do (fp32 vs AMX: " << fp32_diff << ")";
  }
}

/// Half K and V, and decode, stay on the fp32 path under either cap (bitwise the same result).
TEST(Storage16Amx, HalfAndDecodeStayOnFp32Path) {
  if (bf16_paths().empty()) GTEST_SKIP() << "no bf16 path on this machine: nothing to compare the fp32 path with";
  std::mt19937_64 rng(case_seed("amx_path_not_taken"));
  const product_path best = xattn::best_product_path();
  {
    const Case c = Case("f16_prefill").len(256).dim(64);
    const auto co = make_options(c, rng);
    const auto in = make_inputs<f16, f16>(c, rng);
    EXPECT_EQ(path_difference(c, in.q, in.k, in.v, *co, product_path::fp32, best), 0) << "half K/V must stay on the fp32 path";
  }
  {
    const Case c = Case("bf16_decode", family::decode).batch(2).len(1, 300).heads(32, 8).cache_lengths({300, 100});
    const auto co = make_options(c, rng);
    const auto in = make_inputs<bf16, bf16>(c, rng);
    EXPECT_EQ(path_difference(c, in.q, in.k, in.v, *co, product_path::fp32, best), 0) << "decode must stay on the fp32 path";
  }
  {
    const Case c = Case("bf16_streaming", family::streaming).batch(2).len(1, 260).heads(32, 8).tokens(4, {90, 999});
    const auto co = make_options(c, rng);
    const auto in = make_inputs<bf16, bf16>(c, rng);
    EXPECT_EQ(path_difference(c, in.q, in.k, in.v, *co, product_path::fp32, best), 0)
        << "streaming decode must stay on the fp32 path";
  }
}

/// The cap is process-wide and read by bf16_product_path(); the guard restores it.
TEST(Storage16Amx, CapIsRestoredAndBoundsThePath) {
  const product_path before = xattn::bf16_product_path();
  {
    const path_cap cap(product_path::fp32);
    EXPECT_EQ(xattn::bf16_product_path(), product_path::fp32);
  }
  EXPECT_EQ(xattn::bf16_product_path(), before);
  EXPECT_EQ(before, xattn::best_product_path()) << "another test left the cap lowered";
}

/// Fully masked rows (all-false mask rows, padded query rows, a bias of −inf) give zeros and LSE
/// −inf with no NaN, in every family and on every path, 16-bit out included.
template <class S>
void check_masked(family fam) {
  const std::string name = std::string("masked_") + std::to_string(int(fam)) + type_name<S>();
  SCOPED_TRACE(seed_note(name));
  Case c = Case(name, fam).batch(2).len(100, 130).seqlens({100, 60}, {130, 130}).mask(true);
  if (fam == family::window) c.causal().window(30, -1);
  std::mt19937_64 rng(case_seed(name));
  const auto co = make_options(c, rng);
  // Also every key of batch 1, head 0... through an all-false mask row for one (batch, query).
  for (index j = 0; j < c.nk_; ++j) co->mask(1, 0, 7, j) = false;
  const case_inputs<S, S> in = make_inputs<S, S>(c, rng);
  const reference_result ref = reference(c, *co, in.qf, in.kf, in.vf);
  index dead = 0;
  for (index x = 0; x < ref.lse.size(); ++x) dead += std::isinf(ref.lse.data()[x]);
  ASSERT_GT(dead, c.hq_ * 40) << "the case masks too few rows to test anything";
  for (product_path path : machine_paths()) {
    SCOPED_TRACE(std::string("path ") + xattn::path_name(path));
    const path_cap cap(path);
    const auto check = [&]<class O>(O*) {
      SCOPED_TRACE(std::string("out ") + type_name<O>());
      tensor<O> out = nan_tensor<O>(c);
      tensor<float, 3> lse = nan_lse(c);
      run_kernel(c, *co, nullptr, in.q, in.k, in.v, out, lse);
      EXPECT_TRUE(no_nan("out", out));
      EXPECT_TRUE(no_nan("lse", lse));
      EXPECT_TRUE(masked_rows_zero(c, out, lse, ref.lse));
    };
    check(static_cast<float*>(nullptr));
    check(static_cast<S*>(nullptr));
  }
}

TEST(Storage16Masked, FullyMaskedRowsGiveZerosAndNegInfLse) {
  for (family f : {family::softmax, family::window}) {
    check_masked<bf16>(f);
    check_masked<f16>(f);
  }
}

// ---------------------------------------------------------------------------------------------
// Bad input still throws xattn::error, before anything is written, on every path.

template <class X>
bool untouched(const X& t) {
  for (index i = 0; i < t.size(); ++i)
    if (!std::isnan(double(t.data()[i]))) return false;
  return true;
}

template <class F>
::testing::AssertionResult throws_xattn_error(F&& f) {
  try {
    f();
  } catch (const xattn::error& e) {
    return ::testing::AssertionSuccess() << e.what();
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << "threw a non-xattn exception: " << e.what();
  }
  return ::testing::AssertionFailure() << "did not throw";
}

template <class S>
void check_bad_input() {
  SCOPED_TRACE(type_name<S>());
  tensor<S> q(1, 100, 4, 64), k(1, 100, 2, 64), v(1, 100, 2, 64), k_bad_d(1, 100, 2, 40), k_bad_h(1, 100, 3, 64);
  q.setConstant(S(0.5f)), k.setConstant(S(0.25f)), v.setConstant(S(1.f)), k_bad_d.setConstant(S(0.f)), k_bad_h.setConstant(S(0.f));
  for (product_path path : machine_paths()) {
    SCOPED_TRACE(std::string("path ") + xattn::path_name(path));
    const path_cap cap(path);
    tensor<S> out(1, 100, 4, 64);
    out.setConstant(S(kNaN));
    tensor<float, 3> lse(1, 4, 100), lse_bad(1, 4, 99);
    lse.setConstant(std::numeric_limits<float>::quiet_NaN());
    EXPECT_TRUE(throws_xattn_error([&] { xattn::softmax_attention(q, k_bad_d, v, out); })) << "head_dim of k";
    EXPECT_TRUE(throws_xattn_error([&] { xattn::softmax_attention(q, k_bad_h, k_bad_h, out); })) << "Hkv ∤ Hq";
    EXPECT_TRUE(throws_xattn_error([&] { xattn::softmax_attention(q, k, v, out, lse_bad); })) << "lse shape";
    EXPECT_TRUE(throws_xattn_error([&] { xattn::softmax_attention(q, k, v, out, {.scale = -1.0}); })) << "scale";
    EXPECT_TRUE(throws_xattn_error([&] {
      xattn::softmax_attention(q, k, v, out, {.scale = -1.0, .compute = xattn::compute::bf16});
    })) << "scale with compute = bf16";
    Eigen::TensorMap<tensor<S>> aliased(q.data(), 1, 100, 4, 64);  // out over q's memory
    EXPECT_TRUE(throws_xattn_error([&] { xattn::softmax_attention(q, k, v, aliased); })) << "out overlapping q";
    const std::vector<int> lengths{100, 100};
    EXPECT_TRUE(throws_xattn_error([&] { xattn::softmax_decode(q, k, v, out, lengths); })) << "cache_lengths count";
    const std::vector<int> too_long{101};
    EXPECT_TRUE(throws_xattn_error([&] { xattn::softmax_decode(q, k, v, out, too_long); })) << "cache length > capacity";
    EXPECT_TRUE(throws_xattn_error([&] { xattn::sliding_window_attention(q, k, v, out, lse, {.dilation = 0}); }))
        << "dilation";
    const auto small_blocks = xattn::block_layout::dense(100, 100, 32);
    EXPECT_TRUE(throws_xattn_error([&] { xattn::sparse_attention(q, k, v, out, lse, small_blocks); })) << "block size 32";
    image<S> iq(1, 6, 6, 2, 32), ik(1, 6, 6, 2, 32), iout(1, 6, 6, 2, 32);
    iq.setConstant(S(0.f)), ik.setConstant(S(0.f)), iout.setConstant(S(kNaN));
    EXPECT_TRUE(throws_xattn_error([&] { xattn::neighborhood_attention_2d(iq, ik, ik, iout, {.kernel_h = 7, .kernel_w = 3}); }))
        << "kernel larger than the image";
    EXPECT_TRUE(untouched(out)) << "out written by a call that threw";
    EXPECT_TRUE(untouched(lse)) << "lse written by a call that threw";
    EXPECT_TRUE(untouched(iout)) << "image out written by a call that threw";
  }
}

TEST(Storage16BadInput, ThrowsXattnErrorBeforeWriting) {
  check_bad_input<bf16>();
  check_bad_input<f16>();
}

}  // namespace
}  // namespace xattn_test
