// tests/chunk_backward_test_util.hpp — what the backward tests of the chunk families share
// (test_chunk_backward.cpp for lightning and the identity map, test_linear_backward_maps.cpp for
// every built-in map and the normaliser): one backward case, its random inputs and NaN-filled
// gradients, either family's backward called with the case's options (fp64 reference or kernel),
// and the checks both files run: the reference against central differences, the kernel against
// the reference by the accuracy rule on its SIMD and scalar paths, and bit for bit across threads.
#pragma once

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <xattn/lightning_backward.hpp>
#include <xattn/linear_backward.hpp>
#include <xattn/reference/lightning_backward.hpp>

#include "chunk_test_util.hpp"

namespace xattn_test::chunk {

/// One backward case: the forward's case and which state gradients the loss involves.
struct BwCase {
  Case fwd;
  bool dfinal = true;  // the loss depends on the final state: dfinal_state is given
  bool dinit = true;   // dinitial_state is asked for
  bool ddecay = false; // lightning's ddecay is asked for
};

inline void PrintTo(const BwCase& c, std::ostream* os) { *os << c.fwd.name; }
inline std::string bw_name(const ::testing::TestParamInfo<BwCase>& info) { return info.param.fwd.name; }

// States are [b, hq, D', e + normalize]: [b, hq, d, e] for lightning and the identity map without
// normaliser.
template <class T>
struct bw_inputs {
  inputs<T> in;    // q, k, v and the initial state
  tensor<T> dout;  // ∂L/∂out, shaped as out
  tensor<T> dsf;   // ∂L/∂final_state (empty unless dfinal)
};

template <class T>
struct bw_grads {
  tensor<T> dq, dk, dv, ds0;  // ds0: ∂L/∂initial_state
  tensor<double, 1> dd;       // ∂L/∂decay [hq], double for every T (empty unless ddecay)
};

/// The forward's inputs drawn by `make`, then ∂L/∂out and (with dfinal) ∂L/∂final_state from the
/// same rng.
template <class T>
bw_inputs<T> make_bw_inputs(const BwCase& c, std::mt19937_64& rng,
                            inputs<T> (*make)(const Case&, std::mt19937_64&) = make_inputs<T>) {
  const Case& f = c.fwd;
  bw_inputs<T> x{make(f, rng), make_tensor<T>(f.lay_, f.b_, f.nq_, f.hq_, f.e()), tensor<T>()};
  fill_random(x.dout, rng);
  if (c.dfinal) {
    x.dsf = tensor<T>(f.b_, f.hq_, f.df(), f.cols());
    fill_random(x.dsf, rng);
  }
  return x;
}

/// Gradient tensors filled with NaN, so that an element left unwritten fails every comparison.
template <class T>
bw_grads<T> make_grads(const BwCase& c) {
  const Case& f = c.fwd;
  bw_grads<T> g{make_tensor<T>(f.lay_, f.b_, f.nq_, f.hq_, f.d_), make_tensor<T>(f.lay_, f.b_, f.nk_, f.hkv_, f.d_),
                make_tensor<T>(f.lay_, f.b_, f.nk_, f.hkv_, f.e()), tensor<T>(f.b_, f.hq_, f.df(), f.cols()),
                tensor<double, 1>()};
  for (tensor<T>* t : {&g.dq, &g.dk, &g.dv, &g.ds0}) t->setConstant(static_cast<T>(kNaN));
  if (c.ddecay) {
    g.dd = tensor<double, 1>(f.hq_);
    g.dd.setConstant(kNaN);
  }
  return g;
}

/// call(opt, q, k, v, dout, dq, dk, dv) with `opt` given the case's state tensors.
template <class T, class Options, class F>
void call_backward(const BwCase& c, const bw_inputs<T>& x, bw_grads<T>& g, Options opt, const F& call) {
  if (c.fwd.init_) opt.forward.initial_state = x.in.s0;
  if (c.dfinal) opt.dfinal_state = x.dsf;
  if (c.dinit) opt.dinitial_state = g.ds0;
  if constexpr (requires { opt.ddecay; })
    if (c.ddecay) opt.ddecay = std::span<double>(g.dd.data(), std::size_t(g.dd.size()));
  call(opt, x.in.q, x.in.k, x.in.v, x.dout, g.dq, g.dk, g.dv);
}

/// call(opt, q, k, v, dout, dq, dk, dv) with the case's linear_backward_options, for calls that only
/// take linear attention's (a linear case's).
template <class T, class F>
void run_linear_backward(const BwCase& c, const bw_inputs<T>& x, bw_grads<T>& g, const F& call) {
  option_data od;
  od.map = c.fwd.feature_map();
  call_backward(c, x, g, xattn::linear_backward_options{.forward = linear_opts(c.fwd, od)}, call);
}

/// call(opt, q, k, v, dout, dq, dk, dv) with the backward options of the case's family.
template <class T, class F>
void run_backward(const BwCase& c, const bw_inputs<T>& x, bw_grads<T>& g, const F& call) {
  if (c.fwd.linear_) return run_linear_backward(c, x, g, call);
  option_data od;
  od.decay = decays_of(c.fwd);
  call_backward(c, x, g, xattn::lightning_backward_options{.forward = lightning_opts(c.fwd, od)}, call);
}

// Each family's functions, chosen by the options' type.
template <class... A>
void reference_backward(const xattn::lightning_backward_options& opt, A&&... a) {
  xattn::reference::lightning_attention_backward(a..., opt);
}
template <class... A>
void reference_backward(const xattn::linear_backward_options& opt, A&&... a) {
  xattn::reference::linear_attention_backward(a..., opt);
}
template <class Arch, class... A>
void fast_backward(int threads, const xattn::lightning_backward_options& opt, A&&... a) {
  if (threads) xattn::lightning_attention_backward<Arch>(device(threads), a..., opt);
  else xattn::lightning_attention_backward<Arch>(a..., opt);
}
template <class Arch, class... A>
void fast_backward(int threads, const xattn::linear_backward_options& opt, A&&... a) {
  if (threads) xattn::linear_attention_backward<Arch>(device(threads), a..., opt);
  else xattn::linear_attention_backward<Arch>(a..., opt);
}

template <class T>
bw_inputs<double> to_double(const bw_inputs<T>& x) {
  return {{cast_to<double>(x.in.q), cast_to<double>(x.in.k), cast_to<double>(x.in.v), cast_to<double>(x.in.s0)},
          cast_to<double>(x.dout),
          cast_to<double>(x.dsf)};
}

/// The fp64 reference's gradients on double copies of the inputs.
template <class T>
bw_grads<double> reference_grads(const BwCase& c, const bw_inputs<T>& x) {
  bw_grads<double> g = make_grads<double>(c);
  run_backward(c, to_double(x), g, [](const auto& opt, auto&&... a) { reference_backward(opt, a...); });
  return g;
}

/// The kernel's gradients: on the calling thread (threads 0) or a pool, with the kernels of Arch.
template <class Arch = xattn::simd::default_arch, class T>
bw_grads<T> kernel_grads(const BwCase& c, const bw_inputs<T>& x, int threads = 0) {
  bw_grads<T> g = make_grads<T>(c);
  run_backward(c, x, g, [&](const auto& opt, auto&&... a) { fast_backward<Arch>(threads, opt, a...); });
  return g;
}

using grad_member = tensor<double> bw_grads<double>::*;

/// The gradient tensors a case compares: dq, dk, dv, and dinitial_state when it asks for it.
inline std::vector<std::pair<const char*, grad_member>> compared(const BwCase& c) {
  std::vector<std::pair<const char*, grad_member>> all = {
      {"dq", &bw_grads<double>::dq}, {"dk", &bw_grads<double>::dk}, {"dv", &bw_grads<double>::dv}};
  if (c.dinit) all.push_back({"dinitial_state", &bw_grads<double>::ds0});
  return all;
}

/// The member of bw_grads<T> that `m` names in bw_grads<double>.
template <class T>
const tensor<T>& member(const bw_grads<T>& g, grad_member m) {
  if (m == &bw_grads<double>::dq) return g.dq;
  if (m == &bw_grads<double>::dk) return g.dk;
  if (m == &bw_grads<double>::dv) return g.dv;
  return g.ds0;
}

inline double max_abs(const tensor<double>& t) {
  double m = 0;
  for (index i = 0; i < t.size(); ++i) m = std::max(m, std::abs(t.data()[i]));
  return m;
}

/// The compared gradients of `a` and `b` are the same bits; `label` follows each gradient's name.
template <class T>
void expect_bitwise_equal(const BwCase& c, const bw_grads<T>& a, const bw_grads<T>& b, const std::string& label = "") {
  for (const auto& [name, m] : compared(c))
    EXPECT_TRUE(bitwise_equal((std::string(name) + label).c_str(), member(a, m), member(b, m)));
}

// ---------------------------------------------------------------------------------------------
// The reference against central differences of the forward reference

/// L = Σ dout ∘ out + Σ dfinal_state ∘ final_state of the fp64 forward reference.
inline double loss(const Case& c, const inputs<double>& in, const bw_inputs<double>& x) {
  const outputs<double> o = oracle(c, in);
  double l = 0;
  for (index i = 0; i < o.out.size(); ++i) l += x.dout.data()[i] * o.out.data()[i];
  for (index i = 0; i < x.dsf.size(); ++i) l += x.dsf.data()[i] * o.state.data()[i];
  return l;
}

/// Every element of the reference's gradients `g` (dinitial_state when the case asks for it) against
/// the central difference of the loss with step `step`, within tolerance·(1 + the largest |element|
/// of the same gradient in `scales`). Stops at the first element outside.
inline void expect_central_differences(const BwCase& c, const bw_inputs<double>& x, const bw_grads<double>& g,
                                       const bw_grads<double>& scales, double step, double tolerance) {
  struct wrt {
    const char* name;
    tensor<double> inputs<double>::*input;
    grad_member grad;
  };
  std::vector<wrt> all = {{"dq", &inputs<double>::q, &bw_grads<double>::dq},
                          {"dk", &inputs<double>::k, &bw_grads<double>::dk},
                          {"dv", &inputs<double>::v, &bw_grads<double>::dv}};
  if (c.dinit) all.push_back({"dinitial_state", &inputs<double>::s0, &bw_grads<double>::ds0});
  Case with_init = c.fwd;  // the state's gradient is taken at S0 = 0 when the case has none
  with_init.init_ = true;
  for (const auto& [name, input, grad] : all) {
    inputs<double> in = x.in;
    tensor<double>& t = in.*input;
    if (t.size() == 0) {
      t = tensor<double>(c.fwd.b_, c.fwd.hq_, c.fwd.df(), c.fwd.cols());
      t.setZero();
    }
    const tensor<double>& gt = g.*grad;
    const double tol = tolerance * (1 + max_abs(scales.*grad));
    for (index i = 0; i < t.size(); ++i) {
      const double x0 = t.data()[i];
      t.data()[i] = x0 + step;
      const double lp = loss(with_init, in, x);
      t.data()[i] = x0 - step;
      const double lm = loss(with_init, in, x);
      t.data()[i] = x0;
      const double fd = (lp - lm) / (2 * step);
      ASSERT_LE(abs_diff(fd, gt.data()[i]), tol)
          << name << " at " << index_str(t, i) << ": reference " << gt.data()[i] << ", differences " << fd;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The kernel against the reference, by the accuracy rule

/// The rule on each compared gradient of `g`, with eps[i] for compared(c)[i]; a gradient not asked
/// for stays unwritten.
template <class T>
void expect_within_rule(const std::string& label, const BwCase& c, const bw_grads<T>& g, const bw_grads<T>& naive,
                        const bw_grads<double>& ref, const std::vector<double>& eps) {
  const auto all = compared(c);
  for (std::size_t i = 0; i < all.size(); ++i) {
    const std::string what = std::string(all[i].first) + label;
    EXPECT_TRUE(within_rule(what.c_str(), member(g, all[i].second), member(naive, all[i].second), ref.*all[i].second,
                            eps[i]));
  }
  if (!c.dinit) {
    EXPECT_TRUE(std::all_of(g.ds0.data(), g.ds0.data() + g.ds0.size(), [](T v) { return std::isnan(v); }))
        << "a state gradient was written though no dinitial_state was asked for";
  }
}

/// The kernel on inputs `x` against the reference by the rule, on its SIMD and scalar paths, and the
/// same bits on two threads. `naive` is the naive implementation's gradients; `mag` the scale of each
/// gradient's rounding (eps is sum_eps of its largest |element|).
template <class T>
void expect_backward_within_rule(const BwCase& c, const bw_inputs<T>& x, const bw_grads<T>& naive,
                                 const bw_grads<double>& mag) {
  const bw_grads<double> ref = reference_grads(c, x);
  std::vector<double> eps;
  for (const auto& [name, m] : compared(c)) {
    eps.push_back(sum_eps<T>(max_abs(mag.*m)));
    // the naive implementation must itself be close, or the rule proves nothing
    EXPECT_LE(max_abs_diff(member(naive, m), ref.*m).max, 1e3 * eps.back())
        << "naive " << name << " disagrees with the reference";
  }
  const bw_grads<T> g = kernel_grads(c, x);
  expect_within_rule("", c, g, naive, ref, eps);
  expect_within_rule(" (scalar path)", c, kernel_grads<xattn::simd::scalar>(c, x), naive, ref, eps);
  expect_bitwise_equal(c, g, kernel_grads(c, x, 2), " on 2 threads");
}

// ---------------------------------------------------------------------------------------------
// Thread invariance

/// Serial, 1, 2 and 3 threads give the same bits.
template <class T>
void expect_same_bits_on_any_thread_count(const BwCase& c, const bw_inputs<T>& x) {
  const bw_grads<T> serial = kernel_grads(c, x);
  for (int threads : {1, 2, 3}) {
    SCOPED_TRACE("threads " + std::to_string(threads));
    expect_bitwise_equal(c, serial, kernel_grads(c, x, threads));
  }
}

}  // namespace xattn_test::chunk
