// examples/long_prefill.cpp — a long causal prefill in O(N·d) memory: softmax attention never
// materialises the N×N scores, and its scratch is a few hundred KiB per thread. With
// `xattn_example_long_prefill 65536` (8 heads, head_dim 128, 2 threads) the tensors take 1 GiB;
// `/usr/bin/time -v` shows the peak resident size beyond them. Without an argument it runs a
// short prefill and checks a few rows against the fp64 reference, as a test.
#define EIGEN_USE_THREADS
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <unsupported/Eigen/CXX11/Tensor>
#include <xattn/reference.hpp>
#include <xattn/xattn.hpp>

int main(int argc, char** argv) {
  const long n = argc > 1 ? std::atol(argv[1]) : 1024;
  constexpr long heads = 8, head_dim = 128;
  using tensor = Eigen::Tensor<float, 4, Eigen::RowMajor>;
  tensor q(1, n, heads, head_dim), k(1, n, heads, head_dim), v(1, n, heads, head_dim), out(1, n, heads, head_dim);
  q.setRandom();
  k.setRandom();
  v.setRandom();
  const double tensor_mib = 4.0 * double(q.size()) * sizeof(float) / (1 << 20);

  Eigen::ThreadPool pool(2);
  Eigen::ThreadPoolDevice device(&pool, 2);
  const auto t0 = std::chrono::steady_clock::now();
  xattn::softmax_attention(device, q, k, v, out, {.causal = true});
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double flops = 4.0 * heads * head_dim * double(n) * double(n + 1) / 2;  // visible pairs only
  std::printf("causal prefill N=%ld, %ld heads, d=%ld: %.2f s, %.1f GFLOPS; q, k, v, out take %.0f MiB\n", n,
              heads, head_dim, s, flops / s / 1e9, tensor_mib);

  // Check the last 16 queries (those that see the most keys) against the fp64 reference: the
  // reference over the full sequence would take N² doubles, so it gets the keys and these rows only.
  const long m = std::min<long>(16, n);
  tensor q_tail = q.slice(Eigen::array<long, 4>{0, n - m, 0, 0}, Eigen::array<long, 4>{1, m, heads, head_dim});
  tensor ref(1, m, heads, head_dim);
  xattn::reference::softmax_attention(q_tail, k, v, ref, {.causal = true});  // bottom-right aligned
  const tensor out_tail = out.slice(Eigen::array<long, 4>{0, n - m, 0, 0}, Eigen::array<long, 4>{1, m, heads, head_dim});
  const Eigen::Tensor<float, 0, Eigen::RowMajor> err = (out_tail - ref).abs().maximum();
  std::printf("last %ld rows: max abs error vs reference %.3g\n", m, err());
  return err() <= 1e-4f ? 0 : 1;
}
