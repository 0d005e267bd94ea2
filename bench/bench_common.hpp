// bench/bench_common.hpp — what every benchmark of xattn_bench shares: the registry of the machine's
// measured peaks (FMA throughput, bf16 dot-product and AMX throughput, read bandwidth) that
// pct_peak and pct_bw are computed against, caches of pre-allocated, pre-touched random tensors
// (float, and their bfloat16 and half roundings), one Eigen thread pool per thread count, and the
// counter helpers.
//
// On these machines touching fresh memory costs about 10 µs per 4 KiB page, so every buffer a
// benchmark reads or writes is allocated and touched here, before the timed loop, and reused.
#pragma once

#ifndef EIGEN_USE_THREADS
#define EIGEN_USE_THREADS  // Eigen::ThreadPoolDevice; must precede every Eigen include
#endif

#include <benchmark/benchmark.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <initializer_list>
#include <map>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <unsupported/Eigen/CXX11/Tensor>
#include <unsupported/Eigen/CXX11/ThreadPool>

#include <xattn/paths.hpp>

namespace xattn_bench {

using tensor4 = Eigen::Tensor<float, 4, Eigen::RowMajor>;
using dims4 = std::array<Eigen::Index, 4>;

// ---------------------------------------------------------------------------------------------
// Storage. Every family also runs its headline shapes with q, k, v (decode: its K/V cache) held in
// bfloat16 or half; out stays float. Those rows are named like the fp32 row of the same shape plus
// "/dtype:bf16" or "/dtype:f16"; the fp32 rows keep their names (docs and compare.py know them).

enum class storage { f32, bf16, f16 };

template <storage S>
using scalar_of = std::conditional_t<S == storage::f32, float,
                                     std::conditional_t<S == storage::bf16, Eigen::bfloat16, Eigen::half>>;
template <storage S>
using tensor4_of = Eigen::Tensor<scalar_of<S>, 4, Eigen::RowMajor>;

inline const char* storage_name(storage s) { return s == storage::f32 ? "fp32" : s == storage::bf16 ? "bf16" : "f16"; }

/// The suffix of a row's name: none for fp32, "/dtype:bf16" or "/dtype:f16" for 16-bit storage.
inline std::string dtype_suffix(storage s) {
  return s == storage::f32 ? std::string() : std::string("/dtype:") + storage_name(s);
}

inline constexpr storage kStorages16[] = {storage::bf16, storage::f16};

/// Thread counts the suite runs at (2 cores on the reference machine).
inline constexpr int kMaxThreads = 2;

/// The rows of the full suite's comparisons (softmax at N = 4096 and 16384, decode, sliding window,
/// sparse at N = 16384, 2-D neighborhood) are timed over at least this many seconds, whatever
/// --benchmark_min_time says (Google Benchmark lets a benchmark's own MinTime win). On a shared
/// machine a 0.3 s window moved such a row by ±5–10 % between runs, and a call longer than the
/// window (sliding window at N = 65536, ~0.9 s) was timed once.
inline constexpr double kComparedMinTime = 2.0;

// ---------------------------------------------------------------------------------------------
// The two suites. The headline suite (the default run) times each family once at its headline
// shape, the naive references at a smaller shape, and the tokens/s sweep over N; the full suite
// (--xattn_full) is every row of every benchmark file.

enum class suite { headline, full };

/// The headline table's rows are timed over at least this long; the sweep's points over at least
/// kSweepMinTime, so that a call longer than that (softmax at N = 32768) is timed once.
inline constexpr double kTableMinTime = 1.0;
inline constexpr double kSweepMinTime = 0.25;

/// The tokens/s sweep: N = kSweepMinN, 2·kSweepMinN, ..., kSweepMaxN on kSweepThreads threads.
/// Headline shapes that are also sweep points are registered once, by the sweep, with kTableMinTime.
inline constexpr Eigen::Index kSweepMinN = 1024, kSweepMaxN = 131072;
inline constexpr int kSweepThreads = 2;

/// The headline table's thread count (all of the reference machine's cores).
inline constexpr int kTableThreads = 2;

// ---------------------------------------------------------------------------------------------
// Registration: each benchmark file registers its benchmarks from a function with an order, and
// main() calls them sorted, so that peak/* runs first whatever the link order of the files. In the
// headline suite the sweep's points come last, N by N and family by family within an N, so that
// each N's tensors (2 GiB at N = 131072) are built once and shared by all the families.

using register_fn = void (*)(suite);
using sweep_fn = void (*)(Eigen::Index n);

inline std::vector<std::pair<int, register_fn>>& registrars() {
  static std::vector<std::pair<int, register_fn>> list;
  return list;
}

inline std::vector<std::pair<int, sweep_fn>>& sweep_registrars() {
  static std::vector<std::pair<int, sweep_fn>> list;
  return list;
}

/// `static const registrar r{order, &fn};` in a benchmark file; lower orders register (and run) first.
struct registrar {
  registrar(int order, register_fn fn) { registrars().emplace_back(order, fn); }
};

/// `static const sweep_registrar r{order, &fn};`: fn(n) registers the file's sweep rows at N = n.
struct sweep_registrar {
  sweep_registrar(int order, sweep_fn fn) { sweep_registrars().emplace_back(order, fn); }
};

inline void register_all(suite which) {
  const auto by_order = [](const auto& a, const auto& b) { return a.first < b.first; };
  auto& list = registrars();
  std::stable_sort(list.begin(), list.end(), by_order);
  for (const auto& [order, fn] : list) fn(which);
  if (which != suite::headline) return;
  auto& sweep = sweep_registrars();
  std::stable_sort(sweep.begin(), sweep.end(), by_order);
  for (Eigen::Index n = kSweepMinN; n <= kSweepMaxN; n *= 2)
    for (const auto& [order, fn] : sweep) fn(n);
}

// ---------------------------------------------------------------------------------------------
// The measured peaks, indexed by thread count (entry 0 unused). peak/fma and peak/bandwidth store
// the best rate they see; a benchmark that needs a peak not yet measured (peak/* filtered out)
// measures it once on first use, before its timed loop.

// The bf16 peaks stay 0 on a CPU without the unit (or, for AMX, without the OS's permission).

inline double fma_peak_gflops[kMaxThreads + 1] = {};       // fp32 FMA throughput, GFLOP/s
inline double bf16_dot_peak_gflops[kMaxThreads + 1] = {};  // AVX512-BF16 vdpbf16ps throughput, GFLOP/s
inline double amx_bf16_peak_gflops[kMaxThreads + 1] = {};  // AMX tdpbf16ps throughput, GFLOP/s
inline double bandwidth_gbs[kMaxThreads + 1] = {};         // streaming read bandwidth, GB/s (1e9 B/s)

double measure_fma_gflops(int threads);       // peak.cpp: a few probe runs, best rate
double measure_bf16_dot_gflops(int threads);  // peak.cpp: likewise; 0 without AVX512-BF16
double measure_amx_bf16_gflops(int threads);  // peak.cpp: likewise; 0 without usable AMX-BF16
double measure_bandwidth_gbs(int threads);    // peak.cpp: a few passes over 512 MiB, best rate

inline void record_peak(double& slot, double value) { slot = std::max(slot, value); }

inline double fma_peak(int threads) {
  if (!(fma_peak_gflops[threads] > 0)) record_peak(fma_peak_gflops[threads], measure_fma_gflops(threads));
  return fma_peak_gflops[threads];
}

inline double amx_bf16_peak(int threads) {
  if (!(amx_bf16_peak_gflops[threads] > 0))
    record_peak(amx_bf16_peak_gflops[threads], measure_amx_bf16_gflops(threads));
  return amx_bf16_peak_gflops[threads];
}

inline double bf16_dot_peak(int threads) {
  if (!(bf16_dot_peak_gflops[threads] > 0))
    record_peak(bf16_dot_peak_gflops[threads], measure_bf16_dot_gflops(threads));
  return bf16_dot_peak_gflops[threads];
}

/// The peak of the units a row's products ran on: the AMX peak for rows on AMX tiles, the
/// vdpbf16ps peak for rows on AVX512-BF16 dot products, the fp32 FMA peak for everything else
/// (fp32 rows, half storage, decode, the rows that convert 16-bit rows to float and run the float
/// micro-kernels).
inline double product_peak(xattn::product_path path, int threads) {
  switch (path) {
    case xattn::product_path::amx_bf16: return amx_bf16_peak(threads);
    case xattn::product_path::avx512_bf16: return bf16_dot_peak(threads);
    default: return fma_peak(threads);
  }
}

/// The path a row's products take: bfloat16 q, k, v in a prefill family of the tile engine
/// (softmax, sliding window, sparse) or in lightning run on a bf16 path where the CPU allows it
/// (xattn::bf16_product_path(): AMX or AVX512-BF16); everything else (the 2-D neighborhood,
/// decode, the linear rows' elu+1 with normaliser) on the fp32 path. bf16_capable: the row's call
/// is one of those.
inline xattn::product_path path_of(storage s, bool bf16_capable) {
  return s == storage::bf16 && bf16_capable ? xattn::bf16_product_path() : xattn::product_path::fp32;
}

/// Names the path in the label of a 16-bit row ("path:amx-bf16", "path:fp32"); fp32 rows get none.
inline void label_path(benchmark::State& st, storage s, xattn::product_path path) {
  if (s != storage::f32) st.SetLabel(std::string("path:") + xattn::path_name(path));
}

inline double bandwidth_peak(int threads) {
  if (!(bandwidth_gbs[threads] > 0)) record_peak(bandwidth_gbs[threads], measure_bandwidth_gbs(threads));
  return bandwidth_gbs[threads];
}

// ---------------------------------------------------------------------------------------------
// Threads: one Eigen::ThreadPool of `threads` workers and its ThreadPoolDevice per thread count,
// created once and kept for the whole run.

struct pool_and_device {
  explicit pool_and_device(int threads) : pool(threads), device(&pool, threads) {}
  Eigen::ThreadPool pool;
  Eigen::ThreadPoolDevice device;
};

inline pool_and_device& pool_for(int threads) {
  static std::unique_ptr<pool_and_device> pools[kMaxThreads + 1];
  if (!pools[threads]) {
    Eigen::initParallel();
    pools[threads] = std::make_unique<pool_and_device>(threads);
  }
  return *pools[threads];
}

inline Eigen::ThreadPoolDevice& device(int threads) { return pool_for(threads).device; }

/// Runs f(worker) once on each of `threads` threads at the same time: the calling thread is
/// worker 0, pool threads the others. Returns when all are done.
template <class F>
void on_each_thread(int threads, const F& f) {
  if (threads <= 1) {
    f(0);
    return;
  }
  auto& pool = pool_for(threads).pool;
  Eigen::Barrier done(static_cast<unsigned>(threads - 1));
  for (int w = 1; w < threads; ++w)
    pool.Schedule([&f, &done, w] {
      f(w);
      done.Notify();
    });
  f(0);
  done.Wait();
}

/// Calls f(item, worker) for every item in [0, n) on `threads` threads, items handed out
/// dynamically; `worker` in [0, threads) indexes per-thread scratch.
template <class F>
void parallel_for(int threads, Eigen::Index n, const F& f) {
  std::atomic<Eigen::Index> next{0};
  on_each_thread(static_cast<int>(std::min<Eigen::Index>(threads, n)), [&](int w) {
    for (Eigen::Index i = next.fetch_add(1, std::memory_order_relaxed); i < n;
         i = next.fetch_add(1, std::memory_order_relaxed))
      f(i, w);
  });
}

// ---------------------------------------------------------------------------------------------
// Tensors: random values uniform in [-1, 1), allocated and written (every page touched) once per
// (role, shape) and reused by every benchmark of that shape. Each storage type has its own cache,
// which keeps at most kTensorCacheBytes resident; least recently used shapes are dropped to make
// room (benchmarks are registered shape by shape, so a shape is built once in a full run). A
// bfloat16 or half tensor holds the float tensor of the same (role, shape) rounded to nearest: the
// same random stream, converted element by element as it is written, before any timed loop.

inline constexpr std::size_t kTensorCacheBytes = std::size_t{1} << 30;

struct tensor_spec {
  std::string role;  // "q", "k", "v", "out", ...: tensors of one shape but different roles differ
  dims4 dims;
};

template <class T>
class tensor_cache {
 public:
  using tensor_type = Eigen::Tensor<T, 4, Eigen::RowMajor>;

  /// The tensors of `specs`, in order; all of them stay valid until the next call.
  std::vector<tensor_type*> get(std::initializer_list<tensor_spec> specs) {
    ++clock_;
    std::size_t missing = 0;
    for (const auto& s : specs) {
      auto it = entries_.find(key_of(s));
      if (it != entries_.end()) it->second.last_use = clock_;  // pinned: not evicted below
      else missing += bytes_of(s.dims);
    }
    while (resident_ + missing > kTensorCacheBytes) {
      auto lru = entries_.end();
      for (auto it = entries_.begin(); it != entries_.end(); ++it)
        if (it->second.last_use != clock_ && (lru == entries_.end() || it->second.last_use < lru->second.last_use))
          lru = it;
      if (lru == entries_.end()) break;  // everything resident is needed now
      resident_ -= bytes_of(lru->first.second);
      entries_.erase(lru);
    }
    std::vector<tensor_type*> out;
    for (const auto& s : specs) {
      auto& e = entries_[key_of(s)];
      if (!e.tensor) {
        e.tensor = std::make_unique<tensor_type>(s.dims[0], s.dims[1], s.dims[2], s.dims[3]);
        fill_random(*e.tensor, seed_of(s));
        resident_ += bytes_of(s.dims);
      }
      e.last_use = clock_;
      out.push_back(e.tensor.get());
    }
    return out;
  }

 private:
  using key = std::pair<std::string, dims4>;
  struct entry {
    std::unique_ptr<tensor_type> tensor;
    std::uint64_t last_use = 0;
  };

  static key key_of(const tensor_spec& s) { return {s.role, s.dims}; }
  static std::size_t bytes_of(const dims4& d) {
    return sizeof(T) * static_cast<std::size_t>(d[0] * d[1] * d[2] * d[3]);
  }
  static std::uint64_t seed_of(const tensor_spec& s) {
    std::uint64_t h = 0x9e3779b97f4a7c15ull;
    for (char c : s.role) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001b3ull;
    for (auto x : s.dims) h = (h ^ static_cast<std::uint64_t>(x)) * 0x100000001b3ull;
    return h;
  }
  static void fill_random(tensor_type& t, std::uint64_t state) {
    constexpr float kTwoPowMinus23 = 1.0f / float(1u << 23);  // 24 random bits × 2⁻²³ → [0, 2)
    T* p = t.data();
    for (Eigen::Index i = 0; i < t.size(); ++i) {
      std::uint64_t z = (state += 0x9e3779b97f4a7c15ull);  // splitmix64
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
      z ^= z >> 31;
      p[i] = T(float(z >> 40) * kTwoPowMinus23 - 1.0f);  // 16-bit T: rounded to nearest even
    }
  }

  std::map<key, entry> entries_;
  std::size_t resident_ = 0;
  std::uint64_t clock_ = 0;
};

inline std::vector<tensor4*> cached_tensors(std::initializer_list<tensor_spec> specs) {
  static tensor_cache<float> cache;
  return cache.get(specs);
}

/// cached_tensors in storage S: for 16-bit S the float tensors of the same (role, shape), rounded.
template <storage S>
std::vector<tensor4_of<S>*> cached_tensors_as(std::initializer_list<tensor_spec> specs) {
  if constexpr (S == storage::f32) {
    return cached_tensors(specs);
  } else {
    static tensor_cache<scalar_of<S>> cache;
    return cache.get(specs);
  }
}

/// The tensors of one prefill shape: q, k, v in storage S, out in float.
template <storage S>
struct prefill_tensors {
  const tensor4_of<S>& q;
  const tensor4_of<S>& k;
  const tensor4_of<S>& v;
  tensor4& out;
};

/// q, k, v, out of `dims` (all four from one call where they share a cache, so that none of them
/// is dropped to make room for another).
template <storage S>
prefill_tensors<S> prefill_tensors_of(const dims4& dims) {
  if constexpr (S == storage::f32) {
    auto ts = cached_tensors({{"q", dims}, {"k", dims}, {"v", dims}, {"out", dims}});
    return {*ts[0], *ts[1], *ts[2], *ts[3]};
  } else {
    auto ts = cached_tensors_as<S>({{"q", dims}, {"k", dims}, {"v", dims}});
    return {*ts[0], *ts[1], *ts[2], *cached_tensors({{"out", dims}})[0]};
  }
}

/// Per-worker float scratch of at least n elements, zero-filled (touched) when it grows; call once
/// per worker before the timed loop so that calls inside it only return the pointer.
inline float* scratch(int worker, std::size_t n) {
  static std::vector<float> buffers[kMaxThreads];
  auto& b = buffers[worker];
  if (b.size() < n) {
    b.clear();
    b.shrink_to_fit();  // free the old buffer before touching the larger one
    b.resize(n);
  }
  return b.data();
}

// ---------------------------------------------------------------------------------------------
// Counters. Benchmarks use ->UseRealTime(); the rates below divide by the wall time of the whole
// timed loop, measured around it with wall_timer, so that they read as plain numbers
// ("GFLOPS=412", not a library rate with a "/s" suffix).

class wall_timer {
 public:
  wall_timer() : start_(std::chrono::steady_clock::now()) {}
  double seconds() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count(); }

 private:
  std::chrono::steady_clock::time_point start_;
};

/// GFLOPS, tokens_per_s and pct_peak (of the peak at `threads` of the units `path` names:
/// product_peak) of a loop that did flops_per_iter useful flops and processed tokens_per_iter
/// tokens per iteration.
inline void report_flops(benchmark::State& st, double seconds, double flops_per_iter, double tokens_per_iter,
                         int threads, xattn::product_path path = xattn::product_path::fp32) {
  const double iters = static_cast<double>(st.iterations());
  const double gflops = flops_per_iter * iters / seconds * 1e-9;
  st.counters["GFLOPS"] = gflops;
  st.counters["tokens_per_s"] = tokens_per_iter * iters / seconds;
  st.counters["pct_peak"] = 100.0 * gflops / product_peak(path, threads);
}

/// The timed loop of a FLOP-counted benchmark: body() per iteration (the peak of `path` is measured
/// first if no peak/* row measured it, never inside the loop), then report_flops. Returns the seconds of
/// one iteration. With warm_up, one untimed call comes first (run_flops_after: warm_up() instead): per-thread workspaces grow and the
/// pool's threads wake there. It matters where one call outlasts --benchmark_min_time (sliding
/// window at N = 65536: Google Benchmark then reports that single first call, which ran 2–3 %
/// slower than the calls after it). The naive references, minutes per call, pass false.
template <class Body, class WarmUp>
double run_flops_after(benchmark::State& st, int threads, double flops_per_iter, double tokens_per_iter,
                       const Body& body, const WarmUp& warm_up,
                       xattn::product_path path = xattn::product_path::fp32) {
  product_peak(path, threads);
  warm_up();
  wall_timer t;
  for (auto _ : st) {
    body();
    benchmark::ClobberMemory();
  }
  const double seconds = t.seconds();
  report_flops(st, seconds, flops_per_iter, tokens_per_iter, threads, path);
  return seconds / static_cast<double>(st.iterations());
}

template <class Body>
double run_flops(benchmark::State& st, int threads, double flops_per_iter, double tokens_per_iter, const Body& body,
                 bool warm_up = true, xattn::product_path path = xattn::product_path::fp32) {
  return run_flops_after(
      st, threads, flops_per_iter, tokens_per_iter, body, [&] {
        if (warm_up) body();
      },
      path);
}

/// The untimed call of the long rows (softmax and sliding window at large N) runs over the first
/// kWarmUpTokens tokens only: what it warms (per-thread workspaces of O(block × head_dim), the
/// pool's threads) does not depend on N, and a full call would double a 10 s row.
inline constexpr Eigen::Index kWarmUpTokens = 4096;

/// The first n tokens of a [1, seq, heads, dim] row-major tensor (with batch 1 they are contiguous),
/// as a map over its memory.
template <class T>
Eigen::TensorMap<Eigen::Tensor<T, 4, Eigen::RowMajor>> leading_tokens(Eigen::Tensor<T, 4, Eigen::RowMajor>& t,
                                                                      Eigen::Index n) {
  return {t.data(), t.dimension(0), std::min(n, t.dimension(1)), t.dimension(2), t.dimension(3)};
}
template <class T>
Eigen::TensorMap<const Eigen::Tensor<T, 4, Eigen::RowMajor>> leading_tokens(
    const Eigen::Tensor<T, 4, Eigen::RowMajor>& t, Eigen::Index n) {
  return {t.data(), t.dimension(0), std::min(n, t.dimension(1)), t.dimension(2), t.dimension(3)};
}

/// GBps and pct_bw (of the read bandwidth at `threads`) of a loop that read bytes_per_iter per iteration.
inline void report_bandwidth(benchmark::State& st, double seconds, double bytes_per_iter, int threads) {
  const double gbs = bytes_per_iter * static_cast<double>(st.iterations()) / seconds * 1e-9;
  st.counters["GBps"] = gbs;
  st.counters["pct_bw"] = 100.0 * gbs / bandwidth_peak(threads);
}

}  // namespace xattn_bench
