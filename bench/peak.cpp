// bench/peak.cpp — what the machine can do at most, measured by the suite itself: fp32 FMA
// throughput, bf16 dot-product throughput (AVX512-BF16 and AMX-BF16, where the CPU has them) and
// streaming read bandwidth, at 1 and 2 threads. The best rates go to the registry of
// bench_common.hpp; every other benchmark reports pct_peak / pct_bw against them.
//
//   peak/fma/threads:<t>        GFLOPS: 2 flops per lane per FMA, summed over the t threads
//   peak/bf16_dot/threads:<t>   GFLOPS: vdpbf16ps, 4 flops per fp32 lane (2 products, 2 adds)
//   peak/amx_bf16/threads:<t>   GFLOPS: tdpbf16ps, 2·16·16·32 flops per tile product
//   peak/bandwidth/threads:<t>  GBps:   bytes of a 512 MiB buffer read once per iteration
//
// The bf16 probes are compiled with target attributes and run only where the CPU (and, for AMX,
// the OS) allows them, so the binary still runs on a CPU without those units; their rows are not
// registered there.
#include "bench_common.hpp"

#include <cmath>
#include <cstdlib>
#include <type_traits>
#include <xsimd/xsimd.hpp>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define XATTN_BENCH_X86 1
#else
#define XATTN_BENCH_X86 0
#endif

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
// bf16 dot products (AVX512-BF16). vdpbf16ps adds two bf16 products to each of 16 fp32 lanes;
// like the FMA it is pipelined over several cycles, so 16 independent chains (of 32 zmm registers;
// a and b take two more) keep the units busy. acc ← acc + 2·a·b with a·b = 2⁻²⁰ grows to 4 over
// the run: no overflow, no denormals (which vdpbf16ps would flush anyway).

constexpr int kDotChains = 16;
constexpr int kDotLanes = 16;                               // fp32 lanes of a zmm register
constexpr std::int64_t kDotSteps = std::int64_t{1} << 21;  // a few ms per thread
constexpr double kDotFlopsPerThread = 4.0 * kDotLanes * kDotChains * double(kDotSteps);

volatile float g_dot_a = 1.0f / 1024, g_dot_b = 1.0f / 1024;  // 2⁻¹⁰: exact in bfloat16

bool has_bf16_dot() {
#if XATTN_BENCH_X86
  return __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

#if XATTN_BENCH_X86
__attribute__((noinline, target("avx512f,avx512bf16"))) float bf16_dot_chains(std::int64_t steps, float a_scalar,
                                                                             float b_scalar) {
  const __m512 a32 = _mm512_set1_ps(a_scalar), b32 = _mm512_set1_ps(b_scalar);
  const __m512bh a = _mm512_cvtne2ps_pbh(a32, a32), b = _mm512_cvtne2ps_pbh(b32, b32);
  __m512 acc[kDotChains];
  for (int c = 0; c < kDotChains; ++c) acc[c] = _mm512_set1_ps(0.01f * float(c));
  for (std::int64_t s = 0; s < steps; ++s) {
#pragma GCC unroll 16  // = kDotChains: every chain in its own register
    for (int c = 0; c < kDotChains; ++c) acc[c] = _mm512_dpbf16_ps(acc[c], a, b);
  }
  __m512 total = acc[0];
  for (int c = 1; c < kDotChains; ++c) total = _mm512_add_ps(total, acc[c]);
  return _mm512_reduce_add_ps(total);
}
#else
float bf16_dot_chains(std::int64_t, float, float) { return 0; }
#endif

void run_bf16_dot(int threads) {
  const float a = g_dot_a, b = g_dot_b;
  on_each_thread(threads, [&](int w) { g_sink[w] = bf16_dot_chains(kDotSteps, a, b); });
}

// ---------------------------------------------------------------------------------------------
// AMX-BF16. tdpbf16ps multiplies a 16×32 bf16 tile by a 32×16 one (stored as 16 rows of pairs)
// into a 16×16 fp32 tile: 2·16·16·32 flops. The 8 tile registers hold 4 independent C tiles fed
// by 2 A and 2 B tiles (C_ij += A_i·B_j), loaded once, so that the loop is tile products only and
// each C tile waits for its previous product 4 instructions later. Each thread configures its own
// tiles (ldtilecfg) and releases them; the kernel's permission (arch_prctl) is asked once per
// process, inside xattn's cpu_has_amx_bf16(), which xattn::best_product_path() calls first.

constexpr int kTileRows = 16, kTileBytes = 64;             // every tile 16 rows × 64 bytes
constexpr int kTilePairs = kTileBytes / 4;                 // 16 bf16 pairs per B row = C columns
constexpr double kTileFlops = 2.0 * kTileRows * kTilePairs * (kTileBytes / 2);
constexpr std::int64_t kAmxSteps = std::int64_t{1} << 18;  // 4 tile products each; a few ms per thread
constexpr double kAmxFlopsPerThread = 4.0 * kTileFlops * double(kAmxSteps);

bool has_amx_bf16() { return xattn::best_product_path() == xattn::product_path::amx_bf16; }

#if XATTN_BENCH_X86
struct alignas(64) tile_config {  // ldtilecfg's 64-byte layout, palette 1
  std::uint8_t palette = 1, start_row = 0, reserved[14] = {};
  std::uint16_t colsb[16] = {};
  std::uint8_t rows[16] = {};
};

__attribute__((noinline, target("amx-tile,amx-bf16"))) float amx_chains(std::int64_t steps) {
  tile_config cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = kTileBytes;
    cfg.rows[t] = kTileRows;
  }
  // A and B elements 2⁻¹⁰: each product adds 32·2⁻²⁰ to every C element, 8 over the run.
  alignas(64) Eigen::bfloat16 operand[kTileRows * kTileBytes / 2];
  for (auto& x : operand) x = Eigen::bfloat16(1.0f / 1024);
  alignas(64) float c[kTileRows * kTilePairs];
  _tile_loadconfig(&cfg);
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  _tile_loadd(4, operand, kTileBytes);  // A_0, A_1
  _tile_loadd(5, operand, kTileBytes);
  _tile_loadd(6, operand, kTileBytes);  // B_0, B_1
  _tile_loadd(7, operand, kTileBytes);
  for (std::int64_t s = 0; s < steps; ++s) {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  float total = 0;
  _tile_stored(0, c, kTilePairs * sizeof(float));
  total += c[0];
  _tile_stored(3, c, kTilePairs * sizeof(float));
  total += c[0];
  _tile_release();
  return total;
}
#else
float amx_chains(std::int64_t) { return 0; }
#endif

void run_amx(int threads) {
  on_each_thread(threads, [&](int w) { g_sink[w] = amx_chains(kAmxSteps); });
}

/// Best-of-`runs` rate of `run` (the first run warms the clocks and the pool threads).
template <class Run>
double best_gflops(int threads, int runs, double flops_per_thread, const Run& run) {
  double best = 0;
  for (int r = 0; r < runs; ++r) {
    wall_timer t;
    run(threads);
    best = std::max(best, flops_per_thread * threads / t.seconds() * 1e-9);
  }
  return best;
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

/// A bf16 peak row: `run` per iteration, its rate stored in `slot` (as bm_fma).
template <class Run>
void bm_bf16_peak(benchmark::State& st, int threads, double flops_per_thread, double* slot, const Run& run) {
  pool_for(threads);
  run(threads);  // untimed: the clocks and the pool threads wake here
  wall_timer t;
  for (auto _ : st) run(threads);
  const double gflops = flops_per_thread * threads * double(st.iterations()) / t.seconds() * 1e-9;
  st.counters["GFLOPS"] = gflops;
  slot[threads] = gflops;
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
  for (int t = 1; t <= kMaxThreads && has_bf16_dot(); ++t)
    benchmark::RegisterBenchmark(("peak/bf16_dot/threads:" + std::to_string(t)).c_str(),
                                 [](benchmark::State& st, int threads) {
                                   bm_bf16_peak(st, threads, kDotFlopsPerThread, bf16_dot_peak_gflops, run_bf16_dot);
                                 }, t)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  for (int t = 1; t <= kMaxThreads && has_amx_bf16(); ++t)
    benchmark::RegisterBenchmark(("peak/amx_bf16/threads:" + std::to_string(t)).c_str(),
                                 [](benchmark::State& st, int threads) {
                                   bm_bf16_peak(st, threads, kAmxFlopsPerThread, amx_bf16_peak_gflops, run_amx);
                                 }, t)
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

double measure_bf16_dot_gflops(int threads) {
  return has_bf16_dot() ? best_gflops(threads, 10, kDotFlopsPerThread, run_bf16_dot) : 0.0;
}

double measure_amx_bf16_gflops(int threads) {
  return has_amx_bf16() ? best_gflops(threads, 10, kAmxFlopsPerThread, run_amx) : 0.0;
}

double measure_bandwidth_gbs(int threads) {
  double best = 0;
  for (int r = 0; r < 5; ++r) best = std::max(best, bandwidth_gbs_once(threads));
  return best;
}

}  // namespace xattn_bench
