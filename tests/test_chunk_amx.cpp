// tests/test_chunk_amx.cpp — the chunk engine's products on the bf16 paths (core/chunk_engine.hpp):
// lightning_attention and linear_attention (identity map) with bfloat16 q, k, v, or float q, k, v
// and compute = bf16, on every bf16 path this machine has (AMX-BF16 tiles, AVX512-BF16 dot
// products; each test runs once per path).
//
// The bf16 paths round more than their inputs: P (after the decay mask and the scale), the state S
// chunk by chunk for the inter-chunk product Q·S, and the λ-scaled V of the state update. So the
// accuracy rule's naive implementation here is a chunked fp32 one that rounds the same operands to
// bfloat16 the same way (naive_amx), against the fp64 reference on the bf16 inputs. Properties: the
// same bits on 1, 2 and 3 threads; compute = bf16 over float copies of bf16 values equals the bf16
// call; a bf16 out is the float out rounded; with the path capped at fp32, the call equals the float
// kernel on the rounded inputs again.
#include <gtest/gtest.h>

#include <cfloat>
#include <cstdio>

#include "chunk_test_util.hpp"
#include "paths_util.hpp"

namespace xattn_test::chunk_amx {
namespace {

using chunk::Case;
using chunk::decay;
using xattn::layout;
using bf16 = Eigen::bfloat16;

float round_bf16(float x) { return float(bf16(x)); }

/// The case computed as the AMX path computes it, in float with sums in the natural order: chunks
/// of the case's block, P = bf16(q·k · λ^(t−j) · scale), O = scale·λ^(t+1)·(q·bf16(S)) + Σ P·v,
/// S ← λ^nb·S + Σ_j kᵀ·bf16(λ^(nb−1−j)·v) (non-causal: S summed over every chunk, then
/// O = scale·q·bf16(S)).
chunk::outputs<float> naive_amx(const Case& c, const chunk::inputs<float>& in) {
  chunk::outputs<float> r = chunk::make_outputs<float>(c);
  const layout l = c.lay_;
  const index d = c.d_, e = c.e(), g = c.hq_ / c.hkv_, bk = c.block_ ? c.block_ : xattn::default_chunk_size;
  const std::vector<double> s = chunk::decays_of(c);
  const float sc = float(c.scale_);
  for (index b = 0; b < c.b_; ++b)
    for (index h = 0; h < c.hq_; ++h) {
      const index hk = h / g;
      auto pw = [&](index m) {
        const double x = std::exp(-(s.empty() ? 0.0 : s[std::size_t(h)]) * double(m));
        return x < double(FLT_MIN) ? 0.f : float(x);
      };
      auto q = [&](index t, index i) { return at(in.q, l, b, t, h, i); };
      auto k = [&](index t, index i) { return at(in.k, l, b, t, hk, i); };
      auto v = [&](index t, index x) { return at(in.v, l, b, t, hk, x); };
      std::vector<float> st(std::size_t(d * e), 0.f), sb(st.size());
      if (c.init_)
        for (index i = 0; i < d; ++i)
          for (index x = 0; x < e; ++x) st[std::size_t(i * e + x)] = in.s0(b, h, i, x);
      auto round_state = [&] {
        for (std::size_t i = 0; i < st.size(); ++i) sb[i] = round_bf16(st[i]);
      };
      auto inter = [&](index t, index x) {  // q_t·bf16(S)[:, x]
        float acc = 0;
        for (index i = 0; i < d; ++i) acc += q(t, i) * sb[std::size_t(i * e + x)];
        return acc;
      };
      for (index t0 = 0; t0 < c.nk_; t0 += bk) {
        const index nb = std::min(bk, c.nk_ - t0);
        if (c.causal_) {
          round_state();
          for (index t = 0; t < nb; ++t) {
            std::vector<float> p(std::size_t(t + 1));
            for (index j = 0; j <= t; ++j) {
              float dot = 0;
              for (index i = 0; i < d; ++i) dot += q(t0 + t, i) * k(t0 + j, i);
              p[std::size_t(j)] = round_bf16(dot * pw(t - j) * sc);
            }
            for (index x = 0; x < e; ++x) {
              float intra = 0;
              for (index j = 0; j <= t; ++j) intra += p[std::size_t(j)] * v(t0 + j, x);
              at(r.out, l, b, t0 + t, h, x) = sc * pw(t + 1) * inter(t0 + t, x) + intra;
            }
          }
        }
        const float lam_nb = pw(nb);
        for (index i = 0; i < d; ++i)
          for (index x = 0; x < e; ++x) {
            float ds = 0;
            for (index j = 0; j < nb; ++j) ds += k(t0 + j, i) * round_bf16(pw(nb - 1 - j) * v(t0 + j, x));
            float& sx = st[std::size_t(i * e + x)];
            sx = lam_nb * sx + ds;
          }
      }
      if (!c.causal_) {
        round_state();
        for (index t = 0; t < c.nq_; ++t)
          for (index x = 0; x < e; ++x) at(r.out, l, b, t, h, x) = sc * inter(t, x);
      }
      for (index i = 0; i < d; ++i)
        for (index x = 0; x < e; ++x) r.state(b, h, i, x) = st[std::size_t(i * e + x)];
    }
  return r;
}


/// q, k, v drawn in float and rounded to bf16, their values back in float, and the initial state.
struct bf16_inputs {
  tensor<bf16> q, k, v;
  chunk::inputs<float> f;
};

bf16_inputs make_bf16_inputs(const Case& c) {
  std::mt19937_64 rng(case_seed(c.name));
  const chunk::inputs<float> in = chunk::make_inputs<float>(c, rng);
  bf16_inputs r{in.q.cast<bf16>(), in.k.cast<bf16>(), in.v.cast<bf16>(), {}};
  r.f = {r.q.cast<float>(), r.k.cast<float>(), r.v.cast<float>(), in.s0};
  return r;
}


template <class S>
tensor<S> nan_out(const Case& c) {
  tensor<S> o = make_tensor<S>(c.lay_, c.b_, c.nq_, c.hq_, c.e());
  o.setConstant(S(chunk::kNaN));
  return o;
}
tensor<float> nan_state(const Case& c) {
  tensor<float> s(c.b_, c.hq_, c.df(), c.cols());
  s.setConstant(float(chunk::kNaN));
  return s;
}

class ChunkAmx : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    if (bf16_paths().empty())
      GTEST_SKIP() << "this CPU, OS or build allows neither AMX-BF16 nor AVX512-BF16 (best product path: "
                   << xattn::path_name(xattn::best_product_path()) << ")";
  }
};

/// Runs body() once per bf16 path of this machine, the path capped to it.
template <class F>
void on_bf16_paths(F body) {
  for (xattn::product_path path : bf16_paths()) {
    SCOPED_TRACE(std::string("path ") + xattn::path_name(path));
    const path_cap cap(path);
    ASSERT_EQ(xattn::bf16_product_path(), path);
    body();
  }
}

TEST_P(ChunkAmx, MatchesReferenceByTheRule) {
  const Case c = chunk::for_this_run(GetParam());
  SCOPED_TRACE(seed_note(c.name));
  on_bf16_paths([&] {
    const bf16_inputs in = make_bf16_inputs(c);
    const chunk::outputs<double> ref = chunk::oracle(c, in.f);
    const chunk::outputs<float> nv = naive_amx(c, in.f);
    const chunk::magnitudes m = chunk::magnitudes_of<float>(c, in.f);
    const double eps_out = chunk::sum_eps<float>(m.out), eps_state = chunk::sum_eps<float>(m.state);

    tensor<float> out = nan_out<float>(c), state = nan_state(c);
    chunk::run_forward(c, in.q, in.k, in.v, in.f.s0, out, state, 0);
    EXPECT_TRUE(within_rule("out", out, nv.out, ref.out, eps_out));
    EXPECT_TRUE(within_rule("final_state", state, nv.state, ref.state, eps_state));
    // The naive model must itself be close to the reference, or the rule proves little.
    const double rel = std::max(m.out, 1.0) * 0.05;
    EXPECT_LE(max_abs_diff(nv.out, ref.out).max, rel) << "naive_amx disagrees with the reference";
    // The AMX path ran: the fp32 kernel on the same values gives other bits.
    chunk::outputs<float> f = chunk::make_outputs<float>(c);
    chunk::run_kernel(c, in.f, f);
    if (c.nq_ > 1) {
      EXPECT_FALSE(bitwise_equal("", out, f.out)) << "the bf16 call gave the fp32 path's bits";
    }
    std::printf("[ figures  ] %s: out error %.3g (naive_amx %.3g, fp32 kernel %.3g; sum scale %.3g), "
                "state error %.3g (naive_amx %.3g, fp32 kernel %.3g)\n",
                c.name.c_str(), max_abs_diff(out, ref.out).max, max_abs_diff(nv.out, ref.out).max,
                max_abs_diff(f.out, ref.out).max, m.out, max_abs_diff(state, ref.state).max,
                max_abs_diff(nv.state, ref.state).max, max_abs_diff(f.state, ref.state).max);
  });
}

TEST_P(ChunkAmx, SameBitsOnAnyThreadCount) {
  const Case c = chunk::for_this_run(GetParam());
  SCOPED_TRACE(seed_note(c.name));
  on_bf16_paths([&] {
    const bf16_inputs in = make_bf16_inputs(c);
    tensor<float> out = nan_out<float>(c), state = nan_state(c);
    chunk::run_forward(c, in.q, in.k, in.v, in.f.s0, out, state, 0);
    for (int threads : {1, 2, 3}) {
      SCOPED_TRACE("threads " + std::to_string(threads));
      tensor<float> o = nan_out<float>(c), s = nan_state(c);
      chunk::run_forward(c, in.q, in.k, in.v, in.f.s0, o, s, threads);
      EXPECT_TRUE(bitwise_equal("out", out, o));
      EXPECT_TRUE(bitwise_equal("final_state", state, s));
    }
  });
}

TEST_P(ChunkAmx, ComputeBf16OnFloatEqualsBf16Storage) {
  const Case c = chunk::for_this_run(GetParam());
  SCOPED_TRACE(seed_note(c.name));
  on_bf16_paths([&] {
    const bf16_inputs in = make_bf16_inputs(c);
    tensor<float> out = nan_out<float>(c), state = nan_state(c);
    chunk::run_forward(c, in.q, in.k, in.v, in.f.s0, out, state, 2);
    tensor<float> o = nan_out<float>(c), s = nan_state(c);
    chunk::run_forward(c, in.f.q, in.f.k, in.f.v, in.f.s0, o, s, 2, xattn::compute::bf16);
    EXPECT_TRUE(bitwise_equal("out", out, o));
    EXPECT_TRUE(bitwise_equal("final_state", state, s));
  });
}

TEST_P(ChunkAmx, Bf16OutIsTheFloatOutRounded) {
  const Case c = chunk::for_this_run(GetParam());
  SCOPED_TRACE(seed_note(c.name));
  on_bf16_paths([&] {
    const bf16_inputs in = make_bf16_inputs(c);
    tensor<float> out = nan_out<float>(c), state = nan_state(c);
    chunk::run_forward(c, in.q, in.k, in.v, in.f.s0, out, state, 0);
    tensor<bf16> o16 = nan_out<bf16>(c);
    tensor<float> s = nan_state(c);
    chunk::run_forward(c, in.q, in.k, in.v, in.f.s0, o16, s, 0);
    const tensor<bf16> rounded = out.cast<bf16>();
    EXPECT_TRUE(bitwise_equal("out", o16, rounded));
    EXPECT_TRUE(bitwise_equal("final_state", state, s));
  });
}

TEST_P(ChunkAmx, CappedAtFp32IsTheFloatKernel) {
  const Case c = chunk::for_this_run(GetParam());
  SCOPED_TRACE(seed_note(c.name));
  const bf16_inputs in = make_bf16_inputs(c);
  chunk::outputs<float> f = chunk::make_outputs<float>(c);
  chunk::run_kernel(c, in.f, f);
  const path_cap cap(xattn::product_path::fp32);
  ASSERT_EQ(xattn::bf16_product_path(), xattn::product_path::fp32);
  for (auto compute : {xattn::compute::exact, xattn::compute::bf16}) {
    tensor<float> out = nan_out<float>(c), state = nan_state(c);
    chunk::run_forward(c, in.q, in.k, in.v, in.f.s0, out, state, 2, compute);
    EXPECT_TRUE(bitwise_equal("out (bf16 storage)", out, f.out));
    EXPECT_TRUE(bitwise_equal("final_state (bf16 storage)", state, f.state));
    tensor<float> o = nan_out<float>(c), s = nan_state(c);
    chunk::run_forward(c, in.f.q, in.f.k, in.f.v, in.f.s0, o, s, 2, compute);
    EXPECT_TRUE(bitwise_equal("out (float, compute option)", o, f.out));
    EXPECT_TRUE(bitwise_equal("final_state (float, compute option)", s, f.state));
  }
}

// d and e multiples of 32 and chunks of 32, 64 or 128 tokens (the AMX path's shapes); lengths not
// multiples of the chunk; one (batch, head) unit runs the windowed order, more the per-unit one.
const Case kCases[] = {
    Case("lightning_h4_d64_n300").batch(1).heads(4, 4).dim(64).len(300).block(64).big(),
    Case("lightning_gqa_d128_e64_n77_scale").batch(2).heads(4, 2).dim(128, 64).len(77).scale(0.125).block(32),
    Case("lightning_windowed_init_d64_e96_n333").batch(1).heads(1, 1).dim(64, 96).len(333).block(64).init().big(),
    Case("lightning_large_decay_bhsd_n130").heads(2, 1).dim(32).len(130).decays(decay::large).block(64).bhsd(),
    Case("lightning_mixed_decay_init_block128_n200").batch(1).heads(3, 3).dim(96, 32).len(200).decays(decay::mixed)
        .block(128).init(),
    Case("lightning_n1").heads(2, 2).dim(32).len(1),
    Case("lightning_h8_d128_n64").batch(1).heads(8, 8).dim(128).len(64),
    Case("linear_causal_gqa_d128_n257").linear().batch(1).heads(2, 1).dim(128).len(257).block(64).big(),
    Case("linear_causal_windowed_init_n190").linear().batch(1).heads(1, 1).dim(64).len(190).init(),
    Case("linear_noncausal_init_nq_ne_nk").linear(false).scale(0.2).len(45, 101).heads(2, 1).dim(64, 32).block(32)
        .init(),
};

INSTANTIATE_TEST_SUITE_P(Cases, ChunkAmx, ::testing::ValuesIn(kCases), chunk::case_name);

// A float out past kStreamOutBytes is streamed past the caches: one call over 8192 tokens equals two
// calls of 4096 (out small enough to be stored as usual) passing the state between them, bit for bit.
class ChunkAmxLarge : public ChunkAmx {};

TEST_F(ChunkAmxLarge, StreamedOutEqualsTwoSegments) {
  const index n = 8192, half = n / 2, heads = 8, d = 128;
  static_assert(std::size_t(n * heads * d) * sizeof(float) >= xattn::detail::kStreamOutBytes);
  const Case c = Case("large_streamed").batch(1).heads(heads, heads).dim(d).len(n);
  const bf16_inputs in = make_bf16_inputs(c);
  const std::vector<double> decay = xattn::lightning_slopes(heads);
  tensor<float> out = nan_out<float>(c), state(1, heads, d, d);
  xattn::lightning_attention(device(2), in.q, in.k, in.v, out, {.decay = decay, .final_state = state});

  auto first = [&](const tensor<bf16>& x, index t0) {
    return tensor<bf16>(x.slice(Eigen::array<index, 4>{0, t0, 0, 0}, Eigen::array<index, 4>{1, half, heads, d}));
  };
  tensor<float> o0(1, half, heads, d), o1(1, half, heads, d), s0(1, heads, d, d), s1(1, heads, d, d);
  xattn::lightning_attention(device(2), first(in.q, 0), first(in.k, 0), first(in.v, 0), o0,
                             {.decay = decay, .final_state = s0});
  xattn::lightning_attention(device(2), first(in.q, half), first(in.k, half), first(in.v, half), o1,
                             {.decay = decay, .initial_state = s0, .final_state = s1});
  const tensor<float> both = o0.concatenate(o1, 1);
  EXPECT_TRUE(bitwise_equal("out", out, both));
  EXPECT_TRUE(bitwise_equal("final_state", state, s1));
}

}  // namespace
}  // namespace xattn_test::chunk_amx
