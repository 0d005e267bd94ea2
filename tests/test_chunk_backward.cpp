// tests/test_chunk_backward.cpp — the backward pass of lightning attention: the fp64 reference
// against central differences of the fp64 forward reference (the loss is linear in each of q, k,
// v and the initial state, so the differences are exact up to rounding), and the fast kernel
// against the reference by flash-attention's accuracy rule (test_util.hpp), bit for bit across
// thread counts, and bad input.
#include <xattn/reference/lightning_backward.hpp>

#include "chunk_test_util.hpp"

namespace xattn_test {
namespace {

using namespace chunk;
using D = chunk::decay;

/// One backward case: the forward's case and which state gradients the loss involves.
struct BwCase {
  Case fwd;
  bool dfinal = false;  // the loss depends on the final state: dfinal_state is given
  bool dinit = true;    // dinitial_state is asked for
};

inline void PrintTo(const BwCase& c, std::ostream* os) { *os << c.fwd.name; }
inline std::string bw_name(const ::testing::TestParamInfo<BwCase>& info) { return info.param.fwd.name; }

template <class T>
struct bw_inputs {
  inputs<T> in;    // q, k, v and the initial state
  tensor<T> dout;  // ∂L/∂out, shaped as out
  tensor<T> dsf;   // ∂L/∂final_state [b, hq, d, e] (empty unless dfinal)
};

template <class T>
struct bw_grads {
  tensor<T> dq, dk, dv, ds0;  // ds0: ∂L/∂initial_state [b, hq, d, e]
};

template <class T>
bw_inputs<T> make_bw_inputs(const BwCase& c, std::mt19937_64& rng) {
  const Case& f = c.fwd;
  bw_inputs<T> x{make_inputs<T>(f, rng), make_tensor<T>(f.lay_, f.b_, f.nq_, f.hq_, f.e()), tensor<T>()};
  fill_random(x.dout, rng);
  if (c.dfinal) {
    x.dsf = tensor<T>(f.b_, f.hq_, f.d_, f.e());
    fill_random(x.dsf, rng);
  }
  return x;
}

/// Gradient tensors filled with NaN, so that an element left unwritten fails every comparison.
template <class T>
bw_grads<T> make_grads(const BwCase& c) {
  const Case& f = c.fwd;
  bw_grads<T> g{make_tensor<T>(f.lay_, f.b_, f.nq_, f.hq_, f.d_), make_tensor<T>(f.lay_, f.b_, f.nk_, f.hkv_, f.d_),
                make_tensor<T>(f.lay_, f.b_, f.nk_, f.hkv_, f.e()), tensor<T>(f.b_, f.hq_, f.d_, f.e())};
  for (tensor<T>* t : {&g.dq, &g.dk, &g.dv, &g.ds0}) t->setConstant(static_cast<T>(kNaN));
  return g;
}

/// call(q, k, v, dout, dq, dk, dv, opt) with the backward options of the case.
template <class T, class F>
void run_backward(const BwCase& c, const bw_inputs<T>& x, bw_grads<T>& g, const F& call) {
  option_data od;
  od.decay = decays_of(c.fwd);
  xattn::lightning_backward_options opt{.forward = lightning_opts(c.fwd, od)};
  if (c.fwd.init_) opt.forward.initial_state = x.in.s0;
  if (c.dfinal) opt.dfinal_state = x.dsf;
  if (c.dinit) opt.dinitial_state = g.ds0;
  call(x.in.q, x.in.k, x.in.v, x.dout, g.dq, g.dk, g.dv, opt);
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
  run_backward(c, to_double(x), g, [](auto&&... a) { xattn::reference::lightning_attention_backward(a...); });
  return g;
}

/// The reference's loops with every sum in T: the naive implementation of the accuracy rule.
template <class T>
bw_grads<T> naive_grads(const BwCase& c, const bw_inputs<T>& x) {
  bw_grads<T> g = make_grads<T>(c);
  run_backward(c, x, g, [](const auto& q, const auto& k, const auto& v, const auto& dout, auto& dq, auto& dk, auto& dv,
                           const auto& opt) {
    xattn::reference::detail::chunk_attention_backward<T>(
        xattn::detail::make_lightning_backward_problem("naive", q, k, v, dout, dq, dk, dv, opt));
  });
  return g;
}

/// The scale of each gradient's rounding: its largest sum of |terms|, which is the reference run on
/// the absolute values of every input (all its coefficients, σ·λ^m, are positive).
template <class T>
bw_grads<double> magnitudes_of(const BwCase& c, const bw_inputs<T>& x) {
  bw_inputs<double> a = to_double(x);
  for (tensor<double>* t : {&a.in.q, &a.in.k, &a.in.v, &a.in.s0, &a.dout, &a.dsf}) *t = t->abs();
  bw_grads<double> g = make_grads<double>(c);
  run_backward(c, a, g, [](auto&&... a) { xattn::reference::lightning_attention_backward(a...); });
  return g;
}

double max_of(const tensor<double>& t) {
  double m = 0;
  for (index i = 0; i < t.size(); ++i) m = std::max(m, t.data()[i]);
  return m;
}

// ---------------------------------------------------------------------------------------------
// The reference against central differences of the forward reference

/// L = Σ dout ∘ out + Σ dfinal_state ∘ final_state of the fp64 forward reference.
double loss(const BwCase& c, const inputs<double>& in, const bw_inputs<double>& x) {
  const outputs<double> o = oracle(c.fwd, in);
  double l = 0;
  for (index i = 0; i < o.out.size(); ++i) l += x.dout.data()[i] * o.out.data()[i];
  if (c.dfinal)
    for (index i = 0; i < o.state.size(); ++i) l += x.dsf.data()[i] * o.state.data()[i];
  return l;
}

/// The step of the differences: L is linear in each input, so a large step costs no truncation
/// error and keeps the rounding error (ε·|L|/h) small.
constexpr double kStep = 1e-2;
/// Allowed |difference − gradient|, relative to 1 + the gradient's sum of |terms|.
constexpr double kFdTolerance = 1e-9;

class ReferenceGradients : public ::testing::TestWithParam<BwCase> {};

TEST_P(ReferenceGradients, MatchCentralDifferences) {
  const BwCase& c = GetParam();
  SCOPED_TRACE(seed_note(c.fwd.name));
  std::mt19937_64 rng(case_seed(c.fwd.name));
  const bw_inputs<double> x = make_bw_inputs<double>(c, rng);
  const bw_grads<double> g = reference_grads(c, x), mag = magnitudes_of(c, x);
  struct wrt {
    const char* name;
    tensor<double> inputs<double>::*input;
    const tensor<double>* grad;
    double scale;
  };
  std::vector<wrt> all = {{"dq", &inputs<double>::q, &g.dq, max_of(mag.dq)},
                          {"dk", &inputs<double>::k, &g.dk, max_of(mag.dk)},
                          {"dv", &inputs<double>::v, &g.dv, max_of(mag.dv)}};
  if (c.dinit) all.push_back({"dinitial_state", &inputs<double>::s0, &g.ds0, max_of(mag.ds0)});
  for (const wrt& w : all) {
    inputs<double> in = x.in;
    tensor<double>& t = in.*w.input;
    if (t.size() == 0) {  // no initial state given: its gradient is the same at S0 = 0
      t = tensor<double>(c.fwd.b_, c.fwd.hq_, c.fwd.d_, c.fwd.e());
      t.setZero();
    }
    Case with_init = c.fwd;
    with_init.init_ = true;
    const BwCase cw{with_init, c.dfinal, c.dinit};
    for (index i = 0; i < t.size(); ++i) {
      const double x0 = t.data()[i];
      t.data()[i] = x0 + kStep;
      const double lp = loss(cw, in, x);
      t.data()[i] = x0 - kStep;
      const double lm = loss(cw, in, x);
      t.data()[i] = x0;
      const double fd = (lp - lm) / (2 * kStep);
      ASSERT_LE(abs_diff(fd, w.grad->data()[i]), kFdTolerance * (1 + w.scale))
          << w.name << " at " << index_str(t, i) << ": reference " << w.grad->data()[i] << ", differences " << fd;
    }
  }
}

const std::vector<BwCase> kReferenceCases = {
    {Case("fd_len1").len(1).dim(3, 5)},
    {Case("fd_len5_gqa").len(5).heads(4, 2).dim(3, 5)},
    {Case("fd_len9_mqa_init").len(9).heads(2, 1).dim(4, 2).init(), true},
    {Case("fd_len7_dfinal_bhsd").len(7).dim(3, 4).bhsd().scale(0.7), true},
    {Case("fd_len8_large_decay_init").len(8).heads(2, 2).dim(2, 3).decays(D::large).init(), true},
    {Case("fd_len6_no_decay").len(6).heads(2, 1).dim(3, 3).decays(D::none).init(), true},
};

INSTANTIATE_TEST_SUITE_P(Cases, ReferenceGradients, ::testing::ValuesIn(kReferenceCases), bw_name);

}  // namespace
}  // namespace xattn_test
