// tests/test_backward_rules.cpp — the backward of softmax attention's restricted forms, on the same
// engine with their visibility rule: sliding_window_attention_backward (sinks, dilation, chunks),
// sparse_attention_backward (block layouts, shared and per head) and
// neighborhood_attention_2d_backward (images, dilation, causal axes). As test_backward.cpp: each
// fp64 reference against central finite differences of its family's fp64 forward reference; the
// fast backward against the reference by the accuracy rule, with a naive backward in the element
// type that applies the same rule, on 1 and 2 threads bitwise equal; properties (a window as wide as
// the sequences and a dense layout give softmax attention's gradients bit for bit); bad input.
#include "backward_test_util.hpp"

#include <xattn/neighborhood.hpp>
#include <xattn/reference/sliding_window.hpp>
#include <xattn/reference/sparse.hpp>
#include <xattn/sliding_window.hpp>
#include <xattn/sparse.hpp>

namespace xattn_test {
namespace {

enum class rule { window, sparse, image };

/// A case of one restricted form: the shapes and softmax options of a BCase (its causal and window
/// fields stay unset: the form's own options say those), plus the form's options.
struct RCase {
  std::string name;
  rule kind = rule::window;
  BCase c;
  xattn::sliding_window_options w{};  // window: every field but .softmax (the BCase's options)
  index block = 64;                   // sparse: layout block size, density of the random layout,
  double density = 0.5;               //         one layout per query head or shared
  bool per_head = false;
  index height = 1, width = 1;  // image: nq = nk = height · width
  xattn::neighborhood_2d_options n{};

  RCase(std::string nm, rule k, BCase bc) : name(std::move(nm)), kind(k), c(std::move(bc)) { c.name = name; }
  RCase& window(index l, index r) { w.window_left = l, w.window_right = r; return *this; }
  RCase& causal() { w.causal = true; return *this; }
  RCase& dilation(index d) { w.dilation = d; return *this; }
  RCase& sinks(index s) { w.sinks = s; return *this; }
  RCase& chunk(index ch) { w.chunk = ch; return *this; }
  RCase& layout(index bs, double dens, bool heads = false) { block = bs, density = dens, per_head = heads; return *this; }
  RCase& image(index h, index wd, index kh, index kw) {
    height = h, width = wd, n.kernel_h = kh, n.kernel_w = kw;
    c.len(h * wd);
    return *this;
  }
  RCase& image_dilation(index dh, index dw) { n.dilation_h = dh, n.dilation_w = dw; return *this; }
  RCase& image_causal(bool h, bool wd) { n.causal_h = h, n.causal_w = wd; return *this; }
};

void PrintTo(const RCase& c, std::ostream* os) { *os << c.name; }
std::string rcase_name(const ::testing::TestParamInfo<RCase>& info) { return info.param.name; }

/// One case made concrete: the problem, its options and layout, and the calls of the form.
template <class T>
struct form {
  const RCase& rc;
  problem<T> p;
  std::unique_ptr<option_data> od;
  xattn::sliding_window_options w;
  std::optional<xattn::block_layout> blocks;
  xattn::neighborhood_2d_options n;

  form(const RCase& c, std::mt19937_64& rng) : rc(c), p(make_problem<T>(c.c, rng)), od(make_options(c.c, rng)) {
    w = c.w;
    w.softmax = od->opt;
    n = c.n;
    n.scale = od->opt.scale;
    if (c.kind == rule::sparse) {
      const index qb = (c.c.nq_ + c.block - 1) / c.block, kb = (c.c.nk_ + c.block - 1) / c.block;
      const index heads = c.per_head ? c.c.hq_ : 1;
      std::bernoulli_distribution keep(c.density);
      std::unique_ptr<bool[]> mask(new bool[std::size_t(heads * qb * kb)]);
      for (index x = 0; x < heads * qb * kb; ++x) mask[x] = keep(rng);
      blocks = xattn::block_layout::from_mask(c.block, heads, qb, kb, std::span<const bool>(mask.get(), heads * qb * kb));
    }
  }
  const xattn::softmax_options& opt() const { return od->opt; }

  template <class X>
  static auto image_of(X& x, const RCase& c) {  // a rank-4 [b, h·w, heads, dim] tensor as the image
    using S = std::remove_const_t<std::remove_reference_t<decltype(*x.data())>>;
    return Eigen::TensorMap<tensor<S, 5>>(const_cast<S*>(x.data()), x.dimension(0), c.height, c.width, x.dimension(2),
                                           x.dimension(3));
  }

  /// The fast forward: out and lse in T, as a training step would have saved them.
  template <class U>
  saved<U> forward(const problem<U>& q, bool by_reference = false) const {
    const layout l = opt().layout;
    saved<U> s{make_tensor<U>(l, q.q.dimension(0), seq_of(q.q, l), heads_of(q.q, l), q.v.dimension(3)),
               tensor<U, 3>(q.q.dimension(0), heads_of(q.q, l), seq_of(q.q, l))};
    switch (rc.kind) {
      case rule::window: xattn::sliding_window_attention(q.q, q.k, q.v, s.out, s.lse, w); break;
      case rule::sparse:
        if constexpr (std::is_same_v<U, double>)
          if (by_reference) {
            xattn::reference::sparse_attention(q.q, q.k, q.v, s.out, s.lse, *blocks, opt());
            break;
          }
        xattn::sparse_attention(q.q, q.k, q.v, s.out, s.lse, *blocks, opt());
        break;
      case rule::image:
        xattn::neighborhood_attention_2d(image_of(q.q, rc), image_of(q.k, rc), image_of(q.v, rc), image_of(s.out, rc),
                                         s.lse, n);
        break;
    }
    return s;
  }

  /// The fast backward on `threads` threads (0: the calling thread).
  grads<T> backward(const saved<T>& f, int threads) const {
    grads<T> g = make_grads<T>(p);
    auto call = [&](auto&&... dev) {
      switch (rc.kind) {
        case rule::window:
          xattn::sliding_window_attention_backward(dev..., p.q, p.k, p.v, f.out, f.lse, p.dout, g.dq, g.dk, g.dv, w);
          break;
        case rule::sparse:
          xattn::sparse_attention_backward(dev..., p.q, p.k, p.v, f.out, f.lse, p.dout, g.dq, g.dk, g.dv, *blocks,
                                           opt());
          break;
        case rule::image:
          xattn::neighborhood_attention_2d_backward(dev..., image_of(p.q, rc), image_of(p.k, rc), image_of(p.v, rc),
                                                    image_of(f.out, rc), f.lse, image_of(p.dout, rc),
                                                    image_of(g.dq, rc), image_of(g.dk, rc), image_of(g.dv, rc), n);
          break;
      }
    };
    if (threads == 0) call();
    else call(device(threads));
    return g;
  }

  /// The fp64 reference backward on double copies (out and lse are validated, not read).
  grads<double> reference() const {
    const problem<double> d{cast_to<double>(p.q), cast_to<double>(p.k), cast_to<double>(p.v), cast_to<double>(p.dout)};
    // out and lse are only validated: any forward of the right shapes serves (the fast sparse
    // forward takes no layout blocks smaller than 64, which the small reference cases use)
    const saved<double> f = forward(d, rc.kind == rule::sparse);
    const tensor<double>& out = f.out;
    const tensor<double, 3>& lse = f.lse;
    grads<double> g = make_grads<double>(d);
    switch (rc.kind) {
      case rule::window:
        xattn::reference::sliding_window_attention_backward(d.q, d.k, d.v, out, lse, d.dout, g.dq, g.dk, g.dv, w);
        break;
      case rule::sparse:
        xattn::reference::sparse_attention_backward(d.q, d.k, d.v, out, lse, d.dout, g.dq, g.dk, g.dv, *blocks, opt());
        break;
      case rule::image:
        xattn::reference::neighborhood_attention_2d_backward(image_of(d.q, rc), image_of(d.k, rc), image_of(d.v, rc),
                                                             image_of(out, rc), lse, image_of(d.dout, rc),
                                                             image_of(g.dq, rc), image_of(g.dk, rc), image_of(g.dv, rc), n);
        break;
    }
    return g;
  }

  /// The fp64 forward reference of the form (for finite differences).
  void reference_forward(const tensor<double>& q, const tensor<double>& k, const tensor<double>& v,
                         tensor<double>& out) const {
    switch (rc.kind) {
      case rule::window: xattn::reference::sliding_window_attention(q, k, v, out, w); break;
      case rule::sparse: xattn::reference::sparse_attention(q, k, v, out, *blocks, opt()); break;
      case rule::image:
        xattn::reference::neighborhood_attention_2d(image_of(q, rc), image_of(k, rc), image_of(v, rc),
                                                    image_of(out, rc), n);
        break;
    }
  }

  /// The naive backward in T with the form's rule.
  grads<T> naive() const {
    const index nq = rc.c.nq_, nk = rc.c.nk_;
    switch (rc.kind) {
      case rule::window: {
        const auto spec = xattn::detail::window_spec_of(w, nq, nk);
        const auto& sq = rc.c.sq_;
        const auto& sk = rc.c.sk_;
        return naive_backward(p, opt(), [&](index b, index, index i, index j) {
          const index off = (sk.empty() ? nk : sk[b]) - (sq.empty() ? nq : sq[b]);
          return spec.visible(i + off, j);
        });
      }
      case rule::sparse:
        return naive_backward(p, opt(), [&](index, index h, index i, index j) {
          const auto row = blocks->row(h, i / rc.block);
          return std::binary_search(row.begin(), row.end(), int(j / rc.block));
        });
      case rule::image: {
        const auto spec = xattn::detail::make_neighborhood_spec("test", rc.height, rc.width, n);
        return naive_backward(p, xattn::softmax_options{.scale = n.scale},
                              [&](index, index, index i, index j) { return spec.visible(i, j); });
      }
    }
    return {};
  }
};

// ---------------------------------------------------------------------------------------------
// The references against central finite differences

class RulesReference : public ::testing::TestWithParam<RCase> {};

TEST_P(RulesReference, MatchesFiniteDifferences) {
  const RCase& c = GetParam();
  SCOPED_TRACE(seed_note(c.name));
  std::mt19937_64 rng(case_seed(c.name));
  form<double> f(c, rng);
  const grads<double> g = f.reference();
  const auto run = [&](const auto& q, const auto& k, const auto& v, auto& out) { f.reference_forward(q, k, v, out); };
  double gmax = 0;
  const double eq = fd_error(f.p, f.p.q, g.dq, f.opt().layout, gmax, run),
               ek = fd_error(f.p, f.p.k, g.dk, f.opt().layout, gmax, run),
               ev = fd_error(f.p, f.p.v, g.dv, f.opt().layout, gmax, run);
  const double tol = 1e-7 * (1 + gmax);
  EXPECT_LE(eq, tol) << "dq";
  EXPECT_LE(ek, tol) << "dk";
  EXPECT_LE(ev, tol) << "dv";
  EXPECT_GT(gmax, 0.01) << "the case should have gradients";
}

const std::vector<RCase> kReferenceCases = {
    RCase("window_l2", rule::window, BCase("").len(9)).window(2, 0),
    RCase("window_dilation2_sinks", rule::window, BCase("").len(10)).window(2, 1).dilation(2).sinks(2),
    RCase("window_chunk3_causal_cross", rule::window, BCase("").len(6, 9)).causal().chunk(3),
    RCase("window_varlen_softcap", rule::window, BCase("").batch(3).len(7).seqlens({7, 4, 1}, {7, 6, 2}).softcap(2))
        .window(3, -1).sinks(1),
    RCase("sparse_block2", rule::sparse, BCase("").len(8, 10)).layout(2, 0.5),
    RCase("sparse_block3_per_head_alibi", rule::sparse, BCase("").len(9).alibi().sinks()).layout(3, 0.6, true),
    RCase("image_4x5_k3", rule::image, BCase("").batch(1).heads(2, 1)).image(4, 5, 3, 3),
    RCase("image_6x5_k3_dilation2_causal", rule::image, BCase("").batch(1)).image(6, 5, 3, 1).image_dilation(2, 1)
        .image_causal(true, false),
};

INSTANTIATE_TEST_SUITE_P(Cases, RulesReference, ::testing::ValuesIn(kReferenceCases), rcase_name);

// ---------------------------------------------------------------------------------------------
// The fast backward against the reference

template <class T>
void check_form(const RCase& c) {
  SCOPED_TRACE(seed_note(c.name));
  std::mt19937_64 rng(case_seed(c.name));
  const form<T> f(c, rng);
  const saved<T> fwd = f.forward(f.p);
  const grads<double> ref = f.reference();
  const grads<T> naive = f.naive();
  const double eps = rule_eps<T>(naive_softmax<T>(f.p.q, f.p.k, f.p.v, f.opt()).max_abs_score);
  const grads<T> g = f.backward(fwd, 0);
  EXPECT_TRUE(within_rule("dq", g.dq, naive.dq, ref.dq, eps));
  EXPECT_TRUE(within_rule("dk", g.dk, naive.dk, ref.dk, eps));
  EXPECT_TRUE(within_rule("dv", g.dv, naive.dv, ref.dv, eps));
  for (const tensor<T>* t : {&g.dq, &g.dk, &g.dv})
    for (index x = 0; x < t->size(); ++x) ASSERT_FALSE(std::isnan(t->data()[x])) << "NaN at " << index_str(*t, x);
  const grads<T> t2 = f.backward(fwd, 2);
  EXPECT_TRUE(bitwise_equal("dq on 2 threads", g.dq, t2.dq));
  EXPECT_TRUE(bitwise_equal("dk on 2 threads", g.dk, t2.dk));
  EXPECT_TRUE(bitwise_equal("dv on 2 threads", g.dv, t2.dv));
}

class RulesAccuracy : public ::testing::TestWithParam<RCase> {};

TEST_P(RulesAccuracy, MatchesReference) {
  const RCase& c = GetParam();
  if (c.c.f64_) check_form<double>(c);
  else check_form<float>(c);
}

const std::vector<RCase> kAccuracyCases = {
    // windows: bounds, dilation, sinks, chunks, GQA, Nq != Nk, lengths, softcap
    RCase("window_l40_causal", rule::window, BCase("").len(300).dim(64)).window(40, -1).causal(),
    RCase("window_l16_r5_cross", rule::window, BCase("").len(257, 200).dim(40).batch(1)).window(16, 5),
    RCase("window_dilation3_sinks4", rule::window, BCase("").len(300).dim(64).heads(8, 2)).window(20, 0).dilation(3)
        .sinks(4),
    RCase("window_chunk100_causal", rule::window, BCase("").len(257).dim(64)).causal().chunk(100),
    RCase("window_sinks_only", rule::window, BCase("").len(200).dim(40)).window(0, 0).sinks(70),
    RCase("window_varlen_softcap_bhsd", rule::window,
          BCase("").batch(3).len(200, 230).dim(64, 24).seqlens({200, 60, 0}, {230, 100, 9}).softcap(10).bhsd())
        .window(50, 10),
    RCase("window_onepass_gqa_f64", rule::window, BCase("").f64().batch(2).heads(8, 4).len(150).dim(40))
        .window(30, 0).sinks(3).dilation(2),
    // block-sparse: block 64 and 128, shared and per head, with causal and GQA
    RCase("sparse_b64_half", rule::sparse, BCase("").len(300).dim(64)).layout(64, 0.5),
    RCase("sparse_b128_causal", rule::sparse, BCase("").len(300, 400).dim(64).causal()).layout(128, 0.6),
    RCase("sparse_b64_per_head_gqa", rule::sparse, BCase("").heads(8, 2).len(257).dim(40)).layout(64, 0.4, true),
    RCase("sparse_b64_sparse_mask_varlen", rule::sparse,
          BCase("").batch(3).len(200).dim(64).mask(true).seqlens({200, 70, 1}, {200, 150, 3}))
        .layout(64, 0.3),
    RCase("sparse_onepass_f64", rule::sparse, BCase("").f64().batch(2).heads(8, 4).len(200).dim(40)).layout(64, 0.5, true),
    // images: kernels, dilation, causal axes, GQA, narrow images
    RCase("image_16x16_k5", rule::image, BCase("").batch(1).dim(64)).image(16, 16, 5, 5),
    RCase("image_20x13_k7x3_gqa", rule::image, BCase("").heads(4, 2).dim(40)).image(20, 13, 7, 3),
    RCase("image_24x20_k5_dilation2", rule::image, BCase("").batch(1).dim(64)).image(24, 20, 5, 5).image_dilation(2, 2),
    RCase("image_12x30_k3_causal", rule::image, BCase("").batch(1).dim(32)).image(12, 30, 3, 5).image_causal(true, true),
    RCase("image_40x3_k3_narrow", rule::image, BCase("").batch(1).heads(2, 2).dim(40)).image(40, 3, 3, 3),
};

INSTANTIATE_TEST_SUITE_P(Cases, RulesAccuracy, ::testing::ValuesIn(kAccuracyCases), rcase_name);

// ---------------------------------------------------------------------------------------------
// Properties: the rules that let every pair through give softmax attention's backward, bit for bit

TEST(RulesProperties, WideWindowAndDenseLayoutEqualSoftmaxBackward) {
  for (const bool causal : {false, true}) {
    SCOPED_TRACE(causal ? "causal" : "dense");
    BCase c = BCase("wide_window").heads(4, 2).len(257, 300).dim(64);
    std::mt19937_64 rng(case_seed(c.name));
    const problem<float> p = make_problem<float>(c, rng);
    const xattn::softmax_options opt{.causal = causal};
    const saved<float> fwd = forward(p, opt);
    grads<float> dense = make_grads<float>(p), wide = make_grads<float>(p), all = make_grads<float>(p);
    xattn::softmax_attention_backward(p.q, p.k, p.v, fwd.out, fwd.lse, p.dout, dense.dq, dense.dk, dense.dv, opt);
    xattn::sliding_window_attention_backward(p.q, p.k, p.v, fwd.out, fwd.lse, p.dout, wide.dq, wide.dk, wide.dv,
                                             {.window_left = 100000, .causal = causal});
    const xattn::block_layout layout = xattn::block_layout::dense(257, 300, 64);
    xattn::sparse_attention_backward(p.q, p.k, p.v, fwd.out, fwd.lse, p.dout, all.dq, all.dk, all.dv, layout, opt);
    for (const auto* g : {&wide, &all}) {
      EXPECT_TRUE(bitwise_equal("dq", dense.dq, g->dq));
      EXPECT_TRUE(bitwise_equal("dk", dense.dk, g->dk));
      EXPECT_TRUE(bitwise_equal("dv", dense.dv, g->dv));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Bad input: an xattn::error naming the function and the argument, nothing written

TEST(RulesErrors, BadInputThrowsNamingTheArgument) {
  std::mt19937_64 rng(case_seed("rules_errors"));
  const BCase c = BCase("rules_errors").len(64, 64).dim(16);
  const problem<float> p = make_problem<float>(c, rng);
  const saved<float> fwd = forward(p, {});
  grads<float> g = make_grads<float>(p);
  const auto expect_error = [&](auto&& call, const std::string& fn, const std::string& needle) {
    g.dq.setConstant(7.f), g.dk.setConstant(7.f), g.dv.setConstant(7.f);
    try {
      call();
      ADD_FAILURE() << "no error; expected one mentioning '" << needle << "'";
    } catch (const xattn::error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(fn), std::string::npos) << e.what();
    }
    for (const tensor<float>* t : {&g.dq, &g.dk, &g.dv})
      for (index x = 0; x < t->size(); ++x) ASSERT_EQ(t->data()[x], 7.f) << "written before the error";
  };
  const std::string win = "xattn::sliding_window_attention_backward", sp = "xattn::sparse_attention_backward",
                    img = "xattn::neighborhood_attention_2d_backward";
  expect_error([&] {
    xattn::sliding_window_attention_backward(p.q, p.k, p.v, fwd.out, fwd.lse, p.dout, g.dq, g.dk, g.dv, {.dilation = 0});
  }, win, "dilation");
  expect_error([&] {
    xattn::sliding_window_attention_backward(p.q, p.k, p.v, fwd.out, fwd.lse, p.dout, g.dq, g.dk, g.dv,
                                             {.softmax = {.causal = true}});
  }, win, "softmax.causal");
  tensor<float> bad_dout(2, 64, 4, 15);
  expect_error([&] {
    xattn::sliding_window_attention_backward(p.q, p.k, p.v, fwd.out, fwd.lse, bad_dout, g.dq, g.dk, g.dv, {});
  }, win, "dout: shape");
  const xattn::block_layout small = xattn::block_layout::dense(64, 64, 32);
  expect_error([&] {
    xattn::sparse_attention_backward(p.q, p.k, p.v, fwd.out, fwd.lse, p.dout, g.dq, g.dk, g.dv, small);
  }, sp, "layout");
  const xattn::block_layout wrong_blocks = xattn::block_layout::dense(128, 64, 64);
  expect_error([&] {
    xattn::sparse_attention_backward(p.q, p.k, p.v, fwd.out, fwd.lse, p.dout, g.dq, g.dk, g.dv, wrong_blocks);
  }, sp, "layout");
  // an 8×8 image: a kernel wider than the image, and a gradient of the wrong image
  auto im = [](auto& x, index h, index w) {
    using S = std::remove_reference_t<decltype(*x.data())>;
    return Eigen::TensorMap<tensor<S, 5>>(x.data(), x.dimension(0), h, w, x.dimension(2), x.dimension(3));
  };
  tensor<float> q = p.q, k = p.k, v = p.v, out = fwd.out, dout = p.dout;
  expect_error([&] {
    xattn::neighborhood_attention_2d_backward(im(q, 8, 8), im(k, 8, 8), im(v, 8, 8), im(out, 8, 8), fwd.lse,
                                              im(dout, 8, 8), im(g.dq, 8, 8), im(g.dk, 8, 8), im(g.dv, 8, 8),
                                              {.kernel_h = 9, .kernel_w = 3});
  }, img, "kernel_h");
  expect_error([&] {
    xattn::neighborhood_attention_2d_backward(im(q, 8, 8), im(k, 8, 8), im(v, 8, 8), im(out, 8, 8), fwd.lse,
                                              im(dout, 8, 8), im(g.dq, 4, 16), im(g.dk, 8, 8), im(g.dv, 8, 8),
                                              {.kernel_h = 3, .kernel_w = 3});
  }, img, "dq");
}

}  // namespace
}  // namespace xattn_test
