// tools/softmax_backward_timing.cpp — a quick timing of xattn::softmax_attention_backward against
// the forward it differentiates (not part of the benchmark suite). FLOPs are counted as
// FlashAttention's papers do: forward 4·N²·d·H (halved when causal), backward 2.5× the forward.
// Build and run from the repository root:
//   g++ -O3 -march=native -std=c++20 -DEIGEN_USE_THREADS -Iinclude -isystem /usr/include/eigen3 \
//       tools/softmax_backward_timing.cpp -o /tmp/bw_timing -pthread && /tmp/bw_timing [N d H threads reps Hkv]
#ifndef EIGEN_USE_THREADS
#define EIGEN_USE_THREADS
#endif
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>
#include <xattn/softmax.hpp>
#include <xattn/softmax_backward.hpp>

namespace {

using tensor = Eigen::Tensor<float, 4, Eigen::RowMajor>;

template <class F>
double median_ms(int reps, const F& f) {
  f();  // warm-up: the workspaces grow once
  std::vector<double> ms;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const long n = argc > 1 ? std::atol(argv[1]) : 4096, d = argc > 2 ? std::atol(argv[2]) : 128,
             h = argc > 3 ? std::atol(argv[3]) : 8;
  const int threads = argc > 4 ? std::atoi(argv[4]) : 2, reps = argc > 5 ? std::atoi(argv[5]) : 3;
  const long hkv = argc > 6 ? std::atol(argv[6]) : h;  // K/V heads (GQA); fewer than 8 runs the two-pass schedule
  Eigen::ThreadPool pool(threads);
  Eigen::ThreadPoolDevice device(&pool, threads);

  tensor q(1, n, h, d), k(1, n, hkv, d), v(1, n, hkv, d), out(1, n, h, d), dout(1, n, h, d), dq(1, n, h, d),
      dk(1, n, hkv, d), dv(1, n, hkv, d);
  Eigen::Tensor<float, 3, Eigen::RowMajor> lse(1, h, n);
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  for (tensor* t : {&q, &k, &v, &dout}) for (long i = 0; i < t->size(); ++i) t->data()[i] = normal(rng);
  for (tensor* t : {&out, &dq, &dk, &dv}) t->setZero();  // touched before timing

  std::printf("N=%ld d=%ld H=%ld Hkv=%ld batch 1, fp32, %d threads, median of %d\n", n, d, h, hkv, threads, reps);
  std::printf("%-8s %12s %12s %8s %14s %14s\n", "mask", "forward ms", "backward ms", "bwd/fwd", "fwd GFLOP/s",
              "bwd GFLOP/s");
  for (const bool causal : {false, true}) {
    const xattn::softmax_options opt{.causal = causal};
    const double fwd = median_ms(reps, [&] { xattn::softmax_attention(device, q, k, v, out, lse, opt); });
    const double bwd = median_ms(reps, [&] {
      xattn::softmax_attention_backward(device, q, k, v, out, lse, dout, dq, dk, dv, opt);
    });
    const double fwd_flop = 4.0 * double(n) * double(n) * double(d) * double(h) * (causal ? 0.5 : 1.0);
    std::printf("%-8s %12.1f %12.1f %8.2f %14.1f %14.1f\n", causal ? "causal" : "dense", fwd, bwd, bwd / fwd,
                fwd_flop / fwd * 1e-6, 2.5 * fwd_flop / bwd * 1e-6);
  }
  return 0;
}
