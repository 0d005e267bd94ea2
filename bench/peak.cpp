// bench/peak.cpp — what the machine can do at most, measured by the suite itself: fp32 FMA
// throughput and streaming read bandwidth, at 1 and 2 threads. The best rates go to the registry
// of bench_common.hpp; every other benchmark reports pct_peak / pct_bw against them.
//
//   peak/fma/threads:<t>        GFLOPS: 2 flops per lane per FMA, summed over the t threads
//   peak/bandwidth/threads:<t>  GBps:   bytes of a 512 MiB buffer read once per iteration
#include "bench_common.hpp"

#include <cmath>
#include <cstdlib>
#include <type_traits>
#include <xsimd/xsimd.hpp>

namespace xattn_bench {
namespace {

// The widest vector the compiler flags allow (AVX-512, AVX2, NEON, ...), or a plain float where
// xsimd has no architecture.
template <class Arch>
struct vec_of {
  using type = xsimd::batch<float, Arch>;
  static constexpr int lanes = static_cast<int>(type::size);
};
template <>
struct vec_of<xsimd::unavailable> {
  using type = float;
  static constexpr int lanes = 1;
};
using vec = vec_of<xsimd::default_arch>::type;
constexpr int kLanes = vec_of<xsimd::default_arch>::lanes;

// Templates, so that the branch not taken is discarded.
template <class V>
V fma(const V& a, const V& b, const V& c) {
  if constexpr (std::is_same_v<V, float>) return std::fma(a, b, c); else return xsimd::fma(a, b, c);
}
template <class V>
V load(const float* p) {
  if constexpr (std::is_same_v<V, float>) return *p; else return V::load_aligned(p);
}
template <class V>
float reduce(const V& v) {
  if constexpr (std::is_same_v<V, float>) return v; else return xsimd::hadd(v);  // xsimd 8.x name of reduce_add
}

// ---------------------------------------------------------------------------------------------
// FMA throughput. Two FMA pipes × 4-cycle latency need 8 independent chains in flight. With 32
// vector registers (AVX-512) 16 chains leave margin for dispatch jitter and still sit in registers;
// with 16 (AVX2, NEON) 12 chains plus a and b fit, where 16 would spill three to the stack.
// acc ← acc·a + b with a just below 1 converges to b / (1 − a) = 1: no overflow, no denormals.

constexpr int kFmaChains = sizeof(vec) >= 64 ? 16 : 12;
constexpr std::int64_t kFmaSteps = std::int64_t{1} << 22;  // ~10 ms per thread at 225 GFLOP/s
constexpr double kFmaFlopsPerThread = 2.0 * kLanes * kFmaChains * double(kFmaSteps);

__attribute__((noinline)) float fma_chains(std::int64_t steps, float a_scalar, float b_scalar) {
  const vec a(a_scalar), b(b_scalar);
  std::array<vec, kFmaChains> acc;
  for (int c = 0; c < kFmaChains; ++c) acc[c] = vec(1.0f + 0.01f * float(c));
  for (std::int64_t s = 0; s < steps; ++s) {
#pragma GCC unroll 16  // = kFmaChains at most: every chain in its own register
    for (int c = 0; c < kFmaChains; ++c) acc[c] = fma(acc[c], a, b);
  }
  vec total = acc[0];
  for (int c = 1; c < kFmaChains; ++c) total += acc[c];
  return reduce(total);
}

volatile float g_fma_a = 0.999999f, g_fma_b = 1e-6f;  // volatile: opaque to constant folding
volatile float g_sink[kMaxThreads];

void run_fma(int threads) {
  const float a = g_fma_a, b = g_fma_b;
  on_each_thread(threads, [&](int w) { g_sink[w] = fma_chains(kFmaSteps, a, b); });
}

double fma_gflops_once(int threads) {
  wall_timer t;
  run_fma(threads);
  return kFmaFlopsPerThread * threads / t.seconds() * 1e-9;
}

// ---------------------------------------------------------------------------------------------
// Read bandwidth: a sum over a buffer far larger than every cache, eight vector accumulators so
// that the adds never limit the loads. With t threads each sums a contiguous 1/t of the buffer.

constexpr std::size_t kStreamBytes = std::size_t{512} << 20;
constexpr std::size_t kStreamFloats = kStreamBytes / sizeof(float);
constexpr int kStreamChains = 8;

const float* stream_buffer() {
  static const std::unique_ptr<float, decltype(&std::free)> buffer = [] {
    auto* p = static_cast<float*>(std::aligned_alloc(64, kStreamBytes));
    for (std::size_t i = 0; i < kStreamFloats; ++i) p[i] = 1.0f / float(1 + (i & 1023));  // touches every page
    return std::unique_ptr<float, decltype(&std::free)>(p, &std::free);
  }();
  return buffer.get();
}

__attribute__((noinline)) float stream_sum(const float* p, std::size_t n) {
  std::array<vec, kStreamChains> acc;
  acc.fill(vec(0.0f));
  constexpr std::size_t step = std::size_t{kStreamChains} * kLanes;
  for (std::size_t i = 0; i < n; i += step) {  // n is a multiple of step
#pragma GCC unroll 8
    for (int c = 0; c < kStreamChains; ++c) acc[c] += load<vec>(p + i + std::size_t(c) * kLanes);
  }
  vec total = acc[0];
  for (int c = 1; c < kStreamChains; ++c) total += acc[c];
  return reduce(total);
}

void run_stream(int threads) {
  const float* p = stream_buffer();
  const std::size_t part = kStreamFloats / std::size_t(threads);
  on_each_thread(threads, [&](int w) { g_sink[w] = stream_sum(p + std::size_t(w) * part, part); });
}

double bandwidth_gbs_once(int threads) {
  wall_timer t;
  run_stream(threads);
  return double(kStreamBytes) / t.seconds() * 1e-9;
}

// ---------------------------------------------------------------------------------------------

void bm_fma(benchmark::State& st, int threads) {
  pool_for(threads);  // create the pool before timing
  wall_timer t;
  for (auto _ : st) run_fma(threads);
  const double gflops = kFmaFlopsPerThread * threads * double(st.iterations()) / t.seconds() * 1e-9;
  st.counters["GFLOPS"] = gflops;
  fma_peak_gflops[threads] = gflops;  // the reported run is the last call: its rate is the peak
}

void bm_bandwidth(benchmark::State& st, int threads) {
  pool_for(threads);
  stream_buffer();  // allocate and touch the buffer before timing
  wall_timer t;
  for (auto _ : st) run_stream(threads);
  const double gbs = double(kStreamBytes) * double(st.iterations()) / t.seconds() * 1e-9;
  st.counters["GBps"] = gbs;
  bandwidth_gbs[threads] = gbs;
}

void register_peaks(suite) {  // both suites: every pct_peak and pct_bw is relative to these
  for (int t = 1; t <= kMaxThreads; ++t)
    benchmark::RegisterBenchmark(("peak/fma/threads:" + std::to_string(t)).c_str(), bm_fma, t)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  for (int t = 1; t <= kMaxThreads; ++t)
    benchmark::RegisterBenchmark(("peak/bandwidth/threads:" + std::to_string(t)).c_str(), bm_bandwidth, t)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
}

const registrar peaks_first{0, &register_peaks};

}  // namespace

// The lazy measurements behind fma_peak() / bandwidth_peak() when peak/* did not run: the first
// run warms the clocks and the pool threads, the best of the rest is the peak.
double measure_fma_gflops(int threads) {
  double best = 0;
  for (int r = 0; r < 10; ++r) best = std::max(best, fma_gflops_once(threads));
  return best;
}

double measure_bandwidth_gbs(int threads) {
  double best = 0;
  for (int r = 0; r < 5; ++r) best = std::max(best, bandwidth_gbs_once(threads));
  return best;
}

}  // namespace xattn_bench
