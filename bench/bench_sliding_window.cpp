// bench/bench_sliding_window.cpp — causal sliding-window attention (each query sees its W most
// recent keys, itself included: window_left = W − 1), xattn against the fp64 reference.
//
//   sliding_window/<impl>/N:<N>/W:<W>/D:128/H:8/threads:<t>      B = 1, Nq = Nk = N, bshd layout
//
// impl
//   naive  xattn::reference::sliding_window_attention: fp64, materialises the N×N mask and scores;
//          only at N = 2048, threads:1.
//   xattn  xattn::sliding_window_attention, device overload.
// The judged figures: time at N = 65536 over time at N = 8192 (linear cost: 8× ideally), and
// GFLOPS over visited positions against softmax/xattn at N = 4096.
#include "bench_common.hpp"

#include <array>
#include <string>

#include <xattn/reference.hpp>
#include <xattn/sliding_window.hpp>

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

template <bool Naive>
void bm_sliding_window(benchmark::State& st, shape s) {
  const dims4 dims{kBatch, s.n, kHeads, kDim};
  auto ts = cached_tensors({{"q", dims}, {"k", dims}, {"v", dims}, {"out", dims}});
  const tensor4 &q = *ts[0], &k = *ts[1], &v = *ts[2];
  tensor4& out = *ts[3];
  const auto& dev = device(s.threads);
  const xattn::sliding_window_options opt{.window_left = s.w - 1, .causal = true};
  run_flops(st, s.threads, sliding_window_flops(s), double(kBatch * s.n), [&] {
    if constexpr (Naive) xattn::reference::sliding_window_attention(q, k, v, out, opt);
    else xattn::sliding_window_attention(dev, q, k, v, out, opt);
  }, !Naive);
}

std::string name(const char* impl, const shape& s) {
  return std::string("sliding_window/") + impl + "/N:" + std::to_string(s.n) + "/W:" + std::to_string(s.w) +
         "/D:" + std::to_string(kDim) + "/H:" + std::to_string(kHeads) + "/threads:" + std::to_string(s.threads);
}

void register_sliding_window() {
  for (Eigen::Index w : {256, 1024})
    for (Eigen::Index n : {2048, 4096, 8192, 16384, 65536})
      for (int threads = 1; threads <= kMaxThreads; ++threads) {
        const shape s{n, w, threads};
        if (n == kNaiveN && threads == 1)
          benchmark::RegisterBenchmark(name("naive", s).c_str(), bm_sliding_window<true>, s)
              ->UseRealTime()->Unit(benchmark::kMillisecond)->Iterations(1);
        benchmark::RegisterBenchmark(name("xattn", s).c_str(), bm_sliding_window<false>, s)
            ->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(kJudgedMinTime);
      }
}

// --- 2-D neighborhood ---------------------------------------------------------------------------
//   neighborhood2d/<impl>/img:<S>/K:<k>/D:128/H:8/threads:<t>      B = 1, an S×S image, k×k kernel
// impl: naive = xattn::reference::neighborhood_attention_2d (fp64, one mask row per query; one
// iteration, threads:1); xattn = xattn::neighborhood_attention_2d.
// FLOPs over visited positions: 4·B·H·d·S²·k² (every query sees exactly k² keys).

using image = Eigen::Tensor<float, 5, Eigen::RowMajor>;

struct na_shape {
  Eigen::Index img, kernel;
  int threads;
};

template <bool Naive>
void bm_neighborhood(benchmark::State& st, na_shape s) {
  const dims4 dims{kBatch, s.img * s.img, kHeads, kDim};
  auto ts = cached_tensors({{"q", dims}, {"k", dims}, {"v", dims}, {"out", dims}});
  const std::array<Eigen::Index, 5> idims{kBatch, s.img, s.img, kHeads, kDim};
  const Eigen::TensorMap<const image> q(ts[0]->data(), idims), k(ts[1]->data(), idims), v(ts[2]->data(), idims);
  Eigen::TensorMap<image> out(ts[3]->data(), idims);
  const xattn::neighborhood_2d_options opt{.kernel_h = s.kernel, .kernel_w = s.kernel};
  const auto& dev = device(s.threads);
  const double n = double(s.img * s.img);
  run_flops(st, s.threads, 4.0 * kBatch * kHeads * kDim * n * double(s.kernel * s.kernel), kBatch * n, [&] {
    if constexpr (Naive) xattn::reference::neighborhood_attention_2d(q, k, v, out, opt);
    else xattn::neighborhood_attention_2d(dev, q, k, v, out, opt);
  }, !Naive);
}

void register_neighborhood() {
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
            ->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(kJudgedMinTime);
      }
}

const registrar sliding_window_after_softmax{20, &register_sliding_window};
const registrar neighborhood_after_sliding_window{25, &register_neighborhood};

}  // namespace
}  // namespace xattn_bench
