// tests/test_core.cpp — the small core pieces every engine stands on: the vectorised exp2, the
// parallel loop over an Eigen::ThreadPoolDevice, the per-thread workspace.
#include "test_util.hpp"

#include <atomic>
#include <set>
#include <thread>

#include <xattn/core/parallel.hpp>
#include <xattn/core/simd.hpp>
#include <xattn/core/workspace.hpp>

namespace xattn_test {
namespace {

namespace simd = xattn::simd;

// ---------------------------------------------------------------------------------------------
// exp2

/// exp2 of the arch's vector type, lane by lane over `xs`.
template <class T, class Arch>
std::vector<T> exp2_of(const std::vector<T>& xs) {
  using V = simd::vec_t<T, Arch>;
  constexpr std::size_t n = simd::lanes_v<T, Arch>;
  std::vector<T> in(xs), out(xs.size() + n);
  in.resize((xs.size() + n - 1) / n * n, T(0));
  for (std::size_t i = 0; i < in.size(); i += n) {
    alignas(simd::kAlign) T r[n];
    simd::store(r, simd::exp2(simd::loadu<V>(in.data() + i)));
    std::copy(r, r + n, out.begin() + static_cast<std::ptrdiff_t>(i));
  }
  out.resize(xs.size());
  return out;
}

/// [lo, hi] in steps of `step`, plus -inf and the ends.
template <class T>
std::vector<T> exp2_inputs(double lo, double hi, double step) {
  std::vector<T> xs{-std::numeric_limits<T>::infinity(), T(lo), T(hi)};
  for (double x = lo; x <= hi; x += step) xs.push_back(T(x));
  return xs;
}

/// Below 2^kFlushBelow exp2 may flush to 0 (simd.hpp: "exactly 0 below 2^-126"); a softmax weight
/// that small is 2^-126 of the row's largest and cannot change a float or double result.
constexpr double kFlushBelow = -126;

/// exp2 on [lo, hi]: relative error below `tol` from 2^-126 up, exactly 0 at −inf, within
/// [0, 2^-126] below that (flushed or accurate, never garbage); 2^0 is exactly 1.
template <class T, class Arch>
void check_exp2(double lo, double hi, double step, double tol) {
  const std::vector<T> xs = exp2_inputs<T>(lo, hi, step);
  const std::vector<T> ys = exp2_of<T, Arch>(xs);
  double worst = 0, worst_x = 0;
  for (std::size_t i = 0; i < xs.size(); ++i) {
    const double x = xs[i], y = ys[i];
    if (std::isinf(x)) {
      EXPECT_EQ(y, 0.0) << "exp2(-inf)";
    } else if (x < kFlushBelow) {
      EXPECT_TRUE(y >= 0 && y <= std::exp2(kFlushBelow)) << "exp2(" << x << ") = " << y;
    } else {
      const double rel = std::abs(y - std::exp2(x)) / std::exp2(x);
      if (!(rel <= worst)) worst = rel, worst_x = x;
    }
  }
  EXPECT_LT(worst, tol) << "worst relative error at x = " << worst_x;
  EXPECT_EQ((exp2_of<T, Arch>({T(0)})[0]), T(1));
  // A NaN stays NaN (a NaN score must reach its row, not become a weight of 0).
  EXPECT_TRUE(std::isnan(exp2_of<T, Arch>({std::numeric_limits<T>::quiet_NaN()})[0]));
}

TEST(CoreExp2, FloatNativeArch) { check_exp2<float, simd::default_arch>(-130, 0, 1.0 / 4096, 4e-7); }
TEST(CoreExp2, FloatScalarPath) { check_exp2<float, simd::scalar>(-130, 0, 1.0 / 256, 4e-7); }
TEST(CoreExp2, DoubleNativeArch) { check_exp2<double, simd::default_arch>(-1030, 0, 1.0 / 256, 1e-15); }
TEST(CoreExp2, DoubleScalarPath) { check_exp2<double, simd::scalar>(-1030, 0, 1.0 / 64, 1e-15); }

TEST(CoreExp2, FloatAgreesAtRandomPoints) {
  SCOPED_TRACE(seed_note("exp2_random"));
  std::mt19937_64 rng(case_seed("exp2_random"));
  std::uniform_real_distribution<float> u(-126.f, 0.f);
  std::vector<float> xs(100000);
  for (float& x : xs) x = u(rng);
  const std::vector<float> ys = exp2_of<float, simd::default_arch>(xs);
  for (std::size_t i = 0; i < xs.size(); ++i)
    ASSERT_LT(std::abs(double(ys[i]) - std::exp2(double(xs[i]))) / std::exp2(double(xs[i])), 4e-7) << "x = " << xs[i];
}

// ---------------------------------------------------------------------------------------------
// Row reductions

TEST(CoreSimd, HorizontalSumAndMax) {
  using V = simd::vec_t<float, simd::default_arch>;
  constexpr int n = simd::lanes_v<float, simd::default_arch>;
  alignas(simd::kAlign) float x[n];
  float sum = 0;
  for (int i = 0; i < n; ++i) sum += x[i] = float((i * 7) % n) - 3.5f;
  EXPECT_EQ(simd::hsum(simd::load<V>(x)), sum);
  EXPECT_EQ(simd::hmax(simd::load<V>(x)), float(n - 1) - 3.5f);
}

// ---------------------------------------------------------------------------------------------
// parallel_for

/// parallel_for on `dev` over n items: every item exactly once, all done when it returns.
template <class D>
void check_parallel_for(const D& dev, index n) {
  std::vector<std::atomic<int>> visits(static_cast<std::size_t>(n));
  xattn::detail::parallel_for(dev, n, [&](index i) { visits[static_cast<std::size_t>(i)].fetch_add(1); });
  for (index i = 0; i < n; ++i) ASSERT_EQ(visits[static_cast<std::size_t>(i)].load(), 1) << "item " << i << " of " << n;
}

TEST(CoreParallelFor, EveryItemExactlyOnce) {
  for (index n : {0, 1, 3, 4, 5, 1000, 100003}) {
    SCOPED_TRACE("n = " + std::to_string(n));
    check_parallel_for(xattn::detail::serial_device{}, n);
    for (int threads : {1, 2, 4}) {
      SCOPED_TRACE("threads " + std::to_string(threads));
      check_parallel_for(device(threads), n);
    }
  }
}

TEST(CoreParallelFor, UsesSeveralThreadsAndTheCaller) {
  // Uneven items (a causal schedule's) spread over the pool; the calling thread works too.
  std::mutex m;
  std::set<std::thread::id> ids;
  xattn::detail::parallel_for(device(4), 64, [&](index) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    std::lock_guard<std::mutex> lock(m);
    ids.insert(std::this_thread::get_id());
  });
  EXPECT_GE(ids.size(), 2u);
  std::set<std::thread::id> serial_ids;
  xattn::detail::parallel_for(xattn::detail::serial_device{}, 8, [&](index) { serial_ids.insert(std::this_thread::get_id()); });
  EXPECT_EQ(serial_ids, std::set<std::thread::id>{std::this_thread::get_id()});
}

// ---------------------------------------------------------------------------------------------
// workspace

bool aligned(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % simd::kAlign == 0; }

TEST(CoreWorkspace, AlignedAndPersistent) {
  xattn::detail::workspace ws;
  auto* a = static_cast<unsigned char*>(ws.get(100));
  ASSERT_TRUE(aligned(a));
  for (int i = 0; i < 100; ++i) a[i] = static_cast<unsigned char>(i);
  auto* b = static_cast<unsigned char*>(ws.get(50));  // smaller: the same buffer, contents kept
  EXPECT_EQ(a, b);
  for (int i = 0; i < 100; ++i) ASSERT_EQ(b[i], i);
  auto* c = static_cast<unsigned char*>(ws.get(1 << 20));  // larger: aligned and writable
  ASSERT_TRUE(aligned(c));
  std::fill(c, c + (1 << 20), 0xab);
  EXPECT_EQ(ws.get(4096), c);
  EXPECT_EQ(ws.get(1 << 20), c);
}

TEST(CoreWorkspace, OnePerThreadAndSlot) {
  auto& w0 = xattn::detail::workspace::of_this_thread(0);
  auto& w1 = xattn::detail::workspace::of_this_thread(1);
  EXPECT_NE(&w0, &w1);
  EXPECT_EQ(&w0, &xattn::detail::workspace::of_this_thread(0));
  void* p0 = w0.get(256);
  void* p1 = w1.get(256);
  EXPECT_TRUE(aligned(p0) && aligned(p1));
  EXPECT_NE(p0, p1);
  EXPECT_EQ(xattn::detail::workspace::of_this_thread(0).get(128), p0);  // persists across calls
  xattn::detail::workspace* other = nullptr;
  std::thread([&] { other = &xattn::detail::workspace::of_this_thread(0); }).join();
  EXPECT_NE(other, &w0);
}

// ---------------------------------------------------------------------------------------------
// haddp: lane i of the result is the sum of vector i (xsimd 8's AVX-512 float order is fixed up)

template <class T, class Arch>
void check_haddp() {
  using V = simd::vec_t<T, Arch>;
  constexpr int n = simd::lanes_v<T, Arch>;
  V rows[n];
  for (int i = 0; i < n; ++i) {
    alignas(simd::kAlign) T lane[n];
    for (int j = 0; j < n; ++j) lane[j] = T(i * 100 + j);
    rows[i] = simd::load<V>(lane);
  }
  alignas(simd::kAlign) T sums[n];
  simd::store(sums, simd::haddp(rows));
  for (int i = 0; i < n; ++i) EXPECT_EQ(sums[i], T(i * 100 * n + n * (n - 1) / 2)) << "lane " << i;
}

TEST(Simd, HaddpSumsEachVectorIntoItsLane) {
  check_haddp<float, simd::default_arch>();
  check_haddp<double, simd::default_arch>();
  check_haddp<float, simd::scalar>();
}

}  // namespace
}  // namespace xattn_test
