// tests/test_util.hpp — what the xattn tests share: seeded random tensors (the seed is printed and
// XATTN_SEED replays it, as Eigen's test main.h does), tensors in either layout, a naive
// softmax attention computed in the element type itself, and flash-attention's accuracy rule:
//   error(kernel vs fp64 reference) <= 2 · error(naive in the same precision vs fp64 reference) + eps.
#pragma once

// The device overloads take an Eigen::ThreadPoolDevice, which Eigen only declares with this macro.
#ifndef EIGEN_USE_THREADS
#define EIGEN_USE_THREADS
#endif

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>
#include <unsupported/Eigen/CXX11/Tensor>
#include <xattn/reference.hpp>
#include <xattn/softmax.hpp>

namespace xattn_test {

using index = std::ptrdiff_t;
template <class T, int R = 4>
using tensor = Eigen::Tensor<T, R, Eigen::RowMajor>;

// ---------------------------------------------------------------------------------------------
// Seeds and environment

/// Seed of every random stream unless XATTN_SEED overrides it (decimal or 0x-hex).
inline constexpr std::uint64_t kDefaultSeed = 20240611;

inline std::uint64_t base_seed() {
  static const std::uint64_t seed = [] {
    const char* e = std::getenv("XATTN_SEED");
    return e && *e ? std::strtoull(e, nullptr, 0) : kDefaultSeed;
  }();
  return seed;
}

/// The random stream of one named case: the base seed mixed with the name (FNV-1a, then
/// splitmix64), so cases do not share values and adding a case does not change the others.
inline std::uint64_t case_seed(std::string_view name) {
  std::uint64_t h = 1469598103934665603ull;
  for (unsigned char ch : name) h = (h ^ ch) * 1099511628211ull;
  std::uint64_t z = h ^ base_seed();
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/// What a failure message says to replay a case: SCOPED_TRACE(seed_note(name)).
inline std::string seed_note(std::string_view name) {
  std::ostringstream s;
  s << "case " << name << ", seed " << case_seed(name) << " (replay: XATTN_SEED=" << base_seed() << ")";
  return s.str();
}

/// XATTN_TEST_QUICK is set (and not "0") in the sanitizer build: the largest cases shrink.
inline bool quick() {
  const char* e = std::getenv("XATTN_TEST_QUICK");
  return e && *e && std::string_view(e) != "0";
}

/// Prints the base seed once at the start of the run, as Eigen's tests do.
class seed_environment : public ::testing::Environment {
 public:
  void SetUp() override {
    std::printf("xattn tests: XATTN_SEED=%llu%s\n", static_cast<unsigned long long>(base_seed()),
                quick() ? " (XATTN_TEST_QUICK: large cases shrunk)" : "");
  }
};
inline ::testing::Environment* const kSeedEnvironment =
    ::testing::AddGlobalTestEnvironment(new seed_environment);

// ---------------------------------------------------------------------------------------------
// Tensors

enum class dist { normal, uniform };

/// Fills t with N(0, 1)·magnitude or U(−1, 1)·magnitude values from rng.
template <class X>
void fill_random(X& t, std::mt19937_64& rng, dist d = dist::normal, double magnitude = 1) {
  using T = typename X::Scalar;
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_real_distribution<double> uniform(-1.0, 1.0);
  for (index i = 0; i < t.size(); ++i)
    t.data()[i] = static_cast<T>(magnitude * (d == dist::normal ? normal(rng) : uniform(rng)));
}

/// A [batch, seq, heads, dim] tensor stored in the order of `l`.
template <class T>
tensor<T> make_tensor(xattn::layout l, index b, index s, index h, index d) {
  return l == xattn::layout::bshd ? tensor<T>(b, s, h, d) : tensor<T>(b, h, s, d);
}

/// Element (b, s, h, c) of a tensor stored in the order of `l`.
template <class X>
auto& at(X& t, xattn::layout l, index b, index s, index h, index c) {
  return l == xattn::layout::bshd ? t(b, s, h, c) : t(b, h, s, c);
}

template <class X>
index seq_of(const X& t, xattn::layout l) {
  return t.dimension(l == xattn::layout::bshd ? 1 : 2);
}
template <class X>
index heads_of(const X& t, xattn::layout l) {
  return t.dimension(l == xattn::layout::bshd ? 2 : 1);
}

/// A copy of t with the element type U.
template <class U, class X>
tensor<U, X::NumDimensions> cast_to(const X& t) {
  return t.template cast<U>();
}

// ---------------------------------------------------------------------------------------------
// Comparisons

/// |a − b| as double, where equal values (equal infinities too) differ by 0 and a NaN or an
/// infinity against anything else differs by +inf: a NaN never passes a comparison.
inline double abs_diff(double a, double b) {
  if (std::isnan(a) || std::isnan(b)) return std::numeric_limits<double>::infinity();
  if (a == b) return 0;
  if (!std::isfinite(a) || !std::isfinite(b)) return std::numeric_limits<double>::infinity();
  return std::abs(a - b);
}

struct diff_result {
  double max = 0;   // largest abs_diff
  index where = 0;  // flat index of it
};

/// The largest elementwise abs_diff of two tensors of the same size (any element types).
template <class A, class B>
diff_result max_abs_diff(const A& a, const B& b) {
  diff_result r;
  for (index i = 0; i < a.size(); ++i) {
    const double d = abs_diff(static_cast<double>(a.data()[i]), static_cast<double>(b.data()[i]));
    if (d > r.max || std::isnan(d)) r.max = d, r.where = i;
  }
  return r;
}

/// The multi-index of a flat index of a row-major tensor, e.g. "[1, 0, 3, 7]".
template <class X>
std::string index_str(const X& t, index flat) {
  std::vector<index> idx(X::NumDimensions);
  for (int r = X::NumDimensions - 1; r >= 0; --r) {
    idx[r] = flat % t.dimension(r);
    flat /= t.dimension(r);
  }
  std::ostringstream s;
  s << '[';
  for (std::size_t r = 0; r < idx.size(); ++r) s << (r ? ", " : "") << idx[r];
  s << ']';
  return s.str();
}

/// The eps of the accuracy rule: a floor (1e-5 for float, 1e-12 for double) plus a few ulps of the
/// largest score, the precision T gives the scores themselves. For float that is one ulp: it matters
/// only for logits near ±1e4, where the few rows with near-ties decide the maximum error of both
/// implementations and make their ratio a matter of luck. For double it is 64 ulps (√d-ish
/// roundings of the dot product and the log2 e fold): the double naive is the reference up to
/// summation order, so 2 × its error is about 0 and eps holds the kernel's whole error.
template <class T>
double rule_eps(double max_abs_score) {
  const double floor = std::is_same_v<T, float> ? 1e-5 : 1e-12;
  const double ulps = std::is_same_v<T, float> ? 1 : 64;
  return floor + ulps * std::numeric_limits<T>::epsilon() * max_abs_score;
}

/// flash-attention's accuracy rule on one output tensor.
template <class K, class N, class R>
::testing::AssertionResult within_rule(const char* what, const K& kernel, const N& naive, const R& ref,
                                       double eps) {
  const diff_result k = max_abs_diff(kernel, ref), n = max_abs_diff(naive, ref);
  if (k.max <= 2 * n.max + eps) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << what << ": kernel error " << k.max << " at " << index_str(ref, k.where) << " (kernel "
         << double(kernel.data()[k.where]) << ", reference " << double(ref.data()[k.where])
         << ") > 2 × naive error " << n.max << " + eps " << eps;
}

/// Bitwise equality of two tensors of the same type and size (thread-count invariance).
template <class A, class B>
::testing::AssertionResult bitwise_equal(const char* what, const A& a, const B& b) {
  if (a.size() != b.size()) return ::testing::AssertionFailure() << what << ": sizes differ";
  if (a.size() == 0) return ::testing::AssertionSuccess();  // empty tensors may have null data: no memcmp
  if (std::memcmp(a.data(), b.data(), sizeof(*a.data()) * static_cast<std::size_t>(a.size())) == 0)
    return ::testing::AssertionSuccess();
  for (index i = 0; i < a.size(); ++i)
    if (std::memcmp(a.data() + i, b.data() + i, sizeof(*a.data())) != 0)
      return ::testing::AssertionFailure() << what << ": first difference at " << index_str(a, i) << ": "
                                           << double(a.data()[i]) << " vs " << double(b.data()[i]);
  return ::testing::AssertionFailure() << what << ": differ";
}

/// Rows that the oracle fully masks (LSE −inf) must be exact zeros with LSE −inf in `out`/`lse`.
template <class O, class L, class RL>
::testing::AssertionResult masked_rows_are_zero(const O& out, const L& lse, const RL& ref_lse, xattn::layout l) {
  const index batch = lse.dimension(0), hq = lse.dimension(1), nq = lse.dimension(2), dv = out.dimension(3);
  for (index b = 0; b < batch; ++b)
    for (index h = 0; h < hq; ++h)
      for (index i = 0; i < nq; ++i) {
        if (ref_lse(b, h, i) != -std::numeric_limits<double>::infinity()) continue;
        if (!(std::isinf(lse(b, h, i)) && lse(b, h, i) < 0))
          return ::testing::AssertionFailure() << "lse[" << b << ", " << h << ", " << i << "] = " << lse(b, h, i)
                                               << " for a fully masked row, expected -inf";
        for (index e = 0; e < dv; ++e)
          if (at(out, l, b, i, h, e) != 0)
            return ::testing::AssertionFailure() << "out (b " << b << ", row " << i << ", head " << h << ", "
                                                 << e << ") = " << at(out, l, b, i, h, e)
                                                 << " in a fully masked row, expected 0";
      }
  return ::testing::AssertionSuccess();
}

// ---------------------------------------------------------------------------------------------
// Devices

/// An Eigen::ThreadPoolDevice over a pool of n threads, made once per n and kept for the run.
inline Eigen::ThreadPoolDevice& device(int n) {
  struct pool_device {
    Eigen::ThreadPool pool;
    Eigen::ThreadPoolDevice dev;
    explicit pool_device(int n) : pool(n), dev(&pool, n) {}
  };
  static std::unique_ptr<pool_device> devices[9];
  static std::mutex m;
  std::lock_guard<std::mutex> lock(m);
  if (!devices[n]) devices[n] = std::make_unique<pool_device>(n);
  return devices[n]->dev;
}

// ---------------------------------------------------------------------------------------------
// The naive implementation and the oracle

template <class T>
struct attention_result {
  tensor<T> out;
  tensor<T, 3> lse;
  double max_abs_score = 0;  // largest |scale·q·k| (before softcap), for rule_eps
};

/// Element strides of the batch, seq and head axes of a tensor stored in the order of `l`.
struct strides {
  index b, s, h;
};
template <class X>
strides strides_of(const X& t, xattn::layout l) {
  const index d = t.dimension(3), sh = seq_of(t, l) * d, hd = heads_of(t, l) * d;
  return l == xattn::layout::bshd ? strides{seq_of(t, l) * hd, hd, d} : strides{heads_of(t, l) * sh, d, sh};
}

/// softmax(scale·QKᵀ + bias + mask)·V computed straightforwardly in T: the scores of each query
/// row materialised in T, the softmax in T, P·V in T. Applies every option of
/// xattn::softmax_options in the order the options header documents, written from that header
/// rather than from the reference, so it also checks the reference's reading of the options.
template <class T, class Q, class K, class V>
attention_result<T> naive_softmax(const Q& q, const K& k, const V& v, const xattn::softmax_options& opt) {
  const xattn::layout l = opt.layout;
  const index batch = q.dimension(0), nq_all = seq_of(q, l), nk_all = seq_of(k, l);
  const index hq = heads_of(q, l), hkv = heads_of(k, l), d = q.dimension(3), dv = v.dimension(3);
  const index group = hq / hkv;
  const T scale = static_cast<T>(opt.scale ? *opt.scale : 1.0 / std::sqrt(double(d)));
  const T cap = static_cast<T>(opt.softcap);
  const index wl = opt.window_left, wr = opt.causal ? 0 : opt.window_right;
  const T ninf = -std::numeric_limits<T>::infinity();

  attention_result<T> r{make_tensor<T>(l, batch, nq_all, hq, dv), tensor<T, 3>(batch, hq, nq_all), 0};
  const strides qs = strides_of(q, l), ks = strides_of(k, l), vs = strides_of(v, l), os = strides_of(r.out, l);
  std::vector<T> s(static_cast<std::size_t>(nk_all)), acc(static_cast<std::size_t>(dv));
  for (index b = 0; b < batch; ++b) {
    const index nq = opt.seqlens_q.empty() ? nq_all : opt.seqlens_q[b];
    const index nk = opt.seqlens_k.empty() ? nk_all : opt.seqlens_k[b];  // keys past nk are never read
    for (index h = 0; h < hq; ++h) {
      const index hk = h / group;
      for (index i = 0; i < nq_all; ++i) {
        T* out = r.out.data() + b * os.b + i * os.s + h * os.h;
        T m = opt.sink_logits.empty() ? ninf : T(opt.sink_logits[h]);
        if (i >= nq) m = ninf;  // padded query row: zeros and LSE −inf, sink or not
        const index diag = i + nk - nq;  // bottom-right aligned diagonal of row i
        const T* qi = q.data() + b * qs.b + i * qs.s + h * qs.h;
        for (index j = 0; j < nk && i < nq; ++j) {
          const T* kj = k.data() + b * ks.b + j * ks.s + hk * ks.h;
          T x = 0;
          for (index c = 0; c < d; ++c) x += qi[c] * kj[c];
          x *= scale;
          r.max_abs_score = std::max(r.max_abs_score, double(std::abs(x)));
          if (cap > 0) x = cap * std::tanh(x / cap);
          if (!opt.alibi_slopes.empty()) x -= T(opt.alibi_slopes[h]) * T(std::abs(diag - j));
          if (opt.bias) {
            const auto& bd = opt.bias.dims;
            x += T(opt.bias.data[(((bd[0] == 1 ? 0 : b) * bd[1] + (bd[1] == 1 ? 0 : h)) * nq_all + i) * nk_all + j]);
          }
          bool visible = (wr < 0 || j <= diag + wr) && (wl < 0 || j >= diag - wl);
          if (opt.mask) {
            const auto& md = opt.mask.dims;
            visible = visible &&
                      opt.mask.data[(((md[0] == 1 ? 0 : b) * md[1] + (md[1] == 1 ? 0 : h)) * nq_all + i) * nk_all + j];
          }
          s[j] = visible ? x : ninf;
          m = std::max(m, s[j]);
        }
        if (m == ninf) {  // padded, or fully masked without a sink
          std::fill(out, out + dv, T(0));
          r.lse(b, h, i) = ninf;
          continue;
        }
        T sum = opt.sink_logits.empty() ? T(0) : std::exp(T(opt.sink_logits[h]) - m);
        std::fill(acc.begin(), acc.end(), T(0));
        for (index j = 0; j < nk; ++j) {
          sum += s[j] = std::exp(s[j] - m);
          const T* vj = v.data() + b * vs.b + j * vs.s + hk * vs.h;
          for (index e = 0; e < dv; ++e) acc[e] += s[j] * vj[e];
        }
        for (index e = 0; e < dv; ++e) out[e] = acc[e] / sum;
        r.lse(b, h, i) = m + std::log(sum);
      }
    }
  }
  return r;
}

/// The fp64 oracle: xattn::reference::softmax_attention on double copies of q, k and v, so that
/// even the final rounding to float is left out of it.
template <class Q, class K, class V>
attention_result<double> oracle(const Q& q, const K& k, const V& v, const xattn::softmax_options& opt) {
  const tensor<double> qd = cast_to<double>(q), kd = cast_to<double>(k), vd = cast_to<double>(v);
  const xattn::layout l = opt.layout;
  attention_result<double> r{make_tensor<double>(l, q.dimension(0), seq_of(q, l), heads_of(q, l), v.dimension(3)),
                             tensor<double, 3>(q.dimension(0), heads_of(q, l), seq_of(q, l)), 0};
  xattn::reference::softmax_attention(qd, kd, vd, r.out, r.lse, opt);
  return r;
}

}  // namespace xattn_test
