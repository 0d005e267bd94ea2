// bench/bench_sliding_window.cpp — causal sliding-window attention (each query sees its W most
// recent keys, itself included: window_left = W − 1), xattn against the fp64 reference.
//
//   sliding_window/<impl>/N:<N>/W:<W>/D:128/H:8/threads:<t>      B = 1, Nq = Nk = N, bshd layout
//   .../dtype:<bf16|f16>   xattn with q, k, v in Eigen::bfloat16 or Eigen::half (out float), at the
//                          headline shape (N = 16384, W = 1024) only; likewise neighborhood2d below
//
// impl
//   naive  xattn::reference::sliding_window_attention: fp64, materialises the N×N mask and scores;
//          only at N = 2048, threads:1.
//   xattn  xattn::sliding_window_attention, device overload.
// The window's cost is linear in N: time at N = 65536 over time at N = 8192 is 8 ideally, and its
// GFLOPS over visited positions can be read against softmax/xattn at N = 4096.
//
//   sliding_window_backward/xattn/N:<N>/W:1024/...   sliding_window_attention_backward at N = 8192,
//        16384 and 65536 (out and lse from one untimed forward); FLOPs 2.5× the forward's. Its
//        time is linear in N too: 65536 over 8192 is 8 ideally.
#include "bench_common.hpp"

#include <array>
#include <string>

#include <xattn/reference.hpp>
#include <xattn/neighborhood.hpp>
#include <xattn/sliding_window.hpp>
#include <xattn/softmax_backward.hpp>

namespace xattn_bench {
namespace {

constexpr Eigen::Index kBatch = 1, kHeads = 8, kDim = 128;
constexpr Eigen::Index kNaiveN = 2048;

struct shape {
  Eigen::Index n, w;
  int threads;
};

// FLOPs over visited (query, key) pairs only: 4·B·H·d·Σ_i min(i + 1, W) (2·d for q_i·k_j, 2·d for
// p_ij·v_j); exp, max and sum are not counted.
double sliding_window_flops(const shape& s) {
  const double full = double(std::max<Eigen::Index>(0, s.n - s.w)) * double(s.w);
  const Eigen::Index ramp = std::min(s.n, s.w);
  return 4.0 * kBatch * kHeads * kDim * (full + double(ramp) * double(ramp + 1) / 2);
}

template <bool Naive, storage S = storage::f32>
void bm_sliding_window(benchmark::State& st, shape s) {
  const auto [q, k, v, out] = prefill_tensors_of<S>({kBatch, s.n, kHeads, kDim});
  const auto& dev = device(s.threads);
  const xattn::sliding_window_options opt{.window_left = s.w - 1, .causal = true};
  auto lead = [&](const tensor4_of<S>& t) { return leading_tokens(t, kWarmUpTokens); };
  auto out_lead = leading_tokens(out, kWarmUpTokens);
  const auto path = path_of(S, true);
  label_path(st, S, path);
  run_flops_after(st, s.threads, sliding_window_flops(s), double(kBatch * s.n), [&] {
    if constexpr (Naive) xattn::reference::sliding_window_attention(q, k, v, out, opt);
    else xattn::sliding_window_attention(dev, q, k, v, out, opt);
  }, [&] {  // the naive reference, minutes per call at the larger N, runs without one
    if constexpr (!Naive) xattn::sliding_window_attention(dev, lead(q), lead(k), lead(v), out_lead, opt);
  }, path);
}

/// The backward (xattn::sliding_window_attention_backward) at the forward's shape. FLOPs: 2.5× the
/// forward's over the same visited pairs (five products against two; see bench_softmax.cpp).
void bm_sliding_window_backward(benchmark::State& st, shape s) {
  const dims4 dims{kBatch, s.n, kHeads, kDim};
  auto ts = cached_tensors({{"q", dims}, {"k", dims}, {"v", dims}, {"out", dims}, {"dout", dims}, {"dq", dims},
                            {"dk", dims}, {"dv", dims}});
  const tensor4 &q = *ts[0], &k = *ts[1], &v = *ts[2], &dout = *ts[4];
  tensor4 &out = *ts[3], &dq = *ts[5], &dk = *ts[6], &dv = *ts[7];
  Eigen::Tensor<float, 3, Eigen::RowMajor> lse(kBatch, kHeads, s.n);
  const auto& dev = device(s.threads);
  const xattn::sliding_window_options opt{.window_left = s.w - 1, .causal = true};
  xattn::sliding_window_attention(dev, q, k, v, out, lse, opt);  // also touches out and lse
  run_flops(st, s.threads, 2.5 * sliding_window_flops(s), double(kBatch * s.n),
            [&] { xattn::sliding_window_attention_backward(dev, q, k, v, out, lse, dout, dq, dk, dv, opt); });
}

std::string name(const char* impl, const shape& s) {
  return std::string("sliding_window/") + impl + "/N:" + std::to_string(s.n) + "/W:" + std::to_string(s.w) +
         "/D:" + std::to_string(kDim) + "/H:" + std::to_string(kHeads) + "/threads:" + std::to_string(s.threads);
}

benchmark::internal::Benchmark* add_window(const char* impl, const shape& s) {
  auto fn = std::string(impl) == "naive" ? bm_sliding_window<true> : bm_sliding_window<false>;
  return benchmark::RegisterBenchmark(name(impl, s).c_str(), fn, s)->UseRealTime()->Unit(benchmark::kMillisecond);
}

/// xattn in 16-bit storage `st`, registered after the fp32 row of its shape.
benchmark::internal::Benchmark* add_window16(storage st, const shape& s) {
  auto fn = st == storage::bf16 ? bm_sliding_window<false, storage::bf16> : bm_sliding_window<false, storage::f16>;
  return benchmark::RegisterBenchmark((name("xattn", s) + dtype_suffix(st)).c_str(), fn, s)
      ->UseRealTime()->Unit(benchmark::kMillisecond);
}

// The headline suite: W = 1024 over the sweep's N, the row at N = 16384 timed as the table's. The
// naive reference materialises N×N (17 s at N = 2048), so it runs once at N = 1024 with W = 256,
// beside xattn at that shape on the table's threads for the ratio.
constexpr Eigen::Index kTableW = 1024, kTableN = 16384, kNaiveTableN = 1024, kNaiveTableW = 256;

void sweep_sliding_window(Eigen::Index n) {
  add_window("xattn", {n, kTableW, kSweepThreads})->MinTime(n == kTableN ? kTableMinTime : kSweepMinTime);
  if (n == kTableN)
    for (storage st : kStorages16) add_window16(st, {n, kTableW, kSweepThreads})->MinTime(kTableMinTime);
}

/// The backward's row at N, registered in both suites.
void add_window_backward(Eigen::Index n, int threads, double min_time) {
  const shape s{n, kTableW, threads};
  const std::string row = "sliding_window_backward" + name("xattn", s).substr(std::string("sliding_window").size());
  benchmark::RegisterBenchmark(row.c_str(), bm_sliding_window_backward, s)
      ->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(min_time);
}

void register_sliding_window(suite which) {
  if (which == suite::headline) {
    add_window("naive", {kNaiveTableN, kNaiveTableW, 1})->Iterations(1);
    add_window("xattn", {kNaiveTableN, kNaiveTableW, kTableThreads})->MinTime(kSweepMinTime);
    for (Eigen::Index n : {8192, 16384, 65536}) add_window_backward(n, kTableThreads, kSweepMinTime);
    return;
  }
  for (Eigen::Index n : {8192, 16384, 65536})
    for (int threads = 1; threads <= kMaxThreads; ++threads) add_window_backward(n, threads, kComparedMinTime);
  for (Eigen::Index w : {256, 1024})
    for (Eigen::Index n : {2048, 4096, 8192, 16384, 65536})
      for (int threads = 1; threads <= kMaxThreads; ++threads) {
        const shape s{n, w, threads};
        if (n == kNaiveN && threads == 1)
          benchmark::RegisterBenchmark(name("naive", s).c_str(), bm_sliding_window<true>, s)
              ->UseRealTime()->Unit(benchmark::kMillisecond)->Iterations(1);
        benchmark::RegisterBenchmark(name("xattn", s).c_str(), bm_sliding_window<false>, s)
            ->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(kComparedMinTime);
        if (n == kTableN && w == kTableW)
          for (storage st : kStorages16) add_window16(st, s)->MinTime(kComparedMinTime);
      }
}

// --- 2-D neighborhood ---------------------------------------------------------------------------
//   neighborhood2d/<impl>/img:<S>/K:<k>/D:128/H:8/threads:<t>      B = 1, an S×S image, k×k kernel
// impl: naive = xattn::reference::neighborhood_attention_2d (fp64, one mask row per query; one
// iteration, threads:1); xattn = xattn::neighborhood_attention_2d.
// FLOPs over visited positions: 4·B·H·d·S²·k² (every query sees exactly k² keys).
//   neighborhood2d_backward/xattn/img:128/K:13/...   the backward at the headline shape (2.5× the
//        forward's FLOPs)

template <storage S>
using image_of = Eigen::Tensor<scalar_of<S>, 5, Eigen::RowMajor>;

struct na_shape {
  Eigen::Index img, kernel;
  int threads;
};

template <bool Naive, storage S = storage::f32>
void bm_neighborhood(benchmark::State& st, na_shape s) {
  const auto ts = prefill_tensors_of<S>({kBatch, s.img * s.img, kHeads, kDim});
  const std::array<Eigen::Index, 5> idims{kBatch, s.img, s.img, kHeads, kDim};
  using input = const image_of<S>;
  const Eigen::TensorMap<input> q(ts.q.data(), idims), k(ts.k.data(), idims), v(ts.v.data(), idims);
  Eigen::TensorMap<image_of<storage::f32>> out(ts.out.data(), idims);
  const xattn::neighborhood_2d_options opt{.kernel_h = s.kernel, .kernel_w = s.kernel};
  const auto& dev = device(s.threads);
  const double n = double(s.img * s.img);
  const auto path = path_of(S, false);
  label_path(st, S, path);
  run_flops(st, s.threads, 4.0 * kBatch * kHeads * kDim * n * double(s.kernel * s.kernel), kBatch * n, [&] {
    if constexpr (Naive) xattn::reference::neighborhood_attention_2d(q, k, v, out, opt);
    else xattn::neighborhood_attention_2d(dev, q, k, v, out, opt);
  }, !Naive, path);
}

/// The backward (xattn::neighborhood_attention_2d_backward) at the forward's shape. FLOPs: 2.5× the
/// forward's visited pairs.
void bm_neighborhood_backward(benchmark::State& st, na_shape s) {
  const dims4 dims{kBatch, s.img * s.img, kHeads, kDim};
  auto ts = cached_tensors({{"q", dims}, {"k", dims}, {"v", dims}, {"out", dims}, {"dout", dims}, {"dq", dims},
                            {"dk", dims}, {"dv", dims}});
  const std::array<Eigen::Index, 5> idims{kBatch, s.img, s.img, kHeads, kDim};
  using image = Eigen::TensorMap<image_of<storage::f32>>;
  image q(ts[0]->data(), idims), k(ts[1]->data(), idims), v(ts[2]->data(), idims), out(ts[3]->data(), idims),
      dout(ts[4]->data(), idims), dq(ts[5]->data(), idims), dk(ts[6]->data(), idims), dv(ts[7]->data(), idims);
  Eigen::Tensor<float, 3, Eigen::RowMajor> lse(kBatch, kHeads, s.img * s.img);
  const auto& dev = device(s.threads);
  const xattn::neighborhood_2d_options opt{.kernel_h = s.kernel, .kernel_w = s.kernel};
  xattn::neighborhood_attention_2d(dev, q, k, v, out, lse, opt);  // also touches out and lse
  const double n = double(s.img * s.img);
  run_flops(st, s.threads, 2.5 * 4.0 * kBatch * kHeads * kDim * n * double(s.kernel * s.kernel), kBatch * n,
            [&] { xattn::neighborhood_attention_2d_backward(dev, q, k, v, out, lse, dout, dq, dk, dv, opt); });
}

std::string na_name(const char* impl, const na_shape& s) {
  return std::string("neighborhood2d/") + impl + "/img:" + std::to_string(s.img) + "/K:" + std::to_string(s.kernel) +
         "/D:" + std::to_string(kDim) + "/H:" + std::to_string(kHeads) + "/threads:" + std::to_string(s.threads);
}

/// xattn in 16-bit storage `st`, registered after the fp32 row of its shape.
benchmark::internal::Benchmark* add_na16(storage st, const na_shape& s) {
  auto fn = st == storage::bf16 ? bm_neighborhood<false, storage::bf16> : bm_neighborhood<false, storage::f16>;
  return benchmark::RegisterBenchmark((na_name("xattn", s) + dtype_suffix(st)).c_str(), fn, s)
      ->UseRealTime()->Unit(benchmark::kMillisecond);
}

// The headline shape is a 128×128 image with a 13×13 kernel; the naive reference runs once on a
// 64×64 image (a quarter of the work), beside xattn on the same image for the ratio.
constexpr Eigen::Index kTableImage = 128, kNaiveImage = 64, kTableKernel = 13;

void register_neighborhood(suite which) {
  if (which == suite::headline) {
    auto add = [](const char* impl, auto fn, na_shape s) {
      return benchmark::RegisterBenchmark(na_name(impl, s).c_str(), fn, s)->UseRealTime()->Unit(benchmark::kMillisecond);
    };
    add("xattn", bm_neighborhood<false>, {kTableImage, kTableKernel, kTableThreads})->MinTime(kTableMinTime);
    for (storage st : kStorages16) add_na16(st, {kTableImage, kTableKernel, kTableThreads})->MinTime(kTableMinTime);
    add("naive", bm_neighborhood<true>, {kNaiveImage, kTableKernel, 1})->Iterations(1);
    add("xattn", bm_neighborhood<false>, {kNaiveImage, kTableKernel, kTableThreads})->MinTime(kSweepMinTime);
    const na_shape table{kTableImage, kTableKernel, kTableThreads};
    benchmark::RegisterBenchmark(("neighborhood2d_backward" + na_name("xattn", table).substr(14)).c_str(),
                                 bm_neighborhood_backward, table)
        ->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(kSweepMinTime);
    return;
  }
  for (Eigen::Index img : {64, 128})
    for (Eigen::Index kernel : {7, 13})
      for (int threads = 1; threads <= kMaxThreads; ++threads) {
        const na_shape s{img, kernel, threads};
        const std::string tail = "/img:" + std::to_string(img) + "/K:" + std::to_string(kernel) + "/D:" +
                                 std::to_string(kDim) + "/H:" + std::to_string(kHeads) + "/threads:" + std::to_string(threads);
        if (threads == 1)
          benchmark::RegisterBenchmark(("neighborhood2d/naive" + tail).c_str(), bm_neighborhood<true>, s)
              ->UseRealTime()->Unit(benchmark::kMillisecond)->Iterations(1);
        benchmark::RegisterBenchmark(("neighborhood2d/xattn" + tail).c_str(), bm_neighborhood<false>, s)
            ->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(kComparedMinTime);
        if (img == kTableImage && kernel == kTableKernel)
          for (storage st : kStorages16) add_na16(st, s)->MinTime(kComparedMinTime);
      }
}

const registrar sliding_window_after_softmax{20, &register_sliding_window};
const registrar neighborhood_after_sliding_window{25, &register_neighborhood};
const sweep_registrar sliding_window_sweep_after_softmax{20, &sweep_sliding_window};

}  // namespace
}  // namespace xattn_bench
